"""Helpers for the ``kdloss score`` tests: logit pairs, stored in each input format."""

import json

import numpy as np
import pytest

FORMATS = ("npy", "npy_fortran", "npz", "npz_compressed", "zarr")


def logit_pair(shape, dtype=np.float32, seed=0):
    """A (student, teacher) pair of ``shape`` whose losses are of ordinary size."""
    rng = np.random.default_rng(seed)
    teacher = rng.standard_normal(shape) * 3
    student = teacher + rng.standard_normal(shape)
    return student.astype(dtype), teacher.astype(dtype)


def store(folder, name, array, fmt):
    """Save ``array`` in ``fmt`` under ``folder``; return the input spec ``kdloss score`` takes."""
    if fmt == "npy":
        path = folder / f"{name}.npy"
        np.save(path, array)
        return str(path)
    if fmt == "npy_fortran":
        path = folder / f"{name}.npy"
        np.save(path, np.asfortranarray(array))
        return str(path)
    if fmt in ("npz", "npz_compressed"):
        path = folder / f"{name}.npz"
        save = np.savez if fmt == "npz" else np.savez_compressed
        save(path, other=np.zeros(3), logits=array)
        return f"{path}:logits"
    if fmt == "zarr":
        zarr = pytest.importorskip("zarr")
        path = folder / f"{name}.zarr"
        chunks = tuple(max(1, n // 3) for n in array.shape[:-1]) + array.shape[-1:]
        stored = zarr.open_array(str(path), mode="w", shape=array.shape, chunks=chunks, dtype=array.dtype)
        stored[...] = array
        return str(path)
    raise ValueError(fmt)


def store_pair(folder, student, teacher, fmt="npy"):
    return store(folder, "student", student, fmt), store(folder, "teacher", teacher, fmt)


def summary_of(stdout):
    """The JSON summary: stdout must be exactly one line of JSON."""
    lines = stdout.splitlines()
    assert len(lines) == 1, stdout
    return json.loads(lines[0])


def read_output(path, dtype):
    """Per-row losses from a ``.npy`` or ``.csv`` output, flat, in ``dtype``."""
    if str(path).endswith(".npy"):
        return np.load(path)
    with open(path) as f:
        assert f.readline() == "row,loss\n"
        rows = [line.rstrip("\n").split(",") for line in f]
    assert [int(index) for index, _ in rows] == list(range(len(rows)))
    return np.array([float(loss) for _, loss in rows], dtype=np.float64).astype(dtype)


def assert_refused(capsys, argv, words):
    """``kdloss ARGV`` exits 2 with one line on stderr, ``kdloss score: error: ...``, naming each
    of ``words``, and prints nothing on stdout."""
    from kdloss.cli import main

    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("kdloss score: error: "), captured.err
    for word in words:
        assert word in lines[0], (word, lines[0])
