"""The Triton kernels compile for an H100 (sm_90) on a machine without a GPU, with the
instructions the design relies on: the int8 kernels use an s8 x s8 -> s32 tensor-core MMA (never
a float MMA) in a pipelined loop, and the fp32 backward uses no TF32 MMA (IEEE fp32).

The compiler needs the kernels as JIT functions, which TRITON_INTERPRET=1 (set for the other
Triton tests) replaces, so the compilation runs in a subprocess without it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

SCRIPT = """
import json
from intunlearn.kernels.gpu import aot
cases = [aot.qlinear_case(4096, 4096, 4096, int4=False), aot.qlinear_case(16, 4096, 4096, int4=True),
         aot.qconv2d_case(256, 128, 16, 128, int4=True), *aot.linear_backward_cases(256, 1024, 1024)]
reports = []
for case in cases:
    report = case.compile(case.configs[0])
    reports.append(dict(name=case.name, mma=report.mma, pipelined=report.pipelined,
                        shared=report.shared_bytes, spills=report.spill_bytes,
                        tf32="tf32" in report.ptx))
print(json.dumps(reports))
"""


@pytest.fixture(scope="module")
def reports():
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                            env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return {report["name"]: report for report in json.loads(result.stdout.splitlines()[-1])}


def test_integer_kernels_use_an_integer_mma(reports):
    integer = [report for name, report in reports.items() if name.startswith(("qlinear", "qconv"))]
    assert len(integer) == 3
    for report in integer:
        assert report["mma"], f"{report['name']}: no tensor-core MMA in the PTX"
        assert all(".s32.s8.s8" in instruction for instruction in report["mma"]), report
        assert report["pipelined"], report
        assert report["shared"] <= 227 * 1024, report
        assert report["spills"] == 0, report  # the first (largest) tile of each search space


def test_backward_keeps_ieee_fp32(reports):
    backward = [report for name, report in reports.items() if "grad" in name]
    assert len(backward) == 2
    for report in backward:
        assert not report["tf32"], report


def test_zero_point_outside_int8_conv_path_skips_the_tiles_that_spill_there():
    from intunlearn.kernels.gpu.configs import (TAP_CORRECTION_MAX_TILE, conv_configs,
                                                prune_conv_configs)

    space = conv_configs(interpret=False)
    common = prune_conv_configs(space, {}, TAP_CORRECTION=False)
    rare = prune_conv_configs(space, {}, TAP_CORRECTION=True)
    assert common == space
    assert rare and len(rare) < len(space)
    assert all(c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] <= TAP_CORRECTION_MAX_TILE for c in rare)
