"""torch.library custom ops in the `intunlearn` namespace.

Two kinds:

* Integer ops, int8 in and int8 out, exactly `intunlearn.ops`: `intunlearn::qlinear`,
  `intunlearn::qconv2d`, `intunlearn::qadd`, `intunlearn::qavg_pool2d`. Not differentiable.
* Training ops with a float interface and a true-integer inside: `intunlearn::quant_linear` and
  `intunlearn::quant_conv2d` take the real-valued input and the latent float weights, quantize
  them (TFLite conventions), run the integer op, and return the dequantized int8 output. Their
  registered autograd is the straight-through estimator of DESIGN.md, computed by the backend's
  backward kernels, with the per-sample weights alpha fused into the weight-gradient reduction
  and LSQ step-size gradients for the per-channel weight scales.

All ops have fake (meta) implementations, so they trace under torch.compile(fullgraph=True).
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from intunlearn import _checks as check
from intunlearn import ops
from intunlearn import qparams as qp
from intunlearn.backends import resolve

# ---- integer ops ------------------------------------------------------------------------------


@torch.library.custom_op("intunlearn::qlinear", mutates_args=())
def qlinear(x: Tensor, weight: Tensor, bias: Optional[Tensor], multiplier: Tensor, shift: Tensor,
            input_zero_point: int, output_zero_point: int, act_min: int, act_max: int,
            weight_bits: int, weight_zero_point: int, rounding: str, backend: str) -> Tensor:
    return ops.qlinear(x, weight, bias, input_zero_point=input_zero_point,
                       output_zero_point=output_zero_point, multiplier=multiplier, shift=shift,
                       act_min=act_min, act_max=act_max, weight_bits=weight_bits,
                       weight_zero_point=weight_zero_point, rounding=rounding, backend=backend)


@qlinear.register_fake
def _(x, weight, bias, multiplier, shift, input_zero_point, output_zero_point, act_min, act_max,
      weight_bits, weight_zero_point, rounding, backend):
    return x.new_empty((x.shape[0], weight.shape[0]), dtype=torch.int8)


@torch.library.custom_op("intunlearn::qconv2d", mutates_args=())
def qconv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor], multiplier: Tensor, shift: Tensor,
            stride: list[int], padding: list[int], dilation: list[int], groups: int,
            input_zero_point: int, output_zero_point: int, act_min: int, act_max: int,
            weight_bits: int, rounding: str, backend: str) -> Tensor:
    return ops.qconv2d(x, weight, bias, stride=tuple(stride), padding=tuple(padding),
                       dilation=tuple(dilation), groups=groups, input_zero_point=input_zero_point,
                       output_zero_point=output_zero_point, multiplier=multiplier, shift=shift,
                       act_min=act_min, act_max=act_max, weight_bits=weight_bits,
                       rounding=rounding, backend=backend)


def _conv_output_shape(x_shape, weight_shape, stride, padding, dilation):
    top, bottom, left, right = padding
    size = lambda n, k, s, a, b, d: (n + a + b - d * (k - 1) - 1) // s + 1  # noqa: E731
    return (x_shape[0], weight_shape[0],
            size(x_shape[2], weight_shape[2], stride[0], top, bottom, dilation[0]),
            size(x_shape[3], weight_shape[3], stride[1], left, right, dilation[1]))


@qconv2d.register_fake
def _(x, weight, bias, multiplier, shift, stride, padding, dilation, groups, input_zero_point,
      output_zero_point, act_min, act_max, weight_bits, rounding, backend):
    return x.new_empty(_conv_output_shape(x.shape, weight.shape, stride, padding, dilation),
                       dtype=torch.int8)


@torch.library.custom_op("intunlearn::qadd", mutates_args=())
def qadd(a: Tensor, b: Tensor, a_zero_point: int, a_multiplier: int, a_shift: int,
         b_zero_point: int, b_multiplier: int, b_shift: int, left_shift: int,
         output_zero_point: int, output_multiplier: int, output_shift: int, act_min: int,
         act_max: int, rounding: str, backend: str) -> Tensor:
    return ops.qadd(a, b, a_zero_point=a_zero_point, a_multiplier=a_multiplier, a_shift=a_shift,
                    b_zero_point=b_zero_point, b_multiplier=b_multiplier, b_shift=b_shift,
                    left_shift=left_shift, output_zero_point=output_zero_point,
                    output_multiplier=output_multiplier, output_shift=output_shift,
                    act_min=act_min, act_max=act_max, rounding=rounding, backend=backend)


@qadd.register_fake
def _(a, b, *args):
    return torch.empty_like(a)


@torch.library.custom_op("intunlearn::qavg_pool2d", mutates_args=())
def qavg_pool2d(x: Tensor, kernel_size: list[int], stride: list[int], padding: list[int],
                act_min: int, act_max: int, backend: str) -> Tensor:
    return ops.qavg_pool2d(x, tuple(kernel_size), tuple(stride), tuple(padding), act_min, act_max,
                           backend=backend)


@qavg_pool2d.register_fake
def _(x, kernel_size, stride, padding, act_min, act_max, backend):
    pad = list(padding)
    return x.new_empty(_conv_output_shape(x.shape, (x.shape[1], 1, *kernel_size), stride,
                                          pad, (1, 1)), dtype=torch.int8)


# ---- quantization steps shared by the training ops ---------------------------------------------


def quantize_input(x: Tensor, scale: float, zero_point: int) -> tuple[Tensor, Tensor]:
    """int8 input and the STE mask of where the quantizer did not saturate."""
    return qp.quantize_activation(x, scale, zero_point)


def quantize_weight(weight: Tensor, scales: Tensor, bits: int, *, mask: bool = True, slope: bool = True):
    """Symmetric per-channel codes clamp(round(w / s), -Q, Q) (int8 dtype), w / s in float64.
    With mask, also the mask of weights inside the clip range |w / s| <= Q (where the
    straight-through gradient passes); with slope, LSQ's d(w_hat / s)/ds term per weight:
    round(w / s) - w / s inside the range, the clamped code +-Q outside (float64).
    Returns (codes, inside or None, slope or None)."""
    limit = qp.weight_max(bits)
    kernels = qp._cpu_kernels() if weight.device.type == "cpu" else None
    if kernels is not None:
        flat = _float_array(weight).reshape(weight.shape[0], -1)
        codes = torch.empty(flat.shape, dtype=torch.int8)
        inside = torch.empty(flat.shape if mask else (0, 0), dtype=torch.bool)
        slopes = torch.empty(flat.shape if slope else (0, 0), dtype=torch.float64)
        kernels.quantize_weight_channels(flat.numpy(), scales.detach().contiguous().numpy(), limit,
                                         codes.numpy(), inside.numpy(), slopes.numpy())
        return (codes.reshape(weight.shape), inside.reshape(weight.shape) if mask else None,
                slopes.reshape(weight.shape) if slope else None)
    shape = (-1,) + (1,) * (weight.dim() - 1)
    ratio = weight.detach().double() / scales.detach().double().reshape(shape)
    codes = qp.round_half_away(ratio).clamp(-limit, limit)
    inside = ratio.abs() <= limit  # LSQ's clip range, on the unrounded ratio
    return (codes.to(torch.int8), inside if mask else None,
            torch.where(inside, codes - ratio, codes) if slope else None)


def requantization_params(bias, weight_scale, input_scale, output_scale, channels):
    """(int32 bias or None, int32 multiplier [OC], int32 shift [OC]) for M[c] = s_x s_w[c] / s_y
    (TFLite's QuantizeMultiplier) and bias codes round(b / (s_x s_w[c]))."""
    kernels = qp._cpu_kernels() if weight_scale.device.type == "cpu" else None
    if kernels is None:
        scales = weight_scale.detach().double()
        b_q = None if bias is None else qp.quantize_bias(bias, input_scale, scales)
        multiplier, shift = qp.output_multipliers(input_scale, scales, output_scale)
        return b_q, multiplier.to(weight_scale.device), shift.to(weight_scale.device)
    scales = weight_scale.detach().expand(channels).contiguous().numpy()
    multiplier = torch.empty(channels, dtype=torch.int32)
    shift = torch.empty(channels, dtype=torch.int32)
    b_q = None if bias is None else torch.empty(channels, dtype=torch.int32)
    status = kernels.requantization_params(
        float(input_scale), scales, float(output_scale),
        _NO_BIAS if bias is None else _float_array(bias).numpy(), multiplier.numpy(), shift.numpy(),
        _NO_BIAS_CODES if b_q is None else b_q.numpy())
    if status:  # the messages of the torch / reference formulations
        if status == 3:
            raise ValueError("bias does not fit int32 at scale input_scale * weight_scale")
        real = input_scale * scales.astype(np.float64) / output_scale
        raise ValueError(f"real: real multiplier must be {'finite and >= 0' if status == 1 else 'below 2**30 (shift <= 30)'}"
                         f", got {real}")
    return b_q, multiplier, shift


_NO_BIAS, _NO_BIAS_CODES = np.zeros(0, np.float32), np.zeros(0, np.int32)


def _float_array(values: Tensor) -> Tensor:
    """float32 or float64 values as they are (the kernels divide in float64); other floating
    types widened to float64, which holds them exactly."""
    values = values.detach()
    return (values if values.dtype in (torch.float32, torch.float64) else values.double()).contiguous()


def integer_params(weight, bias, weight_scale, input_scale, output_scale, weight_bits):
    """The integer layer's parameters from the latent float ones: (int8 weight codes, int32
    bias or None, int32 multiplier [OC], int32 shift [OC]) for M[c] = s_x s_w[c] / s_y."""
    w_q, _, _ = quantize_weight(weight, weight_scale, weight_bits, mask=False, slope=False)
    return (w_q, *requantization_params(bias, weight_scale, input_scale, output_scale, weight.shape[0]))


def _lsq_scale_grad(grad_weight_real, slope, weight_bits):
    """LSQ (Esser et al., 2020) gradient of the per-channel step size s[c]: sum_k dL/dw_hat *
    d(w_hat)/ds, d(w_hat)/ds = round(w/s) - w/s inside the range and +-Q where clamped, scaled
    by 1/sqrt(numel_per_channel * Q) as the paper recommends."""
    limit = qp.weight_max(weight_bits)
    per_channel = grad_weight_real.double() * slope
    numel = per_channel[0].numel()
    return (per_channel.flatten(1).sum(dim=1) / math.sqrt(numel * limit)).float()


# ---- the training ops' shared forward and backward -----------------------------------------------
#
# `params` below is the tuple (input_scale, input_zero_point, output_scale, output_zero_point,
# act_min, act_max, weight_bits, rounding, backend) and `geometry` () for a linear layer or
# (stride, padding, dilation, groups) for a convolution, in the custom ops' argument order.


def _check_layer_inputs(x: Tensor, weight: Tensor, bias, weight_scale: Tensor, params, geometry,
                        sample_weights=None) -> None:
    """The checks of intunlearn.ops that the inputs of a training op can fail (the int8
    tensors derived from them are valid by construction, so the integer op is called on the
    backend directly), and the per-sample weights' shape: the kernels index them by sample."""
    if sample_weights is not None and (sample_weights.dim() != 1 or x.dim() == 0
                                       or sample_weights.shape[0] != x.shape[0]
                                       or not sample_weights.is_floating_point()):
        raise ValueError(f"sample_weights must be a floating tensor [{x.shape[0] if x.dim() else 'N'}] "
                         f"(one per sample of x), got {sample_weights.dtype} "
                         f"{tuple(sample_weights.shape)}")
    check.integer("input_zero_point", params[1])
    check.integer("output_zero_point", params[3])
    act_min, act_max, _, rounding = params[4:8]
    check.activation_range(act_min, act_max)
    check.choice("rounding", rounding, ops.ROUNDINGS)
    channels = weight.shape[0] if weight.dim() else 0
    if bias is not None and tuple(bias.shape) != (channels,):
        raise ValueError(f"bias must have shape [{channels}] (one per output channel), got {tuple(bias.shape)}")
    if weight_scale.dim() != 1 or weight_scale.shape[0] not in (1, channels):
        raise ValueError(f"weight_scale must have shape [{channels}] or [1], got {tuple(weight_scale.shape)}")
    if not geometry:
        if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
            raise ValueError(f"quant_linear: x must be [N, IN] and weight [OUT, IN] with the same IN, "
                             f"got {tuple(x.shape)} and {tuple(weight.shape)}")
        return
    stride, padding, dilation, groups = geometry
    if x.dim() != 4 or weight.dim() != 4 or groups < 1 or x.shape[1] != weight.shape[1] * groups \
            or weight.shape[0] % groups:
        raise ValueError(f"quant_conv2d: x must be [N, C, H, W] and weight [OC, C/groups, KH, KW] with groups "
                         f"dividing OC, got {tuple(x.shape)}, {tuple(weight.shape)}, groups={groups}")
    if min(_conv_output_shape(x.shape, weight.shape, stride, padding, dilation)[2:]) < 1:
        raise ValueError(f"quant_conv2d: x spatial size {tuple(x.shape[2:])} with padding {padding} is "
                         f"smaller than the dilated kernel {tuple(weight.shape[2:])} x {dilation}")


def _integer_forward(x, weight, bias, weight_scale, params, geometry, *, sample_weights=None,
                     weight_mask=False, weight_slope=False):
    """Real input -> quantize -> integer layer on the backend. Returns the float32 output and
    what the backward needs: (y_real, (x_q, x_inside, w_q, w_inside, w_slope, y_q)), the
    weight mask / LSQ slope None unless asked for."""
    (input_scale, input_zero_point, output_scale, output_zero_point, act_min, act_max, weight_bits,
     rounding, backend) = params
    _check_layer_inputs(x, weight, bias, weight_scale, params, geometry, sample_weights)
    x_q, x_inside = quantize_input(x, input_scale, input_zero_point)
    w_q, w_inside, w_slope = quantize_weight(weight, weight_scale, weight_bits, mask=weight_mask,
                                             slope=weight_slope)
    b_q, multiplier, shift = requantization_params(bias, weight_scale, input_scale, output_scale,
                                                   weight.shape[0])
    kernels = resolve(backend, x.device)
    requant = {"input_zero_point": input_zero_point, "output_zero_point": output_zero_point,
               "multiplier": multiplier, "shift": shift, "act_min": act_min, "act_max": act_max,
               "rounding": rounding}
    if geometry:
        stride, padding, dilation, groups = geometry
        y_q = kernels.qconv2d(x_q, w_q, b_q, weight_shape=tuple(weight.shape), stride=tuple(stride),
                              padding=tuple(padding), dilation=tuple(dilation), groups=groups, **requant)
    else:
        y_q = kernels.qlinear(x_q, w_q, b_q, in_features=weight.shape[1], weight_zero_point=0, **requant)
    y = qp.dequantize_activation(y_q, output_scale, output_zero_point)
    return y, (x_q, x_inside, w_q, w_inside, w_slope, y_q)


def _integer_backward(grad_output, saved, weight, bias, weight_scale, sample_weights, params, geometry,
                      needs_input, needs_weight, needs_scale):
    """STE backward from the forward's saved tensors (see _integer_forward; the weight mask is
    needed when needs_weight, the slope when needs_scale): the backend's backward kernel, then
    the input-saturation and weight-clipping masks and the LSQ step-size gradient.
    Returns (grad_x, grad_weight, grad_bias, grad_weight_scale), None where not needed."""
    x_q, x_inside, w_q, w_inside, w_slope, y_q = saved
    input_scale, input_zero_point, _, _, act_min, act_max, weight_bits, _, backend = params
    kernels = resolve(backend, x_q.device)
    common = {"input_zero_point": input_zero_point, "input_scale": input_scale,
              "weight_scales": weight_scale.detach().float(), "act_min": act_min, "act_max": act_max,
              "sample_weights": sample_weights, "needs_input_grad": needs_input,
              "needs_weight_grad": needs_weight or needs_scale}
    if geometry:
        stride, padding, dilation, groups = geometry
        grad_x, grad_w, grad_b = kernels.qconv2d_backward(
            grad_output.contiguous(), y_q, x_q, w_q, weight_shape=tuple(weight.shape), stride=tuple(stride),
            padding=tuple(padding), dilation=tuple(dilation), groups=groups, **common)
    else:
        grad_x, grad_w, grad_b = kernels.qlinear_backward(grad_output.contiguous(), y_q, x_q, w_q,
                                                          in_features=weight.shape[1], **common)
    grad_w = None if grad_w is None else grad_w.reshape(weight.shape)
    return (torch.where(x_inside, grad_x, 0.0) if needs_input else None,
            torch.where(w_inside, grad_w, 0.0).to(weight.dtype) if needs_weight else None,
            grad_b.to(bias.dtype) if needs_weight and bias is not None else None,
            _lsq_scale_grad(grad_w, w_slope, weight_bits).to(weight_scale.dtype) if needs_scale else None)


def _custom_op_backward(grad_output, x, weight, bias, weight_scale, sample_weights, output, params,
                        geometry, needs_input, needs_weight, needs_scale):
    """The backward custom ops: recover the forward's int8 tensors from its float input and
    output (both on exact grids) and the weights, then the shared backward. Custom-op outputs
    may not be None or alias each other: gradients not asked for come back as empty tensors."""
    input_scale, input_zero_point, output_scale, output_zero_point, *_ = params
    x_q, x_inside = quantize_input(x, input_scale, input_zero_point)
    w_q, w_inside, w_slope = quantize_weight(weight, weight_scale, params[6], mask=needs_weight,
                                             slope=needs_scale)
    y_q, _ = qp.quantize_activation(output, output_scale, output_zero_point)  # exact: on the grid
    grads = _integer_backward(grad_output, (x_q, x_inside, w_q, w_inside, w_slope, y_q), weight, bias,
                              weight_scale, sample_weights, params, geometry, needs_input, needs_weight,
                              needs_scale)
    grad_x, grad_w, grad_b, grad_s = grads
    return (x.new_empty(0) if grad_x is None else grad_x.to(x.dtype),
            x.new_empty(0) if grad_w is None else grad_w,
            x.new_empty(0) if grad_b is None else grad_b.clone(),
            x.new_empty(0) if grad_s is None else grad_s)


class _EagerIntegerLayer(torch.autograd.Function):
    """quant_linear / quant_conv2d outside torch.compile: the same forward and STE backward as
    the custom ops, without their dispatch (about 0.1 ms a call, a third of a small layer) and
    saving the forward's int8 tensors rather than recomputing them for the backward."""

    @staticmethod
    def forward(ctx, x, weight, bias, weight_scale, sample_weights, params, geometry):
        needs = ctx.needs_input_grad
        y, saved = _integer_forward(x, weight, bias, weight_scale, params, geometry,
                                    sample_weights=sample_weights,
                                    weight_mask=needs[1] or needs[2], weight_slope=needs[3])
        ctx.save_for_backward(*saved, weight, bias, weight_scale, sample_weights)
        ctx.params, ctx.geometry = params, geometry
        return y

    @staticmethod
    def backward(ctx, grad_output):
        *saved, weight, bias, weight_scale, sample_weights = ctx.saved_tensors
        needs = ctx.needs_input_grad
        grad_x, grad_w, grad_b, grad_s = _integer_backward(
            grad_output, saved, weight, bias, weight_scale, sample_weights, ctx.params, ctx.geometry,
            needs[0], needs[1] or needs[2], needs[3])
        return (grad_x, grad_w if needs[1] else None, grad_b if needs[2] else None, grad_s, None, None,
                None)


def _eager(*tensors) -> bool:
    """Whether to take the eager path: not while torch.compile / export traces (the custom ops
    are what they see) and only on real tensors (fake and meta ones get the ops' fake
    implementations)."""
    return not torch.compiler.is_compiling() and not any(
        isinstance(t, torch._subclasses.FakeTensor) or t.device.type == "meta"
        for t in tensors if t is not None)


def apply_quant_linear(x, weight, bias, weight_scale, sample_weights, *params):
    """`intunlearn::quant_linear` with autograd, taking the eager path where it can."""
    if _eager(x, weight):
        return _EagerIntegerLayer.apply(x, weight, bias, weight_scale, sample_weights, params, ())
    return torch.ops.intunlearn.quant_linear(x, weight, bias, weight_scale, sample_weights, *params)


def apply_quant_conv2d(x, weight, bias, weight_scale, sample_weights, *params_and_geometry):
    """`intunlearn::quant_conv2d` with autograd, taking the eager path where it can."""
    if _eager(x, weight):
        params, geometry = params_and_geometry[:9], params_and_geometry[9:]
        return _EagerIntegerLayer.apply(x, weight, bias, weight_scale, sample_weights, params, geometry)
    return torch.ops.intunlearn.quant_conv2d(x, weight, bias, weight_scale, sample_weights,
                                             *params_and_geometry)



def apply_qadd(a_q: Tensor, b_q: Tensor, params: dict, act_min: int, act_max: int, backend: str,
               rounding: str = "double") -> Tensor:
    """`intunlearn::qadd` (params: qparams.add_params' keywords), called without the custom
    op's dispatch outside torch.compile."""
    if _eager(a_q, b_q):
        return ops.qadd(a_q, b_q, **params, act_min=act_min, act_max=act_max, rounding=rounding,
                        backend=backend)
    return torch.ops.intunlearn.qadd(a_q, b_q, params["a_zero_point"], params["a_multiplier"], params["a_shift"],
                                     params["b_zero_point"], params["b_multiplier"], params["b_shift"],
                                     params["left_shift"], params["output_zero_point"],
                                     params["output_multiplier"], params["output_shift"], act_min, act_max,
                                     rounding, backend)


def apply_qavg_pool2d(x_q: Tensor, kernel_size, stride, padding, act_min: int, act_max: int,
                      backend: str) -> Tensor:
    """`intunlearn::qavg_pool2d`, called without the custom op's dispatch outside torch.compile."""
    if _eager(x_q):
        return ops.qavg_pool2d(x_q, tuple(kernel_size), tuple(stride), tuple(padding), act_min, act_max,
                               backend=backend)
    return torch.ops.intunlearn.qavg_pool2d(x_q, list(kernel_size), list(stride), list(padding), act_min,
                                            act_max, backend)

# ---- quant_linear -----------------------------------------------------------------------------


@torch.library.custom_op("intunlearn::quant_linear", mutates_args=())
def quant_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor], weight_scale: Tensor,
                 sample_weights: Optional[Tensor], input_scale: float, input_zero_point: int,
                 output_scale: float, output_zero_point: int, act_min: int, act_max: int,
                 weight_bits: int, rounding: str, backend: str) -> Tensor:
    """Real input [N, IN] -> true-integer linear -> dequantized output [N, OUT] (float32)."""
    params = (input_scale, input_zero_point, output_scale, output_zero_point, act_min, act_max,
              weight_bits, rounding, backend)
    return _integer_forward(x, weight, bias, weight_scale, params, (),
                            sample_weights=sample_weights)[0]


@quant_linear.register_fake
def _(x, weight, *args):
    return x.new_empty((x.shape[0], weight.shape[0]), dtype=torch.float32)


def _fake_ste_backward(x, weight, bias, weight_scale, needs_input, needs_weight, needs_scale):
    return (torch.empty_like(x) if needs_input else x.new_empty(0),
            torch.empty_like(weight) if needs_weight else x.new_empty(0),
            torch.empty_like(bias) if needs_weight and bias is not None else x.new_empty(0),
            torch.empty_like(weight_scale) if needs_scale else x.new_empty(0))


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:5], output)
    ctx.params = inputs[5:]


def _autograd_backward(ctx, grad_output, backward_op, geometry):
    """Calls the backward op (itself a custom op, so the backward traces under torch.compile)
    and maps the empty tensors of gradients not asked for back to None."""
    x, weight, bias, weight_scale, sample_weights, output = ctx.saved_tensors
    needs = ctx.needs_input_grad
    grads = backward_op(grad_output, x, weight, bias, weight_scale, sample_weights, output,
                        *ctx.params[:9], needs[0], needs[1] or needs[2], needs[3], *geometry)
    asked = (needs[0], needs[1], needs[2] and bias is not None, needs[3])
    return tuple(g if wanted else None for g, wanted in zip(grads, asked)) + (None,) * (len(ctx.params) + 1)


@torch.library.custom_op("intunlearn::quant_linear_backward", mutates_args=())
def quant_linear_backward(grad_output: Tensor, x: Tensor, weight: Tensor, bias: Optional[Tensor],
                          weight_scale: Tensor, sample_weights: Optional[Tensor], output: Tensor,
                          input_scale: float, input_zero_point: int, output_scale: float,
                          output_zero_point: int, act_min: int, act_max: int, weight_bits: int,
                          rounding: str, backend: str, needs_input: bool, needs_weight: bool,
                          needs_scale: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(grad_x, grad_weight, grad_bias, grad_weight_scale) of quant_linear; empty where not needed."""
    params = (input_scale, input_zero_point, output_scale, output_zero_point, act_min, act_max,
              weight_bits, rounding, backend)
    return _custom_op_backward(grad_output, x, weight, bias, weight_scale, sample_weights, output, params,
                               (), needs_input, needs_weight, needs_scale)


@quant_linear_backward.register_fake
def _(grad_output, x, weight, bias, weight_scale, sample_weights, output, input_scale, input_zero_point,
      output_scale, output_zero_point, act_min, act_max, weight_bits, rounding, backend, needs_input,
      needs_weight, needs_scale):
    return _fake_ste_backward(x, weight, bias, weight_scale, needs_input, needs_weight, needs_scale)


quant_linear.register_autograd(
    lambda ctx, grad: _autograd_backward(ctx, grad, torch.ops.intunlearn.quant_linear_backward, ()),
    setup_context=_setup_context)


# ---- quant_conv2d -----------------------------------------------------------------------------


@torch.library.custom_op("intunlearn::quant_conv2d", mutates_args=())
def quant_conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor], weight_scale: Tensor,
                 sample_weights: Optional[Tensor], input_scale: float, input_zero_point: int,
                 output_scale: float, output_zero_point: int, act_min: int, act_max: int,
                 weight_bits: int, rounding: str, backend: str, stride: list[int],
                 padding: list[int], dilation: list[int], groups: int) -> Tensor:
    """Real NCHW input -> true-integer convolution -> dequantized output (float32)."""
    params = (input_scale, input_zero_point, output_scale, output_zero_point, act_min, act_max,
              weight_bits, rounding, backend)
    return _integer_forward(x, weight, bias, weight_scale, params, (stride, padding, dilation, groups),
                            sample_weights=sample_weights)[0]


@quant_conv2d.register_fake
def _(x, weight, bias, weight_scale, sample_weights, input_scale, input_zero_point, output_scale,
      output_zero_point, act_min, act_max, weight_bits, rounding, backend, stride, padding,
      dilation, groups):
    return x.new_empty(_conv_output_shape(x.shape, weight.shape, stride, padding, dilation),
                       dtype=torch.float32)


@torch.library.custom_op("intunlearn::quant_conv2d_backward", mutates_args=())
def quant_conv2d_backward(grad_output: Tensor, x: Tensor, weight: Tensor, bias: Optional[Tensor],
                          weight_scale: Tensor, sample_weights: Optional[Tensor], output: Tensor,
                          input_scale: float, input_zero_point: int, output_scale: float,
                          output_zero_point: int, act_min: int, act_max: int, weight_bits: int,
                          rounding: str, backend: str, needs_input: bool, needs_weight: bool,
                          needs_scale: bool, stride: list[int], padding: list[int], dilation: list[int],
                          groups: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(grad_x, grad_weight, grad_bias, grad_weight_scale) of quant_conv2d; empty where not needed."""
    params = (input_scale, input_zero_point, output_scale, output_zero_point, act_min, act_max,
              weight_bits, rounding, backend)
    return _custom_op_backward(grad_output, x, weight, bias, weight_scale, sample_weights, output, params,
                               (stride, padding, dilation, groups), needs_input, needs_weight, needs_scale)


@quant_conv2d_backward.register_fake
def _(grad_output, x, weight, bias, weight_scale, sample_weights, output, input_scale, input_zero_point,
      output_scale, output_zero_point, act_min, act_max, weight_bits, rounding, backend, needs_input,
      needs_weight, needs_scale, stride, padding, dilation, groups):
    return _fake_ste_backward(x, weight, bias, weight_scale, needs_input, needs_weight, needs_scale)


quant_conv2d.register_autograd(
    lambda ctx, grad: _autograd_backward(ctx, grad, torch.ops.intunlearn.quant_conv2d_backward,
                                         ctx.params[9:]),
    setup_context=_setup_context)
