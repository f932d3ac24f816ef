"""The invariants, over the project's tables: every divergence (``kdloss._divergences``) x every
input dtype (``kdloss._dtypes``) x every kernel target. A new row of a table is tested here
without new test code (a divergence also needs its case in divergence_cases.py).

- memory layouts give the C-contiguous bits, and inputs are never written;
- the thread count changes no bit (on inputs big enough to use several threads; rows split
  among threads for each kernel dtype on every target and each 2-byte dtype on its share of
  the targets, whole rows for each dtype on its share);
- the loss alone gives each row the bits it has alone and with its gradient;
- identical rows give exactly 0, and exactly 0 gradients;
- the registry's oracles agree, row by row and in the reductions, gradients included;
- gradients agree with central finite differences;
- losses and gradients are accurate against mpmath.

2-byte inputs (float16, bfloat16) are computed from their exactly widened values: every
expectation is computed on ``widened(x)``, and tolerances come from the dtype row of the result
(``result_row(row).eps``, the unit roundoff of the value returned).
"""

import functools
import math

import mpmath
import numpy as np
import pytest
from conftest import (
    DTYPE_ROWS,
    KERNEL_TARGETS,
    LAYOUTS,
    THREAD_COUNTS,
    result_row,
    rng_for,
    rotated,
    share_of,
    thread_counts_for,
)
from divergence_cases import CASES
from exact_reference import DPS
from gradient_checks import (
    assert_grad_close,
    central_differences,
    double_double,
    errors_against_exact,
    finite_difference_atol,
    intermediate_eps,
)

import kdloss
from kdloss._divergences import DIVERGENCES

# Every test here runs once per kernel target (see conftest.py).
pytestmark = pytest.mark.usefixtures("kernel_target")

inf = math.inf
EPS64 = float(np.finfo(np.float64).eps)


def test_every_divergence_has_its_test_case():
    assert set(DIVERGENCES) <= set(CASES), "add the divergence's row to tests/divergence_cases.py"
    for name in DIVERGENCES:
        assert CASES[name].divergence == name and CASES[name].beta is None  # the row's defaults
    assert all(case.divergence in DIVERGENCES for case in CASES.values())


def test_taking_turns_leaves_no_value_out():
    """conftest.share_of and conftest.rotated, on which the tests below rely: every value runs on
    some target (share_of) or (target, dtype) pair (rotated); every target and every dtype meets
    each value where the tables are long enough."""
    for items in ((0.5, 1.0, 4.0), (1.0, 4.0), ("one",)):
        assert {v for target in KERNEL_TARGETS for v in share_of(list(items), target)} == set(items)
        turns = {(target, row.name): rotated(items, target, row) for target in KERNEL_TARGETS for row in DTYPE_ROWS}
        assert set(turns.values()) == set(items)
        for target in KERNEL_TARGETS:
            met = {v for (t, _), v in turns.items() if t == target}
            assert met == set(items) or len(DTYPE_ROWS) < len(items), target
        for row in DTYPE_ROWS:
            met = {v for (_, name), v in turns.items() if name == row.name}
            assert met == set(items) or len(KERNEL_TARGETS) < len(items), row.name


def widened(array):
    """The exact values of ``array`` as float64 (every dtype of the table widens exactly)."""
    return np.asarray(array).astype(np.float64)


NOISE = {"close": 1e-2, "near_zero": 1e-6}


def logits_pair(shape, row, kind="masked", seed=0, masks=("teacher",)):
    """(student, teacher) of ``shape`` in the input dtype of ``row``: "independent", "close"
    (student = teacher + 1e-2 noise), "near_zero" (+ 1e-6 noise: values ~1e-12), "masked"
    (independent; the sides in ``masks`` set to -inf on every fourth class, the teacher from
    class 1, the student from class 3: never a whole row), "same_mask" (both sides -inf on every
    fourth class from class 1), "same_mask_but_one" (the same, but the last of those classes is
    masked on one side alone: in rows of more than 256 classes, a block, the kernel's same-mask mode
    meets it after a block it has summed), "same_mask_far" (the same as "same_mask", with the
    teacher's class 0 and the student's class 2 at -3000: finite logits too far below their maxima
    for that mode), "masked_far" ("masked" with the teacher's class 0 at -3000: the masked modes'
    way out to the general one) or
    "top_apart" (a flat teacher, and the
    student the teacher minus 0.01 on every class but the teacher's top one: d is one constant
    over most of P's mass, where the finish's terms cancel and the kernel recentres the row); with
    "top_apart_masked" both sides also mask every eleventh class from class 3 (the masked modes)."""
    rng = rng_for(shape, row.name, kind, seed)
    teacher = rng.normal(0, 3, shape)
    noise = rng.normal(0, 1, shape)
    student = teacher + NOISE.get(kind, 1.0) * noise
    if kind in ("top_apart", "top_apart_masked"):
        teacher = rng.normal(0, 0.5, shape).astype(row.numpy_dtype)
        student = (widened(teacher) - 0.01).astype(row.numpy_dtype)
        top = np.argmax(widened(teacher), axis=-1)[..., None]
        np.put_along_axis(student, top, np.take_along_axis(teacher, top, -1), -1)
        if kind == "top_apart_masked":
            teacher[..., 3::11] = student[..., 3::11] = -inf
        return student, teacher
    if kind in ("same_mask", "same_mask_but_one", "same_mask_far"):
        teacher[..., 1::4] = student[..., 1::4] = -inf
        if kind == "same_mask_far":
            teacher[..., 0] = student[..., 2] = -3000.0
        if kind == "same_mask_but_one":  # the side in ``masks`` keeps it: a finite value for every case
            unmasked = student if "teacher" in masks else teacher
            unmasked[..., 1::4][..., -1] = noise[..., 1::4][..., -1]
    if kind == "masked_far":
        teacher[..., 0] = -3000.0
    if kind in ("masked", "masked_far"):
        if "teacher" in masks:
            teacher[..., 1::4] = -inf
        if "student" in masks:
            student[..., 3::4] = -inf
    return student.astype(row.numpy_dtype), teacher.astype(row.numpy_dtype)


def bits(value):
    return np.asarray(value).dtype, np.asarray(value).shape, np.asarray(value).tobytes()


def everything(case, student, teacher, temperature, num_threads=None, reductions=("none", "sum", "mean")):
    """Every result of one divergence on one pair, as bits: per-row losses, the reductions, the
    loss and gradients of the weighted mean, and of the per-row losses times a grad_output."""
    rng = rng_for(teacher.shape, "weights")
    weights = rng.uniform(0, 2, teacher.shape[:-1])
    grad_output = rng.uniform(-2, 2, teacher.shape[:-1])
    losses = [
        case.loss(student, teacher, temperature, reduction=reduction, num_threads=num_threads)
        for reduction in reductions
    ]
    weighted_mean = case.loss_and_grad(student, teacher, temperature, weights=weights, teacher_grad=True,
                                       num_threads=num_threads)
    per_row = case.loss_and_grad(student, teacher, temperature, reduction="none", grad_output=grad_output,
                                 teacher_grad=True, num_threads=num_threads)
    return [bits(v) for v in (*losses, *weighted_mean, *per_row)]


# ---------------------------------------------------------------------------------------------
# Layouts and threads: the same bits
# ---------------------------------------------------------------------------------------------

LAYOUT_SHAPES = ((1025,), (13, 9), (3, 5, 17))  # one row; short rows in 2-D; (B, L, V)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_gives_the_contiguous_bits(layout, row_case, dtype_row, layout_of):
    case = row_case
    for shape in LAYOUT_SHAPES:
        pair = logits_pair(shape, dtype_row, masks=case.masks)
        expected = everything(case, *pair, 1.5)
        assert expected[0][0] == dtype_row.result_dtype and expected[-1][0] == dtype_row.result_dtype
        views = [layout_of(x, layout) for x in pair]
        copies = [v.copy() for v in views]
        assert everything(case, *views, 1.5) == expected, shape
        for view, copy in zip(views, copies):
            assert bits(view) == bits(copy)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_softmax_every_layout_gives_the_contiguous_bits(layout, dtype_row, layout_of):
    for shape in LAYOUT_SHAPES:
        logits = logits_pair(shape, dtype_row)[1]
        view = layout_of(logits, layout)
        for function in (kdloss.softmax, kdloss.log_softmax):
            expected = function(logits, 0.7)
            assert expected.dtype == dtype_row.result_dtype
            assert bits(function(view, 0.7)) == bits(expected)
        assert bits(view) == bits(logits)


# Each uses every thread count: many ordinary rows; many short rows (one per vector lane); four
# rows longer than the chunk (their chunks are shared among the threads).
THREAD_SHAPES = ((120, 1000), (3000, 40), (4, 40000))


def test_loss_alone_gives_each_rows_bits(row_case, dtype_row):
    """The loss alone finishes rows longer than the short-row pass takes several at a time, one
    per vector lane: each row keeps the bits it has alone and with its gradient, special rows
    among ordinary ones included. 21 rows of 100 classes: groups of every lane count, a last
    group short."""
    case = row_case
    student, teacher = logits_pair((21, 100), dtype_row, masks=case.masks)
    close = logits_pair((21, 100), dtype_row, kind="close", seed=1)
    student[10:], teacher[10:] = close[0][10:], close[1][10:]
    student[3] = teacher[3]  # exactly 0
    student[5, 7] = np.nan
    student[9] = -inf  # a student row all -inf
    student[12, 2] = -inf  # the student rules out a class the teacher allows
    teacher[15] = -inf  # a teacher row all -inf
    student[18] = (widened(teacher[18]) * (1 + 1e-3)).astype(teacher.dtype)  # near zero
    student[16], teacher[16] = logits_pair((1, 100), dtype_row, kind="same_mask")  # both mask the same classes
    student[19:], teacher[19:] = logits_pair((2, 100), dtype_row, kind="top_apart")  # recentred
    weights = rng_for(teacher.shape, "weights").uniform(0, 2, 21)
    weights[4] = 0.0
    losses = case.loss(student, teacher, 1.5, reduction="none")
    assert bits(case.loss_and_grad(student, teacher, 1.5, reduction="none")[0]) == bits(losses)
    alone = [case.loss(student[i], teacher[i], 1.5, reduction="none") for i in range(21)]
    assert bits(np.array(alone, dtype=losses.dtype)) == bits(losses)
    for reduction in ("sum", "mean"):
        total = case.loss(student, teacher, 1.5, reduction=reduction, weights=weights)
        with_grad = case.loss_and_grad(student, teacher, 1.5, reduction=reduction, weights=weights)[0]
        assert bits(with_grad) == bits(total), reduction


# Every target runs every shape. Rows split among threads (the long ones) merge their partial
# sums per kernel dtype and target: float32 and float64 run on every target, and the 2-byte
# inputs (float32 arithmetic once loaded) on their share. Whole rows go to one thread each, the
# same partition for every dtype: each dtype runs on its share of the targets there.
KERNEL_DTYPE_ROWS = tuple(row for row in DTYPE_ROWS if np.dtype(row.numpy_dtype) == row.kernel_dtype)
NARROW_DTYPE_ROWS = tuple(row for row in DTYPE_ROWS if row not in KERNEL_DTYPE_ROWS)


@pytest.mark.parametrize("shape", THREAD_SHAPES, ids=str)
def test_every_thread_count_gives_the_same_bits(shape, row_case, kernel_target):
    case = row_case
    assert thread_counts_for(shape) == THREAD_COUNTS  # big enough to share
    split_rows = shape[-1] > kdloss._kernel.CHUNK_CLASSES
    dtype_rows = (KERNEL_DTYPE_ROWS + tuple(share_of(NARROW_DTYPE_ROWS, kernel_target)) if split_rows
                  else share_of(DTYPE_ROWS, kernel_target))
    for dtype_row in dtype_rows:
        student, teacher = logits_pair(shape, dtype_row, seed=1, masks=case.masks)
        student[::2] = teacher[::2]  # rows at KL = 0 and, below, near it
        student[1::4] = (widened(teacher[1::4]) * (1 + 1e-3)).astype(teacher.dtype)
        student[-1], teacher[-1] = logits_pair((1, shape[-1]), dtype_row, kind="top_apart")  # recentred
        for row, kind in ((-2, "same_mask"), (-3, "same_mask_but_one")):  # the same-mask mode, and its way out
            student[row], teacher[row] = logits_pair((1, shape[-1]), dtype_row, kind=kind, masks=case.masks)
        student = np.asfortranarray(student)  # one side strided: per-thread row copies
        # "sum" and "mean" add up the kernel's per-row losses (blockwise, in C order): the
        # per-row losses and the weighted mean's reduction below stand for them.
        results = {n: everything(case, student, teacher, 2.0, n, reductions=("none",)) for n in THREAD_COUNTS}
        assert all(r == results[1] for r in results.values()), dtype_row.name


@pytest.mark.parametrize("shape", THREAD_SHAPES[:2], ids=str)
def test_softmax_every_thread_count_gives_the_same_bits(shape, kernel_target):
    for dtype_row in share_of(DTYPE_ROWS, kernel_target):
        logits = logits_pair(shape, dtype_row, seed=2)[1]
        for function in (kdloss.softmax, kdloss.log_softmax):
            results = {bits(function(logits, 2.0, num_threads=n)) for n in THREAD_COUNTS}
            assert len(results) == 1, dtype_row.name


# ---------------------------------------------------------------------------------------------
# D(P || P) = 0: exactly, with exactly zero gradients
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rows", ("ordinary", "masked", "huge"))
def test_identical_rows_give_exactly_zero(rows, case, dtype_row, kernel_target):
    dtype = dtype_row.numpy_dtype
    # The extremes always, one middle temperature per (target, dtype) (conftest.rotated).
    temperatures = (1e-3, rotated((0.5, 1.0, 3.0), kernel_target, dtype_row), 1e3)
    for n_classes in (1, 3, 9, 64, 65, 1000):  # one class; short rows; long rows
        teacher = rng_for(n_classes, "identical").normal(0, 3, (5, n_classes))
        if rows == "masked":  # -inf on every fourth class; the last class stays finite
            teacher[:, :-1:4] = -inf
        if rows == "huge":  # largest logit a quarter of the dtype's maximum
            teacher = teacher / np.max(np.abs(teacher)) * (float(np.finfo(dtype).max) / 4)
        teacher = teacher.astype(dtype)
        for temperature in temperatures:
            losses = case.loss(teacher.copy(), teacher, temperature, reduction="none")
            loss, d_s, d_t = case.loss_and_grad(teacher.copy(), teacher, temperature, teacher_grad=True)
            where = f"{n_classes} classes, T = {temperature}"
            assert np.all(losses == 0.0) and loss == 0.0, where
            assert np.all(d_s == 0.0) and np.all(d_t == 0.0), where


# ---------------------------------------------------------------------------------------------
# The oracle
# ---------------------------------------------------------------------------------------------

ORACLE_SHAPES = ((9,), (7, 33), (2, 3, 300))


def oracle_atol(temperature, student, teacher):
    """The oracle's absolute error: plain NumPy subtracts log-softmax values as large as the
    finite logits' spread over T (so eps64 * T^2 * (log C + spread / T))."""
    finite = np.concatenate([a[np.isfinite(a)] for a in (student, teacher)])
    spread = float(np.ptp(finite)) if finite.size else 0.0
    return 16 * EPS64 * temperature**2 * (1 + math.log(teacher.shape[-1]) + spread / temperature)


ORACLE_TEMPERATURES = (0.5, 1.0, 4.0)


@pytest.mark.parametrize("kind", ("independent", "close", "masked", "masked_far", "same_mask",
                                  "same_mask_but_one", "same_mask_far"))
def test_oracle_agrees(kind, case, dtype_row, kernel_target):
    """At one temperature per (target, dtype) (conftest.rotated): every case meets every one."""
    temperature = rotated(ORACLE_TEMPERATURES, kernel_target, dtype_row)
    rtol = max(8 * result_row(dtype_row).eps, 1e-9)
    for shape in ORACLE_SHAPES:
        student, teacher = logits_pair(shape, dtype_row, kind, masks=case.masks)
        want = case.oracle(widened(student), widened(teacher), temperature)
        assert want.dtype == np.float64 and want.shape == shape[:-1]
        got = case.loss(student, teacher, temperature, reduction="none")
        assert got.dtype == dtype_row.result_dtype
        atol = oracle_atol(temperature, widened(student), widened(teacher))
        np.testing.assert_allclose(widened(got), want, rtol=rtol, atol=atol, err_msg=str(shape))
        # Sums and means of the float64 row losses, whatever the input dtype.
        total = case.loss(student, teacher, temperature, reduction="sum")
        assert type(total) is float
        sum_rtol = max(LOSS_RTOL[dtype_row.kernel_dtype.name], 1e-9)  # float64 sums of the row losses
        np.testing.assert_allclose(total, math.fsum(want.ravel()), rtol=sum_rtol, atol=atol * want.size)
        mean = case.loss(student, teacher, temperature, reduction="mean")
        np.testing.assert_allclose(mean, math.fsum(want.ravel()) / want.size, rtol=sum_rtol, atol=atol)
        # The gradient oracle: the same values, and the kernel's gradients to its rounding.
        want_rows, want_s, want_t = case.gradient_oracle(widened(student), widened(teacher), temperature)
        np.testing.assert_array_equal(want_rows, want)
        _, d_s, d_t = case.loss_and_grad(student, teacher, temperature, reduction="none", teacher_grad=True)
        scales = case.gradient_error_scales(widened(student), widened(teacher), temperature)
        for what, got, expected, scale in (("d_student", d_s, want_s, scales[0]),
                                           ("d_teacher", d_t, want_t, scales[1])):
            assert_grad_close(got, expected, 32 * intermediate_eps(student.dtype) * scale, student.dtype,
                              f"{what} {shape}")


# ---------------------------------------------------------------------------------------------
# Finite differences
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("temperature", (0.5, 2.0))
@pytest.mark.parametrize("shape", ((5,), (3, 4)), ids=str)
def test_gradients_match_finite_differences(shape, temperature, case, dtype_row):
    """The gradient at the widened point: central differences of the float64 loss there."""
    student, teacher = logits_pair(shape, dtype_row, "independent", seed=3)

    def objective(s, t):
        return case.loss(s, t, temperature, reduction="sum")

    loss, d_s, d_t = case.loss_and_grad(student, teacher, temperature, reduction="sum", teacher_grad=True)
    assert d_s.dtype == d_t.dtype == dtype_row.result_dtype
    assert loss == objective(student, teacher)  # the same loss bits with or without gradients
    point = (widened(student), widened(teacher))
    atol = finite_difference_atol(objective(*point), temperature)
    for index, got in ((0, d_s), (1, d_t)):
        numeric = central_differences(objective, point, index, temperature)
        rounding = 2 * result_row(dtype_row).eps * np.abs(numeric)
        assert np.all(np.abs(widened(got) - numeric) <= atol + rounding), (index, got, numeric)


# ---------------------------------------------------------------------------------------------
# Accuracy against mpmath
# ---------------------------------------------------------------------------------------------

EXACT_KINDS = ("independent", "close", "masked", "near_zero", "top_apart", "top_apart_masked")
# A short row (one per vector lane) and a long one with a partial last vector on every target;
# test_accuracy.py takes KL's rows to 1025 classes.
EXACT_CLASSES = (9, 100)
EXACT_TEMPERATURES = (1.0, 4.0)
# Relative error of a row loss, before the rounding to the result dtype, by the dtype the
# kernel reads (README "Accuracy": 1e-11 for float64; 1e-6 for inputs of float precision or
# less, which the vector targets evaluate in float32 arithmetic).
LOSS_RTOL = {"float64": 1e-11, "float32": 1e-6}
# Down to values of 1e-12 (student close to teacher, where the usual formulas cancel).
NEAR_ZERO_RTOL = {"float64": 1e-9, "float32": 1e-6}
# Gradient error in units of the intermediate accuracy times the scales (test_gradients.EXACT_K).
GRADIENT_K = 4


@functools.cache
def exact_case(case, dtype_name, kind, n_classes, temperature):
    """Inputs of a dtype row and their exact losses and gradients (computed once, on the widened
    values): ``student, teacher, losses (mpf), d_student (hi, lo), d_teacher (hi, lo)``."""
    row = next(r for r in DTYPE_ROWS if r.name == dtype_name)
    student, teacher = logits_pair((2, n_classes), row, kind, seed=4, masks=case.masks)
    pairs = list(zip(widened(student).tolist(), widened(teacher).tolist()))
    losses = [case.exact(s, t, temperature) for s, t in pairs]
    grads = [case.exact_grad(s, t, temperature) for s, t in pairs]
    d_s = double_double([v for g in grads for v in g[0]])
    d_t = double_double([v for g in grads for v in g[1]])
    return student, teacher, losses, d_s, d_t


@pytest.mark.parametrize("n_classes", EXACT_CLASSES)
@pytest.mark.parametrize("kind", EXACT_KINDS)
def test_accurate_against_mpmath(kind, n_classes, case, dtype_row, kernel_target):
    """At one temperature per (target, dtype) (conftest.rotated): every case meets each one in
    every dtype and on every target; test_accuracy.py takes KL through 1e-6 .. 1e5."""
    temperature = rotated(EXACT_TEMPERATURES, kernel_target, dtype_row)
    student, teacher, want, exact_s, exact_t = exact_case(case, dtype_row.name, kind, n_classes, temperature)
    kernel = dtype_row.kernel_dtype.name
    u = result_row(dtype_row).eps  # the rounding of the returned value
    rtol = (NEAR_ZERO_RTOL if kind == "near_zero" else LOSS_RTOL)[kernel]
    got = case.loss(student, teacher, temperature, reduction="none")
    tiny = float(np.finfo(dtype_row.result_dtype).tiny)  # below the normal range: absolute
    with mpmath.workdps(DPS):
        for g, w in zip(got.tolist(), want):
            assert mpmath.isfinite(w) and g >= 0.0
            error = abs(mpmath.mpf(g) - w)
            assert error <= (rtol + u) * abs(w) + tiny, (g, mpmath.nstr(w, 17))

    _, d_s, d_t = case.loss_and_grad(student, teacher, temperature, reduction="sum", teacher_grad=True)
    scales = case.gradient_error_scales(widened(student), widened(teacher), temperature)
    for what, got, exact, scale in (("d_student", d_s, exact_s, scales[0]), ("d_teacher", d_t, exact_t, scales[1])):
        error = errors_against_exact(widened(got), exact)
        rounding = (u if dtype_row.result_dtype != np.float64 else 0.0) * np.abs(exact[0])
        bound = GRADIENT_K * intermediate_eps(student.dtype) * scale.ravel() + rounding * (1 + 1e-6)
        bad = ~(error <= bound)
        assert not bad.any(), f"{what}: worst error {error.max():.3g}; got {widened(got).ravel()[bad][:4]}"



# Long rows of float32 inputs. The first pass takes float32 lanes; the second pass of a two-pass
# divergence may take steps of classes in them too, and a step with a class out of their range
# in double (divergence_mixture.h). Rows where every step fits ("close", "near_zero"), where some
# do not (a few classes far from the teacher), where every d and rho is too small for its
# square to stay in float32's range (T = 1e22: such rows take the double terms throughout), and
# where the value is carried by classes 53 to 60 T below the maxima ("far_below": integer
# logits, a few student classes moved by 1e-3; each class's e^a must be accurate to ~1 ulp
# there, which (t - t_max) / T rounded to float32 is not: measured 6.6e-6 off before the fix);
# and rows where both sides mask every fourth class (the same-mask mode, whose second pass takes
# float32 lanes too), with the student far from or close to the teacher.
LONG_ROW_KINDS = {"close": ("close", 1.0), "near_zero": ("near_zero", 4.0), "far_classes": ("close", 1.0),
                  "huge_T": ("close", 1e22), "far_below": ("close", 0.3), "top_apart": ("top_apart", 1.0),
                  "same_mask": ("same_mask", 4.0), "same_mask_close": ("close", 1.0)}


@functools.cache
def exact_long_rows(case, kind):
    row = next(r for r in DTYPE_ROWS if r.name == "float32")
    pair_kind, temperature = LONG_ROW_KINDS[kind]
    student, teacher = logits_pair((2, 1000), row, pair_kind, seed=5)
    if kind == "far_classes":
        student[:, ::50] += np.float32(4.0)
    if kind == "same_mask_close":
        student[:, 1::4] = teacher[:, 1::4] = -np.inf
    if kind == "far_below":
        teacher = np.random.default_rng(6).integers(-23, 1, (2, 1000)).astype(np.float32)
        teacher[:, :3] = 0.0
        student = teacher.copy()
        for level in (-16.0, -17.0, -18.0):  # one class at each, 53 to 60 T below the maximum
            rows, columns = np.nonzero(teacher == level)
            first = np.searchsorted(rows, [0, 1])
            student[rows[first], columns[first]] += np.float32(1e-3)
    want = [case.exact(s, t, temperature) for s, t in zip(widened(student).tolist(), widened(teacher).tolist())]
    return student, teacher, temperature, want


@pytest.mark.parametrize("kind", LONG_ROW_KINDS)
def test_long_float32_rows_against_mpmath(kind, case, kernel_target):
    """Two rows of 1000 classes within 1e-6 of mpmath (and the rounding), with the same bits as
    the loss of kd_loss_and_grad."""
    student, teacher, temperature, want = exact_long_rows(case, kind)
    got = case.loss(student, teacher, temperature, reduction="none")
    rtol = LOSS_RTOL["float32"] + float(np.finfo(np.float32).eps) / 2  # and the rounding to float32
    with mpmath.workdps(DPS):
        for g, w in zip(got.tolist(), want):
            assert mpmath.isfinite(w) and g >= 0.0
            assert abs(mpmath.mpf(g) - w) <= rtol * abs(w), (g, mpmath.nstr(w, 17))
    with_grad = case.loss_and_grad(student, teacher, temperature, reduction="none")[0]
    assert bits(with_grad) == bits(got)


@functools.cache
def exact_far_student(case):
    """The benchmark's rows at T = 1: teacher 3 N(0, 1), student = teacher + N(0, 1), 1000
    classes. A quarter of the classes lie outside the mixtures' float32 central range (|z| <= 0.4)
    and most inside the wider one (|z| <= 0.8, divergence_mixture.h), so nearly every step of their
    float32 second pass takes the wide polynomial."""
    rng = np.random.default_rng(8)
    teacher = (3 * rng.standard_normal((2, 1000))).astype(np.float32)
    student = (teacher + rng.standard_normal((2, 1000))).astype(np.float32)
    pairs = list(zip(widened(student).tolist(), widened(teacher).tolist()))
    want = [case.exact(s, t, 1.0) for s, t in pairs]
    grads = [case.exact_grad(s, t, 1.0) for s, t in pairs]
    d_s = double_double([v for g in grads for v in g[0]])
    d_t = double_double([v for g in grads for v in g[1]])
    return student, teacher, want, d_s, d_t


def test_far_students_at_unit_temperature_against_mpmath(case, kernel_target):
    """float32 rows far from their teacher at T = 1: the loss within 1e-6 of mpmath (and the
    rounding), the gradients within the bounds of test_accurate_against_mpmath."""
    student, teacher, want, exact_s, exact_t = exact_far_student(case)
    got = case.loss(student, teacher, 1.0, reduction="none")
    rtol = LOSS_RTOL["float32"] + float(np.finfo(np.float32).eps) / 2
    with mpmath.workdps(DPS):
        for g, w in zip(got.tolist(), want):
            assert mpmath.isfinite(w) and g >= 0.0
            assert abs(mpmath.mpf(g) - w) <= rtol * abs(w), (g, mpmath.nstr(w, 17))
    _, d_s, d_t = case.loss_and_grad(student, teacher, 1.0, reduction="sum", teacher_grad=True)
    scales = case.gradient_error_scales(widened(student), widened(teacher), 1.0)
    u = float(np.finfo(np.float32).eps)
    for what, grad, exact, scale in (("d_student", d_s, exact_s, scales[0]), ("d_teacher", d_t, exact_t, scales[1])):
        error = errors_against_exact(widened(grad), exact)
        bound = GRADIENT_K * intermediate_eps(student.dtype) * scale.ravel() + u * np.abs(exact[0]) * (1 + 1e-6)
        bad = ~(error <= bound)
        assert not bad.any(), f"{what}: worst error {error.max():.3g}"
