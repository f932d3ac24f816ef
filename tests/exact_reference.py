"""The exact reference: KD loss, softmax and log_softmax in mpmath at 60 significant digits.

Computed on the exact values the kernel sees: every float32/float64 element, and the
temperature, converted to an mpmath number without rounding (``mpf(float(x))``). Used by
``test_accuracy.py`` and by ``benchmarks/accuracy_vs_pytorch.py``.
"""

import functools
import math

import mpmath

DPS = 60  # significant decimal digits of the exact reference


def exact(x):
    """The float32/float64 value ``x`` as an mpmath number, without rounding."""
    return mpmath.mpf(float(x))


def exact_log_softmax_and_softmax(logits, temperature, dps=DPS):
    """``(log softmax(x / T), softmax(x / T))`` of one row, tuples of mpf; -inf entries give -inf
    and 0.

    ``log p_i = z_i - log S`` and ``p_i = exp(z_i) / S`` with ``z_i = (x_i - max x) / T`` and
    ``S = sum_j exp(z_j)``: one exponential per class. Every step rounds only at ``dps`` digits,
    relative to its own result, so nothing is lost to cancellation.
    """
    return _log_softmax_and_softmax(tuple(float(v) for v in logits), float(temperature), dps)


# The table's tests ask for the same rows once per divergence case (ten of them): remembered.
@functools.lru_cache(maxsize=1024)
def _log_softmax_and_softmax(logits, temperature, dps):
    with mpmath.workdps(dps):
        inv_t = 1 / exact(temperature)
        x = [exact(v) for v in logits]
        top = max(x)
        z = [(v - top) * inv_t for v in x]  # -inf stays -inf; exp(-inf) = 0
        e = [mpmath.exp(v) for v in z]
        total = mpmath.fsum(e)
        log_norm = mpmath.log(total)
        return tuple(v - log_norm for v in z), tuple(v / total for v in e)


def exact_log_softmax(logits, temperature, dps=DPS):
    """``log softmax(x / T)`` of one row, as a list of mpf; -inf entries stay -inf."""
    return exact_log_softmax_and_softmax(logits, temperature, dps)[0]


def exact_softmax(logits, temperature, dps=DPS):
    """``softmax(x / T)`` of one row, as a list of mpf (0 where x is -inf)."""
    return exact_log_softmax_and_softmax(logits, temperature, dps)[1]


def exact_kd_loss(student, teacher, temperature, dps=DPS):
    """``T^2 * KL(P || Q)`` of one row, ``P = softmax(teacher / T)``, ``Q = softmax(student / T)``.

    ``KL = sum_i P_i (log P_i - log Q_i)`` over the classes the teacher allows: a teacher -inf
    class has ``P_i = 0`` and adds nothing, while the student's mass there still counts in the
    normaliser of Q (it is part of ``exact_log_softmax(student)``).
    """
    with mpmath.workdps(dps):
        log_p, p = exact_log_softmax_and_softmax(teacher, temperature, dps)
        log_q = exact_log_softmax(student, temperature, dps)
        kl = mpmath.fsum(
            pi * (lp - lq)
            for t, pi, lp, lq in zip(teacher, p, log_p, log_q)
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
        log_p, p = exact_log_softmax_and_softmax(teacher, temperature, dps)
        log_q, q = exact_log_softmax_and_softmax(student, temperature, dps)
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


# ---------------------------------------------------------------------------------------------
# Every divergence of the table (kdloss._divergences), from its definition
# ---------------------------------------------------------------------------------------------


def _probabilities(student, teacher, temperature, dps):
    """``(P, Q)`` of one row, lists of mpf (0 where a logit is -inf)."""
    return exact_softmax(teacher, temperature, dps), exact_softmax(student, temperature, dps)


def _log_ratios(x, y):
    """``log(x / y)`` per class: 0 where ``x`` is (no mass), +inf where only ``y`` is 0."""
    return [mpmath.log(_ratio(xi, yi)) if xi else 0 for xi, yi in zip(x, y)]


def _kl(x, log_ratios):
    """``KL(X || Y) = sum x log(x / y)`` over the classes with ``x > 0``, from ``log(x / y)``
    (``_log_ratios``); +inf where such a class has ``y = 0``."""
    if any(li == mpmath.inf for li in log_ratios):
        return mpmath.inf
    return mpmath.fsum(xi * li for xi, li in zip(x, log_ratios) if xi > 0)


def _mixture(weight, x, y):
    """``weight X + (1 - weight) Y``, the weight taken exactly (``1 - weight`` in mpmath)."""
    w = exact(weight)
    rest = 1 - w
    return [w * xi + rest * yi for xi, yi in zip(x, y)]


def _ratio(x, y):
    """``x / y``: 0 where ``x`` is (a class of no mass: ``y`` may be 0 there too), +inf where
    only ``y`` is."""
    if x == 0:
        return mpmath.mpf(0)
    return x / y if y != 0 else mpmath.inf


def _value_and_directions(name, p, q, beta):
    """``(D, f, g)`` of one row: the divergence ``name`` of ``P`` and ``Q`` and, per class, ``f = dD/dP``
    and ``g = dD/dQ`` up to a constant (a constant cancels in the gradient); ``beta`` exactly.
    Each log is taken once, for the value and the direction alike."""
    if name == "jsd" and beta == 0.0 or name == "skew_kl" and beta == 0.0:
        name = "kl"
    if name == "jsd" and beta == 1.0 or name == "skew_reverse_kl" and beta == 0.0:
        name = "reverse_kl"
    if name == "kl":
        log_pq = _log_ratios(p, q)
        return _kl(p, log_pq), log_pq, [-_ratio(pi, qi) for pi, qi in zip(p, q)]
    if name == "reverse_kl":
        log_qp = _log_ratios(q, p)
        return _kl(q, log_qp), [-_ratio(qi, pi) for pi, qi in zip(p, q)], log_qp
    if name == "jsd":  # beta P / M + (1 - beta) Q / M = 1: the terms through M are a constant
        b = exact(beta)
        m = _mixture(beta, p, q)
        log_pm, log_qm = _log_ratios(p, m), _log_ratios(q, m)
        value = b * _kl(p, log_pm) + (1 - b) * _kl(q, log_qm)
        return value, [b * li for li in log_pm], [(1 - b) * li for li in log_qm]
    if name == "skew_kl":  # KL(P || M), M = beta P + (1 - beta) Q
        b = exact(beta)
        m = _mixture(beta, p, q)
        log_pm = _log_ratios(p, m)
        f = [li - b * pi / mi if pi else 0 for pi, mi, li in zip(p, m, log_pm)]
        return _kl(p, log_pm), f, [-(1 - b) * _ratio(pi, mi) for pi, mi in zip(p, m)]
    if name == "skew_reverse_kl":  # KL(Q || M), M = beta Q + (1 - beta) P
        b = exact(beta)
        m = _mixture(beta, q, p)
        log_qm = _log_ratios(q, m)
        g = [li - b * qi / mi if qi else 0 for qi, mi, li in zip(q, m, log_qm)]
        return _kl(q, log_qm), [-(1 - b) * _ratio(qi, mi) for qi, mi in zip(q, m)], g
    if name == "tvd":
        half_sign = [mpmath.sign(qi - pi) / 2 for pi, qi in zip(p, q)]
        return mpmath.fsum(abs(pi - qi) for pi, qi in zip(p, q)) / 2, [-h for h in half_sign], half_sign
    raise ValueError(name)


@functools.lru_cache(maxsize=16)
def _row_terms(name, student, teacher, temperature, beta, dps):
    """``(P, Q, D, f, g)`` of one row (tuples of floats): the value and its gradient of a row come
    from one evaluation (the tests ask for both, one after the other)."""
    with mpmath.workdps(dps):
        p, q = _probabilities(student, teacher, temperature, dps)
        return (p, q, *_value_and_directions(name, p, q, beta))


def exact_divergence(name, student, teacher, temperature, beta=None, dps=DPS):
    """``T^2 D(P || Q)`` of one row for the divergence ``name`` of the table, from its definition
    (README "Divergences"), ``beta`` the float given, taken exactly. +inf where the divergence is
    infinite (a class one side rules out and the other allows, where it counts)."""
    with mpmath.workdps(dps):
        value = _row_terms(name, tuple(student), tuple(teacher), temperature, beta, dps)[2]
        return exact(temperature) ** 2 * value


def exact_divergence_grad(name, student, teacher, temperature, beta=None, dps=DPS):
    """The exact gradient of ``T^2 D`` of one row: ``(d_student, d_teacher)``, lists of mpf:
    ``d_s = T Q (g - E_Q[g])``, ``d_t = T P (f - E_P[f])`` (0 on a class of probability 0), with
    ``g = dD/dQ`` and ``f = dD/dP`` from the definition. For ``"kl"``: :func:`exact_kd_grad`."""
    if name == "kl" or name in ("jsd", "skew_kl") and beta == 0.0:
        return exact_kd_grad(student, teacher, temperature, dps)
    with mpmath.workdps(dps):
        T = exact(temperature)
        p, q, value, f, g = _row_terms(name, tuple(student), tuple(teacher), temperature, beta, dps)
        if not mpmath.isfinite(value):  # the kernel's rows of +inf: NaN gradients
            return [mpmath.nan] * len(p), [mpmath.nan] * len(p)
        e_p = mpmath.fsum(pi * fi for pi, fi in zip(p, f) if pi)
        e_q = mpmath.fsum(qi * gi for qi, gi in zip(q, g) if qi)
        d_student = [T * qi * (gi - e_q) if qi else mpmath.mpf(0) for qi, gi in zip(q, g)]
        d_teacher = [T * pi * (fi - e_p) if pi else mpmath.mpf(0) for pi, fi in zip(p, f)]
        return d_student, d_teacher
