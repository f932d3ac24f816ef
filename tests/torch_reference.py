"""Inputs and pure-PyTorch formulations of kdloss's losses, for the kdloss.torch tests."""

import torch

F = torch.nn.functional

REDUCTIONS = ("mean", "sum", "none")
IGNORE = -100


def logits(shape, dtype=torch.float64, seed=0, scale=2.0):
    return torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(seed)) * scale


def labels_for(shape, n_classes, seed=0, ignored=((0,),)):
    """Random class labels of ``shape``, with ``IGNORE`` at the indices in ``ignored``."""
    labels = torch.randint(0, n_classes, shape, generator=torch.Generator().manual_seed(seed))
    for index in ignored:
        labels[index] = IGNORE
    return labels


def weights_for(shape, seed=0):
    """Random weights of ``shape``, one of them 0."""
    weights = torch.rand(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) + 0.5
    weights.view(-1)[-1] = 0.0
    return weights


def non_contiguous(tensor):
    """The same values in a transposed, strided view (rows and classes both strided)."""
    big = torch.zeros((*tensor.shape[:-1], 2 * tensor.shape[-1]), dtype=tensor.dtype).transpose(0, -1)
    view = big[::2].transpose(0, -1)
    view.copy_(tensor)
    assert not view.is_contiguous()
    return view


def reduce_rows(rows, reduction, weights):
    """kdloss's reductions of per-row losses, in plain PyTorch."""
    if weights is not None:
        rows = rows * weights
    if reduction == "none":
        return rows
    if reduction == "sum":
        return rows.sum()
    return rows.sum() / (rows.numel() if weights is None else weights.sum())


def reference_kd(student, teacher, temperature, reduction="mean", weights=None):
    """kd_loss as PyTorch users write it."""
    rows = F.kl_div(
        F.log_softmax(student / temperature, -1), F.log_softmax(teacher / temperature, -1),
        log_target=True, reduction="none",
    ).sum(-1) * temperature**2
    return reduce_rows(rows, reduction, weights)


def reference_hinton(student, teacher, labels, temperature, alpha, reduction="mean", weights=None):
    """hinton_loss as PyTorch users write it: the KL term plus cross_entropy; ignored rows out."""
    kl = reference_kd(student, teacher, temperature, "none")
    ce = F.cross_entropy(
        student.reshape(-1, student.shape[-1]), labels.reshape(-1), ignore_index=IGNORE, reduction="none"
    ).reshape(labels.shape)
    kept = (labels != IGNORE).to(student.dtype)
    weights = kept if weights is None else weights.to(student.dtype) * kept
    return reduce_rows(torch.where(kept > 0, alpha * kl + (1 - alpha) * ce, 0.0), reduction, weights)
