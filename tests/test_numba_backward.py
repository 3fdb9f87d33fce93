"""The Numba STE backward equals float64 autograd of the dequantized computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from intunlearn import ops
from strategies import conv_cases, linear_cases

pytest.importorskip("numba")
from intunlearn.backends import numba_cpu  # noqa: E402


def _float64_grads(forward, x, weight, bias_present, output, grad_output, alpha,
                   input_scale, input_zero_point, weight_scales, act_min, act_max, channel_shape):
    """float64 autograd: grad_input of sum(grad_output * masked output); grad_weight and
    grad_bias of sum_i alpha_i * sum(grad_output_i * masked output_i) (alpha enters the weight
    reductions only, see intunlearn/backends/reference.py)."""
    x_real = (input_scale * (x.double() - input_zero_point)).requires_grad_()
    w_real = (weight_scales.double().reshape(channel_shape) * weight.double()).requires_grad_()
    b_real = torch.zeros(weight.shape[0], dtype=torch.float64, requires_grad=True)
    y = forward(x_real, w_real, b_real if bias_present else None)
    mask = ((output > act_min) & (output < act_max)).double()
    per_sample = (grad_output.double() * mask * y).reshape(y.shape[0], -1).sum(1)
    grad_x, = torch.autograd.grad(per_sample.sum(), x_real, retain_graph=True)
    (alpha.double() * per_sample).sum().backward()
    grad_bias = b_real.grad if bias_present else None
    return grad_x, w_real.grad, grad_bias


def _draw_backward_extras(data, batch, out_channels, out_shape):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    grad_output = torch.from_numpy(rng.standard_normal(out_shape).astype(np.float32))
    alpha = None
    if data.draw(st.booleans()):
        alpha = torch.from_numpy(rng.uniform(-1.0, 3.0, batch).astype(np.float32))
    weight_scales = torch.from_numpy(rng.uniform(0.001, 0.1, data.draw(st.sampled_from([1, out_channels]))).astype(np.float32))
    input_scale = float(rng.uniform(0.01, 0.2))
    return grad_output, alpha, weight_scales, input_scale


def _assert_close(got, want):
    want = want.float()
    tol = 1e-4 * (1 + want.abs().max().item())
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert torch.allclose(got, want, rtol=1e-4, atol=tol), (got - want).abs().max()


@given(linear_cases(max_batch=8, max_in=40, max_out=9), st.data())
def test_numba_qlinear_backward_matches_float64_autograd(case, data):
    x, weight, params = case["x"], case["weight"], case["params"]
    if params.get("weight_zero_point", 0):
        params = dict(params, weight_zero_point=0)  # the STE models symmetric weights
    w = ops.pack_int4(weight) if case["packed"] else weight
    output = ops.qlinear(x, w, case["bias"], **params, backend="numba")
    batch, out_features = output.shape
    grad_output, alpha, weight_scales, input_scale = _draw_backward_extras(
        data, batch, out_features, tuple(output.shape))
    act_min, act_max = params["act_min"], params["act_max"]
    gi, gw, gb = numba_cpu.qlinear_backward(
        grad_output, output, x, w, in_features=x.shape[1], input_zero_point=params["input_zero_point"],
        input_scale=input_scale, weight_scales=weight_scales, act_min=act_min, act_max=act_max,
        sample_weights=alpha)
    ones = torch.ones(batch) if alpha is None else alpha
    want_gi, want_gw, want_gb = _float64_grads(
        torch.nn.functional.linear, x, weight, True, output, grad_output, ones, input_scale,
        params["input_zero_point"], weight_scales, act_min, act_max, (-1, 1))
    _assert_close(gi, want_gi)
    _assert_close(gw, want_gw)
    _assert_close(gb, want_gb)


@settings(max_examples=30)
@given(conv_cases(max_batch=3, max_channels=6, max_size=8), st.data())
def test_numba_qconv2d_backward_matches_float64_autograd(case, data):
    x, weight, params = case["x"], case["weight"], dict(case["params"])
    pads = case["pads"]
    output = ops.qconv2d(x, weight, case["bias"], **params, backend="numba")
    batch, out_channels = output.shape[:2]
    grad_output, alpha, weight_scales, input_scale = _draw_backward_extras(
        data, batch, out_channels, tuple(output.shape))
    act_min, act_max = params["act_min"], params["act_max"]
    stride, dilation = params["stride"], params["dilation"]
    needs_input, needs_weight = data.draw(st.sampled_from([(True, True), (True, False), (False, True)]))
    gi, gw, gb = numba_cpu.qconv2d_backward(
        grad_output, output, x, weight, weight_shape=tuple(weight.shape), stride=stride,
        padding=pads, dilation=dilation, groups=params["groups"],
        input_zero_point=params["input_zero_point"], input_scale=input_scale,
        weight_scales=weight_scales, act_min=act_min, act_max=act_max, sample_weights=alpha,
        needs_input_grad=needs_input, needs_weight_grad=needs_weight)

    def forward(x_real, w_real, b_real):
        padded = torch.nn.functional.pad(x_real, (pads[2], pads[3], pads[0], pads[1]))
        return torch.nn.functional.conv2d(padded, w_real, b_real, stride=stride,
                                          dilation=dilation, groups=params["groups"])

    ones = torch.ones(batch) if alpha is None else alpha
    want_gi, want_gw, want_gb = _float64_grads(
        forward, x, weight, True, output, grad_output, ones, input_scale,
        params["input_zero_point"], weight_scales, act_min, act_max, (-1, 1, 1, 1))
    assert (gi is None) == (not needs_input) and (gw is None) == (not needs_weight)
    if needs_input:
        _assert_close(gi, want_gi)
    if needs_weight:
        _assert_close(gw, want_gw)
    _assert_close(gb, want_gb)


def test_numba_backward_clamped_outputs_pass_no_gradient():
    """Outputs at act_min or act_max (fused ReLU6 / saturation) get no gradient."""
    x = torch.tensor([[10, -20, 30]], dtype=torch.int8)
    weight = torch.tensor([[1, 2, 3], [-1, 0, 1]], dtype=torch.int8)
    output = torch.tensor([[0, 6]], dtype=torch.int8)
    gi, gw, gb = numba_cpu.qlinear_backward(
        torch.ones(1, 2), output, x, weight, in_features=3, input_zero_point=0, input_scale=1.0,
        weight_scales=torch.ones(2), act_min=0, act_max=6)
    assert torch.count_nonzero(gi) == 0 and torch.count_nonzero(gw) == 0 and torch.count_nonzero(gb) == 0


@pytest.mark.parametrize("shape", [
    # (batch, channels, size, out_channels, kernel, stride, padding, dilation, groups)
    (3, 8, 12, 70, 3, 1, (1, 2, 0, 1), 1, 1),    # > 64 output channels and > 64 im2col columns
    (2, 12, 9, 24, 3, 2, (1, 1, 1, 1), 2, 3),    # grouped, strided, dilated
    (2, 16, 7, 16, 3, 1, (1, 1, 1, 1), 1, 16),   # depthwise
    (2, 3, 70, 5, 1, 1, (0, 0, 0, 0), 1, 1),     # > 8192 positions: several partial sums
])
def test_numba_qconv2d_backward_large_blocks(shape):
    """Shapes past one register tile, one row chunk and one partial-sum share."""
    batch, channels, size, out_channels, kernel, stride, pads, dilation, groups = shape
    rng = np.random.default_rng(sum(shape[:5]))
    x = torch.from_numpy(rng.integers(-128, 128, (batch, channels, size, size), dtype=np.int8))
    weight = torch.from_numpy(rng.integers(-127, 128, (out_channels, channels // groups, kernel, kernel),
                                           dtype=np.int8))
    geometry = dict(stride=(stride, stride), padding=pads, dilation=(dilation, dilation), groups=groups)
    out_h = (size + pads[0] + pads[1] - dilation * (kernel - 1) - 1) // stride + 1
    out_w = (size + pads[2] + pads[3] - dilation * (kernel - 1) - 1) // stride + 1
    output = torch.from_numpy(rng.integers(-128, 128, (batch, out_channels, out_h, out_w), dtype=np.int8))
    grad_output = torch.from_numpy(rng.standard_normal(tuple(output.shape)).astype(np.float32))
    alpha = torch.from_numpy(rng.uniform(0.0, 2.0, batch).astype(np.float32))
    weight_scales = torch.from_numpy(rng.uniform(0.001, 0.1, out_channels).astype(np.float32))
    gi, gw, gb = numba_cpu.qconv2d_backward(
        grad_output, output, x, weight, weight_shape=tuple(weight.shape), **geometry,
        input_zero_point=-3, input_scale=0.05, weight_scales=weight_scales, act_min=-120,
        act_max=120, sample_weights=alpha)

    def forward(x_real, w_real, b_real):
        padded = torch.nn.functional.pad(x_real, (pads[2], pads[3], pads[0], pads[1]))
        return torch.nn.functional.conv2d(padded, w_real, b_real, stride=stride, dilation=dilation,
                                          groups=groups)

    want_gi, want_gw, want_gb = _float64_grads(forward, x, weight, True, output, grad_output, alpha, 0.05,
                                               -3, weight_scales, -120, 120, (-1, 1, 1, 1))
    _assert_close(gi, want_gi)
    _assert_close(gw, want_gw)
    _assert_close(gb, want_gb)
