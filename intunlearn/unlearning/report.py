"""The experiment's table (terminal and CSV) and plot."""

from __future__ import annotations

import csv
import io

from intunlearn.io import write_bytes_atomic

TITLES = {"integer": "integer arithmetic", "fake": "fake quantization", "float": "float",
          "deployed": "as deployed (integer)"}


def evaluations(results: dict) -> list[str]:
    """The evaluations the rows carry, in the order of the table (results from before the
    'deployed' evaluation have only integer and fake)."""
    return results.get("evaluations", ["integer", "fake"])


def _missing(value) -> bool:
    """None (no retrain to compare with), or NaN (a metric with too few samples to measure)."""
    return value is None or value != value


def _cell(value, digits=1):
    return "-" if _missing(value) else f"{value:.{digits}f}"


def format_table(results: dict) -> str:
    """One line per method: FA RA TA MIA and the average gap to retrain in each evaluation
    (the arithmetics the model computes in, then as deployed), and the time."""
    metrics, shown = results["metrics"], evaluations(results)
    block = 7 * (len(metrics) + 1)
    title = f"{'':<9}" + "".join(f"{TITLES.get(e, e):^{block}}  |" for e in shown)
    header = (f"{'method':<9}" + "".join("".join(f"{m:>7}" for m in metrics) + f"{'gap':>7}  |" for _ in shown)
              + f"{'time s':>8}")
    lines = [title, header, "-" * len(header)]
    for row in results["rows"]:
        cells = "".join("".join(f"{_cell(row[e][m]):>7}" for m in metrics) + f"{_cell(row[e]['gap']):>7}  |"
                        for e in shown)
        lines.append(f"{row['method']:<9}{cells}{row['seconds']:>8.1f}")
    return "\n".join(lines)


def write_csv(path, results: dict) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    columns, shown = [*results["metrics"], "gap"], evaluations(results)
    writer.writerow(["method", *(f"{e}_{c}" for e in shown for c in columns), "seconds"])
    for row in results["rows"]:
        writer.writerow([row["method"], *(row[e][c] for e in shown for c in columns), row["seconds"]])
    write_bytes_atomic(path, buffer.getvalue().encode())


def write_plot(path, results: dict) -> None:
    """Bar chart: average gap to retrain per method in each evaluation (plus FA)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [row for row in results["rows"] if row["method"] not in ("retrain",)]
    names = [row["method"] for row in rows]
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    shown = evaluations(results)
    width = 0.8 / len(shown)
    positions = range(len(rows))
    for panel, (metric, label) in zip(axes, (("gap", "average gap to retrain (%)"), ("FA", "forget accuracy (%)"))):
        for index, arithmetic in enumerate(shown):
            offset = (index - (len(shown) - 1) / 2) * width
            # a missing value draws no bar (a zero-height bar would read as a perfect gap)
            values = [float("nan") if _missing(row[arithmetic][metric]) else row[arithmetic][metric]
                      for row in rows]
            panel.bar([p + offset for p in positions], values, width, label=arithmetic)
        panel.set_xticks(list(positions), names)
        panel.set_ylabel(label)
        panel.grid(axis="y", alpha=0.3)
    axes[0].legend(title="evaluated in", loc="lower left")
    config = results["config"]
    figure.suptitle(f"{config['dataset']} / {config['model']} / {config['weight_bits']}-bit weights, "
                    f"forget {config['forget']}, unlearned in {config['arithmetic']} arithmetic")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    write_bytes_atomic(path, buffer.getvalue())
