"""The dtype table (``kdloss._dtypes``): its rows, float16 and bfloat16 through every NumPy
function, promotion of mixed dtypes, and ml_dtypes imported only when needed."""

import subprocess
import sys

import numpy as np
import pytest

import kdloss
from kdloss import reference
from kdloss._dtypes import DTYPES, available_dtypes

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)


def test_rows():
    assert list(DTYPES) == ["float64", "float32", "float16", "bfloat16"]
    for name, row in DTYPES.items():
        assert row.name == name
        assert row.result_dtype == (F64 if name == "float64" else F32)
        assert row.kernel_dtype in (F32, F64)
    # The unit roundoff: half the gap between 1 and the next number of the type.
    for name in ("float64", "float32", "float16"):
        assert DTYPES[name].eps == np.finfo(name).eps / 2
    assert DTYPES["bfloat16"].eps == 2.0**-8


def test_available_dtypes_follow_the_installed_packages():
    names = available_dtypes()
    assert names[:3] == ["float64", "float32", "float16"]
    try:
        import ml_dtypes
    except ImportError:
        assert "bfloat16" not in names
    else:
        assert "bfloat16" in names
        assert DTYPES["bfloat16"].numpy_dtype == np.dtype(ml_dtypes.bfloat16)
        assert DTYPES["bfloat16"].eps == ml_dtypes.finfo(ml_dtypes.bfloat16).eps / 2


def test_import_kdloss_does_not_import_ml_dtypes():
    code = "import sys, kdloss, kdloss.reference, kdloss._dtypes; print('ml_dtypes' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


def two_byte_dtypes():
    names = [name for name in available_dtypes() if DTYPES[name].kernel_dtype != DTYPES[name].numpy_dtype]
    return [pytest.param(DTYPES[name].numpy_dtype, id=name) for name in names]


def logits(dtype, shape=(6, 9), seed=0):
    rng = np.random.default_rng(seed)
    teacher = (2 * rng.standard_normal(shape)).astype(dtype)
    return (teacher.astype(np.float32) + rng.standard_normal(shape)).astype(dtype), teacher


def as_f32(*arrays):
    return [a.astype(np.float32) for a in arrays]


@pytest.mark.parametrize("module", [kdloss, reference], ids=["kernel", "reference"])
@pytest.mark.parametrize("dtype", two_byte_dtypes())
def test_two_byte_inputs_everywhere_give_the_float32_results(module, dtype):
    student, teacher = logits(dtype)
    s32, t32 = as_f32(student, teacher)
    labels = np.array([0, 3, 8, -100, 1, 2])
    for reduction in ("none", "sum", "mean"):
        got = module.kd_loss(student, teacher, 2.0, reduction=reduction)
        want = module.kd_loss(s32, t32, 2.0, reduction=reduction)
        np.testing.assert_array_equal(got, want, strict=True)
        for got, want in zip(module.kd_loss_and_grad(student, teacher, 2.0, reduction=reduction, teacher_grad=True),
                             module.kd_loss_and_grad(s32, t32, 2.0, reduction=reduction, teacher_grad=True)):
            np.testing.assert_array_equal(got, want, strict=True)
        np.testing.assert_array_equal(module.hinton_loss(student, teacher, labels, 2.0, reduction=reduction),
                                      module.hinton_loss(s32, t32, labels, 2.0, reduction=reduction), strict=True)
        for got, want in zip(module.hinton_loss_and_grad(student, teacher, labels, 2.0, reduction=reduction),
                             module.hinton_loss_and_grad(s32, t32, labels, 2.0, reduction=reduction)):
            np.testing.assert_array_equal(got, want, strict=True)
    for function in (module.softmax, module.log_softmax):
        np.testing.assert_array_equal(function(student, 2.0), function(s32, 2.0), strict=True)


@pytest.mark.parametrize("dtype", two_byte_dtypes())
def test_two_byte_inputs_in_any_layout_and_one_row(dtype):
    student, teacher = logits(dtype, shape=(9, 6, 4))
    s32, t32 = as_f32(student, teacher)
    view = (slice(None, None, -2), slice(None), slice(None, None, 3))
    np.testing.assert_array_equal(kdloss.kd_loss(student[view], teacher[view], reduction="none"),
                                  kdloss.kd_loss(s32[view], t32[view], reduction="none"), strict=True)
    assert kdloss.kd_loss(student[0, 0], teacher[0, 0]) == kdloss.kd_loss(s32[0, 0], t32[0, 0])
    assert kdloss.distillation_loss(student[0, 0], teacher[0, 0]) == kdloss.distillation_loss(s32[0, 0], t32[0, 0])


def test_two_byte_special_values_follow_float32():
    student = np.array([[0, -np.inf, 1], [np.nan, 0, 0], [1, 2, 3]], np.float16)
    teacher = np.array([[0, 1, 1], [0, 0, 0], [-np.inf, -np.inf, -np.inf]], np.float16)
    np.testing.assert_array_equal(kdloss.kd_loss(student, teacher, reduction="none"), [np.inf, np.nan, np.nan])


def mixed_cases():
    cases = [("float16", "float32", F32), ("float16", "float64", F64), ("float32", "float64", F64),
             ("float16", "int64", F64), ("float16", "bool", F64), ("float16", "float16", F32)]
    if "bfloat16" in available_dtypes():
        cases += [("bfloat16", "float16", F32), ("bfloat16", "float32", F32), ("bfloat16", "float64", F64),
                  ("bfloat16", "bfloat16", F32), ("bfloat16", "int32", F64)]
    return cases


def numpy_dtype(name):
    return DTYPES[name].numpy_dtype if name in DTYPES else np.dtype(name)


@pytest.mark.parametrize("first, second, result", mixed_cases())
def test_mixed_dtypes_promote(first, second, result):
    student, teacher = logits(np.float16)
    student, teacher = student.astype(numpy_dtype(first)), teacher.astype(numpy_dtype(second))
    exact = np.result_type(F32 if result == F32 else F64)
    for a, b in ((student, teacher), (teacher, student)):
        losses = kdloss.kd_loss(a, b, reduction="none")
        assert losses.dtype == result
        np.testing.assert_array_equal(losses, kdloss.kd_loss(a.astype(exact), b.astype(exact), reduction="none"))
        _, d_student = kdloss.kd_loss_and_grad(a, b)
        assert d_student.dtype == result
        assert reference.kd_loss(a, b, reduction="none").dtype == result


def test_reference_and_kernel_agree_on_bfloat16():
    if "bfloat16" not in available_dtypes():
        pytest.skip("ml_dtypes is not installed")
    student, teacher = logits(DTYPES["bfloat16"].numpy_dtype, shape=(40, 33))
    np.testing.assert_allclose(kdloss.kd_loss(student, teacher, 1.5, reduction="none"),
                               reference.kd_loss(student, teacher, 1.5, reduction="none"), rtol=1e-5)
