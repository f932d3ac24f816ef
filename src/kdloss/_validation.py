"""Input validation and conversion, in one place, before any kernel work.

Every public function (kernel and reference alike) goes through these, so both accept and
reject exactly the same inputs with the same messages.
"""

import math

import numpy as np

REDUCTIONS = ("none", "sum", "mean", "batchmean")


def _compute_dtype(dtype, name):
    """The dtype kdloss computes in for an input of ``dtype``, or TypeError."""
    if dtype.kind == "b" or dtype.kind in "iu":
        return np.dtype(np.float64)
    if dtype.kind == "f":
        if dtype.itemsize <= 4:  # float16 is computed as float32
            return np.dtype(np.float32)
        return np.dtype(np.float64)  # float64, and longdouble computed as float64
    raise TypeError(f"{name} must hold real numbers (float, int or bool), got dtype {dtype}")


def _as_array(logits, name):
    """``logits`` as an array, and the dtype kdloss computes it in."""
    array = np.asarray(logits)
    return array, _compute_dtype(array.dtype, name)


def _check_classes(array, name):
    if array.ndim == 0:
        raise ValueError(f"{name} must have at least one axis (the classes), got a scalar")
    if array.shape[-1] == 0:
        raise ValueError(f"{name} has zero classes (shape {array.shape}); the last axis holds classes")


def as_logits(logits, name="logits"):
    """``logits`` as an array of the dtype kdloss computes in, with at least one class.

    Float32/float64 arrays are returned as they are (no copy, any layout).
    """
    array, dtype = _as_array(logits, name)
    _check_classes(array, name)
    return array.astype(dtype, copy=False)


def as_logits_pair(student_logits, teacher_logits):
    """Student and teacher as arrays of one common compute dtype and the same shape."""
    student, student_dtype = _as_array(student_logits, "student_logits")
    teacher, teacher_dtype = _as_array(teacher_logits, "teacher_logits")
    if student.shape != teacher.shape:
        raise ValueError(
            f"student and teacher logits must have the same shape, got student {student.shape} "
            f"and teacher {teacher.shape}"
        )
    _check_classes(student, "student_logits")  # the shapes are equal: one check covers both
    dtype = np.result_type(student_dtype, teacher_dtype)
    return student.astype(dtype, copy=False), teacher.astype(dtype, copy=False)


def check_temperature(temperature):
    """The temperature as a float, or an error if it is not finite and > 0."""
    # Real scalars of any kind (Python, NumPy, 0-d arrays, framework scalars); not bool or complex.
    if (
        isinstance(temperature, (bool, np.bool_, str, bytes, complex))
        or np.ndim(temperature) != 0
        or np.iscomplexobj(temperature)
    ):
        raise TypeError(f"temperature must be a real number, got {temperature!r}")
    try:
        value = float(temperature)
    except (TypeError, ValueError):
        raise TypeError(f"temperature must be a real number, got {temperature!r}") from None
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(f"temperature must be finite and > 0, got {temperature!r}")
    return value


def check_reduction(reduction):
    """The reduction with its synonym resolved: "none", "sum" or "mean"."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(map(repr, REDUCTIONS))}; got {reduction!r}")
    return "mean" if reduction == "batchmean" else reduction
