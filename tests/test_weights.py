"""Per-row weights: ``kd_loss(..., weights=w)`` and the gradients that go with them.

"none" gives ``w * loss`` per row (exactly 0 where ``w == 0``, even for a NaN row), "sum" is
``sum(w * loss)``, "mean" is ``sum(w * loss) / sum(w)`` and 0.0 when every weight is 0. An
integer weight k counts a row k times. The kernel and the oracle share the validation.
"""

import re

import numpy as np
import pytest
from conftest import DTYPES

import kdloss
from kdloss import reference

# Every test here runs once per kernel target (see conftest.py).
pytestmark = pytest.mark.usefixtures("kernel_target")

MODULES = pytest.mark.parametrize("module", (kdloss, reference), ids=("kernel", "reference"))
REDUCTIONS = ("none", "sum", "mean", "batchmean")
SHAPES = ((7,), (6, 5), (3, 4, 9), (4, 70))


def random_pair(shape, dtype, seed=0):
    rng = np.random.default_rng([seed, *shape])
    teacher = rng.normal(0, 2, shape)
    student = teacher + rng.normal(0, 1, shape)
    teacher[..., 1::5] = -np.inf
    return student.astype(dtype), teacher.astype(dtype)


def random_weights(rows_shape, seed=1):
    rng = np.random.default_rng([seed, *rows_shape])
    weights = rng.uniform(0, 3, rows_shape)
    weights[rng.random(rows_shape) < 0.3] = 0.0
    return weights


def unweighted_rows(student, teacher, temperature):
    return kdloss.kd_loss(student, teacher, temperature, reduction="none").astype(np.float64)


@pytest.mark.parametrize("module", (kdloss, reference), ids=("kernel", "reference"))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_weighted_reductions(shape, dtype, module):
    student, teacher = random_pair(shape, dtype)
    weights = random_weights(shape[:-1])
    rows = unweighted_rows(student, teacher, 1.5)
    none = module.kd_loss(student, teacher, 1.5, reduction="none", weights=weights)
    assert isinstance(none, np.ndarray) and none.dtype == dtype and none.shape == shape[:-1]
    np.testing.assert_allclose(none, (weights * rows).astype(dtype), rtol=1e-6 if dtype == np.float32 else 1e-13)
    total = module.kd_loss(student, teacher, 1.5, reduction="sum", weights=weights)
    assert type(total) is float
    rel = 1e-12 if dtype == np.float64 else 2 * float(np.finfo(dtype).eps)  # ``rows`` is rounded
    assert total == pytest.approx(float(np.sum(weights * rows)), rel=rel)
    for mean in ("mean", "batchmean"):
        value = module.kd_loss(student, teacher, 1.5, reduction=mean, weights=weights)
        assert type(value) is float
        expected = float(np.sum(weights * rows) / np.sum(weights)) if np.sum(weights) else 0.0
        assert value == pytest.approx(expected, rel=rel)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_weighted_kernel_matches_oracle_and_kd_loss_and_grad(shape, dtype):
    student, teacher = random_pair(shape, dtype, seed=2)
    weights = random_weights(shape[:-1], seed=2)
    for reduction in REDUCTIONS:
        got = kdloss.kd_loss(student, teacher, 0.8, reduction=reduction, weights=weights)
        want = reference.kd_loss(student, teacher, 0.8, reduction=reduction, weights=weights)
        np.testing.assert_allclose(got, want, rtol=max(8 * np.finfo(dtype).eps, 1e-9))
        # kd_loss_and_grad returns the same bits.
        fused = kdloss.kd_loss_and_grad(student, teacher, 0.8, reduction=reduction, weights=weights)[0]
        assert np.asarray(fused).tobytes() == np.asarray(got).tobytes() and type(fused) is type(got)


@pytest.mark.parametrize("module", (kdloss, reference), ids=("kernel", "reference"))
@pytest.mark.parametrize("dtype", DTYPES)
def test_unit_weights_change_nothing(dtype, module):
    student, teacher = random_pair((5, 6, 11), dtype, seed=3)
    for reduction in REDUCTIONS:
        plain = module.kd_loss(student, teacher, 2.0, reduction=reduction)
        ones = module.kd_loss(student, teacher, 2.0, reduction=reduction, weights=np.ones((5, 6)))
        assert np.asarray(ones).tobytes() == np.asarray(plain).tobytes()
        # Neither do gradients.
        plain = module.kd_loss_and_grad(student, teacher, 2.0, reduction=reduction, teacher_grad=True)
        ones = module.kd_loss_and_grad(student, teacher, 2.0, reduction=reduction, weights=1, teacher_grad=True)
        for a, b in zip(ones, plain):
            assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


@MODULES
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_all_zero_weights(reduction, module):
    student, teacher = random_pair((4, 6), np.float64)
    teacher[2, 0] = np.nan  # left out: changes nothing
    loss, d_s, d_t = module.kd_loss_and_grad(student, teacher, reduction=reduction, weights=np.zeros(4),
                                             teacher_grad=True)
    assert np.all(d_s == 0.0) and np.all(d_t == 0.0)
    plain = module.kd_loss(student, teacher, reduction=reduction, weights=np.zeros(4))
    if reduction == "none":
        assert np.array_equal(plain, np.zeros(4)) and np.array_equal(loss, np.zeros(4))
    else:
        assert type(plain) is float and plain == 0.0 and loss == 0.0


@MODULES
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bad", ["nan", "+inf", "-inf", "teacher all -inf"])
def test_rows_of_weight_zero_are_ignored_even_when_undefined(bad, dtype, module):
    student, teacher = random_pair((5, 6), dtype, seed=4)
    if bad == "nan":
        student[1, 3] = np.nan
    elif bad == "+inf":
        teacher[1, 2] = np.inf
    elif bad == "-inf":
        student[1, 0] = -np.inf  # a class the teacher allows: the row's loss is +inf
    else:
        teacher[1] = -np.inf
    weights = np.array([1.0, 0.0, 0.5, 2.0, 1.0])
    keep = [0, 2, 3, 4]
    none = module.kd_loss(student, teacher, reduction="none", weights=weights)
    assert none[1] == 0.0 and np.all(np.isfinite(none))
    kept = module.kd_loss(student[keep], teacher[keep], reduction="none", weights=weights[keep])
    assert none[keep].tobytes() == kept.tobytes()
    for reduction in ("sum", "mean"):
        value = module.kd_loss(student, teacher, reduction=reduction, weights=weights)
        expected = module.kd_loss(student[keep], teacher[keep], reduction=reduction, weights=weights[keep])
        assert np.isfinite(value) and value == pytest.approx(expected, rel=1e-14)
        _, d_s, d_t = module.kd_loss_and_grad(student, teacher, reduction=reduction, weights=weights, teacher_grad=True)
        assert np.all(d_s[1] == 0.0) and np.all(d_t[1] == 0.0)
        assert np.all(np.isfinite(d_s)) and np.all(np.isfinite(d_t))
    # Weighted by 1 instead, the row makes the loss NaN or +inf.
    value = module.kd_loss(student, teacher, reduction="sum", weights=np.ones(5))
    assert np.isnan(value) or value == np.inf


@MODULES
@pytest.mark.parametrize("mask_kind", ["bool", "column", "scalar", "list"])
def test_weights_broadcast_to_the_rows(mask_kind, module):
    """A (B, 1) column, a bool padding mask, a scalar, a nested list: anything that broadcasts."""
    student, teacher = random_pair((3, 4, 9), np.float64, seed=5)
    rows = unweighted_rows(student, teacher, 1.0)
    mask = np.array([[True, True, False, False], [True, True, True, False], [True, False, False, False]])
    weights = {
        "bool": mask,
        "column": np.array([[2.0], [0.5], [0.0]]),
        "scalar": 3,
        "list": [1, 2, 0, 1],
    }[mask_kind]
    full = np.broadcast_to(np.asarray(weights, np.float64), rows.shape)
    none = module.kd_loss(student, teacher, reduction="none", weights=weights)
    np.testing.assert_allclose(none, full * rows, rtol=1e-14)
    mean = module.kd_loss(student, teacher, weights=weights)
    assert mean == pytest.approx(float(np.sum(full * rows) / np.sum(full)), rel=1e-13)
    if mask_kind == "bool":  # the padding mask's mean is the mean over the real tokens
        assert mean == pytest.approx(float(np.mean(rows[mask])), rel=1e-13)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_integer_weight_k_is_the_row_repeated_k_times(dtype, reduction):
    student, teacher = random_pair((5, 13), dtype, seed=6)
    weights = np.array([2, 0, 1, 3, 1])
    repeated = np.repeat(np.arange(5), weights)  # row i, weights[i] times
    value = kdloss.kd_loss(student, teacher, 1.3, reduction=reduction, weights=weights)
    expected = kdloss.kd_loss(student[repeated], teacher[repeated], 1.3, reduction=reduction)
    assert value == pytest.approx(expected, rel=1e-14)
    # Gradients: the weighted row's gradient is the sum over its copies.
    _, d_s, d_t = kdloss.kd_loss_and_grad(student, teacher, 1.3, reduction=reduction, weights=weights,
                                          teacher_grad=True)
    _, rep_s, rep_t = kdloss.kd_loss_and_grad(student[repeated], teacher[repeated], 1.3, reduction=reduction,
                                              teacher_grad=True)
    summed_s, summed_t = np.zeros(d_s.shape), np.zeros(d_t.shape)
    np.add.at(summed_s, repeated, rep_s.astype(np.float64))
    np.add.at(summed_t, repeated, rep_t.astype(np.float64))
    rtol = 4 * np.finfo(dtype).eps
    atol = 4 * np.finfo(dtype).eps * np.max(np.abs(summed_s))
    np.testing.assert_allclose(d_s, summed_s, rtol=rtol, atol=atol)
    np.testing.assert_allclose(d_t, summed_t, rtol=rtol, atol=4 * np.finfo(dtype).eps * np.max(np.abs(summed_t)))


@MODULES
def test_one_row_with_weights_keeps_its_shape(module):
    """One row (1-D logits): "none" is a 0-d array, with or without weights, as in kd_loss_and_grad."""
    student, teacher = random_pair((9,), np.float64, seed=7)
    plain = module.kd_loss(student, teacher, reduction="none")
    weighted = module.kd_loss(student, teacher, reduction="none", weights=2.0)
    assert plain.shape == () and weighted.shape == ()
    assert float(weighted) == pytest.approx(2.0 * float(plain), rel=1e-15)
    fused = module.kd_loss_and_grad(student, teacher, reduction="none", weights=2.0)[0]
    assert fused.shape == ()


@pytest.mark.parametrize("weight_dtype", [np.float32, np.int8, np.uint16, np.bool_, np.float16])
def test_weight_dtypes_are_accepted(weight_dtype):
    student, teacher = random_pair((4, 5), np.float32, seed=8)
    weights = np.array([1, 0, 1, 1]).astype(weight_dtype)
    got = kdloss.kd_loss(student, teacher, reduction="none", weights=weights)
    assert got.dtype == np.float32
    assert got.tobytes() == kdloss.kd_loss(student, teacher, reduction="none", weights=[1.0, 0.0, 1.0, 1.0]).tobytes()


# ---------------------------------------------------------------------------------------------
# Errors: the message names the weights and the bad value
# ---------------------------------------------------------------------------------------------

def calls(module, weights):
    """Every function that takes weights, on valid (4, 3) logits."""
    good = np.zeros((4, 3))
    labels = np.zeros(4, dtype=np.int64)
    return {
        "kd_loss": lambda: module.kd_loss(good, good, weights=weights),
        "kd_loss_and_grad": lambda: module.kd_loss_and_grad(good, good, weights=weights),
        "hinton_loss": lambda: module.hinton_loss(good, good, labels, weights=weights),
        "hinton_loss_and_grad": lambda: module.hinton_loss_and_grad(good, good, labels, weights=weights),
    }


BAD_VALUES = [
    (np.array([1.0, -0.5, 1.0, 1.0]), r"weights must be finite and >= 0.*-0\.5.*\(1,\)"),
    (np.array([1.0, 1.0, np.nan, 1.0]), r"weights must be finite and >= 0.*nan.*\(2,\)"),
    (np.array([np.inf, 1.0, 1.0, 1.0]), r"weights must be finite and >= 0.*inf.*\(0,\)"),
    (-1, r"weights must be finite and >= 0.*-1\.0"),
    (np.ones(3), r"weights must have shape \(4,\) .* or one that broadcasts to it .*got \(3,\)"),
    (np.ones((4, 3)), r"weights must have shape \(4,\).*got \(4, 3\)"),
    (np.ones((2, 4)), r"weights must have shape \(4,\).*got \(2, 4\)"),
]


@MODULES
@pytest.mark.parametrize("weights, pattern", BAD_VALUES, ids=range(len(BAD_VALUES)))
def test_bad_weight_values_raise_value_error(weights, pattern, module):
    for call in calls(module, weights).values():
        with pytest.raises(ValueError, match=pattern):
            call()


@MODULES
@pytest.mark.parametrize("weights", [np.ones(4, dtype=np.complex128), np.array(["1"] * 4), np.ones(4, dtype=object)],
                         ids=["complex", "str", "object"])
def test_non_real_weights_raise_type_error(weights, module):
    for call in calls(module, weights).values():
        with pytest.raises(TypeError, match="weights must hold real numbers.*" + re.escape(str(weights.dtype))):
            call()
