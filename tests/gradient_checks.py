"""Shared by the gradient tests: finite differences, tolerances, and errors against mpmath.

Tolerances are derived from what the kernel computes (see ``_simd/divergence_kl.h``): per row, in
double, ``a = (t - t_max) / T`` and ``b = (s - s_max) / T``, ``P = e^a / Z_t``,
``Q = e^b / Z_s``, then ``d_s = c T (Q - P)`` and ``d_t = c T P (a - b - E_P[a - b])``, with
``c`` the row's factor from the reduction. Each of ``P_j``, ``Q_j`` is off by a few eps64
relative to itself, times ``1 + |a_j|`` (the rounding of ``a_j`` moves ``e^a_j`` by
``eps |a_j|`` relative) and ``log C`` (the normaliser's sum). That gives the per-element scales
below: an error of a few eps64 times the scale is all a double computation of these formulas
can promise, whatever the precision of the reference. float32 results are rounded once more:
half an ulp. Inputs of float precision or less (float32, float16, bfloat16) are evaluated in
float32 arithmetic on the vector targets (``vector_single.h``, issue 13), so their intermediate
accuracy is float32's unit roundoff, 2^-24, instead of eps64 (the scalar target, in double, does
better than either bound asks).
"""

import math

import mpmath
import numpy as np

from kdloss._dtypes import row_of

EPS64 = float(np.finfo(np.float64).eps)
# The relative accuracy of the double intermediates, by the dtype the kernel reads (see the
# docstring); 2-byte inputs are read as float32 (their dtype row's kernel_dtype).
INTERMEDIATE_EPS = {np.dtype(np.float64): EPS64, np.dtype(np.float32): 2.0**-24}


def intermediate_eps(dtype):
    """The intermediate accuracy for inputs of ``dtype`` (any input dtype of the dtype table)."""
    return INTERMEDIATE_EPS[row_of(np.dtype(dtype)).kernel_dtype]


def kd_error_scales(student, teacher, temperature):
    """Per element (float64, the logits' shape): the scales of the rounding error of ``d_s``
    and of ``d_t`` (for a factor of 1), as described in the module docstring."""
    s = np.asarray(student, np.float64)
    t = np.asarray(teacher, np.float64)
    T = temperature
    n_classes = t.shape[-1]
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        a = (t - np.max(t, axis=-1, keepdims=True)) / T
        b = (s - np.max(s, axis=-1, keepdims=True)) / T
        p = np.exp(a) / np.sum(np.exp(a), axis=-1, keepdims=True)
        q = np.exp(b) / np.sum(np.exp(b), axis=-1, keepdims=True)
        # 0 * inf: a masked class adds no error (a finite b where q underflows still counts: P (d - m)
        # carries it)
        a = np.where(np.isfinite(a), a, 0.0)
        b = np.where(np.isfinite(b), b, 0.0)
        gap = np.where(p > 0, a - b, 0.0)
        mean_gap = np.sum(p * gap, axis=-1, keepdims=True)
        log_c = 1.0 + math.log(n_classes)
        scale_s = T * (p * (log_c + np.abs(a)) + q * (log_c + np.abs(b)))
        spread = log_c + np.abs(a) + np.abs(b) + np.abs(mean_gap)
        scale_t = T * p * (spread + (log_c + np.abs(a)) * np.abs(gap - mean_gap))
    # Rows that are NaN (or have no error to speak of) are compared for NaN elsewhere.
    return np.nan_to_num(scale_s), np.nan_to_num(scale_t)


def divergence_error_scales(student, teacher, temperature):
    """The scales of :func:`kd_error_scales` for any divergence of the table: its gradient
    terms are those of KL(P || Q) and of KL(Q || P) (sides swapped), through logs of P, Q and
    their mixture, so each element's scale is the sum of both directions' scales of both, for
    ``d_s`` and ``d_t`` alike (at most a few times KL's own)."""
    forward = kd_error_scales(student, teacher, temperature)
    mirrored = kd_error_scales(teacher, student, temperature)
    scale = forward[0] + forward[1] + mirrored[0] + mirrored[1]
    return scale, scale


def row_factors_like(factors, shape):
    """The per-row factors broadcast over the class axis, as absolute values."""
    return np.abs(np.broadcast_to(np.asarray(factors, np.float64)[..., None], shape))


def assert_grad_close(got, want, atol, dtype, what=""):
    """``|got - want| <= atol + (an ulp of the output dtype)`` element by element, and
    NaN exactly where ``want`` is NaN. ``want`` is a float64 value (or array) of better
    accuracy than ``atol``; ``dtype`` is the inputs' (the output is its dtype row's result)."""
    dtype = row_of(np.dtype(dtype)).result_dtype
    got = np.asarray(got, np.float64)
    want = np.broadcast_to(np.asarray(want, np.float64), got.shape)
    assert np.array_equal(np.isnan(got), np.isnan(want)), f"{what}: NaN where not expected\n{got}\n{want}"
    ok = ~np.isnan(want)
    # Both results are rounded at the end (an ulp of the value between them), and float32 once more.
    rounding = (2 * EPS64 + (0.0 if dtype == np.float64 else float(np.finfo(dtype).eps))) * np.abs(want[ok])
    error = np.abs(got[ok] - want[ok])
    bound = np.broadcast_to(atol, got.shape)[ok] + rounding
    bad = ~(error <= bound)
    assert not bad.any(), (
        f"{what}: {bad.sum()} of {bad.size} elements off; worst error {error.max():.3g} "
        f"(bound there {bound[np.argmax(error - bound)]:.3g})\n got  {got[ok][bad][:5]}\n want {want[ok][bad][:5]}"
    )


def central_differences(objective, arrays, index, temperature):
    """The central finite-difference gradient of ``objective(*arrays)`` with respect to
    ``arrays[index]`` (float64).

    The step is ``h = 2^-17 T`` (about eps^(1/3) T): the loss is a function of ``x / T`` of
    size T^2, so its third derivative is ~1/T and the truncation error ~h^2 / T ~ 1e-10 T; the
    rounding error of the two evaluations is ~eps |f| / h ~ 3e-11 |f| / T. The step actually
    taken, ``(x + h) - (x - h)`` after rounding, is the divisor.
    """
    x = np.array(arrays[index], dtype=np.float64)
    grad = np.empty_like(x)
    h = temperature * 2.0**-17
    for i in np.ndindex(x.shape):
        plus, minus = x.copy(), x.copy()
        plus[i] += h
        minus[i] -= h
        args_plus = list(arrays)
        args_minus = list(arrays)
        args_plus[index], args_minus[index] = plus, minus
        grad[i] = (objective(*args_plus) - objective(*args_minus)) / (plus[i] - minus[i])
    return grad


def finite_difference_atol(value, temperature):
    """A sound bound on the central-difference error above, with a margin of ~30."""
    return 3e-9 * max(temperature, 1.0) + 1e-9 * (1.0 + abs(value)) / temperature


# ---------------------------------------------------------------------------------------------
# Errors against mpmath
# ---------------------------------------------------------------------------------------------


def double_double(values):
    """mpf values as two float64 arrays ``hi + lo`` (106 bits: enough to measure float64
    errors down to 1e-32 relative)."""
    hi = np.array([float(v) for v in values])
    with mpmath.workdps(60):
        lo = np.array([float(v - mpmath.mpf(h)) if math.isfinite(h) else 0.0 for v, h in zip(values, hi)])
    return hi, lo


def errors_against_exact(got, exact):
    """``|got - exact|`` per element (float64), with ``exact = (hi, lo)`` from double_double;
    ``got - hi`` is exact when they are close (Sterbenz), so the difference is accurate."""
    hi, lo = exact
    got = np.asarray(got, np.float64).ravel()
    return np.abs((got - hi) - lo)
