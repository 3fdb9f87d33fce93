"""The Numba backend's forward ops are bit-exact with the reference oracle."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
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


@given(conv_cases())
def test_numba_qconv2d_matches_reference(case):
    params = dict(case["params"])
    if case["packed"]:
        params["kernel_size"] = tuple(case["weight"].shape[2:])
        weight = ops.pack_int4(case["weight"].reshape(case["weight"].shape[0], -1))
    else:
        weight = case["weight"]
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
                  act_min=act_min, act_max=draw(st.integers(act_min, 127)))
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
