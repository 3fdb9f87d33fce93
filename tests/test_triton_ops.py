"""The Triton kernels (backend="triton") are bit-exact with the numpy oracle (backend="reference").

Without a GPU they run on CPU tensors under Triton's interpreter (conftest.py sets
TRITON_INTERPRET=1 before triton is imported); with one, on CUDA tensors. The interpreter pays
for every program instance in Python, so shapes stay small; the deterministic tests below add
the shapes that need several tiles in M, N and K.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from intunlearn import ops
from intunlearn import reference as spec
from intunlearn.reference import fixedpoint as fp
from intunlearn.backends import BACKENDS

from strategies import conv_cases, int_array, linear_cases

triton = pytest.importorskip("triton")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("no CUDA and TRITON_INTERPRET is not 1", allow_module_level=True)

import triton.language as tl  # noqa: E402

from intunlearn.kernels.gpu import fixedpoint  # noqa: E402


def _to(value):
    if isinstance(value, torch.Tensor):
        return value.to(DEVICE)
    return value


def _linear_args(case):
    weight = ops.pack_int4(case["weight"]) if case["packed"] else case["weight"]
    params = {k: _to(v) for k, v in case["params"].items()}
    return _to(case["x"]), _to(weight), _to(case["bias"]), params


def _conv_args(case):
    weight = case["weight"]
    params = {k: _to(v) for k, v in case["params"].items()}
    if case["packed"]:
        params["kernel_size"] = tuple(weight.shape[2:])
        weight = ops.pack_int4(weight.reshape(weight.shape[0], -1))
    return _to(case["x"]), _to(weight), _to(case["bias"]), params


def _assert_same(op, *args, **params):
    got = op(*args, **params, backend="triton")
    expected = op(*[a.cpu() if isinstance(a, torch.Tensor) else a for a in args],
                  **{k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in params.items()},
                  backend="reference")
    assert got.dtype == torch.int8 and got.device.type == DEVICE
    assert got.shape == expected.shape
    mismatch = (got.cpu() != expected).sum().item()
    assert mismatch == 0, f"{mismatch} of {expected.numel()} outputs differ"


# ---------------------------------------------------------------------------------------------
# Fixed-point primitives, unclamped (rounding ties included)
# ---------------------------------------------------------------------------------------------


@triton.jit
def _multiply_kernel(x_ptr, multiplier_ptr, shift_ptr, out_ptr, n, SINGLE_ROUNDING: tl.constexpr,
                     BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0)
    multiplier = tl.load(multiplier_ptr + offs, mask=mask, other=0)
    shift = tl.load(shift_ptr + offs, mask=mask, other=0)
    result = fixedpoint.multiply_by_quantized_multiplier(x, multiplier, shift, SINGLE_ROUNDING)
    tl.store(out_ptr + offs, result, mask=mask)


@pytest.mark.parametrize("rounding", ["double", "single"])
def test_triton_multiply_by_quantized_multiplier_matches_reference(rounding):
    """The kernels' MultiplyByQuantizedMultiplier on int32 extremes and on exact rounding ties
    (odd x times 2**30, small x with every shift), where the epilogue's clamp can hide errors."""
    rng = np.random.default_rng(0)
    n = 6000
    x = rng.integers(-2**31, 2**31, n)
    multiplier = rng.integers(2**30, 2**31, n)
    shift = rng.integers(-31, 31, n)
    x[:1000] = rng.integers(-64, 65, 1000)               # small values: every tie of the shifts
    multiplier[:1500] = rng.choice([2**30, 2**31 - 1, 0, 3 * 2**29], 1500)
    x[1000:1100] = rng.choice([-2**31, 2**31 - 1, -1, 1], 100)
    shift[1000:1100] = rng.choice([-31, 30, 0], 100)
    as_int32 = lambda a: torch.from_numpy(a.astype(np.int32)).to(DEVICE)  # noqa: E731
    out = torch.empty(n, dtype=torch.int64, device=DEVICE)
    _multiply_kernel[(triton.cdiv(n, 1024),)](as_int32(x), as_int32(multiplier), as_int32(shift),
                                              out, n, rounding == "single", BLOCK=1024)
    expected = spec.multiply_by_quantized_multiplier(x, multiplier, shift, rounding)
    np.testing.assert_array_equal(out.cpu().numpy(), expected)


@triton.jit
def _high_mul_and_divide_kernel(a_ptr, b_ptr, exponent_ptr, high_ptr, divided_ptr, n,
                                BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    a = tl.load(a_ptr + offs, mask=mask, other=0)
    b = tl.load(b_ptr + offs, mask=mask, other=0)
    exponent = tl.load(exponent_ptr + offs, mask=mask, other=0)
    tl.store(high_ptr + offs, fixedpoint.saturating_rounding_doubling_high_mul(a, b), mask=mask)
    tl.store(divided_ptr + offs, fixedpoint.rounding_divide_by_pot(a, exponent), mask=mask)


def test_triton_high_mul_and_divide_by_pot_match_reference():
    """The int32 primitives on the whole int32 range: signed multipliers, INT32_MIN * INT32_MIN
    (the one saturating product), exact ties of a*b / 2**31 and of a / 2**exponent."""
    rng = np.random.default_rng(1)
    n = 4096
    a = rng.integers(-2**31, 2**31, n)
    b = rng.integers(-2**31, 2**31, n)
    exponent = rng.integers(0, 32, n)
    edges = np.array([-2**31, -2**31 + 1, -1, 0, 1, 2**30, 2**31 - 1])
    a[:49], b[:49] = np.repeat(edges, 7), np.tile(edges, 7)
    a[49:300] = rng.integers(-7, 8, 251) * 2**28 + rng.choice([0, 1, -1], 251)  # a*b/2**31 on
    b[49:300] = rng.choice([2, -2, 4, -4, 2**29, -2**29], 251)  # or next to halves
    a[300:400] = rng.integers(-64, 65, 100) * 2**5 + 2**4  # x / 2**5: exact halves
    exponent[300:400] = 5
    assert a.min() >= -2**31 and a.max() < 2**31  # the cases themselves are int32
    as_int32 = lambda v: torch.from_numpy(v.astype(np.int32)).to(DEVICE)  # noqa: E731
    high = torch.empty(n, dtype=torch.int32, device=DEVICE)
    divided = torch.empty(n, dtype=torch.int32, device=DEVICE)
    _high_mul_and_divide_kernel[(triton.cdiv(n, 1024),)](as_int32(a), as_int32(b),
                                                         as_int32(exponent), high, divided, n,
                                                         BLOCK=1024)
    np.testing.assert_array_equal(high.cpu().numpy(), fp.saturating_rounding_doubling_high_mul(a, b))
    np.testing.assert_array_equal(divided.cpu().numpy(), fp.rounding_divide_by_pot(a, exponent))


# ---------------------------------------------------------------------------------------------
# qlinear
# ---------------------------------------------------------------------------------------------


@settings(max_examples=100)
@given(linear_cases(max_batch=40, max_in=150, max_out=40))
def test_triton_qlinear_matches_reference(case):
    x, weight, bias, params = _linear_args(case)
    _assert_same(ops.qlinear, x, weight, bias, **params)


@settings(max_examples=40)
@given(linear_cases(max_in=70), st.integers(-2**31, 2**31 - 1))
def test_triton_qlinear_zero_point_outside_int8(case, input_zero_point):
    x, weight, bias, params = _linear_args(case)
    params["input_zero_point"] = input_zero_point
    _assert_same(ops.qlinear, x, weight, bias, **params)


@pytest.mark.parametrize("weight_bits", [8, 4])
@pytest.mark.parametrize("below", [1, 0])
def test_triton_qlinear_weight_sums_from_the_spare_row(weight_bits, below):
    """Batches smaller than every tile sum the weights in the MMA's spare row (ONES_ROW); one
    row more takes the separate row-sum pass. Both exact, extreme zero points and weights."""
    from intunlearn.kernels.gpu.gemm import SMALLEST_BLOCK_M

    rng = np.random.default_rng(weight_bits + below)
    rows, in_features, out_features = SMALLEST_BLOCK_M - below, 67, 45
    low, high = (-128, 128) if weight_bits == 8 else (-8, 8)
    weight = rng.integers(low, high, (out_features, in_features))
    weight[0] = low  # the most negative row sum
    x = torch.from_numpy(rng.integers(-128, 128, (rows, in_features)).astype(np.int8))
    packed = ops.pack_int4(torch.from_numpy(weight.astype(np.int8))) if weight_bits == 4 else \
        torch.from_numpy(weight.astype(np.int8))
    for input_zero_point in (-2**31, -128, 2**31 - 1):
        # The bias cancels the zero-point term (mod 2**32), so the output is sum w*x scaled
        # into the int8 range and any error in the weight sums shows, unclamped.
        cancel = (input_zero_point * weight.sum(axis=1) + rng.integers(-500, 500, out_features))
        bias = torch.from_numpy(((cancel + 2**31) % 2**32 - 2**31).astype(np.int32))
        params = dict(input_zero_point=input_zero_point, output_zero_point=-7,
                      multiplier=_to(torch.full((out_features,), 1 << 30, dtype=torch.int32)),
                      shift=_to(torch.full((out_features,), -12, dtype=torch.int32)),
                      weight_bits=weight_bits)
        _assert_same(ops.qlinear, _to(x), _to(packed), _to(bias), **params)
        on_cpu = {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in params.items()}
        unclamped = ops.qlinear(x, packed, bias, **on_cpu, backend="reference")
        assert ((unclamped > -128) & (unclamped < 127)).float().mean() > 0.9


def test_triton_long_reductions_wrap_like_the_spec():
    """K past 131071: the int32 sum of -128 x -128 products overflows and must wrap as the
    spec's accumulator does (a compiled mma.sync saturates; the kernels cut K into chunks)."""
    in_features = 131072 + 64
    x = torch.full((2, in_features), -128, dtype=torch.int8)
    weight = torch.full((3, in_features), -128, dtype=torch.int8)
    params = dict(input_zero_point=0, output_zero_point=0,
                  multiplier=_to(torch.tensor([1 << 30], dtype=torch.int32)),
                  shift=_to(torch.tensor([-24], dtype=torch.int32)))
    _assert_same(ops.qlinear, _to(x), _to(weight), None, **params)
    _assert_same(ops.qlinear, _to(x), _to(ops.pack_int4(weight // 16)), None, weight_bits=4,
                 **params)
    # With z_x = -128 the weight sums enter too: in the MMA's spare row (2 rows), or from the
    # separate row-sum pass (one row more than the smallest tile).
    from intunlearn.kernels.gpu.gemm import SMALLEST_BLOCK_M
    shifted = dict(params, input_zero_point=-128)
    for rows in (2, SMALLEST_BLOCK_M + 1):
        x_high = torch.full((rows, in_features), 127, dtype=torch.int8)
        _assert_same(ops.qlinear, _to(x_high), _to(ops.pack_int4(weight // 16)), None,
                     weight_bits=4, **shifted)
    channels = 14564  # 9 taps * 14564 = 131076 > 131071
    image = torch.full((1, channels, 3, 3), -128, dtype=torch.int8)
    kernel = torch.full((1, channels, 3, 3), -128, dtype=torch.int8)
    _assert_same(ops.qconv2d, _to(image), _to(kernel), None, padding=1, **params)
    # padded cells loaded as z_x (-5 fits int8), summed in chunks as well
    _assert_same(ops.qconv2d, _to(image), _to(kernel), None, padding=1,
                 **dict(params, input_zero_point=-5))


@pytest.mark.parametrize("rounding", ["double", "single"])
@pytest.mark.parametrize("in_features", [1, 63, 64, 65, 129, 131])
def test_triton_qlinear_extremes(rounding, in_features):
    """Accumulator extremes (all -128 x -128, wrapping bias), multiplier 0 / 2**31-1, shifts at
    both ends of [-31, 30], K around the block size, odd packed int4 lengths."""
    out = 40
    x = torch.full((33, in_features), -128, dtype=torch.int8)
    x[1::2] = 127
    weight = torch.full((out, in_features), -128, dtype=torch.int8)
    weight[::3] = 127
    bias = torch.tensor([2**31 - 1, -2**31] * (out // 2), dtype=torch.int32)
    multiplier = torch.tensor([0, 2**31 - 1, 2**30, 1] * (out // 4), dtype=torch.int32)
    shift = torch.tensor([30, -31, 0, -1, 1] * (out // 5), dtype=torch.int32)
    params = dict(input_zero_point=127, output_zero_point=-300, multiplier=_to(multiplier),
                  shift=_to(shift), rounding=rounding)
    _assert_same(ops.qlinear, _to(x), _to(weight), _to(bias), **params)
    _assert_same(ops.qlinear, _to(x), _to(weight), None, weight_zero_point=-7, **params)
    int4 = torch.where(weight > 0, 7, -8).to(torch.int8)
    _assert_same(ops.qlinear, _to(x), _to(int4), _to(bias), weight_bits=4, **params)
    _assert_same(ops.qlinear, _to(x), _to(ops.pack_int4(int4)), _to(bias), weight_bits=4, **params)


# ---------------------------------------------------------------------------------------------
# qconv2d
# ---------------------------------------------------------------------------------------------


@settings(max_examples=100)
@given(conv_cases())
def test_triton_qconv2d_matches_reference(case):
    x, weight, bias, params = _conv_args(case)
    _assert_same(ops.qconv2d, x, weight, bias, **params)


@settings(max_examples=40)
@given(conv_cases(), st.integers(-2**31, 2**31 - 1), st.booleans())
def test_triton_qconv2d_zero_point_outside_int8(case, input_zero_point, channels_last):
    """An input zero point outside int8 cannot pad an int8 tile: the kernel's second path
    (TAP_CORRECTION) loads padding as 0 and subtracts z_x times the in-image taps' weights."""
    x, weight, bias, params = _conv_args(case)
    params["input_zero_point"] = input_zero_point
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    _assert_same(ops.qconv2d, x, weight, bias, **params)


@pytest.mark.parametrize("bits,packed", [(8, False), (4, False), (4, True)])
@pytest.mark.parametrize("groups,group_channels,out_per_group", [(1, 17, 40), (2, 8, 3), (6, 1, 2)])
def test_triton_qconv2d_several_tiles(bits, packed, groups, group_channels, out_per_group):
    """Several tiles in M, N and K (K = 17*3*3 = 153 is not a multiple of any block), stride,
    dilation, asymmetric padding, channels_last input, depthwise with a channel multiplier."""
    rng = np.random.default_rng(groups * 100 + bits)
    channels, out_channels = groups * group_channels, groups * out_per_group
    low, high = (-8, 7) if bits == 4 else (-128, 127)
    weight = torch.from_numpy(rng.integers(low, high + 1, (out_channels, group_channels, 3, 3)).astype(np.int8))
    x = torch.from_numpy(rng.integers(-128, 128, (2, channels, 11, 9)).astype(np.int8))
    x = x.contiguous(memory_format=torch.channels_last)
    bias = torch.from_numpy(rng.integers(-2**20, 2**20, out_channels).astype(np.int32))
    multiplier = torch.from_numpy(rng.integers(2**30, 2**31, out_channels).astype(np.int32))
    shift = torch.from_numpy(rng.integers(-14, -6, out_channels).astype(np.int32))
    kernel_size = None
    if packed:
        weight = ops.pack_int4(weight.reshape(out_channels, -1))
        kernel_size = (3, 3)
    for input_zero_point, weight_format in ((-5, torch.channels_last), (128, torch.contiguous_format)):
        if not packed:  # channels_last weights are read in place (OHWI), OIHW ones reordered
            weight = weight.contiguous(memory_format=weight_format)
        _assert_same(ops.qconv2d, _to(x), _to(weight), _to(bias), stride=(2, 1), padding=(2, 0, 1, 2),
                     dilation=(1, 2), groups=groups, input_zero_point=input_zero_point,
                     output_zero_point=3, multiplier=_to(multiplier), shift=_to(shift),
                     act_min=-100, act_max=120, weight_bits=bits, kernel_size=kernel_size)


# ---------------------------------------------------------------------------------------------
# qadd and qavg_pool2d
# ---------------------------------------------------------------------------------------------


@st.composite
def add_cases(draw):
    shape = tuple(draw(st.lists(st.integers(1, 7), min_size=1, max_size=4)))
    a = torch.from_numpy(draw(int_array(shape, -128, 127)))
    b = torch.from_numpy(draw(int_array(shape, -128, 127)))
    zero_point = st.integers(-128, 127) | st.integers(-2**31, 2**31 - 1)
    multiplier = st.integers(2**30, 2**31 - 1) | st.sampled_from([0, 2**31 - 1])
    act_min = draw(st.integers(-128, 127))
    params = dict(a_zero_point=draw(zero_point), a_multiplier=draw(multiplier),
                  a_shift=draw(st.integers(-31, 30)), b_zero_point=draw(zero_point),
                  b_multiplier=draw(multiplier), b_shift=draw(st.integers(-31, 30)),
                  left_shift=draw(st.sampled_from([0, 20, 30]) | st.integers(0, 30)),
                  output_zero_point=draw(zero_point), output_multiplier=draw(multiplier),
                  output_shift=draw(st.integers(-31, 30)), act_min=act_min,
                  act_max=draw(st.integers(act_min, 127)),
                  rounding=draw(st.sampled_from(["double", "single"])))
    return a, b, params


@given(add_cases())
def test_triton_qadd_matches_reference(case):
    a, b, params = case
    _assert_same(ops.qadd, _to(a), _to(b), **params)


@st.composite
def pool_cases(draw):
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = tuple(draw(st.integers(0, kernel[i // 2] - 1)) for i in range(4))
    height = draw(st.integers(max(1, kernel[0] - padding[0] - padding[1]), 10))
    width = draw(st.integers(max(1, kernel[1] - padding[2] - padding[3]), 10))
    x = torch.from_numpy(draw(int_array((draw(st.integers(1, 2)), draw(st.integers(1, 5)),
                                         height, width), -128, 127)))
    act_min = draw(st.integers(-128, 127))
    return x, dict(kernel_size=kernel, stride=stride, padding=padding, act_min=act_min,
                   act_max=draw(st.integers(act_min, 127)))


@given(pool_cases())
def test_triton_qavg_pool2d_matches_reference(case):
    x, params = case
    _assert_same(ops.qavg_pool2d, _to(x), **params)


# ---------------------------------------------------------------------------------------------
# All backends agree; device errors
# ---------------------------------------------------------------------------------------------


@settings(max_examples=20)
@given(linear_cases(), conv_cases())
def test_triton_backends_give_identical_int8(linear_case, conv_case):
    """triton, reference (and numba where available) give the same int8 outputs."""
    backends = ["reference", "triton"]
    if BACKENDS["numba"].available():
        backends.append("numba")
    for op, (x, weight, bias, params) in ((ops.qlinear, _linear_args(linear_case)),
                                          (ops.qconv2d, _conv_args(conv_case))):
        outputs = {}
        for name in backends:
            on_device = name == "triton"
            move = (lambda t: _to(t)) if on_device else (lambda t: t.cpu() if isinstance(t, torch.Tensor) else t)  # noqa: E731
            outputs[name] = op(move(x), move(weight), move(bias),
                               **{k: move(v) for k, v in params.items()}, backend=name).cpu()
        for name in backends[1:]:
            assert torch.equal(outputs[name], outputs["reference"]), name


def test_triton_cpu_tensors_need_interpreter(monkeypatch):
    from intunlearn.backends import triton_gpu

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x = torch.zeros((2, 3), dtype=torch.int8)
    weight = torch.zeros((4, 3), dtype=torch.int8)
    one = torch.ones(1, dtype=torch.int32)
    with pytest.raises(ValueError, match="CUDA tensors.*TRITON_INTERPRET=1"):
        triton_gpu.qlinear(x, weight, None, in_features=3, input_zero_point=0, output_zero_point=0,
                           multiplier=one, shift=one, act_min=-128, act_max=127)
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        triton_gpu.qavg_pool2d(torch.zeros((1, 1, 2, 2), dtype=torch.int8), kernel_size=(2, 2),
                               stride=(2, 2), padding=(0, 0, 0, 0), act_min=-128, act_max=127)


@given(size=st.integers(1, 300), kernel=st.integers(1, 11), stride=st.integers(1, 5),
       pad_before=st.integers(0, 6), pad_after=st.integers(0, 6), dilation=st.integers(1, 4))
def test_the_gpu_kernels_conv_output_size_is_the_specs(size, kernel, stride, pad_before, pad_after, dilation):
    """kernels/gpu keeps its own copy (kernels import nothing from the engine); it must be the spec's."""
    from intunlearn.kernels.gpu.conv import conv2d_output_size
    assert conv2d_output_size(size, kernel, stride, pad_before, pad_after, dilation) == \
        spec.conv2d_output_size(size, kernel, stride, pad_before, pad_after, dilation)
