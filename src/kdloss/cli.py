"""The ``kdloss`` command line."""

import argparse
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


def build_parser():
    parser = argparse.ArgumentParser(
        prog="kdloss", description="Exact knowledge-distillation losses on CPUs."
    )
    parser.add_argument("--version", action="version", version=f"kdloss {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo", help="run the seed examples and score a built-in synthetic batch",
        description="Print the seed examples, then score a fixed-seed synthetic float32 batch "
        "and report the mean loss and throughput. Needs no files and no network.",
    )
    demo.add_argument("--rows", type=_positive_int, default=4096, help="rows in the batch (default 4096)")
    demo.add_argument("--classes", type=_positive_int, default=1000, help="classes per row (default 1000)")
    demo.add_argument("-T", "--temperature", type=float, default=4.0, help="temperature (default 4.0)")
    demo.add_argument("--num-threads", type=int, default=None, help="threads (default: all usable CPUs)")

    commands.add_parser("config", help="show version, OpenMP state, threads and kernel target")
    score_cli.add_parser(commands)
    bench_cli.add_parser(commands)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
