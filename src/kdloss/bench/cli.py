"""``kdloss bench``: the subcommand's arguments, their checks, and the run."""

import json
import sys

from .._threads import default_num_threads
from .._validation import check_temperature
from .cases import DTYPES, ISSUE_SHAPES, TEMPERATURE, parse_shape

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
    bench.add_argument("--dtype", default="float32", help="float32,float64 (default float32)")
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
                       "at --shapes, --dtype, --threads, --repeat and -T (--peers, --plot do not apply)")
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
        dtypes=_names(args.dtype, tuple(DTYPES), "--dtype"),
        threads=tuple(dict.fromkeys(threads)),
        repeat=repeat,
        peers=_names(args.peers, DEFAULT_PEERS, "--peers"),
        temperature=temperature,
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
    cases = divergence_compare.run(
        settings, divergences, lambda text: print(f"kdloss bench: {text}", file=sys.stderr, flush=True))
    described = machine.describe()
    print("\n\n".join(["\n".join(table.header_lines(described, settings)), divergence_compare.table(cases),
                       divergence_compare.LEGEND]))
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"machine": described, "divergences": divergence_compare.as_json(cases)}, out, indent=1)


def run(args):
    from . import compare, machine, plot, table
    from .jax_threads import set_jax_threads

    settings, jax_threads = settings_from(args)
    if args.divergence != "kl":
        return run_divergences(args, settings)
    if args.plot:
        plot.require_matplotlib()  # fail now, not after minutes of timing
    set_jax_threads(jax_threads)  # before JAX first runs: its pool is sized once

    def progress(text):
        print(f"kdloss bench: {text}", file=sys.stderr, flush=True)

    cases = compare.run(settings, progress)
    sweep = None
    if args.plot:
        sweep = compare.throughput_sweep(settings, jax_threads, plot.PLOT_TOTAL, plot.PLOT_CLASSES, progress)
        plot.draw(sweep, args.plot, f"KD loss, {settings.dtypes[0]}, {jax_threads} thread(s), "
                  f"{plot.PLOT_TOTAL:,} elements per call")
    described = machine.describe()  # after the peers ran: their thread pools are loaded by now
    print(table.report(cases, described, settings), end="")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(compare.as_json(cases, described, settings, sweep), out, indent=1)
