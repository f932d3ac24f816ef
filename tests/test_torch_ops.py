"""kdloss.torch's operators: registration (opcheck), gradients (gradcheck, and autograd of
PyTorch's own formulation), layouts, special values, threads and errors."""

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from divergence_arguments import divergence_arguments, in_turn
from torch_reference import (
    IGNORE,
    REDUCTIONS,
    labels_for,
    logits,
    non_contiguous,
    reference_hinton,
    reference_kd,
    weights_for,
)

import kdloss
import kdloss.torch as kdt
from kdloss._divergences import DIVERGENCES
from kdloss.torch import _ops

DTYPES = (torch.float32, torch.float64)


# ---------------------------------------------------------------------------------------------
# Registration: schema, fake (meta) implementation, autograd, torch.compile's AOT dispatch.

def opcheck_cases():
    """pytest.param(op, args) for torch.library.opcheck."""
    cases = []
    for dtype in DTYPES:
        name = str(dtype).removeprefix("torch.")
        s2, t2 = logits((6, 5), dtype, 1).requires_grad_(), logits((6, 5), dtype, 2)
        s3, t3 = logits((3, 4, 5), dtype, 3).requires_grad_(), logits((3, 4, 5), dtype, 4).requires_grad_()
        strided_s3 = non_contiguous(s3.detach()).requires_grad_()
        weights, labels = weights_for((3, 4)).to(dtype), labels_for((3, 4), 5)
        kd, hinton = _ops.kd_loss_op, _ops.hinton_loss_op
        kl = ("kl", None)
        cases += [
            pytest.param(kd, (s2, t2, 2.0, "mean", None, *kl, True, False), id=f"kd-2d-mean-{name}"),
            pytest.param(kd, (s2.detach(), t2, 2.0, "sum", None, *kl, False, False), id=f"kd-no-grad-{name}"),
            pytest.param(kd, (strided_s3, non_contiguous(t3.detach()), 3.0, "sum", weights, *kl, True, False),
                         id=f"kd-3d-strided-sum-{name}"),
            pytest.param(hinton, (strided_s3, t3.detach(), labels, 1.0, 0.7, IGNORE, "none", None, *kl, True, False),
                         id=f"hinton-3d-strided-none-{name}"),
        ]
        # Each divergence in one of the dtypes, in turn: the op and its registration are the
        # same for every divergence, and the cases above take every dtype.
        for divergence in (d for d in DIVERGENCES.values() if in_turn(DTYPES, d) == dtype):
            chosen = tuple(divergence_arguments(divergence).values())
            cases += [
                pytest.param(kd, (s3, t3, 0.5, "none", weights, *chosen, True, True),
                             id=f"kd-3d-none-teacher-grad-{divergence.name}-{name}"),
                pytest.param(hinton, (s3, t3, labels, 2.0, 0.3, IGNORE, "mean", weights, *chosen, True, True),
                             id=f"hinton-3d-mean-teacher-grad-{divergence.name}-{name}"),
            ]
    return cases


@pytest.mark.parametrize("op, args", opcheck_cases())
def test_opcheck(op, args):
    torch.library.opcheck(op, args)


# ---------------------------------------------------------------------------------------------
# Gradients.

@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("loss", ["kd", "hinton"])
def test_gradcheck(loss, reduction, weighted, divergence):
    """float64 finite differences, for every divergence of the table."""
    student = logits((2, 3, 4), seed=1).requires_grad_()
    teacher = logits((2, 3, 4), seed=2).requires_grad_()
    weights = weights_for((2, 3)) if weighted else None
    labels = labels_for((2, 3), 4, ignored=[(0, 1), (1, 2)])
    chosen = divergence_arguments(divergence)

    def function(student, teacher):
        if loss == "kd":
            return kdt.kd_loss(student, teacher, 1.5, reduction, weights, **chosen)
        return kdt.hinton_loss(student, teacher, labels, 1.5, 0.4, IGNORE, reduction, weights, **chosen)

    assert torch.autograd.gradcheck(function, (student, teacher))


def tolerances(dtype):
    eps = torch.finfo(dtype).eps
    return {"rtol": 64 * eps, "atol": 64 * eps}


def assert_loss_and_gradients_match(loss, expected, inputs, dtype):
    """``loss`` (kdloss, in ``dtype``) against ``expected`` (computed in float64), and so their
    gradients with respect to the float64 copies in ``inputs``: (kdloss's, the reference's)."""
    assert loss.dtype == dtype and loss.shape == expected.shape
    torch.testing.assert_close(loss, expected.to(dtype), **tolerances(dtype))
    upstream = logits(expected.shape, seed=9)  # not all ones: the scaling path
    got = torch.autograd.grad(loss, [ours for ours, _ in inputs], upstream.to(dtype))
    want = torch.autograd.grad(expected, [theirs for _, theirs in inputs], upstream)
    for g, w in zip(got, want):
        assert g.dtype == dtype
        torch.testing.assert_close(g, w.to(dtype), **tolerances(dtype))


def pair(shape, dtype, seed, teacher_grad=True):
    """Student and teacher logits in ``dtype`` requiring grad, and float64 copies of them."""
    student = logits(shape, dtype, seed).requires_grad_()
    teacher = logits(shape, dtype, seed + 1).requires_grad_(teacher_grad)
    exact = [x.detach().double().requires_grad_(x.requires_grad) for x in (student, teacher)]
    return student, teacher, exact


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", [*REDUCTIONS, "batchmean"])
def test_kd_loss_matches_pytorch_autograd(dtype, reduction):
    student, teacher, (s64, t64) = pair((7, 11), dtype, seed=5)
    loss = kdt.kd_loss(student, teacher, 2.0, reduction)
    expected = reference_kd(s64, t64, 2.0, "mean" if reduction == "batchmean" else reduction)
    assert_loss_and_gradients_match(loss, expected, [(student, s64), (teacher, t64)], dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("layout", ["contiguous", "strided"])
def test_token_level_padding_mask_matches_pytorch_autograd(dtype, reduction, layout):
    """(batch, tokens, vocabulary) with a bool padding mask as the weights."""
    student, teacher, (s64, t64) = pair((3, 5, 17), dtype, seed=7)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[0, 3:] = mask[2, 1:] = False
    if layout == "strided":
        student_in, teacher_in = non_contiguous(student), non_contiguous(teacher)
    else:
        student_in, teacher_in = student, teacher
    loss = kdt.kd_loss(student_in, teacher_in, 1.5, reduction, mask)
    expected = reference_kd(s64, t64, 1.5, reduction, mask.double())
    assert_loss_and_gradients_match(loss, expected, [(student, s64), (teacher, t64)], dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_hinton_loss_matches_pytorch_autograd(dtype, reduction, weighted, alpha):
    student, teacher, (s64, t64) = pair((4, 6, 9), dtype, seed=11)
    labels = labels_for((4, 6), 9, ignored=[(0, 0), (2, slice(3, None))])
    weights = weights_for((4, 6)) if weighted else None
    loss = kdt.hinton_loss(student, teacher, labels, 2.0, alpha, IGNORE, reduction, weights)
    expected = reference_hinton(s64, t64, labels, 2.0, alpha, reduction, weights)
    assert_loss_and_gradients_match(loss, expected, [(student, s64), (teacher, t64)], dtype)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("loss_name", ["kd", "hinton"])
def test_backward_of_the_loss_itself_gives_the_numpy_gradients(loss_name, reduction, divergence):
    """``loss.backward()`` (upstream all ones: the saved gradients are handed over unscaled):
    the NumPy layer's loss and gradients, bit for bit, for every divergence."""
    student = logits((5, 8), torch.float32, 1).requires_grad_()
    teacher = logits((5, 8), torch.float32, 2).requires_grad_()
    labels = labels_for((5,), 8)
    chosen = divergence_arguments(divergence)
    if loss_name == "kd":
        loss = kdt.kd_loss(student, teacher, 2.0, reduction, **chosen)
        want, d_student, d_teacher = kdloss.kd_loss_and_grad(
            student.detach().numpy(), teacher.detach().numpy(), 2.0, reduction=reduction, teacher_grad=True,
            **chosen,
        )
    else:
        loss = kdt.hinton_loss(student, teacher, labels, 2.0, 0.5, IGNORE, reduction, **chosen)
        want, d_student, d_teacher = kdloss.hinton_loss_and_grad(
            student.detach().numpy(), teacher.detach().numpy(), labels.numpy(), 2.0, 0.5,
            reduction=reduction, teacher_grad=True, **chosen,
        )
    np.testing.assert_array_equal(loss.detach().numpy(), np.asarray(want, dtype=np.float32))
    (loss.sum() if reduction == "none" else loss).backward()
    np.testing.assert_array_equal(student.grad.numpy(), d_student)
    np.testing.assert_array_equal(teacher.grad.numpy(), d_teacher)


def test_gradients_accumulate_over_repeated_backward_passes():
    """The saved gradient handed over by one backward pass is not changed by the next ones."""
    student = logits((4, 6), seed=1).requires_grad_()
    loss = kdt.kd_loss(student, logits((4, 6), seed=2), 2.0)
    loss.backward(retain_graph=True)
    once = student.grad.clone()
    for _ in range(3):
        loss.backward(retain_graph=True)
    torch.testing.assert_close(student.grad, 4 * once)
    kdt.kd_loss(student, logits((4, 6), seed=2), 2.0).backward()  # a fresh graph, same inputs
    torch.testing.assert_close(student.grad, 5 * once)


def test_student_used_twice_sums_its_gradients():
    student = logits((4, 6), seed=1).requires_grad_()
    teacher = logits((4, 6), seed=2)
    (kdt.kd_loss(student, teacher, 2.0) + kdt.kd_loss(student, teacher, 2.0) + student.sum()).backward()
    _, d_student = kdloss.kd_loss_and_grad(student.detach().numpy(), teacher.numpy(), 2.0)
    torch.testing.assert_close(student.grad, torch.from_numpy(2 * d_student + 1))


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("loss_name", ["kd_loss", "hinton_loss"])
def test_eager_twin_and_operator_give_the_same_bits(loss_name, reduction):
    # Plain eager calls go by _EagerLoss; traced code and direct calls by the registered operator.
    student, teacher = logits((3, 4, 9), seed=3), logits((3, 4, 9), seed=4)
    labels = torch.randint(0, 9, (3, 4), generator=torch.Generator().manual_seed(0))
    upstream = torch.rand(3, 4, dtype=torch.float64) if reduction == "none" else torch.tensor(0.7, dtype=torch.float64)
    results = []
    for via_operator in (False, True):
        s, t = student.clone().requires_grad_(), teacher.clone().requires_grad_()
        if loss_name == "kd_loss":
            args = (2.0, reduction, None, "jsd", 0.3)
            loss = (torch.ops.kdloss.kd_loss(s, t, *args, True, True)[0] if via_operator
                    else kdt.kd_loss(s, t, *args))
        else:
            args = (2.0, 0.3, -100, reduction, None, "tvd", None)
            loss = (torch.ops.kdloss.hinton_loss(s, t, labels, *args, True, True)[0] if via_operator
                    else kdt.hinton_loss(s, t, labels, *args))
        loss.backward(upstream)
        results.append((loss.detach(), s.grad, t.grad))
    for eager, operator in zip(*results):
        assert torch.equal(eager, operator)


def test_second_derivatives_are_refused():
    student = logits((3, 4), seed=1).requires_grad_()
    loss = kdt.kd_loss(student, logits((3, 4), seed=2))
    with pytest.raises(RuntimeError, match="first derivatives only"):
        torch.autograd.grad(loss, student, create_graph=True)


def test_operator_called_without_the_gradient_autograd_needs():
    student = logits((3, 4), seed=1).requires_grad_()
    loss, _, _ = _ops.kd_loss_op(student, logits((3, 4), seed=2), 1.0, "mean", None, "kl", None, False, False)
    with pytest.raises(RuntimeError, match="student requires grad.*student_grad=False"):
        loss.backward()


# ---------------------------------------------------------------------------------------------
# What is computed, and on which memory.

def record_numpy_calls(monkeypatch):
    """Replace the NumPy functions the operators call by wrappers that record their arguments."""
    calls = []
    for module, name in [(kdloss._api, "kd_loss"), (kdloss._training, "kd_loss_and_grads")]:
        original = getattr(module, name)

        def recorder(*args, _original=original, _name=name, **kwargs):
            calls.append((_name, args, kwargs))
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, name, recorder)
    return calls


@pytest.mark.parametrize(
    "student_grad, teacher_grad, grad_mode, expected",
    [
        (False, False, True, ("kd_loss", None, None)),
        (True, False, False, ("kd_loss", None, None)),
        (True, False, True, ("kd_loss_and_grads", True, False)),
        (True, True, True, ("kd_loss_and_grads", True, True)),
        (False, True, True, ("kd_loss_and_grads", False, True)),  # the teacher's alone
    ],
)
def test_one_numpy_call_computes_only_what_autograd_needs(monkeypatch, student_grad, teacher_grad, grad_mode, expected):
    calls = record_numpy_calls(monkeypatch)
    student = logits((4, 6), seed=1).requires_grad_(student_grad)
    teacher = logits((4, 6), seed=2).requires_grad_(teacher_grad)
    with torch.set_grad_enabled(grad_mode):
        loss = kdt.kd_loss(student, teacher, 2.0)
    assert [(name, kwargs.get("student_grad"), kwargs.get("teacher_grad")) for name, _, kwargs in calls] == [expected]
    assert loss.requires_grad == (grad_mode and (student_grad or teacher_grad))
    if loss.requires_grad:
        loss.backward()
        assert (student.grad is not None) == student_grad and (teacher.grad is not None) == teacher_grad
    assert len(calls) == 1  # backward calls nothing


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16], ids=str)
def test_inputs_are_not_copied(monkeypatch, dtype):
    """float16 and bfloat16 too: the kernel reads them natively (bfloat16 as ml_dtypes.bfloat16)."""
    if dtype == torch.bfloat16:
        pytest.importorskip("ml_dtypes")
    calls = record_numpy_calls(monkeypatch)
    student = non_contiguous(logits((3, 4, 5), seed=1).to(dtype)).requires_grad_()
    teacher = logits((4, 3, 5), seed=2).to(dtype).transpose(0, 1)
    kdt.kd_loss(student, teacher, 2.0)
    [(_, (student_array, teacher_array), _)] = calls
    for array, tensor in [(student_array, student), (teacher_array, teacher)]:
        assert array.ctypes.data == tensor.data_ptr()
        assert array.strides == tuple(s * tensor.element_size() for s in tensor.stride())


def test_threads_follow_torch_set_num_threads(monkeypatch):
    calls = record_numpy_calls(monkeypatch)
    student, teacher = logits((64, 300), seed=1), logits((64, 300), seed=2)
    previous = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append(kdt.kd_loss(student, teacher, 2.0, "none"))
    finally:
        torch.set_num_threads(previous)
    assert [kwargs["num_threads"] for _, _, kwargs in calls] == [1, 2, 3]
    for result in results[1:]:
        torch.testing.assert_close(result, results[0], rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_loss_is_the_numpy_loss_with_or_without_gradients(dtype, reduction):
    student, teacher = logits((3, 4, 7), dtype, 1), logits((3, 4, 7), dtype, 2)
    expected = kdloss.kd_loss(student.numpy(), teacher.numpy(), 3.0, reduction=reduction)
    for requires_grad in (False, True):
        loss = kdt.kd_loss(student.clone().requires_grad_(requires_grad), teacher, 3.0, reduction)
        assert loss.dtype == dtype
        assert loss.shape == ((3, 4) if reduction == "none" else ())
        np.testing.assert_array_equal(loss.detach().numpy(), np.asarray(expected, dtype=loss.detach().numpy().dtype))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(0, 5), (2, 0, 5)])
def test_no_rows(reduction, shape):
    student = torch.zeros(shape, requires_grad=True)
    loss = kdt.kd_loss(student, torch.zeros(shape), 2.0, reduction)
    assert loss.shape == (shape[:-1] if reduction == "none" else ())
    if reduction != "none":
        assert loss.item() == 0.0
    loss.sum().backward()
    assert student.grad.shape == shape


@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("weights", [None, torch.tensor(0.5)], ids=["unweighted", "weighted"])
def test_one_row(weights, requires_grad):
    """1-D logits are one row: "none" gives a 0-d loss."""
    student, teacher = logits((7,), seed=1).requires_grad_(requires_grad), logits((7,), seed=2)
    loss = kdt.kd_loss(student, teacher, 2.0, "none", weights)
    assert loss.shape == ()
    torch.testing.assert_close(loss, reference_kd(student, teacher, 2.0, "none", weights))


def test_special_rows():
    """A NaN row is NaN; a row of weight 0 or with an ignored label adds exactly 0, gradient 0."""
    student = logits((4, 5), seed=1)
    teacher = logits((4, 5), seed=2)
    student[1, 2] = teacher[2, 0] = torch.nan
    student.requires_grad_()
    rows = kdt.kd_loss(student, teacher, reduction="none")
    assert rows.isnan().tolist() == [False, True, True, False]
    weights = torch.tensor([1.0, 0.0, 0.0, 1.0])
    loss = kdt.kd_loss(student, teacher, 2.0, "mean", weights)
    loss.backward()
    assert torch.isfinite(loss) and (student.grad[1:3] == 0).all() and (student.grad[[0, 3]] != 0).all()
    student.grad = None
    labels = torch.tensor([3, IGNORE, IGNORE, 0])
    loss = kdt.hinton_loss(student, teacher, labels, 2.0, 0.5)
    loss.backward()
    assert torch.isfinite(loss) and (student.grad[1:3] == 0).all()


def test_weights_are_constants():
    student = logits((3, 4), seed=1).requires_grad_()
    weights = torch.tensor([1.0, 2.0, 0.5], requires_grad=True)
    loss = kdt.kd_loss(student, logits((3, 4), seed=2), 2.0, "sum", weights)
    loss.backward()
    assert weights.grad is None and student.grad is not None


def test_modules():
    student, teacher, (s64, t64) = pair((3, 4, 6), torch.float64, seed=3)
    labels = labels_for((3, 4), 6)
    mask = torch.rand(3, 4, generator=torch.Generator().manual_seed(0)) > 0.3
    kd = kdt.KDLoss(temperature=2.0, reduction="batchmean")
    hinton = kdt.HintonLoss(temperature=3.0, alpha=0.25, ignore_index=IGNORE, reduction="sum")
    assert repr(kd) == "KDLoss(temperature=2.0, reduction='batchmean')"
    assert repr(hinton) == "HintonLoss(temperature=3.0, alpha=0.25, ignore_index=-100, reduction='sum')"
    assert list(kd.parameters()) == []
    torch.testing.assert_close(kd(student, teacher), reference_kd(s64, t64, 2.0))
    torch.testing.assert_close(kd(student, teacher, mask), reference_kd(s64, t64, 2.0, "mean", mask.double()))
    torch.testing.assert_close(hinton(student, teacher, labels), reference_hinton(s64, t64, labels, 3.0, 0.25, "sum"))
    torch.testing.assert_close(
        hinton(student, teacher, labels, weights=mask), reference_hinton(s64, t64, labels, 3.0, 0.25, "sum", mask)
    )


def test_modules_take_a_divergence(divergence):
    """The modules compute the functions' values with the divergence they were built with; the
    repr names it (and its parameters, at their resolved values) unless it is KL."""
    student, teacher = logits((3, 4, 6), seed=3), logits((3, 4, 6), seed=4)
    labels = labels_for((3, 4), 6)
    chosen = divergence_arguments(divergence)
    kd = kdt.KDLoss(2.0, "sum", **chosen)
    hinton = kdt.HintonLoss(2.0, 0.25, IGNORE, "mean", **chosen)
    assert torch.equal(kd(student, teacher), kdt.kd_loss(student, teacher, 2.0, "sum", **chosen))
    assert torch.equal(hinton(student, teacher, labels),
                       kdt.hinton_loss(student, teacher, labels, 2.0, 0.25, IGNORE, "mean", **chosen))
    shown = "" if divergence.name == "kl" else f", divergence={divergence.name!r}"
    shown += "" if chosen["beta"] is None else f", beta={chosen['beta']}"
    assert repr(kd) == f"KDLoss(temperature=2.0, reduction='sum'{shown})"
    assert repr(hinton).endswith(f"reduction='mean'{shown})")
    if divergence.parameters:  # not given: the default, shown
        default = kdt.KDLoss(divergence=divergence.name)
        assert default.beta == divergence.parameters["beta"] and f"beta={default.beta}" in repr(default)


@pytest.mark.parametrize("dtype", [torch.int8, torch.int32, torch.int64, torch.uint8], ids=str)
def test_labels_of_any_integer_dtype(dtype):
    student, teacher = logits((4, 5), seed=1), logits((4, 5), seed=2)
    labels = torch.tensor([0, 4, 2, 1])
    expected = kdt.hinton_loss(student, teacher, labels, 2.0)
    torch.testing.assert_close(kdt.hinton_loss(student, teacher, labels.to(dtype), 2.0), expected, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# Errors.

SUPPORTED = "kdloss.torch supports CPU float32, float64, float16 and bfloat16 tensors"
GOOD = torch.zeros(2, 3)


@pytest.mark.parametrize(
    "student, teacher, error, message",
    [
        (GOOD.to("meta"), GOOD.to("meta"), TypeError, SUPPORTED + ".*device meta"),
        (GOOD, GOOD.to("meta"), TypeError, SUPPORTED + ".*teacher.*device meta"),
        (GOOD.long(), GOOD, TypeError, SUPPORTED + ".*student of dtype torch.int64"),
        (GOOD, GOOD.double(), TypeError, "same dtype.*torch.float32.*torch.float64"),
        (GOOD.bfloat16(), GOOD.half(), TypeError, "same dtype.*torch.bfloat16.*torch.float16"),
        (GOOD, torch.zeros(2, 4), ValueError, r"same shape.*\(2, 3\).*\(2, 4\)"),
        (GOOD.numpy(), GOOD, TypeError, "student must be a torch.Tensor, got ndarray"),
        (torch.tensor(1.0), torch.tensor(1.0), ValueError, "at least one axis"),
        (torch.zeros(2, 0), torch.zeros(2, 0), ValueError, "zero classes"),
    ],
    ids=["meta", "teacher-meta", "int", "dtype-mismatch", "narrow-dtype-mismatch", "shape-mismatch", "numpy",
         "scalar", "no-classes"],
)
def test_unsupported_logits(student, teacher, error, message):
    with pytest.raises(error, match=message):
        kdt.kd_loss(student, teacher)
    with pytest.raises(error, match=message):
        kdt.hinton_loss(student, teacher, torch.zeros(student.shape[:-1], dtype=torch.long))


@pytest.mark.parametrize(
    "arguments, error, message",
    [
        ({"temperature": 0.0}, ValueError, "temperature must be finite and > 0, got 0.0"),
        ({"temperature": True}, TypeError, "temperature must be a real number, got True"),
        ({"temperature": "2"}, TypeError, "temperature must be a real number"),
        ({"reduction": "elementwise_mean"}, ValueError, "reduction must be one of"),
        ({"weights": torch.ones(3)}, ValueError, r"weights must have shape \(2,\)"),
        ({"weights": torch.tensor([1.0, -1.0])}, ValueError, "weights must be finite and >= 0"),
        ({"weights": torch.ones(2, device="meta")}, TypeError, "weights on device meta"),
    ],
)
def test_bad_kd_arguments(arguments, error, message):
    with pytest.raises(error, match=message):
        kdt.kd_loss(GOOD, GOOD, **arguments)


@pytest.mark.parametrize(
    "arguments, error, message",
    [
        ({"divergence": "js"}, ValueError, "divergence must be one of 'kl', .*got 'js'"),
        ({"divergence": None}, ValueError, "divergence must be one of"),
        ({"divergence": "kl", "beta": 0.5}, ValueError, "divergence 'kl' .* takes no parameters; got beta=0.5"),
        ({"divergence": "tvd", "beta": 0.5}, ValueError, "divergence 'tvd' .* takes no parameters"),
        ({"divergence": "jsd", "beta": 1.5}, ValueError, r"beta of divergence 'jsd' must be in \[0.0, 1.0\], got 1.5"),
        ({"divergence": "skew_kl", "beta": float("nan")}, ValueError, "beta of divergence 'skew_kl' must be in"),
        ({"divergence": "jsd", "beta": "0.5"}, TypeError, "beta must be a real number"),
        ({"divergence": "jsd", "beta": True}, TypeError, "beta must be a real number"),
    ],
)
def test_bad_divergence_arguments(arguments, error, message):
    """The NumPy layer's resolve_divergence checks, before the operator, for every front end here."""
    labels = torch.tensor([0, 1])
    for call in (lambda: kdt.kd_loss(GOOD, GOOD, **arguments),
                 lambda: kdt.hinton_loss(GOOD, GOOD, labels, **arguments),
                 lambda: kdt.KDLoss(**arguments), lambda: kdt.HintonLoss(**arguments)):
        with pytest.raises(error, match=message):
            call()


@pytest.mark.parametrize(
    "arguments, error, message",
    [
        ({"labels": torch.tensor([0, 3])}, ValueError, r"labels must be in \[0, 3\)"),
        ({"labels": torch.tensor([0.0, 1.0])}, TypeError, "labels must hold integers"),
        ({"labels": torch.tensor([0])}, ValueError, r"labels must have shape \(2,\)"),
        ({"labels": torch.tensor([0, 1], device="meta")}, TypeError, "labels on device meta"),
        ({"alpha": 1.5}, ValueError, r"alpha must be in \[0, 1\]"),
        ({"ignore_index": True}, TypeError, "ignore_index must be an int"),
    ],
)
def test_bad_hinton_arguments(arguments, error, message):
    arguments = {"labels": torch.tensor([0, 1]), **arguments}
    with pytest.raises(error, match=message):
        kdt.hinton_loss(GOOD, GOOD, **arguments)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: kdt.KDLoss(temperature=-1.0), "temperature"),
        (lambda: kdt.KDLoss(reduction="avg"), "reduction"),
        (lambda: kdt.HintonLoss(alpha=2.0), "alpha"),
        (lambda: kdt.HintonLoss(ignore_index=1.5), "ignore_index"),
    ],
)
def test_modules_check_their_settings_when_built(build, message):
    with pytest.raises((TypeError, ValueError), match=message):
        build()


def test_kdloss_does_not_import_torch_and_kdloss_torch_says_how_to_install_it():
    code = (
        "import sys; import kdloss; assert 'torch' not in sys.modules\n"
        "sys.modules['torch'] = None  # as if PyTorch were not installed\n"
        "import kdloss.torch"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 1
    assert "ImportError: kdloss.torch needs PyTorch: pip install 'kdloss[torch]'" in result.stderr


def test_a_temperature_that_requires_grad_is_refused():
    """No gradient flows to T: a TypeError saying so (was NumPy's "Can't call numpy()")."""
    student, teacher = torch.zeros(2, 3, requires_grad=True), torch.zeros(2, 3)
    with pytest.raises(TypeError, match=r"temperature is a torch tensor that requires grad: kdloss takes no "
                                        r"gradient with respect to it; pass a number \(temperature.item\(\)\)"):
        kdt.kd_loss(student, teacher, torch.tensor(2.0, requires_grad=True))
