"""``kdloss score`` paths: read and write exactly the files the OS resolves; never replace an input.

Every spelling of a path is tried from the current folder: ``..`` through a missing folder and
through a symlinked folder, ``./``, a hard link and a symlinked file.
"""

import os

import numpy as np
import pytest
from stored_logits import assert_refused, logit_pair, summary_of

import kdloss
from kdloss.cli import main

pytestmark = pytest.mark.skipif(not hasattr(os, "symlink") or os.name == "nt", reason="POSIX links")


@pytest.fixture
def here(tmp_path, monkeypatch):
    """A folder holding student.npy and teacher.npy, made the current folder; and the pair."""
    student, teacher = logit_pair((12, 7))
    np.save(tmp_path / "student.npy", student)
    np.save(tmp_path / "teacher.npy", teacher)
    monkeypatch.chdir(tmp_path)
    return tmp_path, student, teacher


def snapshot(folder):
    """Every file under ``folder`` (links not followed) with its bytes, or its link target."""
    found = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(root, name)
            if os.path.islink(path):
                found[path] = ("link", os.readlink(path))
            elif os.path.isfile(path):
                with open(path, "rb") as f:
                    found[path] = f.read()
    return found


def refused(capsys, folder, argv, words):
    """``argv`` exits 2 with one line naming ``words``, and nothing under ``folder`` changed."""
    before = snapshot(folder)
    assert_refused(capsys, argv, words)
    assert snapshot(folder) == before


def test_dotdot_through_a_missing_folder_is_not_the_current_folder(here, capsys):
    folder, _, _ = here
    # The OS cannot go through no_such_dir, so this is no path at all (a textual abspath
    # would make it ./student.npy, the input).
    out = os.path.join("no_such_dir", "..", "student.npy")
    refused(capsys, folder, ["score", "student.npy", "teacher.npy", "--out", out], ["no_such_dir", "does not exist"])


def test_dotdot_through_a_symlinked_folder_writes_where_the_os_resolves(here, capsys):
    folder, student, teacher = here
    (folder / "elsewhere" / "deep").mkdir(parents=True)
    os.symlink(folder / "elsewhere" / "deep", "link")
    inputs = {name: (folder / name).read_bytes() for name in ("student.npy", "teacher.npy")}
    # link/.. is the folder "elsewhere" for the OS: the output goes there, and the input
    # teacher.npy of the current folder is left alone.
    assert main(["score", "student.npy", "teacher.npy", "--out", "link/../teacher.npy"]) == 0
    written = folder / "elsewhere" / "teacher.npy"
    np.testing.assert_array_equal(np.load(written), kdloss.kd_loss(student, teacher, reduction="none"), strict=True)
    assert {name: (folder / name).read_bytes() for name in inputs} == inputs
    assert summary_of(capsys.readouterr().out)["out"] == str(written)


def test_dotdot_through_a_symlinked_folder_to_an_input_is_refused(here, capsys):
    folder, _, teacher = here
    (folder / "elsewhere" / "deep").mkdir(parents=True)
    np.save(folder / "elsewhere" / "teacher.npy", teacher)
    os.symlink(folder / "elsewhere" / "deep", "link")
    argv = ["score", "student.npy", "elsewhere/teacher.npy", "--out", "link/../teacher.npy"]
    refused(capsys, folder, argv, ["link/../teacher.npy", "one of the inputs", "teacher"])


@pytest.mark.parametrize(
    "spelling",
    ["./student.npy", "student.npy", "sub/../student.npy", "./././teacher.npy", "{abs}/student.npy",
     "hard.npy", "alias.npy", "dirlink/student.npy", "dirlink/../{name}/alias.npy"],
)
def test_every_spelling_of_an_input_as_output_is_refused(here, capsys, spelling):
    folder, _, _ = here
    (folder / "sub").mkdir()
    os.link("student.npy", "hard.npy")  # a hard link: the same inode under another name
    os.symlink("student.npy", "alias.npy")  # a symlinked file
    os.symlink(folder, "dirlink")  # a symlinked folder
    out = spelling.format(abs=folder, name=folder.name)
    refused(capsys, folder, ["score", "student.npy", "teacher.npy", "--out", out], ["one of the inputs"])


def test_an_npz_archive_that_holds_an_input_is_not_an_output(here, capsys):
    folder, student, teacher = here
    np.savez("pair.npz", student=student, teacher=teacher)
    os.symlink("pair.npz", "pair_link.npy")
    refused(capsys, folder, ["score", "pair.npz:student", "teacher.npy", "--out", "pair_link.npy"],
            ["one of the inputs", "pair.npz:student"])


def test_inputs_are_read_where_the_os_resolves_them(here, capsys):
    folder, _, _ = here
    (folder / "elsewhere" / "deep").mkdir(parents=True)
    other_student, other_teacher = logit_pair((12, 7), seed=5)
    np.save(folder / "elsewhere" / "student.npy", other_student)
    np.save(folder / "elsewhere" / "teacher.npy", other_teacher)
    os.symlink(folder / "elsewhere" / "deep", "link")
    # link/../student.npy is elsewhere/student.npy for the OS, not ./student.npy
    assert main(["score", "link/../student.npy", "link/../teacher.npy", "--out", "losses.npy"]) == 0
    np.testing.assert_array_equal(
        np.load("losses.npy"), kdloss.kd_loss(other_student, other_teacher, reduction="none"), strict=True
    )
    capsys.readouterr()


def test_an_input_through_a_missing_folder_does_not_exist(here, capsys):
    folder, _, _ = here
    refused(capsys, folder, ["score", "no_such_dir/../student.npy", "teacher.npy"], ["student", "no such file"])
    refused(capsys, folder, ["score", "student.npy/../teacher.npy", "teacher.npy"], ["student", "no such file"])


@pytest.mark.parametrize("spelling", ["alias.npy", "dirlink/student.npy", "hard.npy"])
def test_linked_inputs_read_their_target(here, capsys, spelling):
    folder, student, teacher = here
    os.symlink("student.npy", "alias.npy")
    os.symlink(folder, "dirlink")
    os.link("student.npy", "hard.npy")
    assert main(["score", spelling, "teacher.npy", "--out", "losses.npy"]) == 0
    np.testing.assert_array_equal(np.load("losses.npy"), kdloss.kd_loss(student, teacher, reduction="none"),
                                  strict=True)
    capsys.readouterr()


def test_an_output_symlink_to_another_file_is_replaced_not_followed(here, capsys):
    folder, student, teacher = here
    (folder / "keep.npy").write_bytes(b"not an input, not to be touched")
    os.symlink("keep.npy", "result.npy")
    assert main(["score", "student.npy", "teacher.npy", "--out", "result.npy"]) == 0
    assert (folder / "keep.npy").read_bytes() == b"not an input, not to be touched"
    assert not os.path.islink("result.npy")
    np.testing.assert_array_equal(np.load("result.npy"), kdloss.kd_loss(student, teacher, reduction="none"))
    capsys.readouterr()


@pytest.mark.parametrize("out", ["sub/", "sub/.", "sub/..", "sub.npy/"])
def test_an_output_that_names_a_folder_is_refused(here, capsys, out):
    folder, _, _ = here
    (folder / "sub").mkdir()
    (folder / "sub.npy").mkdir()
    refused(capsys, folder, ["score", "student.npy", "teacher.npy", "--out", out], ["--out"])
