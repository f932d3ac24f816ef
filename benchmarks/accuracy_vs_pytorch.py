"""Accuracy of kdloss and PyTorch near zero KL, against the exact (mpmath) reference.

    python benchmarks/accuracy_vs_pytorch.py [--classes 1000] [--rows 20]

Students are ``teacher + eps * N(0, 1)`` for shrinking ``eps`` (KL ~ eps^2 / 2); PyTorch computes
``F.kl_div(log_softmax(s), log_softmax(t), log_target=True).sum(-1)``, the usual formulation.
Prints a markdown table of the worst relative error and the count of negative results.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

import kdloss

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from exact_reference import exact_kd_loss


def pytorch_kd_rows(student, teacher):
    import torch
    from torch.nn.functional import kl_div, log_softmax

    s, t = torch.from_numpy(student), torch.from_numpy(teacher)
    return kl_div(log_softmax(s, -1), log_softmax(t, -1), log_target=True, reduction="none").sum(-1).numpy()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=20)
    args = parser.parse_args(argv)
    try:
        import torch  # noqa: F401

        peers = {"kdloss": lambda s, t: kdloss.kd_loss(s, t, reduction="none"), "PyTorch": pytorch_kd_rows}
    except ImportError:
        peers = {"kdloss": lambda s, t: kdloss.kd_loss(s, t, reduction="none")}

    rng = np.random.default_rng(0)
    print(f"{args.rows} rows x {args.classes} classes, T = 1; worst relative error (negative results)\n")
    print("| dtype | eps | median exact KL | " + " | ".join(peers) + " |")
    print("|---|---|---|" + "---|" * len(peers))
    for dtype in (np.float32, np.float64):
        for eps in (1e-2, 1e-3, 1e-4, 1e-5):
            teacher = rng.standard_normal((args.rows, args.classes)).astype(dtype)
            student = (teacher + eps * rng.standard_normal(teacher.shape)).astype(dtype)
            exact = np.array([float(exact_kd_loss(s, t, 1.0)) for s, t in zip(student.tolist(), teacher.tolist())])
            cells = []
            for compute in peers.values():
                got = np.asarray(compute(student, teacher), dtype=np.float64)
                cells.append(f"{np.max(np.abs(got - exact) / exact):.1e} ({int(np.sum(got < 0))})")
            print(f"| {np.dtype(dtype).name} | {eps:g} | {np.median(exact):.1e} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
