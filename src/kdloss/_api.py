"""The public functions: validate, allocate, resolve threads, call the kernel."""

# Postponed annotations: help() shows "ArrayLike", not NumPy's expanded Union.
from __future__ import annotations

import math
from typing import Literal, overload

import numpy as np
from numpy.typing import ArrayLike

from . import _engine, _reduction
from ._divergences import resolve_divergence
from ._rows import row_blocks
from ._threads import resolve_num_threads
from ._typing import DivergenceName, ScalarReduction
from ._validation import (
    as_logits,
    as_logits_pair,
    check_reduction,
    check_temperature,
    check_weights,
    result_dtype,
)


def _row_losses(student, teacher, temperature, num_threads, divergence, parameters):
    """T^2 D per row (shape ``teacher.shape[:-1]``, float64) for validated arrays and a
    resolved divergence (``resolve_divergence``)."""
    n_threads = resolve_num_threads(num_threads)
    losses = np.empty(teacher.shape[:-1], dtype=np.float64)
    for student_rows, teacher_rows, out in row_blocks((student, teacher, losses), (1, 1, 0)):
        _engine.rows(student_rows, teacher_rows, temperature, out, n_threads, divergence=divergence,
                     parameters=parameters)
    return losses


def _summed_losses(student, teacher, temperature, num_threads, divergence, parameters):
    """The sum of T^2 D over all rows, for validated arrays, without a per-row array: rows in
    C order go through the reused buffer of a :class:`_reduction.BlockwiseSum`, so the result is
    ``blockwise_sum`` of the per-row losses, the same for every layout and thread count."""
    n_threads = resolve_num_threads(num_threads)
    total = _reduction.BlockwiseSum(math.prod(teacher.shape[:-1]))
    for student_rows, teacher_rows in row_blocks((student, teacher), (1, 1)):
        start = 0
        while start < teacher_rows.shape[0]:
            out = total.space()[: teacher_rows.shape[0] - start]
            stop = start + out.size
            _engine.rows(student_rows[start:stop], teacher_rows[start:stop], temperature, out, n_threads,
                         divergence=divergence, parameters=parameters)
            total.commit(out.size)
            start = stop
    return total.value


Reduction = Literal["mean", "sum", "none", "batchmean"]
_SCALAR_REDUCTIONS = ("mean", "sum", "batchmean")


@overload
def kd_loss(
    student_logits: ArrayLike, teacher_logits: ArrayLike, temperature: float = ..., *,
    reduction: Literal["none"], weights: ArrayLike | None = ..., num_threads: int | None = ...,
    divergence: DivergenceName = ..., beta: float | None = ...,
) -> np.ndarray: ...
@overload
def kd_loss(
    student_logits: ArrayLike, teacher_logits: ArrayLike, temperature: float = ..., *,
    reduction: ScalarReduction = ..., weights: ArrayLike | None = ..., num_threads: int | None = ...,
    divergence: DivergenceName = ..., beta: float | None = ...,
) -> float: ...
@overload
def kd_loss(
    student_logits: ArrayLike, teacher_logits: ArrayLike, temperature: float = ..., *,
    reduction: Reduction = ..., weights: ArrayLike | None = ..., num_threads: int | None = ...,
    divergence: DivergenceName = ..., beta: float | None = ...,
) -> float | np.ndarray: ...
def kd_loss(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    temperature: float = 1.0,
    *,
    reduction: Reduction = "mean",
    weights: ArrayLike | None = None,
    num_threads: int | None = None,
    divergence: DivergenceName = "kl",
    beta: float | None = None,
) -> float | np.ndarray:
    """Knowledge-distillation loss ``T^2 * KL(softmax(teacher / T) || softmax(student / T))``.

    Parameters
    ----------
    student_logits, teacher_logits : array_like, same shape ``(..., classes)``
        The last axis holds classes; every leading axis is a row (1-D is one row, ``(B, C)``
        a batch, ``(B, L, V)`` token-level distillation). float32 and float64 are computed
        and kept; float16 and bfloat16 (``ml_dtypes``) are read as float32 and give float32;
        mixed dtypes promote (with float64: float64; otherwise float32); ints and bools become
        float64. Any memory layout works; inputs are never written.
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
    divergence : {"kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl", "tvd"}
        The divergence ``D(P || Q)`` the loss is ``T^2`` times, ``P = softmax(teacher / T)``,
        ``Q = softmax(student / T)`` (README "Divergences"): ``"kl"`` (the default)
        ``KL(P || Q)``; ``"reverse_kl"`` ``KL(Q || P)``; ``"jsd"`` ``beta KL(P || M) + (1 - beta)
        KL(Q || M)``, ``M = beta P + (1 - beta) Q``; ``"skew_kl"`` ``KL(P || beta P + (1 - beta) Q)``;
        ``"skew_reverse_kl"`` ``KL(Q || beta Q + (1 - beta) P)``; ``"tvd"`` ``sum |P - Q| / 2``.
    beta : float in [0, 1], optional
        The parameter of ``"jsd"`` (default 0.5; 0 gives exactly ``"kl"``, 1 ``"reverse_kl"``),
        ``"skew_kl"`` and ``"skew_reverse_kl"`` (default 0.1). The other divergences take none:
        ValueError.

    Returns
    -------
    float or numpy.ndarray
        Full precision (never rounded). Special values follow README "Semantics" (and, per
        divergence, "Divergences"): NaN rows for NaN/+inf logits or all-masked teachers, +inf
        where the divergence is infinite (for ``"kl"``: where the student rules out a class the
        teacher allows).

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
    >>> kdloss.kd_loss(student, teacher, 2.0, divergence="jsd", beta=0.5)
    0.1537
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
        plain_kl = divergence == "kl" and beta is None  # the kernel's default form
        form = None if plain_kl else _engine.single_row_form(divergence, beta)
        if plain_kl or form is not None:
            loss = _engine.single_row_loss(student_logits, teacher_logits, temperature, form)
            if loss is not None:
                return loss
    student, teacher = as_logits_pair(student_logits, teacher_logits)
    temperature = check_temperature(temperature)
    reduction = check_reduction(reduction)
    weights = check_weights(weights, teacher.shape[:-1])
    divergence_row, parameters = resolve_divergence(divergence, beta)
    if weights is None and reduction != "none":
        total = _summed_losses(student, teacher, temperature, num_threads, divergence_row, parameters)
        return total if reduction == "sum" else _reduction.mean(total, math.prod(teacher.shape[:-1]))
    losses = _row_losses(student, teacher, temperature, num_threads, divergence_row, parameters)
    if weights is not None:
        losses = _reduction.weighted(losses, weights)
    denominator = _reduction.mean_denominator(losses.shape, weights)
    return _reduction.reduce(losses, reduction, denominator, result_dtype(teacher.dtype))


def _softmax(logits, temperature, num_threads, take_log):
    array = as_logits(logits)
    temperature = check_temperature(temperature)
    n_threads = resolve_num_threads(num_threads)
    out = np.empty(array.shape, dtype=result_dtype(array.dtype))
    for rows, out_rows in row_blocks((array, out), (1, 1)):
        _engine.softmax_rows(rows, temperature, out_rows, take_log, n_threads)
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
        The input's shape: float64 for float64 (and integer) input, float32 otherwise. A row
        with a NaN or +inf, or with every entry -inf, becomes NaN; -inf entries become 0.

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
