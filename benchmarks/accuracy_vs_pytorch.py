"""Accuracy of kdloss and PyTorch near zero, for every divergence, against the exact (mpmath) reference.

    python benchmarks/accuracy_vs_pytorch.py [--classes 1000] [--rows 20] [--divergence NAME ...] [--gradients]

Students are ``teacher + eps * N(0, 1)`` for shrinking ``eps`` (every divergence ~ eps^2, TVD ~ eps);
T = 1. PyTorch computes each divergence in its usual formulation, as the distillation libraries
write it:

- ``kl``: ``F.kl_div(log_softmax(s), log_softmax(t), log_target=True).sum(-1)``;
- ``reverse_kl``: the same with the arguments exchanged (TRL's ``generalized_jsd_loss`` at beta 1);
- ``jsd``: TRL's ``generalized_jsd_loss``: ``M``'s log as ``logsumexp`` of ``log_softmax + log(beta)``
  and ``log_softmax + log(1 - beta)``, then ``beta kl_div(M, t) + (1 - beta) kl_div(M, s)``;
- ``skew_kl``, ``skew_reverse_kl``: DistiLLM's ``skewed_forward_kl`` / ``skewed_reverse_kl``
  (probabilities mixed, ``log`` of the mixture) plus the entropy term that makes them the KL
  (DistiLLM leaves it out: it has no gradient);
- ``tvd``: DistillKit's ``0.5 * (softmax(s) - softmax(t)).abs().sum(-1)``.

Prints a markdown table per divergence (at its default beta): the worst relative error and the
count of negative results. With ``--gradients``: the worst error of the student's gradient
(``kd_loss_and_grad``; PyTorch's autograd of the same formulation) relative to the row's largest
exact entry, instead.
"""

import argparse
import math
import sys
from pathlib import Path

import numpy as np

import kdloss
from kdloss._divergences import DIVERGENCES, resolve_divergence

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from exact_reference import exact_divergence, exact_divergence_grad


def pytorch_rows(name, beta):
    """The usual PyTorch formulation of divergence ``name``: ``f(student, teacher)`` per row."""
    import torch
    from torch.nn.functional import kl_div, log_softmax, softmax

    def kl(log_x, log_y):  # KL(X || Y), F.kl_div's argument order: (input = log Y, target = log X)
        return kl_div(log_y, log_x, log_target=True, reduction="none").sum(-1)

    def rows(student, teacher, s=None):
        s = torch.from_numpy(student) if s is None else s
        t = torch.from_numpy(teacher)
        log_q, log_p = log_softmax(s, -1), log_softmax(t, -1)
        if name == "kl":
            return kl(log_p, log_q)
        if name == "reverse_kl":
            return kl(log_q, log_p)
        if name == "jsd":  # TRL
            b = torch.tensor(beta, dtype=s.dtype)
            log_m = torch.logsumexp(torch.stack([log_q + torch.log(1 - b), log_p + torch.log(b)]), dim=0)
            return b * kl(log_p, log_m) + (1 - b) * kl(log_q, log_m)
        p, q = softmax(t, -1), softmax(s, -1)
        if name == "skew_kl":  # DistiLLM: -sum P log(beta P + (1 - beta) Q), plus sum P log P
            return torch.sum(p * log_p, -1) - torch.sum(p * torch.log(beta * p + (1 - beta) * q), -1)
        if name == "skew_reverse_kl":  # DistiLLM: -sum Q log((1 - beta) P + beta Q), plus sum Q log Q
            return torch.sum(q * log_q, -1) - torch.sum(q * torch.log((1 - beta) * p + beta * q), -1)
        if name == "tvd":  # DistillKit
            return 0.5 * (q - p).abs().sum(-1)
        raise ValueError(name)

    def values(student, teacher):
        return rows(student, teacher).numpy()

    def student_gradient(student, teacher):
        s = torch.from_numpy(student).requires_grad_(True)
        rows(student, teacher, s).sum().backward()
        return s.grad.numpy()

    return values, student_gradient


def worst_gradient_error(got, exact):
    """The largest ``|got - exact|`` of a row over the row's largest ``|exact|``, over the rows."""
    got = np.asarray(got, dtype=np.float64)
    return float(np.max(np.max(np.abs(got - exact), axis=-1) / np.max(np.abs(exact), axis=-1)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=20)
    parser.add_argument("--divergence", nargs="*", default=list(DIVERGENCES), choices=list(DIVERGENCES))
    parser.add_argument("--gradients", action="store_true", help="the student's gradient instead of the value")
    args = parser.parse_args(argv)
    try:
        import torch  # noqa: F401

        have_torch = True
    except ImportError:
        have_torch = False

    what = ("worst error of d_student relative to the row's largest entry" if args.gradients
            else "worst relative error (negative results)")
    print(f"{args.rows} rows x {args.classes} classes, T = 1; {what}")
    for name in args.divergence:
        beta = resolve_divergence(name)[1].get("beta")
        if args.gradients:
            peers = {"kdloss": lambda s, t, name=name: kdloss.kd_loss_and_grad(s, t, reduction="sum",
                                                                               divergence=name)[1]}
        else:
            peers = {"kdloss": lambda s, t, name=name: kdloss.kd_loss(s, t, reduction="none", divergence=name)}
        if have_torch:
            peers["PyTorch"] = pytorch_rows(name, beta)[1 if args.gradients else 0]
        rng = np.random.default_rng(0)
        print(f"\n{name}" + (f" (beta = {beta})" if beta is not None else "") + "\n")
        if args.gradients:
            print("| dtype | eps | " + " | ".join(peers) + " |")
            print("|---|---|" + "---|" * len(peers))
        else:
            print("| dtype | eps | median exact value | " + " | ".join(peers) + " |")
            print("|---|---|---|" + "---|" * len(peers))
        for dtype in (np.float32, np.float64):
            for eps in (1e-2, 1e-3, 1e-4, 1e-5, 1e-6):
                teacher = rng.standard_normal((args.rows, args.classes)).astype(dtype)
                student = (teacher + eps * rng.standard_normal(teacher.shape)).astype(dtype)
                if args.gradients:
                    exact = np.array([[float(v) for v in exact_divergence_grad(name, s, t, 1.0, beta)[0]]
                                      for s, t in zip(student.tolist(), teacher.tolist())])
                    cells = [f"{worst_gradient_error(compute(student, teacher), exact):.1e}"
                             for compute in peers.values()]
                    print(f"| {np.dtype(dtype).name} | {eps:g} | " + " | ".join(cells) + " |")
                    continue
                exact = np.array([float(exact_divergence(name, s, t, 1.0, beta))
                                  for s, t in zip(student.tolist(), teacher.tolist())])
                cells = []
                for compute in peers.values():
                    got = np.asarray(compute(student, teacher), dtype=np.float64)
                    worst = np.max(np.abs(got - exact) / exact) if np.all(exact > 0) else math.nan
                    cells.append(f"{worst:.1e} ({int(np.sum(got < 0))})")
                print(f"| {np.dtype(dtype).name} | {eps:g} | {np.median(exact):.1e} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
