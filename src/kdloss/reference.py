"""The NumPy oracle: what kdloss computes, in plain NumPy.

Same signatures and semantics as the compiled functions (``num_threads`` is accepted and
ignored). It computes in float64 and returns the same dtypes. The tests check the kernel
against it; read it to see exactly what kdloss returns, special values included. It is written
to be read, not to be fast: every step is one whole-array NumPy expression.

The functions and what they return:

* :func:`softmax`, :func:`log_softmax`: along the last axis, in the result dtype (``kdloss._dtypes``).
* :func:`kd_loss`: ``T^2 D(P || Q)`` per row, ``P = softmax(t / T)``, ``Q = softmax(s / T)``,
  optionally weighted per row, reduced; ``D`` is KL unless ``divergence=`` names another row
  of the divergence table (``kdloss._divergences``).
* :func:`kd_loss_and_grad`: the same loss and the gradient of ``grad_output * loss``.
* :func:`hinton_loss`, :func:`hinton_loss_and_grad`: ``alpha T^2 D + (1 - alpha) CE`` per
  row, with hard labels (``CE = logsumexp(s) - s_label`` at T = 1) and ``ignore_index``.
* Per divergence, the per-row float64 oracles its registry row names: the value (:func:`kl_rows`,
  :func:`reverse_kl_rows`, :func:`jsd_rows`, :func:`skew_kl_rows`, :func:`skew_reverse_kl_rows`,
  :func:`tvd_rows`) and the value with its gradients (:func:`kl_row_grads`, ...,
  :func:`tvd_row_grads`); :func:`cross_entropy_rows`, Hinton's cross-entropy term.
* :func:`sparse_kd_loss`, :func:`sparse_rows`: a sparse (top-k) teacher, as
  :func:`kdloss.sparse_kd_loss` (the small distributions each ``tail`` defines, compared by the
  divergence's own oracle).

Validation (``kdloss._validation``) and the reduction rules (``kdloss._reduction``: weights,
rows left out, the mean's denominator, gradient scaling, the blockwise sum) are shared with the
kernel's front end, so the oracle accepts and rejects exactly the same inputs, with the same
messages, and reduces the same way; the per-row arithmetic is its own, in float64 NumPy, and
never calls the kernel.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

from . import _reduction as reduction_rules
from ._typing import DivergenceName, typed_as

if TYPE_CHECKING:  # the front end imports the oracle: only the type checker reads these
    from . import _api, _training  # noqa: TC004 (read only inside the never-called typed_as lambdas)
    from ._api import Reduction
from ._validation import (
    as_logits,
    as_logits_pair,
    check_alpha,
    check_grad_output,
    check_labels,
    check_reduction,
    check_temperature,
    check_weights,
    result_dtype,
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
    # A class the teacher masks (-inf) adds nothing, whatever the student holds there; nor does
    # a class whose P underflows to 0 (p log p -> 0), where log P - log Q may be -inf - -inf.
    vanishing = np.exp(log_p) == 0.0
    with np.errstate(invalid="ignore"):
        terms = np.where(masked | vanishing, 0.0, np.exp(log_p) * (log_p - log_q))
    kl = np.sum(terms, axis=-1)
    with np.errstate(over="ignore"):  # T (T KL): T^2 alone overflows for T > 1.3e154
        losses = np.maximum(temperature * (temperature * kl), 0.0)  # KL >= 0

    # A student -inf on a class the teacher allows: that class has probability 0 under Q.
    student_gap = np.any((student == -np.inf) & ~masked, axis=-1)
    losses = np.where(student_gap, np.inf, losses)
    # NaN or +inf anywhere, or a teacher that allows no class: the row is undefined.
    undefined = _undefined_rows(student, teacher) | np.all(masked, axis=-1)
    losses = np.where(undefined, np.nan, losses)
    return losses, log_p, log_q, kl, masked | vanishing


def kl_rows(student: ArrayLike, teacher: ArrayLike, temperature: float) -> np.ndarray:
    """The oracle of divergence ``"kl"`` (``kdloss._divergences``): ``T^2 KL(P || Q)`` per row,
    float64, shape ``teacher.shape[:-1]``, for logits of one shape (any real dtype) and a
    temperature already checked.

    Examples
    --------
    >>> import kdloss.reference
    >>> kdloss.reference.kl_rows([[0.0, 1.0, 2.0], [1.0, 1.0, 1.0]], [[2.0, 1.0, 0.0], [1.0, 1.0, 1.0]], 2.0)
    array([1.2806, 0.    ])
    """
    return _kd_rows(np.asarray(student), np.asarray(teacher), temperature)[0]


def _settled(values, student, teacher, form):
    """The documented values of rows with special logits (README "Semantics"), for a divergence
    computed as ``form`` (``kdloss._divergences.KernelForm``), over the per-row ``values``: NaN
    for a NaN or +inf logit; +inf where one side rules out (-inf) a class the other allows, if
    that makes this divergence infinite; NaN for a side that allows no class at all."""
    student_gap = np.any((student == -np.inf) & (teacher != -np.inf), axis=-1)
    teacher_gap = np.any((teacher == -np.inf) & (student != -np.inf), axis=-1)
    values = np.where(np.all(teacher == -np.inf, axis=-1) | np.all(student == -np.inf, axis=-1), np.nan, values)
    if form.infinite_where_teacher_rules_out:
        values = np.where(teacher_gap, np.inf, values)
    if form.infinite_where_student_rules_out:
        values = np.where(student_gap, np.inf, values)
    return np.where(_undefined_rows(student, teacher), np.nan, values)


def _kl_of_logs(log_x, log_y):
    """``sum x (log x - log y)`` per row from logs (a class with x = 0 adds 0)."""
    with np.errstate(invalid="ignore"):
        return np.sum(np.where(log_x == -np.inf, 0.0, np.exp(log_x) * (log_x - log_y)), axis=-1)


def _divergence_rows(student, teacher, temperature, form, value):
    """``T^2 value(log P, log Q)`` per row, at least 0, special values settled for ``form``."""
    student, teacher = np.asarray(student), np.asarray(teacher)
    log_p = _log_softmax64(teacher, temperature)
    log_q = _log_softmax64(student, temperature)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        values = np.maximum(temperature * (temperature * value(log_p, log_q)), 0.0)  # T^2 overflows past 1.3e154
    return _settled(values, student, teacher, form)


def _log_mixture(weight, log_x, log_y):
    """``log(weight X + (1 - weight) Y)`` from ``log X`` and ``log Y``, 0 < weight < 1."""
    return np.logaddexp(np.log(weight) + log_x, np.log1p(-weight) + log_y)


def reverse_kl_rows(student: ArrayLike, teacher: ArrayLike, temperature: float) -> np.ndarray:
    """The oracle of divergence ``"reverse_kl"``: ``T^2 KL(Q || P)`` per row (as :func:`kl_rows`).

    Examples
    --------
    >>> import kdloss.reference
    >>> kdloss.reference.reverse_kl_rows([[0.0, 1.0, 3.0]], [[2.0, 1.0, 0.0]], 1.0)
    array([1.6851])
    """
    from ._divergences import DIVERGENCES

    return _divergence_rows(student, teacher, temperature, DIVERGENCES["reverse_kl"].kernel_form(),
                            lambda log_p, log_q: _kl_of_logs(log_q, log_p))


def jsd_rows(student: ArrayLike, teacher: ArrayLike, temperature: float, beta: float = 0.5) -> np.ndarray:
    """The oracle of divergence ``"jsd"``: ``T^2 (beta KL(P || M) + (1 - beta) KL(Q || M))`` per
    row, ``M = beta P + (1 - beta) Q``; ``T^2 KL(P || Q)`` at beta = 0, ``T^2 KL(Q || P)`` at 1.

    Examples
    --------
    >>> import kdloss.reference
    >>> kdloss.reference.jsd_rows([[0.0, 1.0, 3.0]], [[2.0, 1.0, 0.0]], 1.0)
    array([0.3532])
    """
    if beta == 0.0:
        return kl_rows(student, teacher, temperature)
    if beta == 1.0:
        return reverse_kl_rows(student, teacher, temperature)
    from ._divergences import DIVERGENCES

    def value(log_p, log_q):
        log_m = _log_mixture(beta, log_p, log_q)
        return beta * _kl_of_logs(log_p, log_m) + (1.0 - beta) * _kl_of_logs(log_q, log_m)

    return _divergence_rows(student, teacher, temperature, DIVERGENCES["jsd"].kernel_form(beta=beta), value)


def skew_kl_rows(student: ArrayLike, teacher: ArrayLike, temperature: float, beta: float = 0.1) -> np.ndarray:
    """The oracle of divergence ``"skew_kl"``: ``T^2 KL(P || beta P + (1 - beta) Q)`` per row.

    Examples
    --------
    >>> import kdloss.reference
    >>> kdloss.reference.skew_kl_rows([[0.0, 1.0, 3.0]], [[2.0, 1.0, 0.0]], 1.0)
    array([1.1994])
    """
    if beta == 0.0:
        return kl_rows(student, teacher, temperature)
    from ._divergences import DIVERGENCES

    def value(log_p, log_q):
        return _kl_of_logs(log_p, log_p if beta == 1.0 else _log_mixture(beta, log_p, log_q))

    return _divergence_rows(student, teacher, temperature, DIVERGENCES["skew_kl"].kernel_form(beta=beta), value)


def skew_reverse_kl_rows(student: ArrayLike, teacher: ArrayLike, temperature: float,
                         beta: float = 0.1) -> np.ndarray:
    """The oracle of divergence ``"skew_reverse_kl"``: ``T^2 KL(Q || beta Q + (1 - beta) P)`` per row.

    Examples
    --------
    >>> import kdloss.reference
    >>> kdloss.reference.skew_reverse_kl_rows([[0.0, 1.0, 3.0]], [[2.0, 1.0, 0.0]], 1.0)
    array([1.1823])
    """
    from ._divergences import DIVERGENCES

    def value(log_p, log_q):
        if beta == 0.0:
            return _kl_of_logs(log_q, log_p)
        return _kl_of_logs(log_q, log_q if beta == 1.0 else _log_mixture(beta, log_q, log_p))

    return _divergence_rows(student, teacher, temperature,
                            DIVERGENCES["skew_reverse_kl"].kernel_form(beta=beta), value)


def tvd_rows(student: ArrayLike, teacher: ArrayLike, temperature: float) -> np.ndarray:
    """The oracle of divergence ``"tvd"``: ``T^2 (1/2) sum |P - Q|`` per row.

    Examples
    --------
    >>> import kdloss.reference
    >>> kdloss.reference.tvd_rows([[0.0, 1.0, 3.0]], [[2.0, 1.0, 0.0]], 1.0)
    array([0.7538])
    """
    from ._divergences import DIVERGENCES

    return _divergence_rows(student, teacher, temperature, DIVERGENCES["tvd"].kernel_form(),
                            lambda log_p, log_q: 0.5 * np.sum(np.abs(np.exp(log_p) - np.exp(log_q)), axis=-1))


def _softmax_gradients(log_p, log_q, f, g, temperature):
    """``(d_s, d_t)`` of ``T^2 D`` through the two softmaxes, from ``g = dD/dQ`` and ``f = dD/dP``
    per class: ``d_s = T Q (g - E_Q[g])``, ``d_t = T P (f - E_P[f])``. A class of probability 0
    adds nothing (its f or g may be infinite there)."""
    p, q = np.exp(log_p), np.exp(log_q)
    with np.errstate(invalid="ignore", over="ignore"):
        f = np.where(p > 0.0, f, 0.0)
        g = np.where(q > 0.0, g, 0.0)
        d_t = temperature * p * (f - np.sum(p * f, axis=-1, keepdims=True))
        d_s = temperature * q * (g - np.sum(q * g, axis=-1, keepdims=True))
    return d_s, d_t


def _weighted(weight, x):
    """``weight * x``, and 0 where the weight is 0 (``x`` may then be NaN: 0 / 0 where both P and M
    vanish), as the kernel's."""
    return weight * x if weight != 0.0 else np.zeros_like(x)


def _divergence_row_grads(student, teacher, temperature, value_rows, directions):
    """Per-row ``T^2 D`` (``value_rows``, the divergence's oracle) and its gradients (float64,
    unscaled), ``directions(log P, log Q) -> (f, g)``. A row whose value is not finite (NaN, or
    +inf where one side rules out a class the other allows) has NaN gradients, as the kernel's."""
    student, teacher = np.asarray(student), np.asarray(teacher)
    losses = value_rows(student, teacher, temperature)
    log_p = _log_softmax64(teacher, temperature)
    log_q = _log_softmax64(student, temperature)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        f, g = directions(log_p, log_q)
    d_s, d_t = _softmax_gradients(log_p, log_q, f, g, temperature)
    undefined = ~np.isfinite(losses)[..., None]
    return losses, np.where(undefined, np.nan, d_s), np.where(undefined, np.nan, d_t)


def kl_row_grads(student: ArrayLike, teacher: ArrayLike,
                 temperature: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The gradient oracle of divergence ``"kl"``: ``(T^2 KL per row, d_student, d_teacher)``,
    float64, unscaled: ``d_s = T (Q - P)``, ``d_t = T P (log P - log Q - KL)`` (0 where the
    teacher masks a class). A NaN row has NaN gradients; a +inf row (the student rules out a
    class the teacher allows) keeps the finite ``d_s`` autograd gives and has a NaN ``d_t``.

    Examples
    --------
    >>> import kdloss.reference
    >>> loss, d_s, d_t = kdloss.reference.kl_row_grads([[0.0, 1.0, 2.0]], [[2.0, 1.0, 0.0]], 2.0)
    >>> d_s
    array([[-0.6403,  0.    ,  0.6403]])
    """
    return _kd_row_grads(np.asarray(student), np.asarray(teacher), temperature)


def reverse_kl_row_grads(student: ArrayLike, teacher: ArrayLike,
                         temperature: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The gradient oracle of ``"reverse_kl"``, ``D = sum Q log(Q / P)``: :func:`kl_row_grads` with
    the roles exchanged, as the kernel computes it. A NaN row has NaN gradients; a +inf row (the
    teacher rules out a class the student allows) keeps the finite ``d_t`` and has a NaN ``d_s``.

    Examples
    --------
    >>> import kdloss.reference
    >>> loss, d_s, d_t = kdloss.reference.reverse_kl_row_grads([[0.0, 1.0, 3.0]], [[2.0, 1.0, 0.0]], 1.0)
    >>> d_s
    array([[-0.1868, -0.2795,  0.4663]])
    """
    loss, d_teacher, d_student = kl_row_grads(teacher, student, temperature)
    return loss, d_student, d_teacher


def jsd_row_grads(student: ArrayLike, teacher: ArrayLike, temperature: float,
                  beta: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The gradient oracle of ``"jsd"``. With ``M = beta P + (1 - beta) Q`` the terms through
    ``M`` add a constant (``beta P / M + (1 - beta) Q / M = 1``), so ``f = beta log(P / M)`` and
    ``g = (1 - beta) log(Q / M)``; :func:`kl_row_grads` at beta 0, :func:`reverse_kl_row_grads` at 1.

    Examples
    --------
    >>> import kdloss.reference
    >>> loss, d_s, d_t = kdloss.reference.jsd_row_grads([[0.0, 1.0, 3.0]], [[2.0, 1.0, 0.0]], 1.0)
    >>> d_s.round(4)
    array([[-0.0523, -0.0463,  0.0985]])
    """
    if beta == 0.0:
        return kl_row_grads(student, teacher, temperature)
    if beta == 1.0:
        return reverse_kl_row_grads(student, teacher, temperature)

    def directions(log_p, log_q):
        log_m = _log_mixture(beta, log_p, log_q)
        return beta * (log_p - log_m), (1.0 - beta) * (log_q - log_m)

    return _divergence_row_grads(student, teacher, temperature,
                                 lambda s, t, T: jsd_rows(s, t, T, beta), directions)


def skew_kl_row_grads(student: ArrayLike, teacher: ArrayLike, temperature: float,
                      beta: float = 0.1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The gradient oracle of ``"skew_kl"``, ``D = sum P log(P / M)``, ``M = beta P + (1 - beta) Q``:
    ``f = log(P / M) + 1 - beta P / M``, ``g = -(1 - beta) P / M``; :func:`kl_row_grads` at beta 0.

    Examples
    --------
    >>> import kdloss.reference
    >>> loss, d_s, d_t = kdloss.reference.skew_kl_row_grads([[0.0, 1.0, 3.0]], [[2.0, 1.0, 0.0]], 1.0)
    >>> d_s
    array([[-0.2189, -0.1374,  0.3563]])
    """
    if beta == 0.0:
        return kl_row_grads(student, teacher, temperature)

    def directions(log_p, log_q):
        log_m = log_p if beta == 1.0 else _log_mixture(beta, log_p, log_q)
        p_over_m = np.exp(log_p - log_m)
        return log_p - log_m - _weighted(beta, p_over_m), _weighted(-(1.0 - beta), p_over_m)

    return _divergence_row_grads(student, teacher, temperature,
                                 lambda s, t, T: skew_kl_rows(s, t, T, beta), directions)


def skew_reverse_kl_row_grads(student: ArrayLike, teacher: ArrayLike, temperature: float,
                              beta: float = 0.1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The gradient oracle of ``"skew_reverse_kl"``, ``D = sum Q log(Q / M)``, ``M = beta Q +
    (1 - beta) P``: ``g = log(Q / M) + 1 - beta Q / M``, ``f = -(1 - beta) Q / M``.

    Examples
    --------
    >>> import kdloss.reference
    >>> loss, d_s, d_t = kdloss.reference.skew_reverse_kl_row_grads([[0.0, 1.0, 3.0]], [[2.0, 1.0, 0.0]], 1.0)
    >>> d_s
    array([[-0.1435, -0.1716,  0.3151]])
    """
    def directions(log_p, log_q):
        if beta == 0.0:
            log_m = log_p
        else:
            log_m = log_q if beta == 1.0 else _log_mixture(beta, log_q, log_p)
        q_over_m = np.exp(log_q - log_m)
        return _weighted(-(1.0 - beta), q_over_m), log_q - log_m - _weighted(beta, q_over_m)

    return _divergence_row_grads(student, teacher, temperature,
                                 lambda s, t, T: skew_reverse_kl_rows(s, t, T, beta), directions)


def tvd_row_grads(student: ArrayLike, teacher: ArrayLike,
                  temperature: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The gradient oracle of ``"tvd"``, ``D = sum |P - Q| / 2``: ``g = sgn(Q - P) / 2``,
    ``f = -g``, with ``sgn(0) = 0`` (the subgradient the kernel takes at a tie).

    Examples
    --------
    >>> import kdloss.reference
    >>> loss, d_s, d_t = kdloss.reference.tvd_row_grads([[0.0, 1.0, 3.0]], [[2.0, 1.0, 0.0]], 1.0)
    >>> d_s
    array([[-0.0354, -0.0964,  0.1318]])
    """
    def directions(log_p, log_q):
        half_sign = 0.5 * np.sign(np.exp(log_q) - np.exp(log_p))
        return -half_sign, half_sign

    return _divergence_row_grads(student, teacher, temperature, tvd_rows, directions)


def _kd_row_grads(student, teacher, temperature):
    """Per-row ``T^2 KL`` and its gradients (float64, unscaled):

    ``d_s = T (Q - P)``; ``d_t = T P (log P - log Q - KL)``, 0 where the teacher masks a class.
    A NaN loss makes both NaN; a +inf loss (the student rules out a class the teacher allows)
    keeps the finite ``d_s`` and makes ``d_t`` NaN.
    """
    losses, log_p, log_q, kl, vanishing = _kd_rows(student, teacher, temperature)
    p, q = np.exp(log_p), np.exp(log_q)
    d_s = temperature * (q - p)
    with np.errstate(invalid="ignore"):
        d_t = np.where(vanishing, 0.0, temperature * p * (log_p - log_q - kl[..., None]))
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


def cross_entropy_rows(student: ArrayLike, labels: np.ndarray) -> np.ndarray:
    """The oracle of Hinton's cross-entropy term (``kdloss._divergences.HINTON_TERMS``):
    ``logsumexp(s) - s_label`` per row at T = 1, float64, 0 where a label is ignored
    (negative, as ``check_labels`` returns them).

    Examples
    --------
    >>> import numpy as np
    >>> import kdloss.reference
    >>> kdloss.reference.cross_entropy_rows([[0.0, 1.0, 2.0], [1.0, 1.0, 1.0]], np.array([2, -1]))
    array([0.4076, 0.    ])
    """
    return np.where(labels >= 0, _ce_row_grads(np.asarray(student), labels)[0], 0.0)


# ---------------------------------------------------------------------------------------------
# The public functions
# ---------------------------------------------------------------------------------------------


def _resolve(divergence, beta):
    """The registry's row and parameters (``kdloss._divergences.resolve_divergence``: the same
    validation and messages as the kernel's front end). Imported here: the registry imports
    this module for its oracles."""
    from ._divergences import resolve_divergence

    return resolve_divergence(divergence, beta)


@typed_as(lambda: _api.log_softmax)
def log_softmax(logits: ArrayLike, temperature: float = 1.0, *, num_threads: int | None = None) -> np.ndarray:
    """``log_softmax(logits / T)`` along the last axis, as :func:`kdloss.log_softmax`.

    Parameters
    ----------
    logits, temperature, num_threads
        As in :func:`kdloss.log_softmax` (``num_threads`` is accepted and ignored).

    Returns
    -------
    numpy.ndarray
        The input's shape, in the result dtype (as the kernel's).

    Examples
    --------
    >>> import kdloss.reference
    >>> kdloss.reference.log_softmax([1.0, 2.0, 3.0])
    array([-2.4076, -1.4076, -0.4076])
    """
    x = as_logits(logits)
    return _log_softmax64(x, check_temperature(temperature)).astype(result_dtype(x.dtype))


@typed_as(lambda: _api.softmax)
def softmax(logits: ArrayLike, temperature: float = 1.0, *, num_threads: int | None = None) -> np.ndarray:
    """``softmax(logits / T)`` along the last axis, as :func:`kdloss.softmax`.

    Parameters
    ----------
    logits, temperature, num_threads
        As in :func:`kdloss.softmax` (``num_threads`` is accepted and ignored).

    Returns
    -------
    numpy.ndarray
        The input's shape, in the result dtype (as the kernel's).

    Examples
    --------
    >>> import kdloss.reference
    >>> kdloss.reference.softmax([1.0, 2.0, 3.0], temperature=2.0)
    array([0.1863, 0.3072, 0.5065])
    """
    x = as_logits(logits)
    return np.exp(_log_softmax64(x, check_temperature(temperature))).astype(result_dtype(x.dtype))


@typed_as(lambda: _api.kd_loss)
def kd_loss(student_logits: ArrayLike, teacher_logits: ArrayLike, temperature: float = 1.0, *,
            reduction: Reduction = "mean", weights: ArrayLike | None = None,
            num_threads: int | None = None, divergence: DivergenceName = "kl",
            beta: float | None = None) -> float | np.ndarray:
    """``T^2 * D(softmax(teacher / T) || softmax(student / T))`` per row, reduced, as :func:`kdloss.kd_loss`
    (``D`` the divergence's oracle in the registry, ``kdloss._divergences``: :func:`kl_rows` for "kl").

    With ``weights``: ``w * loss`` per row (exactly 0 where ``w == 0``, even for a NaN row),
    ``"sum"`` adds them, ``"mean"`` divides the sum by ``sum(w)`` (0.0 when that is 0).

    Parameters
    ----------
    student_logits, teacher_logits, temperature, reduction, weights, num_threads, divergence, beta
        As in :func:`kdloss.kd_loss` (``num_threads`` is accepted and ignored).

    Returns
    -------
    float or numpy.ndarray
        Per row for ``"none"`` (in the result dtype), a Python float otherwise.

    Examples
    --------
    >>> import kdloss.reference
    >>> student = [[0.0, 1.0, 2.0], [1.0, 1.0, 1.0]]
    >>> teacher = [[2.0, 1.0, 0.0], [1.0, 1.0, 1.0]]
    >>> kdloss.reference.kd_loss(student, teacher, temperature=2.0)
    0.6403
    >>> kdloss.reference.kd_loss(student, teacher, 2.0, reduction="none")
    array([1.2806, 0.    ])
    >>> kdloss.reference.kd_loss(student, teacher, 2.0, divergence="jsd", beta=0.5)
    0.1537
    """
    student, teacher = as_logits_pair(student_logits, teacher_logits)
    temperature = check_temperature(temperature)
    reduction = check_reduction(reduction)
    weights = check_weights(weights, teacher.shape[:-1])
    divergence_row, parameters = _resolve(divergence, beta)

    losses = divergence_row.oracle(student, teacher, temperature, **parameters)
    if weights is not None:
        losses = reduction_rules.weighted(losses, weights)
    denominator = reduction_rules.mean_denominator(losses.shape, weights)
    return reduction_rules.reduce(losses, reduction, denominator, result_dtype(teacher.dtype))


@typed_as(lambda: _training.kd_loss_and_grad)
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
    """:func:`kd_loss` and the gradient of ``grad_output * loss``, as :func:`kdloss.kd_loss_and_grad`.

    Per row ``dL/ds = T (Q - P)`` and ``dL/dt = T P (log P - log Q - KL)`` for "kl" (0 where the
    teacher masks a class), ``dL/ds = T Q (g - E_Q[g])`` and ``dL/dt = T P (f - E_P[f])`` with
    ``g = dD/dQ``, ``f = dD/dP`` for the others (the divergence's gradient oracle), times
    ``grad_output * w / sum(w)`` ("mean"), ``grad_output * w`` ("sum"), or ``grad_output[i] * w_i``
    ("none"). Returns ``(loss, d_student)`` or ``(loss, d_student, d_teacher)``, the gradients in
    the result dtype.

    Parameters
    ----------
    student_logits, teacher_logits, temperature, reduction, weights, grad_output, teacher_grad, num_threads
        As in :func:`kdloss.kd_loss_and_grad` (``num_threads`` is accepted and ignored).
    divergence, beta
        As in :func:`kdloss.kd_loss`.

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
    divergence_row, parameters = _resolve(divergence, beta)

    losses, d_s, d_t = divergence_row.gradient_oracle(student, teacher, temperature, **parameters)
    kept = np.ones(rows_shape) if weights is None else weights
    return _reduced_with_grads(losses, d_s, d_t if teacher_grad else None, reduction, kept, grad_output,
                               result_dtype(teacher.dtype))


def _reduced_with_grads(losses, d_s, d_t, reduction, kept, grad_output, dtype):
    """``(loss, d_student)`` or ``(loss, d_student, d_teacher)`` (when ``d_t`` is given) from
    unweighted float64 rows and gradients; ``kept`` is each row's weight (0: left out)."""
    losses = reduction_rules.weighted(losses, kept)
    loss = reduction_rules.reduce(losses, reduction, reduction_rules.mean_denominator(losses.shape, kept), dtype)
    factors = reduction_rules.row_factors(reduction, kept, grad_output)
    d_student = reduction_rules.scaled(d_s, factors, kept).astype(dtype)
    if d_t is None:
        return loss, d_student
    return loss, d_student, reduction_rules.scaled(d_t, factors, kept).astype(dtype)


def _hinton(student_logits, teacher_logits, labels, temperature, alpha, ignore_index, reduction, weights,
            grad_output, teacher_grad, want_grad, divergence, beta):
    student, teacher = as_logits_pair(student_logits, teacher_logits)
    temperature = check_temperature(temperature)
    alpha = check_alpha(alpha)
    reduction = check_reduction(reduction)
    rows_shape = teacher.shape[:-1]
    labels = check_labels(labels, rows_shape, teacher.shape[-1], ignore_index)
    weights = check_weights(weights, rows_shape)
    grad_output = check_grad_output(grad_output if want_grad else None, reduction, rows_shape)
    divergence_row, parameters = _resolve(divergence, beta)

    # A term whose weight is 0 is not computed (with alpha = 0 the teacher is not read).
    losses = np.zeros(rows_shape)
    d_s = np.zeros(teacher.shape)
    d_t = np.zeros(teacher.shape)
    if alpha != 0.0:
        kd, kd_d_s, kd_d_t = divergence_row.gradient_oracle(student, teacher, temperature, **parameters)
        losses, d_s, d_t = alpha * kd, alpha * kd_d_s, alpha * kd_d_t
    if alpha != 1.0:
        ce, ce_d_s = _ce_row_grads(student, labels)
        losses, d_s = losses + (1.0 - alpha) * ce, d_s + (1.0 - alpha) * ce_d_s

    # The rows that count: label not ignored, weight > 0.
    kept = reduction_rules.kept_weights(rows_shape, weights, labels)
    dtype = result_dtype(teacher.dtype)
    if not want_grad:
        losses = reduction_rules.weighted(losses, kept)
        return reduction_rules.reduce(losses, reduction, reduction_rules.mean_denominator(rows_shape, kept), dtype)
    return _reduced_with_grads(losses, d_s, d_t if teacher_grad else None, reduction, kept, grad_output, dtype)


@typed_as(lambda: _training.hinton_loss)
def hinton_loss(student_logits: ArrayLike, teacher_logits: ArrayLike, labels: ArrayLike, temperature: float = 1.0,
                alpha: float = 0.5, *, ignore_index: int = -100, reduction: Reduction = "mean",
                weights: ArrayLike | None = None, num_threads: int | None = None,
                divergence: DivergenceName = "kl", beta: float | None = None) -> float | np.ndarray:
    """``alpha T^2 D(P || Q) + (1 - alpha) CE(softmax(s), label)`` per row, as :func:`kdloss.hinton_loss`
    (``D`` = KL by default; ``divergence``, ``beta`` as in :func:`kd_loss`).

    ``CE = logsumexp(s) - s_label`` at T = 1. Rows labelled ``ignore_index`` are left out (0 in
    "none", and out of the mean's denominator); "mean" is 0.0 when no row counts.

    Parameters
    ----------
    student_logits, teacher_logits, labels, temperature, alpha, ignore_index, reduction, weights, num_threads
        As in :func:`kdloss.hinton_loss` (``num_threads`` is accepted and ignored).
    divergence, beta
        As in :func:`kd_loss`.

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
                   None, False, want_grad=False, divergence=divergence, beta=beta)


@typed_as(lambda: _training.hinton_loss_and_grad)
def hinton_loss_and_grad(student_logits: ArrayLike, teacher_logits: ArrayLike, labels: ArrayLike,
                         temperature: float = 1.0, alpha: float = 0.5, *, ignore_index: int = -100,
                         reduction: Reduction = "mean", weights: ArrayLike | None = None,
                         grad_output: ArrayLike | None = None, teacher_grad: bool = False,
                         num_threads: int | None = None, divergence: DivergenceName = "kl",
                         beta: float | None = None) -> tuple[float | np.ndarray, ...]:
    """:func:`hinton_loss` and its gradient, as :func:`kdloss.hinton_loss_and_grad`:
    ``dL/ds = alpha T (Q - P) + (1 - alpha) (R - onehot(label))``, ``dL/dt = alpha T P (log P -
    log Q - KL)`` (for "kl"; another divergence's as in :func:`kd_loss_and_grad`), scaled as in
    :func:`kd_loss_and_grad`; ignored rows get 0.

    Parameters
    ----------
    student_logits, teacher_logits, labels, temperature, alpha, ignore_index, reduction, weights
        As in :func:`kdloss.hinton_loss`.
    grad_output, teacher_grad, num_threads
        As in :func:`kdloss.kd_loss_and_grad` (``num_threads`` is accepted and ignored).
    divergence, beta
        As in :func:`kd_loss`.

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
                   grad_output, teacher_grad, want_grad=True, divergence=divergence, beta=beta)


# ---------------------------------------------------------------------------------------------
# Sparse (top-k) teachers
# ---------------------------------------------------------------------------------------------


def _logsumexp64(x, axis=-1):
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        top = np.max(x, axis=axis, keepdims=True)
        shift = np.where(np.isfinite(top), top, 0.0)
        return np.squeeze(shift + np.log(np.sum(np.exp(x - shift), axis=axis, keepdims=True)), axis=axis)


def sparse_rows(student: ArrayLike, teacher_indices: ArrayLike, teacher_values: ArrayLike, temperature: float, *,
                values: str = "logprobs", tail: str = "bucket", divergence: str = "kl",
                beta: float | None = None) -> np.ndarray:
    """The oracle of :func:`kdloss.sparse_kd_loss` per row: ``T^2 D(P || Q)`` (float64, shape
    ``student.shape[:-1]``) between the two small distributions the tail defines (README "Sparse
    teachers"), from the student's full log-softmax at ``T`` (``"zero"``, ``"bucket"``: the rest
    is the log-sum-exp of its classes outside the ids) or its log-softmax over the ids
    (``"renormalize"``); the divergence's own oracle then compares the two as log-probabilities.

    Examples
    --------
    >>> import numpy as np
    >>> import kdloss.reference
    >>> kdloss.reference.sparse_rows([[2.0, 1.0, 0.0, -1.0]], [[0, 2]], np.log([[0.6, 0.3]]), 1.0)
    array([0.2296])
    """
    from ._divergences import DIVERGENCES  # noqa: F401  (the table imports this module)
    from ._sparse_inputs import check_sparse_divergence, check_sparse_teacher, check_tail, teacher_rest_log

    student = as_logits(student, "student_logits")
    tail, values = check_tail(tail, values)
    teacher = check_sparse_teacher(teacher_indices, teacher_values, student.shape, values)
    temperature = check_temperature(temperature)
    row, parameters = check_sparse_divergence(divergence, beta, tail)
    s = np.reshape(student, (-1, student.shape[-1])).astype(np.float64)
    n_rows, n_classes = s.shape
    ids, k = teacher.ids, teacher.ids.shape[1]
    active = np.arange(k) < teacher.counts[:, None]
    v = np.where(active, teacher.values, -np.inf)
    if tail == "renormalize":
        s_ids = np.where(active, np.take_along_axis(s, ids, axis=-1), -np.inf)
        log_q = _log_softmax64(s_ids, temperature)
        dead = np.all(s_ids == -np.inf, axis=-1)  # no mass at all: every class ruled out
        log_q = np.where(dead[:, None], s_ids, log_q)
        log_p = _log_softmax64(v, temperature)
    else:
        log_q_full = _log_softmax64(s, temperature)
        outside = np.ones(s.shape, dtype=bool)
        rows = np.broadcast_to(np.arange(n_rows)[:, None], ids.shape)
        outside[rows[active], ids[active]] = False
        log_q_rest = _logsumexp64(np.where(outside, log_q_full, -np.inf))
        log_q = np.concatenate([np.where(active, np.take_along_axis(log_q_full, ids, axis=-1), -np.inf),
                                log_q_rest[:, None]], axis=-1)
        dead = np.all(s == -np.inf, axis=-1) & ~np.any(np.isnan(s), axis=-1)
        log_q = np.where(dead[:, None], -np.inf, log_q)
        if tail == "zero":
            log_r = np.full(n_rows, -np.inf)
        else:
            log_r = teacher_rest_log(v, teacher.counts, n_classes)
        log_p = _log_softmax64(np.concatenate([v, log_r[:, None]], axis=-1), temperature)
    with np.errstate(over="ignore"):
        losses = temperature * (temperature * row.oracle(log_q, log_p, 1.0, **parameters))
    return losses.reshape(teacher.rows_shape)


def sparse_kd_loss(student_logits: ArrayLike, teacher_indices: ArrayLike, teacher_values: ArrayLike,
                   temperature: float = 1.0, *, values: str = "logprobs", tail: str = "bucket",
                   divergence: str = "kl", beta: float | None = None, reduction: Reduction = "mean",
                   weights: ArrayLike | None = None, num_threads: int | None = None) -> float | np.ndarray:
    """:func:`sparse_rows`, weighted and reduced as :func:`kdloss.sparse_kd_loss` does.

    Examples
    --------
    >>> import numpy as np
    >>> import kdloss.reference
    >>> kdloss.reference.sparse_kd_loss([[2.0, 1.0, 0.0, -1.0]], [[0, 2]], np.log([[0.6, 0.3]]), tail="renormalize")
    0.1571
    """
    losses = sparse_rows(student_logits, teacher_indices, teacher_values, temperature, values=values, tail=tail,
                         divergence=divergence, beta=beta)
    reduction = check_reduction(reduction)
    weights = check_weights(weights, losses.shape)
    if weights is not None:
        losses = reduction_rules.weighted(losses, weights)
    denominator = reduction_rules.mean_denominator(losses.shape, weights)
    return reduction_rules.reduce(losses, reduction, denominator, result_dtype(np.asarray(student_logits).dtype))
