"""Two builds of kdloss on the same machine: ``kd_loss`` and ``kd_loss_and_grad`` on ordinary rows.

    git worktree add /tmp/previous e7ab252 && (cd /tmp/previous && python setup.py build_ext --inplace)
    python benchmarks/compare_builds.py /tmp/previous/src src [--rounds 2] [--repeat 7]
        [--divergence kl,jsd] [--dtype float32]

Each build runs in its own process (its ``src`` directory first on ``PYTHONPATH``), the builds
alternating, for ``--rounds`` rounds; each case keeps the best of its rounds' medians of
``--repeat`` calls. Data: teacher ``3 N(0, 1)``, student = teacher + ``N(0, 1)``, seed 0, T = 4, at
1 and 2 threads; ``--divergence`` (default ``kl``) and ``--dtype`` (default every case's) choose
the cases. Prints a markdown table with the second build's time over the first's.
"""

import argparse
import functools
import itertools
import json
import os
import subprocess
import sys
import time

CASES = (((8192, 1000), "float32"), ((8192, 1000), "float64"), ((1024, 32000), "float32"),
         ((1000000, 10), "float32"), ((1000000, 10), "float64"))
CALLS = ("kd_loss", "kd_loss_and_grad")
THREADS = (1, 2)


def measure(repeat, divergences, dtypes):
    """{case: median seconds} for the kdloss this process imports (the child's job)."""
    import numpy as np

    import kdloss

    medians = {}
    for shape, dtype in CASES:
        if dtype not in dtypes:
            continue
        rng = np.random.default_rng(0)
        teacher = 3 * rng.standard_normal(shape)
        student = (teacher + rng.standard_normal(shape)).astype(dtype)
        teacher = teacher.astype(dtype)
        for threads, divergence, name in itertools.product(THREADS, divergences, CALLS):
            # kl without the keyword: builds from before the divergence table (e7ab252) take none
            chosen = {} if divergence == "kl" else {"divergence": divergence}
            call = functools.partial(getattr(kdloss, name), num_threads=threads, **chosen)
            call(student, teacher, 4.0)  # warm-up
            samples = []
            for _ in range(repeat):
                start = time.perf_counter()
                call(student, teacher, 4.0)
                samples.append(time.perf_counter() - start)
            case = f"{shape[0]} x {shape[1]}|{dtype}|{threads}|{divergence}|{name}"
            medians[case] = sorted(samples)[len(samples) // 2]
    return medians


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", help="the first build's src directory (the baseline)")
    parser.add_argument("second", help="the second build's src directory")
    parser.add_argument("--rounds", type=int, default=2, help="alternations of the two builds (default 2)")
    parser.add_argument("--repeat", type=int, default=7, help="calls per median (default 7)")
    parser.add_argument("--divergence", default="kl", help="divergences, comma-separated (default kl)")
    parser.add_argument("--dtype", default=",".join(sorted({dtype for _, dtype in CASES})),
                        help="dtypes of the cases to run, comma-separated (default all)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.repeat, args.divergence.split(","), args.dtype.split(","))))
        return
    best = {}
    for _ in range(args.rounds):
        for which, src in (("first", args.first), ("second", args.second)):
            env = dict(os.environ, PYTHONPATH=os.path.abspath(src))
            command = [sys.executable, os.path.abspath(__file__), src, src, "--child", "--repeat", str(args.repeat),
                       "--divergence", args.divergence, "--dtype", args.dtype]
            done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
            for case, seconds in json.loads(done.stdout.splitlines()[-1]).items():
                kept = best.setdefault(case, {})
                kept[which] = min(kept.get(which, seconds), seconds)
    print(f"first: {args.first}; second: {args.second}; best of {args.rounds} rounds, medians of {args.repeat}")
    print()
    print("| shape | dtype | threads | divergence | call | first | second | second / first |")
    print("|---|---|---|---|---|---|---|---|")
    for case, kept in best.items():
        shape, dtype, threads, divergence, name = case.split("|")
        first, second = kept["first"], kept["second"]
        print(f"| {shape} | {dtype} | {threads} | {divergence} | {name} | {1e3 * first:.2f} ms "
              f"| {1e3 * second:.2f} ms | {second / first:.2f}x |")


if __name__ == "__main__":
    main()
