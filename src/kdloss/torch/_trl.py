"""``generalized_jsd_loss``: TRL's ``GKDTrainer.generalized_jsd_loss``, computed by kdloss.

The same signature and values as TRL's static method, so that

    GKDTrainer.generalized_jsd_loss = staticmethod(kdloss.torch.generalized_jsd_loss)

is the whole migration. TRL's conventions differ from :func:`kd_loss`'s in three ways, all
applied here on top of one ``kd_loss(..., reduction="sum", divergence="jsd")`` call: no ``T^2``
factor; tokens labelled -100 are left out; and its reductions ("batchmean" divides by the kept
tokens with labels and by ``logits.shape[0]`` without, "mean" by kept tokens x vocabulary).
"""

import torch

from .._divergences import resolve_divergence
from .._validation import check_temperature
from ._ops import kd_loss

IGNORE_INDEX = -100  # TRL's padding label
TRL_REDUCTIONS = ("batchmean", "sum", "mean", "none")


def generalized_jsd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    beta: float = 0.5,
    temperature: float = 1.0,
    reduction: str = "batchmean",
) -> torch.Tensor:
    """TRL's generalized JSD loss (``trl.GKDTrainer.generalized_jsd_loss``), by kdloss's kernel.

    Per token, ``beta KL(P || M) + (1 - beta) KL(Q || M)`` with ``P = softmax(teacher / T)``,
    ``Q = softmax(student / T)``, ``M = beta P + (1 - beta) Q``: exactly ``KL(P || Q)`` at
    ``beta = 0`` and ``KL(Q || P)`` at ``beta = 1`` (TRL's endpoints). This is
    :func:`kd_loss` with ``divergence="jsd"`` divided by ``T^2`` (TRL has no ``T^2`` factor),
    reduced as TRL reduces.

    Parameters
    ----------
    student_logits, teacher_logits : Tensor ``(batch, sequence, vocabulary)``
        Or any ``(..., vocabulary)``; as in :func:`kd_loss` (CPU; float32, float64, float16 or
        bfloat16; gradients to both when they require grad).
    labels : Tensor of int, optional
        Shape ``logits.shape[:-1]`` (another shape is a ValueError); tokens labelled -100 are
        left out.
    beta : float in [0, 1]
        The interpolation: 0 is forward KL, 1 reverse KL.
    temperature : float
        ``T``, finite and > 0.
    reduction : {"batchmean", "sum", "mean"}
        ``"batchmean"``: the sum over kept tokens divided by their number when ``labels`` is
        given, by ``logits.shape[0]`` when it is not (TRL's rule; a few forks divide by batch x
        sequence instead: pass ``reduction="sum"`` and divide); ``"sum"``; ``"mean"``: divided
        by kept tokens x vocabulary. ``"none"`` raises ValueError: TRL returns an element-wise
        (token x vocabulary) tensor, which kdloss does not compute.

    Returns
    -------
    Tensor
        0-d, of the logits' dtype. With labels and no kept token, "batchmean" and "mean" are 0
        (TRL's formula divides 0 by 0 there: NaN).

    Examples
    --------
    >>> import torch
    >>> import kdloss.torch as kdt
    >>> student = torch.tensor([[[0.0, 1.0, 2.0], [1.0, 1.0, 1.0]]], requires_grad=True)
    >>> teacher = torch.tensor([[[2.0, 1.0, 0.0], [1.0, 1.0, 1.0]]])
    >>> labels = torch.tensor([[5, -100]])  # the second token is padding
    >>> loss = kdt.generalized_jsd_loss(student, teacher, labels, beta=0.5, temperature=2.0)
    >>> loss.item()
    0.0769
    >>> loss.backward()
    """
    if reduction not in TRL_REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(map(repr, TRL_REDUCTIONS))}, got {reduction!r}")
    if reduction == "none":
        raise ValueError(
            'reduction="none" is not supported: TRL returns the element-wise (token x vocabulary) tensor, which '
            "kdloss does not compute; for one loss per token use kdloss.torch.kd_loss(student_logits, "
            'teacher_logits, temperature, "none", divergence="jsd", beta=beta) / temperature**2'
        )
    if not torch.compiler.is_compiling():
        temperature = check_temperature(temperature)
        resolve_divergence("jsd", beta)  # its message names the divergence and the range of beta
    squared = temperature * temperature
    if labels is None:
        # One constant weight per token carries the whole scale: one rounding, in the kernel's sum.
        divisor = {"sum": 1, "batchmean": student_logits.shape[0],
                   "mean": student_logits.shape[:-1].numel() * student_logits.shape[-1]}[reduction]
        # No token at all: 0, as kd_loss's sum of no rows (TRL's 0 / 0: NaN).
        scale = torch.tensor(1.0 / (divisor * squared) if divisor else 0.0, dtype=torch.float64)
        return kd_loss(student_logits, teacher_logits, temperature, "sum", scale, divergence="jsd", beta=beta)
    if labels.shape != student_logits.shape[:-1]:
        # TRL's boolean indexing raises here; kd_loss's weights would broadcast instead.
        raise ValueError(f"labels must have the logits' shape without the vocabulary axis, "
                         f"{tuple(student_logits.shape[:-1])}, got {tuple(labels.shape)}")
    kept = labels != IGNORE_INDEX
    if reduction == "sum":
        return kd_loss(student_logits, teacher_logits, temperature, "sum", kept.double() / squared,
                       divergence="jsd", beta=beta)
    # kd_loss's weighted mean is the sum over kept tokens over their number (0 when none is kept).
    mean = kd_loss(student_logits, teacher_logits, temperature, "mean", kept, divergence="jsd", beta=beta)
    return mean / (squared if reduction == "batchmean" else squared * student_logits.shape[-1])
