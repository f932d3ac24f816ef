"""``kdloss bench``: the subcommand's arguments, their checks, and the run."""

import json
import sys

from .._threads import default_num_threads
from .._validation import check_temperature
from .cases import BENCH_DTYPES, DEFAULT_EPS, ISSUE_SHAPES, TEMPERATURE, parse_shape

DEFAULT_SHAPES = ",".join(f"{rows}x{classes}" for rows, classes in ISSUE_SHAPES)


def add_parser(commands):
    """Add ``bench`` to the ``kdloss`` subcommands (``commands`` from ``add_subparsers``)."""
    bench = commands.add_parser(
        "bench", help="time kdloss beside NumPy, SciPy, PyTorch and JAX; print a markdown table",
        description="Run kdloss and its peers side by side in this process, interleaved, and print "
        "medians and each peer's time over kdloss's. Peers whose library is absent are reported "
        "as not installed. Lists are comma-separated.",
    )
    # Plain strings: they are checked in run(), so that a bad value is one line and exit 2.
    bench.add_argument("--shapes", default=DEFAULT_SHAPES,
                       help=f"ROWSxCLASSES list; one row = a single 1-D call (default {DEFAULT_SHAPES}: an "
                       "image-classifier batch, an LLM vocabulary, short rows, a single call)")
    bench.add_argument("--dtype", default="float32",
                       help="float32,float64,float16,bfloat16 (default float32; bfloat16 needs ml_dtypes)")
    bench.add_argument("--threads", default=None,
                       help="thread counts, e.g. 1,2,4 (default: kdloss's default, the usable CPUs)")
    bench.add_argument("--repeat", default="7", help="interleaved samples per peer (default 7)")
    bench.add_argument("--peers", default="kdloss,numpy,scipy,torch,jax",
                       help="peers to run (default kdloss,numpy,scipy,torch,jax)")
    bench.add_argument("--jax-threads", default=None,
                       help="JAX's thread pool, fixed per process (default: the default thread count "
                       "when --threads lists it, else the largest of --threads)")
    bench.add_argument("-T", "--temperature", default=str(TEMPERATURE), help=f"temperature (default {TEMPERATURE:g})")
    bench.add_argument("--plot", metavar="FILE.png", default=None,
                       help="also draw throughput against class count (needs matplotlib)")
    bench.add_argument("--json", metavar="FILE", default=None, help="also save every sample and the machine as JSON")
    bench.add_argument("--divergence", default="kl", metavar="NAME[,NAME...]",
                       help="kl (default): the comparison above; other divergences, or all: each divergence by "
                       "kdloss beside kdloss's KL and the divergence's PyTorch formulation (TRL, DistiLLM), "
                       "at --shapes, --dtype, --threads, --eps, --repeat and -T (--peers, --plot do not apply)")
    add_eps_argument(bench)
    add_job_arguments(bench)
    return bench


def _positive_ints(text, option):
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"{option} must be comma-separated positive integers, got {text!r}") from None
    if not values or min(values) <= 0:
        raise ValueError(f"{option} must be comma-separated positive integers, got {text!r}")
    return values


def _names(text, allowed, option):
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [name for name in names if name not in allowed]
    if unknown or not names:
        raise ValueError(f"{option}: unknown {', '.join(map(repr, unknown)) or 'empty list'}; "
                         f"choose from {', '.join(allowed)}")
    return names


def _dtypes(text):
    """--dtype: names of BENCH_DTYPES; bfloat16 only where ml_dtypes is installed."""
    from .._dtypes import DTYPES as TABLE

    names = tuple(dict.fromkeys(_names(text, BENCH_DTYPES, "--dtype")))
    for name in names:
        if not TABLE[name].available():
            raise ValueError(f"--dtype {name} needs {TABLE[name].module}: pip install {TABLE[name].module}")
    return names


def settings_from(args):
    """(Settings, jax_threads) from the parsed arguments; ValueError names the bad option."""
    from .compare import DEFAULT_PEERS, Settings

    threads = _positive_ints(args.threads, "--threads") if args.threads else (default_num_threads(),)
    (repeat,) = _positive_ints(args.repeat, "--repeat")
    try:
        temperature = float(args.temperature)
    except ValueError:
        raise ValueError(f"--temperature must be a number, got {args.temperature!r}") from None
    temperature = check_temperature(temperature, "--temperature")
    settings = Settings(
        shapes=tuple(parse_shape(part) for part in args.shapes.split(",")),
        dtypes=_dtypes(args.dtype),
        threads=tuple(dict.fromkeys(threads)),
        repeat=repeat,
        peers=_names(args.peers, DEFAULT_PEERS, "--peers"),
        temperature=temperature,
        eps=eps_from(args),
    )
    if args.jax_threads:
        (jax_threads,) = _positive_ints(args.jax_threads, "--jax-threads")
    else:
        jax_threads = default_num_threads() if default_num_threads() in threads else max(threads)
    return settings, jax_threads


def run_divergences(args, settings):
    """``--divergence``: the divergence table instead of the KL comparison."""
    from . import divergence_compare, machine, table

    divergences = divergence_compare.parse_divergences(args.divergence)
    if args.plot:
        raise ValueError("--plot draws the KL comparison; it cannot be used with --divergence")
    for option, given in (("--job", args.job), ("--load", args.load)):
        if given is not None:  # not silently skipped: the jobs time KL alone
            raise ValueError(f"{option} runs jobs of the KL comparison; it cannot be used with --divergence")
    cases = divergence_compare.run(
        settings, divergences, lambda text: print(f"kdloss bench: {text}", file=sys.stderr, flush=True))
    described = machine.describe()
    print("\n\n".join(["\n".join(table.header_lines(described, settings)), divergence_compare.table(cases),
                       divergence_compare.LEGEND]))
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"machine": described, "divergences": divergence_compare.as_json(cases)}, out, indent=1)


def check_output_paths(args):
    """--json and --plot name files that can be written (and --plot a format matplotlib writes):
    checked before minutes of timing, not after."""
    from ..scoring._paths import resolve_output

    for option, path in (("--json", args.json), ("--plot", args.plot)):
        if path is not None:
            resolve_output(path, (), option)
    if args.plot is not None and args.divergence == "kl":
        from . import plot

        plot.check_format(args.plot)


def run(args):
    from .jax_threads import set_jax_threads

    settings, jax_threads = settings_from(args)
    check_output_paths(args)
    if args.divergence != "kl":
        return run_divergences(args, settings)
    jobs = jobs_from(args)
    _check_job_shapes(args, settings, jobs)
    set_jax_threads(jax_threads)  # before JAX first runs: its pool is sized once

    def progress(text):
        print(f"kdloss bench: {text}", file=sys.stderr, flush=True)

    if "loss" not in jobs:  # the loss job's report has the machine header; the others do not
        from . import machine, table

        print("\n".join(table.header_lines(machine.describe(), settings)) + "\n")
    for name in jobs:
        print(JOBS[name](args, settings, jax_threads, progress), end="")


def _loss_job(args, settings, jax_threads, progress):
    """The peers side by side (the default job): the report, with --plot and --json."""
    from . import compare, machine, plot, table

    cases = compare.run(settings, progress)
    sweep = None
    if args.plot:
        sweep = compare.throughput_sweep(settings, jax_threads, plot.PLOT_TOTAL, plot.PLOT_CLASSES, progress)
        plot.draw(sweep, args.plot, f"KD loss, {settings.dtypes[0]}, {jax_threads} thread(s), "
                  f"{plot.PLOT_TOTAL:,} elements per call")
    described = machine.describe()  # after the peers ran: their thread pools are loaded by now
    if args.json:
        with open(args.json, "w") as out:
            json.dump(compare.as_json(cases, described, settings, sweep), out, indent=1)
    return table.report(cases, described, settings)



# -- --eps: how close the student is to the teacher -----------------------------------------------

def add_eps_argument(bench):
    bench.add_argument("--eps", default=",".join(f"{e:g}" for e in DEFAULT_EPS),
                       help="student = teacher + eps N(0,1), a list (default 1,0.01: far from the teacher, and a "
                       "student close to convergence); for the loss and training jobs")


def eps_from(args):
    """--eps as a tuple of finite numbers > 0, duplicates dropped."""
    try:
        values = tuple(float(part) for part in args.eps.split(","))
    except ValueError:
        raise ValueError(f"--eps must be comma-separated numbers > 0, got {args.eps!r}") from None
    if not all(0.0 < value < float("inf") for value in values):
        raise ValueError(f"--eps must be comma-separated finite numbers > 0, got {args.eps!r}")
    return tuple(dict.fromkeys(values))


# -- jobs: what kdloss bench runs ------------------------------------------------------------------
# Each job is a function (args, settings, jax_threads, progress) -> the markdown it prints, and a
# name in JOBS; --job lists them. A new benchmark joins by adding both.

def add_job_arguments(bench):
    bench.add_argument("--job", default=None,
                       help=f"benchmarks to run, a list of {', '.join(JOBS)} (default loss: the peers side by "
                       "side; training: forward + backward beside PyTorch; load: 1 thread against the "
                       "default with and without busy processes; sparse: a top-k teacher, loss and gradient "
                       "beside TRL's and DistillKit's formulations)")
    bench.add_argument("--load", nargs="?", const="auto", default=None, metavar="PROCESSES",
                       help="run the load job (adds it to --job): PROCESSES spinning Python processes "
                       "(default one per other usable CPU)")


def jobs_from(args):
    """The jobs to run, in order: --job (default loss), and load when --load is given."""
    jobs = _names(args.job, tuple(JOBS), "--job") if args.job else ()
    if args.load is not None:
        busy_processes(args)  # checked now, not after the other jobs ran
        jobs += () if "load" in jobs else ("load",)
    jobs = tuple(dict.fromkeys(jobs or ("loss",)))
    if "loss" not in jobs and (args.json or args.plot):
        raise ValueError("--json and --plot belong to the loss job: add it (--job loss,...)")
    return jobs


def busy_processes(args):
    """--load's process count: a positive integer, or one per other usable CPU."""
    from . import load

    if args.load in (None, "auto"):
        return load.default_load()
    (count,) = _positive_ints(args.load, "--load")
    return count


def _job_shapes(args, settings, default):
    """The shapes of a job that times batches: ``default`` unless --shapes was given (its single
    calls left out)."""
    if args.shapes == DEFAULT_SHAPES:
        return default
    return tuple(shape for shape in settings.shapes if shape[0] > 1)


def _training_job(args, settings, jax_threads, progress):
    """Forward + backward: kdloss's NumPy calls and kdloss.torch beside pure PyTorch."""
    from . import training

    results, skipped = [], [d for d in settings.dtypes if d not in training.TRAINING_DTYPES]
    for shape in _job_shapes(args, settings, training.TRAINING_SHAPES):
        for dtype in (d for d in settings.dtypes if d in training.TRAINING_DTYPES):
            for eps in settings.eps:
                for threads in settings.threads:
                    progress(f"training: {shape[0]}x{shape[1]} {dtype} eps {eps:g} {threads} thread(s)")
                    medians, note = training.run_case(shape, dtype, threads, settings.temperature,
                                                      settings.repeat, eps)
                    results.append(((shape, dtype, threads, eps), medians, note))
    parts = ["### Training: loss and gradient, forward + backward", training.table(results), training.LEGEND]
    if skipped:
        parts.append(f"- Training not run for {', '.join(skipped)}: it runs {', '.join(training.TRAINING_DTYPES)}.")
    return "\n\n".join(part for part in parts if part) + "\n\n"


def _load_job(args, settings, jax_threads, progress):
    """A busy machine: 1 thread against the largest --threads count, without and with load."""
    from . import load

    processes = busy_processes(args)
    cases = load.run(_job_shapes(args, settings, load.LOAD_SHAPES), settings.dtypes, max(settings.threads),
                     processes, settings.repeat, settings.temperature, progress)
    threads = max(settings.threads)
    return "\n\n".join(["### A busy machine", load.table(cases),
                         load.LEGEND.format(load=processes, threads=threads)]) + "\n\n"


def _check_job_shapes(args, settings, jobs):
    """Before any job runs: the jobs that time batches have a shape of more than one row, and the
    sparse job's top-k ids need k classes per row."""
    batch_jobs = [name for name in jobs if name != "loss"]
    if batch_jobs and args.shapes != DEFAULT_SHAPES and not _job_shapes(args, settings, ()):
        raise ValueError(f"--job {','.join(batch_jobs)} times batches; --shapes has only single calls (1xN)")
    if "sparse" in jobs:
        from . import sparse

        narrow = [f"{rows}x{classes}" for rows, classes in _job_shapes(args, settings, sparse.SPARSE_SHAPES)
                  if classes < sparse.TOP_K]
        if narrow:
            raise ValueError(f"--job sparse needs at least k = {sparse.TOP_K} classes per row; --shapes has "
                             f"{', '.join(narrow)}")


def _sparse_job(args, settings, jax_threads, progress):
    """A top-k teacher: the loss with the student's gradient beside the peers' PyTorch formulations."""
    from . import sparse

    results = []
    threads = max(settings.threads)
    for shape in _job_shapes(args, settings, sparse.SPARSE_SHAPES):
        progress(f"sparse: {shape[0]}x{shape[1]} k {sparse.TOP_K} {threads} thread(s)")
        results.append((shape, sparse.run_case(shape, sparse.TOP_K, threads, settings.repeat)))
    return sparse.table(results, sparse.TOP_K, threads)


JOBS = {"loss": _loss_job, "training": _training_job, "load": _load_job, "sparse": _sparse_job}
