"""The NumPy oracle: what kdloss computes, in plain NumPy.

Same signatures and semantics as the compiled functions (``num_threads`` is accepted and
ignored). It computes in float64 and returns the same dtypes. The tests check the kernel
against it; read it to see exactly what kdloss returns, special values included. It is written
to be read, not to be fast: every step is one whole-array NumPy expression.

The functions and what they return:

* :func:`softmax`, :func:`log_softmax`: along the last axis, in the compute dtype.
* :func:`kd_loss`: ``T^2 KL(P || Q)`` per row, ``P = softmax(t / T)``, ``Q = softmax(s / T)``,
  optionally weighted per row, reduced.
* :func:`kd_loss_and_grad`: the same loss and the gradient of ``grad_output * loss``.
* :func:`hinton_loss`, :func:`hinton_loss_and_grad`: ``alpha T^2 KL + (1 - alpha) CE`` per
  row, with hard labels (``CE = logsumexp(s) - s_label`` at T = 1) and ``ignore_index``.

Validation is shared with the kernel (``kdloss._validation``), so the oracle accepts and
rejects exactly the same inputs, with the same messages.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from . import _api, _training
from ._typing import typed_as
from ._validation import (
    as_logits,
    as_logits_pair,
    check_alpha,
    check_grad_output,
    check_labels,
    check_reduction,
    check_temperature,
    check_weights,
)

# ---------------------------------------------------------------------------------------------
# Row pieces, in float64
# ---------------------------------------------------------------------------------------------


def _log_softmax64(x, temperature):
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        z = (x - np.max(x, axis=-1, keepdims=True)) / temperature  # NaN for +inf and all -inf rows
        return z - np.log(np.sum(np.exp(z), axis=-1, keepdims=True))


def _undefined_rows(*arrays):
    """Rows holding a NaN or a +inf in any of ``arrays``: their loss is NaN."""
    return np.any([np.any(np.isnan(a) | (a == np.inf), axis=-1) for a in arrays], axis=0)


def _kd_rows(student, teacher, temperature):
    """Per row (float64, shape ``teacher.shape[:-1]``): ``T^2 KL``, and the pieces its
    gradient needs: ``log P``, ``log Q``, ``KL``, and where the teacher masks a class."""
    log_p = _log_softmax64(teacher, temperature)
    log_q = _log_softmax64(student, temperature)
    masked = teacher == -np.inf
    with np.errstate(invalid="ignore"):
        # A class the teacher masks (-inf) adds nothing, whatever the student holds there.
        terms = np.where(masked, 0.0, np.exp(log_p) * (log_p - log_q))
    kl = np.sum(terms, axis=-1)
    losses = np.maximum(temperature**2 * kl, 0.0)  # KL >= 0

    # A student -inf on a class the teacher allows: that class has probability 0 under Q.
    student_gap = np.any((student == -np.inf) & ~masked, axis=-1)
    losses = np.where(student_gap, np.inf, losses)
    # NaN or +inf anywhere, or a teacher that allows no class: the row is undefined.
    undefined = _undefined_rows(student, teacher) | np.all(masked, axis=-1)
    losses = np.where(undefined, np.nan, losses)
    return losses, log_p, log_q, kl, masked


def _kd_row_grads(student, teacher, temperature):
    """Per-row ``T^2 KL`` and its gradients (float64, unscaled):

    ``d_s = T (Q - P)``; ``d_t = T P (log P - log Q - KL)``, 0 where the teacher masks a class.
    A NaN loss makes both NaN; a +inf loss (the student rules out a class the teacher allows)
    keeps the finite ``d_s`` and makes ``d_t`` NaN.
    """
    losses, log_p, log_q, kl, masked = _kd_rows(student, teacher, temperature)
    p, q = np.exp(log_p), np.exp(log_q)
    d_s = temperature * (q - p)
    with np.errstate(invalid="ignore"):
        d_t = np.where(masked, 0.0, temperature * p * (log_p - log_q - kl[..., None]))
    nan_rows = np.isnan(losses)[..., None]
    d_s = np.where(nan_rows, np.nan, d_s)
    d_t = np.where(nan_rows | (losses == np.inf)[..., None], np.nan, d_t)
    return losses, d_s, d_t


def _ce_row_grads(student, labels):
    """Per-row cross-entropy ``logsumexp(s) - s_y`` at T = 1 and its gradient ``R - onehot(y)``
    (float64), ``R = softmax(s)``. Rows with a negative label (ignored) get label 0 here; the
    caller leaves them out. A NaN or +inf logit, or a row all -inf, makes the row NaN (and its
    gradient NaN); a -inf label logit among finite ones gives +inf with a finite gradient.

    At the label, ``R_y - 1 = -sum_{j != y} R_j`` is summed directly: when the student is sure
    of its label, ``R_y - 1`` computed as a difference would cancel.
    """
    log_r = _log_softmax64(student, 1.0)
    r = np.exp(log_r)
    y = np.maximum(labels, 0)[..., None]
    onehot = np.arange(student.shape[-1]) == y
    ce = -np.take_along_axis(log_r, y, axis=-1)[..., 0]
    d_s = np.where(onehot, -np.sum(np.where(onehot, 0.0, r), axis=-1, keepdims=True), r)
    nan_rows = np.isnan(ce)[..., None]
    return ce, np.where(nan_rows, np.nan, d_s)


def _weighted(values, factors):
    """``factors * values`` per row, and exactly 0 where a factor is 0 (even for NaN values)."""
    with np.errstate(invalid="ignore"):
        return np.where(factors != 0.0, factors * values, 0.0)


def _reduce(losses, reduction, kept, dtype):
    """``losses`` (already weighted) reduced; ``kept`` is the weight of each row in the mean."""
    if reduction == "none":
        with np.errstate(over="ignore"):  # float32 output: a loss beyond 3.4e38 is inf
            return losses.astype(dtype)
    total = float(np.sum(losses))
    if reduction == "sum":
        return total
    denominator = float(np.sum(kept))
    return total / denominator if denominator else 0.0


def _row_factors(reduction, kept, grad_output):
    """The factor of each row's gradient: ``grad_output * w / sum(w)`` for "mean", ``grad_output
    * w`` for "sum", ``grad_output[i] * w_i`` for "none" (``kept`` holds w, 0 for left-out rows)."""
    if reduction == "none":
        return kept if grad_output is None else grad_output * kept
    if reduction == "sum":
        return grad_output * kept
    denominator = float(np.sum(kept))
    return grad_output * kept / denominator if denominator else np.zeros_like(kept)


def _scaled(grads, factors, kept):
    """Each row of ``grads`` times its factor; exactly 0 in a row left out (``kept`` 0), even
    a NaN row. A row that counts keeps its NaN under a factor of 0 (as autograd gives)."""
    with np.errstate(invalid="ignore"):
        return np.where(kept[..., None] != 0.0, factors[..., None] * grads, 0.0)


# ---------------------------------------------------------------------------------------------
# The public functions
# ---------------------------------------------------------------------------------------------


@typed_as(_api.log_softmax)
def log_softmax(logits: ArrayLike, temperature: float = 1.0, *, num_threads: int | None = None) -> np.ndarray:
    """``log_softmax(logits / T)`` along the last axis, as :func:`kdloss.log_softmax`.

    Parameters
    ----------
    logits, temperature, num_threads
        As in :func:`kdloss.log_softmax` (``num_threads`` is accepted and ignored).

    Returns
    -------
    numpy.ndarray
        The input's shape, in the compute dtype.

    Examples
    --------
    >>> import kdloss.reference
    >>> kdloss.reference.log_softmax([1.0, 2.0, 3.0])
    array([-2.4076, -1.4076, -0.4076])
    """
    x = as_logits(logits)
    return _log_softmax64(x, check_temperature(temperature)).astype(x.dtype)


@typed_as(_api.softmax)
def softmax(logits: ArrayLike, temperature: float = 1.0, *, num_threads: int | None = None) -> np.ndarray:
    """``softmax(logits / T)`` along the last axis, as :func:`kdloss.softmax`.

    Parameters
    ----------
    logits, temperature, num_threads
        As in :func:`kdloss.softmax` (``num_threads`` is accepted and ignored).

    Returns
    -------
    numpy.ndarray
        The input's shape, in the compute dtype.

    Examples
    --------
    >>> import kdloss.reference
    >>> kdloss.reference.softmax([1.0, 2.0, 3.0], temperature=2.0)
    array([0.1863, 0.3072, 0.5065])
    """
    x = as_logits(logits)
    return np.exp(_log_softmax64(x, check_temperature(temperature))).astype(x.dtype)


@typed_as(_api.kd_loss)
def kd_loss(student_logits: ArrayLike, teacher_logits: ArrayLike, temperature: float = 1.0, *,
            reduction: _api.Reduction = "mean", weights: ArrayLike | None = None,
            num_threads: int | None = None) -> float | np.ndarray:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))`` per row, reduced, as :func:`kdloss.kd_loss`.

    With ``weights``: ``w * loss`` per row (exactly 0 where ``w == 0``, even for a NaN row),
    ``"sum"`` adds them, ``"mean"`` divides the sum by ``sum(w)`` (0.0 when that is 0).

    Parameters
    ----------
    student_logits, teacher_logits, temperature, reduction, weights, num_threads
        As in :func:`kdloss.kd_loss` (``num_threads`` is accepted and ignored).

    Returns
    -------
    float or numpy.ndarray
        Per row for ``"none"`` (in the compute dtype), a Python float otherwise.

    Examples
    --------
    >>> import kdloss.reference
    >>> student = [[0.0, 1.0, 2.0], [1.0, 1.0, 1.0]]
    >>> teacher = [[2.0, 1.0, 0.0], [1.0, 1.0, 1.0]]
    >>> kdloss.reference.kd_loss(student, teacher, temperature=2.0)
    0.6403
    >>> kdloss.reference.kd_loss(student, teacher, 2.0, reduction="none")
    array([1.2806, 0.    ])
    """
    student, teacher = as_logits_pair(student_logits, teacher_logits)
    temperature = check_temperature(temperature)
    reduction = check_reduction(reduction)
    weights = check_weights(weights, teacher.shape[:-1])

    losses = _kd_rows(student, teacher, temperature)[0]
    kept = np.ones(losses.shape) if weights is None else weights
    if weights is not None:
        losses = _weighted(losses, weights)
    return _reduce(losses, reduction, kept, teacher.dtype)


@typed_as(_training.kd_loss_and_grad)
def kd_loss_and_grad(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    temperature: float = 1.0,
    *,
    reduction: _api.Reduction = "mean",
    weights: ArrayLike | None = None,
    grad_output: ArrayLike | None = None,
    teacher_grad: bool = False,
    num_threads: int | None = None,
) -> tuple[float | np.ndarray, ...]:
    """:func:`kd_loss` and the gradient of ``grad_output * loss``, as :func:`kdloss.kd_loss_and_grad`.

    Per row ``dL/ds = T (Q - P)`` and ``dL/dt = T P (log P - log Q - KL)`` (0 where the teacher
    masks a class), times ``grad_output * w / sum(w)`` ("mean"), ``grad_output * w`` ("sum"),
    or ``grad_output[i] * w_i`` ("none"). Returns ``(loss, d_student)`` or
    ``(loss, d_student, d_teacher)``, the gradients in the compute dtype.

    Parameters
    ----------
    student_logits, teacher_logits, temperature, reduction, weights, grad_output, teacher_grad, num_threads
        As in :func:`kdloss.kd_loss_and_grad` (``num_threads`` is accepted and ignored).

    Returns
    -------
    (loss, d_student) or (loss, d_student, d_teacher)

    Examples
    --------
    >>> import kdloss.reference
    >>> loss, d_student = kdloss.reference.kd_loss_and_grad([0.0, 1.0, 2.0], [2.0, 1.0, 0.0], 2.0)
    >>> loss
    1.2806
    >>> d_student
    array([-0.6403,  0.    ,  0.6403])
    """
    student, teacher = as_logits_pair(student_logits, teacher_logits)
    temperature = check_temperature(temperature)
    reduction = check_reduction(reduction)
    rows_shape = teacher.shape[:-1]
    weights = check_weights(weights, rows_shape)
    grad_output = check_grad_output(grad_output, reduction, rows_shape)

    losses, d_s, d_t = _kd_row_grads(student, teacher, temperature)
    kept = np.ones(rows_shape) if weights is None else weights
    if weights is not None:
        losses = _weighted(losses, weights)
    factors = _row_factors(reduction, kept, grad_output)
    loss = _reduce(losses, reduction, kept, teacher.dtype)
    d_student = _scaled(d_s, factors, kept).astype(teacher.dtype)
    if not teacher_grad:
        return loss, d_student
    return loss, d_student, _scaled(d_t, factors, kept).astype(teacher.dtype)


def _hinton(student_logits, teacher_logits, labels, temperature, alpha, ignore_index, reduction, weights,
            grad_output, teacher_grad, want_grad):
    student, teacher = as_logits_pair(student_logits, teacher_logits)
    temperature = check_temperature(temperature)
    alpha = check_alpha(alpha)
    reduction = check_reduction(reduction)
    rows_shape = teacher.shape[:-1]
    labels = check_labels(labels, rows_shape, teacher.shape[-1], ignore_index)
    weights = check_weights(weights, rows_shape)
    grad_output = check_grad_output(grad_output if want_grad else None, reduction, rows_shape)

    # A term whose weight is 0 is not computed (with alpha = 0 the teacher is not read).
    losses = np.zeros(rows_shape)
    d_s = np.zeros(teacher.shape)
    d_t = np.zeros(teacher.shape)
    if alpha != 0.0:
        kd, kd_d_s, kd_d_t = _kd_row_grads(student, teacher, temperature)
        losses, d_s, d_t = alpha * kd, alpha * kd_d_s, alpha * kd_d_t
    if alpha != 1.0:
        ce, ce_d_s = _ce_row_grads(student, labels)
        losses, d_s = losses + (1.0 - alpha) * ce, d_s + (1.0 - alpha) * ce_d_s

    # The rows that count: label not ignored, weight > 0.
    kept = np.where(labels >= 0, 1.0 if weights is None else weights, 0.0)
    losses = _weighted(losses, kept)
    loss = _reduce(losses, reduction, kept, teacher.dtype)
    if not want_grad:
        return loss
    factors = _row_factors(reduction, kept, grad_output)
    d_student = _scaled(d_s, factors, kept).astype(teacher.dtype)
    if not teacher_grad:
        return loss, d_student
    return loss, d_student, _scaled(d_t, factors, kept).astype(teacher.dtype)


@typed_as(_training.hinton_loss)
def hinton_loss(student_logits: ArrayLike, teacher_logits: ArrayLike, labels: ArrayLike, temperature: float = 1.0,
                alpha: float = 0.5, *, ignore_index: int = -100, reduction: _api.Reduction = "mean",
                weights: ArrayLike | None = None, num_threads: int | None = None) -> float | np.ndarray:
    """``alpha T^2 KL(P || Q) + (1 - alpha) CE(softmax(s), label)`` per row, as :func:`kdloss.hinton_loss`.

    ``CE = logsumexp(s) - s_label`` at T = 1. Rows labelled ``ignore_index`` are left out (0 in
    "none", and out of the mean's denominator); "mean" is 0.0 when no row counts.

    Parameters
    ----------
    student_logits, teacher_logits, labels, temperature, alpha, ignore_index, reduction, weights, num_threads
        As in :func:`kdloss.hinton_loss` (``num_threads`` is accepted and ignored).

    Returns
    -------
    float or numpy.ndarray
        Per row for ``"none"``, a Python float otherwise.

    Examples
    --------
    >>> import kdloss.reference
    >>> student = [[0.0, 1.0, 2.0], [1.0, 1.0, 1.0]]
    >>> teacher = [[2.0, 1.0, 0.0], [1.0, 1.0, 1.0]]
    >>> kdloss.reference.hinton_loss(student, teacher, [2, 0], temperature=2.0, alpha=0.5)
    0.6967
    """
    return _hinton(student_logits, teacher_logits, labels, temperature, alpha, ignore_index, reduction, weights,
                   None, False, want_grad=False)


@typed_as(_training.hinton_loss_and_grad)
def hinton_loss_and_grad(student_logits: ArrayLike, teacher_logits: ArrayLike, labels: ArrayLike,
                         temperature: float = 1.0, alpha: float = 0.5, *, ignore_index: int = -100,
                         reduction: _api.Reduction = "mean", weights: ArrayLike | None = None,
                         grad_output: ArrayLike | None = None, teacher_grad: bool = False,
                         num_threads: int | None = None) -> tuple[float | np.ndarray, ...]:
    """:func:`hinton_loss` and its gradient, as :func:`kdloss.hinton_loss_and_grad`:
    ``dL/ds = alpha T (Q - P) + (1 - alpha) (R - onehot(label))``, ``dL/dt = alpha T P (log P -
    log Q - KL)``, scaled as in :func:`kd_loss_and_grad`; ignored rows get 0.

    Parameters
    ----------
    student_logits, teacher_logits, labels, temperature, alpha, ignore_index, reduction, weights
        As in :func:`kdloss.hinton_loss`.
    grad_output, teacher_grad, num_threads
        As in :func:`kdloss.kd_loss_and_grad` (``num_threads`` is accepted and ignored).

    Returns
    -------
    (loss, d_student) or (loss, d_student, d_teacher)

    Examples
    --------
    >>> import kdloss.reference
    >>> loss, d_student = kdloss.reference.hinton_loss_and_grad([0.0, 1.0, 2.0], [2.0, 1.0, 0.0], 2, 2.0)
    >>> loss
    0.8441
    >>> d_student
    array([-0.2751,  0.1224,  0.1528])
    """
    return _hinton(student_logits, teacher_logits, labels, temperature, alpha, ignore_index, reduction, weights,
                   grad_output, teacher_grad, want_grad=True)
