"""STE backward of the Triton backend against float64 torch autograd of the dequantized op.

Autograd sees y_real = s_y * (y - z_y). With g = grad_output masked where the int8 output sits
at act_min or act_max, and per-sample weights alpha, the expected gradients are those of
sum_i alpha_i <g_i, f(x_real, w_real, b_real)_i> where f is the float64 linear / conv2d on
x_real = s_x * (x - z_x), w_real = s_w[c] * w[c]; alpha enters the weight and bias gradients
only, the input gradient is the per-sample (alpha = 1) one, so that a network whose every
layer fuses alpha applies it once (the Numba backend's semantics). The tolerance is float32 rounding relative
to the sum of absolute values of the terms (the same autograd on absolute values).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from intunlearn import ops
from intunlearn.backends import BACKENDS

from strategies import conv_cases, linear_cases

pytest.importorskip("triton")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("no CUDA and TRITON_INTERPRET is not 1", allow_module_level=True)

from intunlearn.backends import triton_gpu  # noqa: E402


@st.composite
def backward_extras(draw, batch: int, channels: int):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    per_channel = draw(st.booleans())
    weight_scales = torch.from_numpy(rng.uniform(1e-3, 0.1, channels if per_channel else 1)
                                     .astype(np.float32))
    alpha = None
    if draw(st.booleans()):
        alpha = rng.uniform(-1.0, 2.0, batch).astype(np.float32)
        alpha[rng.random(batch) < 0.2] = 0.0
        alpha = torch.from_numpy(alpha)
    return {
        "input_scale": draw(st.sampled_from([0.02, 1.0, 0.0037])),
        "weight_scales": weight_scales,
        "sample_weights": alpha,
        "grad_seed": draw(st.integers(0, 2**32 - 1)),
        "needs": draw(st.sampled_from([(True, True), (True, False), (False, True)])),
    }


@st.composite
def outputs(draw, shape, params):
    """An int8 forward output for the mask: values in [act_min, act_max], a fraction of them at
    the clamp ends (the backward reads the output only through act_min < y < act_max). Real
    forward outputs of random requantization parameters are mostly clamped, which would leave
    little gradient to check."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    low, high = params["act_min"], params["act_max"]
    values = rng.integers(low, high + 1, size=shape)
    ends = rng.random(shape)
    values = np.where(ends < 0.15, low, np.where(ends > 0.85, high, values))
    return torch.from_numpy(values.astype(np.int8))


def _expected(forward, x_real, w_real, b_real, g, alpha):
    """float64 autograd: gradients of sum_i alpha_i <g_i, forward(x, w, b)_i>."""
    x_real = x_real.clone().requires_grad_(True)
    w_real = w_real.clone().requires_grad_(True)
    b_real = b_real.clone().requires_grad_(True)
    y = forward(x_real, w_real, b_real)
    weighted = g if alpha is None else g * alpha.double().reshape((-1,) + (1,) * (g.dim() - 1))
    y.backward(weighted)
    return x_real.grad, w_real.grad, b_real.grad


def _check(got, expected, bound, name):
    if got is None:
        return
    got = got.detach().cpu().double()
    assert got.shape == expected.shape, name
    tolerance = 1e-5 * bound + 1e-6
    error = (got - expected).abs()
    assert bool((error <= tolerance).all()), \
        f"{name}: max error {error.max().item():.3g} (tolerance there {tolerance.flatten()[error.argmax()].item():.3g})"


def _run_case(kind, x, weight, int_weight, output, extras, act_min, act_max, input_zero_point,
              conv_params=None):
    """Triton backward vs float64 autograd (signed, and on absolute values for the bound)."""
    rng = np.random.default_rng(extras["grad_seed"])
    grad_output = torch.from_numpy(rng.standard_normal(output.shape).astype(np.float32))
    alpha = extras["sample_weights"]
    s_x, s_w = extras["input_scale"], extras["weight_scales"].double()
    needs_input, needs_weight = extras["needs"]
    mask = (output > act_min) & (output < act_max)
    g = torch.where(mask, grad_output.double(), 0.0)
    x_real = s_x * (x.double() - input_zero_point)
    w_real = s_w.reshape((-1,) + (1,) * (int_weight.dim() - 1)) * int_weight.double()
    b_real = torch.zeros(int_weight.shape[0], dtype=torch.float64)
    if kind == "linear":
        forward = lambda xr, wr, br: xr @ wr.T + br  # noqa: E731
        backward = triton_gpu.qlinear_backward
        params = dict(in_features=x.shape[1])
    else:
        top, bottom, left, right = conv_params["padding"]
        forward = lambda xr, wr, br: F.conv2d(  # noqa: E731
            F.pad(xr, (left, right, top, bottom)), wr, br, stride=conv_params["stride"],
            dilation=conv_params["dilation"], groups=conv_params["groups"])
        backward = triton_gpu.qconv2d_backward
        params = dict(conv_params, weight_shape=tuple(int_weight.shape))
    expected = list(_expected(forward, x_real, w_real, b_real, g, alpha))
    bounds = list(_expected(forward, x_real.abs(), w_real.abs(), b_real, g.abs(),
                            None if alpha is None else alpha.abs()))
    expected[0] = _expected(forward, x_real, w_real, b_real, g, None)[0]  # per-sample
    bounds[0] = _expected(forward, x_real.abs(), w_real.abs(), b_real, g.abs(), None)[0]
    to = lambda t: None if t is None else t.to(DEVICE)  # noqa: E731
    got = backward(to(grad_output), to(output), to(x), to(weight), **params,
                   input_zero_point=input_zero_point, input_scale=s_x,
                   weight_scales=to(extras["weight_scales"]), act_min=act_min, act_max=act_max,
                   sample_weights=to(alpha), needs_input_grad=needs_input,
                   needs_weight_grad=needs_weight)
    assert len(got) == 3
    assert (got[0] is None) != needs_input
    assert (got[1] is None) != needs_weight and got[2] is not None
    for value, exp, bound, name in zip(got, expected, bounds, ("grad_input", "grad_weight", "grad_bias")):
        _check(value, exp, bound, name)
    return got, grad_output


@settings(max_examples=80)
@given(linear_cases(max_batch=40, max_in=100, max_out=40), st.data())
def test_triton_qlinear_backward_matches_float64_autograd(case, data):
    x, int_weight, params = case["x"], case["weight"], case["params"]
    weight = ops.pack_int4(int_weight) if case["packed"] else int_weight
    output = data.draw(outputs((x.shape[0], int_weight.shape[0]), params))
    extras = data.draw(backward_extras(x.shape[0], int_weight.shape[0]))
    _run_case("linear", x, weight, int_weight, output, extras, params["act_min"],
              params["act_max"], params["input_zero_point"])


@settings(max_examples=80)
@given(conv_cases(max_channels=8, max_size=9), st.data())
def test_triton_qconv2d_backward_matches_float64_autograd(case, data):
    x, int_weight, params = case["x"], case["weight"], case["params"]
    weight = int_weight
    if case["packed"]:
        weight = ops.pack_int4(int_weight.reshape(int_weight.shape[0], -1))
    shape = ops.qconv2d(x, int_weight, None, **{k: v for k, v in params.items()
                                                if k != "weight_bits"}, backend="reference").shape
    output = data.draw(outputs(tuple(shape), params))
    extras = data.draw(backward_extras(x.shape[0], int_weight.shape[0]))
    conv_params = dict(stride=params["stride"], padding=case["pads"], dilation=params["dilation"],
                       groups=params["groups"])
    _run_case("conv", x, weight, int_weight, output, extras, params["act_min"], params["act_max"],
              params["input_zero_point"], conv_params)


def test_triton_qconv2d_backward_several_tiles():
    """Several tiles in every dimension of both conv backward GEMMs; channels_last input."""
    rng = np.random.default_rng(7)
    x = torch.from_numpy(rng.integers(-128, 128, (3, 12, 13, 11)).astype(np.int8))
    x = x.contiguous(memory_format=torch.channels_last)
    int_weight = torch.from_numpy(rng.integers(-8, 8, (40, 6, 3, 3)).astype(np.int8))
    conv_params = dict(stride=(2, 1), padding=(1, 2, 0, 1), dilation=(1, 2), groups=2)
    multiplier = torch.full((40,), 2**30, dtype=torch.int32)
    shift = torch.full((40,), -8, dtype=torch.int32)
    output = ops.qconv2d(x, ops.pack_int4(int_weight.reshape(40, -1)), None, **conv_params,
                         kernel_size=(3, 3), weight_bits=4, input_zero_point=-3,
                         output_zero_point=2, multiplier=multiplier, shift=shift, act_min=-50,
                         act_max=60, backend="reference")
    extras = {"input_scale": 0.05, "weight_scales": torch.linspace(0.01, 0.1, 40),
              "sample_weights": torch.linspace(0.0, 2.0, 3), "grad_seed": 1,
              "needs": (True, True)}
    for weight in (int_weight, ops.pack_int4(int_weight.reshape(40, -1))):
        _run_case("conv", x, weight, int_weight, output, extras, -50, 60, -3, conv_params)


def test_triton_backward_matches_numba_where_available():
    """Same inputs through the Numba backward (written in parallel) when it exists."""
    if not BACKENDS["numba"].available():
        pytest.skip("numba backend not available")
    numba = BACKENDS["numba"].load()
    if not hasattr(numba, "qlinear_backward"):
        pytest.skip("numba backend has no backward yet")
    rng = np.random.default_rng(3)
    to = lambda v: v.to(DEVICE) if isinstance(v, torch.Tensor) else v  # noqa: E731
    x = torch.from_numpy(rng.integers(-128, 128, (9, 37)).astype(np.int8))
    weight = ops.pack_int4(torch.from_numpy(rng.integers(-8, 8, (11, 37)).astype(np.int8)))
    output = torch.from_numpy(rng.integers(-128, 128, (9, 11)).astype(np.int8))
    grad = torch.from_numpy(rng.standard_normal((9, 11)).astype(np.float32))
    params = dict(in_features=37, input_zero_point=5, input_scale=0.03,
                  weight_scales=torch.linspace(0.01, 0.1, 11), act_min=-100, act_max=100,
                  sample_weights=torch.linspace(0.0, 1.0, 9))
    cases = [(numba.qlinear_backward, triton_gpu.qlinear_backward, (grad, output, x, weight), params)]
    x = torch.from_numpy(rng.integers(-128, 128, (2, 6, 7, 8)).astype(np.int8))
    weight = torch.from_numpy(rng.integers(-128, 128, (4, 3, 3, 2)).astype(np.int8))
    output = torch.from_numpy(rng.integers(-128, 128, (2, 4, 3, 7)).astype(np.int8))
    grad = torch.from_numpy(rng.standard_normal((2, 4, 3, 7)).astype(np.float32))
    params = dict(weight_shape=(4, 3, 3, 2), stride=(2, 1), padding=(1, 0, 1, 0), dilation=(1, 2),
                  groups=2, input_zero_point=-7, input_scale=0.1,
                  weight_scales=torch.linspace(0.01, 0.1, 4), act_min=-128, act_max=120,
                  sample_weights=torch.tensor([0.5, 2.0]))
    cases.append((numba.qconv2d_backward, triton_gpu.qconv2d_backward, (grad, output, x, weight), params))
    for numba_backward, triton_backward, args, params in cases:
        expected = numba_backward(*args, **params)
        got = triton_backward(*map(to, args), **{k: to(v) for k, v in params.items()})
        for a, b in zip(got, expected):
            torch.testing.assert_close(a.cpu(), b.cpu(), rtol=1e-5, atol=1e-4)
