"""The vectorised kernel: its run-time targets, and the partitions that keep results exact.

Every target (scalar libm, portable vector code, AVX2+FMA, AVX-512) must agree with the scalar
path to rounding; rows split across threads, and short rows computed one per vector lane, must
give the same bits as one row computed alone.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import DTYPES, KERNEL_TARGETS, THREAD_COUNTS

import kdloss
from kdloss import _kernel
from kdloss._divergences import KL_FORM

CHUNK = _kernel.CHUNK_CLASSES
SHORT = _kernel.SHORT_ROW_CLASSES
# Lengths around every boundary: vector widths (4, 8, 16), steps, blocks (256), the short-row
# limit and the chunk size.
LENGTHS = (1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, SHORT - 1, SHORT, SHORT + 1,
           255, 256, 257, 1000, CHUNK - 1, CHUNK, CHUNK + 1)
# Relative agreement with the scalar path: both are within these of the exact value.
AGREEMENT = {np.float32: 1e-6, np.float64: 1e-12}


def pair(rows, classes, dtype, seed=0, masked=False):
    rng = np.random.default_rng([seed, rows, classes])
    teacher = rng.normal(0, 3, (rows, classes))
    student = teacher + rng.normal(0, 1, (rows, classes))
    if masked:
        teacher[:, ::3] = -np.inf
    return student.astype(dtype), teacher.astype(dtype)


@pytest.fixture
def with_target():
    """``with_target(name)`` selects a kernel target for the rest of the test."""
    yield _kernel.select_target
    _kernel.select_target("auto")


def losses_with(target, student, teacher, temperature=2.0, **kwargs):
    _kernel.select_target(target)
    try:
        return kdloss.kd_loss(student, teacher, temperature, reduction="none", **kwargs)
    finally:
        _kernel.select_target("auto")


def test_the_best_target_is_chosen_by_default():
    assert _kernel.available_targets()[0] == "scalar"
    assert _kernel.active_target() == _kernel.available_targets()[-1]


def test_unknown_target_is_refused_and_changes_nothing():
    before = _kernel.active_target()
    with pytest.raises(ValueError, match="not available here"):
        _kernel.select_target("sse9")
    assert _kernel.active_target() == before


@pytest.mark.parametrize("target", KERNEL_TARGETS)
def test_environment_variable_picks_the_target(target):
    code = "from kdloss import _kernel; print(_kernel.active_target())"
    env = dict(os.environ, KDLOSS_TARGET=target)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == target


def test_bad_environment_variable_warns_and_uses_the_best():
    code = "from kdloss import _kernel; print(_kernel.active_target())"
    env = dict(os.environ, KDLOSS_TARGET="nonsense")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == _kernel.available_targets()[-1]
    assert "KDLOSS_TARGET ignored" in out.stderr


@pytest.mark.parametrize("masked", (False, True), ids=("finite", "masked"))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("target", [t for t in KERNEL_TARGETS if t != "scalar"])
def test_targets_agree_with_the_scalar_path(target, dtype, masked):
    for classes in LENGTHS:
        rows = 3 if classes > 1000 else 37
        student, teacher = pair(rows, classes, dtype, masked=masked)
        want = losses_with("scalar", student, teacher)
        got = losses_with(target, student, teacher)
        np.testing.assert_allclose(got, want, rtol=AGREEMENT[dtype], atol=0, err_msg=f"{classes} classes")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("classes", (4 * CHUNK + 1, 7 * CHUNK + 17))
def test_long_rows_split_across_threads_give_the_same_bits(dtype, classes):
    # Fewer rows than threads (3 and 7): each row's chunks are shared among the threads.
    student, teacher = pair(2, classes, dtype, masked=True)
    alone = [kdloss.kd_loss(student[i], teacher[i], 2.0, reduction="none", num_threads=1) for i in range(2)]
    for threads in THREAD_COUNTS:
        got = kdloss.kd_loss(student, teacher, 2.0, reduction="none", num_threads=threads)
        assert got.tobytes() == np.array(alone, dtype=dtype).tobytes(), threads


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("classes", (1, 3, 10, SHORT))
@pytest.mark.parametrize("rows", (1, 7, 63, 64, 65, 130))
def test_short_rows_do_not_depend_on_their_neighbours(dtype, classes, rows):
    # Short rows go through the kernel one per vector lane; a row's result must be that of the
    # row alone, even beside rows with masked classes or special values.
    student, teacher = pair(rows, classes, dtype)
    teacher[::5] = -np.inf
    teacher[::5, 0] = 0.0  # masked rows: all but one class
    student[3::7, -1] = np.nan
    batch = kdloss.kd_loss(student, teacher, 0.7, reduction="none")
    alone = [kdloss.kd_loss(student[i : i + 1], teacher[i : i + 1], 0.7, reduction="none")[0] for i in range(rows)]
    assert batch.tobytes() == np.array(alone, dtype=dtype).tobytes()


@pytest.mark.parametrize("target", KERNEL_TARGETS)
def test_identical_rows_are_exactly_zero_on_every_target(target, with_target):
    # The gap is summed from a - b, exactly 0 here, whatever multiply-adds the compiler fused.
    with_target(target)
    for classes in LENGTHS[:-3]:
        logits = np.random.default_rng(classes).normal(0, 5, (5, classes))
        assert np.all(kdloss.kd_loss(logits, logits, 1.3, reduction="none") == 0.0), classes


def test_the_entries_refuse_a_dtype_code_that_does_not_match_the_arrays():
    # float16/bfloat16 reach the kernel as uint16 bits, told apart by the dtype code: a code that
    # does not match the element type (or the gradients' type) would read the wrong bits.
    x = np.zeros((2, 3), dtype=np.float32)
    out = np.empty(2)
    with pytest.raises(ValueError, match="dtype code"):
        _kernel.kl_rows(x, x, KL_FORM, _kernel.DTYPE_CODES["float16"], 1.0, out, 1)
    with pytest.raises(ValueError, match="dtype code"):
        _kernel.kl_rows(x.view(np.uint16)[:, :3], x.view(np.uint16)[:, :3], 0, _kernel.DTYPE_CODES["float32"],
                        1.0, out, 1)
    no_labels, no_values = np.empty(0, dtype=np.int64), np.empty(0)
    with pytest.raises(ValueError, match="dtype code"):  # float32 logits, float64 gradients
        _kernel.loss_grad_rows(x, x, KL_FORM, _kernel.DTYPE_CODES["float32"], no_labels, 1.0, 1.0, 0.0, no_values,
                               no_values, 1.0, out, np.empty((2, 3)), np.empty((0, 3)), False, 1)
