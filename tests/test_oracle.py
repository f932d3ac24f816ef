"""The compiled kernel against the NumPy oracle (``kdloss.reference``) on random inputs.

Tolerances. Both sides compute in float64 from the same inputs. The oracle is plain NumPy: its
absolute error is about eps64 * T^2 * (log C + spread / T), where ``spread`` is the range of the
finite logits (log-softmax values that large are subtracted); the kernel is more accurate near
KL = 0. float32 inputs are evaluated in float32 arithmetic on the vector targets (issue 13, good to
1e-6), and their results are float32, so rows and reductions alike agree to a few float32 ulps.
"""

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numpy.testing import assert_allclose

import kdloss
from kdloss import reference

DTYPES = (np.float32, np.float64)
# Not multiples of 8 (a SIMD width), and the boundaries around them.
CLASS_COUNTS = (1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 33, 100, 1025)
LEADING_SHAPES = ((), (1,), (2,), (5,), (3, 2), (0,), (2, 0))
TEMPERATURES = (0.25, 0.5, 1.0, 1.5, 2.0, 4.0, 10.0)
EPS64 = np.finfo(np.float64).eps
SETTINGS = settings(max_examples=60, deadline=None)


def rtol(dtype):
    """Relative tolerance: a few ulps of the output dtype, at least 1e-9 (the oracle's accuracy)."""
    return max(8 * np.finfo(dtype).eps, 1e-9)


def log_scale_atol(temperature, *arrays):
    """Absolute error of the oracle's log-softmax values (in units of 1, not T^2)."""
    finite = np.concatenate([np.asarray(a, np.float64)[np.isfinite(a)] for a in arrays])
    spread = float(np.ptp(finite)) if finite.size else 0.0
    return 16 * EPS64 * (1 + math.log(arrays[0].shape[-1]) + spread / temperature)


@st.composite
def logit_pairs(draw):
    """(student, teacher) of one float dtype and shape, from near-identical to far apart,
    with random -inf masks: teacher-only (masked classes), shared, and student-only (+inf loss)."""
    dtype = draw(st.sampled_from(DTYPES))
    n_classes = draw(st.sampled_from(CLASS_COUNTS) | st.integers(1, 40))
    shape = draw(st.sampled_from(LEADING_SHAPES)) + (n_classes,)
    scale = draw(st.sampled_from((1e-3, 1.0, 5.0, 30.0)))
    closeness = draw(st.sampled_from((0.0, 1e-9, 1e-5, 0.1, 1.0, 3.0)))
    shift = draw(st.sampled_from((0.0, 0.0, 10.0)))  # per-row offsets: same distribution
    teacher_mask = draw(st.sampled_from((0.0, 0.0, 0.1, 0.5)))
    share_mask = draw(st.booleans())
    student_mask = draw(st.sampled_from((0.0, 0.0, 0.0, 0.02)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))

    teacher = scale * rng.standard_normal(shape)
    student = teacher + closeness * scale * rng.standard_normal(shape)
    student += shift * rng.standard_normal(shape[:-1] + (1,))
    masked = rng.random(shape) < teacher_mask
    teacher[masked] = -np.inf
    student[(masked & share_mask) | (rng.random(shape) < student_mask)] = -np.inf
    return student.astype(dtype), teacher.astype(dtype)


@st.composite
def adversarial_pairs(draw):
    """Small arrays of arbitrary floats (subnormals, signed zeros, ties) and -inf."""
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=10))
    width = np.finfo(dtype).bits
    elements = st.floats(-60, 60, width=width) | st.just(-np.inf)
    student, teacher = (draw(hnp.arrays(dtype, shape, elements=elements)) for _ in range(2))
    return student, teacher


def assert_kd_matches_reference(student, teacher, temperature):
    expected = reference.kd_loss(student, teacher, temperature, reduction="none")
    got = kdloss.kd_loss(student, teacher, temperature, reduction="none")
    assert got.dtype == expected.dtype == student.dtype
    assert got.shape == expected.shape == student.shape[:-1]
    atol = temperature**2 * log_scale_atol(temperature, student, teacher)
    assert_allclose(got, expected, rtol=rtol(student.dtype), atol=atol)  # NaN, inf in the same places

    rows = max(got.size, 1)
    for reduction in ("sum", "mean", "batchmean"):
        got_total = kdloss.kd_loss(student, teacher, temperature, reduction=reduction)
        expected_total = reference.kd_loss(student, teacher, temperature, reduction=reduction)
        assert type(got_total) is float
        scale = rows if reduction == "sum" else 1  # the atol of a sum of `rows` rows
        # float64 sums of the row losses on both sides; the rows of float32 inputs carry float32 error.
        assert_allclose(got_total, expected_total, rtol=rtol(student.dtype), atol=atol * scale)


@SETTINGS
@given(pair=logit_pairs(), temperature=st.sampled_from(TEMPERATURES))
def test_kd_loss_matches_reference(pair, temperature):
    assert_kd_matches_reference(*pair, temperature)


@SETTINGS
@given(pair=adversarial_pairs(), temperature=st.floats(0.1, 20))
def test_kd_loss_matches_reference_on_arbitrary_floats(pair, temperature):
    assert_kd_matches_reference(*pair, temperature)


def assert_softmax_matches_reference(logits, temperature, name):
    expected = getattr(reference, name)(logits, temperature)
    got = getattr(kdloss, name)(logits, temperature)
    assert got.dtype == expected.dtype == logits.dtype
    assert got.shape == expected.shape == logits.shape
    if name == "softmax":
        atol = np.finfo(logits.dtype).tiny  # probabilities near underflow
    else:
        atol = log_scale_atol(temperature, logits)
    assert_allclose(got, expected, rtol=rtol(logits.dtype), atol=atol)


@SETTINGS
@given(
    pair=logit_pairs(),
    temperature=st.sampled_from(TEMPERATURES),
    name=st.sampled_from(("softmax", "log_softmax")),
)
def test_softmax_matches_reference(pair, temperature, name):
    for logits in pair:
        assert_softmax_matches_reference(logits, temperature, name)


@SETTINGS
@given(
    pair=adversarial_pairs(),
    temperature=st.floats(0.1, 20),
    name=st.sampled_from(("softmax", "log_softmax")),
)
def test_softmax_matches_reference_on_arbitrary_floats(pair, temperature, name):
    assert_softmax_matches_reference(pair[1], temperature, name)


def test_oracle_takes_temperatures_whose_square_overflows():
    """T^2 D is formed as T (T D): at T > 1.3e154 the oracle returns a finite number, as the kernel
    does, where T**2 of a Python float raised OverflowError."""
    student, teacher = [[0.0, 1.0, 3.0]], [[1.0, 0.0, -2.0]]
    for divergence in kdloss._divergences.DIVERGENCES:
        for temperature in (1e155, 1e300):
            with np.errstate(all="raise"):
                got = reference.kd_loss(student, teacher, temperature, reduction="none", divergence=divergence)
            assert np.all(np.isfinite(got) & (got >= 0)), (divergence, temperature, got)
    got = reference.sparse_kd_loss(student, [[0, 2]], np.log([[0.5, 0.3]]), 1e200)
    assert math.isfinite(got) and got >= 0
