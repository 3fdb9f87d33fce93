"""`intunlearn bench e2e`: seconds per unlearning epoch of the true-integer engine against the
same model and method in float fake-quantization (plain PyTorch ops) and in float, measured
in one run on one device, reported as ratios (the machine's noise cancels in a ratio)."""

from __future__ import annotations

import copy
import platform
import statistics
import time

import torch

import intunlearn
from intunlearn.data import load_dataset
from intunlearn.models import build_model
from intunlearn.unlearning.engine import ExperimentConfig
from intunlearn.unlearning.forget import forget_mask, parse_forget
from intunlearn.unlearning.methods import METHODS, UnlearnTask, get_method
from intunlearn.unlearning.study import StudyConfig
from intunlearn.unlearning.training import TrainConfig, train

ARITHMETICS = ("integer", "fake", "float")


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device) -> dict:
    info = {"platform": platform.platform(), "cpu": _cpu_name(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def time_unlearning_epochs(model, task: UnlearnTask, method_name: str, repeats: int) -> list[float]:
    """Wall seconds of `repeats` one-epoch unlearning runs (after one warm-up run)."""
    method = get_method(method_name)
    one_epoch = UnlearnTask(**{**task.__dict__, "epochs": 1})
    timings = []
    for index in range(repeats + 1):
        candidate = copy.deepcopy(model)
        if candidate.parameters().__next__().is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        method.unlearn(candidate, one_epoch)
        if candidate.parameters().__next__().is_cuda:
            torch.cuda.synchronize()
        if index:  # the first run compiles kernels and warms caches
            timings.append(time.perf_counter() - start)
    return timings


def benchmarkable_methods() -> tuple[str, ...]:
    """The methods with an unlearning epoch to time: those trained with a budget (retrain runs
    the original recipe instead)."""
    return tuple(name for name, method in METHODS.items() if method.tunable)


def check_benchmarkable(method: str) -> None:
    if method not in benchmarkable_methods():
        raise ValueError(f"method (--method) {method!r} has no unlearning epoch to time"
                         + (" (it retrains from scratch)" if method in METHODS else "")
                         + f"; choose one of {', '.join(benchmarkable_methods())}")


def run_e2e(*, dataset="digits", model_name="cnn", width=None, weight_bits=4, method="rl",
            forget="random:0.1", repeats=3, seed=0, device="cpu", data_root=None) -> dict:
    # Everything that can be refused is refused before the warm-up training, by the checks
    # `intunlearn run` applies to the same options.
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be >= 1 (an integer), got {repeats!r}")
    config = ExperimentConfig(dataset=dataset, data_root=data_root, model=model_name, width=width,
                              weight_bits=weight_bits, forget=forget, methods=(method,), seed=seed,
                              device=str(device))
    StudyConfig(base=config, seeds=(seed,), pipelines=("integer",)).validate()
    check_benchmarkable(method)
    method_unlearner = get_method(method)
    device = torch.device(device)
    data = load_dataset(dataset, root=data_root, seed=seed)
    spec = parse_forget(forget, data.num_classes)
    mask = forget_mask(spec, data.y_train, seed).to(device)
    x, y = data.x_train.to(device), data.y_train.to(device)
    task = UnlearnTask(x[mask], y[mask], x[~mask], y[~mask], data.num_classes, spec.mode, seed,
                       retrain_from_scratch=None)
    method_unlearner.check(task)  # e.g. a class-wise method with random forgetting
    torch.manual_seed(seed)
    float_model = build_model(model_name, data.input_shape, data.num_classes, width).to(device)
    train(float_model, x, y, TrainConfig(2, 0.05), seed=seed, desc="bench: float warm-up training")
    quantized = intunlearn.quantize(float_model, weight_bits=weight_bits, calibration=x[:1024])
    rows = {}
    for arithmetic in ARITHMETICS:
        model = intunlearn.set_arithmetic(copy.deepcopy(quantized), arithmetic)
        timings = time_unlearning_epochs(model, task, method, repeats)
        rows[arithmetic] = {"median_s": statistics.median(timings), "runs_s": timings}
    integer = rows["integer"]["median_s"]
    return {
        "benchmark": "e2e unlearning epoch", "dataset": dataset, "model": model_name, "width": width,
        "weight_bits": weight_bits, "method": method, "forget": forget, "samples_per_epoch": len(x),
        "device": str(device), "machine": machine_info(device), "date": time.strftime("%Y-%m-%d"),
        "seconds_per_epoch": rows,
        "ratios": {"integer_over_fake": integer / rows["fake"]["median_s"],
                   "integer_over_float": integer / rows["float"]["median_s"]},
    }


def format_e2e(result: dict) -> str:
    lines = [f"{result['dataset']} / {result['model']} / {result['weight_bits']}-bit weights, method "
             f"{result['method']}, one unlearning epoch on {result['device']} ({result['machine']['cpu']})",
             f"{'arithmetic':<12}{'s/epoch':>10}{'x integer':>11}"]
    integer = result["seconds_per_epoch"]["integer"]["median_s"]
    for arithmetic, row in result["seconds_per_epoch"].items():
        lines.append(f"{arithmetic:<12}{row['median_s']:>10.3f}{integer / row['median_s']:>11.2f}")
    return "\n".join(lines)
