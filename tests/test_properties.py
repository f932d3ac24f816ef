"""Mathematical properties of the loss, on random inputs."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kdloss
from kdloss import reference

# Every test here runs once per kernel target (see conftest.py).
pytestmark = pytest.mark.usefixtures("kernel_target")

DTYPES = (np.float32, np.float64)
SETTINGS = settings(max_examples=60, deadline=None)
temperatures = st.sampled_from((0.3, 1.0, 2.0, 5.0))


@st.composite
def batches(draw, min_rows=1):
    """Finite (student, teacher) of shape (rows, classes) or (B, L, V), close or far apart,
    sometimes with teacher-masked (-inf) classes that the student may share."""
    dtype = draw(st.sampled_from(DTYPES))
    n_classes = draw(st.sampled_from((1, 2, 7, 9, 64, 1025)))
    shape = draw(st.sampled_from(((min_rows,), (7,), (33,), (3, 5)))) + (n_classes,)
    scale = draw(st.sampled_from((1e-3, 1.0, 20.0)))
    closeness = draw(st.sampled_from((0.0, 1e-12, 1e-6, 1e-2, 1.0)))
    mask = draw(st.sampled_from((0.0, 0.0, 0.2)))
    share_mask = draw(st.booleans())
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    teacher = scale * rng.standard_normal(shape)
    student = teacher + closeness * scale * rng.standard_normal(shape)
    masked = rng.random(shape) < mask
    masked[..., 0] = False  # keep every teacher row defined
    teacher[masked] = -np.inf
    if share_mask:
        student[masked] = -np.inf
    return student.astype(dtype), teacher.astype(dtype)


@SETTINGS
@given(batch=batches(), temperature=temperatures)
def test_loss_is_non_negative(batch, temperature):
    losses = kdloss.kd_loss(*batch, temperature, reduction="none")
    assert np.all(losses >= 0)  # also rules out NaN
    assert kdloss.kd_loss(*batch, temperature, reduction="sum") >= 0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("temperature", (0.3, 1.0, 7.0))
def test_identical_rows_give_exactly_zero(dtype, temperature):
    logits = np.random.default_rng(0).normal(0, 10, (9, 1025)).astype(dtype)
    logits[::2, ::3] = -np.inf
    assert np.all(kdloss.kd_loss(logits, logits, temperature, reduction="none") == 0)
    assert kdloss.kd_loss(logits, logits.copy(), temperature, reduction="sum") == 0


def shift_tolerance(student, teacher, shifted, temperature):
    """Bound on the change of T^2 KL when logits move by their rounding error in ``shifted``.

    d(T^2 KL)/d(student_i) = T (q_i - p_i) sums to at most 2T in absolute value;
    d(T^2 KL)/d(teacher_i) = T p_i (log(p_i / q_i) - KL) is at most T * 2 max |log(p_i / q_i)|.
    """
    eps = np.finfo(shifted.dtype).eps
    finite = np.where(np.isfinite(shifted), shifted, 0)
    moved = eps * np.max(np.abs(finite), axis=-1)  # rounding of x + c is at most this
    log_p = reference.log_softmax(teacher.astype(np.float64), temperature)
    log_q = reference.log_softmax(student.astype(np.float64), temperature)
    with np.errstate(invalid="ignore"):  # -inf - -inf on shared masks
        log_ratio = np.where(np.isfinite(log_p), np.abs(log_p - log_q), 0).max(axis=-1)
    return 4 * temperature * moved * (1 + log_ratio) + 1e-13 * temperature**2


@SETTINGS
@given(
    batch=batches(),
    temperature=temperatures,
    magnitude=st.sampled_from((1e-3, 1.0, 100.0, 1e4)),
    side=st.sampled_from(("student", "teacher")),
    seed=st.integers(0, 2**32 - 1),
)
def test_translation_invariance(batch, temperature, magnitude, side, seed):
    student, teacher = batch
    rows = student.shape[:-1] + (1,)
    shift = (magnitude * np.random.default_rng(seed).standard_normal(rows)).astype(student.dtype)
    shifted_student = student + shift if side == "student" else student
    shifted_teacher = teacher + shift if side == "teacher" else teacher
    base = kdloss.kd_loss(student, teacher, temperature, reduction="none").astype(np.float64)
    moved = kdloss.kd_loss(shifted_student, shifted_teacher, temperature, reduction="none")
    assert np.all(moved >= 0)
    shifted = shifted_student if side == "student" else shifted_teacher
    tolerance = shift_tolerance(student, teacher, shifted, temperature)
    tolerance += 4 * np.finfo(student.dtype).eps * base  # the float32 rounding of the result
    assert np.all(np.abs(moved - base) <= tolerance)


@SETTINGS
@given(batch=batches(min_rows=2), temperature=temperatures, seed=st.integers(0, 2**32 - 1))
def test_row_permutation(batch, temperature, seed):
    student, teacher = (x.reshape(-1, x.shape[-1]) for x in batch)
    perm = np.random.default_rng(seed).permutation(len(student))
    losses = kdloss.kd_loss(student, teacher, temperature, reduction="none")
    permuted = kdloss.kd_loss(student[perm], teacher[perm], temperature, reduction="none")
    np.testing.assert_array_equal(permuted, losses[perm])  # bitwise: each row is independent
    total = kdloss.kd_loss(student, teacher, temperature, reduction="sum")
    permuted_total = kdloss.kd_loss(student[perm], teacher[perm], temperature, reduction="sum")
    assert math.isclose(permuted_total, total, rel_tol=8 * np.finfo(np.float64).eps, abs_tol=1e-300)


@SETTINGS
@given(batch=batches(), temperature=temperatures)
def test_sum_and_mean_agree_with_none(batch, temperature):
    student, teacher = batch
    losses = kdloss.kd_loss(student, teacher, temperature, reduction="none")
    total = kdloss.kd_loss(student, teacher, temperature, reduction="sum")
    mean = kdloss.kd_loss(student, teacher, temperature, reduction="mean")
    # "none" is rounded to the compute dtype; "sum" adds the float64 row losses.
    exact = math.fsum(losses.astype(np.float64).ravel())
    rel = 4 * np.finfo(losses.dtype).eps + 8 * np.finfo(np.float64).eps
    underflow = losses.size * np.finfo(losses.dtype).tiny  # row losses that round to 0 in float32
    assert math.isclose(total, exact, rel_tol=rel, abs_tol=underflow)
    assert math.isclose(mean, total / losses.size, rel_tol=2 * np.finfo(np.float64).eps)
    assert kdloss.kd_loss(student, teacher, temperature, reduction="batchmean") == mean


# -- distillation_loss ---------------------------------------------------------------------------

logit_lists = st.integers(1, 12).flatmap(
    lambda n: st.tuples(*[st.lists(st.floats(-30, 30), min_size=n, max_size=n)] * 2)
)
CONTAINERS = (list, tuple, np.array)


def assert_rounded_loss(student, teacher, temperature=1.0):
    got = kdloss.distillation_loss(student, teacher, temperature)
    assert type(got) is float
    expected = round(reference.kd_loss(np.asarray(student), np.asarray(teacher), temperature, reduction="sum"), 4)
    assert got == expected
    assert math.copysign(1.0, got) == 1.0  # never -0.0
    return got


@SETTINGS
@given(pair=logit_lists, temperature=temperatures, container=st.sampled_from(CONTAINERS))
def test_distillation_loss_is_rounded_reference_sum(pair, temperature, container):
    assert_rounded_loss(container(pair[0]), container(pair[1]), temperature)


@pytest.mark.parametrize("container", CONTAINERS)
@pytest.mark.parametrize(
    "student, teacher",
    [
        ([1.0, 2.0, 3.0], [2.0, 3.0, 4.0]),  # offset logits: the same distribution
        ([0.5, -1.25, 3.0], [0.5, -1.25, 3.0]),
        ([1.0, 2.0, 3.0], [1.0, 2.0, 3.0 + 1e-6]),  # a tiny positive loss rounds to +0.0
        ([4.0], [-4.0]),  # one class
    ],
)
def test_distillation_loss_zero_is_positive_zero(student, teacher, container):
    assert assert_rounded_loss(container(student), container(teacher)) == 0.0


def test_distillation_loss_accepts_ints_and_mixed_containers():
    got = kdloss.distillation_loss([0, 1, 2], np.array([2.0, 1.0, 0.0]), 2.0)
    assert got == round(reference.kd_loss(np.array([0.0, 1, 2]), np.array([2.0, 1, 0]), 2.0, reduction="sum"), 4)
    assert got > 0
