"""The exact reference for sparse (top-k) teachers: ``T^2 KL`` and its student gradient in mpmath at
60 digits, on the exact float values, straight from the definitions of README "Sparse teachers"
(no log-sum-exp tricks: at 60 digits nothing here cancels to a float's precision)."""

import math

import mpmath
from exact_reference import DPS, exact


def _small_distributions(student, ids, values, temperature, tail):
    """``(P, Q, q)``: the teacher's and student's small distributions (lists of mpf over the real
    slots, then the rest where there is one) and the student's full softmax ``q`` at T (None for
    ``"renormalize"``)."""
    inv_t = 1 / exact(temperature)
    slots = [(int(i), exact(v)) for i, v in zip(ids, values) if v != -math.inf]
    s = [exact(x) for x in student]
    teacher = [mpmath.exp(v * inv_t) for _, v in slots]
    has_rest = tail != "renormalize" and len(slots) < len(s)
    if tail == "bucket" and has_rest:
        rest = 1 - mpmath.fsum(mpmath.exp(v) for _, v in slots)
        teacher.append(mpmath.power(max(rest, 0), inv_t))
    elif has_rest:
        teacher.append(mpmath.mpf(0))
    total = mpmath.fsum(teacher)
    p = [t / total for t in teacher]
    top = max(s)
    if tail == "renormalize":
        top = max(s[i] for i, _ in slots)
        e = [mpmath.exp((s[i] - top) * inv_t) for i, _ in slots]
        z = mpmath.fsum(e)
        return p, [x / z for x in e], None
    e = [mpmath.exp((x - top) * inv_t) for x in s]
    z = mpmath.fsum(e)
    q_full = [x / z for x in e]
    q = [q_full[i] for i, _ in slots]
    if has_rest:
        chosen = {i for i, _ in slots}
        q.append(mpmath.fsum(x for j, x in enumerate(q_full) if j not in chosen))
    return p, q, q_full


def exact_sparse_kl(student, ids, values, temperature, tail, dps=DPS):
    """``T^2 KL(P || Q)`` of one row, an mpf."""
    with mpmath.workdps(dps):
        p, q, _ = _small_distributions(student, ids, values, temperature, tail)
        kl = mpmath.fsum(pi * (mpmath.log(pi) - mpmath.log(qi)) for pi, qi in zip(p, q) if pi > 0)
        return exact(temperature) ** 2 * kl


def exact_sparse_grad(student, ids, values, temperature, tail, dps=DPS):
    """The exact gradient of ``T^2 KL`` with respect to the student's logits, a list of mpf:
    ``T (Q_i - P_i)`` at an id, and for ``"zero"``/``"bucket"`` ``T q_j (1 - P_rest / Q_rest)``
    elsewhere (0 for ``"renormalize"``)."""
    with mpmath.workdps(dps):
        T = exact(temperature)
        p, q, q_full = _small_distributions(student, ids, values, temperature, tail)
        slots = [int(i) for i, v in zip(ids, values) if v != -math.inf]
        grad = [mpmath.mpf(0)] * len(student)
        if q_full is not None:
            ratio = 1 - p[-1] / q[-1] if len(q) > len(slots) else mpmath.mpf(1)
            grad = [T * x * ratio for x in q_full]
        for m, i in enumerate(slots):
            grad[i] = T * (q[m] - p[m])
        return grad
