"""OpenMP scaling beyond 2 cores, for a machine with more of them (BENCHMARKS.md, "Scaling
beyond 2 cores"):

1. the thread count changes no bit: every divergence's per-row losses and both gradients at
   every thread count asked for, float32 and float64, on the benchmark shapes;
2. ``kdloss bench``'s loss and training jobs at those thread counts beside PyTorch (its
   "kdloss vs 1 thread" column is the scaling).

    python benchmarks/thread_scaling.py --threads 1,2,4,8,16 [--repeat 5] [--json FILE]
"""

import argparse
import hashlib

import numpy as np

import kdloss
from kdloss._divergences import DIVERGENCES
from kdloss.cli import main as kdloss_main

SHAPES = ((8192, 1000), (1024, 32000))


def digest(*arrays):
    """One hash of the arrays' bytes."""
    h = hashlib.sha256()
    for array in arrays:
        h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


def check_bits(thread_counts):
    """Prints, per shape, dtype and divergence, whether every thread count gave the same bits;
    returns the number of combinations that did not."""
    rng = np.random.default_rng(0)
    different = 0
    for shape in SHAPES:
        teacher = 3 * rng.standard_normal(shape)
        student = teacher + 0.1 * rng.standard_normal(shape)  # rows near the teacher, and far
        student[::2] = 3 * rng.standard_normal((shape[0] // 2, shape[1]))
        for dtype in (np.float32, np.float64):
            s, t = student.astype(dtype), teacher.astype(dtype)
            for name in DIVERGENCES:
                digests = {
                    digest(*kdloss.kd_loss_and_grad(s, t, 2.0, reduction="none", teacher_grad=True,
                                                    num_threads=n, divergence=name))
                    for n in thread_counts
                }
                same = len(digests) == 1
                different += not same
                verdict = "same bits" if same else "DIFFERENT BITS"
                print(f"{shape[0]} x {shape[1]} {np.dtype(dtype).name} {name}: {verdict}", flush=True)
    return different


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2,4,8,16", help="thread counts (default 1,2,4,8,16)")
    parser.add_argument("--repeat", type=int, default=5, help="samples per peer (default 5)")
    parser.add_argument("--json", help="save kdloss bench's samples and machine as JSON")
    args = parser.parse_args(argv)
    thread_counts = [int(n) for n in args.threads.split(",")]
    different = check_bits(thread_counts)
    bench = ["bench", "--job", "loss,training", "--shapes", ",".join(f"{r}x{c}" for r, c in SHAPES),
             "--threads", args.threads, "--peers", "kdloss,torch", "--repeat", str(args.repeat)]
    status = kdloss_main(bench + (["--json", args.json] if args.json else []))
    return status or (1 if different else 0)


if __name__ == "__main__":
    raise SystemExit(main())
