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


def exact_kd_grad(student, teacher, temperature, dps=DPS):
    """The exact gradient of ``T^2 * KL(P || Q)`` of one row: ``(d_student, d_teacher)``, lists of mpf.

    ``d_student = T (Q - P)`` and ``d_teacher = T P (log P - log Q - KL)``, 0 on a class the
    teacher masks (-inf). At ``dps`` digits ``Q - P`` keeps its leading digits even when the
    rows are nearly identical (the difference is computed from 60-digit probabilities).
    """
    with mpmath.workdps(dps):
        T = exact(temperature)
        log_p = exact_log_softmax(teacher, temperature, dps)
        log_q = exact_log_softmax(student, temperature, dps)
        p = [mpmath.exp(v) for v in log_p]
        q = [mpmath.exp(v) for v in log_q]
        allowed = [t != -math.inf for t in teacher]
        kl = mpmath.fsum(pi * (lp - lq) for pi, lp, lq, a in zip(p, log_p, log_q, allowed) if a)
        d_student = [T * (qi - pi) for pi, qi in zip(p, q)]
        d_teacher = [
            T * pi * (lp - lq - kl) if a else mpmath.mpf(0)
            for pi, lp, lq, a in zip(p, log_p, log_q, allowed)
        ]
        return d_student, d_teacher


def exact_ce_grad(student, label, dps=DPS):
    """The exact gradient of the cross-entropy ``logsumexp(s) - s_label`` (T = 1) of one row:
    ``softmax(s) - onehot(label)``, a list of mpf.

    At the label, ``R_y - 1 = -sum_{j != y} e^(s_j) / sum_j e^(s_j)`` is summed directly, so it
    keeps its relative accuracy however close ``R_y`` is to 1.
    """
    with mpmath.workdps(dps):
        x = [exact(v) for v in student]
        top = max(x)
        e = [mpmath.exp(v - top) for v in x]
        norm = mpmath.fsum(e)
        grad = [v / norm for v in e]
        grad[label] = -mpmath.fsum(v for j, v in enumerate(e) if j != label) / norm
        return grad


def exact_hinton_grad(student, teacher, label, temperature, alpha, dps=DPS):
    """The exact gradient of Hinton's loss of one row, ``alpha T^2 KL + (1 - alpha) CE``:
    ``(d_student, d_teacher)``, lists of mpf (``alpha`` and ``1 - alpha`` taken as the floats
    the kernel uses)."""
    with mpmath.workdps(dps):
        kl_weight, ce_weight = exact(alpha), exact(1.0 - alpha)
        d_s, d_t = exact_kd_grad(student, teacher, temperature, dps)
        ce = exact_ce_grad(student, label, dps)
        return [kl_weight * a + ce_weight * b for a, b in zip(d_s, ce)], [kl_weight * v for v in d_t]
