"""Distillation from a sparse (top-k) teacher: ``sparse_kd_loss`` and ``sparse_kd_loss_and_grad``.

Design. A row's ``k`` teacher ids (and for ``tail="zero"`` / ``"bucket"`` one more category, "the
rest of the vocabulary") form a small dense problem, which the dense engine (``_engine.rows``)
solves at temperature ``T``: every divergence of the table, its special values, reductions,
weights and the gradient with respect to the small logits come from there. What is new is how the
small student row is made from the full one, and how its gradient goes back:

- small student logits: ``s_i - s_max`` at the ids and, for the rest, ``T log R`` with
  ``R = sum_{j not an id} exp((s_j - s_max) / T)``: one vectorised pass over the student row in C
  (``_simd/sparse_rows.h``) finds ``s_max`` and then sums ``R`` directly over the classes outside
  the ids (never as a total minus the ids' part, which cancels). ``"renormalize"`` reads only
  the ids.
- small teacher logits: the values and, for ``"bucket"``, ``log r``, ``r = 1 - sum exp(values)``
  by log1mexp; ``"zero"`` gives the rest -inf. The engine divides both by ``T``.
- gradient: the engine's ``g`` at the ids is the gradient there; a class outside the ids gets
  ``g_rest exp((s_j - s_max) / T) / R`` (the chain rule through ``T log R``), written by a second
  C pass that also scatters the ids' ``g``. The first pass stores its exps in the gradient, which
  the second pass scales in place: one exponential per class.

Rows go through in blocks, so the small problems of many rows are one engine call and no
temporary has the student's size (beyond the gradient itself).
"""

from __future__ import annotations

from typing import Literal, overload

import numpy as np
from numpy.typing import ArrayLike

from . import _engine, _kernel, _reduction
from ._api import Reduction
from ._sparse_inputs import check_sparse_divergence, check_sparse_teacher, check_tail, teacher_rest_log
from ._threads import resolve_num_threads, threads_for
from ._typing import DivergenceName, ScalarReduction
from ._validation import (
    as_logits,
    check_grad_output,
    check_reduction,
    check_temperature,
    check_weights,
    result_dtype,
)

Tail = Literal["renormalize", "zero", "bucket"]
ValueKind = Literal["logprobs", "logits"]

# Student elements per block of rows: small problems of many rows per engine call, and per-block
# temporaries (a 2-byte block's float32 copy) of bounded size.
BLOCK_ELEMENTS = 1 << 25


def _small_rows(student, teacher, lo, hi, temperature, tail, threads, exps=None):
    """The small problem of rows ``lo:hi``: ``(small_student, small_teacher, s_max, rest)``
    (float64; ``s_max`` and ``rest`` None for ``"renormalize"``). ``exps``: the rows' gradient,
    where the pass over the student stores its exps for the gradient pass."""
    ids, counts = teacher.ids[lo:hi], teacher.counts[lo:hi]
    k = ids.shape[1]
    active = np.arange(k) < counts[:, None]
    gathered = np.take_along_axis(student, ids, axis=-1).astype(np.float64)
    if tail == "renormalize":
        small_student = np.where(active, gathered, -np.inf)
        return np.ascontiguousarray(small_student), np.ascontiguousarray(teacher.values[lo:hi]), None, None
    s_max = np.empty(hi - lo)
    rest = np.empty(hi - lo)
    _kernel.sparse_rest_rows(student, ids, counts, temperature, s_max, rest, threads, exps)
    shift = np.where(np.isfinite(s_max), s_max, 0.0)
    small_student = np.empty((hi - lo, k + 1))
    small_teacher = np.empty((hi - lo, k + 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        small_student[:, :k] = np.where(active, gathered - shift[:, None], -np.inf)
        small_student[:, k] = temperature * np.log(rest)
    small_teacher[:, :k] = teacher.values[lo:hi]
    if tail == "zero":
        small_teacher[:, k] = -np.inf
    else:
        small_teacher[:, k] = teacher_rest_log(teacher.values[lo:hi], counts, student.shape[1])
    return small_student, small_teacher, s_max, rest


def sparse_rows(student, teacher, temperature, *, tail, divergence, parameters, weights=None,
                grad_output=None, grad_scale=1.0, want_grad=False, num_threads=None):
    """Per-row losses (float64, ``(rows,)``) and, with ``want_grad``, the student's dense gradient
    (C-order, ``student``'s shape, float64 for float64 students, else float32), for validated
    inputs: ``student`` a 2-D ``(rows, V)`` array of a dtype-table dtype, ``teacher`` a
    :class:`SparseTeacher`, per-row ``weights``/``grad_output`` flat float64 or None."""
    n_rows, n_classes = student.shape
    n_threads = resolve_num_threads(num_threads)
    losses = np.empty(n_rows)
    out_dtype = np.float64 if student.dtype == np.float64 else np.float32
    d_student = None
    if want_grad:
        # "renormalize" writes only the ids: zeros from the allocator (calloc: fresh pages, or one
        # streaming memset) took half the time of a memset per row (1 GB: 30 against 57 ms).
        d_student = (np.zeros if tail == "renormalize" else np.empty)(student.shape, dtype=out_dtype)
    block = max(1, BLOCK_ELEMENTS // max(1, n_classes))
    for lo in range(0, n_rows, block):
        hi = min(n_rows, lo + block)
        rows = student[lo:hi]
        if tail != "renormalize":  # which reads the student at the ids alone
            rows = np.ascontiguousarray(rows, dtype=out_dtype if rows.dtype.itemsize == 2 else None)
        threads = threads_for(n_threads, hi - lo, n_classes)
        small_student, small_teacher, s_max, rest = _small_rows(rows, teacher, lo, hi, temperature, tail, threads,
                                                                None if d_student is None else d_student[lo:hi])
        small_grad = np.empty(small_student.shape) if want_grad else None
        _engine.rows(small_student, small_teacher, temperature, losses[lo:hi], n_threads,
                     divergence=divergence, parameters=parameters,
                     weights=None if weights is None else weights[lo:hi],
                     grad_output=None if grad_output is None else grad_output[lo:hi],
                     grad_scale=grad_scale, d_student=small_grad)
        if want_grad:
            k = teacher.ids.shape[1]
            if rest is None:  # "renormalize": the ids' gradients into the zeros
                row, slot = np.nonzero(np.arange(k) < teacher.counts[lo:hi, None])
                d_student[lo + row, teacher.ids[lo + row, slot]] = small_grad[row, slot]
                continue
            with np.errstate(invalid="ignore", divide="ignore"):
                # The chain rule through T log R; R = 0 (every other class -inf) takes nothing.
                g_rest = small_grad[:, k]
                coef = np.where(rest > 0.0, g_rest / rest, np.where(np.isnan(g_rest), np.nan, 0.0))
            _kernel.sparse_gradient_rows(rows, teacher.ids[lo:hi], teacher.counts[lo:hi],
                                         np.ascontiguousarray(small_grad[:, :k]), s_max, coef, temperature,
                                         d_student[lo:hi], threads, rest)
    return losses, d_student


def sparse_kd_loss_and_grads(student_logits, teacher_indices, teacher_values, temperature=1.0, *,
                             values="logprobs", tail="bucket", divergence="kl", beta=None, reduction="mean",
                             weights=None, grad_output=None, student_grad=True, num_threads=None):
    """``(loss, d_student)``: the reduced loss and, with ``student_grad``, the gradient of
    ``grad_output * loss`` (None otherwise)."""
    student = as_logits(student_logits, "student_logits")
    tail, values = check_tail(tail, values)
    teacher = check_sparse_teacher(teacher_indices, teacher_values, student.shape, values)
    temperature = check_temperature(temperature)
    row, parameters = check_sparse_divergence(divergence, beta, tail)
    reduction = check_reduction(reduction)
    rows_shape = teacher.rows_shape
    weights = check_weights(weights, rows_shape)
    denominator = _reduction.mean_denominator(rows_shape, weights) if reduction == "mean" else 1.0
    grad_output = check_grad_output(grad_output if student_grad else None, reduction, rows_shape)
    grad_scale = _reduction.grad_scale(reduction, grad_output, denominator)
    if reduction != "none":
        grad_output = None
    flat = np.reshape(student, (-1, student.shape[-1]))
    losses, d_student = sparse_rows(
        flat, teacher, temperature, tail=tail, divergence=row, parameters=parameters,
        weights=None if weights is None else weights.reshape(-1),
        grad_output=None if grad_output is None else grad_output.reshape(-1),
        grad_scale=grad_scale, want_grad=bool(student_grad), num_threads=num_threads,
    )
    loss = _reduction.reduce(losses.reshape(rows_shape), reduction, denominator, result_dtype(student.dtype))
    return loss, None if d_student is None else d_student.reshape(student.shape)


@overload
def sparse_kd_loss(
    student_logits: ArrayLike, teacher_indices: ArrayLike, teacher_values: ArrayLike, temperature: float = ...,
    *, values: ValueKind = ..., tail: Tail = ..., divergence: DivergenceName = ..., beta: float | None = ...,
    reduction: Literal["none"], weights: ArrayLike | None = ..., num_threads: int | None = ...,
) -> np.ndarray: ...
@overload
def sparse_kd_loss(
    student_logits: ArrayLike, teacher_indices: ArrayLike, teacher_values: ArrayLike, temperature: float = ...,
    *, values: ValueKind = ..., tail: Tail = ..., divergence: DivergenceName = ..., beta: float | None = ...,
    reduction: ScalarReduction = ..., weights: ArrayLike | None = ..., num_threads: int | None = ...,
) -> float: ...
@overload
def sparse_kd_loss(
    student_logits: ArrayLike, teacher_indices: ArrayLike, teacher_values: ArrayLike, temperature: float = ...,
    *, values: ValueKind = ..., tail: Tail = ..., divergence: DivergenceName = ..., beta: float | None = ...,
    reduction: Reduction = ..., weights: ArrayLike | None = ..., num_threads: int | None = ...,
) -> float | np.ndarray: ...
def sparse_kd_loss(
    student_logits: ArrayLike,
    teacher_indices: ArrayLike,
    teacher_values: ArrayLike,
    temperature: float = 1.0,
    *,
    values: ValueKind = "logprobs",
    tail: Tail = "bucket",
    divergence: DivergenceName = "kl",
    beta: float | None = None,
    reduction: Reduction = "mean",
    weights: ArrayLike | None = None,
    num_threads: int | None = None,
) -> float | np.ndarray:
    """Distillation loss from a sparse (top-k) teacher: ``T^2 * D(P || Q)`` per row.

    Parameters
    ----------
    student_logits : array_like ``(..., V)``
        The student's full logits; dtypes and layouts as in :func:`kd_loss`.
    teacher_indices : array_like of int ``(..., k)``
        The teacher's token ids per row (same leading axes), in ``[0, V)``, distinct within a row.
    teacher_values : array_like ``(..., k)``
        The teacher's values at those ids; -inf marks a padding slot (left out entirely).
    temperature : float
        ``T``, finite and > 0.
    values : {"logprobs", "logits"}
        ``"logprobs"``: full-vocabulary log-probabilities at T = 1 (their exps sum to at most 1;
        a row whose exps sum above 1 + 2^-4, beyond rounding, is a ValueError naming it);
        ``"logits"``: raw logits of those ids.
    tail : {"bucket", "zero", "renormalize"}
        What happens to the teacher's missing mass (README "Sparse teachers"): ``"renormalize"``
        compares both restricted to the ids; ``"zero"`` the teacher renormalised over its ids
        and the student over all V; ``"bucket"`` (logprobs only) k + 1 categories, the ids and the
        rest, ``r = 1 - sum exp(values)`` (at T != 1 each probability and r raised to 1/T, then
        renormalised: an approximation for a tail whose logits are unknown).
    divergence, beta
        A row of the divergence table (``"kl"``, ``"reverse_kl"``, ``"jsd"``, ``"skew_kl"``,
        ``"skew_reverse_kl"``, ``"tvd"``) and its parameter. One infinite by construction with
        the tail (e.g. ``reverse_kl`` with ``"zero"``) is a ValueError.
    reduction, weights, num_threads
        As in :func:`kd_loss`.

    Returns
    -------
    float or numpy.ndarray
        As :func:`kd_loss`; special values as the dense loss (README "Sparse teachers").

    Examples
    --------
    >>> import numpy as np
    >>> import kdloss
    >>> student = np.array([[2.0, 1.0, 0.0, -1.0]])
    >>> ids, logprobs = [[0, 2]], np.log([[0.6, 0.3]])  # top-2 of a teacher; 0.1 elsewhere
    >>> kdloss.sparse_kd_loss(student, ids, logprobs)  # tail="bucket": {0}, {2}, the rest
    0.2296
    >>> kdloss.sparse_kd_loss(student, ids, logprobs, tail="renormalize")
    0.1571
    """
    loss, _ = sparse_kd_loss_and_grads(
        student_logits, teacher_indices, teacher_values, temperature, values=values, tail=tail,
        divergence=divergence, beta=beta, reduction=reduction, weights=weights, student_grad=False,
        num_threads=num_threads,
    )
    return loss


@overload
def sparse_kd_loss_and_grad(
    student_logits: ArrayLike, teacher_indices: ArrayLike, teacher_values: ArrayLike, temperature: float = ...,
    *, values: ValueKind = ..., tail: Tail = ..., divergence: DivergenceName = ..., beta: float | None = ...,
    reduction: Literal["none"], weights: ArrayLike | None = ..., grad_output: ArrayLike | None = ...,
    num_threads: int | None = ...,
) -> tuple[np.ndarray, np.ndarray]: ...
@overload
def sparse_kd_loss_and_grad(
    student_logits: ArrayLike, teacher_indices: ArrayLike, teacher_values: ArrayLike, temperature: float = ...,
    *, values: ValueKind = ..., tail: Tail = ..., divergence: DivergenceName = ..., beta: float | None = ...,
    reduction: ScalarReduction = ..., weights: ArrayLike | None = ..., grad_output: ArrayLike | None = ...,
    num_threads: int | None = ...,
) -> tuple[float, np.ndarray]: ...
@overload
def sparse_kd_loss_and_grad(
    student_logits: ArrayLike, teacher_indices: ArrayLike, teacher_values: ArrayLike, temperature: float = ...,
    *, values: ValueKind = ..., tail: Tail = ..., divergence: DivergenceName = ..., beta: float | None = ...,
    reduction: Reduction = ..., weights: ArrayLike | None = ..., grad_output: ArrayLike | None = ...,
    num_threads: int | None = ...,
) -> tuple[float | np.ndarray, np.ndarray]: ...
def sparse_kd_loss_and_grad(
    student_logits: ArrayLike,
    teacher_indices: ArrayLike,
    teacher_values: ArrayLike,
    temperature: float = 1.0,
    *,
    values: ValueKind = "logprobs",
    tail: Tail = "bucket",
    divergence: DivergenceName = "kl",
    beta: float | None = None,
    reduction: Reduction = "mean",
    weights: ArrayLike | None = None,
    grad_output: ArrayLike | None = None,
    num_threads: int | None = None,
) -> tuple[float | np.ndarray, np.ndarray]:
    """:func:`sparse_kd_loss` and the gradient with respect to the student's logits.

    Parameters
    ----------
    student_logits, teacher_indices, teacher_values, temperature, values, tail, divergence, beta
        As in :func:`sparse_kd_loss`.
    reduction, weights, grad_output, num_threads
        As in :func:`kd_loss_and_grad`.

    Returns
    -------
    (loss, d_student)
        ``loss`` as :func:`sparse_kd_loss` returns it (the same bits); ``d_student`` dense, of the
        student's shape (float64 for float64 students, float32 otherwise), C-ordered. At an id it is
        the small problem's gradient there; elsewhere (``"zero"``, ``"bucket"``) the rest's
        gradient spread in proportion to ``exp(s_j / T)``; 0 outside the ids for ``"renormalize"``.

    Examples
    --------
    >>> import numpy as np
    >>> import kdloss
    >>> student = np.array([[2.0, 1.0, 0.0, -1.0]])
    >>> loss, d_student = kdloss.sparse_kd_loss_and_grad(student, [[0, 2]], np.log([[0.6, 0.3]]))
    >>> d_student
    array([[ 0.0439,  0.1488, -0.2129,  0.0201]])
    """
    return sparse_kd_loss_and_grads(
        student_logits, teacher_indices, teacher_values, temperature, values=values, tail=tail,
        divergence=divergence, beta=beta, reduction=reduction, weights=weights, grad_output=grad_output,
        num_threads=num_threads,
    )
