"""The `intunlearn` command line. Each subcommand is one entry in COMMANDS."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from intunlearn._checks import positive_int_option
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
    from intunlearn.io import check_output_file, write_json_atomic

    if args.json:
        check_output_file(args.json, "--json")
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
    parser.add_argument("--width", type=int, default=None,
                        help="model width (channels of the first stage; not with tflite:PATH)")
    parser.add_argument("--weight-bits", type=int, choices=(4, 8), default=None,
                        help=f"weight width of a model built here (default: {defaults.weight_bits}); a tflite:PATH "
                             f"model has its file's")
    parser.add_argument("--forget", default=defaults.forget, help="random:FRACTION or class:C[,C...]")
    parser.add_argument("--epochs", type=int, default=defaults.pretrain_epochs, help="float pre-training epochs")
    parser.add_argument("--qat-epochs", type=int, default=defaults.qat_epochs)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--unlearn-epochs", type=int, default=None, help="override every method's default")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--device", default=defaults.device)
    parser.add_argument("--backend", default=defaults.backend, choices=("auto", *BACKENDS))


def _add_run(subparsers) -> None:
    from intunlearn.unlearning.engine import ExperimentConfig
    from intunlearn.unlearning.methods import METHODS
    from intunlearn.unlearning.methods.base import TUNE_FACTORS

    defaults = ExperimentConfig()
    parser = subparsers.add_parser(
        "run", help="the fidelity study: unlearn with each method over seeds and pipelines; does forgetting "
                    "survive integer deployment?",
        description="For every seed and pipeline (float, fake-quant or true-integer training and unlearning), "
                    "train (or load from cache) the original and retrained models, unlearn the forget set with "
                    "each method, and evaluate every result as unlearned and as deployed in integer arithmetic. "
                    "Prints mean ± 95% interval tables; writes results.json, results.csv (one row per seed x "
                    "pipeline x method x evaluation), report.md and plots to --out, and each experiment's own "
                    "results under --out/units. Resumes an interrupted study.")
    _add_model_options(parser, defaults)
    parser.add_argument("--seeds", type=_seeds, default=None,
                        help="N (seeds 0..N-1) or a comma-separated list (default: 3, i.e. 0,1,2); each seed "
                             "redraws the forget set and the training randomness")
    parser.add_argument("--seed", type=int, default=None, help="one seed (the same as --seeds S,)")
    parser.add_argument("--pipelines", type=_pipelines, default=PIPELINES,
                        help="comma-separated, from float, fake, integer (default: all three): where training "
                             "and unlearning compute; every model is also evaluated as deployed")
    parser.add_argument("--unlearn-lr", type=_learning_rates, default=(None,),
                        help="override every method's default learning rate; a comma-separated list sweeps it")
    parser.add_argument("--methods", default=",".join(defaults.methods),
                        help=f"comma-separated, from: {', '.join(METHODS)}")
    parser.add_argument("--tune", nargs="?", type=_tune_factors, const=TUNE_FACTORS, default=(), metavar="F,F,...",
                        help="search each method's learning rate over these multiples of its default (default "
                             "1/3,1,3) and keep the candidate with the lowest forget accuracy among those within 5 "
                             "points of the original's accuracy on a held-out 5%% of the retain set; never looks "
                             "at the test set (README: Method defaults). Excludes --unlearn-lr")
    parser.add_argument("--out", default="runs/latest", help="output folder (default: %(default)s)")
    parser.add_argument("--cache-dir", default=None,
                        help="where trained original/retrained models are cached (default: OUT/../cache)")
    parser.add_argument("--export", metavar="DIR", default=None,
                        help="also write the original, retrained and every unlearned model as DIR/NAME.tflite "
                             "(activation scales rounded to float32 first, as the files store them)")
    parser.add_argument("--executor", choices=("local", "ray"), default="local",
                        help="where the study's units run: local (in this process, one after another; the "
                             "default) or ray (Ray tasks on this machine, or on a cluster with --ray-address; "
                             "needs the distributed extra)")
    parser.add_argument("--ray-address", default=None, metavar="ADDR",
                        help="join the Ray cluster at ADDR (as `ray start --head` printed it, or auto) instead "
                             "of starting Ray here")
    parser.add_argument("--cpus-per-task", type=positive_int_option, default=None, metavar="N",
                        help="CPUs (and compute threads) per unit of work (default: all cores for local, 1 for "
                             "ray); float results depend on it, so runs compare bit for bit only with the same N")
    parser.add_argument("--mia", choices=("efficacy", "ulira"), default="efficacy",
                        help="efficacy: the population attack every experiment reports (MIA-Efficacy); ulira: "
                             "also the per-example attack U-LiRA with --shadows shadow models per pipeline, "
                             "written to OUT/ulira (random forgetting only)")
    parser.add_argument("--shadows", type=positive_int_option, default=16, metavar="K",
                        help="U-LiRA's shadow models per pipeline (default: %(default)s; at least 5)")
    parser.add_argument("--ulira-pool", type=positive_int_option, default=200, metavar="N",
                        help="U-LiRA's target pool: N training examples the shadows unlearn (default: %(default)s)")
    parser.set_defaults(handler=_run_experiment)


PIPELINES = ("float", "fake", "integer")


def _comma_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _seeds(text: str) -> tuple[int, ...]:
    """"N" -> 0..N-1; "a,b,..." -> those seeds."""
    try:
        if "," not in text:
            count = int(text)
            if count < 1:
                raise ValueError
            return tuple(range(count))
        seeds = tuple(int(part) for part in _comma_list(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a count N >= 1 or a comma-separated list of seeds, "
                                         f"got {text!r}") from None
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"seeds must be distinct integers >= 0, got {text!r}")
    return seeds


def _pipelines(text: str) -> tuple[str, ...]:
    names = tuple(_comma_list(text))
    unknown = [name for name in names if name not in PIPELINES]
    if not names or unknown or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"must be distinct names from {', '.join(PIPELINES)}, got {text!r}")
    return names


def _learning_rates(text: str) -> tuple[float, ...]:
    try:
        rates = tuple(float(part) for part in _comma_list(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number or a comma-separated list, got {text!r}") from None
    if not rates or any(not (rate > 0 and rate != float("inf")) for rate in rates) or len(set(rates)) != len(rates):
        raise argparse.ArgumentTypeError(f"learning rates must be distinct finite numbers > 0, got {text!r}")
    return rates


def _tune_factors(text: str) -> tuple[float, ...]:
    try:
        factors = tuple(float(part) for part in _comma_list(text))
    except ValueError:
        factors = ()
    if len(factors) < 2 or len(set(factors)) != len(factors) or not all(0 < f < float("inf") for f in factors):
        raise argparse.ArgumentTypeError(f"must be at least two distinct finite numbers > 0, comma-separated "
                                         f"(multiples of each method's default learning rate), got {text!r}")
    return factors


def _config(args, methods=None, arithmetic="integer", seed=0, unlearn_lr=None):
    from intunlearn.unlearning.engine import ExperimentConfig

    if methods is None:
        methods = tuple(_comma_list(args.methods))
    if args.model.startswith("tflite:"):
        weight_bits = _tflite_weight_bits(args)
    else:
        weight_bits = ExperimentConfig.weight_bits if args.weight_bits is None else args.weight_bits
    return ExperimentConfig(
        dataset=args.dataset, data_root=args.data_root, model=args.model, width=args.width,
        weight_bits=weight_bits, arithmetic=arithmetic, forget=args.forget, methods=methods,
        pretrain_epochs=args.epochs, qat_epochs=args.qat_epochs, lr=args.lr, unlearn_epochs=args.unlearn_epochs,
        unlearn_lr=unlearn_lr, batch_size=args.batch_size, seed=seed, device=args.device,
        backend=args.backend, tune=getattr(args, "tune", ()))


def _study(args):
    from intunlearn.unlearning.study import StudyConfig

    if args.seed is not None and args.seeds is not None:
        raise ValueError("give --seeds or --seed, not both")
    seeds = (args.seed,) if args.seed is not None else args.seeds or (0, 1, 2)
    pipelines = args.pipelines
    if args.model.startswith("tflite:") and "float" in pipelines:
        if args.pipelines is PIPELINES:  # the default: an imported model is already quantized
            pipelines = ("fake", "integer")
        else:
            raise ValueError("a tflite: model is already quantized: --pipelines may name fake and integer only")
    return StudyConfig(base=_config(args), seeds=seeds, pipelines=pipelines, unlearn_lrs=args.unlearn_lr)


def _tflite_weight_bits(args) -> int:
    """The weight width of a tflite: model, read from its file; --weight-bits and --width, which
    say how a model built here is made, are refused rather than ignored."""
    from pathlib import Path

    from intunlearn.unlearning.engine import ExperimentConfig, tflite_weight_bits

    given = [option for option, value in (("--weight-bits", args.weight_bits), ("--width", args.width))
             if value is not None]
    if given:
        raise ValueError(f"{' and '.join(given)} set how a model built here is made; --model {args.model} is the "
                         f"file's model, with its own weights and widths: leave {' and '.join(given)} out")
    path = Path(args.model[len("tflite:"):])
    if not path.is_file():
        raise ValueError(f"model: {path} is not a .tflite file (--model tflite:PATH)")
    # a file mixing widths (not one intunlearn writes) is described by its widest
    return max(tflite_weight_bits(path), default=ExperimentConfig.weight_bits)


def _run_experiment(args) -> int:
    from pathlib import Path

    from intunlearn.unlearning.study import run_study
    from intunlearn.unlearning.study_report import format_report

    from intunlearn.executors import make_executor

    out = Path(args.out)
    cache = Path(args.cache_dir) if args.cache_dir else out.parent / "cache"
    study = _study(args)
    study.validate()  # before Ray starts
    ulira = _ulira_check(args, study) if args.mia == "ulira" else None
    with make_executor(args.executor, cpus_per_task=args.cpus_per_task, address=args.ray_address,
                       device=args.device) as executor:
        results = run_study(study, out, cache, export_dir=args.export, executor=executor)
        print(format_report(results))
        print(f"\nwrote {out / 'report.md'}, {out / 'results.json'}, {out / 'results.csv'}, "
              f"{out / 'study-gap.png'}, {out / 'study-shift.png'} (each experiment: {out / 'units'})")
        if ulira is not None:
            from intunlearn.unlearning.ulira import report_markdown, run_ulira

            base = dataclasses.replace(study.base, seed=study.seeds[0])
            attack = run_ulira(base, out / "ulira", cache, pipelines=study.pipelines, shadows=args.shadows,
                               pool_size=args.ulira_pool, seed=study.seeds[0], executor=executor, data=ulira)
            print("\n" + report_markdown(attack))
            print(f"wrote {out / 'ulira' / 'ulira.md'}, {out / 'ulira' / 'ulira.json'}")
    if args.export:
        print(_export_summary(results.get("exports", {}), args.export))
    return 0


def _export_summary(exports: dict, folder) -> str:
    """What --export did: the files written by this run, and those an earlier run into the same
    folder had written (kept: their methods' results are the recorded ones)."""
    files = [entry for unit in exports.values() for entry in unit.values()]
    now = sum(entry["written"] == "now" for entry in files)
    text = f"exported {now} model(s) as .tflite under {folder}/<experiment>/"
    if now < len(files):
        text += f"; the other {len(files) - now} were there from an earlier run into {folder}"
    return text


def _ulira_check(args, study):
    """U-LiRA's options checked before the study trains anything; returns its data set."""
    from intunlearn.data import load_dataset
    from intunlearn.unlearning.ulira import check_inputs, plan_shadows

    check_inputs(study.base, study.pipelines)
    data = load_dataset(study.base.dataset, root=study.base.data_root, seed=study.seeds[0])
    plan_shadows(len(data.y_train), args.shadows, args.ulira_pool, study.seeds[0])
    return data


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
    parser.add_argument("--arithmetic", choices=("integer", "fake"), default="integer",
                        help="arithmetic of training and unlearning (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--unlearn-lr", type=float, default=None, help="override the method's default")
    parser.add_argument("--method", default=None, help="unlearn the forget set with this method first")
    parser.add_argument("--cache-dir", default="runs/cache", help="model cache (default: %(default)s)")
    parser.add_argument("--int4-format", choices=("auto", "packed", "int8"), default="auto",
                        help="4-bit weights: packed INT4 where TFLM runs it (auto), always packed, or int8 tensors")
    parser.set_defaults(handler=_run_export)


def _run_export(args) -> int:
    import copy

    from intunlearn.io import check_output_file
    from intunlearn.tflite import _schema, export_tflite
    from intunlearn.unlearning.engine import Experiment
    from intunlearn.unlearning.methods import get_method

    _schema()
    check_output_file(args.output, "output")
    methods = (args.method,) if args.method else ("ft",)
    config = _config(args, methods, arithmetic=args.arithmetic, seed=args.seed, unlearn_lr=args.unlearn_lr)
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
    model = tflite.load_tflite(data, source=str(path))
    dataset = load_dataset(args.dataset, root=args.data_root, seed=args.seed)
    shape = tuple(model.meta["tflite_input_shape"])
    if shape != tuple(dataset.input_shape):
        raise ValueError(f"{path} takes inputs of shape {shape}, the data set {args.dataset!r} has "
                         f"{tuple(dataset.input_shape)}")
    x, y = dataset.x_test[:args.samples], dataset.y_test[:args.samples]
    if args.samples > len(x):
        print(f"note: --samples {args.samples} is more than the {len(x)} test inputs of {args.dataset}; using all "
              f"{len(x)}")
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
    from intunlearn.io import check_output_file, write_json_atomic

    if args.json:
        check_output_file(args.json, "--json")
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
    except (ValueError, FileNotFoundError, NotImplementedError, ImportError) as error:
        print(f"intunlearn {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as error:  # Ctrl-C: one line, no traceback
        where, out = getattr(error, "where", None), getattr(error, "out", None)
        if where is None:
            print(f"\nintunlearn {args.command}: interrupted", file=sys.stderr)
        else:
            print(f"\nintunlearn {args.command}: interrupted in {where}; the finished work is kept in {out}: run "
                  f"the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
