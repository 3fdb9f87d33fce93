"""The fidelity study: does forgetting survive integer deployment?

A study crosses seeds x pipelines x unlearning learning rates; each combination is one
experiment (intunlearn.unlearning.engine: an original and a retrained model of that pipeline,
every method unlearning a copy of the original), and each (experiment, method) is one unit of
work, recorded as it finishes so that a killed study resumes where it stopped.

Pipelines say where training and unlearning compute; every model is evaluated as unlearned (in
its pipeline's own arithmetic) and as deployed (integer arithmetic, activation scales rounded to
float32 as a .tflite file stores them):

    float    train + unlearn in float32          -> deployed by post-training quantization
    fake     QAT + unlearning in fake-quant       -> deployed with the same parameters
    integer  QAT + unlearning in true integer     -> deployed with the same parameters

The deployment shift of a metric is deployed - as unlearned, per seed (a rise in forget
accuracy, or a fall in MIA-Efficacy, means forgotten data came back). Every figure is reported
as the mean over seeds with a 95% Student-t interval (intunlearn.unlearning.stats); a method is
called best only where the paired intervals say so.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from intunlearn.io import check_writable, write_json_atomic
from intunlearn.unlearning import stats
from intunlearn.unlearning.engine import (DEPLOYED, PIPELINES, ExperimentConfig, Interrupted, UnitPlan,
                                          lock_output, run_units)
from intunlearn.unlearning.metrics import average_gap

BASELINES = ("original", "retrain")


class Unit(NamedTuple):
    """One experiment of the study: a seed, a pipeline and an unlearning learning rate (None:
    each method's default)."""

    seed: int
    pipeline: str
    unlearn_lr: float | None

    @property
    def name(self) -> str:
        lr = "" if self.unlearn_lr is None else f"-lr{self.unlearn_lr:g}"
        return f"seed{self.seed}-{self.pipeline}{lr}"


@dataclass(frozen=True)
class StudyConfig:
    """The experiment every unit shares (its seed, arithmetic and unlearn_lr are the unit's),
    and the study's axes."""

    base: ExperimentConfig = ExperimentConfig()
    seeds: tuple[int, ...] = (0, 1, 2)
    pipelines: tuple[str, ...] = PIPELINES
    unlearn_lrs: tuple[float | None, ...] = (None,)

    def validate(self) -> "StudyConfig":
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) \
                or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in self.seeds):
            raise ValueError(f"seeds must be distinct integers >= 0, at least one, got {self.seeds}")
        if not self.pipelines or len(set(self.pipelines)) != len(self.pipelines) \
                or not set(self.pipelines) <= set(PIPELINES):
            raise ValueError(f"pipelines must be distinct names from {PIPELINES}, at least one, got "
                             f"{self.pipelines}")
        if not self.unlearn_lrs or len(set(self.unlearn_lrs)) != len(self.unlearn_lrs) or not all(
                lr is None or (isinstance(lr, float) and math.isfinite(lr) and lr > 0) for lr in self.unlearn_lrs):
            raise ValueError(f"unlearn learning rates must be distinct finite positive numbers, got "
                             f"{self.unlearn_lrs}")
        for unit in self.units():
            self.experiment(unit).validate()
        return self

    def units(self) -> list[Unit]:
        return [Unit(*values) for values in itertools.product(self.seeds, self.pipelines, self.unlearn_lrs)]

    def experiment(self, unit: Unit) -> ExperimentConfig:
        return dataclasses.replace(self.base, seed=unit.seed, arithmetic=unit.pipeline,
                                   unlearn_lr=unit.unlearn_lr)


def run_study(study: StudyConfig, out_dir, cache_dir, data=None, export_dir=None, executor=None) -> dict:
    """Run (or resume) every unit on `executor` (intunlearn.executors; default: in this process,
    one after another), then write results.json (every figure per seed and as mean with
    interval), results.csv (one row per seed x pipeline x lr x method x evaluation), report.md
    and the plots to out_dir. Returns the results.

    Before any work: the configuration, the backend, and that out_dir and cache_dir can be
    written; out_dir is locked for the study (a second run into it stops at once, naming the
    process that holds it). Ctrl-C raises engine.Interrupted, which says where it stopped."""
    study.validate()
    out_dir = Path(out_dir)
    check_writable(out_dir, "out")
    check_writable(cache_dir, "cache")
    if export_dir is not None:
        check_writable(export_dir, "export")
    lock = lock_output(out_dir)
    try:
        plan = study.units()
        plans = [UnitPlan(study.experiment(unit), out_dir / "units" / unit.name,
                          None if export_dir is None else Path(export_dir) / unit.name, False,
                          f"experiment {index + 1} of {len(plan)} ({unit.name})")
                 for index, unit in enumerate(plan)]
        results = run_units(plans, cache_dir, data=data, executor=executor, out=out_dir)
        try:
            return _write_results(study, dict(zip(plan, results)), out_dir)
        except KeyboardInterrupt:
            raise Interrupted("writing the study's results (every experiment had finished)", out_dir) from None
    finally:
        lock.release()


def _write_results(study, units, out_dir) -> dict:
    from intunlearn.unlearning.study_report import write_plots, write_report, write_tidy_csv

    results = summarise(study, units)
    write_json_atomic(out_dir / "results.json", results)
    write_tidy_csv(out_dir / "results.csv", results)
    write_report(out_dir / "report.md", results)
    write_plots(out_dir, results)
    return results


def tidy_rows(units: dict[Unit, dict]) -> list[dict]:
    """One row per unit x method x evaluation: the metrics, the gap to the pipeline's retrain and
    to the integer pipeline's retrain (same seed and lr, as deployed), the update size."""
    integer_retrain = {}
    for unit, results in units.items():
        if unit.pipeline == "integer":
            for row in results["rows"]:
                if row["method"] == "retrain":
                    integer_retrain[(unit.seed, unit.unlearn_lr)] = row[DEPLOYED]
    rows = []
    for unit, results in units.items():
        metrics = results["metrics"]
        for row in results["rows"]:
            for evaluation in results["evaluations"]:
                values = row[evaluation]
                reference = integer_retrain.get((unit.seed, unit.unlearn_lr))
                gap_integer = None
                if reference is not None and evaluation == DEPLOYED:
                    gap_integer = average_gap(values, reference)
                rows.append({"seed": unit.seed, "pipeline": unit.pipeline, "unlearn_lr": unit.unlearn_lr,
                             "method": row["method"], "evaluation": evaluation,
                             "as_unlearned": evaluation == unit.pipeline,
                             **{m: values[m] for m in metrics}, "gap": values["gap"],
                             "gap_to_integer_retrain": gap_integer,
                             "update_steps": row.get("update_steps"), "seconds": row["seconds"],
                             "method_lr": row.get("lr"), "tuned": "tune" in row})
    return rows


def _estimate(values) -> dict | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return None
    estimate = stats.mean_interval(finite)
    return {"mean": estimate.mean, "low": estimate.low, "high": estimate.high, "n": estimate.n,
            "per_seed": list(values)}


def summarise(study: StudyConfig, units: dict[Unit, dict]) -> dict:
    first = next(iter(units.values()))
    results = summarise_rows(study, tidy_rows(units), list(first["metrics"]), first["machine"])
    exports = {unit.name: unit_results["exports"] for unit, unit_results in units.items() if "exports" in unit_results}
    if exports:  # each experiment's .tflite files (engine.run_units with export folders)
        results["exports"] = exports
    return results


def summarise_rows(study: StudyConfig, rows: list[dict], metric_names: list[str], machine: dict) -> dict:
    """The study's results from its tidy rows (tidy_rows; or read back from results.csv):
    every figure per seed and as mean with interval, the shifts, the best method and the
    pipeline comparisons."""
    metrics = list(metric_names) + ["gap"]
    methods = [m for m in dict.fromkeys(r["method"] for r in rows)]
    summary, best = [], []
    for pipeline, lr in itertools.product(study.pipelines, study.unlearn_lrs):
        def per_seed(method, evaluation, metric):
            values = {r["seed"]: r[metric] for r in rows if r["pipeline"] == pipeline and r["unlearn_lr"] == lr
                      and r["method"] == method and r["evaluation"] == evaluation}
            return [values.get(seed) for seed in study.seeds]

        for method in methods:
            entry = {"pipeline": pipeline, "unlearn_lr": lr, "method": method}
            for metric in metrics + ["gap_to_integer_retrain", "update_steps"]:
                unlearned, deployed = per_seed(method, pipeline, metric), per_seed(method, DEPLOYED, metric)
                entry[metric] = {"as_unlearned": _estimate(unlearned), "deployed": _estimate(deployed)}
                if metric in metrics:
                    entry[metric]["shift"] = _shift(unlearned, deployed)
            entry["method_lr"] = _learning_rates(study, rows, pipeline, lr, method)
            summary.append(entry)
        candidates = {m: per_seed(m, DEPLOYED, "gap") for m in methods if m not in BASELINES}
        complete = {m: v for m, v in candidates.items() if all(x is not None for x in v)}
        if len(complete) >= 2:
            best.append({"pipeline": pipeline, "unlearn_lr": lr, "by": "gap as deployed (lower is better)",
                         "best": stats.best(complete, lower_is_better=True)})
    return {"study": {"seeds": list(study.seeds), "pipelines": list(study.pipelines),
                      "unlearn_lrs": list(study.unlearn_lrs), "base": dataclasses.asdict(study.base)},
            "metrics": metrics, "methods": methods, "rows": rows, "summary": summary, "best": best,
            "pipeline_comparisons": _pipeline_comparisons(study, rows, methods),
            "machine": machine}


def _learning_rates(study, rows, pipeline, unlearn_lr, method) -> dict | None:
    """The learning rate `method` ran with in each seed (its default, --unlearn-lr, or the one
    --tune chose) and whether it was tuned; None for methods without one (original, retrain)."""
    used = {r["seed"]: (r.get("method_lr"), bool(r.get("tuned"))) for r in rows
            if r["pipeline"] == pipeline and r["unlearn_lr"] == unlearn_lr and r["method"] == method
            and r["evaluation"] == pipeline}
    per_seed = [used.get(seed, (None, False)) for seed in study.seeds]
    if all(lr is None for lr, _ in per_seed):
        return None
    return {"per_seed": [lr for lr, _ in per_seed], "tuned": any(tuned for _, tuned in per_seed)}


def _shift(unlearned, deployed) -> dict | None:
    """deployed - as unlearned, paired by seed."""
    pairs = [(a, b) for a, b in zip(unlearned, deployed) if a is not None and b is not None
             and math.isfinite(a) and math.isfinite(b)]
    if not pairs:
        return None
    comparison = stats.paired_comparison([b for _, b in pairs], [a for a, _ in pairs])
    d = comparison.difference
    return {"mean": d.mean, "low": d.low, "high": d.high, "n": d.n, "p_value": comparison.p_value}


def _pipeline_comparisons(study, rows, methods) -> list[dict]:
    """For each method: the deployed gap of each pair of pipelines, paired by seed."""
    comparisons = []
    for lr, method in itertools.product(study.unlearn_lrs, [m for m in methods if m != "retrain"]):
        gaps = {}
        for pipeline in study.pipelines:
            values = {r["seed"]: r["gap"] for r in rows if r["pipeline"] == pipeline and r["unlearn_lr"] == lr
                      and r["method"] == method and r["evaluation"] == DEPLOYED}
            if len(values) == len(study.seeds) and all(v is not None for v in values.values()):
                gaps[pipeline] = [values[seed] for seed in study.seeds]
        for a, b in itertools.combinations(gaps, 2):
            comparison = stats.paired_comparison(gaps[a], gaps[b])
            d = comparison.difference
            comparisons.append({"unlearn_lr": lr, "method": method, "a": a, "b": b,
                                "metric": "gap as deployed", "difference": {"mean": d.mean, "low": d.low,
                                                                             "high": d.high, "n": d.n},
                                "p_value": comparison.p_value, "distinguishable": comparison.distinguishable})
    return comparisons
