"""``torch.nn`` modules around :func:`kd_loss` and :func:`hinton_loss`, used like ``nn.KLDivLoss``."""

from __future__ import annotations

import torch

from .._api import Reduction
from .._validation import (
    check_alpha,
    check_ignore_index,
    check_reduction,
    check_temperature,
)
from ._ops import hinton_loss, kd_loss


class KDLoss(torch.nn.Module):
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))`` per row, reduced.

    ``loss = KDLoss(temperature=2.0)(student_logits, teacher_logits, weights=None)``; see
    :func:`kdloss.torch.kd_loss` for the arguments. Nothing is learned: the module has no
    parameters, and its settings are checked when it is built.

    Examples
    --------
    >>> import torch
    >>> import kdloss.torch as kdt
    >>> criterion = kdt.KDLoss(temperature=2.0)
    >>> criterion
    KDLoss(temperature=2.0, reduction='mean')
    >>> student = torch.tensor([[0.0, 1.0, 2.0], [1.0, 1.0, 1.0]])
    >>> teacher = torch.tensor([[2.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    >>> criterion(student, teacher).item()
    0.6403
    """

    def __init__(self, temperature: float = 1.0, reduction: Reduction = "mean") -> None:
        super().__init__()
        self.temperature = check_temperature(temperature)
        check_reduction(reduction)
        self.reduction = reduction  # as given: "batchmean" stays "batchmean" in the repr

    def forward(
        self, student: torch.Tensor, teacher: torch.Tensor, weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        return kd_loss(student, teacher, self.temperature, self.reduction, weights)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, reduction={self.reduction!r}"


class HintonLoss(torch.nn.Module):
    """Hinton's distillation loss with hard labels, per row
    ``alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(softmax(s), label)``.

    ``loss = HintonLoss(temperature=2.0, alpha=0.5)(student_logits, teacher_logits, labels)``;
    see :func:`kdloss.torch.hinton_loss` for the arguments.

    Examples
    --------
    >>> import torch
    >>> import kdloss.torch as kdt
    >>> criterion = kdt.HintonLoss(temperature=2.0, alpha=0.5)
    >>> student = torch.tensor([[0.0, 1.0, 2.0], [1.0, 1.0, 1.0]])
    >>> teacher = torch.tensor([[2.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    >>> criterion(student, teacher, torch.tensor([2, 0])).item()
    0.6967
    """

    def __init__(self, temperature: float = 1.0, alpha: float = 0.5, ignore_index: int = -100,
                 reduction: Reduction = "mean") -> None:
        super().__init__()
        self.temperature = check_temperature(temperature)
        self.alpha = check_alpha(alpha)
        self.ignore_index = check_ignore_index(ignore_index)
        check_reduction(reduction)
        self.reduction = reduction

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor,
                weights: torch.Tensor | None = None) -> torch.Tensor:
        return hinton_loss(student, teacher, labels, self.temperature, self.alpha, self.ignore_index,
                           self.reduction, weights)

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, alpha={self.alpha}, ignore_index={self.ignore_index}, "
                f"reduction={self.reduction!r}")
