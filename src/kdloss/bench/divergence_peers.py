"""The PyTorch formulations ``kdloss bench --divergence`` times each divergence against.

Each is written out as the peer that uses the divergence computes it, on plain PyTorch tensors:

- ``kl``, ``reverse_kl``, ``jsd``: TRL's ``GKDTrainer.generalized_jsd_loss`` (log-softmax of both;
  ``beta = 0``: ``kl_div`` one way, ``beta = 1`` the other way; otherwise the mixture's
  log-probabilities by ``logsumexp`` and two ``kl_div``), summed over the vocabulary;
- ``skew_kl``, ``skew_reverse_kl``: DistiLLM's ``skewed_forward_kl`` / ``skewed_reverse_kl``
  (softmax probabilities, the mixture in probability space, its ``log``; the forward one with
  the teacher's own ``P log P`` leg, so that it is the divergence rather than a cross-entropy);
- ``tvd``: ``0.5 * |softmax(t) - softmax(s)|`` summed (DistiLLM's and DistillKit's form).

Every formulation returns what kdloss's ``kd_loss`` returns by default: ``T^2`` times the mean
over rows of ``D(P || Q)``, ``P = softmax(teacher / T)``, ``Q = softmax(student / T)`` (the
peers divide the logits by ``T``; the bench multiplies by ``T^2`` as kdloss does), so that each
is checked against kdloss before it is timed. ``FORMULATIONS`` has one entry per row of the
divergence table (``kdloss._divergences.DIVERGENCES``).
"""

from collections.abc import Callable
from dataclasses import dataclass


def _trl_generalized_jsd(student, teacher, beta):
    """TRL's per-row generalized JSD (logits already divided by T); beta 0 and 1 special-cased."""
    import torch
    from torch.nn.functional import kl_div, log_softmax

    log_q, log_p = log_softmax(student, dim=-1), log_softmax(teacher, dim=-1)
    if beta == 0:
        elementwise = kl_div(log_q, log_p, reduction="none", log_target=True)
    elif beta == 1:
        elementwise = kl_div(log_p, log_q, reduction="none", log_target=True)
    else:
        beta = torch.tensor(beta, dtype=log_q.dtype)
        log_m = torch.logsumexp(torch.stack([log_q + torch.log(1 - beta), log_p + torch.log(beta)]), dim=0)
        elementwise = (beta * kl_div(log_m, log_p, reduction="none", log_target=True)
                       + (1 - beta) * kl_div(log_m, log_q, reduction="none", log_target=True))
    return elementwise.sum(-1)


def _distillm_skewed_kl(student, teacher, lam):
    """DistiLLM's skewed forward KL per row, KL(P || lam P + (1 - lam) Q)."""
    import torch
    from torch.nn.functional import log_softmax, softmax

    p, q = softmax(teacher, dim=-1), softmax(student, dim=-1)
    log_mixture = torch.log(lam * p + (1 - lam) * q)
    inf_mask = torch.isinf(student) | torch.isinf(teacher)
    terms = torch.masked_fill(p * log_softmax(teacher, dim=-1), inf_mask, 0)
    terms -= torch.masked_fill(p * log_mixture, inf_mask, 0)
    return terms.sum(-1)


def _distillm_skewed_reverse_kl(student, teacher, lam):
    """DistiLLM's skewed reverse KL per row, KL(Q || lam Q + (1 - lam) P)."""
    import torch
    from torch.nn.functional import log_softmax, softmax

    p, q = softmax(teacher, dim=-1), softmax(student, dim=-1)
    log_mixture = torch.log((1 - lam) * p + lam * q)
    inf_mask = torch.isinf(student) | torch.isinf(teacher)
    terms = torch.masked_fill(q * log_softmax(student, dim=-1), inf_mask, 0)
    terms -= torch.masked_fill(q * log_mixture, inf_mask, 0)
    return terms.sum(-1)


def _plain_tvd(student, teacher, _unused=None):
    from torch.nn.functional import softmax

    return 0.5 * (softmax(teacher, dim=-1) - softmax(student, dim=-1)).abs().sum(-1)


@dataclass(frozen=True)
class Formulation:
    """A peer's formulation of one divergence: ``rows(student / T, teacher / T, beta)`` per row."""

    label: str  # the column's name in the table
    rows: Callable
    beta: Callable = lambda parameters: parameters.get("beta")  # the argument the peer takes

    def mean_loss(self, student, teacher, temperature, parameters):
        """``T^2`` times the mean over rows, as a Python float (``student``, ``teacher``: tensors)."""
        rows = self.rows(student / temperature, teacher / temperature, self.beta(parameters))
        return rows.mean().item() * (temperature * temperature)


FORMULATIONS = {
    "kl": Formulation("TRL generalized_jsd_loss, beta=0", _trl_generalized_jsd, lambda parameters: 0.0),
    "reverse_kl": Formulation("TRL generalized_jsd_loss, beta=1", _trl_generalized_jsd, lambda parameters: 1.0),
    "jsd": Formulation("TRL generalized_jsd_loss", _trl_generalized_jsd),
    "skew_kl": Formulation("DistiLLM skewed_forward_kl", _distillm_skewed_kl),
    "skew_reverse_kl": Formulation("DistiLLM skewed_reverse_kl", _distillm_skewed_reverse_kl),
    "tvd": Formulation("PyTorch 0.5 * abs(P - Q).sum(-1)", _plain_tvd),
}
