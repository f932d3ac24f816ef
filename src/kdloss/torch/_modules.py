"""``torch.nn`` modules around :func:`kd_loss` and :func:`hinton_loss`, used like ``nn.KLDivLoss``."""

from __future__ import annotations

import torch

from .._api import Reduction
from .._divergences import resolve_divergence
from .._typing import DivergenceName
from .._validation import (
    check_alpha,
    check_ignore_index,
    check_reduction,
    check_temperature,
)
from ._ops import hinton_loss, kd_loss


def _divergence_settings(divergence, beta):
    """``(divergence, beta)`` checked once, when a module is built: ``beta`` as the float it
    resolves to (the default when not given), None for a divergence without one."""
    _, parameters = resolve_divergence(divergence, beta)
    return divergence, parameters.get("beta")


def _divergence_repr(divergence, beta):
    """The divergence part of a module's repr: nothing for the default, KL."""
    if divergence == "kl":
        return ""
    return f", divergence={divergence!r}" + ("" if beta is None else f", beta={beta}")


class KDLoss(torch.nn.Module):
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))`` per row, reduced (or ``T^2``
    times another ``divergence``).

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
    >>> kdt.KDLoss(temperature=2.0, divergence="jsd")
    KDLoss(temperature=2.0, reduction='mean', divergence='jsd', beta=0.5)
    """

    def __init__(self, temperature: float = 1.0, reduction: Reduction = "mean",
                 divergence: DivergenceName = "kl", beta: float | None = None) -> None:
        super().__init__()
        self.temperature = check_temperature(temperature)
        check_reduction(reduction)
        self.reduction = reduction  # as given: "batchmean" stays "batchmean" in the repr
        self.divergence, self.beta = _divergence_settings(divergence, beta)

    def forward(
        self, student: torch.Tensor, teacher: torch.Tensor, weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        return kd_loss(student, teacher, self.temperature, self.reduction, weights, self.divergence, self.beta)

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, reduction={self.reduction!r}"
                + _divergence_repr(self.divergence, self.beta))


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
                 reduction: Reduction = "mean", divergence: DivergenceName = "kl",
                 beta: float | None = None) -> None:
        super().__init__()
        self.temperature = check_temperature(temperature)
        self.alpha = check_alpha(alpha)
        self.ignore_index = check_ignore_index(ignore_index)
        check_reduction(reduction)
        self.reduction = reduction
        self.divergence, self.beta = _divergence_settings(divergence, beta)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor,
                weights: torch.Tensor | None = None) -> torch.Tensor:
        return hinton_loss(student, teacher, labels, self.temperature, self.alpha, self.ignore_index,
                           self.reduction, weights, self.divergence, self.beta)

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, alpha={self.alpha}, ignore_index={self.ignore_index}, "
                f"reduction={self.reduction!r}" + _divergence_repr(self.divergence, self.beta))
