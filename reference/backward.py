"""The straight-through-estimator backward of DESIGN.md, in numpy float64: the readable
definition every backend's backward kernel must match.

The forward computes y = requantize(sum w (x - z_x) + b) on int8 values; the STE treats it as the
real layer y_real = W_real x_real + b_real wherever the output was not clamped, with
W_real[c] = s_w[c] * w[c] and x_real = s_x * (x - z_x). So, with g the upstream gradient masked
to the unclamped outputs (an output at act_min or act_max counts as clamped):

    grad_input  = g W_real                      (per sample)
    grad_weight = sum_i alpha_i g_i^T x_real_i  (per-sample weights alpha inside the reduction)
    grad_bias   = sum_i alpha_i g_i

alpha enters the weight and bias reductions only; input gradients stay per-sample, so each layer
applies alpha exactly once and the result is the gradient of sum_i alpha_i L_i. The masks for a
saturated input quantizer and for clipped weights, and LSQ's step-size gradient, are applied by
the caller (intunlearn.ste), the same for every backend.
"""

from __future__ import annotations

import numpy as np

from .integer_ops import conv2d_output_size


def masked_upstream(grad_output, output, act_min, act_max):
    """dL/dy_real where the output was not clamped, float64."""
    output = np.asarray(output)
    inside = (output > act_min) & (output < act_max)
    return np.where(inside, np.asarray(grad_output, np.float64), 0.0)


def real_weight(weight, weight_scales):
    """s_w[c] * w[c] in float64 for int weight values [OC, ...] and scales [OC] (or [1])."""
    weight = np.asarray(weight, np.float64)
    scales = np.asarray(weight_scales, np.float64).reshape((-1,) + (1,) * (weight.ndim - 1))
    return weight * scales


def _weighted(g, sample_weights):
    if sample_weights is None:
        return g
    return g * np.asarray(sample_weights, np.float64).reshape((-1,) + (1,) * (g.ndim - 1))


def qlinear_backward(grad_output, output, x, weight, *, input_zero_point, input_scale, weight_scales,
                     act_min, act_max, sample_weights=None, needs_input_grad=True,
                     needs_weight_grad=True):
    """STE gradients of a qlinear: x int8 [N, IN], weight int values [OUT, IN], output int8
    [N, OUT]. Returns float64 (grad_input, grad_weight, grad_bias), None where not needed."""
    g = masked_upstream(grad_output, output, act_min, act_max)
    grad_input = grad_weight = grad_bias = None
    if needs_input_grad:
        grad_input = g @ real_weight(weight, weight_scales)
    if needs_weight_grad:
        x_real = input_scale * (np.asarray(x, np.float64) - input_zero_point)
        weighted = _weighted(g, sample_weights)
        grad_weight = weighted.T @ x_real
        grad_bias = weighted.sum(axis=0)
    return grad_input, grad_weight, grad_bias


def qconv2d_backward(grad_output, output, x, weight, *, stride, padding, dilation, groups,
                     input_zero_point, input_scale, weight_scales, act_min, act_max,
                     sample_weights=None, needs_input_grad=True, needs_weight_grad=True):
    """STE gradients of a qconv2d: x int8 NCHW, weight int values [OC, C/groups, KH, KW], padding
    (top, bottom, left, right), output int8. Padding taps read real zero, so their gradient is
    dropped. Returns float64 (grad_input, grad_weight, grad_bias), None where not needed."""
    g = masked_upstream(grad_output, output, act_min, act_max)
    x = np.asarray(x, np.int64)
    batch, channels, height, width = x.shape
    out_channels, group_channels, kernel_h, kernel_w = np.shape(weight)
    top, bottom, left, right = padding
    out_h = conv2d_output_size(height, kernel_h, stride[0], top, bottom, dilation[0])
    out_w = conv2d_output_size(width, kernel_w, stride[1], left, right, dilation[1])
    x_padded = np.zeros((batch, channels, height + top + bottom, width + left + right))
    x_padded[:, :, top:top + height, left:left + width] = input_scale * (x - input_zero_point)
    w_real = real_weight(weight, weight_scales)
    weighted = _weighted(g, sample_weights)
    grad_padded = np.zeros_like(x_padded)
    grad_weight = np.zeros(w_real.shape)
    per_group = out_channels // groups
    # One tap (kh, kw) of one group at a time: the input pixels it reads form a strided slice.
    for group in range(groups):
        outs = slice(group * per_group, (group + 1) * per_group)
        ins = slice(group * group_channels, (group + 1) * group_channels)
        for kh in range(kernel_h):
            for kw in range(kernel_w):
                rows = slice(kh * dilation[0], kh * dilation[0] + stride[0] * (out_h - 1) + 1, stride[0])
                cols = slice(kw * dilation[1], kw * dilation[1] + stride[1] * (out_w - 1) + 1, stride[1])
                if needs_input_grad:
                    grad_padded[:, ins, rows, cols] += np.einsum("nohw,oc->nchw", g[:, outs],
                                                                 w_real[outs, :, kh, kw])
                if needs_weight_grad:
                    grad_weight[outs, :, kh, kw] = np.einsum("nohw,nchw->oc", weighted[:, outs],
                                                             x_padded[:, ins, rows, cols])
    grad_input = grad_padded[:, :, top:top + height, left:left + width] if needs_input_grad else None
    if not needs_weight_grad:
        return grad_input, None, None
    return grad_input, grad_weight, weighted.sum(axis=(0, 2, 3))
