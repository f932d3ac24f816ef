"""Accuracy of kdloss against an exact reference: mpmath at 60 significant digits.

The reference is computed on the exact values the kernel sees: every float32/float64 element,
and the temperature, converted to an mpmath number without rounding (``mpf(float(x))``). At 60
digits the reference is exact for every comparison below (``test_reference_has_converged``
checks it against 100 digits on the hardest cases), so each measured error is the kernel's own.

The targets asserted here are the project's accuracy contract:

==============================================  ==================  =================
case                                            float64             float32
==============================================  ==================  =================
KL of ordinary size (relative)                  1e-11               1e-5
student close to teacher, KL ~1e-6..1e-12       1e-9, never < 0     1e-4, never < 0
(also: both sure of one class, KL ~1e-5..1e-12)
student = teacher + k (absolute, T = 1)          1e-12, never < 0    1e-12, never < 0
temperatures 1e-6 .. 1e5 (relative)             1e-8                1e-5 / 1e-4
masked classes, huge logits                     as above            as above
softmax (relative, entries >= 1e-6)             1e-14               1 ulp (rounded)
log_softmax (absolute / max(1, |value|))        1e-14               1 ulp (rounded)
sum over 200_000 rows (relative)                1e-12               1e-5
==============================================  ==================  =================

Identical rows give exactly 0.0. The worst relative error met in each category is printed at
the end of the module (run ``pytest tests/test_accuracy.py -s`` to see it).
"""

import collections
import functools
import math

import mpmath
import numpy as np
import pytest
from conftest import DTYPES, rng_for
from exact_reference import (
    DPS,
    exact,
    exact_kd_loss,
    exact_kd_rows,
    exact_log_softmax_and_softmax,
)

import kdloss

# Every test here runs once per kernel target (see conftest.py).
pytestmark = pytest.mark.usefixtures("kernel_target")


# ---------------------------------------------------------------------------------------------
# Measuring errors
# ---------------------------------------------------------------------------------------------

WORST = collections.defaultdict(float)  # category -> largest error measured


def relative_error(got, want, dtype):
    """``|got - want| / |want|``, with ``want`` floored at the smallest normal number of ``dtype``.

    A value below the normal range cannot be held to relative accuracy: it is measured against
    that floor instead. ``want == 0`` asks for exactly 0.
    """
    got = float(got)
    with mpmath.workdps(DPS):
        if want == 0:
            return 0.0 if got == 0.0 else math.inf
        if math.isnan(got):
            return math.inf
        floor = mpmath.mpf(float(np.finfo(dtype).tiny))
        return float(abs(mpmath.mpf(got) - want) / max(abs(want), floor))


def assert_rows_accurate(got, want, rtol, category):
    """Every row loss in ``got`` is within ``rtol`` (relative) of the exact ``want``."""
    got = np.asarray(got)
    errors = [relative_error(g, w, got.dtype) for g, w in zip(got.ravel(), want)]
    WORST[category] = max(WORST[category], max(errors))
    bad = [i for i, e in enumerate(errors) if not e <= rtol]
    assert not bad, f"{len(bad)} of {len(errors)} rows off by more than {rtol:g} (relative):\n" + "\n".join(
        f"  row {i}: got {float(got.ravel()[i])!r}, exact {mpmath.nstr(want[i], 17)}, error {errors[i]:.3g}"
        for i in bad[:5]
    )


@pytest.fixture(scope="module", autouse=True)
def report_worst_errors(kernel_target):
    """Prints the worst error of each category after the module has run on one kernel target."""
    WORST.clear()
    yield
    print(f"\nWorst errors measured against the exact reference, kernel target {kernel_target}:")
    for category, error in sorted(WORST.items()):
        print(f"  {category:<50} {error:.3g}")


# ---------------------------------------------------------------------------------------------
# Inputs (deterministic; their exact losses are computed once and cached)
# ---------------------------------------------------------------------------------------------

CLASS_COUNTS = (1, 3, 7, 9, 37, 1000, 1025)
TEMPERATURES = (1e-6, 1e-3, 0.1, 1.0, 7.5, 1e3, 1e5)
NEAR_EPS = (1e-3, 1e-4, 1e-5, 1e-6)  # student = teacher + eps * noise: KL ~ 1e-6 .. 1e-12

ORDINARY_RTOL = {np.float64: 1e-11, np.float32: 1e-5}
NEAR_RTOL = {np.float64: 1e-9, np.float32: 1e-4}
TEMPERATURE_RTOL = {np.float64: 1e-8}  # float32 keeps its ordinary / near tolerances


def n_rows(n_classes):
    return 6 if n_classes < 100 else 2


def make_pair(student_kind, dtype, n_classes, temperature=1.0, rows=None):
    """(student, teacher) of shape (rows, classes) in ``dtype``.

    Logits are ``N(0, 2^2) * min(T, 1)``, so that at small T the distributions stay soft.
    ``student_kind``: ``("independent",)``: unrelated student; ``("close", eps)``: teacher plus
    ``eps * min(T, 1) * N(0, 1)``; ``("offset", k, eps)``: the same, also shifted by ``k``;
    ``("shared_top", gap)``: see below. The student is built in float64 from the teacher's
    stored values, then rounded to ``dtype``.
    """
    rows = rows or n_rows(n_classes)
    scale = min(temperature, 1.0)
    rng = rng_for(student_kind, np.dtype(dtype).name, n_classes, temperature, rows)
    teacher = (2.0 * scale * rng.standard_normal((rows, n_classes))).astype(dtype)
    noise = rng.standard_normal((rows, n_classes))
    kind = student_kind[0]
    if kind == "independent":
        student = 2.0 * scale * noise
    elif kind == "close":
        student = teacher.astype(np.float64) + student_kind[1] * scale * noise
    elif kind == "offset":
        student = (teacher.astype(np.float64) + student_kind[1]) + student_kind[2] * scale * noise
    elif kind == "shared_top":
        # Both confident in the same class, `gap` above their N(0, 1) other classes, which
        # disagree freely: KL ~ e^-gap is small although the logits are not close.
        teacher = rng.standard_normal((rows, n_classes))
        student = noise
        top = rng.integers(0, n_classes, rows)
        teacher[np.arange(rows), top] += student_kind[1]
        student[np.arange(rows), top] = teacher[np.arange(rows), top]
        teacher = (scale * teacher).astype(dtype)
        student = scale * student
    else:
        raise ValueError(student_kind)
    return student.astype(dtype), teacher


@functools.cache
def kl_case(student_kind, dtype, n_classes, temperature=1.0):
    """``make_pair(...)`` and the exact per-row losses, computed once."""
    student, teacher = make_pair(student_kind, dtype, n_classes, temperature)
    return student, teacher, exact_kd_rows(student, teacher, temperature)


def kernel_rows(student, teacher, temperature):
    # These inputs are too small to use a second thread (threads_for): the default count only.
    return kdloss.kd_loss(student, teacher, temperature, reduction="none")


# ---------------------------------------------------------------------------------------------
# kd_loss
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_classes", CLASS_COUNTS)
@pytest.mark.parametrize(
    "student_kind",
    # eps 0.3 .. 0.03 gives KL ~ 1e-1 .. 1e-3, on both sides of the kernel's fast/exact switch.
    [("independent",), ("close", 0.3), ("close", 0.1), ("close", 0.03)],
    ids=str,
)
def test_ordinary_kl(student_kind, n_classes, dtype):
    student, teacher, want = kl_case(student_kind, dtype, n_classes)
    got = kernel_rows(student, teacher, 1.0)
    assert_rows_accurate(got, want, ORDINARY_RTOL[dtype], f"ordinary KL, {np.dtype(dtype).name}")


NEAR_ZERO_KINDS = {
    # student = teacher + eps * noise
    **{("close", eps): "near-teacher KL" for eps in NEAR_EPS},
    # student = teacher + k + eps * noise: the offset must not cost accuracy
    **{("offset", k, eps): "offset near-teacher KL" for k in (3.0, -0.75) for eps in (1e-4, 1e-6)},
    # Both put all but ~e^-gap of their mass on the same class: KL ~1e-5 .. 1e-12 although the
    # other logits disagree freely.
    **{("shared_top", gap): "shared confident class KL" for gap in (15.0, 20.0, 25.0)},
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_classes", CLASS_COUNTS)
@pytest.mark.parametrize("student_kind", NEAR_ZERO_KINDS, ids=str)
def test_near_zero_kl(student_kind, n_classes, dtype):
    student, teacher, want = kl_case(student_kind, dtype, n_classes)
    got = kernel_rows(student, teacher, 1.0)
    assert np.all(got >= 0.0), got
    category = f"{NEAR_ZERO_KINDS[student_kind]}, {np.dtype(dtype).name}"
    assert_rows_accurate(got, want, NEAR_RTOL[dtype], category)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_classes", CLASS_COUNTS)
@pytest.mark.parametrize("offset", [3.0, -0.75, 1e3])
@pytest.mark.parametrize("construction", ["exact", "rounded"])
def test_pure_offset_is_tiny_and_not_negative(construction, offset, n_classes, dtype):
    """student = teacher + k: the same distribution, up to the rounding of teacher + k.

    ``"exact"``: the teacher lies on a grid of 2^-10, so teacher + k is exact and the exact KL
    is 0. ``"rounded"``: full-precision teacher; the rounding of teacher + k leaves a tiny exact
    KL (up to ~1e-10 in float32 with k = 1e3), which the kernel must match to within 1e-12.
    """
    student, teacher, want = offset_case(construction, offset, dtype, n_classes)
    got = kernel_rows(student, teacher, 1.0)
    assert np.all(got >= 0.0), got
    distance = [float(abs(mpmath.mpf(float(g)) - w)) for g, w in zip(got, want)]
    category = f"pure offset: |loss - exact| (absolute), {np.dtype(dtype).name}"
    WORST[category] = max(WORST[category], max(distance))
    assert max(distance) <= 1e-12, (got, [mpmath.nstr(w, 17) for w in want])


@functools.cache
def offset_case(construction, offset, dtype, n_classes):
    _, teacher = make_pair(("independent",), dtype, n_classes)
    if construction == "exact":
        teacher = np.round(teacher * 1024) / 1024
    student = teacher + dtype(offset)
    if construction == "exact":
        assert np.array_equal(student - dtype(offset), teacher)
    return student, teacher, exact_kd_rows(student, teacher, 1.0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_classes", CLASS_COUNTS)
@pytest.mark.parametrize("rows", ["ordinary", "masked", "huge"])
def test_identical_rows_are_exactly_zero(rows, n_classes, dtype):
    for temperature in (1e-6, 1.0, 1e5):
        _, teacher = make_pair(("independent",), dtype, n_classes, temperature)
        if rows == "masked":  # -inf on every fourth class; the last class stays finite
            teacher[:, :-1:4] = -np.inf
        if rows == "huge":  # largest logit a quarter of the dtype's maximum
            teacher = teacher / np.max(np.abs(teacher)) * (np.finfo(dtype).max / 4)
        got = kernel_rows(teacher.copy(), teacher, temperature)
        assert np.array_equal(got, np.zeros_like(got)), (temperature, got)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_classes", [7, 1025])
@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("student_kind", [("independent",), ("close", 1e-3), ("close", 1e-6)], ids=str)
def test_temperatures(student_kind, temperature, n_classes, dtype):
    """T from 1e-6 to 1e5. Logits scale with min(T, 1): at small T the rows stay soft, and at
    large T the softened distributions are close to uniform (KL ~ 1/T^2 for the near student)."""
    student, teacher, want = kl_case(student_kind, dtype, n_classes, temperature)
    got = kernel_rows(student, teacher, temperature)
    assert np.all(got >= 0.0), got
    if dtype is np.float64:
        rtol = TEMPERATURE_RTOL[dtype]
    else:
        rtol = (ORDINARY_RTOL if student_kind[0] == "independent" else NEAR_RTOL)[dtype]
    assert_rows_accurate(got, want, rtol, f"temperatures 1e-6..1e5, {np.dtype(dtype).name}")


@functools.cache
def masked_case(student_kind, dtype, n_classes):
    """Teacher -inf on about a third of the classes; the student stays finite there (or is
    -inf on some of them). With a close student, its masked classes sit 20..45 below the
    teacher's maximum: mass e^-20..e^-45 that Q's normaliser must still count."""
    student, teacher = make_pair(student_kind, dtype, n_classes)
    rng = rng_for("mask", student_kind, np.dtype(dtype).name, n_classes)
    mask = rng.random(teacher.shape) < 1 / 3
    mask[:, 0] = True
    mask[:, 1] = False
    if student_kind[0] == "close":
        gaps = 20.0 + 5.0 * np.arange(len(teacher))[:, None]
        far = np.max(teacher, axis=1, keepdims=True) - gaps + rng.random(teacher.shape)
        student = np.where(mask, far.astype(dtype), student)
    student[:, 0] = np.where(np.arange(len(student)) % 2 == 0, -np.inf, student[:, 0])
    teacher = np.where(mask, -np.inf, teacher).astype(dtype)
    return student, teacher, exact_kd_rows(student, teacher, 1.0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_classes", [3, 9, 37, 1025])
@pytest.mark.parametrize("student_kind", [("independent",), ("close", 1e-3), ("close", 1e-6)], ids=str)
def test_masked_classes(student_kind, n_classes, dtype):
    student, teacher, want = masked_case(student_kind, dtype, n_classes)
    got = kernel_rows(student, teacher, 1.0)
    assert np.all(got >= 0.0), got
    rtol = (ORDINARY_RTOL if student_kind[0] == "independent" else NEAR_RTOL)[dtype]
    assert_rows_accurate(got, want, rtol, f"masked classes, {np.dtype(dtype).name}")


# Rows with many equal logits (a label-smoothed teacher): plain summation of equal terms rounds
# the same way every time, and would lose ~n * eps. Found by an adversarial search.
EQUAL_TAIL_ROWS = {
    # KL ~ 0.015, where the fast formula is used: 3e-11 relative error with plain sums.
    "equal tails": ([0.0] + [-3.5476083361606685] * 1999, [0.0] + [-0.008548246507222515] * 1999, 1.0),
    # A label-smoothed teacher and a noisy student, at T ~ 0.1.
    "smoothed teacher": ("noisy", [0.0] + [-0.0855] * 1999, 0.107216610693804),
}


def equal_tail_row(name):
    student, teacher, temperature = EQUAL_TAIL_ROWS[name]
    if student == "noisy":
        student = (np.array(teacher) + 2e-3 * rng_for(name).standard_normal(len(teacher))).tolist()
    return student, teacher, temperature


@pytest.mark.parametrize("name", EQUAL_TAIL_ROWS)
def test_equal_logits_do_not_accumulate_rounding(name):
    student, teacher, temperature = equal_tail_row(name)
    want = exact_kd_loss(student, teacher, temperature)
    got = kdloss.kd_loss([student], [teacher], temperature, reduction="none")
    assert_rows_accurate(got, [want], ORDINARY_RTOL[np.float64], "equal logits, float64")


@pytest.mark.parametrize("temperature", [10.0, 1e3])
def test_kl_far_below_the_contract_range_stays_accurate(temperature):
    """KL ~ 1e-26 and below: the O(y^2) correction (log1p(y) - y) must not round away."""
    student = [-1.260219199044955, 0.15428419890869485]
    teacher = [-0.886785069195653, 0.5277183287576218]
    with mpmath.workdps(100):
        want = exact_kd_loss(student, teacher, temperature, dps=100)
    got = kdloss.kd_loss([student], [teacher], temperature, reduction="none")
    assert_rows_accurate(got, [want], NEAR_RTOL[np.float64], "KL far below 1e-12, float64")


def exact_top_apart_kl(student, teacher):
    """``(KL(P || Q), KL(Q || P))`` at T = 1, exact at DPS digits, of rows that differ on one
    class only, by ``delta`` there (class k): ``Z_Q = Z_P (1 + P_k (e^delta - 1))``, so
    ``KL(P || Q) = log(1 + P_k (e^delta - 1)) - P_k delta`` and ``KL(Q || P) = Q_k delta - log(1 +
    P_k (e^delta - 1))``. One exponential per class, where ``exact_kd_loss`` takes several: the
    100,000-class row below took 8 s that way."""
    (k,) = np.flatnonzero(student != teacher)
    with mpmath.workdps(DPS):
        teacher_exp = [mpmath.exp(exact(x)) for x in teacher]
        p_top = teacher_exp[k] / mpmath.fsum(teacher_exp)
        delta = exact(student[k]) - exact(teacher[k])
        ratio = 1 + p_top * mpmath.expm1(delta)
        q_top = p_top * mpmath.exp(delta) / ratio
        return [mpmath.log(ratio) - p_top * delta, q_top * delta - mpmath.log(ratio)]


@functools.cache
def top_apart_row(n_classes, width, dtype):
    """A flat teacher (U(0, width) logits) and the student equal to it but 0.01 higher on its top
    class, in ``dtype``, and the exact KL both ways: d is one constant on every class but the top
    one, where the finish's terms cancel by about 1 / P of that class (the row is recentred)."""
    teacher = np.random.default_rng(1).uniform(0, width, n_classes).astype(dtype)
    student = teacher.copy()
    student[np.argmax(teacher)] += dtype(0.01)
    return student, teacher, exact_top_apart_kl(student, teacher)


def test_top_apart_closed_form_is_the_reference():
    """The closed form above against the general reference, on a short row of that kind."""
    student, teacher, closed_form = top_apart_row(300, 1.0, np.float64)
    general = [exact_kd_loss(student.tolist(), teacher.tolist(), 1.0),
               exact_kd_loss(teacher.tolist(), student.tolist(), 1.0)]
    for a, b in zip(closed_form, general):
        assert abs(a - b) <= mpmath.mpf(10) ** (-40) * abs(b)


@pytest.mark.parametrize("dtype, n_classes, width", [(np.float64, 100_000, 0.1), (np.float32, 3000, 1.0)],
                         ids=["float64", "float32"])
def test_kl_where_the_terms_cancel(dtype, n_classes, width):
    """Within 1e-11 (float64) and 1e-6 (float32, README's target for float inputs). Measured before
    the kernel recentred such rows: 8.8e-12 and 5.1e-11 (reverse) in float64, 5.3e-5 and 4.1e-5 in
    float32."""
    student, teacher, want = top_apart_row(n_classes, width, dtype)
    got = [kdloss.kd_loss(student, teacher, 1.0, reduction="none"),
           kdloss.kd_loss(teacher, student, 1.0, reduction="none")]
    rtol = {np.float64: 1e-11, np.float32: 1e-6}[dtype]
    assert_rows_accurate(np.array(got), want, rtol, f"terms that cancel, {np.dtype(dtype).name}")


def huge_rows(h):
    """(student, teacher) rows whose logits are of the order of ``h`` (near the dtype's max)."""
    inf = math.inf
    return [
        ([0.0, h, 1.0, -h], [h, 0.0, -h, 1.0]),  # argmax moves: KL ~ h
        ([0.5 * h, h, 0.0], [h, 0.5 * h, -h]),  # KL ~ h / 2
        ([h, 0.75 * h, 0.0], [h, h, 0.0]),  # KL ~ h / 8
        ([h, h, 0.9 * h], [h, -inf, 0.9 * h]),  # KL = log 2 (plus e^-0.1h)
        ([h, h, h], [h, h, -inf]),  # KL = log 3/2
        ([h, h, -h, 2.0], [h, h, 1.0, -h]),  # KL ~ e^-h: 0 to every precision
        ([-h, -h, 0.0], [-h, -h, 1.0]),  # KL ~ e^-h: 0 to every precision
    ]


@pytest.mark.parametrize("temperature", [1.0, 0.25])
@pytest.mark.parametrize("dtype, h", [(np.float64, 1e307), (np.float32, 3e38)], ids=["float64", "float32"])
def test_huge_logits(dtype, h, temperature):
    for student_row, teacher_row in huge_rows(h):
        student = np.array([student_row], dtype=dtype)
        teacher = np.array([teacher_row], dtype=dtype)
        want = exact_kd_rows(student, teacher, temperature)
        got = kernel_rows(student, teacher, temperature)
        assert np.all(np.isfinite(got)), (student_row, teacher_row, got)
        assert_rows_accurate(got, want, ORDINARY_RTOL[dtype], f"huge logits, {np.dtype(dtype).name}")


# The default thread count only: the same bits for every count is test_tables.py's to show.
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_reduction_over_many_rows(reduction, dtype):
    n = 200_000
    student, teacher = make_pair(("independent",), dtype, 9, rows=1)
    row_loss = exact_kd_loss(student[0].tolist(), teacher[0].tolist(), 1.0)
    with mpmath.workdps(DPS):
        want = row_loss * n if reduction == "sum" else row_loss
    got = kdloss.kd_loss(
        np.tile(student, (n, 1)), np.tile(teacher, (n, 1)), reduction=reduction
    )
    rtol = {np.float64: 1e-12, np.float32: ORDINARY_RTOL[np.float32]}[dtype]
    error = relative_error(got, want, np.float64)
    WORST[f"{reduction} over {n} rows, {np.dtype(dtype).name}"] = error
    assert error <= rtol, (got, mpmath.nstr(want, 20), error)


# ---------------------------------------------------------------------------------------------
# softmax and log_softmax
# ---------------------------------------------------------------------------------------------

def as_double_double(values):
    """mpf values as float64 arrays ``(hi, lo)`` with ``hi + lo`` equal to them to ~1e-32."""
    with mpmath.workdps(DPS):
        hi = [float(v) for v in values]
        lo = [float(v - h) if math.isfinite(h) else 0.0 for v, h in zip(values, hi)]
    return np.array(hi), np.array(lo)


@functools.cache
def softmax_case(row_kind, dtype, n_classes, temperature):
    """Rows of logits, and their exact log_softmax and softmax as double-double arrays.

    ``"spread"``: N(0, 3^2), with -inf on every fifth class when there are more than 4;
    ``"peaked"``: N(0, 1) with one class 30 above the rest, so that P is 1 - O(e^-30).
    Returns ``logits, (log_hi, log_lo), (p_hi, p_lo)``, each array of the logits' shape.
    """
    rng = rng_for("softmax", row_kind, np.dtype(dtype).name, n_classes, temperature)
    rows = n_rows(n_classes)
    if row_kind == "spread":
        logits = 3.0 * rng.standard_normal((rows, n_classes))
        if n_classes > 4:
            logits[:, 2::5] = -np.inf
    else:
        logits = rng.standard_normal((rows, n_classes))
        logits[np.arange(rows), rng.integers(0, n_classes, rows)] += 30.0
    logits = logits.astype(dtype)
    exact_rows = [exact_log_softmax_and_softmax(row, temperature) for row in logits.tolist()]
    log_p = [v for log_row, _ in exact_rows for v in log_row]
    p = [v for _, row in exact_rows for v in row]
    log_hi, log_lo = as_double_double(log_p)
    p_hi, p_lo = as_double_double(p)
    shape = logits.shape
    return logits, (log_hi.reshape(shape), log_lo.reshape(shape)), (p_hi.reshape(shape), p_lo.reshape(shape))


def error_message(errors, got, want_hi, what):
    """The worst entries of ``errors`` (an array of got's shape), for an assertion message."""
    worst = np.argsort(errors, axis=None)[::-1][:5]
    return "\n".join(
        f"  row {i}, class {j}: got {got[i, j]!r}, exact {want_hi[i, j]!r}, {what} {errors[i, j]:.3g}"
        for i, j in zip(*np.unravel_index(worst, errors.shape))
    )


def check_float32_rounding(got, want_hi, category):
    """Every entry of ``got`` (float32) within 1 ulp of the exact value rounded to float32."""
    rounded = want_hi.astype(np.float32)
    finite = np.isfinite(rounded)
    assert np.array_equal(got[~finite], rounded[~finite]), (got, rounded)
    ulps = np.zeros(got.shape)
    ulps[finite] = np.abs(got[finite].astype(np.float64) - rounded[finite]) / np.spacing(np.abs(rounded[finite]))
    WORST[category] = max(WORST[category], float(np.max(ulps)))
    assert np.all(ulps <= 1.0), "more than 1 ulp from the exact value:\n" + error_message(ulps, got, want_hi, "ulp")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_classes", CLASS_COUNTS)
@pytest.mark.parametrize("temperature", [1.0, 0.3, 7.5])
@pytest.mark.parametrize("row_kind", ["spread", "peaked"])
def test_softmax(row_kind, temperature, n_classes, dtype):
    logits, (log_hi, _), (p_hi, p_lo) = softmax_case(row_kind, dtype, n_classes, temperature)
    got = kdloss.softmax(logits, temperature)
    assert got.dtype == dtype
    if dtype is np.float32:
        check_float32_rounding(got, p_hi, "softmax float32 (ulp)")
        return
    masked = np.isneginf(log_hi)
    assert np.all(got[masked] == 0.0)
    errors = np.abs((got - p_hi) - p_lo) / np.maximum(p_hi, np.finfo(np.float64).tiny)
    errors[masked] = 0.0
    # Entries >= 1e-6 to 1e-14 (relative); smaller ones to 1e-14 per unit of |log p|: the
    # argument of exp is only known to that absolute accuracy.
    large = p_hi >= 1e-6
    WORST["softmax float64 (relative, p >= 1e-6)"] = max(
        WORST["softmax float64 (relative, p >= 1e-6)"], float(np.max(errors[large]))
    )
    with np.errstate(invalid="ignore"):
        rtol = np.where(large, 1e-14, 1e-14 * np.maximum(1.0, -log_hi))
    assert np.all(errors <= rtol), error_message(errors / rtol, got, p_hi, "error / tolerance")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_classes", CLASS_COUNTS)
@pytest.mark.parametrize("temperature", [1.0, 0.3, 7.5])
@pytest.mark.parametrize("row_kind", ["spread", "peaked"])
def test_log_softmax(row_kind, temperature, n_classes, dtype):
    logits, (log_hi, log_lo), _ = softmax_case(row_kind, dtype, n_classes, temperature)
    got = kdloss.log_softmax(logits, temperature)
    assert got.dtype == dtype
    if dtype is np.float32:
        check_float32_rounding(got, log_hi, "log_softmax float32 (ulp)")
        return
    masked = np.isneginf(log_hi)
    assert np.all(np.isneginf(got[masked]))
    with np.errstate(invalid="ignore"):
        errors = np.abs((got - log_hi) - log_lo) / np.maximum(1.0, np.abs(log_hi))
    errors[masked] = 0.0
    category = "log_softmax float64 (abs / max(1, |v|))"
    WORST[category] = max(WORST[category], float(np.max(errors)))
    assert np.all(errors <= 1e-14), error_message(errors, got, log_hi, "error")


# ---------------------------------------------------------------------------------------------
# The reference itself
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "student, teacher, temperature",
    [
        (*make_pair(("close", 1e-6), np.float64, 37, 1e5, rows=1), 1e5),  # KL ~ 1e-22
        (*make_pair(("close", 1e-6), np.float64, 37, 1e-6, rows=1), 1e-6),
        ([[0.0, 1e307, 1.0, -1e307]], [[1e307, 0.0, -1e307, 1.0]], 1.0),
    ],
)
def test_reference_has_converged(student, teacher, temperature):
    """The 60-digit reference agrees with a 100-digit one far beyond every tolerance here."""
    s, t = np.asarray(student)[0].tolist(), np.asarray(teacher)[0].tolist()
    at_60 = exact_kd_loss(s, t, temperature)
    at_100 = exact_kd_loss(s, t, temperature, dps=100)
    with mpmath.workdps(100):
        assert abs(at_60 - at_100) <= 1e-30 * abs(at_100)
        assert at_100 > 0
