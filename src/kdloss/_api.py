"""The public functions: validate, allocate, resolve threads, call the kernel."""

from __future__ import (
    annotations,  # help() shows "ArrayLike", not NumPy's expanded Union
)

import math
from typing import Literal, overload

import numpy as np
from numpy.typing import ArrayLike

from . import _kernel
from ._rows import row_blocks
from ._threads import resolve_num_threads
from ._typing import ScalarReduction
from ._validation import (
    as_logits,
    as_logits_pair,
    check_reduction,
    check_temperature,
    check_weights,
)

# Rows per kernel call when only the sum is wanted: the per-row losses go through a 256 KiB
# buffer that is reused, instead of an array with one entry per row.
SUM_BLOCK_ROWS = 1 << 15


# Fewer elements than this per thread and a call runs on fewer threads: waking a thread costs
# microseconds, and far more when another process holds its core. Results are the same.
MIN_ELEMENTS_PER_THREAD = 1 << 14


def threads_for(n_threads, n_rows, n_classes):
    """The threads a call of n_rows x n_classes logits uses: at most n_threads, and one per
    MIN_ELEMENTS_PER_THREAD logits."""
    return max(1, min(n_threads, n_rows * n_classes // MIN_ELEMENTS_PER_THREAD))


def _kl_rows(student_rows, teacher_rows, temperature, out, n_threads):
    """``out[i] = T^2 KL`` of row i of two 2-D views."""
    n_rows, n_classes = teacher_rows.shape
    n_threads = threads_for(n_threads, n_rows, n_classes)
    contiguous = student_rows.strides[1] == student_rows.itemsize and teacher_rows.strides[1] == teacher_rows.itemsize
    # Per-thread row buffers, needed only when a class axis is not contiguous.
    scratch_rows = 0 if contiguous else max(1, min(n_threads, n_rows))
    scratch = np.empty((scratch_rows, 2 * n_classes), dtype=teacher_rows.dtype)
    _kernel.kl_rows(student_rows, teacher_rows, temperature, out, scratch, n_threads)


def _row_losses(student, teacher, temperature, num_threads):
    """T^2 KL per row (shape ``teacher.shape[:-1]``, float64) for validated arrays."""
    n_threads = resolve_num_threads(num_threads)
    losses = np.empty(teacher.shape[:-1], dtype=np.float64)
    for student_rows, teacher_rows, out in row_blocks((student, teacher, losses), (1, 1, 0)):
        _kl_rows(student_rows, teacher_rows, temperature, out, n_threads)
    return losses


def _summed_losses(student, teacher, temperature, num_threads):
    """The sum of T^2 KL over all rows, for validated arrays, without a per-row array.

    Rows are taken in C order, SUM_BLOCK_ROWS at a time, through one reused buffer; each block
    is summed pairwise and the block sums are added exactly (``math.fsum``). The blocks depend
    on the shape alone, so the result is the same for every layout and thread count.
    """
    n_threads = resolve_num_threads(num_threads)
    buffer = np.empty(min(SUM_BLOCK_ROWS, math.prod(teacher.shape[:-1])), dtype=np.float64)
    filled, block_sums = 0, []
    for student_rows, teacher_rows in row_blocks((student, teacher), (1, 1)):
        start = 0
        while start < teacher_rows.shape[0]:
            stop = min(start + buffer.size - filled, teacher_rows.shape[0])
            out = buffer[filled : filled + stop - start]
            _kl_rows(student_rows[start:stop], teacher_rows[start:stop], temperature, out, n_threads)
            filled += stop - start
            start = stop
            if filled == buffer.size:
                block_sums.append(float(np.sum(buffer)))
                filled = 0
    if filled:
        block_sums.append(float(np.sum(buffer[:filled])))
    return math.fsum(block_sums)


def blockwise_sum(values):
    """The sum of a float64 array of per-row values in C order, as ``_summed_losses`` adds its
    rows: pairwise within blocks of SUM_BLOCK_ROWS, the block sums exactly."""
    values = np.ravel(values)
    if values.size <= SUM_BLOCK_ROWS:  # one block: fsum of one value is that value
        return float(np.sum(values))
    return math.fsum(float(np.sum(values[i : i + SUM_BLOCK_ROWS])) for i in range(0, values.size, SUM_BLOCK_ROWS))


def weighted_losses(losses, weights):
    """``weights * losses``, and exactly 0 where a weight is 0 (even if that row's loss is NaN)."""
    with np.errstate(invalid="ignore"):
        return np.where(weights != 0.0, weights * losses, 0.0)


Reduction = Literal["mean", "sum", "none", "batchmean"]
_SCALAR_REDUCTIONS = ("mean", "sum", "batchmean")


@overload
def kd_loss(
    student_logits: ArrayLike, teacher_logits: ArrayLike, temperature: float = ..., *,
    reduction: Literal["none"], weights: ArrayLike | None = ..., num_threads: int | None = ...,
) -> np.ndarray: ...
@overload
def kd_loss(
    student_logits: ArrayLike, teacher_logits: ArrayLike, temperature: float = ..., *,
    reduction: ScalarReduction = ..., weights: ArrayLike | None = ..., num_threads: int | None = ...,
) -> float: ...
@overload
def kd_loss(
    student_logits: ArrayLike, teacher_logits: ArrayLike, temperature: float = ..., *,
    reduction: Reduction = ..., weights: ArrayLike | None = ..., num_threads: int | None = ...,
) -> float | np.ndarray: ...
def kd_loss(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    temperature: float = 1.0,
    *,
    reduction: Reduction = "mean",
    weights: ArrayLike | None = None,
    num_threads: int | None = None,
) -> float | np.ndarray:
    """Knowledge-distillation loss ``T^2 * KL(softmax(teacher / T) || softmax(student / T))``.

    Parameters
    ----------
    student_logits, teacher_logits : array_like, same shape ``(..., classes)``
        The last axis holds classes; every leading axis is a row (1-D is one row, ``(B, C)``
        a batch, ``(B, L, V)`` token-level distillation). float32 and float64 are computed
        and kept; mixed precision promotes to float64; ints and bools become float64;
        float16 is computed as float32. Any memory layout works; inputs are never written.
    temperature : float
        Softening temperature ``T``, finite and > 0.
    reduction : {"mean", "sum", "none", "batchmean"}
        ``"none"``: one loss per row, an array of shape ``logits.shape[:-1]`` in the compute
        dtype. ``"sum"``: their sum. ``"mean"``: their mean over all rows (``"batchmean"`` is
        the same, for PyTorch users). Sums are in float64: pairwise over blocks of 32768 rows,
        and the block sums added exactly, so the order is fixed by the shape alone.
    weights : array_like, optional
        One weight per row (shape ``logits.shape[:-1]``, or anything that broadcasts to it; a
        bool padding mask works), finite and >= 0. ``"none"`` gives ``w * loss`` per row,
        ``"sum"`` is ``sum(w * loss)``, ``"mean"`` is ``sum(w * loss) / sum(w)`` (0.0 when
        every weight is 0). A row of weight 0 is left out: even a NaN there changes nothing.
    num_threads : int, optional
        OpenMP threads. None: ``OMP_NUM_THREADS`` or all usable CPUs; negative counts back
        (-1 = all). Results are bitwise identical for every thread count.

    Returns
    -------
    float or numpy.ndarray
        Full precision (never rounded). Special values follow README "Semantics": NaN rows for
        NaN/+inf logits or all-masked teachers, +inf where the student rules out a class the
        teacher allows.

    Examples
    --------
    >>> import kdloss
    >>> student = [[0.0, 1.0, 2.0], [1.0, 1.0, 1.0]]
    >>> teacher = [[2.0, 1.0, 0.0], [1.0, 1.0, 1.0]]
    >>> kdloss.kd_loss(student, teacher, temperature=2.0)  # the mean over rows
    0.6403
    >>> kdloss.kd_loss(student, teacher, 2.0, reduction="none")
    array([1.2806, 0.    ])
    >>> kdloss.kd_loss(student, teacher, 2.0, weights=[1.0, 0.0])  # sum(w * loss) / sum(w)
    1.2806
    """
    if (
        weights is None
        and type(reduction) is str
        and reduction in _SCALAR_REDUCTIONS
        and (num_threads is None or (type(num_threads) is int and num_threads != 0))
    ):
        # One row already in the kernel's form (1-D float arrays, a float temperature): the
        # kernel recognises it and returns the same value as below, without the conversions.
        # (One row of at most 16,384 classes runs on one thread whatever num_threads says.)
        loss = _kernel.single_row_loss(student_logits, teacher_logits, temperature)
        if loss is not None:
            return loss
    student, teacher = as_logits_pair(student_logits, teacher_logits)
    temperature = check_temperature(temperature)
    reduction = check_reduction(reduction)
    weights = check_weights(weights, teacher.shape[:-1])
    if weights is not None:
        losses = weighted_losses(_row_losses(student, teacher, temperature, num_threads), weights)
        if reduction == "none":
            with np.errstate(over="ignore"):
                return losses.astype(teacher.dtype, copy=False)
        total = blockwise_sum(losses)
        if reduction == "sum":
            return total
        weight_total = float(np.sum(weights))
        return total / weight_total if weight_total else 0.0
    if reduction == "none":
        losses = _row_losses(student, teacher, temperature, num_threads)
        with np.errstate(over="ignore"):  # a float32 row loss beyond 3.4e38 is inf, as documented
            return losses.astype(teacher.dtype, copy=False)
    total = _summed_losses(student, teacher, temperature, num_threads)
    if reduction == "sum":
        return total
    n_rows = math.prod(teacher.shape[:-1])
    return total / n_rows if n_rows else 0.0


def _softmax(logits, temperature, num_threads, take_log):
    array = as_logits(logits)
    temperature = check_temperature(temperature)
    n_threads = resolve_num_threads(num_threads)
    out = np.empty(array.shape, dtype=array.dtype)
    for rows, out_rows in row_blocks((array, out), (1, 1)):
        threads = max(1, min(n_threads, rows.shape[0]))  # rows are the unit of parallel work
        # Per-thread row buffers, needed only when the class axis is not contiguous.
        scratch_rows = threads if rows.strides[1] != rows.itemsize else 0
        scratch = np.empty((scratch_rows, rows.shape[1]), dtype=rows.dtype)
        _kernel.softmax_rows(rows, temperature, out_rows, scratch, take_log, threads)
    return out


def softmax(logits: ArrayLike, temperature: float = 1.0, *, num_threads: int | None = None) -> np.ndarray:
    """``softmax(logits / T)`` along the last axis, computed stably in double.

    Parameters
    ----------
    logits : array_like ``(..., classes)``
        Dtypes and layouts as in :func:`kd_loss`.
    temperature : float
        ``T``, finite and > 0.
    num_threads : int, optional
        As in :func:`kd_loss`.

    Returns
    -------
    numpy.ndarray
        The input's shape, in the compute dtype (float32 or float64). A row with a NaN or +inf,
        or with every entry -inf, becomes NaN; -inf entries become 0.

    Examples
    --------
    >>> import kdloss
    >>> kdloss.softmax([1.0, 2.0, 3.0])
    array([0.0900, 0.2447, 0.6652])
    >>> kdloss.softmax([1.0, 2.0, 3.0], temperature=2.0)  # softer
    array([0.1863, 0.3072, 0.5065])
    """
    return _softmax(logits, temperature, num_threads, take_log=False)


def log_softmax(logits: ArrayLike, temperature: float = 1.0, *, num_threads: int | None = None) -> np.ndarray:
    """``log_softmax(logits / T)`` along the last axis, computed stably in double.

    Parameters
    ----------
    logits, temperature, num_threads
        As in :func:`softmax`.

    Returns
    -------
    numpy.ndarray
        The input's shape, in the compute dtype. Special values as :func:`softmax`, except that
        -inf entries stay -inf.

    Examples
    --------
    >>> import kdloss
    >>> kdloss.log_softmax([1.0, 2.0, 3.0])
    array([-2.4076, -1.4076, -0.4076])
    >>> kdloss.log_softmax([0.0, float("-inf")])
    array([  0., -inf])
    """
    return _softmax(logits, temperature, num_threads, take_log=True)


def distillation_loss(student_logits: ArrayLike, teacher_logits: ArrayLike, temperature: float = 1.0) -> float:
    """``T^2 * KL(P_T || Q_T)`` for one pair of logit vectors, rounded to 4 decimal places.

    Parameters
    ----------
    student_logits, teacher_logits : sequence of float
        Equal-length, non-empty 1-D sequences (lists, tuples or arrays).
    temperature : float
        ``T``, finite and > 0.

    Returns
    -------
    float
        The loss rounded with ``round(x, 4)``, never ``-0.0``. For full precision and batches use
        :func:`kd_loss`.

    Examples
    --------
    >>> import kdloss
    >>> kdloss.distillation_loss([1.0, 2.0], [1.5, 2.5], temperature=1.0)  # offset logits: same distribution
    0.0
    >>> kdloss.distillation_loss([0.0, 1.0, 2.0], [2.0, 1.0, 0.0], temperature=2.0)
    1.2806
    """
    student, teacher = np.asarray(student_logits), np.asarray(teacher_logits)
    for name, array in (("student_logits", student), ("teacher_logits", teacher)):
        if array.ndim != 1:
            raise ValueError(f"{name} must be a 1-D sequence, got shape {array.shape}")
        if array.size == 0:
            raise ValueError(f"{name} is empty; give at least one logit")
    if student.size != teacher.size:
        raise ValueError(
            f"student_logits and teacher_logits must have equal length, got {student.size} and {teacher.size}"
        )
    loss = kd_loss(student, teacher, temperature, reduction="sum", num_threads=1)
    return round(loss, 4) + 0.0  # + 0.0 turns -0.0 into 0.0
