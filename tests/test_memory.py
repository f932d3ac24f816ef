"""No call allocates rows x classes: only per-row output and small per-thread scratch."""

import tracemalloc

import numpy as np
import pytest

import kdloss
from kdloss._dtypes import DTYPES


def traced_peak(function):
    """Peak bytes NumPy and Python allocate while ``function`` runs (NumPy reports to tracemalloc)."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        function()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("layout", ["C", "F", "reversed", "sequence_first"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_kd_loss_allocates_per_row_only(layout, reduction):
    rows, classes = 4000, 500  # 16 MB per float64 input
    rng = np.random.default_rng(0)
    teacher = rng.standard_normal((rows, classes))
    student = teacher + rng.standard_normal((rows, classes))
    if layout == "F":
        teacher, student = np.asfortranarray(teacher), np.asfortranarray(student)
    elif layout == "reversed":
        teacher, student = teacher[::-1, ::-1], student[::-1, ::-1]
    elif layout == "sequence_first":
        # (L, B, V) seen as (B, L, V): the leading axes cannot merge into one without a copy.
        teacher = teacher.reshape(40, 100, classes).transpose(1, 0, 2)
        student = student.reshape(40, 100, classes).transpose(1, 0, 2)
    peak = traced_peak(lambda: kdloss.kd_loss(student, teacher, 2.0, reduction=reduction, num_threads=2))
    per_row = rows * 8 * 2  # float64 row losses, and at most one copy of them for the result
    assert peak < per_row + 256 * 1024, peak


@pytest.mark.parametrize("dtype_name", ["float16", "bfloat16"])
@pytest.mark.parametrize("layout", ["C", "strided"])
def test_two_byte_inputs_are_read_as_stored(dtype_name, layout):
    # The kernel loads float16 and bfloat16 natively: no float32 copy of the logits (which would
    # be 8 MB here), only the per-row output; and the gradient is its own float32 array.
    row = DTYPES[dtype_name]
    if not row.available():
        pytest.skip(f"{row.module} is not installed")
    rng = np.random.default_rng(0)
    teacher = (3 * rng.standard_normal((4000, 1000))).astype(row.numpy_dtype)
    student = (teacher.astype(np.float32) + rng.standard_normal((4000, 1000))).astype(row.numpy_dtype)
    if layout == "strided":
        teacher, student = teacher[:, ::2], student[:, ::2]
    peak = traced_peak(lambda: kdloss.kd_loss(student, teacher, 2.0, reduction="none", num_threads=2))
    assert peak < 4000 * 8 * 2 + 256 * 1024, peak
    gradient_bytes = student.shape[0] * student.shape[1] * 4
    peak = traced_peak(lambda: kdloss.kd_loss_and_grad(student, teacher, 2.0, num_threads=2))
    assert peak < gradient_bytes + 4000 * 8 * 2 + 256 * 1024, peak


def test_softmax_allocates_its_output_only():
    logits = np.asfortranarray(np.random.default_rng(0).standard_normal((2000, 1000)).astype(np.float32))
    peak = traced_peak(lambda: kdloss.softmax(logits, 2.0))
    assert peak < logits.nbytes + 256 * 1024, peak


@pytest.mark.parametrize("teacher_grad", [False, True])
@pytest.mark.parametrize("layout", ["C", "F", "sequence_first"])
@pytest.mark.parametrize("function", ["kd_loss_and_grad", "hinton_loss_and_grad"])
def test_gradients_allocate_only_what_they_return(function, layout, teacher_grad):
    rows, classes = 4000, 500
    rng = np.random.default_rng(1)
    teacher = rng.standard_normal((rows, classes)).astype(np.float32)
    student = teacher + rng.standard_normal((rows, classes)).astype(np.float32)
    labels = rng.integers(0, classes, rows)
    if layout == "F":
        teacher, student = np.asfortranarray(teacher), np.asfortranarray(student)
    elif layout == "sequence_first":
        teacher = teacher.reshape(40, 100, classes).transpose(1, 0, 2)
        student = student.reshape(40, 100, classes).transpose(1, 0, 2)
        labels = labels.reshape(40, 100).T
    args = (student, teacher, labels) if function == "hinton_loss_and_grad" else (student, teacher)
    call = getattr(kdloss, function)
    peak = traced_peak(lambda: call(*args, 2.0, teacher_grad=teacher_grad, num_threads=2))
    returned = student.nbytes * (2 if teacher_grad else 1)
    per_row = rows * 8 * 3  # row losses, and weights or labels of one value per row
    assert peak < returned + per_row + 256 * 1024, peak


def test_teacher_gradient_alone_allocates_no_student_gradient():
    # kdloss.torch asks for this when only the teacher requires grad.
    from kdloss import _training

    rng = np.random.default_rng(2)
    teacher = rng.standard_normal((4000, 500)).astype(np.float32)
    student = teacher + rng.standard_normal((4000, 500)).astype(np.float32)
    result = []
    peak = traced_peak(lambda: result.append(
        _training.kd_loss_and_grads(student, teacher, 2.0, student_grad=False, teacher_grad=True, num_threads=2)))
    _, d_student, d_teacher = result[0]
    assert d_student is None and d_teacher.shape == teacher.shape
    assert peak < teacher.nbytes + 4000 * 8 * 3 + 256 * 1024, peak
