"""What the kernel's design buys, measured: run-time targets, split rows, rows near zero KL, memory.

    python benchmarks/kernel_paths.py [--repeat 7]

Prints a markdown table per question (medians of interleaved samples, one process):

1. each kernel target (scalar libm, portable vector code, AVX2+FMA, AVX-512) at 8192 x 1000;
2. a few rows of a huge vocabulary (2 x 1,000,000): 1 thread against all, rows split in chunks;
3. rows of every kind against ordinary rows of their dtype (ratio in brackets), float32 and
   float64: close to zero KL (student = teacher + 1e-4 noise; before the one-engine kernel these
   took 9 to 13x), masked classes (in the teacher only, and in both), float16 inputs; for the
   loss and for the loss with its gradient;
4. the traced peak memory of one ``kd_loss`` call at 8192 x 1000 (tracemalloc), beyond its output.
"""

import argparse
import time
import tracemalloc

import numpy as np

import kdloss
from kdloss import _kernel
from kdloss._threads import default_num_threads


def median_ms(functions, repeat):
    """Median milliseconds of each function, sampled round-robin."""
    samples = {name: [] for name in functions}
    for _ in range(repeat):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            samples[name].append(time.perf_counter() - start)
    return {name: 1e3 * float(np.median(times)) for name, times in samples.items()}


def logits(shape, noise, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    teacher = (3 * rng.standard_normal(shape)).astype(dtype)
    return (teacher + noise * rng.standard_normal(shape)).astype(dtype), teacher


def with_target(target, function):
    def run():
        _kernel.select_target(target)
        try:
            function()
        finally:
            _kernel.select_target("auto")

    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    repeat = parser.parse_args().repeat
    threads = default_num_threads()
    print(f"kdloss {kdloss.__version__}, kernel target {_kernel.active_target()}, {threads} threads\n")

    print("| 8192 x 1000, T = 4 | " + " | ".join(_kernel.available_targets()) + " |")
    print("|---|" + "---|" * len(_kernel.available_targets()))
    for dtype in (np.float32, np.float64):
        student, teacher = logits((8192, 1000), 1.0, dtype)
        def loss(student=student, teacher=teacher):
            kdloss.kd_loss(student, teacher, 4.0)

        times = median_ms({t: with_target(t, loss) for t in _kernel.available_targets()}, repeat)
        print(f"| {np.dtype(dtype).name}, {threads} threads | "
              + " | ".join(f"{v:.1f} ms" for v in times.values()) + " |")

    student, teacher = logits((2, 1_000_000), 1.0)
    times = median_ms(
        {n: (lambda n=n: kdloss.kd_loss(student, teacher, 4.0, num_threads=n)) for n in (1, threads)}, repeat
    )
    print(f"\n| 2 x 1,000,000 float32 | 1 thread | {threads} threads | speed-up |\n|---|---|---|---|")
    print(f"| kd_loss | {times[1]:.1f} ms | {times[threads]:.1f} ms | {times[1] / times[threads]:.2f}x |")

    # Rows of every kind the engine meets, beside ordinary rows of the same dtype: near zero KL, a
    # masked vocabulary (-inf on every tenth class: in the teacher only, as top-k filtering leaves
    # it, or in both, as a padded vocabulary), 2-byte inputs (read as stored; float32's table).
    for dtype in (np.float32, np.float64):
        ordinary = logits((8192, 1000), 1.0, dtype)
        teacher_masked = (ordinary[0], ordinary[1].copy())
        teacher_masked[1][:, ::10] = -np.inf
        both_masked = (ordinary[0].copy(), teacher_masked[1])
        both_masked[0][:, ::10] = -np.inf
        kinds = {"ordinary": ordinary, "near zero KL (noise 1e-4)": logits((8192, 1000), 1e-4, dtype),
                 "teacher masks every 10th class": teacher_masked, "both mask every 10th class": both_masked}
        if dtype == np.float32:
            kinds["float16 inputs"] = tuple(x.astype(np.float16) for x in ordinary)
        header = f"8192 x 1000 {np.dtype(dtype).name}, T = 4"
        print(f"\n| {header} | " + " | ".join(kinds) + " |\n|---|" + "---|" * len(kinds))
        for name, function in (("kd_loss", kdloss.kd_loss), ("kd_loss_and_grad", kdloss.kd_loss_and_grad)):
            times = median_ms(
                {kind: (lambda pair=pair, function=function: function(*pair, 4.0)) for kind, pair in kinds.items()},
                repeat,
            )
            print(f"| {name}, {threads} threads | "
                  + " | ".join(f"{v:.1f} ms ({v / times['ordinary']:.2f}x)" for v in times.values()) + " |")

    ordinary = logits((8192, 1000), 1.0)
    tracemalloc.start()
    tracemalloc.reset_peak()
    kdloss.kd_loss(*ordinary, 4.0)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.reset_peak()
    out = kdloss.kd_loss(*ordinary, 4.0, reduction="none")
    peak_none = tracemalloc.get_traced_memory()[1] - out.nbytes
    tracemalloc.stop()
    print("\n| 8192 x 1000 float32, traced peak beyond the output | reduction=\"mean\" | reduction=\"none\" |"
          "\n|---|---|---|")
    print(f"| one kd_loss call | {peak / 1024:.0f} KiB | {peak_none / 1024:.0f} KiB |")


if __name__ == "__main__":
    main()
