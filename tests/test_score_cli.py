"""``kdloss score``: per-row losses of stored logits equal the in-memory ``kd_loss``, bit for bit."""

import builtins
import errno
import io
import math
import os
import signal
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
from divergence_arguments import divergence_arguments
from stored_logits import (
    FORMATS,
    logit_pair,
    read_output,
    store,
    store_pair,
    summary_of,
)

import kdloss
from kdloss.cli import main
from kdloss.scoring import _inputs as scoring_inputs


def expected_losses(student, teacher, temperature):
    return kdloss.kd_loss(student, teacher, temperature, reduction="none")


def check_summary(summary, losses):
    """The summary's counts and sums for the in-memory per-row ``losses``."""
    values = np.asarray(losses, dtype=np.float64).ravel()
    finite = values[np.isfinite(values)]
    assert summary["rows"] == values.size
    assert summary["nan_rows"] == int(np.isnan(values).sum())
    assert summary["inf_rows"] == int(np.isinf(values).sum())
    if summary["inf_rows"] == 0:
        assert summary["sum"] == math.fsum(finite.tolist())  # bitwise: correctly rounded
        counted = values.size - summary["nan_rows"]
        assert summary["mean"] == (summary["sum"] / counted if counted else 0.0)
    assert summary["seconds"] >= 0
    assert summary["rows_per_second"] is None or summary["rows_per_second"] >= 0


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("shape", [(37,), (41, 23), (3, 13, 11), (2, 3, 5, 7)])
def test_every_format_and_leading_axes_match_kd_loss(tmp_path, capsys, fmt, shape):
    student, teacher = logit_pair(shape)
    student_spec, teacher_spec = store_pair(tmp_path, student, teacher, fmt)
    out = tmp_path / "losses.npy"
    assert main(["score", student_spec, teacher_spec, "-T", "2.5", "--out", str(out), "--chunk-rows", "4"]) == 0
    expected = expected_losses(student, teacher, 2.5)
    written = np.load(out)
    assert written.dtype == expected.dtype and written.shape == expected.shape == shape[:-1]
    np.testing.assert_array_equal(written, expected, strict=True)
    summary = summary_of(capsys.readouterr().out)
    check_summary(summary, expected)
    assert summary["shape"] == list(shape[:-1]) and summary["classes"] == shape[-1]


@pytest.mark.parametrize("given_beta", [True, False], ids=["beta", "default"])
def test_each_divergence_matches_kd_loss_and_is_recorded(tmp_path, capsys, divergence, given_beta):
    """--divergence NAME [--beta B]: per-row losses bitwise kd_loss's with that divergence; the
    summary records the divergence and beta as it resolved (the default when not given; null
    for a divergence without one), and sums exactly what was written."""
    chosen = divergence_arguments(divergence)
    if not given_beta:
        chosen["beta"] = None
    student, teacher = logit_pair((3, 13, 11), np.float32, seed=5)
    student_spec, teacher_spec = store_pair(tmp_path, student, teacher)
    out = tmp_path / "losses.npy"
    beta_args = [] if chosen["beta"] is None else ["--beta", str(chosen["beta"])]
    assert main(["score", student_spec, teacher_spec, "-T", "2", "--divergence", divergence.name, *beta_args,
                 "--out", str(out), "--chunk-rows", "4"]) == 0
    expected = kdloss.kd_loss(student, teacher, 2.0, reduction="none", **chosen)
    np.testing.assert_array_equal(np.load(out), expected, strict=True)
    summary = summary_of(capsys.readouterr().out)
    check_summary(summary, expected)
    assert summary["divergence"] == divergence.name
    assert summary["beta"] == (chosen["beta"] if given_beta else divergence.parameters.get("beta"))
    assert main(["score", student_spec, teacher_spec, "-T", "2", "--divergence", divergence.name, *beta_args,
                 "--reduction", "sum"]) == 0
    assert summary_of(capsys.readouterr().out)["loss"] == summary["sum"]


def test_default_divergence_is_kl_and_recorded(tmp_path, capsys):
    student_spec, teacher_spec = store_pair(tmp_path, *logit_pair((9, 5)))
    assert main(["score", student_spec, teacher_spec]) == 0
    summary = summary_of(capsys.readouterr().out)
    assert summary["divergence"] == "kl" and summary["beta"] is None


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("extension", [".npy", ".csv"])
def test_dtypes_and_output_kinds(tmp_path, capsys, dtype, extension):
    student, teacher = logit_pair((5, 9, 17), dtype)
    student_spec, teacher_spec = store_pair(tmp_path, student, teacher)
    out = tmp_path / f"losses{extension}"
    assert main(["score", student_spec, teacher_spec, "-T", "0.7", "--out", str(out), "--quiet"]) == 0
    expected = expected_losses(student, teacher, 0.7)  # float16 is computed, and kept, as float32
    written = read_output(out, expected.dtype)
    np.testing.assert_array_equal(written, expected if extension == ".npy" else expected.ravel(), strict=True)
    summary = summary_of(capsys.readouterr().out)
    assert summary["dtype"] == str(expected.dtype) and summary["reduction"] == "none" and summary["loss"] is None
    check_summary(summary, expected)


def test_mixed_precision_promotes_like_kd_loss(tmp_path, capsys):
    student, teacher = logit_pair((30, 8))
    student_spec = store(tmp_path, "student", student.astype(np.float64), "npy")
    teacher_spec = store(tmp_path, "teacher", teacher, "npz")
    out = tmp_path / "losses.npy"
    assert main(["score", student_spec, teacher_spec, "--out", str(out)]) == 0
    np.testing.assert_array_equal(np.load(out), expected_losses(student.astype(np.float64), teacher, 1.0), strict=True)


@pytest.mark.parametrize("chunk_rows", [1, 2, 7, 64, 1000])
def test_results_and_summary_do_not_depend_on_the_chunk_size(tmp_path, capsys, chunk_rows):
    student, teacher = logit_pair((4, 50, 31), np.float64, seed=3)
    student_spec, teacher_spec = store_pair(tmp_path, student, teacher)
    out = tmp_path / "losses.npy"
    assert main(["score", student_spec, teacher_spec, "--out", str(out), "--chunk-rows", str(chunk_rows)]) == 0
    expected = expected_losses(student, teacher, 1.0)
    np.testing.assert_array_equal(np.load(out), expected, strict=True)
    summary = summary_of(capsys.readouterr().out)
    check_summary(summary, expected)  # sum: math.fsum of every row, the same bits for any chunking
    assert summary["chunk_rows"] == chunk_rows
    assert summary["sum"] == pytest.approx(kdloss.kd_loss(student, teacher, reduction="sum"), rel=1e-14)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_reductions_without_out_fill_the_loss_field(tmp_path, capsys, reduction):
    student, teacher = logit_pair((6, 40, 12))
    student_spec, teacher_spec = store_pair(tmp_path, student, teacher)
    assert main(["score", student_spec, teacher_spec, "-T", "3", "--reduction", reduction, "--chunk-rows", "9"]) == 0
    summary = summary_of(capsys.readouterr().out)
    assert summary["reduction"] == reduction and summary["loss"] == summary[reduction]
    in_memory = kdloss.kd_loss(student, teacher, 3.0, reduction=reduction)
    assert summary["loss"] == pytest.approx(in_memory, rel=1e-6)  # rows rounded to float32 first
    check_summary(summary, expected_losses(student, teacher, 3.0))
    assert sorted(os.listdir(tmp_path)) == ["student.npy", "teacher.npy"]  # nothing written


def test_default_reduction_is_mean_without_out(tmp_path, capsys):
    student_spec, teacher_spec = store_pair(tmp_path, *logit_pair((10, 4)))
    assert main(["score", student_spec, teacher_spec]) == 0
    summary = summary_of(capsys.readouterr().out)
    assert summary["reduction"] == "mean" and summary["loss"] == summary["mean"] and summary["out"] is None


def test_nan_rows_are_counted_not_errors(tmp_path, capsys):
    student, teacher = logit_pair((20, 6), np.float64)
    teacher[3, 2] = np.nan
    student[11, 0] = np.nan
    student_spec, teacher_spec = store_pair(tmp_path, student, teacher)
    out = tmp_path / "losses.csv"
    assert main(["score", student_spec, teacher_spec, "--out", str(out), "--chunk-rows", "3"]) == 0
    expected = expected_losses(student, teacher, 1.0)
    np.testing.assert_array_equal(read_output(out, np.float64), expected)  # NaN where expected
    summary = summary_of(capsys.readouterr().out)
    assert summary["nan_rows"] == 2 and summary["inf_rows"] == 0
    # mean and sum are over the other 18 rows (kd_loss itself would give NaN)
    assert summary["sum"] == math.fsum(np.delete(expected, [3, 11]).tolist())
    assert summary["mean"] == summary["sum"] / 18
    check_summary(summary, expected)


def test_inf_rows_make_the_sum_infinite_written_as_null(tmp_path, capsys):
    student, teacher = logit_pair((8, 5))
    student[2, 1] = -np.inf  # the teacher allows a class the student rules out: +inf
    student_spec, teacher_spec = store_pair(tmp_path, student, teacher)
    assert main(["score", student_spec, teacher_spec]) == 0
    summary = summary_of(capsys.readouterr().out)
    assert summary["inf_rows"] == 1 and summary["sum"] is None and summary["mean"] is None


@pytest.mark.parametrize("nan_everywhere", [False, True])
def test_empty_and_all_nan_inputs(tmp_path, capsys, nan_everywhere):
    shape = (4, 3) if nan_everywhere else (0, 3)
    student = np.full(shape, np.nan if nan_everywhere else 0.0, dtype=np.float32)
    student_spec, teacher_spec = store_pair(tmp_path, student, np.zeros(shape, np.float32))
    out = tmp_path / "losses.npy"
    assert main(["score", student_spec, teacher_spec, "--out", str(out)]) == 0
    np.testing.assert_array_equal(np.load(out), expected_losses(student, np.zeros(shape, np.float32), 1.0))
    summary = summary_of(capsys.readouterr().out)
    assert summary["rows"] == shape[0] and summary["sum"] == 0.0
    assert summary["mean"] == (None if nan_everywhere else 0.0)


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("terminal", [False, True])
@pytest.mark.parametrize("quiet", [False, True])
def test_progress_bar_only_on_a_terminal_and_not_quiet(tmp_path, capsys, monkeypatch, terminal, quiet):
    student_spec, teacher_spec = store_pair(tmp_path, *logit_pair((50, 7)))
    stderr = FakeTerminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    assert main(["score", student_spec, teacher_spec, "--chunk-rows", "10"] + (["--quiet"] if quiet else [])) == 0
    summary_of(capsys.readouterr().out)  # stdout holds the JSON line only, either way
    if terminal and not quiet:
        assert "kdloss score" in stderr.getvalue() and "row" in stderr.getvalue()
    else:
        assert stderr.getvalue() == ""


def test_console_script_prints_one_json_line_and_nothing_on_a_pipe(tmp_path):
    student, teacher = logit_pair((3, 20, 10))
    student_spec, teacher_spec = store_pair(tmp_path, student, teacher)
    done = subprocess.run(
        [sys.executable, "-m", "kdloss", "score", student_spec, teacher_spec, "-T", "2",
         "--out", str(tmp_path / "o.npy")],
        check=False, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # stderr is a pipe: no progress bar
    check_summary(summary_of(done.stdout), expected_losses(student, teacher, 2.0))


def test_help_is_complete_on_its_own(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["score", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for item in ("STUDENT", "TEACHER", "-T", "--out", "--reduction", "--chunk-rows", "--num-threads", "--quiet",
                 "--dask", ".npz:NAME", "Zarr", ".csv", "rows_per_second", "nan_rows", "temporary file", "Exit status"):
        assert item in text, item


def test_num_threads_does_not_change_the_bits(tmp_path, capsys):
    student, teacher = logit_pair((300, 19), np.float64)
    student_spec, teacher_spec = store_pair(tmp_path, student, teacher)
    outputs = []
    for threads in ("1", "2", "-1"):
        out = tmp_path / f"losses{threads}.npy"
        assert main(["score", student_spec, teacher_spec, "--out", str(out), "--num-threads", threads]) == 0
        outputs.append(np.load(out))
    assert summary_of(capsys.readouterr().out.splitlines()[0])["threads"] == 1
    for written in outputs:
        np.testing.assert_array_equal(written, expected_losses(student, teacher, 1.0), strict=True)


# ---------------------------------------------------------------------------------------------
# Bad input: one line on stderr, exit status 2, no output file, an existing output untouched.


def _write(path, data):
    path.write_bytes(data)
    return str(path)


def bad_inputs(tmp_path):
    """``case name -> (student, teacher, extra arguments, words the message must hold)``."""
    student, teacher = logit_pair((6, 5))
    good_s, good_t = store_pair(tmp_path, student, teacher)
    npz = store(tmp_path, "pair", student, "npz")
    npz_file = npz.rsplit(":", 1)[0]
    cases = {
        "missing file": (str(tmp_path / "nope.npy"), good_t, [], ["student", "nope.npy", "no such file"]),
        "not an array": (_write(tmp_path / "text.npy", b"hello, world\n" * 10), good_t, [],
                         ["text.npy", "not a NumPy array"]),
        "truncated": (_write(tmp_path / "cut.npy", (tmp_path / "student.npy").read_bytes()[:150]), good_t, [],
                      ["cut.npy", "truncated"]),
        "shapes differ": (good_s, store(tmp_path, "wide", np.zeros((6, 4)), "npy"), [],
                          ["same shape", "(6, 5)", "(6, 4)"]),
        "leading axes differ": (good_s, store(tmp_path, "tall", np.zeros((3, 2, 5)), "npy"), [],
                                ["same shape"]),
        "integer dtype": (store(tmp_path, "ints", np.zeros((6, 5), np.int64), "npy"), good_t, [],
                          ["ints.npy", "int64"]),
        "complex dtype": (good_s, store(tmp_path, "cplx", np.zeros((6, 5), complex), "npy"), [],
                          ["teacher", "complex128"]),
        "scalar": (store(tmp_path, "scalar", np.float32(1), "npy"), good_t, [], ["scalar.npy", "scalar"]),
        "zero classes": (store(tmp_path, "empty", np.zeros((6, 0)), "npy"), good_t, [], ["empty.npy", "zero classes"]),
        "temperature 0": (good_s, good_t, ["-T", "0"], ["temperature", "> 0"]),
        "temperature negative": (good_s, good_t, ["-T", "-2"], ["temperature"]),
        "temperature nan": (good_s, good_t, ["-T", "nan"], ["temperature"]),
        "temperature inf": (good_s, good_t, ["-T", "inf"], ["temperature"]),
        "temperature text": (good_s, good_t, ["-T", "warm"], ["temperature", "warm"]),
        "unknown npz key": (f"{npz_file}:teacher", good_t, [], ["pair.npz", "'teacher'", "logits", "other"]),
        "npz without key": (npz_file, good_t, [], ["pair.npz", ":NAME"]),
        "chunk rows 0": (good_s, good_t, ["--chunk-rows", "0"], ["--chunk-rows", "positive"]),
        "chunk rows negative": (good_s, good_t, ["--chunk-rows", "-5"], ["--chunk-rows"]),
        "chunk rows text": (good_s, good_t, ["--chunk-rows", "many"], ["--chunk-rows", "many"]),
        "num threads 0": (good_s, good_t, ["--num-threads", "0"], ["num_threads must not be 0"]),
        "num threads text": (good_s, good_t, ["--num-threads", "all"], ["--num-threads", "all"]),
        "unknown reduction": (good_s, good_t, ["--reduction", "avg"], ["--reduction", "avg"]),
        "out with sum": (good_s, good_t, ["--reduction", "sum"], ["--out", "sum"]),
        "output folder missing": (good_s, good_t, ["--out", str(tmp_path / "no" / "such" / "x.npy")],
                                  ["folder", "does not exist"]),
        "unknown extension": (good_s, good_t, ["--out", str(tmp_path / "losses.txt")],
                              ["losses.txt", "'.txt'", ".npy or .csv"]),
        "no extension": (good_s, good_t, ["--out", str(tmp_path / "losses")], ["extension"]),
        "out is an input": (good_s, good_t, ["--out", good_t], ["one of the inputs"]),
        "bad dask address": (good_s, good_t, ["--dask", "somewhere"], ["--dask", "somewhere"]),
        "unknown divergence": (good_s, good_t, ["--divergence", "js"], ["divergence must be one of", "'js'"]),
        "beta out of range": (good_s, good_t, ["--divergence", "jsd", "--beta", "1.5"],
                              ["beta", "'jsd'", "[0.0, 1.0]", "1.5"]),
        "beta for kl": (good_s, good_t, ["--beta", "0.5"], ["'kl'", "takes no parameters", "beta=0.5"]),
        "beta text": (good_s, good_t, ["--divergence", "skew_kl", "--beta", "half"], ["--beta", "'half'"]),
        "beta nan": (good_s, good_t, ["--divergence", "skew_kl", "--beta", "nan"], ["beta", "'skew_kl'", "nan"]),
        "directory that is not zarr": (str(tmp_path), good_t, [], ["directory"]),
    }
    npz_zip_path = tmp_path / "fake.npz"
    npz_zip_path.write_bytes(b"not a zip")
    cases["npz that is not a zip"] = (f"{npz_zip_path}:x", good_t, [], ["fake.npz", "not a .npz"])
    return cases


BAD_INPUT_CASES = [
    "missing file", "not an array", "truncated", "shapes differ", "leading axes differ", "integer dtype",
    "complex dtype", "scalar", "zero classes", "temperature 0", "temperature negative", "temperature nan",
    "temperature inf", "temperature text", "unknown npz key", "npz without key", "npz that is not a zip",
    "chunk rows 0", "chunk rows negative", "chunk rows text", "num threads 0", "num threads text",
    "unknown reduction", "out with sum", "output folder missing", "unknown extension", "no extension",
    "out is an input", "bad dask address", "directory that is not zarr", "unknown divergence",
    "beta out of range", "beta for kl", "beta text", "beta nan",
]


@pytest.mark.parametrize("existing_output", [False, True])
@pytest.mark.parametrize("case", BAD_INPUT_CASES)
def test_bad_input_is_one_line_exit_2_and_no_output(tmp_path, capsys, case, existing_output):
    student, teacher, extra, words = bad_inputs(tmp_path)[case]
    out = tmp_path / "result.npy"
    if existing_output:
        out.write_bytes(b"the previous result")
    out_args = [] if "--out" in extra else ["--out", str(out)]
    before = sorted(os.listdir(tmp_path))
    assert main(["score", student, teacher, *extra, *out_args]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("kdloss score: error: ")
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert sorted(os.listdir(tmp_path)) == before  # no output, no temporary file
    if existing_output:
        assert out.read_bytes() == b"the previous result"


def test_unreadable_file(tmp_path, capsys, monkeypatch):
    student_spec, teacher_spec = store_pair(tmp_path, *logit_pair((4, 3)))
    # Permissions stop a user; root reads any file, so the open itself refuses too.
    real_open = builtins.open

    def refusing_open(path, *args, **kwargs):
        if os.path.abspath(os.fspath(path)) == os.path.abspath(student_spec):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(scoring_inputs, "open", refusing_open, raising=False)
    os.chmod(student_spec, 0)
    try:
        assert main(["score", student_spec, teacher_spec]) == 2
    finally:
        os.chmod(student_spec, 0o644)
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "student.npy" in err and "cannot be read" in err


def test_missing_argument_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["score", "only-one.npy"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("kdloss score: error:") and "TEACHER" in err


# ---------------------------------------------------------------------------------------------
# Atomic output: a failure part-way leaves no partial file and keeps an existing output.


@pytest.mark.parametrize("failure", [RuntimeError("disk on fire"), KeyboardInterrupt()])
@pytest.mark.parametrize("extension", [".npy", ".csv"])
@pytest.mark.parametrize("existing_output", [False, True])
def test_a_failure_after_the_first_chunk_leaves_no_partial_output(
    tmp_path, capsys, monkeypatch, failure, extension, existing_output
):
    import kdloss.scoring._score as score_module

    student_spec, teacher_spec = store_pair(tmp_path, *logit_pair((40, 6)))
    out = tmp_path / f"result{extension}"
    if existing_output:
        out.write_bytes(b"the previous result")
    calls = []

    def failing_kd_loss(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise failure
        return kdloss.kd_loss(*args, **kwargs)

    monkeypatch.setattr(score_module, "kd_loss", failing_kd_loss)
    before = sorted(os.listdir(tmp_path))
    status = main(["score", student_spec, teacher_spec, "--out", str(out), "--chunk-rows", "8"])
    assert status == (130 if isinstance(failure, KeyboardInterrupt) else 1)
    assert len(calls) == 2  # it failed after writing the first chunk
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.splitlines()) == 1 and "no output written" in captured.err
    assert sorted(os.listdir(tmp_path)) == before
    if existing_output:
        assert out.read_bytes() == b"the previous result"


@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or sys.platform == "win32", reason="POSIX signals")
def test_sigterm_during_the_run_leaves_no_partial_output(tmp_path, capsys, monkeypatch):
    import kdloss.scoring._score as score_module

    student_spec, teacher_spec = store_pair(tmp_path, *logit_pair((40, 6)))
    out = tmp_path / "result.npy"
    calls = []

    def terminated_kd_loss(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return kdloss.kd_loss(*args, **kwargs)

    monkeypatch.setattr(score_module, "kd_loss", terminated_kd_loss)
    before = sorted(os.listdir(tmp_path))
    assert main(["score", student_spec, teacher_spec, "--out", str(out), "--chunk-rows", "8"]) == 128 + signal.SIGTERM
    assert sorted(os.listdir(tmp_path)) == before
    assert "terminated" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is put back


def test_an_existing_output_is_replaced_by_a_complete_one(tmp_path, capsys):
    student, teacher = logit_pair((40, 6))
    student_spec, teacher_spec = store_pair(tmp_path, student, teacher)
    out = tmp_path / "result.npy"
    out.write_bytes(b"the previous result")
    os.chmod(out, 0o640)
    assert main(["score", student_spec, teacher_spec, "--out", str(out), "--chunk-rows", "8"]) == 0
    np.testing.assert_array_equal(np.load(out), expected_losses(student, teacher, 1.0), strict=True)
    assert os.stat(out).st_mode & 0o777 == 0o640  # the replaced file keeps its permissions
    assert sorted(os.listdir(tmp_path)) == ["result.npy", "student.npy", "teacher.npy"]


# ---------------------------------------------------------------------------------------------
# Memory: inputs are mapped a chunk at a time, never read whole.


@pytest.mark.parametrize("fmt", ["npy", "npz"])
def test_inputs_are_never_loaded_whole(tmp_path, capsys, fmt):
    student, teacher = logit_pair((2000, 1024))  # 8 MB per float32 input
    student_spec, teacher_spec = store_pair(tmp_path, student, teacher, fmt)
    del student, teacher
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        status = main(["score", student_spec, teacher_spec, "--chunk-rows", "32", "--out", str(tmp_path / "o.npy")])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert status == 0
    assert peak < 1_000_000, peak  # the files hold 16 MB; a chunk of both is 256 KB


@pytest.mark.parametrize("extension", [None, ".npy", ".csv"])
def test_short_rows_stay_bounded_with_every_output(tmp_path, capsys, extension):
    # 250,000 rows of 2 classes in one chunk. The summary's exact sum and the CSV text are made
    # a slice at a time: no Python float or string per row of the chunk (that took 16 MB for
    # the sum and 50 MB for the CSV text here).
    student, teacher = logit_pair((250_000, 2))
    student_spec, teacher_spec = store_pair(tmp_path, student, teacher)
    expected = expected_losses(student, teacher, 1.0)
    del student, teacher
    argv = ["score", student_spec, teacher_spec, "--quiet"]
    if extension:
        argv += ["--out", str(tmp_path / f"losses{extension}")]
    assert main(argv) == 0  # warm: imports and first-call allocations are not the point
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        status = main(argv)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert status == 0
    summary = [summary_of(line) for line in capsys.readouterr().out.splitlines()][-1]
    check_summary(summary, expected)
    if extension:
        written = read_output(tmp_path / f"losses{extension}", expected.dtype)
        np.testing.assert_array_equal(written, expected, strict=True)
    # The per-row losses are 1 MB; kd_loss's working copies and the summary's slices a few more.
    assert peak < 8_000_000, peak


# ---------------------------------------------------------------------------------------------
# Imports: kdloss never imports Dask by itself; kdloss.dask says what to install.


def test_importing_kdloss_and_its_cli_does_not_import_dask_zarr_or_tqdm():
    code = "import sys, kdloss, kdloss.cli; print(sorted({'dask', 'distributed', 'zarr', 'tqdm'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_kdloss_dask_without_dask_names_the_extra(monkeypatch):
    for name in list(sys.modules):
        if name == "dask" or name.startswith("dask.") or name == "kdloss.dask":
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "dask", None)  # import dask -> ImportError
    monkeypatch.setitem(sys.modules, "dask.array", None)
    with pytest.raises(ImportError, match=r"\[dask\]"):
        import kdloss.dask  # noqa: F401
