"""U-LiRA on digits: K shadows, every default method, the three pipelines, on a local Ray.

    python benchmarks/ulira_digits.py --out benchmarks/results/ulira --cache ~/.cache/intunlearn-ulira \\
        --shadows 16 --pool 200 --cpus 2

Writes ulira.json / ulira.md (intunlearn.unlearning.ulira.run_ulira) and run.json (the command's
settings, wall time, load average before and after, machine) to --out. Resumable: the same
command skips finished shadows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from intunlearn.executors import LocalExecutor, RayExecutor
from intunlearn.unlearning.engine import PIPELINES, ExperimentConfig
from intunlearn.unlearning.ulira import run_ulira
from machine import cpu_model, load_average






def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--cache", required=True)
    parser.add_argument("--shadows", type=int, default=16)
    parser.add_argument("--pool", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pipelines", default=",".join(PIPELINES))
    parser.add_argument("--methods", default=",".join(ExperimentConfig().methods))
    parser.add_argument("--cpus", type=int, default=2, help="Ray CPUs (one per task); 0: the local executor")
    args = parser.parse_args(argv)
    config = ExperimentConfig(methods=tuple(args.methods.split(",")))
    executor = LocalExecutor(threads=1) if args.cpus == 0 else RayExecutor(num_cpus=args.cpus, cpus_per_task=1)
    before, start = load_average(), time.perf_counter()
    try:
        results = run_ulira(config, args.out, args.cache, pipelines=tuple(args.pipelines.split(",")),
                            shadows=args.shadows, pool_size=args.pool, seed=args.seed, executor=executor)
    finally:
        executor.close()
    wall = time.perf_counter() - start
    run = {"command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]), "wall_seconds": round(wall, 1),
           "loadavg_before": before, "loadavg_after": load_average(), "executor": executor.name,
           "cpus": args.cpus, "machine": {"platform": platform.platform(), "cpu_model": cpu_model(),
                                          "cores": os.cpu_count()},
           "rows": len(results["rows"])}
    Path(args.out, "run.json").write_text(json.dumps(run, indent=2) + "\n")
    print(json.dumps(run, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
