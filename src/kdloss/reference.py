"""The NumPy oracle: what kdloss computes, in plain NumPy.

Same signatures and semantics as the compiled functions (``num_threads`` is accepted and
ignored). It computes in float64 and returns the same dtypes. The tests check the kernel
against it; read it to see exactly what kdloss returns, special values included.
"""

import numpy as np

from ._validation import as_logits, as_logits_pair, check_reduction, check_temperature


def _log_softmax64(x, temperature):
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        z = (x - np.max(x, axis=-1, keepdims=True)) / temperature  # NaN for +inf and all -inf rows
        return z - np.log(np.sum(np.exp(z), axis=-1, keepdims=True))


def log_softmax(logits, temperature=1.0, *, num_threads=None):
    """``log_softmax(logits / T)`` along the last axis, as :func:`kdloss.log_softmax`."""
    x = as_logits(logits)
    return _log_softmax64(x, check_temperature(temperature)).astype(x.dtype)


def softmax(logits, temperature=1.0, *, num_threads=None):
    """``softmax(logits / T)`` along the last axis, as :func:`kdloss.softmax`."""
    x = as_logits(logits)
    return np.exp(_log_softmax64(x, check_temperature(temperature))).astype(x.dtype)


def kd_loss(student_logits, teacher_logits, temperature=1.0, *, reduction="mean", num_threads=None):
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))`` per row, reduced, as :func:`kdloss.kd_loss`."""
    student, teacher = as_logits_pair(student_logits, teacher_logits)
    temperature = check_temperature(temperature)
    reduction = check_reduction(reduction)

    log_p = _log_softmax64(teacher, temperature)
    log_q = _log_softmax64(student, temperature)
    with np.errstate(invalid="ignore"):
        # A class the teacher masks (-inf) adds nothing, whatever the student holds there.
        terms = np.where(teacher == -np.inf, 0.0, np.exp(log_p) * (log_p - log_q))
    losses = np.maximum(temperature**2 * np.sum(terms, axis=-1), 0.0)  # KL >= 0

    # A student -inf on a class the teacher allows: that class has probability 0 under Q.
    student_gap = np.any((student == -np.inf) & (teacher != -np.inf), axis=-1)
    losses = np.where(student_gap, np.inf, losses)
    # NaN or +inf anywhere, or a teacher that allows no class: the row is undefined.
    undefined = (
        np.any(np.isnan(student) | np.isnan(teacher), axis=-1)
        | np.any((student == np.inf) | (teacher == np.inf), axis=-1)
        | np.all(teacher == -np.inf, axis=-1)
    )
    losses = np.where(undefined, np.nan, losses)

    if reduction == "none":
        with np.errstate(over="ignore"):  # float32 output: a loss beyond 3.4e38 is inf
            return losses.astype(teacher.dtype)
    total = float(np.sum(losses))
    if reduction == "sum":
        return total
    return total / losses.size if losses.size else 0.0
