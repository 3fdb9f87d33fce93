"""The GPU benchmark script runs end to end (tiny shapes; on the CPU through Triton's interpreter
when there is no GPU), so that the one command a GPU session runs is known to work."""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import sys

import pytest
import torch

pytest.importorskip("triton")
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("no CUDA and TRITON_INTERPRET is not 1", allow_module_level=True)

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "bench_triton.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("bench_triton", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_bench_triton_smoke_run_checks_exactness_and_writes_every_section(tmp_path):
    bench = _load_script()
    out = tmp_path / "smoke.json"
    returned = bench.main(["--smoke", "--out", str(out)])
    written = json.loads(out.read_text())
    plan = bench.PLANS["smoke"]
    assert written["mode"] == "smoke"
    # int8 and int4: each linear check shape and the conv
    assert len(written["bit_exact_with_reference"]) == 2 * (len(plan.check_linear) + 1)
    assert [row["shape"] for row in written["int8_gemm"]] == [[s, s, s] for s in plan.gemm_sizes]
    assert [(row["input_zero_point"], row["shape"][0]) for row in written["int4_weight_gemm_small_m"]] \
        == [(z, m) for z in (0, -128) for m in plan.int4_rows]
    assert [row["layer"] for row in written["conv_resnet18_cifar"]] == [l[0] for l in plan.conv_layers]
    timings = [row[key] for section in ("int8_gemm", "int4_weight_gemm_small_m", "conv_resnet18_cifar")
               for row in written[section] for key in row if key.endswith("_ms")]
    assert timings and all(t > 0 for t in timings)
    assert returned["int8_gemm"] == written["int8_gemm"]


def test_bench_triton_peak_table_matches_device_names():
    bench = _load_script()
    assert bench.peak_int8_tops("NVIDIA H100 80GB HBM3") == 1979.0
    assert bench.peak_int8_tops("NVIDIA H100 PCIe") == 1513.0
    assert bench.peak_int8_tops("NVIDIA H200") == 1979.0
    assert bench.peak_int8_tops("NVIDIA A100-SXM4-80GB") is None


def test_bench_triton_refuses_a_wrong_kernel(tmp_path, monkeypatch):
    bench = _load_script()
    from intunlearn import ops
    real_qlinear = ops.qlinear

    def off_by_one(*args, backend="auto", **kwargs):
        out = real_qlinear(*args, backend=backend, **kwargs)
        return out ^ 1 if backend == "triton" else out

    monkeypatch.setattr(ops, "qlinear", off_by_one)
    with pytest.raises(SystemExit, match="differs from the reference"):
        bench.main(["--smoke", "--out", str(tmp_path / "never.json")])
    assert not (tmp_path / "never.json").exists()


def test_bench_triton_checks_the_timed_outputs_too(tmp_path, monkeypatch):
    """The timed calls go to the kernel launchers; their outputs are spot-checked as well."""
    bench = _load_script()
    from intunlearn.kernels import gpu
    real_qlinear = gpu.qlinear
    calls = []

    def wrong_after_the_exactness_check(*args, in_features, **kwargs):
        output = real_qlinear(*args, in_features=in_features, **kwargs)
        if in_features != bench.PLANS["smoke"].gemm_sizes[0]:
            return output  # the exactness checks (other K) pass
        calls.append(1)
        return output ^ 1

    monkeypatch.setattr(gpu, "qlinear", wrong_after_the_exactness_check)
    with pytest.raises(SystemExit, match="int8 GEMM .* differs from the reference"):
        bench.main(["--smoke", "--out", str(tmp_path / "never.json")])
    assert calls and not (tmp_path / "never.json").exists()
