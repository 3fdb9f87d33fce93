"""Every Numba micro-kernel path, forced, is bit-exact with the reference oracle; the paths this
machine cannot run are at least compiled for a CPU that has them (AVX-VNNI, aarch64 dotprod).

The forced path is FORCE_ISA (INTUNLEARN_NUMBA_ISA in the environment): "avx2" runs on any x86
machine with AVX2, "vnni" and "avxvnni" only where the CPU has them (skipped elsewhere),
"dotprod" everywhere (its portable twin where there is no Arm sdot) and "generic" everywhere.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from intunlearn import ops
from strategies import conv_cases, int_array, linear_cases

pytest.importorskip("numba")

from intunlearn.backends import numba_cpu  # noqa: E402
from intunlearn.kernels.cpu import microkernel, microkernel_avx2, pair_gemm  # noqa: E402


@pytest.fixture(params=numba_cpu.ISAS)
def isa(request, monkeypatch):
    if not numba_cpu.isa_runs_here(request.param):
        pytest.skip(f"the {request.param} kernel needs a CPU feature this machine lacks")
    monkeypatch.setattr(numba_cpu, "FORCE_ISA", request.param)
    assert numba_cpu.kernel_isa() == request.param
    return request.param


_FORCED = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _both(op, *args, **kwargs):
    return op(*args, backend="numba", **kwargs), op(*args, backend="reference", **kwargs)


def _packed_if_drawn(case):
    weight = case["weight"]
    if case["packed"]:
        return ops.pack_int4(weight.reshape(weight.shape[0], -1))
    return weight


# Zero points at the ends of int8, of the int16 pair path (|z_x| <= 32640) and beyond it.
ZERO_POINTS = st.sampled_from([None, -128, 127, 255, pair_gemm.PAIR_ZERO_POINT_LIMIT,
                               -pair_gemm.PAIR_ZERO_POINT_LIMIT, 40000])


@settings(max_examples=30, **_FORCED)
@given(case=linear_cases(max_batch=20, max_in=140, max_out=70), input_zero_point=ZERO_POINTS)
def test_forced_isa_qlinear_matches_reference(isa, case, input_zero_point):
    """Few rows (<= 16: weights read in place) and more (panels), K across 32-k chunks."""
    params = dict(case["params"])
    if input_zero_point is not None:
        params["input_zero_point"] = input_zero_point
    got, want = _both(ops.qlinear, case["x"], _packed_if_drawn(case), case["bias"], **params)
    assert torch.equal(got, want)


@settings(max_examples=30, **_FORCED)
@given(case=conv_cases(max_channels=9), input_zero_point=ZERO_POINTS)
def test_forced_isa_qconv2d_matches_reference(isa, case, input_zero_point):
    params = dict(case["params"])
    if input_zero_point is not None:
        params["input_zero_point"] = input_zero_point
    if case["packed"]:
        params["kernel_size"] = tuple(case["weight"].shape[2:])
    got, want = _both(ops.qconv2d, case["x"], _packed_if_drawn(case), case["bias"], **params)
    assert torch.equal(got, want)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("rounding", ["double", "single"])
def test_forced_isa_extreme_operands(isa, bits, rounding):
    """x at -128 / 127 against weights at both ends (-127 / 127 and -128 for int8, -8 / 7 for
    int4), zero points at the ends, and the shift range's ends with the largest multiplier,
    on tile-edge shapes: rows % 6, channels % 16 and % 64, K across 32-k chunks."""
    low, high = (-128, 127) if bits == 8 else (-8, 7)
    for rows, length, out_features in [(1, 65, 9), (7, 96, 17), (17, 40, 65), (16, 300, 3)]:
        x = torch.full((rows, length), 127, dtype=torch.int8)
        x[:, ::3] = -128
        weight = torch.full((out_features, length), low, dtype=torch.int8)
        weight[1::2] = high
        weight[2::5, ::2] = -127 if bits == 8 else -7
        w = ops.pack_int4(weight) if bits == 4 else weight
        for z_x, shift in [(-128, -31), (127, 30), (-128, 0), (127, -10), (32640, -20)]:
            params = dict(input_zero_point=z_x, output_zero_point=-128 if shift else 127,
                          multiplier=torch.tensor([2**31 - 1], dtype=torch.int32),
                          shift=torch.tensor([shift], dtype=torch.int32), weight_bits=bits,
                          rounding=rounding)
            got, want = _both(ops.qlinear, x, w, None, **params)
            assert torch.equal(got, want), (rows, length, out_features, z_x, shift)
    for channels, out_channels in [(3, 17), (16, 70)]:
        x = torch.full((2, channels, 6, 6), -128, dtype=torch.int8)
        x[:, :, ::2] = 127
        weight = torch.full((out_channels, channels, 3, 3), high, dtype=torch.int8)
        weight[::3] = low
        w = ops.pack_int4(weight.reshape(out_channels, -1)) if bits == 4 else weight
        extra = {"kernel_size": (3, 3)} if bits == 4 else {}
        for z_x in (-128, 127):
            params = dict(stride=1, padding=1, input_zero_point=z_x, output_zero_point=0,
                          multiplier=torch.tensor([1 << 30], dtype=torch.int32),
                          shift=torch.tensor([-14], dtype=torch.int32), weight_bits=bits,
                          rounding=rounding, **extra)
            got, want = _both(ops.qconv2d, x, w, None, **params)
            assert torch.equal(got, want)


@settings(max_examples=15, **_FORCED)
@given(data=st.data())
def test_forced_isa_few_rows_long_k(isa, data):
    """The few-row kernel over many 32-k chunks (two row passes at 7..16 rows), odd lengths
    of packed int4, both roundings."""
    rows = data.draw(st.sampled_from([1, 2, 6, 7, 16]))
    length = data.draw(st.sampled_from([31, 32, 33, 257, 1000]))
    out_features = data.draw(st.integers(1, 20))
    bits = data.draw(st.sampled_from([8, 4]))
    low, high = (-128, 127) if bits == 8 else (-8, 7)
    x = torch.from_numpy(data.draw(int_array((rows, length), -128, 127)))
    weight = torch.from_numpy(data.draw(int_array((out_features, length), low, high)))
    w = ops.pack_int4(weight) if bits == 4 else weight
    bias = torch.from_numpy(data.draw(int_array((out_features,), -2**20, 2**20, np.int32)))
    params = dict(input_zero_point=data.draw(st.sampled_from([-128, 0, 127])), output_zero_point=3,
                  multiplier=torch.tensor([1 << 30], dtype=torch.int32),
                  shift=torch.tensor([data.draw(st.integers(-20, -8))], dtype=torch.int32),
                  weight_bits=bits, rounding=data.draw(st.sampled_from(["double", "single"])))
    got, want = _both(ops.qlinear, x, w, bias, **params)
    assert torch.equal(got, want)


# --------------------------------------------------------------------------------------------
# Dispatch
# --------------------------------------------------------------------------------------------


def test_default_isa_is_the_best_supported(monkeypatch):
    monkeypatch.setattr(numba_cpu, "FORCE_ISA", None)
    monkeypatch.delenv("INTUNLEARN_NUMBA_ISA", raising=False)
    best = next(isa for isa in numba_cpu.ISAS if numba_cpu._isa_native(isa))
    assert numba_cpu.kernel_isa() == best
    if microkernel_avx2.has_avx2() and not microkernel.has_vnni512():
        assert best in ("avxvnni", "avx2")


def test_isa_override_is_checked(monkeypatch):
    monkeypatch.setattr(numba_cpu, "FORCE_ISA", None)
    monkeypatch.setenv("INTUNLEARN_NUMBA_ISA", "sse9")
    with pytest.raises(ValueError, match="INTUNLEARN_NUMBA_ISA"):
        numba_cpu.kernel_isa()
    monkeypatch.setenv("INTUNLEARN_NUMBA_ISA", "generic")
    assert numba_cpu.kernel_isa() == "generic"
    missing = [isa for isa in numba_cpu.ISAS if not numba_cpu.isa_runs_here(isa)]
    if missing:
        monkeypatch.setenv("INTUNLEARN_NUMBA_ISA", missing[0])
        with pytest.raises(ValueError, match="lacks"):
            numba_cpu.kernel_isa()


# --------------------------------------------------------------------------------------------
# Instructions, compiled for CPUs that have them (no such machine needed)
# --------------------------------------------------------------------------------------------


def _hot_loop_counts(asm, names):
    from intunlearn.kernels.cpu import isa_report
    return isa_report.hot_loop_counts(asm, names)


def test_avx2_hot_loop_is_multiply_adds():
    from intunlearn.kernels.cpu import isa_report
    asm = isa_report.compile_for("avx2", "x86_64-unknown-linux-gnu", "haswell", "")
    counts = _hot_loop_counts(asm, ("vpmaddwd", "vpaddd", "vpbroadcastd", "vpshufb", "vpmulld",
                                    "vextracti128", "vpmovzxbw", "vpunpcklbw"))
    assert counts["vpmaddwd"] == 48  # 4 segments x 6 rows x 2 ymm
    assert counts["vpshufb"] == counts["vpmulld"] == counts["vextracti128"] == 0
    assert counts["vpmovzxbw"] == counts["vpunpcklbw"] == 0


def test_avx2_few_row_kernels_multiply_add_without_shuffles():
    """int8: vpmaddwd on sign-extended weights; int4: vpmaddubsw (exact for 4-bit weights)
    with the nibbles split by shifts and masks, no shuffles in either loop."""
    from intunlearn.kernels.cpu import isa_report
    int8 = isa_report.instruction_mix(isa_report.compile_for("gemv_avx2", "x86_64-unknown-linux-gnu", "haswell"))
    int4 = isa_report.instruction_mix(isa_report.compile_for("gemv_avx2_int4", "x86_64-unknown-linux-gnu", "haswell"))
    assert int8["vpmaddwd"] == 24 and int4["vpmaddubsw"] > 0 and int4["vpmaddubsw"] % 10 == 0
    for mix in (int8, int4):
        assert not {"vpshufb", "vpermd", "vpmulld", "vpunpcklbw"} & set(mix)


def test_avxvnni_kernel_compiles_to_vex_vpdpbusd():
    from intunlearn.kernels.cpu import isa_report
    asm = isa_report.compile_for("avxvnni", "x86_64-unknown-linux-gnu", "alderlake", "")
    lines = [line for line in asm.splitlines() if re.search(r"\bvpdpbusd\b", line)]
    assert len(lines) >= 48 and all("ymm" in line and "zmm" not in line for line in lines)


def test_arm_kernel_compiles_to_sdot():
    """aarch64 with the dot-product extension: the inner loop is sdot (4 segments x 6 rows x 4
    q-registers), one eor (u8 -> int8 flip) and one dup per row word, nothing else multiplies."""
    from intunlearn.kernels.cpu import isa_report
    asm = isa_report.compile_for("sdot", "aarch64-unknown-linux-gnu", "neoverse-n1", "+dotprod")
    mix = isa_report.instruction_mix(asm)
    assert mix["sdot"] == 96 and mix.get("eor") == 24
    assert not {"smull", "smlal", "mul", "mla"} & set(mix)
