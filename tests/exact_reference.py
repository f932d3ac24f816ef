"""The exact reference: KD loss, softmax and log_softmax in mpmath at 60 significant digits.

Computed on the exact values the kernel sees: every float32/float64 element, and the
temperature, converted to an mpmath number without rounding (``mpf(float(x))``). Used by
``test_accuracy.py`` and by ``benchmarks/accuracy_vs_pytorch.py``.
"""

import math

import mpmath

DPS = 60  # significant decimal digits of the exact reference


def exact(x):
    """The float32/float64 value ``x`` as an mpmath number, without rounding."""
    return mpmath.mpf(float(x))


def exact_log_softmax(logits, temperature, dps=DPS):
    """``log softmax(x / T)`` of one row, as a list of mpf; -inf entries stay -inf.

    ``log p_i = z_i - log sum_j exp(z_j)`` with ``z_i = (x_i - max x) / T``. Every step rounds
    only at ``dps`` digits, relative to its own result, so nothing is lost to cancellation.
    """
    with mpmath.workdps(dps):
        inv_t = 1 / exact(temperature)
        x = [exact(v) for v in logits]
        top = max(x)
        z = [(v - top) * inv_t for v in x]  # -inf stays -inf; exp(-inf) = 0
        log_norm = mpmath.log(mpmath.fsum(mpmath.exp(v) for v in z))
        return [v - log_norm for v in z]


def exact_softmax(logits, temperature, dps=DPS):
    """``softmax(x / T)`` of one row, as a list of mpf (0 where x is -inf)."""
    with mpmath.workdps(dps):
        return [mpmath.exp(v) for v in exact_log_softmax(logits, temperature, dps)]


def exact_kd_loss(student, teacher, temperature, dps=DPS):
    """``T^2 * KL(P || Q)`` of one row, ``P = softmax(teacher / T)``, ``Q = softmax(student / T)``.

    ``KL = sum_i P_i (log P_i - log Q_i)`` over the classes the teacher allows: a teacher -inf
    class has ``P_i = 0`` and adds nothing, while the student's mass there still counts in the
    normaliser of Q (it is part of ``exact_log_softmax(student)``).
    """
    with mpmath.workdps(dps):
        log_p = exact_log_softmax(teacher, temperature, dps)
        log_q = exact_log_softmax(student, temperature, dps)
        kl = mpmath.fsum(
            mpmath.exp(lp) * (lp - lq)
            for t, lp, lq in zip(teacher, log_p, log_q)
            if t != -math.inf
        )
        return exact(temperature) ** 2 * kl


def exact_kd_rows(student, teacher, temperature):
    """``exact_kd_loss`` for every row of two 2-D arrays, as a tuple of mpf."""
    return tuple(
        exact_kd_loss(s, t, temperature) for s, t in zip(student.tolist(), teacher.tolist())
    )
