"""float64 meaning of the integer ops: dequantize, compute in float64, quantize (round, clamp).

These are what the integer ops approximate. They take real scales instead of fixed-point
multipliers, so they also check the parameter derivation (QuantizeMultiplier, ADD's left shift).
Rounding to int8 is TFLite's: to nearest, ties away from zero, then saturate.
"""

from __future__ import annotations

import numpy as np

from .fixedpoint import round_half_away_from_zero
from .integer_ops import conv2d_output_size


def dequantize(q, scale, zero_point=0):
    """real = scale * (q - zero_point), in float64."""
    return np.asarray(scale, np.float64) * (np.asarray(q, np.float64) - zero_point)


def quantize(real, scale, zero_point, qmin=-128, qmax=127):
    """q = clamp(round(real / scale) + zero_point, qmin, qmax), ties away from zero."""
    q = round_half_away_from_zero(np.asarray(real, np.float64) / scale) + zero_point
    return np.clip(q, qmin, qmax).astype(np.int64)


def linear(x_real, weight_real, bias_real=None):
    """y = x W^T + b in float64."""
    y = np.asarray(x_real, np.float64) @ np.asarray(weight_real, np.float64).T
    return y if bias_real is None else y + bias_real


def conv2d(x_real, weight_real, bias_real=None, *, stride, padding, dilation, groups):
    """Grouped 2-D cross-correlation in float64, zero padding (top, bottom, left, right).

    Written as the direct definition, one output element's sum per step of the loops over the
    kernel taps, so it shares no code with the integer accumulator.
    """
    x = np.pad(np.asarray(x_real, np.float64),
               ((0, 0), (0, 0), (padding[0], padding[1]), (padding[2], padding[3])))
    w = np.asarray(weight_real, np.float64)
    batch, channels = x.shape[:2]
    out_channels, group_channels, kernel_h, kernel_w = w.shape
    out_h = conv2d_output_size(x.shape[2], kernel_h, stride[0], 0, 0, dilation[0])
    out_w = conv2d_output_size(x.shape[3], kernel_w, stride[1], 0, 0, dilation[1])
    out_per_group = out_channels // groups
    y = np.zeros((batch, out_channels, out_h, out_w))
    for oc in range(out_channels):
        first_channel = (oc // out_per_group) * group_channels
        for oy in range(out_h):
            for ox in range(out_w):
                for ky in range(kernel_h):
                    for kx in range(kernel_w):
                        iy = oy * stride[0] + ky * dilation[0]
                        ix = ox * stride[1] + kx * dilation[1]
                        taps = x[:, first_channel:first_channel + group_channels, iy, ix]
                        y[:, oc, oy, ox] += taps @ w[oc, :, ky, kx]
    if bias_real is not None:
        y += np.asarray(bias_real, np.float64).reshape(1, -1, 1, 1)
    return y


def avg_pool2d(x_real, *, kernel_size, stride, padding):
    """Average over the cells of each window that lie inside the input (count_include_pad=False)."""
    x = np.asarray(x_real, np.float64)
    height, width = x.shape[2:]
    top, bottom, left, right = padding
    out_h = conv2d_output_size(height, kernel_size[0], stride[0], top, bottom, 1)
    out_w = conv2d_output_size(width, kernel_size[1], stride[1], left, right, 1)
    y = np.zeros(x.shape[:2] + (out_h, out_w))
    for oy in range(out_h):
        for ox in range(out_w):
            y0, x0 = oy * stride[0] - top, ox * stride[1] - left
            window = x[:, :, max(y0, 0):min(y0 + kernel_size[0], height),
                       max(x0, 0):min(x0 + kernel_size[1], width)]
            y[:, :, oy, ox] = window.mean(axis=(2, 3))
    return y
