"""The custom operator ``kdloss::sparse_kd_loss`` (a sparse, top-k teacher) and its function.

As the dense operators (``_ops``): one call of the NumPy layer (``kdloss._sparse``) on views of
the tensors gives the loss and, when the student requires grad, its dense gradient for a unit
upstream gradient (for ``"none"``, each row's gradient of its own loss); autograd saves it and
backward scales it. Indices and values are constants: no gradient flows to them.
"""

import torch

from .. import _sparse
from .._sparse_inputs import check_sparse_divergence, check_tail
from .._validation import check_reduction, check_temperature
from . import _two_byte
from ._ops import SUPPORTED_DTYPES, _concrete, _per_row


@torch.library.custom_op("kdloss::sparse_kd_loss", mutates_args=(), device_types="cpu")
def sparse_kd_loss_op(
    student: torch.Tensor,
    teacher_indices: torch.Tensor,
    teacher_values: torch.Tensor,
    temperature: float,
    values: str,
    tail: str,
    divergence: str,
    beta: float | None,
    reduction: str,
    weights: torch.Tensor | None,
    student_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, d_student)``: the loss and the student's gradient for a unit upstream gradient
    (an empty tensor unless ``student_grad``)."""
    loss, d_student = _sparse.sparse_kd_loss_and_grads(
        _two_byte.logits_as_numpy(student.detach()), teacher_indices.numpy(force=True),
        _two_byte.as_numpy(teacher_values.detach()), temperature, values=values, tail=tail,
        divergence=divergence, beta=beta, reduction=reduction,
        weights=None if weights is None else _two_byte.as_numpy(weights), student_grad=student_grad,
        num_threads=torch.get_num_threads(),
    )
    if isinstance(loss, float):
        loss_tensor = _two_byte.loss_scalar(loss, student.dtype)
    else:
        loss_tensor = _two_byte.from_kernel(loss, student.dtype).reshape(student.shape[:-1])
    d_tensor = student.new_empty(0) if d_student is None else _two_byte.from_kernel(d_student, student.dtype)
    return loss_tensor, d_tensor


@sparse_kd_loss_op.register_fake
def _(student, teacher_indices, teacher_values, temperature, values, tail, divergence, beta, reduction, weights,
      student_grad):
    return (
        student.new_empty(student.shape[:-1] if reduction == "none" else ()),
        student.new_empty(student.shape if student_grad else (0,)),
    )


def _setup_context(ctx, inputs, output):
    _, d_student = output
    ctx.mark_non_differentiable(d_student)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(d_student)
    ctx.student_grad = inputs[-1]


def _backward(ctx, grad_loss, _grad_d_student):
    grads = [None] * 11
    if grad_loss is not None and ctx.needs_input_grad[0]:
        if not ctx.student_grad:
            raise RuntimeError("student requires grad, but the operator was called with student_grad=False")
        if _concrete(grad_loss) and torch.is_grad_enabled():
            # The saved gradient is a constant: a second derivative through it would be wrong.
            raise RuntimeError("kdloss.torch losses have first derivatives only (no create_graph=True)")
        (d_student,) = ctx.saved_tensors
        if _concrete(grad_loss) and grad_loss.dim() == 0 and grad_loss.item() == 1.0:
            grads[0] = d_student  # loss.backward(): the saved gradient is the answer (a pass saved)
        else:
            grads[0] = (grad_loss.unsqueeze(-1) if grad_loss.dim() else grad_loss) * d_student
    return tuple(grads)


sparse_kd_loss_op.register_autograd(_backward, setup_context=_setup_context)
if hasattr(torch.library, "register_autocast"):
    torch.library.register_autocast(sparse_kd_loss_op, "cpu", torch.float32)


def sparse_kd_loss(
    student: torch.Tensor,
    teacher_indices: torch.Tensor,
    teacher_values: torch.Tensor,
    temperature: float = 1.0,
    *,
    values: str = "logprobs",
    tail: str = "bucket",
    divergence: str = "kl",
    beta: float | None = None,
    reduction: str = "mean",
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`kdloss.sparse_kd_loss` on tensors, with autograd (eager and ``torch.compile``).

    Parameters
    ----------
    student : Tensor ``(..., V)``
        CPU float32, float64, float16 or bfloat16 logits; gradients flow to it when it requires grad.
    teacher_indices : Tensor of int ``(..., k)``
        The teacher's token ids per row.
    teacher_values : Tensor ``(..., k)``
        Log-probabilities or logits there (``values=``); -inf marks padding. A constant.
    temperature, values, tail, divergence, beta, reduction, weights
        As in :func:`kdloss.sparse_kd_loss` (weights a tensor, a constant).

    Returns
    -------
    Tensor
        0-d, or per row for ``"none"``, of the student's dtype.

    Examples
    --------
    >>> import torch
    >>> import kdloss.torch as kdt
    >>> student = torch.tensor([[2.0, 1.0, 0.0, -1.0]], requires_grad=True)
    >>> loss = kdt.sparse_kd_loss(student, torch.tensor([[0, 2]]), torch.tensor([[0.6, 0.3]]).log())
    >>> loss.item()
    0.2296
    >>> loss.backward()
    >>> student.grad
    tensor([[ 0.0439,  0.1488, -0.2129,  0.0201]])
    """
    if not isinstance(student, torch.Tensor) or student.device.type != "cpu" or student.dtype not in SUPPORTED_DTYPES:
        raise TypeError("kdloss.torch supports CPU float32, float64, float16 and bfloat16 tensors; got student "
                        f"{type(student).__name__} {getattr(student, 'dtype', '')}")
    student, teacher_values, weights = _two_byte.autocast_inputs(student, teacher_values, weights)
    if not torch.compiler.is_compiling():
        temperature = check_temperature(temperature)
        check_tail(tail, values)
        check_sparse_divergence(divergence, beta, tail)
    indices = torch.as_tensor(teacher_indices)
    values_tensor = torch.as_tensor(teacher_values)
    student_grad = bool(student.requires_grad and torch.is_grad_enabled())
    return sparse_kd_loss_op(student, indices, values_tensor, temperature, values, tail, divergence,
                             None if beta is None else float(beta), check_reduction(reduction),
                             _per_row(weights, "weights"), student_grad)[0]
