"""Quantized modules and model conversion: the integer forward is the composition of the
reference ops on the exported integer state, modes switch in place, per-sample weights give
the gradient of the weighted loss, state round-trips, torch.compile works, bad models fail."""

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import intunlearn
from intunlearn import ops
from intunlearn import qparams as qp
from intunlearn.backends import BACKENDS

CPU_BACKENDS = [name for name, b in BACKENDS.items() if name in ("reference", "numba") and b.available()]


class ResidualNet(nn.Module):
    """conv-BN-ReLU stem, a residual block with its ReLU after the add, global pool, linear."""

    def __init__(self, width=6):
        super().__init__()
        self.stem = nn.Conv2d(2, width, 3, padding=1)
        self.stem_bn = nn.BatchNorm2d(width)
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, groups=2, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, 5)

    def forward(self, x):
        x = F.relu(self.stem_bn(self.stem(x)))
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = F.relu(out + x)
        return self.fc(torch.flatten(self.pool(out), 1))


def residual_net(seed=0):
    torch.manual_seed(seed)
    model = ResidualNet()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.3, 0.3)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
    return model.eval()


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU6(), nn.Linear(16, 3))


def images(n=8, seed=1):
    return torch.randn(n, 2, 6, 6, generator=torch.Generator().manual_seed(seed))


def int8_codes(real, q: qp.ActivationQParams):
    return qp.quantize(real, q.scale, q.zero_point, -128, 127)


def modules_of(model, kind):
    return [m for m in model.modules() if isinstance(m, kind)]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("bits, rounding", [(4, "double"), (8, "double"), (4, "single")])
def test_integer_forward_is_the_reference_ops_on_the_exported_state(backend, bits, rounding):
    """The whole integer model, residual add included, is the reference ops on its exported
    state, in both TFLite builds (single rounding: every rescale, the add's too, rounds once)."""
    model = intunlearn.quantize(residual_net(), weight_bits=bits, calibration=images(32, seed=2), backend=backend,
                                rounding=rounding)
    x = images()
    state = intunlearn.integer_state_dict(model)
    names = [name for name, m in model.named_modules() if isinstance(m, intunlearn.modules.QuantModule)]
    input_q, stem, conv1, conv2, add, pool, fc = names

    def entry(name, key):
        return state[f"{name}.{key}"]

    def zero_point(name, prefix):
        return int(entry(name, f"{prefix}_zero_point"))

    def conv(name, x_q, **geometry):
        weight = entry(name, "weight")
        extra = {"kernel_size": tuple(entry(name, "weight_shape")[2:].tolist())} if bits == 4 else {}
        return ops.qconv2d(x_q, weight, entry(name, "bias") if f"{name}.bias" in state else None,
                           input_zero_point=zero_point(name, "input"), output_zero_point=zero_point(name, "output"),
                           multiplier=entry(name, "multiplier"), shift=entry(name, "shift"),
                           act_min=int(entry(name, "act_min")), act_max=int(entry(name, "act_max")),
                           weight_bits=bits, rounding=rounding, backend="reference", **geometry, **extra)

    x_q = qp.quantize(x, float(entry(input_q, "output_scale")), zero_point(input_q, "output"), -128, 127)
    h = conv(stem, x_q, padding=1)
    out = conv(conv2, conv(conv1, h, padding=1), padding=1, groups=2)
    add_args = {k: int(entry(add, k)) for k in ("a_multiplier", "a_shift", "b_multiplier", "b_shift", "left_shift",
                                                "output_multiplier", "output_shift", "act_min", "act_max")}
    summed = ops.qadd(out, h, a_zero_point=zero_point(add, "a"), b_zero_point=zero_point(add, "b"),
                      output_zero_point=zero_point(add, "output"), rounding=rounding, backend="reference",
                      **add_args)
    pooled = ops.qavg_pool2d(summed, tuple(summed.shape[2:]), backend="reference")
    logits = ops.qlinear(pooled.flatten(1), entry(fc, "weight"), entry(fc, "bias"),
                         input_zero_point=zero_point(fc, "input"), output_zero_point=zero_point(fc, "output"),
                         multiplier=entry(fc, "multiplier"), shift=entry(fc, "shift"), weight_bits=bits,
                         rounding=rounding, backend="reference")
    fc_layer = dict(model.named_modules())[fc]
    torch.testing.assert_close(int8_codes(model(x), fc_layer.output_qparams), logits, rtol=0, atol=0)


@pytest.mark.parametrize("make_layer, shape", [
    (lambda: nn.Linear(20, 7), (16, 20)),
    (lambda: nn.Conv2d(3, 4, 3, stride=2, padding=1), (4, 3, 7, 7)),
])
@pytest.mark.parametrize("bits", [4, 8])
def test_fake_quant_and_integer_layers_differ_by_at_most_one_lsb(make_layer, shape, bits):
    """The documented bound: same int8 input, one layer, at most 1 LSB of the output scale."""
    torch.manual_seed(3)
    model = intunlearn.quantize(nn.Sequential(make_layer(), nn.ReLU()), weight_bits=bits,
                                calibration=torch.randn(64, *shape[1:]))
    x = torch.randn(shape)
    integer = model(x)
    fake = intunlearn.set_arithmetic(model, "fake")(x)
    layer = modules_of(model, intunlearn.modules._WeightedLayer)[0]
    difference = (int8_codes(integer, layer.output_qparams).int() - int8_codes(fake, layer.output_qparams).int()).abs()
    assert difference.max() <= 1
    assert (difference == 0).float().mean() > 0.8  # and mostly none


def test_set_arithmetic_switches_in_place_and_keep_float_stays_float():
    model = intunlearn.quantize(mlp(), weight_bits=4, calibration=torch.randn(64, 12), keep_float=["0"])
    x = torch.randn(10, 12)
    reference_float = mlp()(x)
    assert intunlearn.set_arithmetic(model, "float") is model
    torch.testing.assert_close(model(x), reference_float)  # float mode is the float model
    intunlearn.set_arithmetic(model, "integer")
    layers = modules_of(model, intunlearn.modules._WeightedLayer)
    assert [layer.mode for layer in layers] == ["float", "integer", "integer"]
    assert not torch.equal(model(x), reference_float)
    with pytest.raises(ValueError, match="mode must be one of"):
        intunlearn.set_arithmetic(model, "int8")


@pytest.mark.parametrize("mode", ["integer", "fake", "float"])
def test_sample_weights_give_the_gradient_of_the_weighted_loss(mode):
    """Fusing alpha into each layer's weight reduction == weighting each sample's loss."""
    model = intunlearn.quantize(residual_net(), weight_bits=4, calibration=images(32), mode=mode)
    model.train()
    x, y = images(6, seed=5), torch.tensor([0, 1, 2, 3, 4, 0])
    alpha = torch.tensor([0.2, 1.5, 0.0, 1.0, 3.0, 0.7])

    with intunlearn.sample_weights(model, alpha):
        F.cross_entropy(model(x), y, reduction="sum").backward()
    fused = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    (alpha * F.cross_entropy(model(x), y, reduction="none")).sum().backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(fused[name], p.grad, rtol=1e-4, atol=1e-5, msg=name)
    assert all(m.sample_weights_for_backward is None for m in modules_of(model, intunlearn.modules._WeightedLayer))


def test_lsq_step_sizes_are_learned():
    model = intunlearn.quantize(mlp(), weight_bits=4, calibration=torch.randn(64, 12), lsq=True)
    scales = [p for name, p in model.named_parameters() if name.endswith("weight_scale")]
    assert len(scales) == 3
    F.cross_entropy(model(torch.randn(8, 12)), torch.randint(0, 3, (8,))).backward()
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in scales)


def test_integer_state_round_trips_through_a_file(tmp_path):
    model = intunlearn.quantize(residual_net(), weight_bits=4, calibration=images(32))
    path = tmp_path / "model.int.pt"
    intunlearn.save_integer_state(model, path)
    state = intunlearn.load_integer_state(path)  # weights_only=True
    assert state["fc_q7.weight"].dtype == torch.uint8  # packed int4
    other = intunlearn.quantize(residual_net(seed=9), weight_bits=4, calibration=images(8, seed=7))
    x = images(5, seed=11)
    assert not torch.equal(other(x), model(x))
    intunlearn.load_integer_state_dict(other, state)
    torch.testing.assert_close(other(x), model(x), rtol=0, atol=0)


def test_loading_a_mismatched_state_fails_clearly():
    state = intunlearn.integer_state_dict(intunlearn.quantize(mlp(), weight_bits=4, calibration=torch.randn(8, 12)))
    eight_bit = intunlearn.quantize(mlp(), weight_bits=8, calibration=torch.randn(8, 12))
    with pytest.raises(ValueError, match="4-bit weights, the model 8-bit"):
        intunlearn.load_integer_state_dict(eight_bit, state)
    with pytest.raises(ValueError, match="modules the model lacks"):
        intunlearn.load_integer_state_dict(intunlearn.quantize(residual_net(), calibration=images(4)), state)


def _mlp_state_and_target():
    state = intunlearn.integer_state_dict(intunlearn.quantize(mlp(), calibration=torch.randn(8, 12)))
    target = intunlearn.quantize(mlp(seed=3), calibration=torch.randn(8, 12))
    return state, target


def _layer_names(state):
    return sorted({key.rsplit(".", 1)[0] for key in state if key.endswith(".multiplier")})


@pytest.mark.parametrize("corrupt, message", [
    (lambda s, n: s.update({f"{n[0]}.weight": s[f"{n[0]}.weight"][:1]}), "not reproduced|shape"),
    (lambda s, n: [s.pop(k) for k in [k for k in s if k.startswith(n[1] + ".")]], "state lacks the quantized modules"),
    (lambda s, n: s.pop(f"{n[1]}.multiplier"), "state lacks the entry"),
    (lambda s, n: s.update({f"{n[2]}.weight": s[f"{n[2]}.weight"].float()}), "must be a tensor of dtype torch.int8"),
    (lambda s, n: s.update({f"{n[2]}.bias": s[f"{n[2]}.bias"] + 2**27}), "does not survive the float32 latent bias"),
])
def test_a_bad_state_is_named_and_leaves_the_model_as_it_was(corrupt, message):
    state, target = _mlp_state_and_target()
    corrupt(state, _layer_names(state))
    before = {key: value.clone() for key, value in target.state_dict().items()}
    x = torch.randn(3, 12)
    output = target(x)
    with pytest.raises(ValueError, match=message):
        intunlearn.load_integer_state_dict(target, state)
    for key, value in target.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert torch.equal(target(x), output)


def test_torch_compile_backend_forward_and_backward_fullgraph():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding="same"), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 3))
    x = images(4)
    compiled = torch.compile(model, backend="intunlearn", fullgraph=True)
    out = compiled(x)
    out.square().sum().backward()
    compiled_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    from intunlearn.compile import integer_conv2d, integer_linear
    conv, fc = model[0], model[3]
    eager = integer_linear(F.relu(integer_conv2d(x, conv.weight, conv.bias, 1, "same")).flatten(1), fc.weight, fc.bias)
    torch.testing.assert_close(out, eager, rtol=0, atol=0)
    eager.square().sum().backward()
    for got, want in zip(compiled_grads, (p.grad for p in model.parameters())):
        torch.testing.assert_close(got, want)
    assert (out - model(x)).abs().max() < 0.1 * model(x).abs().max()  # close to float, not equal
    assert not torch.equal(out, model(x))


@pytest.mark.parametrize("mode", ["integer", "fake"])
def test_a_converted_model_compiles_fullgraph_with_the_eager_bits(mode):
    """torch.compile(fullgraph=True) of a whole converted model (input quantizer, residual add,
    pooling): the compiled forward gives the eager bits, and in integer arithmetic so does the
    STE backward (custom ops); fake-quant's float backward is fused by Inductor, so it agrees to
    float32 rounding. While Dynamo traces, the quantizers take their torch code instead of the
    Numba kernels it cannot trace, and the layers' quantization parameters are constants."""
    model = intunlearn.quantize(residual_net(), weight_bits=4, calibration=images(32), mode=mode)
    model.train()
    x = images(5, seed=7)
    eager = model(x)
    eager.square().sum().backward()
    eager_grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)(x)
    assert torch.equal(compiled, eager)
    compiled.square().sum().backward()
    for name, p in model.named_parameters():
        if mode == "integer":
            assert torch.equal(p.grad, eager_grads[name]), name
        else:
            torch.testing.assert_close(p.grad, eager_grads[name], rtol=1e-5, atol=1e-6, msg=name)


def test_loaded_quantization_parameters_reach_the_compiled_model():
    """torch.compile sees the layers' parameters as Python constants; load_state_dict must
    refresh them, or a compiled model would keep computing with the old grid."""
    source = intunlearn.quantize(residual_net(seed=0), calibration=images(32))
    target = intunlearn.quantize(residual_net(seed=0), calibration=images(32, seed=9) * 3)
    x = images(4, seed=3)
    target.load_state_dict(source.state_dict())
    torch._dynamo.reset()
    assert torch.equal(torch.compile(target, fullgraph=True)(x), source(x))


def test_a_compiled_model_follows_changed_quantization_parameters():
    """Changing the add's and a layer's scales (set_qparams, twice) recompiles the model, whose
    outputs stay the eager ones: the scales reach Dynamo as constants, never as symbolic floats
    that QuantizeMultiplier's Python math could not take."""
    model = intunlearn.quantize(residual_net(), calibration=images(32))
    add = modules_of(model, intunlearn.modules.QuantAdd)[0]
    layer = modules_of(model, intunlearn.modules.QuantLinear)[0]
    x = images(3, seed=4)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    assert torch.equal(compiled(x), model(x))
    for factor in (1.25, 0.8):
        q = add.output_qparams
        add.set_output_qparams(qp.ActivationQParams(q.scale * factor, q.zero_point))
        q = layer.output_qparams
        layer.set_output_qparams(qp.ActivationQParams(q.scale * factor, q.zero_point + 1))
        assert torch.equal(compiled(x), model(x))


class Gated(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return torch.sigmoid(self.fc(x))


@pytest.mark.parametrize("model, message", [
    (nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)), "layer '1' (LayerNorm) is not supported"),
    (Gated(), "function sigmoid at node 'sigmoid' is not supported"),
    (nn.Sequential(nn.BatchNorm2d(2), nn.Conv2d(2, 2, 1)), "BatchNorm2d '0' must directly follow a Conv2d"),
    (nn.Sequential(nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect")), "only explicit zero padding"),
    (nn.Sequential(nn.AdaptiveAvgPool2d(2)), "only output_size 1"),
])
def test_unsupported_layers_are_named(model, message):
    data = torch.randn(2, 2, 4, 4) if not isinstance(model, Gated) and not isinstance(model[0], nn.Linear) else torch.randn(2, 4)
    with pytest.raises(NotImplementedError, match=re.escape(message)):
        intunlearn.quantize(model, calibration=data)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(weight_bits=3), ValueError, "bits must be 4 or 8"),
    (dict(act_bits=4), ValueError, "act_bits must be 8"),
    (dict(keep_float=["nope"]), ValueError, "keep_float names modules that do not exist: ['nope']"),
    (dict(calibration=[]), ValueError, "calibration must provide at least one batch"),
    (dict(calibration=torch.zeros(0, 12)), ValueError, "calibration must provide at least one input"),
    (dict(backend="gpu"), ValueError, "backend must be one of"),
    (dict(rounding="floor"), ValueError, "rounding must be one of"),
    (dict(mode="int8"), ValueError, "mode must be one of"),
])
def test_quantize_rejects_bad_arguments(kwargs, error, message):
    arguments = dict(calibration=torch.randn(4, 12))
    arguments.update(kwargs)
    with pytest.raises(error, match=re.escape(message)):
        intunlearn.quantize(mlp(), **arguments)


def test_compile_backend_keeps_the_gradient_of_the_largest_output():
    torch.manual_seed(1)
    layer = nn.Linear(6, 4)
    x = torch.randn(5, 6)
    out = torch.compile(layer, backend="intunlearn", fullgraph=True)(x)
    top = out.flatten().argmax()
    out.flatten()[top].backward()
    assert layer.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("mode", ["integer", "fake", "float"])
@pytest.mark.parametrize("alpha, error, message", [
    (torch.ones(5), ValueError, "alpha has 5 entries but the batch .* has 6 samples"),
    (torch.ones(1), ValueError, "alpha has 1 entries"),
    (torch.ones(6, 1), TypeError, "alpha must be a 1-D floating tensor"),
    (torch.ones(6, dtype=torch.int64), TypeError, "alpha must be a 1-D floating tensor"),
    ([1.0] * 6, TypeError, "alpha must be a 1-D floating tensor .* got list"),
    (torch.tensor([1.0, 1, 1, float("nan"), 1, 1]), ValueError, "alpha must be finite"),
])
def test_sample_weights_name_a_bad_alpha(mode, alpha, error, message):
    """A wrong alpha never reaches the kernels (they index it by sample)."""
    model = intunlearn.quantize(residual_net(), weight_bits=4, calibration=images(32), mode=mode)
    x = images(6, seed=5)
    with pytest.raises(error, match=message):
        with intunlearn.sample_weights(model, alpha):
            model(x).sum().backward()


def test_training_op_names_sample_weights_of_the_wrong_length():
    model = intunlearn.quantize(mlp(), calibration=torch.randn(16, 12))
    layer = modules_of(model, intunlearn.modules.QuantLinear)[0]
    quant = layer.layer_quant(-128, 127)
    x = torch.randn(4, 12)
    for entry in (intunlearn.ste.apply_quant_linear,
                  lambda *args: torch.ops.intunlearn.quant_linear(*args[:-1], *args[-1])):
        with pytest.raises(ValueError, match=r"sample_weights must be a floating tensor \[4\]"):
            entry(x, layer.weight, layer.bias, layer.weight_scale, torch.ones(3), quant)


def test_residual_add_follows_the_models_rounding(monkeypatch):
    """quantize(rounding="single") gives the residual adds TFLITE_SINGLE_ROUNDING's rescales
    too: every pair of int8 codes through the module equals ops.qadd(rounding="single"). (With
    TFLite's left shift of 20 the two builds rarely differ on an add, so the rounding mode the
    module hands to the op is checked as well.)"""
    model = intunlearn.quantize(residual_net(), calibration=images(32, seed=2), rounding="single")
    add = modules_of(model, intunlearn.modules.QuantAdd)[0]
    qa, qb, qy = add.input_qparams("a"), add.input_qparams("b"), add.output_qparams
    codes = torch.arange(-128, 128, dtype=torch.int8)
    a_q, b_q = codes.repeat_interleave(256), codes.repeat(256)
    a, b = qp.dequantize(a_q, qa.scale, qa.zero_point), qp.dequantize(b_q, qb.scale, qb.zero_point)
    seen = []
    real_apply_qadd = intunlearn.ste.apply_qadd
    monkeypatch.setattr(intunlearn.ste, "apply_qadd",
                        lambda *args: seen.append(args[-1]) or real_apply_qadd(*args))
    got = int8_codes(add(a, b), qy)
    params = dict(qp.add_params(qa, qb, qy), act_min=add.activation_range()[0], act_max=127,
                  backend="reference")
    assert torch.equal(got, ops.qadd(a_q, b_q, **params, rounding="single"))
    assert seen == ["single"]


def test_modules_name_a_bad_rounding_when_built():
    with pytest.raises(ValueError, match="rounding must be 'double' or 'single', got 'floor'"):
        intunlearn.modules.QuantAdd(rounding="floor")
    with pytest.raises(ValueError, match="rounding must be 'double' or 'single'"):
        intunlearn.modules.QuantLinear.from_float(nn.Linear(3, 2), weight_bits=8, rounding="floor")
