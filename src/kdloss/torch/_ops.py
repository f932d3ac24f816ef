"""The custom operators ``kdloss::kd_loss`` and ``kdloss::hinton_loss``, and the functions that call them.

Each operator calls the NumPy layer once, on zero-copy views of the tensors (bfloat16 without
ml_dtypes: a float32 copy, see ``_two_byte``), and returns the
loss together with its gradients for a unit upstream gradient (for ``"none"``, each row's
gradient of its own loss): the fused kernel computes both in one pass. Autograd saves those
gradients, and backward only scales them. A gradient nobody needs is not computed; an empty
tensor stands in its place.
"""

import dataclasses
import functools

import numpy as np
import torch
from torch._C._functorch import TransformType, is_functorch_wrapped_tensor, maybe_get_level
from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

from .. import _api, _training
from .._api import Reduction
from .._divergences import resolve_divergence
from .._typing import DivergenceName
from .._validation import check_alpha, check_ignore_index, check_reduction, check_same_shape, check_temperature
from . import _two_byte
from ._batching import vmap_rows, wants_grad

SUPPORTED_DTYPES = (torch.float32, torch.float64, *_two_byte.NARROW_DTYPES)


def _as_numpy(tensor):
    """A NumPy view of a CPU tensor: no copy, any strides (see ``_two_byte.as_numpy``)."""
    return _two_byte.as_numpy(tensor.detach())


def _loss_tensor(loss, logits):
    """The NumPy layer's loss (a float, or an array of per-row losses) as a tensor of the
    logits' dtype, and for per-row losses of shape ``logits.shape[:-1]``, as the fake promises."""
    if isinstance(loss, float):
        return _two_byte.loss_scalar(loss, logits.dtype)
    return _two_byte.from_kernel(np.asarray(loss), logits.dtype).reshape(logits.shape[:-1])


def _gradient_tensor(gradient, like):
    """A NumPy gradient as a tensor of ``like``'s dtype (no copy for float32 and float64), or an
    empty placeholder when it was not computed."""
    return like.new_empty(0) if gradient is None else _two_byte.from_kernel(gradient, like.dtype)


def _call_numpy(loss_fn, loss_and_grads_fn, student, teacher, student_grad, teacher_grad, **arguments):
    """``(loss, d_student, d_teacher)`` from one call of the NumPy layer."""
    # torch.set_num_threads governs kdloss too: one setting, and no second pool of a different size.
    arguments["num_threads"] = torch.get_num_threads()
    student_logits = _two_byte.logits_as_numpy(student.detach())
    teacher_logits = _two_byte.logits_as_numpy(teacher.detach())
    d_student = d_teacher = None
    if student.dtype in _two_byte.NARROW_DTYPES:
        # float32 results rounded to odd, so that rounding them to the logits' dtype is the one
        # rounding of the exact value (see _two_byte.from_kernel).
        loss, d_student, d_teacher = loss_and_grads_fn(
            student_logits, teacher_logits, student_grad=student_grad, teacher_grad=teacher_grad,
            round_to_odd=True, **arguments,
        )
    elif student_grad or teacher_grad:
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
    divergence: str,
    beta: float | None,
    student_grad: bool,
    teacher_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, d_student, d_teacher)``: the loss and its gradients for a unit upstream
    gradient, each an empty tensor unless ``student_grad`` / ``teacher_grad``. ``divergence``
    and ``beta`` as in :func:`kdloss.kd_loss` (``beta`` None: the divergence's default)."""
    return _kd_loss_numpy(student, teacher, temperature, reduction, weights, divergence, beta,
                          student_grad, teacher_grad)


def _kd_loss_numpy(student, teacher, temperature, reduction, weights, divergence, beta, student_grad,
                   teacher_grad):
    return _call_numpy(
        _api.kd_loss, _training.kd_loss_and_grads, student, teacher, student_grad, teacher_grad,
        temperature=temperature, reduction=reduction, weights=_optional_numpy(weights),
        divergence=divergence, beta=beta,
    )


@kd_loss_op.register_fake
def _(student, teacher, temperature, reduction, weights, divergence, beta, student_grad, teacher_grad):
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
    divergence: str,
    beta: float | None,
    student_grad: bool,
    teacher_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """As ``kdloss::kd_loss``, for Hinton's loss with hard labels."""
    return _hinton_loss_numpy(student, teacher, labels, temperature, alpha, ignore_index, reduction,
                              weights, divergence, beta, student_grad, teacher_grad)


def _hinton_loss_numpy(student, teacher, labels, temperature, alpha, ignore_index, reduction, weights,
                       divergence, beta, student_grad, teacher_grad):
    return _call_numpy(
        _training.hinton_loss, _training.hinton_loss_and_grads, student, teacher, student_grad, teacher_grad,
        labels=_as_numpy(labels), temperature=temperature, alpha=alpha, ignore_index=ignore_index,
        reduction=reduction, weights=_optional_numpy(weights), divergence=divergence, beta=beta,
    )


@hinton_loss_op.register_fake
def _(student, teacher, labels, temperature, alpha, ignore_index, reduction, weights, divergence, beta,
      student_grad, teacher_grad):
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
    # The torch.func level that differentiates this call (-1: ordinary autograd).
    ctx.level = max(maybe_get_level(x) if isinstance(x, torch.Tensor) else -1 for x in inputs[:2])


def _untraced(tensor):
    """True for a plain tensor outside torch.compile, export and every other tracer (they work
    through dispatch modes or subclasses); ``torch.func``'s wrapped tensors count as plain."""
    return (
        type(tensor) is torch.Tensor
        and not torch.compiler.is_compiling()
        and torch._C._len_torch_dispatch_stack() == 0
    )


def _concrete(tensor):
    """True when ``tensor`` holds real values that code may branch on: untraced, and not wrapped
    by a ``torch.func`` transform (a vmapped tensor holds a batch of values)."""
    return _untraced(tensor) and not is_functorch_wrapped_tensor(tensor)


def _differentiated_again(level):
    """Whether a ``torch.func`` transform outside ``level`` differentiates too (grad of grad,
    jacrev of jacrev)."""
    return any(
        interpreter.key() in (TransformType.Grad, TransformType.Jvp) and interpreter.level() < level
        for interpreter in retrieve_all_functorch_interpreters()
    )


def _scaled_gradients(ctx, grad_loss, needs_student, needs_teacher):
    """``grad_loss * d_student`` and ``grad_loss * d_teacher`` from the saved gradients (None for
    an input that needs none)."""
    eager = _concrete(grad_loss)
    # The saved gradients are constants: a second derivative through them would be wrong. Under
    # torch.func, whose grad builds a graph of every backward pass, only an outer transform
    # that differentiates tells.
    if ctx.level >= 0:
        second_order = _differentiated_again(ctx.level)
    else:
        second_order = eager and torch.is_grad_enabled()
    if second_order:
        raise RuntimeError("kdloss.torch losses have first derivatives only (no create_graph=True, "
                           "no nested torch.func.grad or jacrev)")
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


def _backward(ctx, grad_loss, _grad_d_student, _grad_d_teacher, needs_input_grad=None):
    """The operators' backward: gradients for student and teacher; None for every other input
    (``needs_input_grad``: the operator's inputs', when ``ctx``'s has more)."""
    needs_input_grad = ctx.needs_input_grad if needs_input_grad is None else needs_input_grad
    grads = [None] * len(needs_input_grad)
    if grad_loss is not None:  # else no gradient reached the loss (grads are not materialized)
        grads[:2] = _scaled_gradients(ctx, grad_loss, *needs_input_grad[:2])
    return tuple(grads)


class _EagerLoss(torch.autograd.Function):
    """The operators' eager twin: the same NumPy call, the same saved gradients and the same
    backward, without the dispatcher's Python layers, which cost about 130 us a call (as much as
    the whole pure-PyTorch step on a small batch). Plain eager calls and ``torch.func``
    transforms take it; compiled and traced code, and ``torch.ops.kdloss.*`` called directly,
    run the registered operators.

    ``apply(loss, *args)``: ``loss`` is a :class:`_Loss`, ``args`` the operator's arguments.
    """

    @staticmethod
    def forward(loss, *args):
        return loss.numpy_fn(*args)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _setup_context(ctx, inputs[1:], output)

    @staticmethod
    def backward(ctx, grad_loss, grad_d_student, grad_d_teacher):
        return None, *_backward(ctx, grad_loss, grad_d_student, grad_d_teacher, ctx.needs_input_grad[1:])

    @staticmethod
    def vmap(info, in_dims, loss, *args):
        return vmap_rows(functools.partial(_EagerLoss.apply, loss), loss.reduction_at, info, in_dims[1:], *args)


@dataclasses.dataclass(frozen=True)
class _Loss:
    """One loss: its operator, the operator's body, and where its reduction argument is."""

    op: object
    numpy_fn: object
    reduction_at: int


KD_LOSS = _Loss(kd_loss_op, _kd_loss_numpy, 3)
HINTON_LOSS = _Loss(hinton_loss_op, _hinton_loss_numpy, 6)

for _loss in (KD_LOSS, HINTON_LOSS):
    _loss.op.register_autograd(_backward, setup_context=_setup_context)
    # Where PyTorch lacks register_vmap or register_autocast, only the operators called directly
    # miss them: the functions take the eager twin (its own vmap rule) and cast for autocast.
    if hasattr(torch.library, "register_vmap"):
        torch.library.register_vmap(_loss.op, functools.partial(vmap_rows, _loss.op, _loss.reduction_at))
    # Losses run in float32 under autocast, as PyTorch's own (kl_div, cross_entropy) do there.
    if hasattr(torch.library, "register_autocast"):
        torch.library.register_autocast(_loss.op, "cpu", torch.float32)


def _run(loss, student, teacher, *arguments):
    """The loss: ``loss.op(student, teacher, *arguments, student_grad, teacher_grad)``, whose body
    is ``loss.numpy_fn`` with the same arguments; plain eager tensors go by the eager twin."""
    args = (student, teacher, *arguments, wants_grad(student), wants_grad(teacher))
    if _untraced(student) and _untraced(teacher):
        return _EagerLoss.apply(loss, *args)[0]
    return loss.op(*args)[0]


def _check_logits(student, teacher):
    """TypeError or ValueError unless both are CPU tensors of one supported dtype and one shape."""
    for name, tensor in (("student", student), ("teacher", teacher)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.device.type != "cpu" or tensor.dtype not in SUPPORTED_DTYPES:
            raise TypeError(
                f"kdloss.torch supports CPU float32, float64, float16 and bfloat16 tensors; got {name} of dtype "
                f"{tensor.dtype} on device {tensor.device}"
            )
    if student.dtype != teacher.dtype:
        raise TypeError(
            f"student and teacher must have the same dtype; got student "
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


def _checked_divergence(divergence, beta):
    """``(divergence, beta)`` for the operators: checked by the NumPy layer's
    ``resolve_divergence`` (its ValueError and TypeError), ``beta`` as the float it resolves to
    (None for a divergence without one). Compiled code passes them as given: the operator checks."""
    if torch.compiler.is_compiling():
        return divergence, beta
    _, parameters = resolve_divergence(divergence, beta)
    return divergence, parameters.get("beta")




def kd_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    temperature: float = 1.0,
    reduction: Reduction = "mean",
    weights: torch.Tensor | None = None,
    divergence: DivergenceName = "kl",
    beta: float | None = None,
) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))`` per row, with autograd (or
    ``T^2`` times another ``divergence``).

    Parameters
    ----------
    student, teacher : Tensor ``(..., classes)``
        CPU float32, float64, float16 or bfloat16 tensors of one dtype and shape, any strides.
        The last axis holds classes; every leading axis is a row. Gradients flow to both when
        they require grad. Under ``torch.autocast("cpu")`` float16 and bfloat16 logits are cast
        to float32 first (the loss is then float32), as for PyTorch's own losses.
    temperature : float
        ``T``, finite and > 0. A constant: no gradient flows to it.
    reduction : {"mean", "sum", "none", "batchmean"}
        ``"none"``: one loss per row, shape ``logits.shape[:-1]``; ``"sum"``: their sum;
        ``"mean"`` (= ``"batchmean"``): their mean over the rows.
    weights : Tensor, optional
        One weight per row (anything that broadcasts to ``logits.shape[:-1]``; a bool padding
        mask works), finite and >= 0. ``"mean"`` is then ``sum(w * loss) / sum(w)`` (0 when
        every weight is 0) and ``"none"`` gives ``w * loss``. A constant: no gradient flows to it.
    divergence : {"kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl", "tvd"}
        The divergence ``D(P || Q)`` the loss is ``T^2`` times, as in :func:`kdloss.kd_loss`
        (README "Divergences"); default ``"kl"``.
    beta : float in [0, 1], optional
        The parameter of ``"jsd"`` (default 0.5), ``"skew_kl"`` and ``"skew_reverse_kl"``
        (default 0.1); ValueError for the divergences that take none.

    Returns
    -------
    Tensor
        0-d for ``"mean"``, ``"sum"`` and ``"batchmean"``, per row for ``"none"``; of the
        logits' dtype. Values and special cases as :func:`kdloss.kd_loss` (float16 and
        bfloat16: computed in float32; the loss is rounded once to the logits' dtype).

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
    >>> kdt.kd_loss(student, teacher, 2.0, divergence="jsd", beta=0.5).item()
    0.1537
    """
    student, teacher, weights = _two_byte.autocast_inputs(student, teacher, weights)
    _check_logits(student, teacher)
    if not torch.compiler.is_compiling():
        # The NumPy layer's checks and messages; the dispatcher would turn True or a tensor into
        # a float silently. (Compiled code meets the same checks inside the operator.)
        temperature = check_temperature(temperature)
    return _run(KD_LOSS, student, teacher, temperature, check_reduction(reduction),
                _per_row(weights, "weights"), *_checked_divergence(divergence, beta))


def hinton_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 1.0,
    alpha: float = 0.5,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
    weights: torch.Tensor | None = None,
    divergence: DivergenceName = "kl",
    beta: float | None = None,
) -> torch.Tensor:
    """Hinton's distillation loss with hard labels, with autograd; per row:

    ``alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(softmax(s), label)``

    with the cross-entropy at temperature 1. ``labels`` is an integer tensor of shape
    ``logits.shape[:-1]`` holding classes in ``[0, classes)`` or ``ignore_index``; ignored rows
    count in neither term nor in the mean's denominator, and get zero gradients.
    ``student``, ``teacher``, ``temperature``, ``reduction`` and ``weights`` are as in
    :func:`kd_loss`; ``alpha`` in [0, 1] weighs the KL term (``T^2`` times another
    ``divergence``, as in :func:`kd_loss`). Values and special cases as :func:`kdloss.hinton_loss`.

    Parameters
    ----------
    student, teacher, temperature, reduction, weights, divergence, beta
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
    student, teacher, weights = _two_byte.autocast_inputs(student, teacher, weights)
    _check_logits(student, teacher)
    if not torch.compiler.is_compiling():
        temperature, alpha = check_temperature(temperature), check_alpha(alpha)
        ignore_index = check_ignore_index(ignore_index)
    return _run(HINTON_LOSS, student, teacher, _per_row(labels, "labels"), temperature,
                alpha, ignore_index, check_reduction(reduction), _per_row(weights, "weights"),
                *_checked_divergence(divergence, beta))
