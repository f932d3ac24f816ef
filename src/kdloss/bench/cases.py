"""Shapes and the fixed-seed logits that every peer is timed on."""

import numpy as np

# The issue's shapes (issue 3, "Where the peers stand"): an image-classifier batch, an LLM
# vocabulary, short rows, and the seed-size single call.
ISSUE_SHAPES = ((8192, 1000), (1024, 32000), (1_000_000, 10), (1, 3))
DTYPES = {"float32": np.float32, "float64": np.float64}
TEMPERATURE = 4.0  # the issue's figures use T = 4
SEED = 0


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


def make_logits(shape, dtype, seed=SEED):
    """(student, teacher) like real logits: teacher ~ 3 N(0, 1), student = teacher + N(0, 1).

    A shape with one row is returned as 1-D vectors: that is how a single call is made (the
    seed's ``distillation_loss`` and the issue's "1 x 3 (one call)" row).
    """
    rows, classes = shape
    rng = np.random.default_rng(seed)
    # Drawn in float32 so that float32 and float64 runs see the same values.
    teacher = rng.standard_normal((rows, classes), dtype=np.float32) * np.float32(3.0)
    student = teacher + rng.standard_normal((rows, classes), dtype=np.float32)
    teacher, student = teacher.astype(dtype, copy=False), student.astype(dtype, copy=False)
    if rows == 1:
        return student[0].copy(), teacher[0].copy()
    return student, teacher


def rows_of(array):
    """Rows of a logits array whose last axis holds classes (1 for a 1-D call)."""
    return int(np.prod(array.shape[:-1], dtype=np.int64))
