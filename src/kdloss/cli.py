"""The ``kdloss`` command line.

Every error, argparse's own included (an unknown option, a missing argument), is one line on
stderr, ``kdloss COMMAND: error: ...``, and exit status 2. Output to a closed pipe
(``kdloss config | head -1``) ends quietly, as the Python documentation recommends for
command-line tools (``signal``, "Note on SIGPIPE").
"""

import argparse
import os
import sys

from . import _demo
from ._config import show_config
from ._version import __version__
from .bench import cli as bench_cli
from .scoring import cli as score_cli


def _positive_int(text):
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _one_line_error(parser):
    """``parser.error`` as one line (argparse's own prints the usage first)."""

    def error(message):
        print(f"{parser.prog}: error: {message} (see {parser.prog} --help)", file=sys.stderr)
        sys.exit(2)

    return error


def build_parser():
    parser = argparse.ArgumentParser(
        prog="kdloss", description="Exact knowledge-distillation losses on CPUs."
    )
    parser.add_argument("--version", action="version", version=f"kdloss {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo", help="run the task's examples and score a built-in synthetic batch",
        description="Print the task's three examples and one non-zero example with their losses "
        "to 4 decimals, then score a fixed-seed synthetic float32 batch and report the mean loss "
        "and throughput, and say what to run next. Needs no files and no network.",
    )
    demo.add_argument("--rows", type=_positive_int, default=4096, help="rows in the batch (default 4096)")
    demo.add_argument("--classes", type=_positive_int, default=1000, help="classes per row (default 1000)")
    demo.add_argument("-T", "--temperature", type=float, default=4.0, help="temperature (default 4.0)")
    demo.add_argument("--num-threads", type=int, default=None, help="threads (default: all usable CPUs)")

    commands.add_parser(
        "config", help="show version, OpenMP state, threads and kernel target",
        description="Print what this installation of kdloss can do: its version, whether the kernel "
        "was built with OpenMP, the default thread count and the usable CPUs, the kernel target "
        "chosen for this CPU (and the ones compiled in; KDLOSS_TARGET overrides), the instruction "
        "set it was compiled for, and the platform. The same as kdloss.show_config().",
    )
    score_cli.add_parser(commands)
    bench_cli.add_parser(commands)
    parser.subcommands = commands.choices  # name -> parser, for errors after parsing
    for each in (parser, *commands.choices.values()):
        each.error = _one_line_error(each)
    return parser


def _parse(argv):
    """The parsed arguments; an unknown argument is reported by the subcommand it follows."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        parser.subcommands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def _dispatch(args):
    if args.command == "score":
        return score_cli.run(args)
    try:
        if args.command == "demo":
            _demo.run(args.rows, args.classes, args.temperature, args.num_threads)
        elif args.command == "config":
            show_config()
        elif args.command == "bench":
            bench_cli.run(args)
    except (ValueError, TypeError) as error:
        print(f"kdloss {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


def main(argv=None):
    try:
        try:
            return _dispatch(_parse(argv))
        finally:
            sys.stdout.flush()  # a closed pipe shows here (also after --help), not at interpreter exit
    except BrokenPipeError:
        # The reader went away (``| head -1``): Python would report the failed flush again at
        # exit, so stdout is pointed at devnull first (the recipe of the signal module's docs).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
