"""Special values (-inf, +inf, NaN, huge logits, one class), row by row.

Each special row sits between ordinary rows, which must come out exactly as when computed
alone. Every result is checked against a closed-form value and against the reference.
"""

import math

import numpy as np
import pytest
from numpy.testing import assert_allclose

import kdloss
from kdloss import reference

# Every test here runs once per kernel target (see conftest.py).
pytestmark = pytest.mark.usefixtures("kernel_target")

inf, nan = math.inf, math.nan
DTYPES = (np.float32, np.float64)
TEMPERATURES = (0.5, 1.0, 3.0)
HUGE = {np.float32: 3e38, np.float64: 1e307}


# (student row, teacher row, T -> T^2 KL). H stands for HUGE[dtype].
KD_CASES = {
    "teacher -inf masks its class": ([0, 0, 0], [-inf, 0, 0], lambda T: T**2 * math.log(1.5)),
    "masked class, student large there": (
        [5, 0, 0], [-inf, 0, 0], lambda T: T**2 * math.log((math.exp(5 / T) + 2) / 2)
    ),
    "both -inf on one class": ([-inf, 0, 0], [-inf, 0, 0], lambda T: 0.0),
    "both -inf on one class, rest differs": ([-inf, 1, 0], [-inf, 0, 1], lambda T: T * math.tanh(0.5 / T)),
    "student -inf, teacher finite": ([-inf, 0, 0], [0, 0, 0], lambda T: inf),
    "student -inf, teacher finite but negligible": ([-inf, 0, 0], [-1e4, 0, 0], lambda T: inf),
    "teacher all -inf": ([0, 0, 0], [-inf, -inf, -inf], lambda T: nan),
    "both all -inf": ([-inf, -inf, -inf], [-inf, -inf, -inf], lambda T: nan),
    "teacher +inf": ([0, 0, 0], [inf, 0, 0], lambda T: nan),
    "student +inf": ([inf, 0, 0], [0, 0, 0], lambda T: nan),
    "student +inf on a masked class": ([inf, 0, 0], [-inf, 0, 0], lambda T: nan),
    "both +inf": ([inf, 0, 0], [inf, 0, 0], lambda T: nan),
    "teacher NaN": ([0, 0, 0], [0, nan, 0], lambda T: nan),
    "student NaN": ([0, 0, nan], [0, 0, 0], lambda T: nan),
    "student NaN on a masked class": ([nan, 0, 0], [-inf, 0, 0], lambda T: nan),
    "teacher NaN, student -inf": ([-inf, 0, 0], [nan, 0, 0], lambda T: nan),
    "one class": ([7], [-3], lambda T: 0.0),
    "one class, huge": (["H"], ["-H"], lambda T: 0.0),
}
# Huge finite logits; T <= 1 keeps T * H within float32.
HUGE_KD_CASES = {
    "huge, different argmax": ([0, "H"], ["H", 0], lambda T, H: T * H),
    "huge, same argmax": (["H", "-H", 0], ["H", 0, "-H"], lambda T, H: 0.0),
    "huge, identical": (["H", "-H"], ["H", "-H"], lambda T, H: 0.0),
    "huge student on a masked class": (["H", 0, 0], [-inf, 0, 0], lambda T, H: T * H),
    "huge with a masked class": (["H", "H", 0], [-inf, "H", 0], lambda T, H: T**2 * math.log(2)),
}


def row_of(values, dtype, huge=None):
    """A row with the placeholders "H", "-H", "H/2", "H/4", "-H/4" replaced by (parts of) ``huge``."""
    huge = HUGE[dtype] if huge is None else huge
    names = {"H": huge, "-H": -huge, "H/2": huge / 2, "H/4": huge / 4, "-H/4": -huge / 4}
    return [names[v] if isinstance(v, str) else v for v in values]


def with_neighbours(row, dtype, seed):
    """(3, C) batch: ordinary random rows around ``row`` (index 1)."""
    rng = np.random.default_rng(seed)
    batch = rng.normal(0, 2, (3, len(row)))
    batch[1] = row
    return batch.astype(dtype)


def assert_value(got, expected, dtype):
    """``got`` is ``expected`` (NaN, +-inf, exactly 0, or close to a few ulps of ``dtype``)."""
    got = float(got)
    if math.isnan(expected) or math.isinf(expected) or expected == 0:
        assert got == expected or (math.isnan(got) and math.isnan(expected)), (got, expected)
    else:
        assert math.isclose(got, expected, rel_tol=16 * np.finfo(dtype).eps), (got, expected)


def check_kd_row(student_row, teacher_row, expected, dtype, temperature):
    student = with_neighbours(row_of(student_row, dtype), dtype, seed=1)
    teacher = with_neighbours(row_of(teacher_row, dtype), dtype, seed=2)
    losses = kdloss.kd_loss(student, teacher, temperature, reduction="none")
    assert_value(losses[1], expected, dtype)
    assert_value(kdloss.kd_loss(student[1], teacher[1], temperature, reduction="none"), expected, dtype)
    # The neighbours: finite, and bitwise what they are on their own.
    alone = kdloss.kd_loss(student[[0, 2]], teacher[[0, 2]], temperature, reduction="none")
    assert np.all(np.isfinite(alone))
    assert losses[[0, 2]].tobytes() == alone.tobytes()
    # The reference agrees, row by row and in the reductions.
    assert_allclose(losses, reference.kd_loss(student, teacher, temperature, reduction="none"), rtol=1e-6)
    for reduction in ("sum", "mean"):
        total = kdloss.kd_loss(student, teacher, temperature, reduction=reduction)
        assert_allclose(total, reference.kd_loss(student, teacher, temperature, reduction=reduction), rtol=1e-9)
        if math.isnan(expected) or math.isinf(expected):
            assert_value(total, expected, dtype)  # the row makes the reduction NaN or +inf
        else:
            assert math.isfinite(total)


@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", KD_CASES)
def test_kd_loss_special_row(case, dtype, temperature):
    student_row, teacher_row, expected = KD_CASES[case]
    check_kd_row(student_row, teacher_row, expected(temperature), dtype, temperature)


@pytest.mark.parametrize("temperature", (0.5, 1.0))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", HUGE_KD_CASES)
def test_kd_loss_huge_logits_are_finite(case, dtype, temperature):
    student_row, teacher_row, expected = HUGE_KD_CASES[case]
    expected = expected(temperature, float(np.array(HUGE[dtype], dtype)))
    assert math.isfinite(expected)
    check_kd_row(student_row, teacher_row, expected, dtype, temperature)


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


def check_softmax_row(row, expected_log, dtype, temperature):
    logits = with_neighbours(row, dtype, seed=3)
    for name, expected in (("log_softmax", expected_log), ("softmax", [math.exp(v) for v in expected_log])):
        function = getattr(kdloss, name)
        out = function(logits, temperature)
        assert out.dtype == dtype
        for got, want in zip(out[1], expected):
            assert_value(got, want, dtype)
        alone = function(logits[[0, 2]], temperature)
        assert np.all(np.isfinite(alone))
        assert out[[0, 2]].tobytes() == alone.tobytes()
        assert_allclose(out, getattr(reference, name)(logits, temperature), rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", SOFTMAX_CASES)
def test_softmax_special_row(case, dtype, temperature):
    row, expected_log = SOFTMAX_CASES[case]
    check_softmax_row(row, expected_log(temperature), dtype, temperature)


@pytest.mark.parametrize("temperature", (0.5, 1.0))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", HUGE_SOFTMAX_CASES)
def test_softmax_huge_logits(case, dtype, temperature):
    row, expected_log = HUGE_SOFTMAX_CASES[case]
    huge = float(np.array(HUGE[dtype] / 4, dtype)) * 4  # H/2 and H/4 exact in the dtype
    check_softmax_row(row_of(row, dtype, huge), expected_log(temperature, huge), dtype, temperature)


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
