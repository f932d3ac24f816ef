"""``kdloss score`` on unusual and hostile stored files.

Odd but valid files are read (a ``.npz`` member without the ``.npy`` suffix, big-endian data,
float16, bfloat16 in Zarr); broken ones (a corrupt compressed archive, a member shorter than
its header, a negative shape) are one line on stderr, exit status 2, and nothing written.
"""

import io
import os
import zipfile

import numpy as np
import pytest
from stored_logits import assert_refused, logit_pair, store_pair, summary_of

import kdloss
from kdloss.cli import main


def npy_bytes(array=None, *, shape=None, descr=None, data=None):
    """The bytes of a ``.npy`` file: ``array``'s, or a header of ``shape``/``descr`` then ``data``."""
    f = io.BytesIO()
    if array is not None:
        np.save(f, array)
        return f.getvalue()
    np.lib.format.write_array_header_1_0(f, {"descr": descr, "fortran_order": False, "shape": shape})
    return f.getvalue() + data


def zip_with(path, members, compression=zipfile.ZIP_STORED):
    """A zip file of ``members`` (name -> bytes), in order."""
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def refused(capsys, tmp_path, student, teacher, words):
    """Exit 2, one line naming ``words``; an existing output is untouched and nothing else appears."""
    out = tmp_path / "result.npy"
    out.write_bytes(b"the previous result")
    before = sorted(os.listdir(tmp_path))
    assert_refused(capsys, ["score", student, teacher, "--out", str(out)], words)
    assert sorted(os.listdir(tmp_path)) == before
    assert out.read_bytes() == b"the previous result"


def scores_like_kd_loss(capsys, tmp_path, student_spec, teacher_spec, student, teacher, *extra):
    out = tmp_path / "losses.npy"
    assert main(["score", student_spec, teacher_spec, "--out", str(out), *extra]) == 0
    expected = kdloss.kd_loss(student, teacher, reduction="none")
    np.testing.assert_array_equal(np.load(out), expected, strict=True)
    return summary_of(capsys.readouterr().out)


# ---------------------------------------------------------------------------------------------
# .npz members stored without the .npy suffix


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_a_member_without_the_npy_suffix_is_read(tmp_path, capsys, compression):
    student, teacher = logit_pair((9, 6))
    odd = zip_with(tmp_path / "odd.npz", {"x": npy_bytes(student), "y.npy": npy_bytes(teacher)}, compression)
    scores_like_kd_loss(capsys, tmp_path, f"{odd}:x", f"{odd}:y", student, teacher, "--chunk-rows", "4")


def test_a_member_that_is_not_an_array_is_refused(tmp_path, capsys):
    _, teacher = logit_pair((9, 6))
    odd = zip_with(tmp_path / "odd.npz", {"notes": b"plain text, not a .npy", "y.npy": npy_bytes(teacher)})
    refused(capsys, tmp_path, f"{odd}:notes", f"{odd}:y", ["odd.npz:notes", "not a NumPy array"])


# ---------------------------------------------------------------------------------------------
# A corrupt compressed archive


def corrupt_member_data(path, name):
    """Overwrite bytes in the middle of member ``name``'s compressed data."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(name)
    with open(path, "r+b") as f:
        f.seek(info.header_offset + 26)
        name_length = int.from_bytes(f.read(2), "little")
        extra_length = int.from_bytes(f.read(2), "little")
        f.seek(info.header_offset + 30 + name_length + extra_length + info.compress_size // 2)
        f.write(bytes(range(7, 71)))


def test_a_corrupt_compressed_member_is_refused_before_anything_is_written(tmp_path, capsys):
    student, teacher = logit_pair((400, 50))
    path = tmp_path / "pair.npz"
    np.savez_compressed(path, student=student, teacher=teacher)
    corrupt_member_data(path, "student.npy")
    refused(capsys, tmp_path, f"{path}:student", f"{path}:teacher", ["pair.npz:student", "corrupt"])


def test_a_compressed_member_with_a_bad_checksum_is_refused(tmp_path, capsys):
    student, teacher = logit_pair((40, 5))
    path = zip_with(tmp_path / "pair.npz", {"student.npy": npy_bytes(student), "teacher.npy": npy_bytes(teacher)},
                    zipfile.ZIP_DEFLATED)
    data = bytearray(path.read_bytes())
    central = data.find(b"PK\x01\x02")  # the central directory's first entry: student.npy
    data[central + 16:central + 20] = bytes(4)  # its CRC-32, which zipfile checks at the member's end
    path.write_bytes(bytes(data))
    refused(capsys, tmp_path, f"{path}:student", f"{path}:teacher", ["pair.npz:student", "corrupt", "CRC"])


def test_a_cut_archive_is_refused(tmp_path, capsys):
    student, teacher = logit_pair((40, 5))
    path = tmp_path / "pair.npz"
    np.savez_compressed(path, student=student, teacher=teacher)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    refused(capsys, tmp_path, f"{path}:student", f"{path}:teacher", ["pair.npz:student", "not a .npz"])


# ---------------------------------------------------------------------------------------------
# Members shorter than their header says


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_a_member_shorter_than_its_header_is_truncated_whatever_follows_it(tmp_path, capsys, compression):
    student, teacher = logit_pair((6, 5))
    short = npy_bytes(student)[:-40]  # the last two rows' bytes are missing
    # Another member follows, and then the zip's central directory: the file holds enough bytes.
    path = zip_with(tmp_path / "pair.npz", {"student.npy": short, "teacher.npy": npy_bytes(teacher)}, compression)
    refused(capsys, tmp_path, f"{path}:student", f"{path}:teacher", ["pair.npz:student", "truncated", "(6, 5)"])


# ---------------------------------------------------------------------------------------------
# Negative shapes


@pytest.mark.parametrize("shape", [(-1, 10), (3, -2), (2, -1, 10)])
def test_a_negative_shape_is_refused(tmp_path, capsys, shape):
    bad = tmp_path / "bad.npy"
    bad.write_bytes(npy_bytes(shape=shape, descr="<f4", data=bytes(400)))
    refused(capsys, tmp_path, str(bad), str(bad), ["bad.npy", "negative length", str(shape)])


def test_a_negative_shape_in_an_npz_member_is_refused(tmp_path, capsys):
    path = zip_with(tmp_path / "pair.npz", {
        "student.npy": npy_bytes(shape=(-1, 10), descr="<f4", data=bytes(400)),
        "teacher.npy": npy_bytes(np.zeros((10, 10), np.float32)),
    })
    refused(capsys, tmp_path, f"{path}:student", f"{path}:student", ["pair.npz:student", "negative length"])


# ---------------------------------------------------------------------------------------------
# Byte order and 2-byte floats


@pytest.mark.parametrize("fmt", ["npy", "npy_fortran", "npz", "npz_compressed", "zarr"])
@pytest.mark.parametrize("dtype", [">f4", ">f8", ">f2"])
def test_big_endian_files_score_as_native(tmp_path, capsys, fmt, dtype):
    student, teacher = logit_pair((3, 11, 13), np.dtype(dtype).newbyteorder("="))
    student_spec, teacher_spec = store_pair(tmp_path, student.astype(dtype), teacher.astype(dtype), fmt)
    summary = scores_like_kd_loss(capsys, tmp_path, student_spec, teacher_spec, student, teacher, "--chunk-rows", "5")
    assert summary["dtype"] == str(np.result_type(student.dtype, np.float32))


def test_big_and_little_endian_mixed(tmp_path, capsys):
    student, teacher = logit_pair((20, 9), np.float64)
    np.save(tmp_path / "student.npy", student.astype(">f8"))
    np.save(tmp_path / "teacher.npy", teacher.astype("<f4"))
    scores_like_kd_loss(capsys, tmp_path, str(tmp_path / "student.npy"), str(tmp_path / "teacher.npy"),
                        student, teacher.astype(np.float32))


def test_float16_files_score_as_float32(tmp_path, capsys):
    student, teacher = logit_pair((30, 17), np.float16)
    summary = scores_like_kd_loss(capsys, tmp_path, *store_pair(tmp_path, student, teacher), student, teacher)
    assert summary["dtype"] == "float32"
    np.testing.assert_array_equal(
        np.load(tmp_path / "losses.npy"),
        kdloss.kd_loss(student.astype(np.float32), teacher.astype(np.float32), reduction="none"),
    )


def test_bfloat16_zarr_is_read_as_its_exact_float32_values(tmp_path, capsys):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    zarr = pytest.importorskip("zarr")
    from kdloss.scoring import register_zarr_bfloat16

    register_zarr_bfloat16()
    student, teacher = (array.astype(ml_dtypes.bfloat16) for array in logit_pair((4, 9, 33)))
    specs = []
    for name, array in (("student", student), ("teacher", teacher)):
        path = str(tmp_path / f"{name}.zarr")
        stored = zarr.open_array(path, mode="w", shape=array.shape, chunks=(2, 4, 33), dtype=array.dtype)
        stored[...] = array
        specs.append(path)
    summary = scores_like_kd_loss(capsys, tmp_path, *specs, student.astype(np.float32), teacher.astype(np.float32),
                                  "--chunk-rows", "7")
    assert summary["dtype"] == "float32" and summary["shape"] == [4, 9]


def test_bfloat16_in_npy_is_refused_with_where_it_can_be_read(tmp_path, capsys):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    student, teacher = logit_pair((6, 5))
    np.save(tmp_path / "student.npy", student.astype(ml_dtypes.bfloat16))  # recorded as raw |V2
    np.save(tmp_path / "teacher.npy", teacher)
    refused(capsys, tmp_path, str(tmp_path / "student.npy"), str(tmp_path / "teacher.npy"),
            ["student.npy", "V2", "bfloat16", "Zarr"])
