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
This module only registers the ops: the training ops' forward and backward are intunlearn.ste's,
their parameters the named tuples of intunlearn.layer_params, passed flat in the field order.
"""

from __future__ import annotations

import inspect
from typing import Optional

import torch
from torch import Tensor

from intunlearn import ops
from intunlearn import ste
from intunlearn.layer_params import ConvGeometry, LayerQuant

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


@qconv2d.register_fake
def _(x, weight, bias, multiplier, shift, stride, padding, dilation, groups, input_zero_point,
      output_zero_point, act_min, act_max, weight_bits, rounding, backend):
    return x.new_empty(ste.conv_output_shape(x.shape, weight.shape,
                                             ConvGeometry.of(stride, padding, dilation, groups)),
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
    geometry = ConvGeometry.of(stride, padding, (1, 1), x.shape[1])
    return x.new_empty(ste.conv_output_shape(x.shape, (x.shape[1], 1, *kernel_size), geometry),
                       dtype=torch.int8)


# ---- quant_linear -----------------------------------------------------------------------------


@torch.library.custom_op("intunlearn::quant_linear", mutates_args=())
def quant_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor], weight_scale: Tensor,
                 sample_weights: Optional[Tensor], input_scale: float, input_zero_point: int,
                 output_scale: float, output_zero_point: int, act_min: int, act_max: int,
                 weight_bits: int, rounding: str, backend: str) -> Tensor:
    """Real input [N, IN] -> true-integer linear -> dequantized output [N, OUT] (float32)."""
    quant = LayerQuant(input_scale, input_zero_point, output_scale, output_zero_point, act_min,
                       act_max, weight_bits, rounding, backend)
    return ste.integer_forward(x, weight, bias, weight_scale, quant, None, sample_weights=sample_weights)[0]


@quant_linear.register_fake
def _(x, weight, *args):
    return x.new_empty((x.shape[0], weight.shape[0]), dtype=torch.float32)


def _fake_ste_backward(x, weight, bias, weight_scale, needs_input, needs_weight, needs_scale):
    return (torch.empty_like(x) if needs_input else x.new_empty(0),
            torch.empty_like(weight) if needs_weight else x.new_empty(0),
            torch.empty_like(bias) if needs_weight and bias is not None else x.new_empty(0),
            torch.empty_like(weight_scale) if needs_scale else x.new_empty(0))


# The training ops' arguments: five tensors, then LayerQuant's fields, then (conv) ConvGeometry's.
_TENSORS = 5


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:_TENSORS], output)
    ctx.params = inputs[_TENSORS:]


def _autograd_backward(ctx, grad_output, backward_op):
    """Calls the backward op (itself a custom op, so the backward traces under torch.compile)
    and maps the empty tensors of gradients not asked for back to None."""
    x, weight, bias, weight_scale, sample_weights, output = ctx.saved_tensors
    needs = ctx.needs_input_grad
    quant, geometry = ctx.params[:len(LayerQuant._fields)], ctx.params[len(LayerQuant._fields):]
    grads = backward_op(grad_output, x, weight, bias, weight_scale, sample_weights, output,
                        *quant, needs[0], needs[1] or needs[2], needs[3], *geometry)
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
    quant = LayerQuant(input_scale, input_zero_point, output_scale, output_zero_point, act_min,
                       act_max, weight_bits, rounding, backend)
    return ste.custom_op_backward(grad_output, x, weight, bias, weight_scale, sample_weights, output,
                                  quant, None, needs_input, needs_weight, needs_scale)


@quant_linear_backward.register_fake
def _(grad_output, x, weight, bias, weight_scale, sample_weights, output, input_scale, input_zero_point,
      output_scale, output_zero_point, act_min, act_max, weight_bits, rounding, backend, needs_input,
      needs_weight, needs_scale):
    return _fake_ste_backward(x, weight, bias, weight_scale, needs_input, needs_weight, needs_scale)


quant_linear.register_autograd(
    lambda ctx, grad: _autograd_backward(ctx, grad, torch.ops.intunlearn.quant_linear_backward),
    setup_context=_setup_context)


# ---- quant_conv2d -----------------------------------------------------------------------------


@torch.library.custom_op("intunlearn::quant_conv2d", mutates_args=())
def quant_conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor], weight_scale: Tensor,
                 sample_weights: Optional[Tensor], input_scale: float, input_zero_point: int,
                 output_scale: float, output_zero_point: int, act_min: int, act_max: int,
                 weight_bits: int, rounding: str, backend: str, stride: list[int],
                 padding: list[int], dilation: list[int], groups: int) -> Tensor:
    """Real NCHW input -> true-integer convolution -> dequantized output (float32)."""
    quant = LayerQuant(input_scale, input_zero_point, output_scale, output_zero_point, act_min,
                       act_max, weight_bits, rounding, backend)
    return ste.integer_forward(x, weight, bias, weight_scale, quant,
                               ConvGeometry.of(stride, padding, dilation, groups),
                               sample_weights=sample_weights)[0]


@quant_conv2d.register_fake
def _(x, weight, bias, weight_scale, sample_weights, input_scale, input_zero_point, output_scale,
      output_zero_point, act_min, act_max, weight_bits, rounding, backend, stride, padding,
      dilation, groups):
    return x.new_empty(ste.conv_output_shape(x.shape, weight.shape,
                                             ConvGeometry.of(stride, padding, dilation, groups)),
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
    quant = LayerQuant(input_scale, input_zero_point, output_scale, output_zero_point, act_min,
                       act_max, weight_bits, rounding, backend)
    return ste.custom_op_backward(grad_output, x, weight, bias, weight_scale, sample_weights, output,
                                  quant, ConvGeometry.of(stride, padding, dilation, groups),
                                  needs_input, needs_weight, needs_scale)


@quant_conv2d_backward.register_fake
def _(grad_output, x, weight, bias, weight_scale, sample_weights, output, input_scale, input_zero_point,
      output_scale, output_zero_point, act_min, act_max, weight_bits, rounding, backend, needs_input,
      needs_weight, needs_scale, stride, padding, dilation, groups):
    return _fake_ste_backward(x, weight, bias, weight_scale, needs_input, needs_weight, needs_scale)


quant_conv2d.register_autograd(
    lambda ctx, grad: _autograd_backward(ctx, grad, torch.ops.intunlearn.quant_conv2d_backward),
    setup_context=_setup_context)


def _check_signatures():
    """The training ops' flat arguments must be LayerQuant's (and ConvGeometry's) fields in
    their order: a field added or moved in one place and not the other fails at import."""
    quant, geometry = list(LayerQuant._fields), list(ConvGeometry._fields)
    expected = {quant_linear: quant, quant_conv2d: quant + geometry,
                quant_linear_backward: quant, quant_conv2d_backward: quant + geometry}
    for op, fields in expected.items():
        names = list(inspect.signature(op._init_fn).parameters)
        first = names.index("input_scale")
        names = [n for n in names[first:] if n not in ("needs_input", "needs_weight", "needs_scale")]
        if names != fields:
            raise RuntimeError(f"{op._name}: arguments {names} do not follow the named parameters {fields}")


_check_signatures()
