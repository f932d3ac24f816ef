"""The custom operators ``kdloss::kd_loss`` and ``kdloss::hinton_loss``, and the functions that call them.

Each operator calls the NumPy layer once, on zero-copy views of the tensors, and returns the
loss together with its gradients for a unit upstream gradient (for ``"none"``, each row's
gradient of its own loss): the fused kernel computes both in one pass. Autograd saves those
gradients, and backward only scales them. A gradient nobody needs is not computed; an empty
tensor stands in its place.
"""

import numpy as np
import torch

from .. import _api, _training
from .._api import Reduction
from .._validation import check_alpha, check_ignore_index, check_reduction, check_same_shape, check_temperature

SUPPORTED_DTYPES = (torch.float32, torch.float64)


def _as_numpy(tensor):
    """A NumPy view of a CPU tensor: no copy, any strides."""
    # force=True resolves a lazy negation bit (a copy then); any other CPU tensor is viewed as is.
    return tensor.detach().numpy(force=True)


def _loss_tensor(loss, logits):
    """The NumPy layer's loss (a float, or an array of per-row losses) as a tensor of the
    logits' dtype, and for per-row losses of shape ``logits.shape[:-1]``, as the fake promises."""
    if isinstance(loss, float):
        return torch.scalar_tensor(loss, dtype=logits.dtype)
    return torch.from_numpy(np.asarray(loss)).to(logits.dtype).reshape(logits.shape[:-1])


def _gradient_tensor(gradient, like):
    """A NumPy gradient as a tensor (no copy), or an empty placeholder when it was not computed."""
    return like.new_empty(0) if gradient is None else torch.from_numpy(gradient)


def _call_numpy(loss_fn, loss_and_grads_fn, student, teacher, student_grad, teacher_grad, **arguments):
    """``(loss, d_student, d_teacher)`` from one call of the NumPy layer."""
    # torch.set_num_threads governs kdloss too: one setting, and no second pool of a different size.
    arguments["num_threads"] = torch.get_num_threads()
    student_logits, teacher_logits = _as_numpy(student), _as_numpy(teacher)
    d_student = d_teacher = None
    if student_grad or teacher_grad:
        loss, d_student, d_teacher = loss_and_grads_fn(
            student_logits, teacher_logits, student_grad=student_grad, teacher_grad=teacher_grad,
            **arguments,
        )
    else:
        loss = loss_fn(student_logits, teacher_logits, **arguments)
    return (
        _loss_tensor(loss, student),
        _gradient_tensor(d_student, student),
        _gradient_tensor(d_teacher, teacher),
    )


def _optional_numpy(tensor):
    return None if tensor is None else _as_numpy(tensor)


def _fake_outputs(student, teacher, reduction, student_grad, teacher_grad):
    """Outputs of the right shapes and dtypes, for tracing (torch.compile) and meta tensors."""
    loss_shape = student.shape[:-1] if reduction == "none" else ()
    return (
        student.new_empty(loss_shape),
        student.new_empty(student.shape if student_grad else (0,)),
        teacher.new_empty(teacher.shape if teacher_grad else (0,)),
    )


@torch.library.custom_op("kdloss::kd_loss", mutates_args=(), device_types="cpu")
def kd_loss_op(
    student: torch.Tensor,
    teacher: torch.Tensor,
    temperature: float,
    reduction: str,
    weights: torch.Tensor | None,
    student_grad: bool,
    teacher_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, d_student, d_teacher)``: the loss and its gradients for a unit upstream
    gradient, each an empty tensor unless ``student_grad`` / ``teacher_grad``."""
    return _kd_loss_numpy(student, teacher, temperature, reduction, weights, student_grad, teacher_grad)


def _kd_loss_numpy(student, teacher, temperature, reduction, weights, student_grad, teacher_grad):
    return _call_numpy(
        _api.kd_loss, _training.kd_loss_and_grads, student, teacher, student_grad, teacher_grad,
        temperature=temperature, reduction=reduction, weights=_optional_numpy(weights),
    )


@kd_loss_op.register_fake
def _(student, teacher, temperature, reduction, weights, student_grad, teacher_grad):
    return _fake_outputs(student, teacher, reduction, student_grad, teacher_grad)


@torch.library.custom_op("kdloss::hinton_loss", mutates_args=(), device_types="cpu")
def hinton_loss_op(
    student: torch.Tensor,
    teacher: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    alpha: float,
    ignore_index: int,
    reduction: str,
    weights: torch.Tensor | None,
    student_grad: bool,
    teacher_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """As ``kdloss::kd_loss``, for Hinton's loss with hard labels."""
    return _hinton_loss_numpy(student, teacher, labels, temperature, alpha, ignore_index, reduction,
                              weights, student_grad, teacher_grad)


def _hinton_loss_numpy(student, teacher, labels, temperature, alpha, ignore_index, reduction, weights,
                       student_grad, teacher_grad):
    return _call_numpy(
        _training.hinton_loss, _training.hinton_loss_and_grads, student, teacher, student_grad, teacher_grad,
        labels=_as_numpy(labels), temperature=temperature, alpha=alpha, ignore_index=ignore_index,
        reduction=reduction, weights=_optional_numpy(weights),
    )


@hinton_loss_op.register_fake
def _(student, teacher, labels, temperature, alpha, ignore_index, reduction, weights, student_grad, teacher_grad):
    return _fake_outputs(student, teacher, reduction, student_grad, teacher_grad)


def _setup_context(ctx, inputs, output):
    _, d_student, d_teacher = output
    # The gradients are constants of the backward pass, not outputs anyone differentiates; and
    # backward ignores gradients sent to them, so autograd need not fill such with zeros.
    ctx.mark_non_differentiable(d_student, d_teacher)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(d_student, d_teacher)
    # Both operators end with (student_grad, teacher_grad): which gradients were computed.
    ctx.computed = inputs[-2:]


def _eager(tensor):
    """True when ``tensor`` holds real values that code may branch on: a plain tensor, outside
    torch.compile, export and every other tracer (they work through dispatch modes or subclasses)."""
    return (
        type(tensor) is torch.Tensor
        and not torch.compiler.is_compiling()
        and torch._C._len_torch_dispatch_stack() == 0
    )


def _scaled_gradients(ctx, grad_loss, needs_student, needs_teacher):
    """``grad_loss * d_student`` and ``grad_loss * d_teacher`` from the saved gradients (None for
    an input that needs none)."""
    eager = _eager(grad_loss)
    if eager and torch.is_grad_enabled():
        # The saved gradients are constants: a second derivative through them would be wrong.
        raise RuntimeError("kdloss.torch losses have first derivatives only (no create_graph=True)")
    # ``loss.backward()`` sends ones, and then the saved gradients are the answer: skipping the
    # multiplication saves a pass over the logits (a third of the time at 8192 x 1000). Handing
    # out a saved tensor is safe: autograd reuses a gradient's memory only when nothing else
    # holds it. A traced graph cannot branch on values, so traced code always multiplies.
    if eager and grad_loss.dim() == 0:
        unit = grad_loss.item() == 1.0
    else:
        unit = eager and bool(torch.all(grad_loss == 1))
    # A per-row upstream gradient (reduction "none") scales its row; a 0-d one scales every row.
    grad_rows = None if unit else grad_loss.unsqueeze(-1)
    grads = []
    for name, needed, computed, saved in zip(
        ("student", "teacher"), (needs_student, needs_teacher), ctx.computed, ctx.saved_tensors
    ):
        if needed and not computed:
            raise RuntimeError(f"{name} requires grad, but the operator was called with {name}_grad=False")
        grads.append((saved if unit else grad_rows * saved) if needed else None)
    return grads


def _backward(ctx, grad_loss, _grad_d_student, _grad_d_teacher):
    """The operators' backward: gradients for student and teacher; None for every other input."""
    grads = [None] * len(ctx.needs_input_grad)
    if grad_loss is not None:  # else no gradient reached the loss (grads are not materialized)
        grads[:2] = _scaled_gradients(ctx, grad_loss, *ctx.needs_input_grad[:2])
    return tuple(grads)


kd_loss_op.register_autograd(_backward, setup_context=_setup_context)
hinton_loss_op.register_autograd(_backward, setup_context=_setup_context)


class _EagerLoss(torch.autograd.Function):
    """The operators' eager twin: the same NumPy call, the same saved gradients and the same
    backward, without the dispatcher's Python layers, which cost about 130 us a call (as much as
    the whole pure-PyTorch step on a small batch). Only plain eager calls take it; compiled and
    traced code, and ``torch.ops.kdloss.*`` called directly, run the registered operators."""

    @staticmethod
    def forward(ctx, numpy_fn, arguments, student, teacher, student_grad, teacher_grad):
        loss, d_student, d_teacher = numpy_fn(student, teacher, *arguments, student_grad, teacher_grad)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(d_student, d_teacher)
        ctx.computed = (student_grad, teacher_grad)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grads = [None, None] if grad_loss is None else _scaled_gradients(ctx, grad_loss, *ctx.needs_input_grad[2:4])
        return None, None, *grads, None, None


def _run(op, numpy_fn, student, teacher, *arguments):
    """The loss: ``op(student, teacher, *arguments, student_grad, teacher_grad)``, whose body is
    ``numpy_fn`` with the same arguments; plain eager tensors go by the eager twin."""
    student_grad, teacher_grad = _wants_grad(student), _wants_grad(teacher)
    if _eager(student) and _eager(teacher):
        return _EagerLoss.apply(numpy_fn, arguments, student, teacher, student_grad, teacher_grad)
    loss, _, _ = op(student, teacher, *arguments, student_grad, teacher_grad)
    return loss


def _check_logits(student, teacher):
    """TypeError or ValueError unless both are CPU float32/float64 tensors of one dtype and shape."""
    for name, tensor in (("student", student), ("teacher", teacher)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.device.type != "cpu" or tensor.dtype not in SUPPORTED_DTYPES:
            raise TypeError(
                f"kdloss.torch supports CPU float32 and float64 tensors; got {name} of dtype "
                f"{tensor.dtype} on device {tensor.device}"
            )
    if student.dtype != teacher.dtype:
        raise TypeError(
            f"student and teacher must have the same dtype (float32 or float64); got student "
            f"{student.dtype} and teacher {teacher.dtype}"
        )
    check_same_shape(tuple(student.shape), tuple(teacher.shape))


def _per_row(values, name):
    """Weights or labels as a CPU tensor outside autograd (None stays None)."""
    if values is None:
        return None
    values = torch.as_tensor(values)
    if values.device.type != "cpu":
        raise TypeError(f"kdloss.torch supports CPU tensors; got {name} on device {values.device}")
    return values.detach()  # constants: no gradient flows to weights


def _wants_grad(tensor):
    # Decided here, outside the operator: torch.compile guards on grad mode and requires_grad.
    return torch.is_grad_enabled() and tensor.requires_grad


def kd_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    temperature: float = 1.0,
    reduction: Reduction = "mean",
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))`` per row, with autograd.

    Parameters
    ----------
    student, teacher : Tensor ``(..., classes)``
        CPU float32 or float64 tensors of one dtype and shape, any strides. The last axis holds
        classes; every leading axis is a row. Gradients flow to both when they require grad.
    temperature : float
        ``T``, finite and > 0. A constant: no gradient flows to it.
    reduction : {"mean", "sum", "none", "batchmean"}
        ``"none"``: one loss per row, shape ``logits.shape[:-1]``; ``"sum"``: their sum;
        ``"mean"`` (= ``"batchmean"``): their mean over the rows.
    weights : Tensor, optional
        One weight per row (anything that broadcasts to ``logits.shape[:-1]``; a bool padding
        mask works), finite and >= 0. ``"mean"`` is then ``sum(w * loss) / sum(w)`` (0 when
        every weight is 0) and ``"none"`` gives ``w * loss``. A constant: no gradient flows to it.

    Returns
    -------
    Tensor
        0-d for ``"mean"``, ``"sum"`` and ``"batchmean"``, per row for ``"none"``; of the
        logits' dtype. Values and special cases as :func:`kdloss.kd_loss`.

    Examples
    --------
    >>> import torch
    >>> import kdloss.torch as kdt
    >>> student = torch.tensor([[0.0, 1.0, 2.0], [1.0, 1.0, 1.0]], requires_grad=True)
    >>> teacher = torch.tensor([[2.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    >>> loss = kdt.kd_loss(student, teacher, temperature=2.0)
    >>> loss.item()
    0.6403
    >>> loss.backward()
    >>> student.grad + 0.0  # + 0.0: no -0.0
    tensor([[-0.3202,  0.0000,  0.3202],
            [ 0.0000,  0.0000,  0.0000]])
    """
    _check_logits(student, teacher)
    if not torch.compiler.is_compiling():
        # The NumPy layer's checks and messages; the dispatcher would turn True or a tensor into
        # a float silently. (Compiled code meets the same checks inside the operator.)
        temperature = check_temperature(temperature)
    return _run(kd_loss_op, _kd_loss_numpy, student, teacher, temperature, check_reduction(reduction),
                _per_row(weights, "weights"))


def hinton_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 1.0,
    alpha: float = 0.5,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Hinton's distillation loss with hard labels, with autograd; per row:

    ``alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(softmax(s), label)``

    with the cross-entropy at temperature 1. ``labels`` is an integer tensor of shape
    ``logits.shape[:-1]`` holding classes in ``[0, classes)`` or ``ignore_index``; ignored rows
    count in neither term nor in the mean's denominator, and get zero gradients.
    ``student``, ``teacher``, ``temperature``, ``reduction`` and ``weights`` are as in
    :func:`kd_loss`; ``alpha`` in [0, 1] weighs the KL term. Values and special cases as
    :func:`kdloss.hinton_loss`.

    Parameters
    ----------
    student, teacher, temperature, reduction, weights
        As in :func:`kd_loss`.
    labels : Tensor of int
        Shape ``logits.shape[:-1]``: a class in ``[0, classes)`` or ``ignore_index`` per row.
    alpha : float in [0, 1]
        The weight of the KL term; ``1 - alpha`` weighs the cross-entropy.
    ignore_index : int
        The label of rows to leave out (padding).

    Returns
    -------
    Tensor
        As :func:`kd_loss`: 0-d, or per row for ``"none"``.

    Examples
    --------
    >>> import torch
    >>> import kdloss.torch as kdt
    >>> student = torch.tensor([[0.0, 1.0, 2.0], [1.0, 1.0, 1.0]], requires_grad=True)
    >>> teacher = torch.tensor([[2.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    >>> loss = kdt.hinton_loss(student, teacher, torch.tensor([2, 0]), temperature=2.0, alpha=0.5)
    >>> loss.item()
    0.6967
    >>> loss.backward()
    >>> student.grad
    tensor([[-0.1376,  0.0612,  0.0764],
            [-0.1667,  0.0833,  0.0833]])
    """
    _check_logits(student, teacher)
    if not torch.compiler.is_compiling():
        temperature, alpha = check_temperature(temperature), check_alpha(alpha)
        ignore_index = check_ignore_index(ignore_index)
    return _run(hinton_loss_op, _hinton_loss_numpy, student, teacher, _per_row(labels, "labels"), temperature,
                alpha, ignore_index, check_reduction(reduction), _per_row(weights, "weights"))
