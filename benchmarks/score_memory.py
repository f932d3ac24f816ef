"""Peak memory and throughput of ``kdloss score`` on a pair of large float32 ``.npy`` files.

Builds a student and a teacher file of ``--gigabytes`` each (default 4; or ``--rows`` rows) in a
temporary folder, runs ``kdloss score`` on them in a subprocess once per ``--out`` (none, a
``.npy``, a ``.csv``), and reports each run's peak resident set (the subprocess's own
``VmHWM`` from ``/proc/self/status``, read as it exits; file pages it has mapped count too)
and its rows per second, one JSON line per run. Elsewhere than Linux it falls back to
``getrusage(RUSAGE_CHILDREN).ru_maxrss``, which on Linux would also count this parent's pages
that the child held between ``fork`` and ``exec``. The promise it checks (README, "Scoring
stored logits"): the peak stays within about 40 MB, plus a chunk of each input, plus 16 bytes
per chunk row (``bound_mb``).

    python benchmarks/score_memory.py                    # 2 x 4 GB in $TMPDIR, 32,000 classes
    python benchmarks/score_memory.py --gigabytes 0.5 --out losses.npy
    python benchmarks/score_memory.py --short            # 6,000,000 x 2: no --out, .npy, .csv
    python benchmarks/score_memory.py --short --rows 600000   # the same, quick

The files are read right after they are written, so they are usually still in the page
cache: the throughput is the kernel's (plus page-cache reads), not the disk's. A measurement,
not a test: it needs twice ``--gigabytes`` of free disk.
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

# README: about 40 MB of interpreter and NumPy, plus a chunk of each input, plus about 16 bytes
# per chunk row for the per-row losses and kd_loss's working copies of them.
BASE_MB = 40
ROW_BYTES = 16

# Runs `kdloss score` (the console script's own main) and, as it exits, writes its peak resident
# set to stderr; the status of main is the exit status.
DRIVER = """
import atexit, sys
def peak():
    try:
        with open("/proc/self/status") as f:
            print(next(line for line in f if line.startswith("VmHWM")), file=sys.stderr, end="")
    except (OSError, StopIteration):
        pass
atexit.register(peak)
from kdloss.cli import main
sys.exit(main(sys.argv[1:]))
"""


def write_logits(path, rows, classes, seed, block_rows=256):
    """A (rows, classes) float32 .npy file of N(0, 3^2) logits, written block by block."""
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        header = {"descr": "<f4", "fortran_order": False, "shape": (rows, classes)}
        np.lib.format.write_array_header_1_0(f, header)
        for start in range(0, rows, block_rows):
            block = rng.standard_normal((min(block_rows, rows - start), classes), dtype=np.float32)
            block *= 3
            f.write(block.tobytes())


def run_once(args, student, teacher, size, folder, out):
    """One ``kdloss score`` subprocess: its peak resident set and throughput, as a dict."""
    command = [sys.executable, "-c", DRIVER, "score", student, teacher, "-T", str(args.temperature), "--quiet"]
    if args.chunk_rows:
        command += ["--chunk-rows", args.chunk_rows]
    if args.num_threads:
        command += ["--num-threads", args.num_threads]
    if out != "none":
        command += ["--out", os.path.join(folder, out)]
    began = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - began
    if done.returncode != 0:
        sys.exit(f"kdloss score failed ({done.returncode}): {done.stderr.strip()}")
    summary = json.loads(done.stdout)
    vm_hwm = [line.split()[1] for line in done.stderr.splitlines() if line.startswith("VmHWM")]
    if vm_hwm:
        peak_mb = int(vm_hwm[0]) * 1024 / 1e6  # kB
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 1e6  # Linux: KiB
    chunk_mb = summary["chunk_rows"] * summary["classes"] * 4 / 1e6  # one chunk of one float32 input
    bound_mb = BASE_MB + 2 * chunk_mb + summary["chunk_rows"] * ROW_BYTES / 1e6
    return {
        "out": out,
        "file_gb": round(size / 1e9, 3),
        "rows": summary["rows"],
        "classes": summary["classes"],
        "chunk_rows": summary["chunk_rows"],
        "threads": summary["threads"],
        "peak_rss_mb": round(peak_mb, 1),
        "bound_mb": round(bound_mb, 1),
        "within_bound": peak_mb <= bound_mb,
        "rows_per_second": summary["rows_per_second"],
        "input_gb_per_second": round(2 * size / 1e9 / summary["seconds"], 3) if summary["seconds"] else None,
        "scoring_seconds": summary["seconds"],
        "process_seconds": round(wall, 2),
        "mean": summary["mean"],
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gigabytes", type=float, default=4.0, help="size of each file, GB (1e9 bytes; default 4)")
    parser.add_argument("--classes", type=int, help="classes per row (default 32000, a vocabulary; 2 with --short)")
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--chunk-rows", help="passed to kdloss score (default: its own)")
    parser.add_argument("--num-threads", help="passed to kdloss score")
    parser.add_argument("--rows", type=int, help="rows in each file (default: as many as --gigabytes holds)")
    parser.add_argument("--out", action="append",
                        help="write per-row losses to this name inside the temporary folder (x.npy, x.csv; "
                        "'none' for no output); repeat it for several runs (default: none)")
    parser.add_argument("--short", action="store_true",
                        help="short rows: 6,000,000 x 2 (unless --rows or --classes say otherwise), "
                        "run with no output, with losses.npy and with losses.csv")
    parser.add_argument("--folder", help="where to build the files (default: a new folder in $TMPDIR)")
    parser.add_argument("--keep", action="store_true", help="keep the files afterwards")
    args = parser.parse_args(argv)
    if args.short:
        args.classes = args.classes or 2
        args.rows = args.rows or 6_000_000
        args.out = args.out or ["none", "losses.npy", "losses.csv"]
    args.classes = args.classes or 32000
    outs = args.out or ["none"]

    rows = args.rows or max(1, int(args.gigabytes * 1e9) // (4 * args.classes))
    folder = tempfile.mkdtemp(prefix="kdloss-score-memory-", dir=args.folder)
    try:
        free = shutil.disk_usage(folder).free
        if free < 2 * rows * args.classes * 4 * 1.05:
            sys.exit(f"not enough disk in {folder}: need {2 * rows * args.classes * 4 / 1e9:.1f} GB, "
                     f"have {free / 1e9:.1f} GB free (use --gigabytes or --folder)")
        began = time.perf_counter()
        student, teacher = os.path.join(folder, "student.npy"), os.path.join(folder, "teacher.npy")
        write_logits(teacher, rows, args.classes, seed=0)
        write_logits(student, rows, args.classes, seed=1)
        built = time.perf_counter() - began
        size = os.path.getsize(student)
        print(f"built 2 x {size / 1e9:.2f} GB ({rows} x {args.classes} float32) in {built:.1f} s", file=sys.stderr)

        for out in outs:
            print(json.dumps(run_once(args, student, teacher, size, folder, out)))
    finally:
        if args.keep:
            print(f"files kept in {folder}", file=sys.stderr)
        else:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
