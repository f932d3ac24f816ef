"""Training speed: the loss and its gradient, beside pure PyTorch.

    python benchmarks/training.py [--shapes 8192x1000,1024x32000] [--dtype float32] [--threads 2] [--repeat 9]

For each shape, one table of medians of interleaved samples (one process, same inputs):

- ``kd_loss``: the loss alone (NumPy API), the yardstick of the ratios below;
- ``kd_loss_and_grad`` (and with ``teacher_grad=True``): the loss and its gradient, one pass;
- ``kdloss.torch.kd_loss`` forward + backward, against pure PyTorch
  ``F.kl_div(F.log_softmax(s/T), F.log_softmax(t/T), log_target=True) * T*T`` with ``.backward()``;
- the same for Hinton's loss (KL + cross-entropy with labels), against PyTorch's
  ``alpha * kl_div(...) * T*T + (1 - alpha) * cross_entropy(s, y)``.

The bodies are ``kdloss.bench.training``'s (``kdloss bench --job training`` runs them too, timed
as the other jobs). Samples are interleaved (every body once per round), so that a slow minute of this shared
machine hits every body alike. Both libraries get the same thread count (kdloss ``num_threads`` via
``torch.set_num_threads``, which ``kdloss.torch`` follows). Every body is checked against the pure-PyTorch result once,
untimed. Then the traced peak memory of ``kd_loss_and_grad`` beyond the gradient it returns.
"""

import argparse
import gc
import time
import tracemalloc

import numpy as np

import kdloss
from kdloss.bench import training as bench_training
from kdloss.bench.cases import parse_shape
from kdloss.bench.training import ALPHA, make_inputs

TEMPERATURE = 4.0


def numpy_bodies(student, teacher, threads):
    return bench_training.numpy_bodies(student, teacher, TEMPERATURE, threads)


def torch_bodies(student, teacher, labels):
    """Forward + backward bodies, each returning (loss, student gradient) for the check."""
    return bench_training.torch_bodies(student, teacher, labels, TEMPERATURE)


def check_agreement(bodies, dtype):
    """Each kdloss body against its PyTorch twin (listed right after it): loss and gradient."""
    problem = bench_training.disagreement(bodies, dtype)
    if problem:
        raise SystemExit(problem)


def median_ms(functions, repeat):
    """Median milliseconds per call of each function, sampled round-robin (after one warm-up).

    The garbage collector is off while timing, as in ``timeit``: autograd makes many objects,
    and a collection would land on whichever body happens to trigger it.
    """
    for function in functions.values():
        function()
    samples = {name: [] for name in functions}
    gc.collect()
    gc.disable()
    try:
        for _ in range(repeat):
            for name, function in functions.items():
                start = time.perf_counter()
                function()
                samples[name].append(time.perf_counter() - start)
    finally:
        gc.enable()
    return {name: 1e3 * float(np.median(times)) for name, times in samples.items()}


def peak_beyond_gradient(student, teacher, threads):
    """Traced peak bytes of kd_loss_and_grad, less the gradient it returns."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        kdloss.kd_loss_and_grad(student, teacher, TEMPERATURE, num_threads=threads)
        return tracemalloc.get_traced_memory()[1] - student.nbytes
    finally:
        tracemalloc.stop()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="8192x1000,1024x32000")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    dtype = np.dtype(args.dtype).type
    print(f"T = {TEMPERATURE}, alpha = {ALPHA}, mean over rows, {args.dtype}, {args.threads} thread(s), "
          f"medians of {args.repeat} interleaved samples; kernel target {kdloss._kernel.active_target()}\n")
    for text in args.shapes.split(","):
        shape = parse_shape(text)
        student, teacher, labels = make_inputs(shape, dtype)
        trained = torch_bodies(student, teacher, labels)
        check_agreement(trained, dtype)
        times = median_ms({**numpy_bodies(student, teacher, args.threads), **trained}, args.repeat)
        loss_only = times["kdloss.kd_loss (loss only)"]
        print(f"### {shape[0]} x {shape[1]}\n\n| call | median | ratio |\n|---|---|---|")
        kdloss_torch_ms = None  # the kdloss.torch row just above each PyTorch row
        for name, ms in times.items():
            if name.startswith("PyTorch"):
                ratio = f"{ms / kdloss_torch_ms:.2f}x the kdloss.torch time above"
            elif name.startswith("kdloss.torch"):
                ratio, kdloss_torch_ms = "", ms
            else:
                ratio = f"{ms / loss_only:.2f}x kd_loss"
            print(f"| {name} | {ms:.2f} ms | {ratio} |")
        peak = peak_beyond_gradient(student, teacher, args.threads)
        print(f"\nkd_loss_and_grad: traced peak {peak / 1024:.0f} KiB "
              f"beyond the {student.nbytes / 2**20:.0f} MiB gradient\n")


if __name__ == "__main__":
    main()
