"""torch.library ops: opcheck, and the STE gradients of quant_linear / quant_conv2d against a
float64 autograd reference of the dequantized computation."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import intunlearn  # noqa: F401  (registers the ops)
from intunlearn import qparams as qp
from intunlearn import ste
from intunlearn.layer_params import ConvGeometry, LayerQuant
from intunlearn.backends import BACKENDS
from intunlearn.modules import lsq_fake_quantize

CPU_BACKENDS = [name for name, b in BACKENDS.items() if "cpu" in b.devices and name != "triton" and b.available()]
OPS = torch.ops.intunlearn


def linear_inputs(seed, backend, batch=5, in_features=7, out_features=4, bits=8, clip_weights=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, in_features, generator=g, dtype=torch.float32) * 2
    w = torch.randn(out_features, in_features, generator=g)
    b = torch.randn(out_features, generator=g) * 0.1
    scales = qp.choose_weight_scales(w, bits).float()
    if clip_weights:
        scales = scales * 0.6  # the largest weights now clip
    # the input range covers most of x, so some entries saturate (exercises the input mask)
    return dict(x=x.requires_grad_(), weight=w.requires_grad_(), bias=b.requires_grad_(),
                weight_scale=scales.requires_grad_(), sample_weights=torch.rand(batch, generator=g) + 0.5,
                input_scale=0.02, input_zero_point=3, output_scale=0.05, output_zero_point=-4,
                act_min=-100, act_max=120, weight_bits=bits, rounding="double", backend=backend)


def conv_inputs(seed, backend, bits=8):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 6, 5, generator=g) * 2
    w = torch.randn(6, 2, 3, 2, generator=g)
    b = torch.randn(6, generator=g) * 0.1
    return dict(x=x.requires_grad_(), weight=w.requires_grad_(), bias=b.requires_grad_(),
                weight_scale=qp.choose_weight_scales(w, bits).float().requires_grad_(),
                sample_weights=torch.rand(2, generator=g) + 0.5, input_scale=0.02, input_zero_point=3,
                output_scale=0.08, output_zero_point=-4, act_min=-90, act_max=127, weight_bits=bits,
                rounding="double", backend=backend, stride=[2, 1], padding=[1, 0, 2, 1],
                dilation=[1, 2], groups=2)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_opcheck_quant_linear_and_conv2d(backend):
    for op, inputs in ((OPS.quant_linear.default, linear_inputs(0, backend)),
                       (OPS.quant_conv2d.default, conv_inputs(0, backend))):
        torch.library.opcheck(op, tuple(inputs.values()))


def test_opcheck_integer_ops():
    x = torch.randint(-128, 128, (3, 6), dtype=torch.int8)
    w = torch.randint(-7, 8, (4, 6), dtype=torch.int8)
    m, s = torch.full((4,), 2**30, dtype=torch.int32), torch.full((4,), -6, dtype=torch.int32)
    torch.library.opcheck(OPS.qlinear.default, (x, w, None, m, s, 1, 2, -128, 127, 4, 0, "double", "auto"))
    image = torch.randint(-128, 128, (2, 4, 5, 5), dtype=torch.int8)
    cw = torch.randint(-128, 128, (4, 2, 3, 3), dtype=torch.int8)
    torch.library.opcheck(OPS.qconv2d.default, (image, cw, None, m, s, [1, 2], [1, 1, 0, 2], [1, 1], 2,
                                                0, 0, -128, 127, 8, "single", "auto"))
    for rounding in ("double", "single"):
        torch.library.opcheck(OPS.qadd.default, (image, image, 1, 2**30, -1, -2, 2**30, -1, 20, 3,
                                                 2**30, -18, -128, 127, rounding, "auto"))
    torch.library.opcheck(OPS.qavg_pool2d.default, (image, [2, 3], [1, 2], [1, 1, 1, 1], -128, 127, "auto"))


def float64_reference_grads(inputs, op_output, geometry=None):
    """STE gradients in float64: dequantized weights/bias/input on their grids, outputs masked
    where clamped, weights masked where clipped, alpha only in the weight/bias reductions."""
    limit = qp.weight_max(inputs["weight_bits"])
    s_x, z_x = inputs["input_scale"], inputs["input_zero_point"]
    x = inputs["x"].detach().double()
    x_code = qp.round_half_away(x / s_x) + z_x
    x_mask = (x_code >= -128) & (x_code <= 127)
    x_grid = (s_x * (x_code.clamp(-128, 127) - z_x)).requires_grad_()
    scale = inputs["weight_scale"].detach().double().reshape((-1,) + (1,) * (inputs["weight"].dim() - 1))
    ratio = inputs["weight"].detach().double() / scale
    w_code = qp.round_half_away(ratio)
    w_mask = ratio.abs() <= limit  # LSQ: the gradient passes inside the clip range of w/s
    w_hat = (w_code.clamp(-limit, limit) * scale).requires_grad_()
    b_hat = (qp.round_half_away(inputs["bias"].detach().double() / (s_x * scale.flatten()))
             * s_x * scale.flatten()).requires_grad_()
    if geometry is None:
        y = F.linear(x_grid, w_hat, b_hat)
    else:
        top, bottom, left, right = geometry["padding"]
        y = F.conv2d(F.pad(x_grid, (left, right, top, bottom)), w_hat, b_hat, geometry["stride"], 0,
                     geometry["dilation"], geometry["groups"])
    y_code = qp.round_half_away(op_output.detach().double() / inputs["output_scale"]) + inputs["output_zero_point"]
    upstream = torch.linspace(-1, 1, y.numel(), dtype=torch.float64).reshape(y.shape)
    y_mask = (y_code > inputs["act_min"]) & (y_code < inputs["act_max"])
    alpha = inputs["sample_weights"].double().reshape((-1,) + (1,) * (y.dim() - 1))
    grad_x, = torch.autograd.grad((y * upstream * y_mask).sum(), x_grid, retain_graph=True)
    grad_w, grad_b = torch.autograd.grad((y * upstream * y_mask * alpha).sum(), (w_hat, b_hat))
    return upstream.float(), grad_x * x_mask, grad_w * w_mask, grad_b


def eager_quant_linear(x, weight, bias, weight_scale, sample_weights, *quant):
    """ste.apply_quant_linear with the custom op's flat arguments."""
    return ste.apply_quant_linear(x, weight, bias, weight_scale, sample_weights, LayerQuant(*quant))


def eager_quant_conv2d(x, weight, bias, weight_scale, sample_weights, *quant_and_geometry):
    """ste.apply_quant_conv2d with the custom op's flat arguments."""
    fields = len(LayerQuant._fields)
    return ste.apply_quant_conv2d(x, weight, bias, weight_scale, sample_weights,
                                  LayerQuant(*quant_and_geometry[:fields]),
                                  ConvGeometry.of(*quant_and_geometry[fields:]))


# The training ops are reached two ways: the custom ops (what torch.compile traces) and the
# eager autograd.Function the modules call; both must give the STE gradients.
ENTRY_POINTS = {"custom_op": (OPS.quant_linear, OPS.quant_conv2d),
                "eager": (eager_quant_linear, eager_quant_conv2d)}


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("kind", ["linear", "conv2d"])
@pytest.mark.parametrize("bits, clip", [(8, False), (4, True)])
@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_ste_gradients_match_float64_autograd(backend, kind, bits, clip, entry):
    linear_op, conv_op = ENTRY_POINTS[entry]
    if kind == "linear":
        inputs = linear_inputs(1, backend, bits=bits, clip_weights=clip)
        op, geometry = linear_op, None
    else:
        inputs = conv_inputs(1, backend, bits=bits)
        op, geometry = conv_op, {k: inputs[k] for k in ("stride", "padding", "dilation", "groups")}
    output = op(*inputs.values())
    upstream, grad_x, grad_w, grad_b = float64_reference_grads(inputs, output, geometry)
    output.backward(upstream)
    torch.testing.assert_close(inputs["x"].grad.double(), grad_x, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(inputs["weight"].grad.double(), grad_w, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(inputs["bias"].grad.double(), grad_b, rtol=1e-5, atol=1e-6)
    assert inputs["x"].grad.abs().sum() > 0 and inputs["weight"].grad.abs().sum() > 0


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
@settings(max_examples=10)
@given(seed=st.integers(0, 1000), bits=st.sampled_from([4, 8]))
def test_lsq_step_size_gradient_agrees_with_fake_quant(backend, entry, seed, bits):
    """The integer op's explicit LSQ formula equals autograd through the fake-quant LSQ."""
    inputs = linear_inputs(seed, backend, bits=bits, clip_weights=True)
    output = ENTRY_POINTS[entry][0](*inputs.values())
    upstream = torch.randn(output.shape, generator=torch.Generator().manual_seed(seed))
    output.backward(upstream)
    integer_grad = inputs["weight_scale"].grad.clone()

    scale = inputs["weight_scale"].detach().clone().requires_grad_()
    w_hat = lsq_fake_quantize(inputs["weight"].detach(), scale[:, None], qp.weight_max(bits))
    # d loss / d w_hat as the integer op's backward sees it: masked, alpha-weighted upstream x input
    (w_hat * _grad_w_hat(inputs, output, upstream)).sum().backward()
    torch.testing.assert_close(integer_grad, scale.grad, rtol=1e-4, atol=1e-6)


def _grad_w_hat(inputs, output, upstream):
    s_x, z_x = inputs["input_scale"], inputs["input_zero_point"]
    x_code = (qp.round_half_away(inputs["x"].detach().double() / s_x) + z_x).clamp(-128, 127)
    y_code = qp.round_half_away(output.detach().double() / inputs["output_scale"]) + inputs["output_zero_point"]
    g = upstream.double() * ((y_code > inputs["act_min"]) & (y_code < inputs["act_max"]))
    g = g * inputs["sample_weights"].double()[:, None]
    return (g.T @ (s_x * (x_code - z_x))).float()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("kind", ["linear", "conv2d"])
def test_eager_path_equals_the_custom_ops_bit_for_bit(backend, kind):
    """Same outputs and gradients from both entry points (the eager one saves the forward's int8
    tensors; the custom op's backward recovers them from its float input and output)."""
    results = []
    for entry in ("custom_op", "eager"):
        inputs = (linear_inputs if kind == "linear" else conv_inputs)(2, backend)
        op = ENTRY_POINTS[entry][0 if kind == "linear" else 1]
        output = op(*inputs.values())
        output.backward(torch.linspace(-1, 1, output.numel()).reshape(output.shape))
        results.append([output.detach()] + [inputs[k].grad for k in ("x", "weight", "bias", "weight_scale")])
    for custom, eager in zip(*results):
        assert torch.equal(custom, eager)


def test_training_ops_name_mismatched_shapes():
    inputs = linear_inputs(0, "auto")
    inputs["x"] = torch.randn(5, 6)
    with pytest.raises(ValueError, match="same IN"):
        eager_quant_linear(*inputs.values())
    inputs = conv_inputs(0, "auto")
    inputs["groups"] = 3
    with pytest.raises(ValueError, match="groups"):
        eager_quant_conv2d(*inputs.values())


@pytest.mark.parametrize("change, message", [
    ({"bias": torch.zeros(3)}, "bias must have shape \\[4\\]"),
    ({"weight_scale": torch.ones(2)}, "weight_scale must have shape"),
    ({"act_min": 100, "act_max": -100}, "act_min must be <= act_max"),
    ({"act_min": -1000}, "act_min"),
    ({"rounding": "bogus"}, "rounding"),
    ({"input_zero_point": 2**31 + 5}, "input_zero_point must lie in"),
    ({"output_zero_point": -2**31 - 1}, "output_zero_point must lie in"),
])
@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_training_ops_name_bad_parameters(change, message, entry):
    inputs = {**linear_inputs(0, "auto"), **change}
    with pytest.raises(ValueError, match=message):
        ENTRY_POINTS[entry][0](*inputs.values())


def test_training_weight_codes_of_float64_weights_are_computed_in_float64():
    """2.4999999999 rounds to 2 (float32 would first make it 2.5 and round to 3)."""
    codes, inside, slope = qp.weight_codes(torch.tensor([[2.4999999999]], dtype=torch.float64),
                                           torch.tensor([1.0], dtype=torch.float64), 8)
    assert codes.item() == 2 and inside.item() and slope.item() == pytest.approx(-0.4999999999)


def test_training_ops_on_meta_tensors_give_meta_outputs():
    """Meta tensors (shape inference) take the custom ops' fake implementations."""
    inputs = linear_inputs(0, "auto")
    for name in ("x", "weight", "bias", "weight_scale", "sample_weights"):
        inputs[name] = inputs[name].detach().to("meta")
    out = eager_quant_linear(*inputs.values())
    assert out.device.type == "meta" and out.shape == (5, 4)
