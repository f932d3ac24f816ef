"""Invalid arguments: the exception type, and a message that names the bad value.

The kernel and the reference share their validation, so both are checked.
"""

import math
import re
from fractions import Fraction

import numpy as np
import pytest

import kdloss
from kdloss import reference

MODULES = pytest.mark.parametrize("module", (kdloss, reference), ids=("kernel", "reference"))
GOOD = np.zeros((2, 3))


def plain_repr(value):
    """How messages print a value: NumPy scalars as the Python number they hold."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def calls(module, **kwargs):
    """Every public function of ``module`` on valid logits, with ``kwargs`` added."""
    return {
        "kd_loss": lambda: module.kd_loss(GOOD, GOOD, **kwargs),
        "softmax": lambda: module.softmax(GOOD, **kwargs),
        "log_softmax": lambda: module.log_softmax(GOOD, **kwargs),
    }


@MODULES
@pytest.mark.parametrize("student_shape, teacher_shape", [((2, 3), (2, 4)), ((2, 3), (3, 2)), ((6,), (2, 3))])
def test_shape_mismatch(module, student_shape, teacher_shape):
    pattern = re.escape(str(student_shape)) + ".*" + re.escape(str(teacher_shape))
    with pytest.raises(ValueError, match=pattern):
        module.kd_loss(np.zeros(student_shape), np.zeros(teacher_shape))


@MODULES
@pytest.mark.parametrize("shape", [(0,), (2, 0), (0, 0), (3, 1, 0)])
def test_zero_classes(module, shape):
    empty = np.zeros(shape)
    pattern = r"zero classes.*" + re.escape(str(shape))
    for call in (
        lambda: module.kd_loss(empty, empty),
        lambda: module.softmax(empty),
        lambda: module.log_softmax(empty),
    ):
        with pytest.raises(ValueError, match=pattern):
            call()


@MODULES
@pytest.mark.parametrize("temperature", [0, 0.0, -0.0, -1, -1e-300, math.nan, math.inf, -math.inf, np.float32(0),
                                         5e-324, 1e-310])  # subnormal: 1 / T overflows
def test_temperature_not_finite_or_not_positive(module, temperature):
    for call in calls(module, temperature=temperature).values():
        with pytest.raises(ValueError, match=r"temperature.*" + re.escape(plain_repr(temperature))):
            call()
    with pytest.raises(ValueError, match="temperature"):  # validated before the (empty) work
        module.kd_loss(np.zeros((0, 3)), np.zeros((0, 3)), temperature)


@MODULES
@pytest.mark.parametrize("temperature", ["2.0", None, [1.0], 1j, np.array([1.0, 2.0])])
def test_temperature_not_a_number(module, temperature):
    for call in calls(module, temperature=temperature).values():
        with pytest.raises(TypeError, match=r"temperature.*" + re.escape(repr(temperature))):
            call()


@MODULES
@pytest.mark.parametrize("temperature", [2, 2.0, np.float32(2.0), np.int64(2), np.array(2.0), Fraction(2)])
def test_temperature_accepts_real_scalars_of_any_kind(module, temperature):
    student, teacher = np.array([0.5, -1.0, 2.0]), np.array([1.0, 0.0, -1.0])
    assert module.kd_loss(student, teacher, temperature) == module.kd_loss(student, teacher, 2.0)


@MODULES
@pytest.mark.parametrize("reduction", ["avg", "MEAN", "", None, "elementwise_mean"])
def test_unknown_reduction_lists_the_valid_ones(module, reduction):
    pattern = re.escape(repr(reduction))
    with pytest.raises(ValueError, match=pattern) as info:
        module.kd_loss(GOOD, GOOD, reduction=reduction)
    for valid in ("none", "sum", "mean", "batchmean"):
        assert repr(valid) in str(info.value)


@pytest.mark.parametrize("name", ["kd_loss", "softmax", "log_softmax"])
def test_zero_threads(name):
    with pytest.raises(ValueError, match=r"num_threads.*\b0\b"):
        calls(kdloss, num_threads=0)[name]()


@pytest.mark.parametrize("name", ["kd_loss", "softmax", "log_softmax"])
@pytest.mark.parametrize("num_threads", [1.0, 2.5, "2", True, [2]])
def test_non_int_threads(name, num_threads):
    with pytest.raises(TypeError, match=r"num_threads.*" + re.escape(repr(num_threads))):
        calls(kdloss, num_threads=num_threads)[name]()


@MODULES
@pytest.mark.parametrize("scalar", [1.0, np.float64(2.0), np.array(3.0), 0])
def test_scalar_logits(module, scalar):
    for call in (
        lambda: module.kd_loss(scalar, scalar),
        lambda: module.softmax(scalar),
        lambda: module.log_softmax(scalar),
    ):
        with pytest.raises(ValueError, match="scalar"):
            call()


@MODULES
def test_ragged_logits_name_the_argument(module):
    ragged, rows = [[1.0, 2.0], [3.0]], [[1.0, 2.0], [3.0, 4.0]]
    for call, name in (
        (lambda: module.kd_loss(ragged, rows), "student_logits"),
        (lambda: module.kd_loss(rows, ragged), "teacher_logits"),
        (lambda: module.softmax(ragged), "logits"),
    ):
        with pytest.raises(ValueError, match=f"^{name} must be a rectangular array"):
            call()


@pytest.mark.parametrize(
    "student, teacher, pattern",
    [
        ([], [], "empty"),
        ([1.0], [], "teacher_logits is empty"),
        ((), (1.0,), "student_logits is empty"),
        ([1.0, 2.0], [1.0, 2.0, 3.0], r"equal length.*\b2\b.*\b3\b"),
        (np.zeros(4), np.zeros(1), r"equal length.*\b4\b.*\b1\b"),
        ([[1.0, 2.0]], [[1.0, 2.0]], re.escape("(1, 2)")),
        ([1.0, 2.0], np.zeros((2, 1)), r"teacher_logits.*" + re.escape("(2, 1)")),
        (1.0, 2.0, re.escape("()")),
    ],
)
def test_distillation_loss_wants_two_equal_non_empty_1d_sequences(student, teacher, pattern):
    with pytest.raises(ValueError, match=pattern):
        kdloss.distillation_loss(student, teacher)


@pytest.mark.parametrize("temperature, error", [(0.0, ValueError), (math.nan, ValueError), ("1", TypeError)])
def test_distillation_loss_checks_temperature(temperature, error):
    with pytest.raises(error, match="temperature"):
        kdloss.distillation_loss([1.0, 2.0], [2.0, 1.0], temperature)


@MODULES
@pytest.mark.parametrize("call, shown", [
    (lambda m: m.kd_loss(GOOD, GOOD, weights=np.array([1.0, -1.0])), "got -1.0 at index (1,)"),
    (lambda m: m.kd_loss(GOOD, GOOD, np.float32(-2.0)), "got -2.0"),
    (lambda m: m.kd_loss(GOOD, GOOD, reduction=np.str_("avg")), "got 'avg'"),
    (lambda m: m.hinton_loss(GOOD, GOOD, [0, 1], alpha=np.float64(1.5)), "got 1.5"),
    (lambda m: m.hinton_loss(GOOD, GOOD, np.array([0, 7])), "got 7 at index (1,)"),
])
def test_messages_print_plain_numbers(module, call, shown):
    with pytest.raises(ValueError) as info:
        call(module)
    assert str(info.value).endswith(shown)
    assert "np." not in str(info.value)


@MODULES
def test_a_tensor_that_requires_grad_points_to_kdloss_torch(module):
    torch = pytest.importorskip("torch")
    student = torch.zeros(2, 3, requires_grad=True)
    teacher = torch.zeros(2, 3)
    for call in (
        lambda: module.kd_loss(student, teacher),
        lambda: module.kd_loss(teacher, student),
        lambda: module.softmax(student),
        lambda: module.kd_loss_and_grad(student, teacher),
        lambda: module.hinton_loss(student, teacher, torch.tensor([0, 1])),
        lambda: module.kd_loss(teacher, teacher, weights=torch.ones(2, requires_grad=True)),
        lambda: module.kd_loss(teacher, teacher, weights=torch.nn.Parameter(torch.ones(2))),
    ):
        with pytest.raises(TypeError, match=r"requires grad.*kdloss\.torch.*detach\(\)"):
            call()
    # Without autograd a tensor is read as an array; one NumPy cannot read is sent to kdloss.torch.
    assert module.kd_loss(student.detach(), teacher) == 0.0
    with pytest.raises(TypeError, match=r"student_logits is a torch tensor NumPy cannot read \(.*BFloat16.*\); "
                                        r"use kdloss\.torch"):
        module.kd_loss(teacher.bfloat16(), teacher)
    with torch.no_grad():
        assert module.kd_loss(teacher, teacher) == 0.0
