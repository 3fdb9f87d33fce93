"""What the GPU compiler makes of the Triton kernels, on a machine without a GPU.

    python benchmarks/triton_compile_report.py     # ~2 min on 2 CPU cores, no GPU needed

Compiles every kernel over its whole Hopper autotuning space for sm_90 (H100/H200) with Triton's
compiler and the ptxas shipped in the triton wheel (``intunlearn.kernels.gpu.aot``), and records
per configuration: registers per thread, spill-store bytes, shared memory, whether the main loop
is software-pipelined (cp.async), and the tensor-core instructions in the PTX. Writes
``results/triton-compile-sm90-<date>.json`` and prints the markdown table of benchmarks/README.md.

This is not a timing: it is what can be checked of the GPU code until a GPU runs
``bench_triton.py``. A configuration that spills is pruned from the search space.
"""

from __future__ import annotations

import argparse
import datetime
import pathlib
import platform
import subprocess

import torch
import triton

from intunlearn.io import write_json_atomic
from intunlearn.kernels.gpu.aot import HOPPER, HOPPER_SHARED_MEMORY, hopper_cases


def ptxas_version() -> str:
    from triton.backends.nvidia.compiler import get_ptxas

    output = subprocess.run([get_ptxas(HOPPER).path, "--version"], capture_output=True,
                            text=True, check=True).stdout
    return output.strip().splitlines()[-1]


def block_sizes(meta: dict) -> str:
    keys = [key for key in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "BLOCK") if key in meta]
    return "x".join(str(meta[key]) for key in keys)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=None, help="JSON path")
    args = parser.parse_args(argv)

    rows = []
    for case in hopper_cases():
        for config in case.configs:
            report = case.compile(config)
            rows.append({
                "case": case.name, "kernel": report.kernel, "blocks": block_sizes(report.meta),
                "num_warps": report.num_warps, "num_stages": report.num_stages,
                "registers": report.registers, "spill_bytes": report.spill_bytes,
                "shared_bytes": report.shared_bytes, "pipelined": report.pipelined,
                "mma": list(report.mma),
            })
            print(f"{case.name:46s} {rows[-1]['blocks']:12s} w{report.num_warps} "
                  f"s{report.num_stages}: {report.registers} regs, {report.spill_bytes} B spilled, "
                  f"{report.shared_bytes // 1024} KiB shared", flush=True)
    results = {
        "machine": f"{platform.node()} ({platform.processor() or platform.machine()}), no GPU",
        "target": f"sm_{HOPPER} (H100/H200)", "torch": torch.__version__,
        "triton": triton.__version__, "ptxas": ptxas_version(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "configs": rows,
    }
    out = args.out or (pathlib.Path(__file__).parent / "results"
                       / f"triton-compile-sm{HOPPER}-{datetime.date.today().isoformat()}.json")
    write_json_atomic(out, results)
    print(f"wrote {out}\n")

    print("| case | blocks | warps/stages | registers | spilled | shared KiB | pipelined | MMA |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        mma = ", ".join(row["mma"]) or "none (FMA)"
        over = " (over the SM)" if row["shared_bytes"] > HOPPER_SHARED_MEMORY else ""
        print(f"| {row['case']} | {row['blocks']} | {row['num_warps']}/{row['num_stages']} | "
              f"{row['registers']} | {row['spill_bytes']} | {row['shared_bytes'] // 1024}{over} | "
              f"{'yes' if row['pipelined'] else 'no'} | `{mma}` |")


if __name__ == "__main__":
    main()
