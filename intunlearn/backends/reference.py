"""The "reference" backend: runs the numpy oracle (intunlearn.reference) on torch tensors.

Slow and obviously right. Tensors are copied to host numpy, computed on, and the int8 result
is returned on the input's device.
"""

from __future__ import annotations

import numpy as np
import torch

from intunlearn import reference as spec


def _numpy(t: torch.Tensor | None):
    return None if t is None else t.detach().cpu().numpy()


def _to_device(result: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(result)).to(like.device)


def unpacked_weight(weight: torch.Tensor, length: int) -> np.ndarray:
    """int8 weight values [OUT, length]; uint8 weights are packed int4 and get unpacked."""
    if weight.dtype == torch.uint8:
        return spec.unpack_int4(_numpy(weight), length)
    return _numpy(weight).reshape(weight.shape[0], length)


def qlinear(x, weight, bias, *, in_features, multiplier, shift, **params):
    y = spec.qlinear(_numpy(x), unpacked_weight(weight, in_features), _numpy(bias),
                     multiplier=_numpy(multiplier), shift=_numpy(shift), **params)
    return _to_device(y, x)


def qconv2d(x, weight, bias, *, weight_shape, multiplier, shift, **params):
    out_channels, group_channels, kernel_h, kernel_w = weight_shape
    w = unpacked_weight(weight, group_channels * kernel_h * kernel_w).reshape(weight_shape)
    y = spec.qconv2d(_numpy(x), w, _numpy(bias), multiplier=_numpy(multiplier),
                     shift=_numpy(shift), **params)
    return _to_device(y, x)


def qadd(a, b, **params):
    return _to_device(spec.qadd(_numpy(a), _numpy(b), **params), a)


def qavg_pool2d(x, **params):
    return _to_device(spec.qavg_pool2d(_numpy(x), **params), x)


# --------------------------------------------------------------------------------------------
# STE backward, in float64 torch: the readable definition the kernels' backward must match.
# --------------------------------------------------------------------------------------------


def _masked_upstream(grad_output, output, act_min, act_max):
    """dL/dy_real where the output was not clamped; outputs at the limits count as clamped."""
    inside = (output > act_min) & (output < act_max)
    return torch.where(inside, grad_output.double(), 0.0)


def _real_weight(weight, weight_shape, weight_scales):
    """s_w[c] * w[c] in float64, with weight_shape [OUT, ...] (unpacking packed int4)."""
    length = int(np.prod(weight_shape[1:]))
    values = torch.from_numpy(unpacked_weight(weight, length).astype(np.float64)).reshape(weight_shape)
    scales = weight_scales.double().cpu().reshape((-1,) + (1,) * (len(weight_shape) - 1))
    return (values * scales).to(weight.device)


def _per_sample(values, sample_weights):
    if sample_weights is None:
        return values
    return values * sample_weights.double().reshape((-1,) + (1,) * (values.dim() - 1))


def qlinear_backward(grad_output, output, x, weight, *, in_features, input_zero_point, input_scale,
                     weight_scales, act_min, act_max, sample_weights=None, needs_input_grad=True,
                     needs_weight_grad=True):
    """STE gradients of a qlinear (see DESIGN.md). sample_weights alpha [N] weight each sample's
    contribution to grad_weight and grad_bias only: grad_input stays per-sample, so that every
    layer applying alpha to its own weight-gradient reduction gives the gradient of
    sum_i alpha_i L_i exactly once. Returns float32 (grad_input, grad_weight, grad_bias)."""
    g = _masked_upstream(grad_output, output, act_min, act_max)
    grad_input = grad_weight = grad_bias = None
    if needs_input_grad:
        w_real = _real_weight(weight, (weight.shape[0], in_features), weight_scales)
        grad_input = (g @ w_real).float()
    if needs_weight_grad:
        x_real = input_scale * (x.double() - input_zero_point)
        weighted = _per_sample(g, sample_weights)
        grad_weight = (weighted.T @ x_real).float()
        grad_bias = weighted.sum(dim=0).float()
    return grad_input, grad_weight, grad_bias


def qconv2d_backward(grad_output, output, x, weight, *, weight_shape, stride, padding, dilation,
                     groups, input_zero_point, input_scale, weight_scales, act_min, act_max,
                     sample_weights=None, needs_input_grad=True, needs_weight_grad=True):
    """STE gradients of a qconv2d; alpha as in qlinear_backward. padding (top, bottom, left, right)."""
    g = _masked_upstream(grad_output, output, act_min, act_max)
    top, bottom, left, right = padding
    padded_shape = (x.shape[0], x.shape[1], x.shape[2] + top + bottom, x.shape[3] + left + right)
    grad_input = grad_weight = grad_bias = None
    if needs_input_grad:
        w_real = _real_weight(weight, weight_shape, weight_scales)
        padded = torch.nn.grad.conv2d_input(padded_shape, w_real, g, stride=stride,
                                            dilation=dilation, groups=groups)
        grad_input = padded[:, :, top:top + x.shape[2], left:left + x.shape[3]].float()
    if needs_weight_grad:
        x_real = input_scale * (x.double() - input_zero_point)
        x_padded = torch.nn.functional.pad(x_real, (left, right, top, bottom))
        weighted = _per_sample(g, sample_weights)
        grad_weight = torch.nn.grad.conv2d_weight(x_padded, weight_shape, weighted, stride=stride,
                                                  dilation=dilation, groups=groups).float()
        grad_bias = weighted.sum(dim=(0, 2, 3)).float()
    return grad_input, grad_weight, grad_bias
