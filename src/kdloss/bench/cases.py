"""Shapes and the fixed-seed logits that every peer is timed on."""

import numpy as np

# The issue's shapes (issue 3, "Where the peers stand"): an image-classifier batch, an LLM
# vocabulary, short rows, and the seed-size single call.
ISSUE_SHAPES = ((8192, 1000), (1024, 32000), (1_000_000, 10), (1, 3))
DTYPES = {"float32": np.float32, "float64": np.float64}
# Every dtype kdloss bench runs: 2-byte inputs too (bfloat16 from ml_dtypes, as JAX uses).
BENCH_DTYPES = ("float32", "float64", "float16", "bfloat16")
TWO_BYTE_DTYPES = ("float16", "bfloat16")
TEMPERATURE = 4.0  # the issue's figures use T = 4
SEED = 0
# How far the student is from the teacher (student = teacher + eps N(0, 1)): 1 as in the issue's
# figures, and 0.01, a student close to convergence (row KL about 3e-6 at T = 4).
DEFAULT_EPS = (1.0, 0.01)


def numpy_dtype(name):
    """The NumPy dtype of a name in BENCH_DTYPES (imports ml_dtypes for bfloat16)."""
    from .._dtypes import DTYPES as TABLE

    return TABLE[name].numpy_dtype


def parse_shape(text):
    """``"8192x1000"`` -> ``(8192, 1000)``; ``"3"`` -> ``(1, 3)``. Raises ValueError naming ``text``."""
    parts = text.strip().lower().replace("_", "").split("x")
    try:
        numbers = [int(part) for part in parts]
    except ValueError:
        raise ValueError(f"shape must be ROWSxCLASSES such as 8192x1000, got {text!r}") from None
    if len(numbers) == 1:
        numbers = [1, *numbers]
    if len(numbers) != 2 or min(numbers) <= 0:
        raise ValueError(f"shape must be ROWSxCLASSES with positive sizes, such as 8192x1000, got {text!r}")
    return tuple(numbers)


def format_shape(shape):
    """``(8192, 1000)`` -> ``"8192 x 1000"``; a one-row shape is a single 1-D call."""
    rows, classes = shape
    return f"1 x {classes} (one call)" if rows == 1 else f"{rows} x {classes}"


def make_logits(shape, dtype, seed=SEED, eps=1.0):
    """(student, teacher) like real logits: teacher ~ 3 N(0, 1), student = teacher + eps N(0, 1)
    (as ``benchmarks/eps_sweep.py``: the same draws for every eps and dtype).

    A shape with one row is returned as 1-D vectors: that is how a single call is made (the
    seed's ``distillation_loss`` and the issue's "1 x 3 (one call)" row).
    """
    rows, classes = shape
    rng = np.random.default_rng(seed)
    # Drawn in float32, the student summed in float64 and rounded once to float32, so that every
    # dtype sees the same values (2-byte dtypes rounded once more).
    teacher = rng.standard_normal((rows, classes), dtype=np.float32) * np.float32(3.0)
    noise = rng.standard_normal((rows, classes), dtype=np.float32)
    student = (teacher.astype(np.float64) + eps * noise.astype(np.float64)).astype(np.float32)
    del noise
    teacher, student = teacher.astype(dtype, copy=False), student.astype(dtype, copy=False)
    if rows == 1:
        return student[0].copy(), teacher[0].copy()
    return student, teacher


def rows_of(array):
    """Rows of a logits array whose last axis holds classes (1 for a 1-D call)."""
    return int(np.prod(array.shape[:-1], dtype=np.int64))
