"""The study's outputs: a tidy CSV, report.md (also what `intunlearn run` prints) and plots."""

from __future__ import annotations

import csv
import io
import math

from intunlearn.io import write_bytes_atomic
from intunlearn.unlearning import stats
from intunlearn.unlearning.report import TITLES

SHOWN = ("FA", "RA", "TA", "MIA", "gap")


def write_tidy_csv(path, results: dict) -> None:
    """One row per seed x pipeline x lr x method x evaluation."""
    buffer = io.StringIO()
    columns = ["seed", "pipeline", "unlearn_lr", "method", "evaluation", "as_unlearned",
               *results["metrics"], "gap_to_integer_retrain", "update_steps", "seconds", "method_lr", "tuned"]
    writer = csv.DictWriter(buffer, columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(results["rows"])
    write_bytes_atomic(path, buffer.getvalue().encode())


def _value(estimate, digits=1) -> str:
    """mean ± half-width of a summarised estimate (results.json's form), "-" where missing."""
    if estimate is None or estimate["mean"] is None or estimate["mean"] != estimate["mean"]:
        return "-"
    nan = float("nan")
    return stats.Estimate(estimate["mean"], nan if estimate["low"] is None else estimate["low"],
                          nan if estimate["high"] is None else estimate["high"], estimate["n"]).format(digits)


def _shift(shift, digits=1) -> str:
    """Signed mean ± half-width; * where the interval excludes zero."""
    if shift is None:
        return "-"
    text = f"{shift['mean']:+.{digits}f}"
    if shift["n"] >= 2 and shift["low"] == shift["low"]:
        text += f" ± {(shift['high'] - shift['low']) / 2:.{digits}f}"
        if shift["low"] > 0 or shift["high"] < 0:
            text += " *"
    return text


def _cell_legend(seeds) -> str:
    """What a table cell holds: with one seed its value (there is no interval), else the mean
    and the half-width of its 95% interval."""
    if len(seeds) == 1:
        return (f"Seed {seeds[0]} (n = 1): every cell is that seed's value; one seed gives no interval (run "
                f"--seeds 3 or more for means with 95% intervals), so no two figures can be told apart.")
    return (f"Seeds {', '.join(map(str, seeds))} (n = {len(seeds)}); every cell is the mean over seeds ± the "
            f"half-width of its 95% Student-t interval.")


def _shift_legend(seeds) -> str:
    if len(seeds) == 1:
        return "shift = deployed - as unlearned."
    return "shift = deployed - as unlearned, paired by seed; * where its interval excludes 0."


def format_report(results: dict) -> str:
    study, base = results["study"], results["study"]["base"]
    lrs = study["unlearn_lrs"]
    lines = [f"# Fidelity study: {base['dataset']} / {base['model']}, {base['weight_bits']}-bit weights, "
             f"forget {base['forget']}",
             "",
             _cell_legend(study["seeds"]) + " \"as unlearned\": the pipeline's own "
             f"arithmetic; \"deployed\": integer arithmetic with float32 scales (float pipeline: post-training "
             f"quantization). " + _shift_legend(study["seeds"]) + " "
             f"gap: mean |metric - retrain's| over FA, RA, TA, MIA (the same pipeline's retrain, same "
             f"evaluation). steps: median |Δw| / s_w of the unlearning update, in weight quantization steps.",
             ""]
    by_key = {(e["pipeline"], e["unlearn_lr"], e["method"]): e for e in results["summary"]}
    best = {(b["pipeline"], b["unlearn_lr"]): b["best"] for b in results["best"]}
    for pipeline in study["pipelines"]:
        for lr in lrs:
            lr_text = "" if lr is None else f", unlearning lr {lr:g}"
            lines += [f"## {pipeline} pipeline{lr_text}", "",
                      "| method | " + " | ".join(f"{m} {TITLES.get(pipeline, pipeline)}" if m == "FA" else m
                                                   for m in SHOWN)
                      + " | " + " | ".join(f"{m} deployed" for m in SHOWN)
                      + " | ΔFA | ΔMIA | Δgap | steps |",
                      "|" + " --- |" * (1 + 2 * len(SHOWN) + 4)]
            for method in results["methods"]:
                entry = by_key.get((pipeline, lr, method))
                if entry is None:
                    continue
                cells = [_value(entry[m]["as_unlearned"]) for m in SHOWN]
                cells += [_value(entry[m]["deployed"]) for m in SHOWN]
                cells += [_shift(entry[m]["shift"]) for m in ("FA", "MIA", "gap")]
                cells.append(_value(entry["update_steps"]["deployed"], 2))
                lines.append(f"| {method} | " + " | ".join(cells) + " |")
            if (pipeline, lr) in best:
                lines += ["", f"Closest to retrain as deployed (paired 95% intervals against every other "
                              f"method): **{best[(pipeline, lr)]}**."]
            lines.append("")
    lines += _learning_rate_lines(results)
    comparisons = results["pipeline_comparisons"]
    if comparisons:
        lines += ["## Pipelines compared: gap as deployed, paired by seed", "",
                  "| method | lr | a - b | difference | p (paired t) | |", "| --- | --- | --- | --- | --- | --- |"]
        for c in comparisons:
            d = c["difference"]
            verdict = "distinguishable" if c["distinguishable"] else "not distinguishable"
            p = "-" if c["p_value"] is None or c["p_value"] != c["p_value"] else f"{c['p_value']:.3f}"
            lr = "default" if c["unlearn_lr"] is None else f"{c['unlearn_lr']:g}"
            lines.append(f"| {c['method']} | {lr} | {c['a']} - {c['b']} | {_shift({**d, 'n': d['n']})} | {p} | {verdict} |")
        lines.append("")
    machine = results["machine"]
    lines.append(f"Machine: {machine.get('platform')}, torch {machine.get('torch')}.")
    return "\n".join(lines)


def _learning_rate_lines(results: dict) -> list[str]:
    """A table of the learning rate each method ran with, per seed, where any was tuned
    (--tune); without tuning every seed runs the method's default (or --unlearn-lr), stated in
    results.json."""
    entries = [e for e in results["summary"] if (e.get("method_lr") or {}).get("tuned")]
    if not entries:
        return []
    seeds = results["study"]["seeds"]
    lines = ["## Learning rates chosen by --tune (per seed)", "",
             "| pipeline | method | " + " | ".join(f"seed {seed}" for seed in seeds) + " |",
             "|" + " --- |" * (2 + len(seeds))]
    for entry in entries:
        cells = ["-" if lr is None else f"{lr:.3g}" for lr in entry["method_lr"]["per_seed"]]
        lines.append(f"| {entry['pipeline']} | {entry['method']} | " + " | ".join(cells) + " |")
    return lines + [""]


def write_report(path, results: dict) -> None:
    write_bytes_atomic(path, (format_report(results) + "\n").encode())


def write_plots(out_dir, results: dict) -> None:
    """study-gap.png: gap as deployed per method and pipeline; study-shift.png: deployment shift
    of FA and MIA per method and pipeline; error bars are the 95% intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    study = results["study"]
    lr = study["unlearn_lrs"][0]
    methods = [m for m in results["methods"] if m != "retrain"]
    pipelines = study["pipelines"]
    by_key = {(e["pipeline"], e["method"]): e for e in results["summary"] if e["unlearn_lr"] == lr}

    def bars(panel, metric, part, label):
        width = 0.8 / len(pipelines)
        for index, pipeline in enumerate(pipelines):
            means, errors = [], []
            for method in methods:
                cell = by_key[(pipeline, method)][metric][part] if (pipeline, method) in by_key else None
                means.append(math.nan if cell is None else cell["mean"])
                half = math.nan if cell is None or cell["n"] < 2 else (cell["high"] - cell["low"]) / 2
                errors.append(0.0 if half != half else half)
            positions = [i + (index - (len(pipelines) - 1) / 2) * width for i in range(len(methods))]
            panel.bar(positions, means, width, yerr=errors, capsize=2, label=pipeline)
        panel.set_xticks(range(len(methods)), methods, rotation=30)
        panel.set_ylabel(label)
        panel.grid(axis="y", alpha=0.3)
        panel.axhline(0, color="black", linewidth=0.6)

    base = study["base"]
    title = (f"{base['dataset']} / {base['model']} / {base['weight_bits']}-bit, forget {base['forget']}, "
             f"{len(study['seeds'])} seeds (95% intervals)")
    figure, panel = plt.subplots(figsize=(9, 3.8))
    bars(panel, "gap", "deployed", "gap to retrain as deployed (%)")
    panel.legend(title="pipeline")
    figure.suptitle(title)
    figure.tight_layout()
    _save(figure, out_dir / "study-gap.png", plt)

    figure, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    bars(axes[0], "FA", "shift", "deployment shift of FA (points)")
    bars(axes[1], "MIA", "shift", "deployment shift of MIA-Efficacy (points)")
    axes[0].legend(title="pipeline")
    figure.suptitle(title)
    figure.tight_layout()
    _save(figure, out_dir / "study-shift.png", plt)


def _save(figure, path, plt) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    write_bytes_atomic(path, buffer.getvalue())
