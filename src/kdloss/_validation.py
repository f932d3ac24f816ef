"""Input validation and conversion, in one place, before any kernel work.

Every public function (kernel and reference alike) goes through these, so both accept and
reject exactly the same inputs with the same messages.
"""

import math
import numbers
import sys

import numpy as np

from ._dtypes import compute_row, promote

REDUCTIONS = ("none", "sum", "mean", "batchmean")


def plain(value):
    """``value`` for a message: NumPy scalars as the Python value they hold (``-1.0``, not
    ``np.float64(-1.0)``); anything else as it is (a 0-d array stays ``array(...)``: where its
    type is the error, a bare number would hide it)."""
    return value.item() if isinstance(value, np.generic) else value


def _is_torch_tensor(value, requiring_grad=False):
    """True for a torch tensor (that requires grad, with ``requiring_grad``), recognised without
    importing torch."""
    return type(value).__module__.startswith("torch") and (
        not requiring_grad or getattr(value, "requires_grad", False) is True)


def _reject_autograd_tensor(value, name):
    """TypeError for a tensor that requires grad (PyTorch's own ``.numpy()`` error says nothing
    of kdloss.torch)."""
    if _is_torch_tensor(value, requiring_grad=True):
        raise TypeError(
            f"{name} is a torch tensor that requires grad: the NumPy functions would cut it off the "
            "autograd graph; use kdloss.torch (kd_loss, hinton_loss, KDLoss, HintonLoss), or pass "
            "tensor.detach() for values alone"
        )


def logits_row(dtype, name):
    """The dtype-table row (``kdloss._dtypes``) an input of ``dtype`` is computed as, or TypeError."""
    row = compute_row(dtype)
    if row is None:
        raise TypeError(
            f"{name} must hold real numbers (float, int or bool), got dtype {dtype}"
        )
    return row


def pair_row(student_dtype, teacher_dtype, names=("student_logits", "teacher_logits")):
    """The dtype-table row student and teacher logits are computed in together, or TypeError
    naming the one that does not hold real numbers."""
    return promote(logits_row(student_dtype, names[0]), logits_row(teacher_dtype, names[1]))


def result_dtype(*dtypes):
    """The dtype of ``"none"`` losses, gradients and softmax output for inputs of ``dtypes``
    (one, or student's and teacher's)."""
    if len(dtypes) == 1:
        return logits_row(dtypes[0], "logits").result_dtype
    return pair_row(*dtypes).result_dtype


def check_classes(shape, name):
    """ValueError unless ``shape`` has a class axis holding at least one class."""
    if len(shape) == 0:
        raise ValueError(f"{name} must have at least one axis (the classes), got a scalar")
    if shape[-1] == 0:
        raise ValueError(f"{name} has zero classes (shape {tuple(shape)}); the last axis holds classes")


def _same_length(a, b):
    # Dask marks an unknown length (rows after boolean indexing) with NaN: two unknowns may agree.
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def check_same_shape(student_shape, teacher_shape):
    """ValueError unless the shapes are equal (axes of unknown length, NaN, match each other)."""
    if len(student_shape) != len(teacher_shape) or not all(map(_same_length, student_shape, teacher_shape)):
        raise ValueError(
            f"student and teacher logits must have the same shape, got student {tuple(student_shape)} "
            f"and teacher {tuple(teacher_shape)}"
        )


def _as_array(logits, name):
    """``logits`` as an array, and the dtype-table row it is computed as."""
    _reject_autograd_tensor(logits, name)
    try:
        array = np.asarray(logits)
    except (TypeError, RuntimeError) as error:  # e.g. a bfloat16 tensor, which NumPy has no dtype for
        if _is_torch_tensor(logits):
            raise TypeError(
                f"{name} is a torch tensor NumPy cannot read ({error}); use kdloss.torch (kd_loss, "
                "hinton_loss, KDLoss, HintonLoss), which reads float32, float64, float16 and bfloat16 "
                "CPU tensors in place"
            ) from None
        raise
    except ValueError as error:  # a ragged list
        raise ValueError(f"{name} must be a rectangular array (every row the same length): {error}") from None
    return array, logits_row(array.dtype, name)


def as_logits(logits, name="logits"):
    """``logits`` as an array of a dtype-table dtype, with at least one class.

    float64, float32, float16 and bfloat16 arrays are returned as they are (no copy, any
    layout; the engine hands 2-byte types to the kernel); other real dtypes are converted to
    float64.
    """
    array, row = _as_array(logits, name)
    check_classes(array.shape, name)
    return array.astype(row.numpy_dtype, copy=False)


def as_logits_pair(student_logits, teacher_logits):
    """Student and teacher as arrays of one common dtype-table dtype and the same shape
    (promoted as ``kdloss._dtypes.promote`` says)."""
    student, student_row = _as_array(student_logits, "student_logits")
    teacher, teacher_row = _as_array(teacher_logits, "teacher_logits")
    check_same_shape(student.shape, teacher.shape)
    check_classes(student.shape, "student_logits")  # the shapes are equal: one check covers both
    dtype = promote(student_row, teacher_row).numpy_dtype
    return student.astype(dtype, copy=False), teacher.astype(dtype, copy=False)


def real_scalar(value, name):
    """``value`` as a float, or TypeError unless it is one real number (Python, NumPy, 0-d
    array, framework scalar; not bool, complex or text). Not checked for finiteness."""
    if _is_torch_tensor(value, requiring_grad=True):
        raise TypeError(f"{name} is a torch tensor that requires grad: kdloss takes no gradient with respect to "
                        f"it; pass a number ({name}.item())")
    if (
        isinstance(value, (bool, np.bool_, str, bytes, complex))
        or np.ndim(value) != 0
        or np.iscomplexobj(value)
    ):
        raise TypeError(f"{name} must be a real number, got {plain(value)!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {plain(value)!r}") from None


def check_temperature(temperature, name="temperature"):
    """The temperature as a float, or an error if it is not finite and > 0, or so small (below the
    smallest normal double, 2.2e-308) that ``1 / T`` overflows. ``name`` is what messages call
    it (a command line's option)."""
    value = real_scalar(temperature, name)
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(f"{name} must be finite and > 0, got {plain(temperature)!r}")
    if value < sys.float_info.min:
        raise ValueError(
            f"{name} must be at least {sys.float_info.min!r} (a normal number, so that 1 / {name} is "
            f"finite), got {plain(temperature)!r}"
        )
    return value


def check_num_threads(num_threads):
    """``num_threads`` as given (None or a non-zero int), or TypeError / ValueError."""
    if num_threads is not None and (
        isinstance(num_threads, (bool, np.bool_)) or not isinstance(num_threads, numbers.Integral)
    ):
        raise TypeError(f"num_threads must be an int or None, got {plain(num_threads)!r}")
    if num_threads == 0:
        raise ValueError("num_threads must not be 0: use None for the default, or -1 for all CPUs")
    return None if num_threads is None else int(num_threads)


def check_reduction(reduction, name="reduction"):
    """The reduction with its synonym resolved: "none", "sum" or "mean"."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, REDUCTIONS))}; got {plain(reduction)!r}")
    return "mean" if reduction == "batchmean" else reduction


def _first_bad(mask):
    """The index of the first True in ``mask``, as a tuple (for error messages)."""
    return tuple(int(i) for i in np.unravel_index(np.argmax(mask), mask.shape))


def _real_array(values, name):
    _reject_autograd_tensor(values, name)
    array = np.asarray(values)
    if array.dtype.kind not in "biuf":
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
            f"weights must have shape {rows_shape} (the logits' shape without the class axis) or one that "
            f"broadcasts to it (a scalar, or 1 on any axis), got {array.shape}"
        ) from None
    array = np.array(array, dtype=np.float64, order="C")
    bad = ~(np.isfinite(array) & (array >= 0.0))
    if bad.any():
        index = _first_bad(bad)
        raise ValueError(f"weights must be finite and >= 0; got {plain(array[index])!r} at index {index}")
    return array


def check_ignore_index(ignore_index):
    """``ignore_index`` as an int, or TypeError."""
    if isinstance(ignore_index, (bool, np.bool_)) or not isinstance(ignore_index, (int, np.integer)):
        raise TypeError(f"ignore_index must be an int, got {plain(ignore_index)!r}")
    return int(ignore_index)


def check_labels(labels, rows_shape, n_classes, ignore_index):
    """Class labels as a C-contiguous int64 array of ``rows_shape``, with -1 where a row is
    ignored (its label is ``ignore_index``); any other label outside [0, n_classes) raises."""
    ignore_index = check_ignore_index(ignore_index)
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
            f"got {plain(array[index])} at index {index}"
        )
    # int64 before -1 goes in: an unsigned dtype would wrap it round to a huge class index.
    return np.array(np.where(ignored, -1, array.astype(np.int64, copy=False)), dtype=np.int64, order="C")


def check_alpha(alpha):
    """The mixing weight of Hinton's loss as a float in [0, 1]."""
    value = real_scalar(alpha, "alpha")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {plain(alpha)!r}")
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
