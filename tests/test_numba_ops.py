"""The Numba backend's forward ops are bit-exact with the reference oracle."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from intunlearn import ops
from strategies import conv_cases, int_array, linear_cases, requant_params

pytest.importorskip("numba")


def _weight(case):
    return ops.pack_int4(case["weight"]) if case["packed"] else case["weight"]


def _both(op, *args, **kwargs):
    return op(*args, backend="numba", **kwargs), op(*args, backend="reference", **kwargs)


@given(linear_cases())
def test_numba_qlinear_matches_reference(case):
    got, want = _both(ops.qlinear, case["x"], _weight(case), case["bias"], **case["params"])
    assert got.dtype == torch.int8 and torch.equal(got, want)


@given(linear_cases(max_batch=9, max_in=300, max_out=9), st.sampled_from([-300, 1000, -40000, 2**31 - 1]))
def test_numba_qlinear_zero_points_outside_int8(case, input_zero_point):
    params = dict(case["params"], input_zero_point=input_zero_point)
    got, want = _both(ops.qlinear, case["x"], _weight(case), case["bias"], **params)
    assert torch.equal(got, want)


def _conv_weight_and_params(case):
    """The case's conv weight (packed along C/g*KH*KW when drawn packed) and its parameters."""
    params = dict(case["params"])
    if not case["packed"]:
        return case["weight"], params
    params["kernel_size"] = tuple(case["weight"].shape[2:])
    return ops.pack_int4(case["weight"].reshape(case["weight"].shape[0], -1)), params


@given(conv_cases())
def test_numba_qconv2d_matches_reference(case):
    weight, params = _conv_weight_and_params(case)
    got, want = _both(ops.qconv2d, case["x"], weight, case["bias"], **params)
    assert torch.equal(got, want)


@settings(max_examples=20)
@given(conv_cases(), st.sampled_from([-129, 1000, -40000, 70000, -(2**31)]))
def test_numba_qconv2d_zero_point_outside_int8_with_padding(case, input_zero_point):
    """Padded taps are real zeros even when z_x does not fit int8 (or the int16 panel)."""
    params = dict(case["params"], input_zero_point=input_zero_point)
    got, want = _both(ops.qconv2d, case["x"], case["weight"], case["bias"], **params)
    assert torch.equal(got, want)


@pytest.mark.parametrize("rounding", ["double", "single"])
@pytest.mark.parametrize("bits", [8, 4])
def test_numba_qlinear_accumulator_wraps_like_int32(rounding, bits):
    """K large enough that sum x*w overflows int32, plus a bias near INT32_MAX."""
    in_features = 140_000 if bits == 8 else 2_400_000
    low = -128 if bits == 8 else -8
    x = torch.full((2, in_features), -128, dtype=torch.int8)
    x[1, ::3] = 127
    weight = torch.full((3, in_features), low, dtype=torch.int8)
    weight[1] = 7 if bits == 4 else 127
    bias = torch.tensor([2**31 - 1, 2**31 - 5, -(2**31)], dtype=torch.int32)
    params = dict(input_zero_point=5, output_zero_point=1, multiplier=torch.tensor([2**31 - 1, 2**30, 0], dtype=torch.int32),
                  shift=torch.tensor([0, -31, 30], dtype=torch.int32), rounding=rounding,
                  weight_bits=bits)
    w = ops.pack_int4(weight) if bits == 4 else weight
    got, want = _both(ops.qlinear, x, w, bias, **params)
    assert torch.equal(got, want)
    from intunlearn import reference as spec
    acc = spec.linear_accumulator(x.numpy(), weight.numpy(), bias.numpy(), 5)
    exact = (x.numpy().astype(np.int64) - 5) @ weight.numpy().astype(np.int64).T + bias.numpy()
    assert (acc != exact).any()  # the case really wraps


@st.composite
def add_cases(draw):
    shape = draw(st.lists(st.integers(1, 5), min_size=1, max_size=4))
    a = torch.from_numpy(draw(int_array(shape, -128, 127)))
    b = torch.from_numpy(draw(int_array(shape, -128, 127)))
    mult = st.integers(0, 2**31 - 1) | st.sampled_from([0, 2**30, 2**31 - 1])
    act_min = draw(st.integers(-128, 127))
    params = dict(a_zero_point=draw(st.integers(-128, 127) | st.sampled_from([128, -1000])),
                  b_zero_point=draw(st.integers(-128, 127)), a_multiplier=draw(mult),
                  b_multiplier=draw(mult), a_shift=draw(st.integers(-31, 30)),
                  b_shift=draw(st.integers(-31, 30)), left_shift=draw(st.sampled_from([0, 20, 30])),
                  output_zero_point=draw(st.integers(-128, 127) | st.sampled_from([1000])),
                  output_multiplier=draw(mult), output_shift=draw(st.integers(-31, 30)),
                  act_min=act_min, act_max=draw(st.integers(act_min, 127)),
                  rounding=draw(st.sampled_from(["double", "single"])))
    return a, b, params


@given(add_cases())
def test_numba_qadd_matches_reference(case):
    a, b, params = case
    got, want = _both(ops.qadd, a, b, **params)
    assert torch.equal(got, want)


@given(st.data())
def test_numba_qavg_pool2d_matches_reference(data):
    kernel = (data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4)))
    stride = (data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3)))
    padding = tuple(data.draw(st.integers(0, k - 1)) for k in (kernel[0], kernel[0], kernel[1], kernel[1]))
    height = data.draw(st.integers(max(1, kernel[0] - padding[0] - padding[1]), 9))
    width = data.draw(st.integers(max(1, kernel[1] - padding[2] - padding[3]), 9))
    x = torch.from_numpy(data.draw(int_array((2, 3, height, width), -128, 127)))
    act_min = data.draw(st.integers(-128, 127))
    act_max = data.draw(st.integers(act_min, 127))
    got, want = _both(ops.qavg_pool2d, x, kernel, stride, padding, act_min, act_max)
    assert torch.equal(got, want)


def test_numba_is_auto_backend_on_cpu():
    from intunlearn.backends import resolve
    assert resolve("auto", torch.device("cpu")).__name__ == "intunlearn.backends.numba_cpu"


# --------------------------------------------------------------------------------------------
# Every micro-kernel instruction-set path is bit-exact (the fallback included)
# --------------------------------------------------------------------------------------------


def _available_isas():
    from intunlearn.kernels.cpu import microkernel
    return ["generic"] + (["vnni"] if microkernel.has_vnni512() else [])


@pytest.fixture(params=["generic", "vnni"])
def kernel_isa(request, monkeypatch):
    from intunlearn.backends import numba_cpu
    if request.param not in _available_isas():
        pytest.skip(f"{request.param} kernel needs a CPU feature this machine lacks")
    monkeypatch.setattr(numba_cpu, "FORCE_ISA", request.param)
    assert numba_cpu.kernel_isa() == request.param
    return request.param


_ISA_FIXTURE_OK = [HealthCheck.function_scoped_fixture]  # the forced ISA holds for every input


@settings(max_examples=40, suppress_health_check=_ISA_FIXTURE_OK)
@given(case=linear_cases())
def test_numba_qlinear_every_isa(kernel_isa, case):
    got, want = _both(ops.qlinear, case["x"], _weight(case), case["bias"], **case["params"])
    assert torch.equal(got, want)


@settings(max_examples=40, suppress_health_check=_ISA_FIXTURE_OK)
@given(case=conv_cases(), input_zero_point=st.sampled_from([None, -128, 127, 1000]))
def test_numba_qconv2d_every_isa(kernel_isa, case, input_zero_point):
    weight, params = _conv_weight_and_params(case)
    if input_zero_point is not None:
        params["input_zero_point"] = input_zero_point
    got, want = _both(ops.qconv2d, case["x"], weight, case["bias"], **params)
    assert torch.equal(got, want)


@pytest.mark.parametrize("bits", [8, 4])
def test_numba_extreme_operands_every_isa(kernel_isa, bits):
    """u8 255 x s8 -128 in every lane (where vpmaddubsw would saturate), shapes that exercise
    partial register tiles (rows % 6, channels % 64, K % 4) and the 8x8-transposed NHWC path."""
    low = -128 if bits == 8 else -8
    for batch, channels, out_channels, size in [(7, 8, 65, 8), (3, 16, 130, 16), (2, 5, 3, 5)]:
        x = torch.full((batch, channels, size, size), 127, dtype=torch.int8)
        x[:, ::2] = -128
        weight = torch.full((out_channels, channels, 3, 3), low, dtype=torch.int8)
        weight[1::3] = 127 if bits == 8 else 7
        w = ops.pack_int4(weight.reshape(out_channels, -1)) if bits == 4 else weight
        params = dict(stride=1, padding=1, input_zero_point=-128, output_zero_point=0,
                      multiplier=torch.tensor([1 << 30], dtype=torch.int32),
                      shift=torch.tensor([-14], dtype=torch.int32), weight_bits=bits)
        if bits == 4:
            params["kernel_size"] = (3, 3)
        got, want = _both(ops.qconv2d, x, w, None, **params)
        assert torch.equal(got, want)
        xl = x.reshape(batch, -1)
        wl = torch.full((out_channels, xl.shape[1]), low, dtype=torch.int8)
        wl[1::3] = 127 if bits == 8 else 7
        wl = ops.pack_int4(wl) if bits == 4 else wl
        got, want = _both(ops.qlinear, xl, wl, None, input_zero_point=-128, output_zero_point=0,
                          multiplier=torch.tensor([1 << 30], dtype=torch.int32),
                          shift=torch.tensor([-14], dtype=torch.int32), weight_bits=bits)
        assert torch.equal(got, want)


def test_transpose_8x8_bytes():
    from intunlearn.kernels.cpu import int_gemm
    rows = np.arange(64, dtype=np.uint8).reshape(8, 8)
    words = rows.copy().view(np.uint64).reshape(8)
    out = np.array(int_gemm._transpose_8x8(*[np.uint64(w) for w in words]), np.uint64)
    assert np.array_equal(out.view(np.uint8).reshape(8, 8), rows.T)


@settings(max_examples=15, deadline=None, suppress_health_check=_ISA_FIXTURE_OK)
@given(data=st.data())
def test_numba_qconv2d_wide_channels_every_isa(kernel_isa, data):
    """Channel and width counts that are multiples of 8 (the transposing NHWC path) and more
    than 64 output channels (several panel blocks), with random padding, stride and groups;
    int8 weights or packed int4 ones (int4 panels, unpacked in registers, on VNNI)."""
    groups = data.draw(st.sampled_from([1, 1, 2]))
    channels = data.draw(st.sampled_from([8, 16, 24])) * groups
    out_channels = groups * data.draw(st.sampled_from([1, 64, 70]))
    width = data.draw(st.sampled_from([8, 16]))
    height = data.draw(st.integers(1, 9))
    kernel = data.draw(st.integers(1, 3))
    padding = tuple(data.draw(st.integers(0, 2)) for _ in range(4))
    assume(height + padding[0] + padding[1] >= kernel)  # else no output row: nothing to compare
    stride = data.draw(st.integers(1, 2))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    x = torch.from_numpy(rng.integers(-128, 128, (2, channels, height, width)).astype(np.int8))
    bits = data.draw(st.sampled_from([8, 4]))
    low = -128 if bits == 8 else -8
    weight = torch.from_numpy(rng.integers(low, -low, (out_channels, channels // groups, kernel, kernel)).astype(np.int8))
    bias = torch.from_numpy(rng.integers(-2**20, 2**20, out_channels).astype(np.int32))
    extra = {}
    if bits == 4:
        weight = ops.pack_int4(weight.reshape(out_channels, -1))
        extra = {"weight_bits": 4, "kernel_size": (kernel, kernel)}
    params = dict(stride=stride, padding=padding, groups=groups, **extra,
                  input_zero_point=data.draw(st.sampled_from([-128, -3, 127, 300])),
                  output_zero_point=5, multiplier=torch.tensor([1 << 30], dtype=torch.int32),
                  shift=torch.tensor([-10], dtype=torch.int32))
    got, want = _both(ops.qconv2d, x, weight, bias, **params)
    assert torch.equal(got, want)


@settings(max_examples=25, deadline=None)
@given(rows=st.sampled_from([1, 2, 5, 16, 17]), length=st.sampled_from([1, 7, 63, 64, 65, 129, 200]),
       out_features=st.integers(1, 70), bits=st.sampled_from([8, 4]), extreme=st.booleans(),
       input_zero_point=st.sampled_from([-128, 0, 127, 1000]), rounding=st.sampled_from(["double", "single"]),
       seed=st.integers(0, 2**32 - 1))
def test_numba_qlinear_few_rows_matches_reference(rows, length, out_features, bits, extreme,
                                                   input_zero_point, rounding, seed):
    """Up to 16 rows take the weights-in-place kernel on VNNI (whole 64-k chunks plus a tail,
    odd packed-int4 lengths included); 17 rows the panel GEMM. Both equal the reference."""
    rng = np.random.default_rng(seed)
    low, high = (-128, 127) if bits == 8 else (-8, 7)
    if extreme:  # u8 255 x s8 -128 (or -8) everywhere
        x = np.full((rows, length), 127, np.int8)
        weight = np.full((out_features, length), low, np.int8)
    else:
        x = rng.integers(-128, 128, (rows, length)).astype(np.int8)
        weight = rng.integers(low, high + 1, (out_features, length)).astype(np.int8)
    weight = torch.from_numpy(weight)
    w = ops.pack_int4(weight) if bits == 4 else weight
    bias = torch.from_numpy(rng.integers(-2**20, 2**20, out_features).astype(np.int32))
    params = dict(input_zero_point=input_zero_point, output_zero_point=-7,
                  multiplier=torch.from_numpy(rng.integers(2**30, 2**31, out_features).astype(np.int32)),
                  shift=torch.from_numpy(rng.integers(-20, 2, out_features).astype(np.int32)),
                  weight_bits=bits, rounding=rounding)
    got, want = _both(ops.qlinear, torch.from_numpy(x), w, bias, **params)
    assert torch.equal(got, want)


@pytest.mark.parametrize("input_zero_point", [300, -1000])
def test_numba_qconv2d_zero_point_outside_int8_one_output_position(input_zero_point):
    """z_x outside int8 with padding makes the correction depend on the position (padding taps
    hold x = 0); a 1x1 output must still take that per-position epilogue."""
    x = torch.tensor([[[[5]]]], dtype=torch.int8)
    weight = torch.ones(2, 1, 3, 3, dtype=torch.int8)
    params = dict(padding=1, input_zero_point=input_zero_point, output_zero_point=0,
                  multiplier=torch.tensor([1 << 30], dtype=torch.int32), shift=torch.tensor([-8], dtype=torch.int32))
    got, want = _both(ops.qconv2d, x, weight, None, **params)
    assert torch.equal(got, want)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("rows, out_features", [(0, 3), (2, 0), (0, 0)])
def test_numba_qlinear_empty_shapes_match_reference(bits, rows, out_features):
    weight = torch.zeros((out_features, 10), dtype=torch.int8)
    w = ops.pack_int4(weight) if bits == 4 else weight
    params = dict(input_zero_point=-3, output_zero_point=0, weight_bits=bits,  # per-tensor
                  multiplier=torch.tensor([1 << 30], dtype=torch.int32),
                  shift=torch.tensor([0], dtype=torch.int32))
    got, want = _both(ops.qlinear, torch.zeros((rows, 10), dtype=torch.int8), w, None, **params)
    assert got.shape == want.shape == (rows, out_features) and got.dtype == torch.int8


@settings(max_examples=200, deadline=None)
@given(rows=st.integers(1, 5000), row_blocks=st.integers(1, 64))
def test_gemm_items_cover_every_row_once_in_near_equal_tiles(rows, row_blocks):
    """The GEMM driver's work items (int_gemm.item_rows): in order, disjoint, covering rows
    0..rows-1, starting on register-tile boundaries, and holding ceil(rows / MR) tiles spread
    so that no item has two tiles more than another."""
    from intunlearn.kernels.cpu import int_gemm
    from intunlearn.kernels.cpu.microkernel import MR
    tiles = -(-rows // MR)
    assume(row_blocks <= tiles)
    ranges = [int_gemm.item_rows(block, row_blocks, rows) for block in range(row_blocks)]
    assert ranges[0][0] == 0 and ranges[-1][1] == rows
    for (_, end), (begin, _) in zip(ranges, ranges[1:]):
        assert end == begin and begin % MR == 0
    item_tiles = [-(-(end - begin) // MR) for begin, end in ranges]
    assert sum(item_tiles) == tiles
    assert max(item_tiles) - min(item_tiles) <= 1


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("rows", [1, 7, 100, 512, 1024, 1000, 8192])
def test_gemm_work_split_gives_every_thread_equal_items(monkeypatch, threads, rows):
    """Row items come in a multiple of the thread count once there are at least as many as
    threads (so that threads claiming one item at a time finish together), never more items
    than register tiles; with fewer row items than ITEMS_PER_THREAD per thread the output
    channels are split instead."""
    from intunlearn.backends import numba_cpu
    from intunlearn.kernels.cpu.microkernel import MR
    monkeypatch.setattr(numba_cpu, "_threads", lambda: threads)
    row_blocks, channel_splits = numba_cpu._work_split(rows, 1, 16)
    assert 1 <= row_blocks <= -(-rows // MR)
    if row_blocks >= threads:
        assert row_blocks % threads == 0 or row_blocks == -(-rows // MR)
    assert (row_blocks * channel_splits >= numba_cpu.ITEMS_PER_THREAD * threads
            or channel_splits == 16)
