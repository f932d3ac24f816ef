"""Special values (-inf, +inf, NaN, huge logits, one class), row by row, for every divergence
and input dtype of the tables.

Each special row sits between ordinary rows, which must come out exactly as when computed
alone. Every result is checked against a closed-form value (the divergence's case in
divergence_cases.py) and against the registry's oracle; the gradients against its gradient
oracle (NaN where it is NaN).
"""

import math

import numpy as np
import pytest
from conftest import HUGE, result_row, rotated
from divergence_cases import CASES
from gradient_checks import intermediate_eps
from numpy.testing import assert_allclose

import kdloss
from kdloss import reference

# Every test here runs once per kernel target (see conftest.py).
pytestmark = pytest.mark.usefixtures("kernel_target")

inf, nan = math.inf, math.nan
DTYPES = (np.float32, np.float64)
TEMPERATURES = (0.5, 1.0, 3.0)

# (divergence case, name of a special row), for every case of divergence_cases.py.
SPECIAL_ROWS = [(name, row) for name in CASES for row in CASES[name].special_rows]
HUGE_ROWS = [(name, row) for name in CASES for row in CASES[name].huge_rows]


def row_of(values, dtype, huge=None):
    """A row with the placeholders "H", "-H", "H/2", "H/4", "-H/4" replaced by (parts of) ``huge``."""
    huge = HUGE[np.dtype(dtype)] if huge is None else huge
    names = {"H": huge, "-H": -huge, "H/2": huge / 2, "H/4": huge / 4, "-H/4": -huge / 4}
    return [names[v] if isinstance(v, str) else v for v in values]


def with_neighbours(row, dtype, seed):
    """(3, C) batch: ordinary random rows around ``row`` (index 1)."""
    rng = np.random.default_rng(seed)
    batch = rng.normal(0, 2, (3, len(row)))
    batch[1] = row
    return batch.astype(dtype)


def assert_value(got, expected, rel_tol):
    """``got`` is ``expected`` (NaN, +-inf, exactly 0, or within ``rel_tol``)."""
    got = float(got)
    if math.isnan(expected) or math.isinf(expected) or expected == 0:
        assert got == expected or (math.isnan(got) and math.isnan(expected)), (got, expected)
    else:
        assert math.isclose(got, expected, rel_tol=rel_tol), (got, expected)


def check_special_row(case, student_row, teacher_row, expected, row, temperature):
    """The special row between ordinary ones, through the divergence's public function."""
    loss = case.loss
    dtype = row.numpy_dtype
    rel_tol = case.special_ulps * result_row(row).eps  # a few ulps of the result
    student = with_neighbours(row_of(student_row, dtype), dtype, seed=1)
    teacher = with_neighbours(row_of(teacher_row, dtype), dtype, seed=2)
    losses = loss(student, teacher, temperature, reduction="none")
    assert losses.dtype == row.result_dtype
    assert_value(losses[1], expected, rel_tol)
    assert_value(loss(student[1], teacher[1], temperature, reduction="none"), expected, rel_tol)
    # The neighbours: finite, and bitwise what they are on their own.
    alone = loss(student[[0, 2]], teacher[[0, 2]], temperature, reduction="none")
    assert np.all(np.isfinite(alone))
    assert losses[[0, 2]].tobytes() == alone.tobytes()
    # The oracle agrees, row by row (on the widened values) and in the reductions.
    want = case.oracle(student.astype(np.float64), teacher.astype(np.float64), temperature)
    assert_allclose(losses, want, rtol=max(1e-6, 8 * result_row(row).eps))
    # The gradients: the gradient oracle's (NaN where it is NaN), the same losses.
    losses_too, d_s, d_t = case.loss_and_grad(student, teacher, temperature, reduction="none", teacher_grad=True)
    assert losses_too.tobytes() == losses.tobytes()
    _, want_s, want_t = case.gradient_oracle(student.astype(np.float64), teacher.astype(np.float64), temperature)
    for what, got, want_grad in (("d_student", d_s, want_s), ("d_teacher", d_t, want_t)):
        assert_allclose(got, want_grad, rtol=max(1e-6, 8 * result_row(row).eps),
                        atol=32 * intermediate_eps(dtype) * temperature,
                        err_msg=what)
    for reduction in ("sum", "mean"):
        total = loss(student, teacher, temperature, reduction=reduction)
        want_total = math.fsum(want) / (1 if reduction == "sum" else len(want))
        # float64 sums; rows of float32 and 2-byte inputs carry their float32 arithmetic's error.
        assert_allclose(total, want_total, rtol=max(1e-9, 8 * result_row(row).eps))
        if math.isnan(expected) or math.isinf(expected):
            assert_value(total, expected, rel_tol)  # the row makes the reduction NaN or +inf
        else:
            assert math.isfinite(total)


@pytest.mark.parametrize("case_name, special", SPECIAL_ROWS, ids=[f"{d}-{c}" for d, c in SPECIAL_ROWS])
def test_special_row(case_name, special, dtype_row, kernel_target):
    """Each row at one temperature per (target, dtype) (conftest.rotated): every row meets
    every temperature, and so does every target and every dtype."""
    student_row, teacher_row, expected = CASES[case_name].special_rows[special]
    temperature = rotated(TEMPERATURES, kernel_target, dtype_row)
    check_special_row(CASES[case_name], student_row, teacher_row, expected(temperature), dtype_row, temperature)


@pytest.mark.parametrize("case_name, special", HUGE_ROWS, ids=[f"{d}-{c}" for d, c in HUGE_ROWS])
def test_huge_logits_are_finite(case_name, special, dtype_row, kernel_target):
    student_row, teacher_row, expected = CASES[case_name].huge_rows[special]
    temperature = rotated((0.5, 1.0), kernel_target, dtype_row)  # 2 H / T stays finite
    want = expected(temperature, HUGE[np.dtype(dtype_row.numpy_dtype)])
    assert math.isfinite(want)
    check_special_row(CASES[case_name], student_row, teacher_row, want, dtype_row, temperature)


# (row, T -> expected log_softmax); softmax is its exp.
SOFTMAX_CASES = {
    "-inf is probability 0": ([0, -inf, 0], lambda T: [-math.log(2), -inf, -math.log(2)]),
    "-inf among unequal logits": (
        [1, -inf, 0],
        lambda T: [-math.log1p(math.exp(-1 / T)), -inf, -math.log1p(math.exp(1 / T))],
    ),
    "one finite entry": ([-inf, -inf, 2], lambda T: [-inf, -inf, 0.0]),
    "NaN": ([nan, 0, 0], lambda T: [nan] * 3),
    "NaN next to -inf": ([0, nan, -inf], lambda T: [nan] * 3),
    "+inf": ([inf, 0, 0], lambda T: [nan] * 3),
    "+inf next to -inf": ([0, -inf, inf], lambda T: [nan] * 3),
    "all -inf": ([-inf, -inf, -inf], lambda T: [nan] * 3),
    "one class": ([5], lambda T: [0.0]),
    "one class, -inf": ([-inf], lambda T: [nan]),
    "one class, +inf": ([inf], lambda T: [nan]),
}
# Huge finite logits; T <= 1 keeps H / T within float32.
HUGE_SOFTMAX_CASES = {
    "huge": (["H", "H/2"], lambda T, H: [0.0, -H / (2 * T)]),
    "huge in the middle": (["H/2", "H", "H/2"], lambda T, H: [-H / (2 * T), 0.0, -H / (2 * T)]),
    "huge, both signs": (["H/4", "-H/4", 0], lambda T, H: [0.0, -H / (2 * T), -H / (4 * T)]),
}


def check_softmax_row(row, expected_log, dtype_row, temperature):
    logits = with_neighbours(row, dtype_row.numpy_dtype, seed=3)
    rel_tol = 32 * result_row(dtype_row).eps
    for name, expected in (("log_softmax", expected_log), ("softmax", [math.exp(v) for v in expected_log])):
        function = getattr(kdloss, name)
        out = function(logits, temperature)
        assert out.dtype == dtype_row.result_dtype
        for got, want in zip(out[1], expected):
            assert_value(got, want, rel_tol)
        alone = function(logits[[0, 2]], temperature)
        assert np.all(np.isfinite(alone))
        assert out[[0, 2]].tobytes() == alone.tobytes()
        assert_allclose(out, getattr(reference, name)(logits, temperature), rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("case", SOFTMAX_CASES)
def test_softmax_special_row(case, dtype_row):
    row, expected_log = SOFTMAX_CASES[case]
    for temperature in TEMPERATURES:
        check_softmax_row(row, expected_log(temperature), dtype_row, temperature)


@pytest.mark.parametrize("case", HUGE_SOFTMAX_CASES)
def test_softmax_huge_logits(case, dtype_row):
    row, expected_log = HUGE_SOFTMAX_CASES[case]
    dtype = dtype_row.numpy_dtype
    huge = float(np.array(HUGE[np.dtype(dtype)] / 4, dtype)) * 4  # H/2 and H/4 exact in the dtype
    for temperature in (0.5, 1.0):
        check_softmax_row(row_of(row, dtype, huge), expected_log(temperature, huge), dtype_row, temperature)


@pytest.mark.parametrize("temperature", [1e150, 1e160, 1e300])
def test_huge_temperatures_never_give_nan(temperature):
    # T^2 overflows above 1e154; the loss T^2 * KL is O(1) and must not become inf * 0 = NaN.
    student, teacher = [[0.0, 1.0, 2.5], [0.0, 1.0, 2.0]], [[0.3, 1.0, 2.0], [0.0, 1.0, 2.0]]
    losses = kdloss.kd_loss(student, teacher, temperature, reduction="none")
    assert losses[1] == 0.0
    assert 0.0 <= losses[0] < 1.0
    if temperature <= 1e150:  # where KL itself does not yet underflow
        expected = kdloss.kd_loss(student[0], teacher[0], 1e10, reduction="sum")
        assert math.isclose(losses[0], expected, rel_tol=1e-8)


@pytest.mark.parametrize("temperature", (1e-3, 1e-6, 1.0))
@pytest.mark.parametrize("dtype", DTYPES)
def test_oracle_is_exact_for_huge_logits_at_small_temperature(dtype, temperature):
    """Classes whose P underflows to 0 add 0 (p log p -> 0), not NaN from -inf - -inf."""
    huge = HUGE[dtype]
    teacher = np.array([huge, -huge], dtype)
    assert reference.kd_loss(teacher, teacher, temperature) == 0.0 == kdloss.kd_loss(teacher, teacher, temperature)
    loss, d_student, d_teacher = reference.kd_loss_and_grad(teacher, teacher, temperature, teacher_grad=True)
    assert loss == 0.0 and np.all(d_student == 0) and np.all(d_teacher == 0)
    # Same argmax, the rest of P underflowing: still 0 in both.
    student = np.array([huge, 0, -huge], dtype)
    teacher = np.array([huge, -huge, 0], dtype)
    assert reference.kd_loss(student, teacher, temperature) == 0.0 == kdloss.kd_loss(student, teacher, temperature)


def test_student_minus_inf_is_kept_when_the_teachers_gap_over_t_overflows(kernel_target):
    # Issue 14, item 9: -1e303 / 1e-6 overflows to -inf, but the teacher's logit is finite, so the
    # student's -inf rules out a class P allows: +inf on every target, as in the oracle; d_student
    # is T (Q - P) (here 0: P has nothing there in double), d_teacher NaN.
    student, teacher = np.array([[0.0, -np.inf]]), np.array([[0.0, -1e303]])
    assert kdloss.kd_loss(student, teacher, 1e-6) == np.inf
    assert kdloss.reference.kd_loss(student, teacher, 1e-6) == np.inf
    loss, d_student, d_teacher = kdloss.kd_loss_and_grad(student, teacher, 1e-6, teacher_grad=True)
    assert loss == np.inf and np.all(d_student == 0.0) and np.all(np.isnan(d_teacher))


def test_masked_rows_take_the_masked_mode_and_agree_with_the_oracle(kernel_target):
    # Rows with -inf logits (a masked vocabulary) among finite ones take the kernel's masked mode;
    # a chunk whose finite logits leave its cheap range (a < -700, |d| > 700) is redone in the
    # general mode. Either way: the oracle's values, NaN placement and gradients.
    rng = np.random.default_rng(5)
    teacher = 3 * rng.standard_normal((6, 300))
    student = teacher + 0.1 * rng.standard_normal(teacher.shape)
    teacher[:, ::7] = -np.inf
    student[1, ::11] = -np.inf  # rules out classes the teacher allows: +inf
    student[2, ::7] = -np.inf   # masks the teacher's masked classes too
    teacher[3, 5] = -2000.0     # a finite teacher logit far below: the general mode
    student[4, 3] = 5000.0      # a student logit far above: the general mode
    loss, d_student, d_teacher = kdloss.kd_loss_and_grad(student, teacher, 1.0, reduction="none", teacher_grad=True)
    want, want_s, want_t = reference.kd_loss_and_grad(student, teacher, 1.0, reduction="none", teacher_grad=True)
    assert loss[1] == np.inf and np.all(np.isfinite(np.delete(loss, 1)))
    assert_allclose(np.delete(loss, 1), np.delete(want, 1), rtol=1e-12)
    assert (np.array_equal(np.isnan(d_student), np.isnan(want_s))
            and np.array_equal(np.isnan(d_teacher), np.isnan(want_t)))
    assert_allclose(d_student, want_s, rtol=0, atol=1e-15)
    assert np.array_equal(loss, kdloss.kd_loss(student, teacher, 1.0, reduction="none"))
