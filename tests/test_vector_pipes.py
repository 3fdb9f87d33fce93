"""benchmarks/vector_pipes.py: its loops run and give physically possible rates."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "vector_pipes.py"


def _has_avx2_and_fma() -> bool:
    try:
        import llvmlite.binding as llvm
        features = llvm.get_host_cpu_features()
        return bool(features.get("avx2")) and bool(features.get("fma"))
    except Exception:  # noqa: BLE001 - not x86, or no feature query
        return False


@pytest.mark.skipif(not _has_avx2_and_fma(), reason="the probe's loops need AVX2 and FMA")
def test_rates_are_those_of_real_loops():
    spec = importlib.util.spec_from_file_location("vector_pipes", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.rates(steps=200_000, repeats=1)
    per_ns = result["instructions_per_ns"]
    # A loop optimized away would report absurd rates; no core issues 30 vector ops a ns.
    assert all(0.05 < rate < 30 for rate in per_ns.values()), per_ns
    # The madd+add loop issues the madd loop's multiplies and more: never meaningfully faster.
    assert per_ns["madd+add"] < 1.3 * per_ns["madd"], per_ns
    # The mixed loop's products per ns over the madd+add loop's: a ratio of two real rates.
    assert 0.2 < result["mixed_over_madd_add"] < 3, result
    assert result["int8_over_f32_ceiling"] == pytest.approx(16 * per_ns["madd+add"] / (8 * per_ns["fma"]))
