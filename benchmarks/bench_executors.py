"""Whole-study wall time on the local executor and on Ray, in one run on one machine.

    python benchmarks/bench_executors.py [--rounds N] [--study "intunlearn run options"]

Runs the same study (default: 4 units, seeds 0-1 x the fake and integer pipelines, the
default methods) as separate `intunlearn run` processes, each with a fresh output folder and
a fresh model cache, so every model is trained in every run:

    local        the default executor: one unit after another, all cores as compute threads
    local-1      the local executor with --cpus-per-task 1 (what each Ray task gets)
    ray          --executor ray: a local Ray started by the run, one task per CPU

Times include everything the user waits for (imports, Ray's start, worker start-up). Numba's
kernels are compiled once by a warm-up run before any timing (its disk cache then serves
every process alike). Rounds alternate the order of the contenders. Checks that `ray` and
`local-1` computed the same models bit for bit (model SHA-256 in progress.json). Writes
benchmarks/results/executors-<date>.json with the machine and the load average.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import cpu_model, load_average, unused_result_path

RESULTS = Path(__file__).resolve().parent / "results"
STUDY = "--seeds 2 --pipelines fake,integer"
CONTENDERS = {"local": [], "local-1": ["--cpus-per-task", "1"], "ray": ["--executor", "ray"]}






def run_study(options: list[str], folder: Path) -> float:
    """Seconds one `intunlearn run` process takes, fresh output and cache in `folder`."""
    command = [sys.executable, "-m", "intunlearn.cli", "run", *options, "--out", str(folder / "out"),
               "--cache-dir", str(folder / "cache")]
    start = time.perf_counter()
    finished = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if finished.returncode != 0:
        raise SystemExit(f"{shlex.join(command)} failed ({finished.returncode}):\n{finished.stderr[-3000:]}")
    return seconds


def model_digests(out: Path) -> dict:
    return {unit.name: {name: entry.get("model_sha256") for name, entry in
                        json.loads((unit / "progress.json").read_text())["methods"].items()}
            for unit in sorted((out / "units").iterdir())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--study", default=STUDY, help="intunlearn run options (default: %(default)s)")
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    args = parser.parse_args()
    study = shlex.split(args.study)
    contenders = args.contenders.split(",")
    times = {name: [] for name in contenders}
    digests = {}
    with tempfile.TemporaryDirectory() as root:
        root = Path(root)
        print("warm-up (Numba compiles its kernels once) ...", flush=True)
        run_study(["--seeds", "1", "--pipelines", "fake,integer", "--epochs", "1", "--qat-epochs", "1",
                   "--unlearn-epochs", "1"], root / "warm-up")
        load_at_start = load_average()
        for round_index in range(args.rounds):
            order = contenders if round_index % 2 == 0 else contenders[::-1]
            for name in order:
                folder = root / f"{name}-{round_index}"
                seconds = run_study(study + CONTENDERS[name], folder)
                times[name].append(seconds)
                digests.setdefault(name, model_digests(folder / "out"))
                print(f"round {round_index + 1}: {name:8s} {seconds:7.1f} s  (load {load_average()[0]:.2f})",
                      flush=True)
    best = {name: min(values) for name, values in times.items()}
    report = {
        "study": args.study, "contenders": {name: CONTENDERS[name] for name in contenders},
        "seconds": times, "best_seconds": best,
        "speedup_vs_local": {name: best["local"] / best[name] for name in best} if "local" in best else None,
        "ray_models_equal_local_1": digests.get("ray") == digests.get("local-1")
        if {"ray", "local-1"} <= set(digests) else None,
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
                    "load_average_at_start": load_at_start, "load_average_at_end": load_average(),
                    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")},
    }
    RESULTS.mkdir(exist_ok=True)
    path = unused_result_path(RESULTS, f"executors-{datetime.date.today().isoformat()}")
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("best_seconds", "speedup_vs_local", "ray_models_equal_local_1")},
                     indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
