"""The oracle's ops against float64 computation: torch float64 linear/conv2d/avg_pool2d on the
same integer values, and the float64 meaning (dequantize, compute, round) of each op."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from intunlearn import qparams
from intunlearn import reference as spec
from intunlearn.reference import float64
from strategies import conv_cases, int_array, linear_cases


def numpy(t):
    return None if t is None else t.numpy()


def canonical_conv(params, pads):
    return dict(stride=params["stride"], padding=pads, dilation=params["dilation"],
                groups=params["groups"])


# ---- accumulators are exactly torch float64 on the same integers --------------------------


@given(linear_cases())
def test_linear_accumulator_equals_torch_float64(case):
    params = case["params"]
    z_w = params.get("weight_zero_point", 0)
    acc = spec.linear_accumulator(numpy(case["x"]), numpy(case["weight"]), numpy(case["bias"]),
                                  params["input_zero_point"], z_w)
    bias = None if case["bias"] is None else case["bias"].double()
    expected = F.linear(case["x"].double() - params["input_zero_point"], case["weight"].double() - z_w, bias)
    np.testing.assert_array_equal(acc, expected.numpy().astype(np.int64))


@given(conv_cases())
def test_conv2d_accumulator_equals_torch_float64(case):
    params, pads = case["params"], case["pads"]
    acc = spec.conv2d_accumulator(numpy(case["x"]), numpy(case["weight"]), numpy(case["bias"]),
                                  input_zero_point=params["input_zero_point"],
                                  **canonical_conv(params, pads))
    centered = F.pad(case["x"].double() - params["input_zero_point"], (pads[2], pads[3], pads[0], pads[1]))
    bias = None if case["bias"] is None else case["bias"].double()
    expected = F.conv2d(centered, case["weight"].double(), bias, stride=params["stride"],
                        dilation=params["dilation"], groups=params["groups"])
    np.testing.assert_array_equal(acc, expected.numpy().astype(np.int64))


@given(conv_cases())
def test_float64_conv2d_reference_equals_torch(case):
    params, pads = case["params"], case["pads"]
    x, w = case["x"].double() * 0.37 - 1.5, case["weight"].double() * 0.011
    got = float64.conv2d(x.numpy(), w.numpy(), None, **canonical_conv(params, pads))
    expected = F.conv2d(F.pad(x, (pads[2], pads[3], pads[0], pads[1])), w, stride=params["stride"],
                        dilation=params["dilation"], groups=params["groups"])
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-12, atol=1e-12)


# ---- requantization against float64 ---------------------------------------------------------


@given(linear_cases())
def test_qlinear_within_one_lsb_of_float64_rounding(case):
    params = case["params"]
    z_w = params.get("weight_zero_point", 0)
    y = spec.qlinear(numpy(case["x"]), numpy(case["weight"]), numpy(case["bias"]),
                     input_zero_point=params["input_zero_point"], weight_zero_point=z_w,
                     output_zero_point=params["output_zero_point"], multiplier=numpy(params["multiplier"]),
                     shift=numpy(params["shift"]), act_min=params["act_min"], act_max=params["act_max"],
                     rounding=params["rounding"])
    bias = None if case["bias"] is None else case["bias"].double()
    acc = F.linear(case["x"].double() - params["input_zero_point"], case["weight"].double() - z_w, bias)
    real_multiplier = params["multiplier"].double() * 2.0 ** (params["shift"].double() - 31)
    scaled = acc * real_multiplier
    # Far outside the int8 range the int32 intermediate may wrap (as in TFLite): not compared.
    comparable = scaled.abs() < 2**20
    expected = (torch.from_numpy(spec.fixedpoint.round_half_away_from_zero(scaled.numpy()))
                + params["output_zero_point"]).clamp(params["act_min"], params["act_max"])
    difference = (torch.from_numpy(y).double() - expected).abs()
    assert torch.all(difference[comparable] <= 1)


def scales_strategy(count):
    return st.lists(st.floats(1e-3, 1.0), min_size=count, max_size=count)


@given(case=linear_cases(weight_bits=8), input_scale=st.floats(1e-3, 0.1),
       weight_scales=scales_strategy(12), output_scale=st.floats(0.05, 2.0), data=st.data())
def test_qlinear_within_one_lsb_of_float64_meaning(case, input_scale, weight_scales, output_scale, data):
    """Integer parameters derived from real scales reproduce the real computation to 1 LSB."""
    params, out_features = case["params"], case["weight"].shape[0]
    w_scales = np.array(weight_scales[:out_features])
    multiplier, shift = spec.quantize_multiplier(input_scale * w_scales / output_scale)
    z_x, z_y = params["input_zero_point"], data.draw(st.integers(-128, 127))
    y = spec.qlinear(numpy(case["x"]), numpy(case["weight"]), numpy(case["bias"]), input_zero_point=z_x,
                     output_zero_point=z_y, multiplier=multiplier, shift=shift)
    real = float64.linear(float64.dequantize(numpy(case["x"]), input_scale, z_x),
                          float64.dequantize(numpy(case["weight"]), w_scales[:, None]),
                          None if case["bias"] is None else numpy(case["bias"]) * input_scale * w_scales)
    expected = float64.quantize(real, output_scale, z_y)
    assert np.abs(y.astype(np.int64) - expected).max() <= 1


@given(conv_cases(weight_bits=8), st.floats(1e-3, 0.1), st.floats(1e-3, 0.05), st.floats(0.05, 2.0))
def test_qconv2d_within_one_lsb_of_float64_meaning(case, input_scale, weight_scale, output_scale):
    params, pads = case["params"], case["pads"]
    multiplier, shift = spec.quantize_multiplier(input_scale * weight_scale / output_scale)
    z_x = params["input_zero_point"]
    y = spec.qconv2d(numpy(case["x"]), numpy(case["weight"]), numpy(case["bias"]), input_zero_point=z_x,
                     output_zero_point=0, multiplier=multiplier.reshape(1), shift=shift.reshape(1),
                     **canonical_conv(params, pads))
    bias = None if case["bias"] is None else numpy(case["bias"]) * input_scale * weight_scale
    real = float64.conv2d(float64.dequantize(numpy(case["x"]), input_scale, z_x),
                          float64.dequantize(numpy(case["weight"]), weight_scale), bias,
                          **canonical_conv(params, pads))
    assert np.abs(y.astype(np.int64) - float64.quantize(real, output_scale, 0)).max() <= 1


# ---- residual add and average pooling ------------------------------------------------------


activation_qparams = st.builds(qparams.ActivationQParams, st.floats(0.01, 0.5), st.integers(-128, 127))


@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=4), a_q=activation_qparams,
       b_q=activation_qparams, rounding=st.sampled_from(["double", "single"]), data=st.data())
def test_qadd_within_one_lsb_of_float64_meaning(shape, a_q, b_q, rounding, data):
    out_scale = data.draw(st.floats(max(a_q.scale, b_q.scale) / 4, 2 * (a_q.scale + b_q.scale)))
    out_q = qparams.ActivationQParams(out_scale, data.draw(st.integers(-128, 127)))
    a = data.draw(int_array(tuple(shape), -128, 127))
    b = data.draw(int_array(tuple(shape), -128, 127))
    y = spec.qadd(a, b, **qparams.add_params(a_q, b_q, out_q), rounding=rounding)
    real = float64.dequantize(a, a_q.scale, a_q.zero_point) + float64.dequantize(b, b_q.scale, b_q.zero_point)
    expected = float64.quantize(real, out_q.scale, out_q.zero_point)
    assert np.abs(y.astype(np.int64) - expected).max() <= 1


@st.composite
def pool_cases(draw):
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = tuple(draw(st.integers(0, k - 1)) for k in (kernel[0], kernel[0], kernel[1], kernel[1]))
    height = draw(st.integers(max(1, kernel[0] - padding[0] - padding[1]), 8))
    width = draw(st.integers(max(1, kernel[1] - padding[2] - padding[3]), 8))
    x = draw(int_array((draw(st.integers(1, 2)), draw(st.integers(1, 3)), height, width), -128, 127))
    return x, kernel, stride, padding


@given(pool_cases())
def test_qavg_pool2d_is_the_rounded_float64_mean(case):
    x, kernel, stride, padding = case
    y = spec.qavg_pool2d(x, kernel_size=kernel, stride=stride, padding=padding)
    mean = float64.avg_pool2d(x, kernel_size=kernel, stride=stride, padding=padding)
    # Rounding an exact rational mean with ties away from zero is exact in float64 here
    # (the sums and counts are small integers), so the oracle must agree exactly.
    np.testing.assert_array_equal(y, np.clip(spec.fixedpoint.round_half_away_from_zero(mean), -128, 127))


@given(pool_cases())
def test_float64_avg_pool2d_equals_torch_when_padding_is_symmetric(case):
    x, kernel, stride, _ = case
    padding = (min(kernel[0] // 2, 1),) * 2 + (min(kernel[1] // 2, 1),) * 2
    assume(x.shape[2] + 2 * padding[0] >= kernel[0] and x.shape[3] + 2 * padding[2] >= kernel[1])  # a window fits
    mean = float64.avg_pool2d(x, kernel_size=kernel, stride=stride, padding=padding)
    expected = F.avg_pool2d(torch.from_numpy(x).double(), kernel, stride, (padding[0], padding[2]),
                            count_include_pad=False)
    np.testing.assert_allclose(mean, expected.numpy(), rtol=1e-12)


@pytest.mark.parametrize("values, expected", [
    ([1, 2], 2), ([-1, -2], -2),      # +-1.5: ties away from zero
    ([1, 2, 2, 2], 2), ([0, 0, 0, 1], 0), ([-3, 0, 0, 0], -1), ([-2, 0, 0, 0], -1),
])
def test_qavg_pool2d_by_hand(values, expected):
    x = np.array(values, np.int8).reshape(1, 1, 1, -1)
    y = spec.qavg_pool2d(x, kernel_size=(1, len(values)), stride=(1, 1), padding=(0, 0, 0, 0))
    assert int(y[0, 0, 0, 0]) == expected


# ---- int4 ------------------------------------------------------------------------------------


@settings(max_examples=60)
@given(st.integers(0, 41).flatmap(lambda n: int_array((3, n), -8, 7)))
def test_int4_round_trip_for_every_length(values):
    packed = spec.pack_int4(values)
    assert packed.dtype == np.uint8 and packed.shape == (3, (values.shape[1] + 1) // 2)
    np.testing.assert_array_equal(spec.unpack_int4(packed, values.shape[1]), values)


def test_int4_layout_by_hand():
    # -8 = 0b1000 in the low nibble, 7 = 0b0111 in the high nibble; -1 = 0b1111, odd tail 0.
    np.testing.assert_array_equal(spec.pack_int4(np.array([-8, 7, -1])), [0x78, 0x0F])
    np.testing.assert_array_equal(spec.unpack_int4(np.array([0x78, 0x0F], np.uint8), 3), [-8, 7, -1])


@given(st.integers(0, 4), st.integers(0, 9), st.integers(0, 2**32 - 1))
def test_unpacked_weight_reads_both_stored_forms(rows, length, seed):
    """A layer's weights stored as int8 [OUT, ...] or packed int4 come back as int8 [OUT, length],
    empty layers included."""
    from intunlearn.reference import pack_int4, unpacked_weight
    values = np.random.default_rng(seed).integers(-8, 8, (rows, length)).astype(np.int8)
    assert np.array_equal(unpacked_weight(pack_int4(values), length), values)
    assert np.array_equal(unpacked_weight(values.reshape(rows, length, 1), length), values)
