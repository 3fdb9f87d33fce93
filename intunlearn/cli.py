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


def _model_name(value: str) -> str:
    if value in ("mlp", "cnn", "resnet18") or (value.startswith("tflite:") and len(value) > len("tflite:")):
        return value
    raise argparse.ArgumentTypeError(f"must be mlp, cnn, resnet18 or tflite:PATH, got {value!r}")


def _add_model_options(parser, defaults) -> None:
    """The options that define a run's data and original model (shared by run and export)."""
    parser.add_argument("--dataset", default=defaults.dataset,
                        help="digits (embedded), npz:PATH, mnist, cifar10, cifar100, svhn (default: %(default)s)")
    parser.add_argument("--data-root", default=None, help="folder of the mnist/cifar/svhn files")
    parser.add_argument("--model", default=defaults.model, type=_model_name,
                        help="mlp, cnn, resnet18, or tflite:PATH, a deployed int8 .tflite model to unlearn "
                             "(trained on --dataset; default: %(default)s)")
    parser.add_argument("--width", type=int, default=None, help="model width (channels of the first stage)")
    parser.add_argument("--weight-bits", type=int, choices=(4, 8), default=defaults.weight_bits)
    parser.add_argument("--arithmetic", choices=("integer", "fake"), default=defaults.arithmetic,
                        help="arithmetic of training and unlearning (evaluation always reports both)")
    parser.add_argument("--forget", default=defaults.forget, help="random:FRACTION or class:C[,C...]")
    parser.add_argument("--epochs", type=int, default=defaults.pretrain_epochs, help="float pre-training epochs")
    parser.add_argument("--qat-epochs", type=int, default=defaults.qat_epochs)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--unlearn-epochs", type=int, default=None, help="override every method's default")
    parser.add_argument("--unlearn-lr", type=float, default=None, help="override every method's default")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--device", default=defaults.device)
    parser.add_argument("--backend", default=defaults.backend, choices=("auto", *BACKENDS))


def _add_run(subparsers) -> None:
    from intunlearn.unlearning.engine import ExperimentConfig
    from intunlearn.unlearning.methods import METHODS

    defaults = ExperimentConfig()
    parser = subparsers.add_parser(
        "run", help="unlearn a forget set from a quantized model with each method; integer vs fake-quant table",
        description="Train (or load from cache) a quantized model, unlearn the forget set with each method in "
                    "true integer (or fake-quant) arithmetic, evaluate every result in both, and compare with "
                    "retraining. Writes results.json, results.csv and results.png to --out.")
    _add_model_options(parser, defaults)
    parser.add_argument("--methods", default=",".join(defaults.methods),
                        help=f"comma-separated, from: {', '.join(METHODS)}")
    parser.add_argument("--out", default="runs/latest", help="output folder (default: %(default)s)")
    parser.add_argument("--cache-dir", default=None,
                        help="where trained original/retrained models are cached (default: OUT/../cache)")
    parser.add_argument("--export", metavar="DIR", default=None,
                        help="also write the original, retrained and every unlearned model as DIR/NAME.tflite "
                             "(activation scales rounded to float32 first, as the files store them)")
    parser.set_defaults(handler=_run_experiment)


def _config(args, methods=None):
    from intunlearn.unlearning.engine import ExperimentConfig

    if methods is None:
        methods = tuple(name.strip() for name in args.methods.split(",") if name.strip())
    return ExperimentConfig(
        dataset=args.dataset, data_root=args.data_root, model=args.model, width=args.width,
        weight_bits=args.weight_bits, arithmetic=args.arithmetic, forget=args.forget, methods=methods,
        pretrain_epochs=args.epochs, qat_epochs=args.qat_epochs, lr=args.lr, unlearn_epochs=args.unlearn_epochs,
        unlearn_lr=args.unlearn_lr, batch_size=args.batch_size, seed=args.seed, device=args.device,
        backend=args.backend)


def _run_experiment(args) -> int:
    from pathlib import Path

    from intunlearn.unlearning.engine import run_experiment
    from intunlearn.unlearning.report import format_table

    out = Path(args.out)
    cache = Path(args.cache_dir) if args.cache_dir else out.parent / "cache"
    results = run_experiment(_config(args), out, cache, export_dir=args.export)
    print(format_table(results))
    print(f"\nwrote {out / 'results.json'}, {out / 'results.csv'}, {out / 'results.png'}")
    for name, entry in results.get("exports", {}).items():
        print(f"exported {name}: {entry['path']}" + "".join(f"\n  note: {note}" for note in entry["notes"]))
    return 0


def _add_export(subparsers) -> None:
    from intunlearn.unlearning.engine import ExperimentConfig

    defaults = ExperimentConfig()
    parser = subparsers.add_parser(
        "export", help="write a run's original model (or one unlearned by --method) as an int8 .tflite file",
        description="Train (or load from cache) the original model of a run configuration, optionally unlearn "
                    "the forget set with one method, and write it as an int8 .tflite flatbuffer that TFLite "
                    "Micro runs bit-identically. Prints the export report.")
    parser.add_argument("output", help="the .tflite file to write")
    _add_model_options(parser, defaults)
    parser.add_argument("--method", default=None, help="unlearn the forget set with this method first")
    parser.add_argument("--cache-dir", default="runs/cache", help="model cache (default: %(default)s)")
    parser.add_argument("--int4-format", choices=("auto", "packed", "int8"), default="auto",
                        help="4-bit weights: packed INT4 where TFLM runs it (auto), always packed, or int8 tensors")
    parser.set_defaults(handler=_run_export)


def _run_export(args) -> int:
    import copy

    from intunlearn.tflite import _schema, export_tflite
    from intunlearn.unlearning.engine import Experiment
    from intunlearn.unlearning.methods import get_method

    _schema()
    methods = (args.method,) if args.method else ("ft",)
    config = _config(args, methods)
    experiment = Experiment(_replace(config, float32_scales=True), args.cache_dir)
    model = experiment.original()
    if args.method:
        method = get_method(args.method)
        method.check(experiment.task())
        model = method.unlearn(copy.deepcopy(model), experiment.task())
    print(export_tflite(model, args.output, input_shape=experiment.data.input_shape, int4_format=args.int4_format))
    return 0


def _replace(config, **changes):
    import dataclasses

    return dataclasses.replace(config, **changes)


def _add_verify(subparsers) -> None:
    parser = subparsers.add_parser(
        "verify", help="run a .tflite model in TFLite Micro (and LiteRT) and in intunlearn; compare bit for bit",
        description="Read MODEL.tflite with intunlearn's load_tflite and run it, in TFLite Micro's interpreter "
                    "and, when ai-edge-litert is installed, LiteRT's, on the data set's test inputs; report how "
                    "many outputs are bit-identical per runtime (the max LSB difference otherwise). Exit status 1 "
                    "when TFLite Micro differs.")
    parser.add_argument("model", help="an int8 .tflite file")
    parser.add_argument("--dataset", default="digits", help="the inputs: digits, npz:PATH, mnist, ... (test split)")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--samples", type=int, default=200, help="how many test inputs (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="data split seed")
    parser.set_defaults(handler=_run_verify)


def _run_verify(args) -> int:
    from pathlib import Path

    from intunlearn import tflite
    from intunlearn.data import load_dataset

    if args.samples < 1:
        raise ValueError(f"samples must be >= 1, got {args.samples}")
    path = Path(args.model)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such .tflite file")
    data = path.read_bytes()
    model = tflite.load_tflite(data)
    dataset = load_dataset(args.dataset, root=args.data_root, seed=args.seed)
    shape = tuple(model.meta["tflite_input_shape"])
    if shape != tuple(dataset.input_shape):
        raise ValueError(f"{path} takes inputs of shape {shape}, the data set {args.dataset!r} has "
                         f"{tuple(dataset.input_shape)}")
    x, y = dataset.x_test[:args.samples], dataset.y_test[:args.samples]
    codes = tflite.quantize_inputs(model, x)
    for note in model.meta["tflite_notes"]:
        print(f"note: {note}")
    logits = tflite.integer_forward(model, codes)
    accuracy = float((logits.reshape(len(x), -1).argmax(1) == y).float().mean()) if logits.dim() == 2 else None
    print(f"{path}: {len(x)} test inputs of {args.dataset}"
          + (f"; intunlearn's integer forward classifies {100 * accuracy:.1f}% correctly" if accuracy is not None
             else ""))
    stripped = tflite.stripped_output_tensor(data)
    status = 0
    for runtime in ("tflm", "litert", "litert-ref"):
        if not tflite.runtime_available(runtime):
            print(f"{runtime}: not installed")
            continue
        result = tflite.compare(data, model, codes, runtime, output_tensor=stripped)
        print(result)
        if runtime.startswith("litert") and not result.error and result.identical != result.total:
            print(f"  ({runtime}: LiteRT's optimized kernels, XNNPACK and its reference FULLY_CONNECTED round once "
                  f"where TFLite Micro rounds twice; see the README's runtime table)")
        if runtime == "tflm" and (result.error or result.identical != result.total):
            status = 1
    return status


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


COMMANDS = (_add_run, _add_export, _add_verify, _add_bench, _add_demo)


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
