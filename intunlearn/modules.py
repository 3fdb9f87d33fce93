"""Quantized modules with three arithmetic modes.

* "integer": the true integer forward through the kernels (`intunlearn::quant_linear` / `..conv2d`,
  `intunlearn::qadd`, `intunlearn::qavg_pool2d`), straight-through-estimator backward.
* "fake": the same parameters simulated in float32 (quantize-dequantize of inputs, weights,
  biases and outputs), as LSQ, Brevitas or the Q-MUL code simulate quantization.
* "float": plain float, the quantizers switched off (for calibration and reference).

Every module passes real-valued tensors between layers; in "integer" and "fake" mode they lie
exactly on the int8 grid of the producing layer's output parameters, so a consumer that uses the
same parameters recovers the int8 values exactly. Per-sample loss weights alpha (Q-MUL's
adaptive gradient reweighting) are set with `sample_weights(model, alpha)` and applied inside each
layer's weight-gradient reduction, in all three modes.

Fake-quant vs integer bound: given the same int8 input, a layer's fake-quant and integer
outputs differ by at most 1 LSB of its output scale (fixed-point requantization vs float32
rounding); through a network the differences can compound.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from intunlearn import library  # noqa: F401  (registers the custom ops that ste calls under torch.compile)
from intunlearn import ops, ste
from intunlearn import qparams as qp
from intunlearn.layer_params import ConvGeometry, LayerQuant

MODES = ("integer", "fake", "float")
ACTIVATIONS = (None, "relu", "relu6")


def _check_mode(mode):
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return mode


def _check_rounding(rounding: str) -> str:
    if rounding not in ops.ROUNDINGS:
        raise ValueError(f"rounding must be 'double' or 'single', got {rounding!r}")
    return rounding


class QuantModule(nn.Module):
    """Shared state of the quantized modules: arithmetic mode, backend, calibration observer,
    and the output quantization parameters (a real scale and an int8 zero point)."""

    def __init__(self, mode="integer", backend="auto"):
        super().__init__()
        self.mode = _check_mode(mode)
        self.pinned_float = False  # layers kept in float (quantize(keep_float=...)) stay float
        self.backend = backend
        self.observing = False
        self.sample_weights_for_backward = None
        self._qparams_values: dict[str, tuple[str, int]] = {}  # (scale.hex(), zero point): see qparams
        self.register_buffer("observed_range", torch.tensor([math.inf, -math.inf], dtype=torch.float64))
        self.register_qparams("output")

    def register_qparams(self, prefix: str):
        """Buffers `<prefix>_scale` and `<prefix>_zero_point` (saved in the state dict), and
        their values as Python constants for torch.compile (see qparams)."""
        self.register_buffer(f"{prefix}_scale", torch.tensor(1.0, dtype=torch.float64))
        self.register_buffer(f"{prefix}_zero_point", torch.tensor(0, dtype=torch.int64))
        self._remember_qparams(prefix)

    def qparams(self, prefix: str) -> qp.ActivationQParams:
        """The buffers' values. Under torch.compile, where reading a buffer's value is
        data-dependent and breaks the graph, the copy kept by set_qparams, load_state_dict and
        .to()/.float()/... is used instead: the scale as its float.hex() string, so that Dynamo
        treats it as a constant (a changed float would become symbolic on the recompile, and
        QuantizeMultiplier's Python math cannot take a symbolic float). Write the parameters
        through set_qparams or load_state_dict; a buffer written in place is seen by eager
        calls only."""
        if torch.compiler.is_compiling():
            scale_hex, zero_point = self._qparams_values[prefix]
            return qp.ActivationQParams(float.fromhex(scale_hex), zero_point)
        return qp.ActivationQParams(float(getattr(self, f"{prefix}_scale")),
                                    int(getattr(self, f"{prefix}_zero_point")))

    def _remember_qparams(self, prefix: str):
        self._qparams_values[prefix] = (float(getattr(self, f"{prefix}_scale")).hex(),
                                        int(getattr(self, f"{prefix}_zero_point")))

    def set_qparams(self, prefix: str, q: qp.ActivationQParams):
        getattr(self, f"{prefix}_scale").fill_(q.scale)
        getattr(self, f"{prefix}_zero_point").fill_(q.zero_point)
        self._remember_qparams(prefix)

    def _remember_all_qparams(self):
        for prefix in list(self._qparams_values):
            self._remember_qparams(prefix)

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._remember_all_qparams()

    def _apply(self, fn, *args, **kwargs):  # .to(), .float(), .cuda(), ... may change the buffers
        result = super()._apply(fn, *args, **kwargs)
        self._remember_all_qparams()
        return result

    def __setstate__(self, state):
        super().__setstate__(state)
        if "_qparams_values" not in self.__dict__:  # pickled before the copy existed
            self._qparams_values = {}
            for name in self._buffers:
                if name.endswith("_scale") and f"{name[:-6]}_zero_point" in self._buffers:
                    self._remember_qparams(name[:-6])

    def observe(self, output):
        low, high = self.observed_range.tolist()
        values = output.detach()
        self.observed_range = torch.tensor([min(low, float(values.min())), max(high, float(values.max()))],
                                           dtype=torch.float64, device=self.observed_range.device)

    @property
    def output_qparams(self) -> qp.ActivationQParams:
        return self.qparams("output")

    def set_output_qparams(self, q: qp.ActivationQParams):
        self.set_qparams("output", q)

    def freeze_observed_range(self):
        """Output parameters from the observed range (calibration)."""
        low, high = self.observed_range.tolist()
        if low > high:
            raise RuntimeError(f"{type(self).__name__} saw no calibration data")
        self.set_output_qparams(qp.choose_activation_qparams(low, high))

    def fake_quantize_output(self, y, act_min=-128, act_max=127):
        return fake_quantize_activation(y, self.output_qparams, act_min, act_max, self.backend)


class InputQuantizer(QuantModule):
    """Puts a real-valued model input on the int8 grid (first op of every converted model).
    An input with NaN or inf is refused: the quantizer has no code for it (eager calls only;
    a compiled graph cannot raise on data)."""

    def forward(self, x):
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            # An integer tensor would be quantized and then cast back to its own dtype, which
            # truncates the int8 grid's values: refuse it rather than compute nonsense.
            kind = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
            raise TypeError(f"model input must be a floating tensor (float32, or float64/float16/bfloat16 in "
                            f"integer arithmetic) of real values, got {kind}; convert integer data first, "
                            f"e.g. x.float() / 255 for uint8 pixels")
        if self.observing:
            self.observe(x)
        if self.mode == "float":
            return x
        if not torch.compiler.is_compiling() and not bool(torch.isfinite(x).all()):
            raise ValueError("model input contains NaN or inf, which int8 quantization cannot represent")
        return self.fake_quantize_output(x)


class _WeightedLayer(QuantModule):
    """Linear/Conv2d shared parts: latent float weight and bias, per-channel weight scales
    (LSQ-learnable if lsq=True), the fused activation and the input parameters."""

    def __init__(self, weight, bias, *, weight_bits, activation, lsq, mode, backend, rounding="double"):
        super().__init__(mode, backend)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        self.weight_bits = weight_bits
        self.activation = activation
        self.rounding = _check_rounding(rounding)
        self.weight = nn.Parameter(weight.detach().clone().float())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone().float())
        scales = qp.choose_weight_scales(self.weight, weight_bits).float()
        if lsq:
            self.weight_scale = nn.Parameter(scales)
        else:
            self.register_buffer("weight_scale", scales)
        self.register_qparams("input")

    @property
    def input_qparams(self) -> qp.ActivationQParams:
        return self.qparams("input")

    def set_input_qparams(self, q: qp.ActivationQParams):
        self.set_qparams("input", q)

    def activation_range(self) -> tuple[int, int]:
        """The clamp that folds the activation: ReLU clamps at real 0, ReLU6 also at real 6."""
        q = self.output_qparams
        act_min, act_max = -128, 127
        if self.activation in ("relu", "relu6"):
            act_min = max(act_min, q.zero_point)
        if self.activation == "relu6":
            # 6 / s rounded to float32 first, as TFLite computes it in float
            act_max = min(act_max, q.zero_point
                          + qp.round_half_away_scalar(qp.round_to_float32(6.0 / q.scale)))
        return act_min, act_max

    def float_activation(self, y):
        if self.activation == "relu":
            return F.relu(y)
        if self.activation == "relu6":
            return F.relu6(y)
        return y

    def forward(self, x):
        alpha = self.sample_weights_for_backward
        if alpha is not None and alpha.shape[0] != x.shape[0]:
            raise ValueError(f"sample_weights: alpha has {alpha.shape[0]} entries but the batch "
                             f"reaching {type(self).__name__} has {x.shape[0]} samples")
        if self.mode == "float" or self.observing:
            y = self.float_activation(self.float_op(x, self.weight, self.bias))
            if self.observing:
                self.observe(y)
            return y
        if self.mode == "integer":
            act_min, act_max = self.activation_range()
            return self.integer_op(x, act_min, act_max)
        return self.fake_forward(x)

    def fake_forward(self, x):
        q_in = self.input_qparams
        x_grid = fake_quantize_activation(x, q_in, backend=self.backend)
        limit = qp.weight_max(self.weight_bits)
        shape = (-1,) + (1,) * (self.weight.dim() - 1)
        weight = lsq_fake_quantize(self.weight, self.weight_scale.reshape(shape), limit, self.backend)
        bias = None
        if self.bias is not None:
            bias_scale = (q_in.scale * self.weight_scale.detach().double()).float()
            rounded = qp.round_half_away(self.bias.detach().double() / bias_scale, self.backend)
            bias = self.bias + (rounded.float() * bias_scale - self.bias).detach()
        y = self.float_op(x_grid, weight, bias)
        act_min, act_max = self.activation_range()
        return self.fake_quantize_output(y, act_min, act_max)

    def layer_quant(self, act_min, act_max) -> LayerQuant:
        """This layer's quantization for the integer op, with the given output clamp."""
        q_in, q_out = self.input_qparams, self.output_qparams
        return LayerQuant(input_scale=q_in.scale, input_zero_point=q_in.zero_point,
                          output_scale=q_out.scale, output_zero_point=q_out.zero_point,
                          act_min=act_min, act_max=act_max, weight_bits=self.weight_bits,
                          rounding=self.rounding, backend=self.backend)


def fake_quantize_activation(x, q: qp.ActivationQParams, act_min=-128, act_max=127, backend="auto"):
    """Quantize-dequantize onto the int8 grid of q, clamped to [act_min, act_max], with a
    straight-through gradient that is zero where the value was clamped."""
    low, high = q.scale * (act_min - q.zero_point), q.scale * (act_max - q.zero_point)
    clamped = x.clamp(low, high)
    codes = qp.quantize(x.detach(), q.scale, q.zero_point, act_min, act_max, backend=backend)
    grid = qp.dequantize(codes, q.scale, q.zero_point)
    return clamped + (grid.to(x.dtype) - clamped).detach()


def lsq_fake_quantize(weight, scale, limit, backend="auto"):
    """LSQ fake quantization (Esser et al., 2020): w_hat = clamp(round(w/s), -Q, Q) * s, with the
    straight-through gradient for w and the LSQ gradient for s scaled by 1/sqrt(numel * Q)."""
    grad_scale = 1.0 / math.sqrt(weight[0].numel() * limit)
    scale = scale * grad_scale + (scale - scale * grad_scale).detach()  # value s, gradient scaled
    ratio = (weight / scale).clamp(-limit, limit)
    rounded = ratio + (qp.round_half_away(ratio.detach().double(), backend).float() - ratio).detach()
    return rounded * scale


class _SampleWeightedLinear(torch.autograd.Function):
    """F.linear whose weight and bias gradients are sum_i alpha_i g_i^T x_i and sum_i alpha_i g_i."""

    @staticmethod
    def forward(x, weight, bias, alpha):
        return F.linear(x, weight, bias)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, alpha = inputs
        ctx.save_for_backward(x, weight, alpha)
        ctx.has_bias = bias is not None

    @staticmethod
    def backward(ctx, grad):
        x, weight, alpha = ctx.saved_tensors
        weighted = grad * alpha[:, None]
        grad_bias = weighted.sum(0) if ctx.has_bias else None
        return grad @ weight, weighted.T @ x, grad_bias, None


class _SampleWeightedConv2d(torch.autograd.Function):
    """F.conv2d with alpha fused into the weight and bias gradient reductions."""

    @staticmethod
    def forward(x, weight, bias, alpha, stride, dilation, groups):
        return F.conv2d(x, weight, bias, stride, 0, dilation, groups)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, alpha, stride, dilation, groups = inputs
        ctx.save_for_backward(x, weight, alpha)
        ctx.conv = (stride, dilation, groups)
        ctx.has_bias = bias is not None

    @staticmethod
    def backward(ctx, grad):
        x, weight, alpha = ctx.saved_tensors
        stride, dilation, groups = ctx.conv
        weighted = grad * alpha[:, None, None, None]
        grad_x = torch.nn.grad.conv2d_input(x.shape, weight, grad, stride, 0, dilation, groups)
        grad_w = torch.nn.grad.conv2d_weight(x, weight.shape, weighted, stride, 0, dilation, groups)
        grad_bias = weighted.sum((0, 2, 3)) if ctx.has_bias else None
        return grad_x, grad_w, grad_bias, None, None, None, None


class QuantLinear(_WeightedLayer):
    """Linear layer: int8 activations, per-channel int8/int4 weights, int32 bias."""

    def __init__(self, in_features, out_features, bias=True, *, weight_bits=8, activation=None,
                 lsq=False, mode="integer", backend="auto", rounding="double"):
        weight = torch.empty(out_features, in_features)
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
        bias_tensor = torch.zeros(out_features) if bias else None
        super().__init__(weight, bias_tensor, weight_bits=weight_bits, activation=activation, lsq=lsq,
                         mode=mode, backend=backend, rounding=rounding)

    @classmethod
    def from_float(cls, linear: nn.Linear, **kwargs):
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, **kwargs)
        layer.load_float(linear.weight, linear.bias)
        return layer

    def load_float(self, weight, bias):
        with torch.no_grad():
            self.weight.copy_(weight)
            if bias is not None:
                self.bias.copy_(bias)
            self.weight_scale.copy_(qp.choose_weight_scales(self.weight, self.weight_bits))

    def float_op(self, x, weight, bias):
        alpha = self.sample_weights_for_backward
        if alpha is None:
            return F.linear(x, weight, bias)
        return _SampleWeightedLinear.apply(x, weight, bias, alpha)

    def integer_op(self, x, act_min, act_max):
        return ste.apply_quant_linear(x, self.weight, self.bias, self.weight_scale,
                                      self.sample_weights_for_backward, self.layer_quant(act_min, act_max))


class QuantConv2d(_WeightedLayer):
    """2-D convolution (groups, depthwise, dilation, asymmetric padding), BN folded in."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, *, weight_bits=8, activation=None, lsq=False, mode="integer",
                 backend="auto", rounding="double"):
        kernel = _pair(kernel_size)
        weight = torch.empty(out_channels, in_channels // groups, *kernel)
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
        super().__init__(weight, torch.zeros(out_channels) if bias else None, weight_bits=weight_bits,
                         activation=activation, lsq=lsq, mode=mode, backend=backend, rounding=rounding)
        self.stride, self.dilation, self.groups = _pair(stride), _pair(dilation), groups
        self.padding = _padding4(padding)

    @classmethod
    def from_float(cls, conv: nn.Conv2d, weight=None, bias=None, **kwargs):
        """From an nn.Conv2d, optionally with replacement (BN-folded) weight and bias."""
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise NotImplementedError(f"Conv2d padding={conv.padding!r}, padding_mode={conv.padding_mode!r}: "
                                      "only explicit zero padding is supported")
        weight = conv.weight if weight is None else weight
        bias = conv.bias if bias is None else bias
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, bias is not None, **kwargs)
        QuantLinear.load_float(layer, weight, bias)
        return layer

    def _padded(self, x):
        top, bottom, left, right = self.padding
        return F.pad(x, (left, right, top, bottom)) if any(self.padding) else x

    def float_op(self, x, weight, bias):
        alpha = self.sample_weights_for_backward
        if alpha is None:
            return F.conv2d(self._padded(x), weight, bias, self.stride, 0, self.dilation, self.groups)
        return _SampleWeightedConv2d.apply(self._padded(x), weight, bias, alpha, self.stride,
                                           self.dilation, self.groups)

    def integer_op(self, x, act_min, act_max):
        geometry = ConvGeometry(stride=self.stride, padding=self.padding, dilation=self.dilation,
                                groups=self.groups)
        return ste.apply_quant_conv2d(x, self.weight, self.bias, self.weight_scale,
                                      self.sample_weights_for_backward, self.layer_quant(act_min, act_max),
                                      geometry)


class QuantAdd(QuantModule):
    """Residual add (TFLite int8 ADD), optionally with a folded ReLU."""

    rounding = "double"  # class default, for modules pickled before the add had a rounding mode

    def __init__(self, activation=None, mode="integer", backend="auto", rounding="double"):
        super().__init__(mode, backend)
        if activation not in (None, "relu"):
            raise ValueError(f"QuantAdd activation must be None or 'relu', got {activation!r}")
        self.activation = activation
        self.rounding = _check_rounding(rounding)
        self.register_qparams("a")
        self.register_qparams("b")

    def input_qparams(self, name) -> qp.ActivationQParams:
        return self.qparams(name)

    def set_input_qparams(self, name, q: qp.ActivationQParams):
        self.set_qparams(name, q)

    def activation_range(self):
        return (max(-128, self.output_qparams.zero_point) if self.activation == "relu" else -128), 127

    def forward(self, a, b):
        y_float = a + b
        if self.activation == "relu":
            y_float = F.relu(y_float)
        if self.mode == "float" or self.observing:
            if self.observing:
                self.observe(y_float)
            return y_float
        act_min, act_max = self.activation_range()
        if self.mode == "fake":
            return self.fake_quantize_output(
                fake_quantize_activation(a, self.input_qparams("a"), backend=self.backend)
                + fake_quantize_activation(b, self.input_qparams("b"), backend=self.backend), act_min, act_max)
        qa, qb, qy = self.input_qparams("a"), self.input_qparams("b"), self.output_qparams
        a_q = qp.quantize(a.detach(), qa.scale, qa.zero_point, -128, 127, backend=self.backend)
        b_q = qp.quantize(b.detach(), qb.scale, qb.zero_point, -128, 127, backend=self.backend)
        y = ste.apply_qadd(a_q, b_q, qp.add_params(qa, qb, qy), act_min, act_max, self.backend,
                           self.rounding)
        return _straight_through(a + b, qp.dequantize_activation(y, qy.scale, qy.zero_point, self.backend),
                                 (y > act_min) & (y < act_max))


class QuantAvgPool2d(QuantModule):
    """TFLite int8 average pool; output parameters equal the input's. kernel_size=None: global."""

    def __init__(self, kernel_size=None, stride=None, padding=0, mode="integer", backend="auto"):
        super().__init__(mode, backend)
        self.kernel_size = None if kernel_size is None else _pair(kernel_size)
        self.stride = None if stride is None else _pair(stride)
        self.padding = _padding4(padding)

    def _geometry(self, x):
        kernel = tuple(x.shape[2:]) if self.kernel_size is None else self.kernel_size
        return kernel, kernel if self.stride is None else self.stride

    def forward(self, x):
        kernel, stride = self._geometry(x)
        top, bottom, left, right = self.padding
        if top != bottom or left != right:
            raise NotImplementedError("QuantAvgPool2d's float/fake path supports symmetric padding only")
        y_float = F.avg_pool2d(x, kernel, stride, (top, left), count_include_pad=False)
        if self.mode == "float" or self.observing:
            return y_float  # its parameters are its producer's: nothing to observe
        q = self.output_qparams
        if self.mode == "fake":
            return self.fake_quantize_output(F.avg_pool2d(fake_quantize_activation(x, q, backend=self.backend),
                                                          kernel, stride, (top, left), count_include_pad=False))
        x_q = qp.quantize(x.detach(), q.scale, q.zero_point, -128, 127, backend=self.backend)
        y = ste.apply_qavg_pool2d(x_q, kernel, stride, self.padding, -128, 127, self.backend)
        return _straight_through(y_float, qp.dequantize_activation(y, q.scale, q.zero_point, self.backend))


def _straight_through(float_value, integer_value, pass_mask=None):
    """integer_value in the forward pass; in the backward, the float computation's gradient
    where pass_mask holds (everywhere if None) and zero elsewhere."""
    gated = float_value if pass_mask is None else float_value * pass_mask
    return gated + (integer_value.to(float_value.dtype) - gated).detach()


def _pair(value):
    return (value, value) if isinstance(value, int) else tuple(value)


def _padding4(padding):
    if isinstance(padding, int):
        return (padding,) * 4
    if len(padding) == 2:
        return (padding[0], padding[0], padding[1], padding[1])
    return tuple(padding)


def parameters_outside_weighted_layers(model: nn.Module) -> list[str]:
    """Names of `model`'s trainable parameters that no quantized weighted layer owns: per-sample
    weights never reach their gradients (only QuantLinear / QuantConv2d fuse them)."""
    owned = {id(p) for m in model.modules() if isinstance(m, _WeightedLayer) for p in m.parameters()}
    return [name for name, p in model.named_parameters() if p.requires_grad and id(p) not in owned]


@contextlib.contextmanager
def sample_weights(model: nn.Module, alpha: torch.Tensor | None):
    """Within the block, forward passes record per-sample loss weights alpha [N] for the
    backward of every quantized layer of `model` (fused into the weight-gradient reductions).

        with sample_weights(model, alpha):
            loss = criterion(model(x), y)   # criterion with reduction="sum" or "mean"
        loss.backward()
    """
    if alpha is not None:
        if not isinstance(alpha, torch.Tensor) or not alpha.is_floating_point() or alpha.dim() != 1:
            described = (f"{alpha.dtype} tensor of shape {tuple(alpha.shape)}"
                         if isinstance(alpha, torch.Tensor) else type(alpha).__name__)
            raise TypeError(f"alpha must be a 1-D floating tensor [N] (one weight per sample) or "
                            f"None, got {described}")
        if not bool(torch.isfinite(alpha).all()):
            raise ValueError("alpha must be finite (no NaN or inf per-sample weights)")
    layers = [m for m in model.modules() if isinstance(m, _WeightedLayer)]
    for layer in layers:
        layer.sample_weights_for_backward = None if alpha is None else alpha.detach().float()
    try:
        yield
    finally:
        for layer in layers:
            layer.sample_weights_for_backward = None


def set_arithmetic(model: nn.Module, mode: str) -> nn.Module:
    """Switch every quantized module of `model` to "integer", "fake" or "float", in place.
    ValueError if `model` has none (a float model: convert it with intunlearn.quantize first)."""
    _check_mode(mode)
    require_quantized(model, "set_arithmetic")
    for module in model.modules():
        if isinstance(module, QuantModule) and not module.pinned_float:
            module.mode = mode
    return model


def require_quantized(model: nn.Module, caller: str) -> None:
    """ValueError naming the model unless it holds quantized layers (a call that acts on them
    would otherwise silently do nothing)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{caller}: model must be a torch.nn.Module, got {type(model).__name__}")
    if not any(isinstance(module, QuantModule) for module in model.modules()):
        raise ValueError(f"{caller}: the model ({type(model).__name__}) has no quantized layers; convert it "
                         f"with intunlearn.quantize first")


def expected_input(model: nn.Module) -> str:
    """What inputs `model` takes, read from its first weighted layer (in execution order for a
    torch.fx graph, in module order otherwise), for error messages; "" if it has none."""
    if isinstance(model, torch.fx.GraphModule):
        modules = dict(model.named_modules())
        named = [(node.target, modules[node.target]) for node in model.graph.nodes if node.op == "call_module"]
    else:
        named = list(model.named_modules())
    for name, module in named:
        if isinstance(module, (nn.Conv2d, QuantConv2d)):
            channels = module.weight.shape[1] * module.groups
            return (f"samples of shape [{channels}, H, W] (batches [N, {channels}, H, W]): its first layer, "
                    f"{name!r}, is a convolution with {channels} input channels")
        if isinstance(module, (nn.Linear, QuantLinear)):
            features = module.weight.shape[1]
            return (f"samples of {features} values (a shape whose size is {features}, e.g. [{features}]): its "
                    f"first layer, {name!r}, is a linear layer with {features} inputs")
    return ""

