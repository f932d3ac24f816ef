"""The shortcut for one row (``kd_loss`` on two 1-D float arrays of any dtype of the table)
changes nothing but speed."""

import numpy as np
import pytest
from conftest import DTYPE_ROWS

import kdloss
from kdloss import _engine, _kernel
from kdloss._divergences import DIVERGENCES

CLASSES = (1, 3, 10, _kernel.SHORT_ROW_CLASSES, _kernel.SHORT_ROW_CLASSES + 1, 1000, _kernel.CHUNK_CLASSES)


@pytest.mark.parametrize("reduction", ("mean", "sum", "batchmean"))
@pytest.mark.parametrize("classes", CLASSES)
@pytest.mark.parametrize("dtype_row", DTYPE_ROWS, ids=lambda row: row.name)
def test_one_row_shortcut_gives_the_batch_result(dtype_row, classes, reduction):
    dtype = dtype_row.numpy_dtype
    rng = np.random.default_rng(classes)
    teacher = rng.normal(0, 3, classes).astype(dtype)
    student = (teacher + rng.normal(0, 1, classes)).astype(dtype)
    assert _kernel.single_row_loss(student, teacher, 2.5) is not None  # the shortcut is taken
    as_batch = kdloss.kd_loss(student[None], teacher[None], 2.5, reduction=reduction)
    for num_threads in (None, 1, 2, -1):
        got = kdloss.kd_loss(student, teacher, 2.5, reduction=reduction, num_threads=num_threads)
        assert type(got) is float and got == as_batch


# Every row of the divergence table at its default, and beta at its ends and inside where it has one.
DIVERGENCE_SETTINGS = [(name, beta) for name, row in DIVERGENCES.items()
                       for beta in ((None, 0.0, 0.3, 1.0) if "beta" in row.parameters else (None,))]


@pytest.mark.parametrize("classes", (3, 1000))
@pytest.mark.parametrize(("divergence", "beta"), DIVERGENCE_SETTINGS, ids=str)
def test_every_divergence_takes_the_shortcut_with_the_batch_result(divergence, beta, classes):
    """Reverse KL (and JSD at beta = 1) run as KL of the exchanged pair; special rows included:
    the bits of the batch call."""
    arguments = {"divergence": divergence, "beta": beta}
    rng = np.random.default_rng(classes)
    teacher = rng.normal(0, 3, classes)
    pairs = [(teacher + rng.normal(0, 1, classes), teacher), (teacher.copy(), teacher)]
    masked = teacher.copy()
    masked[1] = -np.inf  # the student rules out a class: +inf for some divergences
    pairs += [(masked, teacher), (teacher, masked), (np.full(classes, np.nan), teacher)]
    for student, teach in pairs:
        assert _kernel.single_row_loss(student, teach, 2.5, _engine.single_row_form(divergence, beta)) is not None
        for reduction in ("mean", "sum"):
            as_batch = kdloss.kd_loss(student[None], teach[None], 2.5, reduction=reduction, **arguments)
            got = kdloss.kd_loss(student, teach, 2.5, reduction=reduction, **arguments)
            assert type(got) is float and np.array_equal(got, as_batch, equal_nan=True), (got, as_batch)


@pytest.mark.parametrize(("divergence", "beta", "message"), [("jsd", 2.0, "beta of divergence 'jsd'"),
                                                             ("kl", 0.5, "divergence 'kl'"),
                                                             ("nope", None, "divergence must be one of")])
def test_bad_divergence_arguments_still_raise(divergence, beta, message):
    assert _engine.single_row_form(divergence, beta) is None
    with pytest.raises(ValueError, match=message):
        kdloss.kd_loss(np.zeros(3), np.ones(3), 1.0, divergence=divergence, beta=beta)


@pytest.mark.parametrize(
    "student, teacher, temperature",
    [
        ([1.0, 2.0], [2.0, 1.0], 1.0),  # lists: converted by the general path
        (np.array([1.0, 2.0]), np.array([2.0, 1.0], np.float32), 1.0),  # mixed dtypes
        (np.array([1.0, 2.0], np.float16), np.array([2.0, 1.0], np.float32), 1.0),  # mixed widths
        (np.array([1, 2], np.uint16), np.array([2, 1], np.uint16), 1.0),  # the bits of no float dtype
        (np.array([1.0, 2.0, 3.0, 4.0])[::2], np.array([2.0, 1.0]), 1.0),  # not contiguous
        (np.array([1, 2]), np.array([2, 1]), 1.0),  # integers
        (np.array([1.0, 2.0]), np.array([2.0, 1.0]), 2),  # an int temperature
        (np.array([1.0, 2.0]), np.array([2.0, 1.0]), np.float64(2.0)),  # a NumPy scalar temperature
        (np.zeros((1, 2)), np.ones((1, 2)), 1.0),  # 2-D
        (np.zeros(_kernel.CHUNK_CLASSES + 1), np.ones(_kernel.CHUNK_CLASSES + 1), 1.0),  # long: may split
        (np.array([1.0, 2.0]).astype(">f8"), np.array([2.0, 1.0]).astype(">f8"), 1.0),  # big-endian
    ],
)
def test_other_input_takes_the_general_path_with_the_same_result(student, teacher, temperature):
    assert _kernel.single_row_loss(student, teacher, temperature) is None
    want = kdloss.kd_loss(np.asarray(student, np.float64)[None], np.asarray(teacher, np.float64)[None],
                          float(temperature))
    got = kdloss.kd_loss(student, teacher, temperature)
    assert got == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("temperature", (0.0, -1.0, float("nan"), float("inf")))
def test_bad_temperature_still_raises(temperature):
    with pytest.raises(ValueError, match="temperature"):
        kdloss.kd_loss(np.zeros(3), np.ones(3), temperature)


@pytest.mark.parametrize("num_threads", (0, True, 1.0))
def test_bad_thread_count_still_raises(num_threads):
    with pytest.raises((ValueError, TypeError), match="num_threads"):
        kdloss.kd_loss(np.zeros(3), np.ones(3), 1.0, num_threads=num_threads)
