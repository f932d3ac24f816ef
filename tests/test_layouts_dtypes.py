"""Mixed memory layouts, thread-count resolution, N-D shapes, empty batches and dtype rules.

Every layout and thread count for every divergence and input dtype: test_tables.py."""

import itertools
import re

import numpy as np
import pytest
from conftest import DTYPES, LAYOUTS

import kdloss
from kdloss import reference

# Every test here runs once per kernel target (see conftest.py).
pytestmark = pytest.mark.usefixtures("kernel_target")

MODULES = (kdloss, reference)


def random_pair(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    teacher = rng.normal(0, 3, shape)
    student = teacher + rng.normal(0, 1, shape)
    teacher[..., 1::4] = -np.inf  # masked classes: a path of their own in the kernel
    return student.astype(dtype), teacher.astype(dtype)


def assert_bitwise_equal(got, expected):
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert got.tobytes() == expected.tobytes()


def assert_untouched(arrays, copies):
    for array, copy in zip(arrays, copies):
        assert np.asarray(array).tobytes() == np.asarray(copy).tobytes()


@pytest.mark.parametrize("student_layout, teacher_layout", list(itertools.permutations(LAYOUTS, 2)))
def test_student_and_teacher_in_different_layouts(student_layout, teacher_layout, layout_of):
    pair = random_pair((4, 3, 9), np.float64)
    expected = kdloss.kd_loss(*pair, reduction="none")
    student, teacher = layout_of(pair[0], student_layout), layout_of(pair[1], teacher_layout)
    assert_bitwise_equal(kdloss.kd_loss(student, teacher, reduction="none"), expected)


@pytest.mark.parametrize("num_threads", (None, -1, 1, 3))
def test_default_and_negative_thread_counts_agree(num_threads):
    pair = random_pair((120, 1000), np.float64)  # enough to use every thread (threads_for)
    expected = kdloss.kd_loss(*pair, reduction="none", num_threads=1)
    assert_bitwise_equal(kdloss.kd_loss(*pair, reduction="none", num_threads=num_threads), expected)
    assert_bitwise_equal(kdloss.softmax(pair[0], num_threads=num_threads), kdloss.softmax(pair[0], num_threads=1))


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_mergeable_leading_axes(dtype):
    student, teacher = (x.transpose(1, 0, 2) for x in random_pair((4, 6, 9), dtype))
    assert not student.flags.c_contiguous
    got = kdloss.kd_loss(student, teacher, reduction="none")
    contiguous = [np.ascontiguousarray(x) for x in (student, teacher)]
    assert_bitwise_equal(got, kdloss.kd_loss(*contiguous, reduction="none"))
    assert got[5, 2] == kdloss.kd_loss(student[5, 2], teacher[5, 2], reduction="none")
    for name in ("softmax", "log_softmax"):
        function = getattr(kdloss, name)
        assert_bitwise_equal(function(student), function(contiguous[0]))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ((9,), (1, 1), (4, 9), (2, 3, 9), (2, 1, 3, 1025)))
def test_nd_shapes_are_rows_over_leading_axes(shape, dtype):
    student, teacher = random_pair(shape, dtype)
    losses = kdloss.kd_loss(student, teacher, 2.0, reduction="none")
    assert isinstance(losses, np.ndarray) and losses.dtype == dtype and losses.shape == shape[:-1]
    for index in np.ndindex(shape[:-1]):  # each row is the 1-D loss of that row
        row = kdloss.kd_loss(student[index], teacher[index], 2.0, reduction="none")
        assert row.shape == () and row.dtype == dtype
        assert row.tobytes() == losses[index].tobytes()
    for name in ("softmax", "log_softmax"):
        out = getattr(kdloss, name)(teacher, 2.0)
        assert out.shape == shape and out.dtype == dtype
        last = (0,) * (len(shape) - 1)
        assert_bitwise_equal(out[last], getattr(kdloss, name)(teacher[last], 2.0))


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ((0, 5), (3, 0, 5), (0, 2, 1)))
def test_empty_batches(shape, dtype, module):
    empty = np.zeros(shape, dtype)
    losses = module.kd_loss(empty, empty, reduction="none", num_threads=7)
    assert isinstance(losses, np.ndarray) and losses.shape == shape[:-1] and losses.dtype == dtype
    for reduction in ("sum", "mean", "batchmean"):
        total = module.kd_loss(empty, empty, reduction=reduction, num_threads=7)
        assert type(total) is float and total == 0.0
    for name in ("softmax", "log_softmax"):
        out = getattr(module, name)(empty, num_threads=7)
        assert out.shape == shape and out.dtype == dtype


PROMOTIONS = [
    (np.float32, np.float32, np.float32),
    (np.float64, np.float64, np.float64),
    (np.float32, np.float64, np.float64),
    (np.float64, np.float32, np.float64),
    (np.float16, np.float16, np.float32),
    (np.float16, np.float32, np.float32),
    (np.float16, np.float64, np.float64),
    (np.int64, np.int64, np.float64),
    (np.int8, np.uint16, np.float64),
    (np.int32, np.float32, np.float64),
    (np.float32, np.uint8, np.float64),
    (np.bool_, np.bool_, np.float64),
    (np.bool_, np.float32, np.float64),
    (np.longdouble, np.longdouble, np.float64),  # rounded once on the way in (README "dtypes")
    (np.longdouble, np.float32, np.float64),
]


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("student_dtype, teacher_dtype, compute_dtype", PROMOTIONS)
def test_kd_loss_dtype_promotion(student_dtype, teacher_dtype, compute_dtype, module):
    rng = np.random.default_rng(1)
    student = rng.integers(0, 2, (4, 7)).astype(student_dtype)
    teacher = (rng.integers(0, 2, (4, 7)) * 3).astype(teacher_dtype)
    for array in (student, teacher):
        array.flags.writeable = False  # converting copies must not write back
    copies = [student.copy(), teacher.copy()]
    losses = module.kd_loss(student, teacher, reduction="none")
    assert losses.dtype == compute_dtype
    converted = [x.astype(compute_dtype) for x in (student, teacher)]
    assert_bitwise_equal(losses, module.kd_loss(*converted, reduction="none"))
    assert np.all(losses > 0)
    assert type(module.kd_loss(student, teacher, reduction="sum")) is float
    assert_untouched((student, teacher), copies)


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("name", ("softmax", "log_softmax"))
@pytest.mark.parametrize(
    "dtype, compute_dtype",
    [(np.float16, np.float32), (np.float32, np.float32), (np.float64, np.float64),
     (np.int16, np.float64), (np.uint32, np.float64), (np.bool_, np.float64), (np.longdouble, np.float64)],
)
def test_softmax_dtype_promotion(dtype, compute_dtype, name, module):
    logits = np.array([[0, 1, 1, 0, 1]], dtype=dtype)
    logits.flags.writeable = False
    out = getattr(module, name)(logits, 0.5)
    assert out.dtype == compute_dtype
    assert_bitwise_equal(out, getattr(module, name)(logits.astype(compute_dtype), 0.5))


BAD_DTYPES = [
    np.array([1 + 2j, 3], dtype=np.complex64),
    np.array([1 + 2j, 3], dtype=np.complex128),
    np.array([1.0, 2.0], dtype=object),
    np.array(["1.0", "2.0"]),
    np.array([b"1", b"2"]),
]


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("bad", BAD_DTYPES, ids=lambda a: str(a.dtype))
def test_non_real_dtypes_raise_type_error(bad, module):
    good = np.zeros(bad.shape)
    message = re.escape(str(bad.dtype))
    with pytest.raises(TypeError, match=message):
        module.kd_loss(bad, good)
    with pytest.raises(TypeError, match=message):
        module.kd_loss(good, bad)
    for name in ("softmax", "log_softmax"):
        with pytest.raises(TypeError, match=message):
            getattr(module, name)(bad)
