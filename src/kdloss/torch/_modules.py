"""``torch.nn`` modules around :func:`kd_loss` and :func:`hinton_loss`, used like ``nn.KLDivLoss``."""

import torch

from .._validation import check_alpha, check_ignore_index, check_reduction, check_temperature
from ._ops import hinton_loss, kd_loss


class KDLoss(torch.nn.Module):
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))`` per row, reduced.

    ``loss = KDLoss(temperature=2.0)(student_logits, teacher_logits, weights=None)``; see
    :func:`kdloss.torch.kd_loss` for the arguments. Nothing is learned: the module has no
    parameters, and its settings are checked when it is built.
    """

    def __init__(self, temperature=1.0, reduction="mean"):
        super().__init__()
        self.temperature = check_temperature(temperature)
        check_reduction(reduction)
        self.reduction = reduction  # as given: "batchmean" stays "batchmean" in the repr

    def forward(self, student, teacher, weights=None):
        return kd_loss(student, teacher, self.temperature, self.reduction, weights)

    def extra_repr(self):
        return f"temperature={self.temperature}, reduction={self.reduction!r}"


class HintonLoss(torch.nn.Module):
    """Hinton's distillation loss with hard labels, per row
    ``alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(softmax(s), label)``.

    ``loss = HintonLoss(temperature=2.0, alpha=0.5)(student_logits, teacher_logits, labels)``;
    see :func:`kdloss.torch.hinton_loss` for the arguments.
    """

    def __init__(self, temperature=1.0, alpha=0.5, ignore_index=-100, reduction="mean"):
        super().__init__()
        self.temperature = check_temperature(temperature)
        self.alpha = check_alpha(alpha)
        self.ignore_index = check_ignore_index(ignore_index)
        check_reduction(reduction)
        self.reduction = reduction

    def forward(self, student, teacher, labels, weights=None):
        return hinton_loss(student, teacher, labels, self.temperature, self.alpha, self.ignore_index,
                           self.reduction, weights)

    def extra_repr(self):
        return (f"temperature={self.temperature}, alpha={self.alpha}, ignore_index={self.ignore_index}, "
                f"reduction={self.reduction!r}")
