"""The training layers' forward and straight-through backward, and how modules call them.

A weighted layer in integer arithmetic trains through one road:

    modules.QuantLinear / QuantConv2d
      -> apply_quant_linear / apply_quant_conv2d (here): the eager autograd.Function below, or,
         while torch.compile traces, the custom ops of library.py (which call the same
         integer_forward / custom_op_backward)
      -> integer_forward: quantize input and weights (qparams), derive the int32 bias and
         multipliers, run the backend's integer kernel, dequantize the int8 output
      -> integer_backward: the backend's STE backward kernel (per-sample weights fused into the
         weight-gradient reduction), then the input-saturation and weight-clip masks and LSQ's
         step-size gradient.

The STE itself is defined in DESIGN.md and, as readable float64 code, in
intunlearn.reference.backward; the backends' kernels are tested against it.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from intunlearn import _checks as check
from intunlearn import ops
from intunlearn import qparams as qp
from intunlearn import reference as spec
from intunlearn.backends import resolve
from intunlearn.layer_params import ConvGeometry, LayerQuant, SavedForBackward


def conv_output_shape(x_shape, weight_shape, geometry: ConvGeometry) -> tuple[int, int, int, int]:
    """[N, OC, OH, OW] of a convolution (the spec's output size on each axis)."""
    top, bottom, left, right = geometry.padding
    return (x_shape[0], weight_shape[0],
            spec.conv2d_output_size(x_shape[2], weight_shape[2], geometry.stride[0], top, bottom,
                                    geometry.dilation[0]),
            spec.conv2d_output_size(x_shape[3], weight_shape[3], geometry.stride[1], left, right,
                                    geometry.dilation[1]))


def check_layer_inputs(x: Tensor, weight: Tensor, bias, weight_scale: Tensor, quant: LayerQuant,
                       geometry: Optional[ConvGeometry], sample_weights=None) -> None:
    """The checks of intunlearn.ops that the inputs of a training layer can fail (the int8
    tensors derived from them are valid by construction, so the integer op is called on the
    backend directly), the parameters' types (a field given in the wrong place fails here), and
    the per-sample weights' shape: the kernels index them by sample."""
    if sample_weights is not None and (sample_weights.dim() != 1 or x.dim() == 0
                                       or sample_weights.shape[0] != x.shape[0]
                                       or not sample_weights.is_floating_point()):
        raise ValueError(f"sample_weights must be a floating tensor [{x.shape[0] if x.dim() else 'N'}] "
                         f"(one per sample of x), got {sample_weights.dtype} "
                         f"{tuple(sample_weights.shape)}")
    for name in ("input_scale", "output_scale"):
        value = getattr(quant, name)
        if not isinstance(value, float) or not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a finite positive float, got {value!r}")
    check.integer("input_zero_point", quant.input_zero_point)
    check.integer("output_zero_point", quant.output_zero_point)
    check.activation_range(quant.act_min, quant.act_max)
    check.choice("weight_bits", quant.weight_bits, ops.WEIGHT_BITS)
    check.choice("rounding", quant.rounding, ops.ROUNDINGS)
    if not isinstance(quant.backend, str):
        raise TypeError(f"backend must be a string, got {type(quant.backend).__name__}")
    channels = weight.shape[0] if weight.dim() else 0
    if bias is not None and tuple(bias.shape) != (channels,):
        raise ValueError(f"bias must have shape [{channels}] (one per output channel), got {tuple(bias.shape)}")
    if weight_scale.dim() != 1 or weight_scale.shape[0] not in (1, channels):
        raise ValueError(f"weight_scale must have shape [{channels}] or [1], got {tuple(weight_scale.shape)}")
    if geometry is None:
        if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
            raise ValueError(f"quant_linear: x must be [N, IN] and weight [OUT, IN] with the same IN, "
                             f"got {tuple(x.shape)} and {tuple(weight.shape)}")
        return
    groups = geometry.groups
    if x.dim() != 4 or weight.dim() != 4 or groups < 1 or x.shape[1] != weight.shape[1] * groups \
            or weight.shape[0] % groups:
        raise ValueError(f"quant_conv2d: x must be [N, C, H, W] and weight [OC, C/groups, KH, KW] with groups "
                         f"dividing OC, got {tuple(x.shape)}, {tuple(weight.shape)}, groups={groups}")
    if min(conv_output_shape(x.shape, weight.shape, geometry)[2:]) < 1:
        raise ValueError(f"quant_conv2d: x spatial size {tuple(x.shape[2:])} with padding "
                         f"{list(geometry.padding)} is smaller than the dilated kernel "
                         f"{tuple(weight.shape[2:])} x {list(geometry.dilation)}")


def integer_forward(x, weight, bias, weight_scale, quant: LayerQuant, geometry: Optional[ConvGeometry],
                    *, sample_weights=None, weight_mask=False,
                    weight_slope=False) -> tuple[Tensor, SavedForBackward]:
    """Real input -> quantize -> integer layer on the backend -> dequantized float32 output, and
    what the backward needs (the weight mask / LSQ slope None unless asked for)."""
    check_layer_inputs(x, weight, bias, weight_scale, quant, geometry, sample_weights)
    backend = quant.backend
    x_q, x_inside = qp.quantize_activation(x, quant.input_scale, quant.input_zero_point, backend=backend)
    w_q, w_inside, w_slope = qp.weight_codes(weight, weight_scale, quant.weight_bits, mask=weight_mask,
                                             slope=weight_slope, backend=backend)
    b_q, multiplier, shift = qp.requantization_params(bias, weight_scale, quant.input_scale,
                                                      quant.output_scale, weight.shape[0], backend)
    kernels = resolve(backend, x.device)
    requant = {"input_zero_point": quant.input_zero_point, "output_zero_point": quant.output_zero_point,
               "multiplier": multiplier, "shift": shift, "act_min": quant.act_min,
               "act_max": quant.act_max, "rounding": quant.rounding}
    if geometry is not None:
        y_q = kernels.qconv2d(x_q, w_q, b_q, weight_shape=tuple(weight.shape), stride=geometry.stride,
                              padding=geometry.padding, dilation=geometry.dilation,
                              groups=geometry.groups, **requant)
    else:
        y_q = kernels.qlinear(x_q, w_q, b_q, in_features=weight.shape[1], weight_zero_point=0, **requant)
    y = qp.dequantize_activation(y_q, quant.output_scale, quant.output_zero_point, backend)
    return y, SavedForBackward(x_q, x_inside, w_q, w_inside, w_slope, y_q)


def lsq_scale_grad(grad_weight_real, slope, weight_bits):
    """LSQ (Esser et al., 2020) gradient of the per-channel step size s[c]: sum_k dL/dw_hat *
    d(w_hat)/ds, d(w_hat)/ds = round(w/s) - w/s inside the range and +-Q where clamped, scaled
    by 1/sqrt(numel_per_channel * Q) as the paper recommends."""
    limit = qp.weight_max(weight_bits)
    per_channel = grad_weight_real.double() * slope
    numel = per_channel[0].numel()
    return (per_channel.flatten(1).sum(dim=1) / math.sqrt(numel * limit)).float()


def integer_backward(grad_output, saved: SavedForBackward, weight, bias, weight_scale, sample_weights,
                     quant: LayerQuant, geometry: Optional[ConvGeometry], needs_input, needs_weight,
                     needs_scale):
    """STE backward from the forward's saved tensors (the weight mask is needed when
    needs_weight, the slope when needs_scale): the backend's backward kernel, then the
    input-saturation and weight-clipping masks and the LSQ step-size gradient.
    Returns (grad_x, grad_weight, grad_bias, grad_weight_scale), None where not needed."""
    kernels = resolve(quant.backend, saved.x_q.device)
    common = {"input_zero_point": quant.input_zero_point, "input_scale": quant.input_scale,
              "weight_scales": weight_scale.detach().float(), "act_min": quant.act_min,
              "act_max": quant.act_max, "sample_weights": sample_weights,
              "needs_input_grad": needs_input, "needs_weight_grad": needs_weight or needs_scale}
    if geometry is not None:
        grad_x, grad_w, grad_b = kernels.qconv2d_backward(
            grad_output.contiguous(), saved.y_q, saved.x_q, saved.w_q, weight_shape=tuple(weight.shape),
            stride=geometry.stride, padding=geometry.padding, dilation=geometry.dilation,
            groups=geometry.groups, **common)
    else:
        grad_x, grad_w, grad_b = kernels.qlinear_backward(grad_output.contiguous(), saved.y_q, saved.x_q,
                                                          saved.w_q, in_features=weight.shape[1], **common)
    grad_w = None if grad_w is None else grad_w.reshape(weight.shape)
    return (torch.where(saved.x_inside, grad_x, 0.0) if needs_input else None,
            torch.where(saved.w_inside, grad_w, 0.0).to(weight.dtype) if needs_weight else None,
            grad_b.to(bias.dtype) if needs_weight and bias is not None else None,
            lsq_scale_grad(grad_w, saved.w_slope, quant.weight_bits).to(weight_scale.dtype)
            if needs_scale else None)


def custom_op_backward(grad_output, x, weight, bias, weight_scale, sample_weights, output,
                       quant: LayerQuant, geometry: Optional[ConvGeometry], needs_input, needs_weight,
                       needs_scale):
    """The backward custom ops: recover the forward's int8 tensors from its float input and
    output (both on exact grids) and the weights, then the shared backward. Custom-op outputs
    may not be None or alias each other: gradients not asked for come back as empty tensors."""
    backend = quant.backend
    x_q, x_inside = qp.quantize_activation(x, quant.input_scale, quant.input_zero_point, backend=backend)
    w_q, w_inside, w_slope = qp.weight_codes(weight, weight_scale, quant.weight_bits, mask=needs_weight,
                                             slope=needs_scale, backend=backend)
    y_q, _ = qp.quantize_activation(output, quant.output_scale, quant.output_zero_point,
                                    backend=backend)  # exact: on the grid
    saved = SavedForBackward(x_q, x_inside, w_q, w_inside, w_slope, y_q)
    grad_x, grad_w, grad_b, grad_s = integer_backward(grad_output, saved, weight, bias, weight_scale,
                                                      sample_weights, quant, geometry, needs_input,
                                                      needs_weight, needs_scale)
    return (x.new_empty(0) if grad_x is None else grad_x.to(x.dtype),
            x.new_empty(0) if grad_w is None else grad_w,
            x.new_empty(0) if grad_b is None else grad_b.clone(),
            x.new_empty(0) if grad_s is None else grad_s)


class _EagerIntegerLayer(torch.autograd.Function):
    """quant_linear / quant_conv2d outside torch.compile: the same forward and STE backward as
    the custom ops, without their dispatch (about 0.1 ms a call, a third of a small layer) and
    saving the forward's int8 tensors rather than recomputing them for the backward."""

    @staticmethod
    def forward(ctx, x, weight, bias, weight_scale, sample_weights, quant, geometry):
        needs = ctx.needs_input_grad
        y, saved = integer_forward(x, weight, bias, weight_scale, quant, geometry,
                                   sample_weights=sample_weights,
                                   weight_mask=needs[1] or needs[2], weight_slope=needs[3])
        ctx.save_for_backward(*saved, weight, bias, weight_scale, sample_weights)
        ctx.quant, ctx.geometry = quant, geometry
        return y

    @staticmethod
    def backward(ctx, grad_output):
        *saved, weight, bias, weight_scale, sample_weights = ctx.saved_tensors
        needs = ctx.needs_input_grad
        grad_x, grad_w, grad_b, grad_s = integer_backward(
            grad_output, SavedForBackward(*saved), weight, bias, weight_scale, sample_weights,
            ctx.quant, ctx.geometry, needs[0], needs[1] or needs[2], needs[3])
        return (grad_x, grad_w if needs[1] else None, grad_b if needs[2] else None, grad_s, None, None,
                None)


def _eager(*tensors) -> bool:
    """Whether to take the eager path: not while torch.compile / export traces (the custom ops
    are what they see) and only on real tensors (fake and meta ones get the ops' fake
    implementations)."""
    return not torch.compiler.is_compiling() and not any(
        isinstance(t, torch._subclasses.FakeTensor) or t.device.type == "meta"
        for t in tensors if t is not None)


def apply_quant_linear(x, weight, bias, weight_scale, sample_weights, quant: LayerQuant):
    """`intunlearn::quant_linear` with autograd, taking the eager path where it can."""
    if _eager(x, weight):
        return _EagerIntegerLayer.apply(x, weight, bias, weight_scale, sample_weights, quant, None)
    return torch.ops.intunlearn.quant_linear(x, weight, bias, weight_scale, sample_weights, *quant)


def apply_quant_conv2d(x, weight, bias, weight_scale, sample_weights, quant: LayerQuant,
                       geometry: ConvGeometry):
    """`intunlearn::quant_conv2d` with autograd, taking the eager path where it can."""
    if _eager(x, weight):
        return _EagerIntegerLayer.apply(x, weight, bias, weight_scale, sample_weights, quant, geometry)
    return torch.ops.intunlearn.quant_conv2d(x, weight, bias, weight_scale, sample_weights, *quant,
                                             *geometry.op_args())


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
