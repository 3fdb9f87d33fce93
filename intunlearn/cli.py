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


def _add_run(subparsers) -> None:
    from intunlearn.unlearning.engine import ExperimentConfig
    from intunlearn.unlearning.methods import METHODS

    defaults = ExperimentConfig()
    parser = subparsers.add_parser(
        "run", help="unlearn a forget set from a quantized model with each method; integer vs fake-quant table",
        description="Train (or load from cache) a quantized model, unlearn the forget set with each method in "
                    "true integer (or fake-quant) arithmetic, evaluate every result in both, and compare with "
                    "retraining. Writes results.json, results.csv and results.png to --out.")
    parser.add_argument("--dataset", default=defaults.dataset,
                        help="digits (embedded), npz:PATH, mnist, cifar10, cifar100, svhn (default: %(default)s)")
    parser.add_argument("--data-root", default=None, help="folder of the mnist/cifar/svhn files")
    parser.add_argument("--model", default=defaults.model, choices=("mlp", "cnn", "resnet18"))
    parser.add_argument("--width", type=int, default=None, help="model width (channels of the first stage)")
    parser.add_argument("--weight-bits", type=int, choices=(4, 8), default=defaults.weight_bits)
    parser.add_argument("--arithmetic", choices=("integer", "fake"), default=defaults.arithmetic,
                        help="arithmetic of training and unlearning (evaluation always reports both)")
    parser.add_argument("--forget", default=defaults.forget, help="random:FRACTION or class:C[,C...]")
    parser.add_argument("--methods", default=",".join(defaults.methods),
                        help=f"comma-separated, from: {', '.join(METHODS)}")
    parser.add_argument("--epochs", type=int, default=defaults.pretrain_epochs, help="float pre-training epochs")
    parser.add_argument("--qat-epochs", type=int, default=defaults.qat_epochs)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--unlearn-epochs", type=int, default=None, help="override every method's default")
    parser.add_argument("--unlearn-lr", type=float, default=None, help="override every method's default")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--device", default=defaults.device)
    parser.add_argument("--backend", default=defaults.backend, choices=("auto", *BACKENDS))
    parser.add_argument("--out", default="runs/latest", help="output folder (default: %(default)s)")
    parser.add_argument("--cache-dir", default=None,
                        help="where trained original/retrained models are cached (default: OUT/../cache)")
    parser.set_defaults(handler=_run_experiment)


def _run_experiment(args) -> int:
    from pathlib import Path

    from intunlearn.unlearning.engine import ExperimentConfig, run_experiment
    from intunlearn.unlearning.report import format_table

    config = ExperimentConfig(
        dataset=args.dataset, data_root=args.data_root, model=args.model, width=args.width,
        weight_bits=args.weight_bits, arithmetic=args.arithmetic, forget=args.forget,
        methods=tuple(name.strip() for name in args.methods.split(",") if name.strip()),
        pretrain_epochs=args.epochs, qat_epochs=args.qat_epochs, lr=args.lr, unlearn_epochs=args.unlearn_epochs,
        unlearn_lr=args.unlearn_lr, batch_size=args.batch_size, seed=args.seed, device=args.device,
        backend=args.backend)
    out = Path(args.out)
    cache = Path(args.cache_dir) if args.cache_dir else out.parent / "cache"
    results = run_experiment(config, out, cache)
    print(format_table(results))
    print(f"\nwrote {out / 'results.json'}, {out / 'results.csv'}, {out / 'results.png'}")
    return 0


def _add_bench(subparsers) -> None:
    parser = subparsers.add_parser("bench", help="benchmarks")
    kinds = parser.add_subparsers(dest="kind", required=True)
    e2e = kinds.add_parser("e2e", help="seconds per unlearning epoch: integer engine vs fake-quant vs float")
    e2e.add_argument("--dataset", default="digits")
    e2e.add_argument("--data-root", default=None)
    e2e.add_argument("--model", default="cnn", choices=("mlp", "cnn", "resnet18"))
    e2e.add_argument("--width", type=int, default=None)
    e2e.add_argument("--weight-bits", type=int, choices=(4, 8), default=4)
    e2e.add_argument("--method", default="rl")
    e2e.add_argument("--forget", default="random:0.1")
    e2e.add_argument("--repeats", type=int, default=3)
    e2e.add_argument("--seed", type=int, default=0)
    e2e.add_argument("--device", default="cpu")
    e2e.add_argument("--json", metavar="PATH", help="also write the result as JSON to PATH")
    e2e.set_defaults(handler=_run_bench_e2e)


def _run_bench_e2e(args) -> int:
    from intunlearn.bench import format_e2e, run_e2e
    from intunlearn.io import write_json_atomic

    result = run_e2e(dataset=args.dataset, data_root=args.data_root, model_name=args.model, width=args.width,
                     weight_bits=args.weight_bits, method=args.method, forget=args.forget,
                     repeats=args.repeats, seed=args.seed, device=args.device)
    print(format_e2e(result))
    if args.json:
        write_json_atomic(args.json, result)
    return 0


COMMANDS = (_add_run, _add_bench, _add_demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="intunlearn", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add_command in COMMANDS:
        add_command(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError, NotImplementedError) as error:
        print(f"intunlearn {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
