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

import torch
from torch import Tensor

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
         act_max: int, backend: str) -> Tensor:
    return ops.qadd(a, b, a_zero_point=a_zero_point, a_multiplier=a_multiplier, a_shift=a_shift,
                    b_zero_point=b_zero_point, b_multiplier=b_multiplier, b_shift=b_shift,
                    left_shift=left_shift, output_zero_point=output_zero_point,
                    output_multiplier=output_multiplier, output_shift=output_shift,
                    act_min=act_min, act_max=act_max, backend=backend)


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


def quantize_weight(weight: Tensor, scales: Tensor, bits: int) -> tuple[Tensor, Tensor, Tensor]:
    """Symmetric per-channel int values (int8 dtype), the ratio w/s, and the mask of weights
    inside the clip range |w/s| <= Q (where the straight-through gradient passes)."""
    limit = qp.weight_max(bits)
    shape = (-1,) + (1,) * (weight.dim() - 1)
    ratio = weight.detach().double() / scales.detach().double().reshape(shape)
    inside = ratio.abs() <= limit  # LSQ's clip range, on the unrounded ratio
    return qp.round_half_away(ratio).clamp(-limit, limit).to(torch.int8), ratio, inside


def integer_params(weight, bias, weight_scale, input_scale, output_scale, weight_bits):
    w_q, ratio, inside = quantize_weight(weight, weight_scale, weight_bits)
    scales = weight_scale.detach().double()
    b_q = None if bias is None else qp.quantize_bias(bias, input_scale, scales)
    multiplier, shift = qp.output_multipliers(input_scale, scales, output_scale)
    return w_q, ratio, inside, b_q, multiplier.to(weight.device), shift.to(weight.device)


def _lsq_scale_grad(grad_weight_real, w_q, ratio, inside, weight_bits):
    """LSQ (Esser et al., 2020) gradient of the per-channel step size s[c]:
    d(w_hat)/ds = round(w/s) - w/s inside the range and +-Q where clamped, scaled by
    1/sqrt(numel_per_channel * Q) as the paper recommends."""
    limit = qp.weight_max(weight_bits)
    d_scale = torch.where(inside, w_q.double() - ratio, w_q.double())
    per_channel = grad_weight_real.double() * d_scale
    numel = per_channel[0].numel()
    return (per_channel.flatten(1).sum(dim=1) / math.sqrt(numel * limit)).float()


# ---- quant_linear -----------------------------------------------------------------------------


@torch.library.custom_op("intunlearn::quant_linear", mutates_args=())
def quant_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor], weight_scale: Tensor,
                 sample_weights: Optional[Tensor], input_scale: float, input_zero_point: int,
                 output_scale: float, output_zero_point: int, act_min: int, act_max: int,
                 weight_bits: int, rounding: str, backend: str) -> Tensor:
    """Real input [N, IN] -> true-integer linear -> dequantized output [N, OUT] (float32)."""
    x_q, _ = quantize_input(x, input_scale, input_zero_point)
    w_q, _, _, b_q, multiplier, shift = integer_params(weight, bias, weight_scale, input_scale,
                                                        output_scale, weight_bits)
    y = ops.qlinear(x_q, w_q, b_q, input_zero_point=input_zero_point,
                    output_zero_point=output_zero_point, multiplier=multiplier, shift=shift,
                    act_min=act_min, act_max=act_max, weight_bits=weight_bits, rounding=rounding,
                    backend=backend)
    return (output_scale * (y.double() - output_zero_point)).float()


@quant_linear.register_fake
def _(x, weight, *args):
    return x.new_empty((x.shape[0], weight.shape[0]), dtype=torch.float32)


def _ste_backward(kernel_name, geometry, grad_output, x, weight, bias, weight_scale, sample_weights,
                  output, input_scale, input_zero_point, output_scale, output_zero_point, act_min,
                  act_max, weight_bits, backend, needs_input, needs_weight, needs_scale):
    """STE backward shared by quant_linear and quant_conv2d: recover the int8 tensors, call the
    backend's backward kernel, apply the input-saturation and weight-clipping masks and form the
    LSQ step-size gradient. Gradients not asked for come back as empty tensors."""
    x_q, x_inside = quantize_input(x, input_scale, input_zero_point)
    w_q, ratio, w_inside = quantize_weight(weight, weight_scale, weight_bits)
    y_q = (qp.round_half_away(output.double() / output_scale) + output_zero_point).to(torch.int8)
    backward = getattr(resolve(backend, x.device), kernel_name)
    grad_x, grad_w, grad_b = backward(
        grad_output.contiguous(), y_q, x_q, w_q, **geometry, input_zero_point=input_zero_point,
        input_scale=input_scale, weight_scales=weight_scale.detach().float(), act_min=act_min,
        act_max=act_max, sample_weights=sample_weights, needs_input_grad=needs_input,
        needs_weight_grad=needs_weight or needs_scale)
    empty = lambda: x.new_empty(0)  # noqa: E731  (custom-op outputs may not alias each other)
    grad_scale = empty()
    if needs_scale:
        grad_scale = _lsq_scale_grad(grad_w, w_q, ratio, w_inside, weight_bits).to(weight_scale.dtype)
    return (torch.where(x_inside, grad_x, 0.0).to(x.dtype) if needs_input else empty(),
            torch.where(w_inside, grad_w, 0.0).to(weight.dtype) if needs_weight else empty(),
            grad_b.to(bias.dtype).clone() if needs_weight and bias is not None else empty(),
            grad_scale)


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
    (input_scale, input_zero_point, output_scale, output_zero_point, act_min, act_max, weight_bits,
     _rounding, backend) = ctx.params[:9]
    needs = ctx.needs_input_grad
    grads = backward_op(grad_output, x, weight, bias, weight_scale, sample_weights, output, input_scale,
                        input_zero_point, output_scale, output_zero_point, act_min, act_max,
                        weight_bits, backend, needs[0], needs[1] or needs[2], needs[3], *geometry)
    asked = (needs[0], needs[1], needs[2] and bias is not None, needs[3])
    return tuple(g if wanted else None for g, wanted in zip(grads, asked)) + (None,) * (len(ctx.params) + 1)


@torch.library.custom_op("intunlearn::quant_linear_backward", mutates_args=())
def quant_linear_backward(grad_output: Tensor, x: Tensor, weight: Tensor, bias: Optional[Tensor],
                          weight_scale: Tensor, sample_weights: Optional[Tensor], output: Tensor,
                          input_scale: float, input_zero_point: int, output_scale: float,
                          output_zero_point: int, act_min: int, act_max: int, weight_bits: int,
                          backend: str, needs_input: bool, needs_weight: bool, needs_scale: bool
                          ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(grad_x, grad_weight, grad_bias, grad_weight_scale) of quant_linear; empty where not needed."""
    return _ste_backward("qlinear_backward", {"in_features": weight.shape[1]}, grad_output, x, weight,
                         bias, weight_scale, sample_weights, output, input_scale, input_zero_point,
                         output_scale, output_zero_point, act_min, act_max, weight_bits, backend,
                         needs_input, needs_weight, needs_scale)


@quant_linear_backward.register_fake
def _(grad_output, x, weight, bias, weight_scale, sample_weights, output, input_scale, input_zero_point,
      output_scale, output_zero_point, act_min, act_max, weight_bits, backend, needs_input,
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
    x_q, _ = quantize_input(x, input_scale, input_zero_point)
    w_q, _, _, b_q, multiplier, shift = integer_params(weight, bias, weight_scale, input_scale,
                                                        output_scale, weight_bits)
    y = ops.qconv2d(x_q, w_q, b_q, stride=tuple(stride), padding=tuple(padding),
                    dilation=tuple(dilation), groups=groups, input_zero_point=input_zero_point,
                    output_zero_point=output_zero_point, multiplier=multiplier, shift=shift,
                    act_min=act_min, act_max=act_max, weight_bits=weight_bits, rounding=rounding,
                    backend=backend)
    return (output_scale * (y.double() - output_zero_point)).float()


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
                          backend: str, needs_input: bool, needs_weight: bool, needs_scale: bool,
                          stride: list[int], padding: list[int], dilation: list[int], groups: int
                          ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(grad_x, grad_weight, grad_bias, grad_weight_scale) of quant_conv2d; empty where not needed."""
    geometry = {"weight_shape": tuple(weight.shape), "stride": tuple(stride), "padding": tuple(padding),
                "dilation": tuple(dilation), "groups": groups}
    return _ste_backward("qconv2d_backward", geometry, grad_output, x, weight, bias, weight_scale,
                         sample_weights, output, input_scale, input_zero_point, output_scale,
                         output_zero_point, act_min, act_max, weight_bits, backend, needs_input,
                         needs_weight, needs_scale)


@quant_conv2d_backward.register_fake
def _(grad_output, x, weight, bias, weight_scale, sample_weights, output, input_scale, input_zero_point,
      output_scale, output_zero_point, act_min, act_max, weight_bits, backend, needs_input,
      needs_weight, needs_scale, stride, padding, dilation, groups):
    return _fake_ste_backward(x, weight, bias, weight_scale, needs_input, needs_weight, needs_scale)


quant_conv2d.register_autograd(
    lambda ctx, grad: _autograd_backward(ctx, grad, torch.ops.intunlearn.quant_conv2d_backward,
                                         ctx.params[9:]),
    setup_context=_setup_context)
