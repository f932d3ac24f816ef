"""``kdloss score``: the subcommand's arguments, their validation, and the run.

Every argument and both inputs are checked in :func:`validate` before any work starts; a bad
one is one line on stderr (``kdloss score: error: ...``), exit status 2, and no output file.
"""

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import threading
from collections import namedtuple

from .._divergences import DIVERGENCES, resolve_divergence
from .._sparse_inputs import TAILS, VALUE_KINDS, check_sparse_divergence, check_tail
from .._threads import resolve_num_threads
from .._validation import (
    check_num_threads,
    check_reduction,
    check_same_shape,
    check_temperature,
    logits_row,
    pair_row,
)
from . import _score
from ._inputs import InputError, open_logits
from ._paths import resolve_output
from ._sparse_teacher import is_sparse_spec, open_sparse_teacher
from ._writers import EXTENSIONS, AtomicWriter

CHUNK_BYTES = 32 << 20  # default chunk: 32 MiB of each input
# ... and at most this many rows, so that short rows' per-row losses (and kd_loss's working
# copy of them) stay a few MB per chunk beside the mapped input.
CHUNK_ROWS_MAX = 1 << 20

DESCRIPTION = """\
Score stored logits row by row: T^2 * KL(softmax(teacher/T) || softmax(student/T)) over the
last axis (or T^2 times another --divergence), for every row of two arrays of the same shape
(any number of leading axes; the last holds classes). Inputs are read a chunk of rows at a time
and never loaded whole.

Inputs (STUDENT and TEACHER):
  FILE.npy        memory-mapped, read chunk by chunk
  FILE.npz:NAME   the member NAME (or NAME.npy) of a .npz archive; mapped in place when
                  stored (np.savez), decompressed whole (that member only) and checked when
                  opened if compressed (np.savez_compressed)
  DIRECTORY       a Zarr array (directory store); needs the [dask] extra
  dtypes float16, float32, float64 in either byte order (big-endian is byte-swapped a chunk
  at a time), and bfloat16 in Zarr v3 (read as its exact float32 values; needs ml_dtypes);
  float16 and bfloat16 are computed as float32.
  A sparse (top-k) TEACHER: FILE.npz (no :NAME) or a Zarr group folder, with members
  "indices" (integers) and "values" (floats), shape (..., k), leading axes as STUDENT's;
  --teacher-values says what values holds, --tail what happens to the mass outside the ids
  (kdloss.sparse_kd_loss; a bad index is one line naming its row, exit status 2).
  Paths are resolved as the OS resolves them:
  link/../x.npy is the x.npy beside the folder the link points to.

Output:
  stdout          always one line of JSON: rows, classes, shape (leading axes), dtype,
                  temperature, divergence, beta (null for a divergence without one),
                  reduction, loss, mean, sum, nan_rows, inf_rows, seconds,
                  rows_per_second, threads, chunk_rows, out, dask. mean and sum are over the
                  rows that are not NaN (nan_rows counts those; mean is null if every row is
                  NaN); an inf row makes them infinite, written as null (inf_rows says so).
                  sum is the correctly rounded sum of the per-row losses as written; loss is
                  mean or sum as --reduction asks (null for none).
  --out FILE.npy  the per-row losses, shape = the leading axes, dtype float32 for float16,
                  bfloat16 and float32 inputs, float64 for float64 (as kdloss.kd_loss(...,
                  reduction="none"))
  --out FILE.csv  a "row,loss" header, then one line per row: the row's flat index (C order
                  over the leading axes) and its loss, in text that reads back exactly
  The output is written to a temporary file in the same folder and renamed over FILE only
  when complete: a failed or interrupted run leaves no partial file. Its folder is resolved
  once, as the OS does, and FILE is written exactly there ("out" in the summary). An output
  that is an input (under any spelling, through a symlink, or a hard link of one) is refused.

Progress goes to stderr (tqdm) when stderr is a terminal, unless --quiet.
Exit status: 0 done; 2 bad arguments or inputs (one line on stderr, no output written);
1 a failure while scoring (e.g. disk full; no output written); 130 interrupted (Ctrl-C),
143 terminated (SIGTERM); neither leaves output. "seconds" times the scoring itself (with
--dask local, not the cluster's start).
"""

EPILOG = """\
examples:
  kdloss score student.npy teacher.npy -T 2
  kdloss score student.npy teacher.npy -T 2 --out losses.npy
  kdloss score student.npy teacher.npy -T 2 --divergence jsd --beta 0.5
  kdloss score logits.npz:student logits.npz:teacher --out losses.csv --quiet
  kdloss score student.zarr teacher.zarr --dask local --out losses.npy
  kdloss score student.npy teacher.npy --dask tcp://scheduler:8786
"""

Job = namedtuple(
    "Job", "student teacher temperature divergence beta reduction out dtype chunk_rows num_threads threads dask "
    "quiet sparse",
    defaults=(None,),  # sparse: (tail, values) for a sparse teacher
)


def add_parser(commands):
    """Register ``score`` on the ``kdloss`` subparsers ``commands``; return its parser."""
    parser = commands.add_parser(
        "score", help="score stored logits (.npy, .npz, Zarr) row by row, without loading them whole",
        description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # Values are strings here and checked in validate(), so every bad value gets the same
    # one-line error; argparse's own errors (a missing argument) are one line too (kdloss.cli).
    parser.add_argument("student", metavar="STUDENT",
                        help="student logits: FILE.npy, FILE.npz:NAME or a Zarr directory")
    parser.add_argument("teacher", metavar="TEACHER",
                        help="teacher logits, same shape as STUDENT; or a sparse teacher (see above)")
    parser.add_argument("-T", "--temperature", default="1.0", metavar="T",
                        help="temperature, finite and > 0 (default 1.0)")
    parser.add_argument("--divergence", default="kl", metavar="NAME",
                        help=f"the divergence: {', '.join(DIVERGENCES)} (default kl; README \"Divergences\")")
    parser.add_argument("--beta", metavar="B",
                        help="the parameter of jsd (default 0.5), skew_kl and skew_reverse_kl (default 0.1), "
                        "in [0, 1]; the other divergences take none")
    parser.add_argument("--out", metavar="FILE", help="write the per-row losses to FILE.npy or FILE.csv (atomically)")
    parser.add_argument(
        "--reduction", metavar="{none,sum,mean}",
        help="none: per-row losses, to --out (the default with --out); sum or mean: only the "
        "summary, whose loss field holds that value (default without --out: mean)",
    )
    parser.add_argument(
        "--chunk-rows", metavar="N",
        help=f"rows per chunk (default: as many as fit in {CHUNK_BYTES >> 20} MiB of each input, at most "
        f"{CHUNK_ROWS_MAX:,}); "
        "memory use grows with it, results do not depend on it",
    )
    parser.add_argument(
        "--num-threads", metavar="K",
        help="OpenMP threads: per call without --dask (default OMP_NUM_THREADS or all usable CPUs; "
        "negative counts back, -1 = all), per Dask task with --dask (default 1)",
    )
    parser.add_argument(
        "--teacher-values", metavar="{logprobs,logits}",
        help="a sparse TEACHER (FILE.npz or a Zarr group with members indices and values, shape (..., k)): "
        "what values holds, log-probabilities (default) or logits",
    )
    parser.add_argument(
        "--tail", metavar="{bucket,zero,renormalize}",
        help="a sparse TEACHER: the teacher's mass outside its ids (default bucket; README 'Sparse teachers')",
    )
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bar (it is also off when stderr is not a terminal)")
    parser.add_argument(
        "--dask", metavar="local|tcp://HOST:PORT",
        help="run the chunks as Dask tasks: on a distributed.LocalCluster started for this run "
        "(local), or on an existing scheduler; workers must see the input files at the same "
        "paths. Needs the [dask] extra. The output is the same as without --dask",
    )
    return parser


def _positive_int(text, option):
    try:
        value = int(text)
    except ValueError:
        raise InputError(f"{option} must be a positive integer, got {text!r}") from None
    if value <= 0:
        raise InputError(f"{option} must be a positive integer, got {text!r}")
    return value


def _check_out(out, sources):
    """The path ``--out`` writes (resolved once, see ``_paths``): a known extension, not an input."""
    extension = os.path.splitext(out)[1].lower()
    if extension not in EXTENSIONS:
        raise InputError(f"--out {out}: unknown output extension {extension or '(none)'!r}; use .npy or .csv")
    return resolve_output(out, [(source.spec, source.file_id) for source in sources])


def _divergence(name, beta_text):
    """``(name, beta)`` checked by ``resolve_divergence``: beta as it resolves (the default when
    not given), None for a divergence without one."""
    beta = None
    if beta_text is not None:
        try:
            beta = float(beta_text)
        except ValueError:
            raise InputError(f"--beta must be a real number, got {beta_text!r}") from None
    _, parameters = resolve_divergence(name, beta)
    return name, parameters.get("beta")


def validate(args):
    """Every check, in one place, before any work: a :class:`Job`, or InputError/ValueError/TypeError."""
    try:
        temperature = float(args.temperature)
    except ValueError:
        raise InputError(f"temperature must be a real number, got {args.temperature!r}") from None
    temperature = check_temperature(temperature)
    divergence, beta = _divergence(args.divergence, args.beta)
    reduction = check_reduction(args.reduction or ("none" if args.out else "mean"), "--reduction")
    if args.out and reduction != "none":
        raise InputError(f"--out writes per-row losses; it cannot be used with --reduction {reduction}")
    chunk_rows = None if args.chunk_rows is None else _positive_int(args.chunk_rows, "--chunk-rows")
    num_threads = None
    if args.num_threads is not None:
        try:
            num_threads = int(args.num_threads)
        except ValueError:
            raise InputError(f"--num-threads must be an integer, got {args.num_threads!r}") from None
        check_num_threads(num_threads)  # ValueError for 0
    if args.dask is not None and args.dask != "local" and "://" not in args.dask:
        raise InputError(f"--dask must be 'local' or a scheduler address such as tcp://HOST:PORT, got {args.dask!r}")

    student = open_logits(args.student, "student")
    sparse = None
    if is_sparse_spec(args.teacher):
        teacher = open_sparse_teacher(args.teacher)
        sparse = check_tail(args.tail or "bucket", args.teacher_values or "logprobs")
        check_sparse_divergence(divergence, beta, sparse[0])  # infinite by construction: before any work
        if tuple(teacher.shape[:-1]) != tuple(student.shape[:-1]):
            raise InputError(f"a sparse teacher's indices must have the student's leading axes, got student "
                             f"{student.shape} and teacher {teacher.shape} (student {args.student}, "
                             f"teacher {args.teacher})")
        if args.dask is not None:
            raise InputError("--dask does not take a sparse teacher yet; score it without --dask")
        out = _check_out(args.out, (student, *teacher.sources)) if args.out else None
        dtype = logits_row(student.dtype, "student").result_dtype
        row_bytes = student.classes * student.dtype.itemsize + teacher.k * (
            teacher.indices.dtype.itemsize + teacher.values.dtype.itemsize)
    else:
        if args.tail is not None or args.teacher_values is not None:
            raise InputError("--tail and --teacher-values apply to a sparse teacher (FILE.npz or a Zarr group "
                             f"with members indices and values); teacher {args.teacher} is dense logits")
        teacher = open_logits(args.teacher, "teacher")
        try:
            check_same_shape(student.shape, teacher.shape)
        except ValueError as error:
            raise InputError(f"{error} (student {args.student}, teacher {args.teacher})") from None
        out = _check_out(args.out, (student, teacher)) if args.out else None
        dtype = pair_row(student.dtype, teacher.dtype, ("student", "teacher")).result_dtype
        row_bytes = student.classes * max(student.dtype.itemsize, teacher.dtype.itemsize)  # as read
    if chunk_rows is None:
        chunk_rows = max(1, min(CHUNK_BYTES // row_bytes, CHUNK_ROWS_MAX))
    if args.dask is not None:
        threads = 1 if num_threads is None else resolve_num_threads(num_threads)
    else:
        threads = resolve_num_threads(num_threads)
    return Job(student, teacher, temperature, divergence, beta, reduction, out, dtype, chunk_rows, num_threads,
               threads, args.dask, args.quiet, sparse)


def _json_number(value):
    return value if math.isfinite(value) else None  # strict JSON has no NaN or Infinity


def summary_line(job, summary):
    """The one-line JSON summary."""
    loss = {"sum": summary.sum, "mean": summary.mean}.get(job.reduction)
    record = {
        "rows": summary.rows,
        "classes": job.student.classes,
        "shape": list(job.student.shape[:-1]),
        "dtype": str(job.dtype),
        "temperature": job.temperature,
        "divergence": job.divergence,
        "beta": job.beta,
        "reduction": job.reduction,
        "loss": None if loss is None else _json_number(loss),
        "mean": _json_number(summary.mean),
        "sum": _json_number(summary.sum),
        "nan_rows": summary.nan_rows,
        "inf_rows": summary.inf_rows,
        "seconds": round(summary.seconds, 6),
        "rows_per_second": round(summary.rows / summary.seconds, 1) if summary.seconds > 0 else None,
        "threads": job.threads,
        "chunk_rows": job.chunk_rows,
        "out": job.out,
        "dask": job.dask,
    }
    if job.sparse is not None:
        record.update(k=job.teacher.k, tail=job.sparse[0], teacher_values=job.sparse[1])
    return json.dumps(record, allow_nan=False)


def _progress(job):
    from tqdm import tqdm

    return tqdm(
        total=job.student.rows, unit="row", unit_scale=True, desc="kdloss score", file=sys.stderr,
        disable=job.quiet or not sys.stderr.isatty(), leave=False, dynamic_ncols=True,
    )


def score(job):
    """Run a validated job: the :class:`_score.Summary` (output written if ``job.out``)."""
    with contextlib.ExitStack() as stack:
        if job.dask is not None:
            from . import _dask

            client = stack.enter_context(_dask.client_for(job.dask))
            chunks = _dask.chunk_losses(client, job.student, job.teacher, job.temperature, job.chunk_rows,
                                        job.num_threads, job.divergence, job.beta)
        elif job.sparse is not None:
            chunks = _score.sparse_chunk_losses(job.student, job.teacher, job.temperature, job.chunk_rows,
                                                job.num_threads, *job.sparse, divergence=job.divergence,
                                                beta=job.beta)
        else:
            chunks = _score.chunk_losses(job.student, job.teacher, job.temperature, job.chunk_rows, job.num_threads,
                                         job.divergence, job.beta)
        stack.callback(getattr(chunks, "close", lambda: None))
        writer = None
        if job.out:
            writer = stack.enter_context(AtomicWriter(job.out, job.student.shape[:-1], job.dtype))
        progress = stack.enter_context(_progress(job))
        return _score.run(chunks, writer, progress)


class _Terminated(BaseException):
    """SIGTERM while scoring: unwinds like Ctrl-C, so the temporary output is removed."""


@contextlib.contextmanager
def _sigterm_unwinds():
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# The library's errors spell a choice as its keyword argument; the command line's, as its flag.
_FLAG_SPELLINGS = {
    f"{keyword}={choice!r}": f"{flag} {choice}"
    for keyword, flag, choices in (("tail", "--tail", TAILS), ("values", "--teacher-values", VALUE_KINDS))
    for choice in choices
}


def _in_flags(error):
    """``error``'s message with the library's keyword arguments spelt as this command's flags."""
    message = str(error)
    for keyword, flag in _FLAG_SPELLINGS.items():
        message = message.replace(keyword, flag)
    return message


def run(args):
    """``kdloss score``: validate, score, print the summary; the exit status."""
    prefix = "kdloss score: error:"
    try:
        job = validate(args)
    except (ValueError, TypeError) as error:  # InputError and kdloss's own argument errors
        print(f"{prefix} {_in_flags(error)}", file=sys.stderr)
        return 2
    try:
        with _sigterm_unwinds():
            summary = score(job)
    except InputError as error:  # e.g. an unreachable Dask scheduler, a teacher's bad row
        print(f"{prefix} {_in_flags(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kdloss score: interrupted; no output written", file=sys.stderr)
        return 130
    except _Terminated:
        print("kdloss score: terminated; no output written", file=sys.stderr)
        return 128 + signal.SIGTERM
    except Exception as error:  # noqa: BLE001 - any failure while scoring: one line, no partial output
        print(f"{prefix} {type(error).__name__}: {error}; no output written", file=sys.stderr)
        return 1
    print(summary_line(job, summary))
    return 0
