"""The vmap rule of the losses (``torch.func.vmap``), shared by the operators and their eager twin.

Rows are independent, so a vmapped dimension is just more leading rows: for ``"none"`` one call
on the batch computes every sample's rows. ``"sum"`` and ``"mean"`` reduce each sample's rows on
their own, which one call cannot do without reducing here; so they take one call per sample, and
the reductions stay in the NumPy layer. Either way each sample gets the bits of an unbatched call.
"""

import torch


def wants_grad(tensor):
    """Whether autograd will ask for ``tensor``'s gradient: the operators compute it then."""
    # Decided outside the operator: torch.compile guards on grad mode and requires_grad.
    return torch.is_grad_enabled() and tensor.requires_grad


def _leading(tensor, dim, size):
    """``tensor`` with its vmapped dimension first (expanded when it has none)."""
    return tensor.expand(size, *tensor.shape) if dim is None else tensor.movedim(dim, 0)


def _per_row_batched(tensor, dim, size, rows_ndim):
    """Labels or weights of each sample as one tensor for the batched rows ``(size, *rows)``.

    A sample's weights may have fewer axes than its rows (they broadcast from the right): the
    missing axes go after the vmapped one. Unbatched per-row tensors of the rows' own shape are
    expanded (labels must have exactly that shape); others are left to the NumPy layer's broadcast.
    """
    if dim is None:
        return tensor.expand(size, *tensor.shape) if tensor.dim() == rows_ndim else tensor
    tensor = tensor.movedim(dim, 0)
    missing = rows_ndim - (tensor.dim() - 1)
    return tensor.reshape(size, *[1] * missing, *tensor.shape[1:]) if missing > 0 else tensor


def _one_call(run, in_dims, args, size):
    rows_ndim = args[0].dim() - (in_dims[0] is not None) - 1  # a sample's axes without the classes
    batched = []
    for index, (arg, dim) in enumerate(zip(args, in_dims)):
        if not isinstance(arg, torch.Tensor):
            batched.append(arg)
        elif index < 2:  # student, teacher
            batched.append(_leading(arg, dim, size))
        else:  # labels, weights
            batched.append(_per_row_batched(arg, dim, size, rows_ndim))
    return run(*batched)


def _call_per_sample(run, in_dims, args, size):
    samples = []
    for sample in range(size):
        samples.append(run(*(
            arg.select(dim, sample) if isinstance(arg, torch.Tensor) and dim is not None else arg
            for arg, dim in zip(args, in_dims)
        )))
    return tuple(torch.stack(parts) for parts in zip(*samples))


def vmap_rows(run, reduction_at, info, in_dims, *args):
    """The vmap rule of ``run(student, teacher, ..., student_grad, teacher_grad)``, which returns
    ``(loss, d_student, d_teacher)``; ``args[reduction_at]`` is the reduction. Returns the outputs
    with their vmapped dimensions (None for a gradient that was not computed: an empty stand-in)."""
    # A vmapped tensor does not say whether the tensor it holds requires grad (grad of vmap):
    # decide again on the tensors below.
    student_grad, teacher_grad = (flag or wants_grad(x) for flag, x in zip(args[-2:], args[:2]))
    args = (*args[:-2], student_grad, teacher_grad)
    call = _one_call if args[reduction_at] == "none" else _call_per_sample
    loss, d_student, d_teacher = call(run, in_dims, args, info.batch_size)
    if not student_grad:
        d_student = d_student.new_empty(0)
    if not teacher_grad:
        d_teacher = d_teacher.new_empty(0)
    return (loss, d_student, d_teacher), (0, 0 if student_grad else None, 0 if teacher_grad else None)
