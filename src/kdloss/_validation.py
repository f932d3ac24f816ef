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


def _first_bad(mask):
    """The index of the first True in ``mask``, as a tuple (for error messages)."""
    return tuple(int(i) for i in np.unravel_index(np.argmax(mask), mask.shape))


def _real_array(values, name):
    array = np.asarray(values)
    if not (array.dtype.kind in "biuf"):
        raise TypeError(f"{name} must hold real numbers, got dtype {array.dtype}")
    return array


def check_weights(weights, rows_shape):
    """Per-row weights as a C-contiguous float64 array of ``rows_shape``, or None.

    Anything that broadcasts to ``rows_shape`` (the logits' shape without the class axis) is
    accepted, bool masks included; every weight must be finite and >= 0.
    """
    if weights is None:
        return None
    array = _real_array(weights, "weights")
    try:
        array = np.broadcast_to(array, rows_shape)
    except ValueError:
        raise ValueError(
            f"weights must have shape {rows_shape} (the logits' shape without the class axis), "
            f"got {array.shape}"
        ) from None
    array = np.array(array, dtype=np.float64, order="C")
    bad = ~(np.isfinite(array) & (array >= 0.0))
    if bad.any():
        index = _first_bad(bad)
        raise ValueError(f"weights must be finite and >= 0; got {array[index]!r} at index {index}")
    return array


def check_labels(labels, rows_shape, n_classes, ignore_index):
    """Class labels as a C-contiguous int64 array of ``rows_shape``, with -1 where a row is
    ignored (its label is ``ignore_index``); any other label outside [0, n_classes) raises."""
    if isinstance(ignore_index, (bool, np.bool_)) or not isinstance(ignore_index, (int, np.integer)):
        raise TypeError(f"ignore_index must be an int, got {ignore_index!r}")
    array = np.asarray(labels)
    if array.dtype.kind not in "iu":
        raise TypeError(f"labels must hold integers (class indices), got dtype {array.dtype}")
    if array.shape != tuple(rows_shape):
        raise ValueError(
            f"labels must have shape {tuple(rows_shape)} (the logits' shape without the class "
            f"axis), got {array.shape}"
        )
    ignored = array == ignore_index
    bad = ~ignored & ((array < 0) | (array >= n_classes))
    if bad.any():
        index = _first_bad(bad)
        raise ValueError(
            f"labels must be in [0, {n_classes}) or equal ignore_index={ignore_index}; "
            f"got {array[index]} at index {index}"
        )
    # int64 before -1 goes in: an unsigned dtype would wrap it round to a huge class index.
    return np.array(np.where(ignored, -1, array.astype(np.int64, copy=False)), dtype=np.int64, order="C")


def check_alpha(alpha):
    """The mixing weight of Hinton's loss as a float in [0, 1]."""
    if isinstance(alpha, (bool, np.bool_, str, bytes, complex)) or np.ndim(alpha) != 0:
        raise TypeError(f"alpha must be a real number, got {alpha!r}")
    value = float(alpha)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    return value


def check_grad_output(grad_output, reduction, rows_shape):
    """The upstream gradient: a float for "sum" and "mean" (default 1.0); for "none", a
    C-contiguous float64 array of ``rows_shape`` (anything that broadcasts to it), or None
    (all ones: each row's gradient of its own loss)."""
    if grad_output is None:
        return 1.0 if reduction != "none" else None
    array = _real_array(grad_output, "grad_output")
    if reduction != "none":
        if array.ndim != 0:
            raise ValueError(f"grad_output must be a scalar for reduction={reduction!r}, got shape {array.shape}")
        return float(array)
    try:
        return np.array(np.broadcast_to(array, rows_shape), dtype=np.float64, order="C")
    except ValueError:
        raise ValueError(
            f"grad_output must have shape {tuple(rows_shape)} (one value per row) for "
            f"reduction='none', got {array.shape}"
        ) from None
