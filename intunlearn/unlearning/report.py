"""The experiment's table (terminal and CSV) and plot."""

from __future__ import annotations

import csv
import io

from intunlearn.io import write_bytes_atomic

ARITHMETICS = ("integer", "fake")


def _missing(value) -> bool:
    """None (no retrain to compare with), or NaN (a metric with too few samples to measure)."""
    return value is None or value != value


def _cell(value, digits=1):
    return "-" if _missing(value) else f"{value:.{digits}f}"


def format_table(results: dict) -> str:
    """One line per method: FA RA TA MIA and the average gap to retrain, integer | fake, and the
    gap difference (integer - fake)."""
    metrics = results["metrics"]
    header = (f"{'method':<9}" + "".join(f"{m:>7}" for m in metrics) + f"{'gap':>7}  |"
              + "".join(f"{m:>7}" for m in metrics) + f"{'gap':>7}  |{'Δgap':>7}{'time s':>8}")
    title = f"{'':<9}{'integer arithmetic':^{7 * (len(metrics) + 1)}}  |{'fake quantization':^{7 * (len(metrics) + 1)}}  |"
    lines = [title, header, "-" * len(header)]
    for row in results["rows"]:
        cells = []
        for arithmetic in ARITHMETICS:
            values = row[arithmetic]
            cells.append("".join(f"{_cell(values[m]):>7}" for m in metrics) + f"{_cell(values['gap']):>7}")
        gaps = [row[a]["gap"] for a in ARITHMETICS]
        delta = None if any(_missing(gap) for gap in gaps) else gaps[0] - gaps[1]
        lines.append(f"{row['method']:<9}{cells[0]}  |{cells[1]}  |{_cell(delta, 2):>7}{row['seconds']:>8.1f}")
    return "\n".join(lines)


def write_csv(path, results: dict) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    columns = [*results["metrics"], "gap"]
    writer.writerow(["method", *(f"{a}_{c}" for a in ARITHMETICS for c in columns), "seconds"])
    for row in results["rows"]:
        writer.writerow([row["method"], *(row[a][c] for a in ARITHMETICS for c in columns), row["seconds"]])
    write_bytes_atomic(path, buffer.getvalue().encode())


def write_plot(path, results: dict) -> None:
    """Bar chart: average gap to retrain per method, integer vs fake quantization (plus FA)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [row for row in results["rows"] if row["method"] not in ("retrain",)]
    names = [row["method"] for row in rows]
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    width = 0.38
    positions = range(len(rows))
    for panel, (metric, label) in zip(axes, (("gap", "average gap to retrain (%)"), ("FA", "forget accuracy (%)"))):
        for offset, arithmetic in ((-width / 2, "integer"), (width / 2, "fake")):
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
