"""What training needs: losses with their gradients, and Hinton's loss with hard labels.

The same layers as ``_api``: validate and convert here, allocate the outputs, resolve threads,
then one fused kernel pass per row (``_engine.rows``) gives the loss and its gradient; the
reduction's rules (denominator, gradient scale) are ``_reduction``'s.
"""

# Postponed annotations: help() shows "ArrayLike", not NumPy's expanded Union.
from __future__ import annotations

from typing import Literal, overload

import numpy as np
from numpy.typing import ArrayLike

from . import _engine, _reduction
from ._api import Reduction
from ._divergences import resolve_divergence
from ._rows import row_blocks
from ._threads import resolve_num_threads
from ._typing import DivergenceName, ScalarReduction
from ._validation import (
    as_logits_pair,
    check_alpha,
    check_grad_output,
    check_labels,
    check_reduction,
    check_temperature,
    check_weights,
    result_dtype,
)


def _rows_loss_and_grad(student, teacher, temperature, *, labels, kl_weight, ce_weight, weights,
                        grad_output, grad_scale, want_student_grad, want_teacher_grad, num_threads,
                        divergence, parameters, round_to_odd=False):
    """Per-row weighted losses (float64, shape ``teacher.shape[:-1]``) and the gradients (C-order
    arrays of the logits' shape and result dtype, or None), for validated inputs."""
    dtype = result_dtype(teacher.dtype)
    n_threads = resolve_num_threads(num_threads)
    losses = np.empty(teacher.shape[:-1], dtype=np.float64)
    d_student = np.empty(teacher.shape, dtype=dtype) if want_student_grad else None
    d_teacher = np.empty(teacher.shape, dtype=dtype) if want_teacher_grad else None

    # The optional per-row arrays travel through row_blocks beside the logits.
    arrays = {"student": student, "teacher": teacher, "out": losses, "labels": labels,
              "weights": weights, "grad_output": grad_output, "d_student": d_student,
              "d_teacher": d_teacher}
    names = [name for name, array in arrays.items() if array is not None]
    trailing = [1 if name in ("student", "teacher", "d_student", "d_teacher") else 0 for name in names]
    for views in row_blocks(tuple(arrays[name] for name in names), trailing):
        block = dict(zip(names, views))
        _engine.rows(block.pop("student"), block.pop("teacher"), temperature, n_threads=n_threads,
                     divergence=divergence, parameters=parameters, kl_weight=kl_weight,
                     ce_weight=ce_weight, grad_scale=grad_scale, round_to_odd=round_to_odd, **block)
    return losses, d_student, d_teacher


def _reduced(student, teacher, temperature, *, reduction, weights, labels, kl_weight, ce_weight,
             grad_output, student_grad, teacher_grad, num_threads, divergence, parameters,
             round_to_odd=False):
    """``(loss, d_student, d_teacher)`` for validated inputs: the reduced loss and the gradients
    asked for (None for the others; see ``kd_loss_and_grad``)."""
    rows_shape = teacher.shape[:-1]
    denominator = 1.0
    if reduction == "mean":  # the total weight of the rows that count
        denominator = _reduction.mean_denominator(rows_shape, _reduction.kept_weights(rows_shape, weights, labels))
    want_grad = student_grad or teacher_grad
    grad_output = check_grad_output(grad_output if want_grad else None, reduction, rows_shape)
    grad_scale = _reduction.grad_scale(reduction, grad_output, denominator)
    if reduction != "none":  # a scalar: it is in grad_scale
        grad_output = None
    losses, d_student, d_teacher = _rows_loss_and_grad(
        student, teacher, temperature, labels=labels, kl_weight=kl_weight, ce_weight=ce_weight,
        weights=weights, grad_output=grad_output, grad_scale=grad_scale,
        want_student_grad=student_grad, want_teacher_grad=teacher_grad, num_threads=num_threads,
        divergence=divergence, parameters=parameters, round_to_odd=round_to_odd,
    )
    loss = _reduction.reduce(losses, reduction, denominator, result_dtype(teacher.dtype), round_to_odd)
    return loss, d_student, d_teacher


def kd_loss_and_grads(student_logits, teacher_logits, temperature=1.0, *, reduction="mean",
                      weights=None, grad_output=None, student_grad=True, teacher_grad=False,
                      num_threads=None, divergence="kl", beta=None, round_to_odd=False):
    """``(loss, d_student, d_teacher)``, each gradient only if asked for (else None): what
    ``kd_loss_and_grad`` returns, for callers (``kdloss.torch``) that may want the teacher's
    gradient alone, or none. ``round_to_odd``: float32 results of 2-byte inputs (per-row losses,
    gradients) rounded to odd, for a caller that rounds them on to the inputs' type."""
    student, teacher = as_logits_pair(student_logits, teacher_logits)
    temperature = check_temperature(temperature)
    reduction = check_reduction(reduction)
    weights = check_weights(weights, teacher.shape[:-1])
    divergence, parameters = resolve_divergence(divergence, beta)
    return _reduced(
        student, teacher, temperature, reduction=reduction, weights=weights, labels=None,
        kl_weight=1.0, ce_weight=0.0, grad_output=grad_output, student_grad=bool(student_grad),
        teacher_grad=bool(teacher_grad), num_threads=num_threads, divergence=divergence,
        parameters=parameters, round_to_odd=round_to_odd,
    )


def hinton_loss_and_grads(student_logits, teacher_logits, labels, temperature=1.0, alpha=0.5, *,
                          ignore_index=-100, reduction="mean", weights=None, grad_output=None,
                          student_grad=True, teacher_grad=False, num_threads=None, divergence="kl",
                          beta=None, round_to_odd=False):
    """As ``kd_loss_and_grads``, for Hinton's loss (``hinton_loss_and_grad``)."""
    student, teacher = as_logits_pair(student_logits, teacher_logits)
    temperature = check_temperature(temperature)
    alpha = check_alpha(alpha)
    reduction = check_reduction(reduction)
    rows_shape = teacher.shape[:-1]
    labels = check_labels(labels, rows_shape, teacher.shape[-1], ignore_index)
    weights = check_weights(weights, rows_shape)
    divergence, parameters = resolve_divergence(divergence, beta)
    return _reduced(
        student, teacher, temperature, reduction=reduction, weights=weights, labels=labels,
        kl_weight=alpha, ce_weight=1.0 - alpha, grad_output=grad_output,
        student_grad=bool(student_grad), teacher_grad=bool(teacher_grad), num_threads=num_threads,
        divergence=divergence, parameters=parameters, round_to_odd=round_to_odd,
    )


# The reduction decides the loss's type (as in kd_loss), teacher_grad the tuple's length.
@overload
def kd_loss_and_grad(
    student_logits: ArrayLike, teacher_logits: ArrayLike, temperature: float = ..., *,
    reduction: ScalarReduction = ..., weights: ArrayLike | None = ..., grad_output: ArrayLike | None = ...,
    teacher_grad: Literal[False] = ..., num_threads: int | None = ...,
    divergence: DivergenceName = ..., beta: float | None = ...,
) -> tuple[float, np.ndarray]: ...
@overload
def kd_loss_and_grad(
    student_logits: ArrayLike, teacher_logits: ArrayLike, temperature: float = ..., *,
    reduction: Literal["none"], weights: ArrayLike | None = ..., grad_output: ArrayLike | None = ...,
    teacher_grad: Literal[False] = ..., num_threads: int | None = ...,
    divergence: DivergenceName = ..., beta: float | None = ...,
) -> tuple[np.ndarray, np.ndarray]: ...
@overload
def kd_loss_and_grad(
    student_logits: ArrayLike, teacher_logits: ArrayLike, temperature: float = ..., *,
    reduction: ScalarReduction = ..., weights: ArrayLike | None = ..., grad_output: ArrayLike | None = ...,
    teacher_grad: Literal[True], num_threads: int | None = ...,
    divergence: DivergenceName = ..., beta: float | None = ...,
) -> tuple[float, np.ndarray, np.ndarray]: ...
@overload
def kd_loss_and_grad(
    student_logits: ArrayLike, teacher_logits: ArrayLike, temperature: float = ..., *,
    reduction: Literal["none"], weights: ArrayLike | None = ..., grad_output: ArrayLike | None = ...,
    teacher_grad: Literal[True], num_threads: int | None = ...,
    divergence: DivergenceName = ..., beta: float | None = ...,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...
@overload
def kd_loss_and_grad(
    student_logits: ArrayLike, teacher_logits: ArrayLike, temperature: float = ..., *,
    reduction: Reduction = ..., weights: ArrayLike | None = ..., grad_output: ArrayLike | None = ...,
    teacher_grad: bool = ..., num_threads: int | None = ...,
    divergence: DivergenceName = ..., beta: float | None = ...,
) -> tuple[float | np.ndarray, ...]: ...
def kd_loss_and_grad(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    temperature: float = 1.0,
    *,
    reduction: Reduction = "mean",
    weights: ArrayLike | None = None,
    grad_output: ArrayLike | None = None,
    teacher_grad: bool = False,
    num_threads: int | None = None,
    divergence: DivergenceName = "kl",
    beta: float | None = None,
) -> tuple[float | np.ndarray, ...]:
    """:func:`kd_loss` and its gradient, in one fused pass.

    Parameters
    ----------
    student_logits, teacher_logits, temperature, reduction, weights, num_threads, divergence, beta
        As in :func:`kd_loss`.
    grad_output : float or array_like, optional
        The upstream gradient. For ``"sum"`` and ``"mean"``, a scalar (default 1.0: the
        gradient of the loss itself). For ``"none"``, one value per row (shape
        ``logits.shape[:-1]``, or anything that broadcasts to it); the default, all ones,
        gives each row the gradient of its own loss (rows do not interact).
    teacher_grad : bool
        Also return the gradient with respect to the teacher's logits (mutual learning).

    Returns
    -------
    (loss, d_student) or (loss, d_student, d_teacher)
        ``loss`` exactly as :func:`kd_loss` returns it (the same bits). The gradients are
        arrays of the logits' shape and result dtype (float64 for float64 and integer
        input, float32 otherwise), C-ordered, of ``grad_output * loss``: per row, ``dL/ds = T (Q - P)`` and
        ``dL/dt = T P (log P - log Q - KL)`` (0 where the teacher masks a class), times
        ``w / sum(w)`` for ``"mean"`` (``1 / rows`` without weights), ``w`` for ``"sum"``.
        Computed in double, rounded once. A row of weight 0 has gradient 0. A row whose loss
        is NaN has NaN gradients; a row whose loss is +inf (the student rules out a class the
        teacher allows) has the finite ``d_student`` autograd gives and a NaN ``d_teacher``.
        For another ``divergence``, ``dL/ds = T Q (g - E_Q[g])`` and ``dL/dt = T P (f - E_P[f])``
        with ``g = dD/dQ``, ``f = dD/dP`` (README "Divergences").

    Examples
    --------
    >>> import kdloss
    >>> student = [[0.0, 1.0, 2.0], [1.0, 1.0, 1.0]]
    >>> teacher = [[2.0, 1.0, 0.0], [1.0, 1.0, 1.0]]
    >>> loss, d_student = kdloss.kd_loss_and_grad(student, teacher, temperature=2.0)
    >>> loss
    0.6403
    >>> d_student.round(4) + 0.0  # T (Q - P) / rows, to 4 decimals (+ 0.0: no -0.0)
    array([[-0.3202,  0.    ,  0.3202],
           [ 0.    ,  0.    ,  0.    ]])
    >>> loss, d_student, d_teacher = kdloss.kd_loss_and_grad(student, teacher, 2.0, teacher_grad=True)
    >>> d_teacher[0]
    array([ 0.3443, -0.0984, -0.2460])
    """
    loss, d_student, d_teacher = kd_loss_and_grads(
        student_logits, teacher_logits, temperature, reduction=reduction, weights=weights,
        grad_output=grad_output, teacher_grad=teacher_grad, num_threads=num_threads,
        divergence=divergence, beta=beta,
    )
    return (loss, d_student, d_teacher) if teacher_grad else (loss, d_student)


@overload
def hinton_loss(
    student_logits: ArrayLike, teacher_logits: ArrayLike, labels: ArrayLike, temperature: float = ...,
    alpha: float = ..., *, ignore_index: int = ..., reduction: Literal["none"], weights: ArrayLike | None = ...,
    num_threads: int | None = ...,
    divergence: DivergenceName = ..., beta: float | None = ...,
) -> np.ndarray: ...
@overload
def hinton_loss(
    student_logits: ArrayLike, teacher_logits: ArrayLike, labels: ArrayLike, temperature: float = ...,
    alpha: float = ..., *, ignore_index: int = ..., reduction: ScalarReduction = ...,
    weights: ArrayLike | None = ..., num_threads: int | None = ...,
    divergence: DivergenceName = ..., beta: float | None = ...,
) -> float: ...
@overload
def hinton_loss(
    student_logits: ArrayLike, teacher_logits: ArrayLike, labels: ArrayLike, temperature: float = ...,
    alpha: float = ..., *, ignore_index: int = ..., reduction: Reduction = ..., weights: ArrayLike | None = ...,
    num_threads: int | None = ...,
    divergence: DivergenceName = ..., beta: float | None = ...,
) -> float | np.ndarray: ...
def hinton_loss(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    labels: ArrayLike,
    temperature: float = 1.0,
    alpha: float = 0.5,
    *,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
    weights: ArrayLike | None = None,
    num_threads: int | None = None,
    divergence: DivergenceName = "kl",
    beta: float | None = None,
) -> float | np.ndarray:
    """Hinton's distillation objective with hard labels, per row:

    ``alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(softmax(s), label)``

    where ``CE(softmax(s), y) = logsumexp(s) - s_y`` is the cross-entropy at temperature 1.

    Parameters
    ----------
    student_logits, teacher_logits : array_like ``(..., classes)``
        As in :func:`kd_loss`.
    labels : array_like of int, shape ``logits.shape[:-1]``
        The true class of each row, in ``[0, classes)``, or ``ignore_index``. Anything else
        raises ValueError.
    temperature : float
        ``T`` of the KL term (the cross-entropy is at T = 1).
    divergence, beta
        As in :func:`kd_loss`: the soft term is ``alpha * T^2 * D`` (default KL).
    alpha : float in [0, 1]
        The weight of the KL term. A term whose weight is 0 is not computed: with
        ``alpha=0`` the teacher is not read (a NaN there changes nothing); with ``alpha=1``
        labels are still checked.
    ignore_index : int
        Rows with this label (padding tokens) are left out of both terms and of the mean.
    reduction, weights, num_threads
        As in :func:`kd_loss`; ``"mean"`` divides by the total weight of the rows not ignored
        (their number without weights), and is 0.0 when there are none.

    Returns
    -------
    float or numpy.ndarray
        As :func:`kd_loss`: per row for ``"none"``, a Python float otherwise.

    Special values: the KL term as :func:`kd_loss`; the cross-entropy is NaN for a row with a
    NaN or +inf student logit, or all -inf, and +inf when the label's logit is -inf.

    Examples
    --------
    >>> import kdloss
    >>> student = [[0.0, 1.0, 2.0], [1.0, 1.0, 1.0]]
    >>> teacher = [[2.0, 1.0, 0.0], [1.0, 1.0, 1.0]]
    >>> kdloss.hinton_loss(student, teacher, labels=[2, 0], temperature=2.0, alpha=0.5)
    0.6967
    >>> kdloss.hinton_loss(student, teacher, [2, -100], 2.0, reduction="none")  # -100: ignored
    array([0.8441, 0.    ])
    """
    loss, _, _ = hinton_loss_and_grads(
        student_logits, teacher_logits, labels, temperature, alpha, ignore_index=ignore_index,
        reduction=reduction, weights=weights, student_grad=False, num_threads=num_threads,
        divergence=divergence, beta=beta,
    )
    return loss


@overload
def hinton_loss_and_grad(
    student_logits: ArrayLike, teacher_logits: ArrayLike, labels: ArrayLike, temperature: float = ...,
    alpha: float = ..., *, ignore_index: int = ..., reduction: ScalarReduction = ...,
    weights: ArrayLike | None = ..., grad_output: ArrayLike | None = ..., teacher_grad: Literal[False] = ...,
    num_threads: int | None = ...,
    divergence: DivergenceName = ..., beta: float | None = ...,
) -> tuple[float, np.ndarray]: ...
@overload
def hinton_loss_and_grad(
    student_logits: ArrayLike, teacher_logits: ArrayLike, labels: ArrayLike, temperature: float = ...,
    alpha: float = ..., *, ignore_index: int = ..., reduction: Literal["none"],
    weights: ArrayLike | None = ..., grad_output: ArrayLike | None = ..., teacher_grad: Literal[False] = ...,
    num_threads: int | None = ...,
    divergence: DivergenceName = ..., beta: float | None = ...,
) -> tuple[np.ndarray, np.ndarray]: ...
@overload
def hinton_loss_and_grad(
    student_logits: ArrayLike, teacher_logits: ArrayLike, labels: ArrayLike, temperature: float = ...,
    alpha: float = ..., *, ignore_index: int = ..., reduction: ScalarReduction = ...,
    weights: ArrayLike | None = ..., grad_output: ArrayLike | None = ..., teacher_grad: Literal[True],
    num_threads: int | None = ...,
    divergence: DivergenceName = ..., beta: float | None = ...,
) -> tuple[float, np.ndarray, np.ndarray]: ...
@overload
def hinton_loss_and_grad(
    student_logits: ArrayLike, teacher_logits: ArrayLike, labels: ArrayLike, temperature: float = ...,
    alpha: float = ..., *, ignore_index: int = ..., reduction: Literal["none"],
    weights: ArrayLike | None = ..., grad_output: ArrayLike | None = ..., teacher_grad: Literal[True],
    num_threads: int | None = ...,
    divergence: DivergenceName = ..., beta: float | None = ...,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...
@overload
def hinton_loss_and_grad(
    student_logits: ArrayLike, teacher_logits: ArrayLike, labels: ArrayLike, temperature: float = ...,
    alpha: float = ..., *, ignore_index: int = ..., reduction: Reduction = ...,
    weights: ArrayLike | None = ..., grad_output: ArrayLike | None = ..., teacher_grad: bool = ...,
    num_threads: int | None = ...,
    divergence: DivergenceName = ..., beta: float | None = ...,
) -> tuple[float | np.ndarray, ...]: ...
def hinton_loss_and_grad(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    labels: ArrayLike,
    temperature: float = 1.0,
    alpha: float = 0.5,
    *,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
    weights: ArrayLike | None = None,
    grad_output: ArrayLike | None = None,
    teacher_grad: bool = False,
    num_threads: int | None = None,
    divergence: DivergenceName = "kl",
    beta: float | None = None,
) -> tuple[float | np.ndarray, ...]:
    """:func:`hinton_loss` and its gradient in one fused pass.

    Per row, ``dL/ds = alpha T (Q - P) + (1 - alpha) (softmax(s) - onehot(label))`` and
    ``dL/dt = alpha T P (log P - log Q - KL)``, scaled by the reduction as in
    :func:`kd_loss_and_grad`; ignored rows and rows of weight 0 get 0. A NaN cross-entropy
    makes that row's ``d_student`` NaN.

    Parameters
    ----------
    student_logits, teacher_logits, labels, temperature, alpha, ignore_index, reduction, weights, num_threads
        As in :func:`hinton_loss`.
    divergence, beta
        As in :func:`kd_loss`.
    grad_output, teacher_grad
        As in :func:`kd_loss_and_grad`.

    Returns
    -------
    (loss, d_student) or (loss, d_student, d_teacher)
        ``loss`` exactly as :func:`hinton_loss` returns it; the gradients as in
        :func:`kd_loss_and_grad`.

    Examples
    --------
    >>> import kdloss
    >>> student = [[0.0, 1.0, 2.0], [1.0, 1.0, 1.0]]
    >>> teacher = [[2.0, 1.0, 0.0], [1.0, 1.0, 1.0]]
    >>> loss, d_student = kdloss.hinton_loss_and_grad(student, teacher, [2, 0], temperature=2.0)
    >>> loss
    0.6967
    >>> d_student
    array([[-0.1376,  0.0612,  0.0764],
           [-0.1667,  0.0833,  0.0833]])
    """
    loss, d_student, d_teacher = hinton_loss_and_grads(
        student_logits, teacher_logits, labels, temperature, alpha, ignore_index=ignore_index,
        reduction=reduction, weights=weights, grad_output=grad_output, teacher_grad=teacher_grad,
        num_threads=num_threads, divergence=divergence, beta=beta,
    )
    return (loss, d_student, d_teacher) if teacher_grad else (loss, d_student)
