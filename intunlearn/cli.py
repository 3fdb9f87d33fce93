"""The `intunlearn` command line. Each subcommand is one entry in COMMANDS."""

from __future__ import annotations

import argparse
import sys

from intunlearn.backends import BACKENDS


def _add_demo(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="train a small MLP on digits and classify it in true integer arithmetic")
    parser.add_argument("--weight-bits", type=int, choices=(4, 8), default=4)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", choices=("auto", *BACKENDS), default="auto")
    parser.add_argument("--json", metavar="PATH", help="also write the result as JSON to PATH")
    parser.set_defaults(handler=_run_demo)


def _run_demo(args) -> int:
    from intunlearn.demo import format_report, run_demo
    from intunlearn.io import write_json_atomic

    result = run_demo(weight_bits=args.weight_bits, hidden=args.hidden, epochs=args.epochs,
                      seed=args.seed, backend=args.backend)
    print(format_report(result))
    if args.json:
        write_json_atomic(args.json, result)
    return 0


COMMANDS = (_add_demo,)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="intunlearn", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add_command in COMMANDS:
        add_command(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
