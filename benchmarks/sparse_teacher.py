"""Sparse (top-k) teachers: speed beside the peers' PyTorch formulations, and a stored top-k file scored.

    python benchmarks/sparse_teacher.py speed [--rows 1024] [--classes 128256] [--k 64] [--threads 2] [--repeat 5]
    python benchmarks/sparse_teacher.py score [--rows 2048] [--classes 32000] [--k 64] [--folder DIR]

``speed``: the loss with the student's gradient, float32, one table of medians of interleaved
samples (every body once per round, one process, same inputs, same thread count):

- ``kdloss`` ``sparse_kd_loss_and_grad`` (NumPy API) for each ``tail``, and ``kdloss.torch.sparse_kd_loss``
  forward + backward (``tail="bucket"``);
- TRL's GKD top-k mode (``tail="renormalize"``): gather the student at the ids, ``log_softmax`` of both
  over the k, KL, backward;
- DistillKit's ``sparse_kl_div`` with missing mass ``ZERO`` (``tail="zero"``): the student's full
  ``log_softmax(s / T)``, gathered at the ids, the teacher renormalised over them;
- the same with ``SYMMETRIC_UNIFORM`` (``tail="bucket"``): one more category, the teacher's
  ``1 - sum p`` and the student's ``1 - sum q`` (as a difference, as the peer computes it).

Every body is checked once, untimed, against kdloss's loss of the same tail.

``score``: writes dense teacher logits (``.npy``), turns them into a top-k teacher file
(``.npz`` with ``indices`` int32 and ``values`` float32 log-probabilities, a chunk of rows at a
time), scores it with ``kdloss score`` (in a subprocess, as a user would) against a student, and
prints both files' sizes, the dense and sparse scores' summaries.
"""

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

import kdloss
from kdloss.bench.sparse import TEMPERATURE, make_inputs, torch_bodies  # shipped: kdloss bench --job sparse


def median_ms(bodies, repeat):
    """Median milliseconds of each body, sampled round-robin after one warm-up; gc off while timing."""
    samples = {name: [] for name in bodies}
    for body in bodies.values():
        body()
    gc.disable()
    try:
        for _ in range(repeat):
            for name, body in bodies.items():
                began = time.perf_counter()
                body()
                samples[name].append(1e3 * (time.perf_counter() - began))
    finally:
        gc.enable()
    return {name: float(np.median(values)) for name, values in samples.items()}


def speed(args):
    student, ids, logprobs = make_inputs(args.rows, args.classes, args.k)
    bodies = {}
    for tail in ("renormalize", "zero", "bucket"):
        def body(tail=tail):
            loss, _ = kdloss.sparse_kd_loss_and_grad(student, ids, logprobs, TEMPERATURE, tail=tail,
                                                     num_threads=args.threads)
            return loss
        bodies[f"kdloss ({tail})"] = (tail, body)
    bodies.update(torch_bodies(student, ids, logprobs, args.threads))
    want = {tail: kdloss.sparse_kd_loss(student, ids, logprobs, TEMPERATURE, tail=tail, num_threads=args.threads)
            for tail in ("renormalize", "zero", "bucket")}
    for name, (tail, body) in bodies.items():
        got = body()
        if abs(got - want[tail]) > 1e-4 * abs(want[tail]):
            raise SystemExit(f"{name}: loss {got!r}, kdloss {want[tail]!r}")
    times = median_ms({name: body for name, (_, body) in bodies.items()}, args.repeat)
    print(f"{args.rows} x {args.classes} float32, k = {args.k}, T = {TEMPERATURE}, {args.threads} threads, "
          f"loss + student gradient, median of {args.repeat} (ms)")
    print(f"| {'body':40} | {'ms':>9} | {'kdloss same tail faster by':>26} |")
    print(f"|{'-' * 42}|{'-' * 11}|{'-' * 28}|")
    for name, (tail, _) in bodies.items():
        ratio = times[name] / times[f"kdloss ({tail})"]
        print(f"| {name:40} | {times[name]:9.1f} | {ratio:25.2f}x |")


def write_top_k(dense_path, out_path, k, chunk_rows=256):
    """Turn dense teacher logits (``.npy``, ``(rows, V)``) into a top-k ``.npz`` a chunk at a time."""
    dense = np.load(dense_path, mmap_mode="r")
    rows = dense.shape[0]
    indices = np.empty((rows, k), dtype=np.int32)
    values = np.empty((rows, k), dtype=np.float32)
    for start in range(0, rows, chunk_rows):
        block = np.asarray(dense[start:start + chunk_rows], dtype=np.float64)
        log_p = block - block.max(-1, keepdims=True)
        log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
        top = np.argpartition(-log_p, k - 1, axis=-1)[:, :k]
        indices[start:start + chunk_rows] = top
        values[start:start + chunk_rows] = np.take_along_axis(log_p, top, -1)
    np.savez(out_path, indices=indices, values=values)


def kdloss_score(*argv):
    result = subprocess.run([sys.executable, "-m", "kdloss", "score", *argv, "--quiet"], capture_output=True,
                            text=True, check=True)
    return json.loads(result.stdout)


def score(args):
    folder = args.folder or tempfile.mkdtemp(prefix="kdloss-sparse-")
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(1)
    teacher = (3 * rng.standard_normal((args.rows, args.classes))).astype(np.float32)
    student = (teacher + rng.standard_normal(teacher.shape)).astype(np.float32)
    paths = {name: os.path.join(folder, f"{name}.npy") for name in ("student", "teacher")}
    np.save(paths["student"], student)
    np.save(paths["teacher"], teacher)
    del student, teacher
    sparse_path = os.path.join(folder, "teacher_top_k.npz")
    began = time.perf_counter()
    write_top_k(paths["teacher"], sparse_path, args.k)
    written = time.perf_counter() - began
    print(f"dense teacher {os.path.getsize(paths['teacher']) / 1e6:.1f} MB; top-{args.k} teacher "
          f"{os.path.getsize(sparse_path) / 1e6:.1f} MB, written in {written:.2f} s ({folder})")
    dense = kdloss_score(paths["student"], paths["teacher"], "-T", str(TEMPERATURE))
    print(f"dense:  mean {dense['mean']:.6f}  {dense['rows_per_second']:>12,.0f} rows/s")
    for tail in ("bucket", "zero", "renormalize"):
        sparse = kdloss_score(paths["student"], sparse_path, "-T", str(TEMPERATURE), "--tail", tail)
        print(f"top-{args.k} {tail:11}: mean {sparse['mean']:.6f}  {sparse['rows_per_second']:>12,.0f} rows/s")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, rows, classes in (("speed", 1024, 128256), ("score", 2048, 32000)):
        command = commands.add_parser(name)
        command.add_argument("--rows", type=int, default=rows)
        command.add_argument("--classes", type=int, default=classes)
        command.add_argument("--k", type=int, default=64)
        command.add_argument("--threads", type=int, default=2)
        command.add_argument("--repeat", type=int, default=5)
        command.add_argument("--folder")
    args = parser.parse_args(argv)
    (speed if args.command == "speed" else score)(args)


if __name__ == "__main__":
    main()
