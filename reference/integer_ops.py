"""The integer ops of the spec, written for clarity in numpy int64. They are the oracle.

Semantics are those of TFLite Micro's reference integer kernels (fully_connected.h, conv.h,
depthwise_conv.h, add.h, pooling.h in tensorflow/lite/kernels/internal/reference/integer_ops):

    acc[c]  = sum_k (w[c, k] - z_w) * (x[k] - z_x) + bias[c]          (int32, wrapping)
    y[c]    = clamp(MultiplyByQuantizedMultiplier(acc[c], m[c], shift[c]) + z_y, act_min, act_max)

Layouts follow PyTorch (NCHW activations, OIHW weights); arguments arrive already validated and
in canonical form (tuples, unpacked weights). The accumulator is computed exactly in int64 and
then wrapped to int32: modular addition does not depend on summation order, so any kernel that
accumulates in wrapping int32 gets the same bits.
"""

from __future__ import annotations

import numpy as np

from .fixedpoint import multiply_by_quantized_multiplier, requantize, wrap_int32


def _per_channel(values, channel_axis: int, ndim: int):
    """Reshape a [C] or [1] parameter so it broadcasts along `channel_axis` of an ndim array."""
    shape = [1] * ndim
    shape[channel_axis] = -1
    return np.asarray(values, dtype=np.int64).reshape(shape)


# --------------------------------------------------------------------------------------------
# Fully connected
# --------------------------------------------------------------------------------------------


def linear_accumulator(x, weight, bias, input_zero_point, weight_zero_point=0):
    """int32 accumulators [N, OUT] of a fully connected layer. x [N, IN], weight [OUT, IN]."""
    centered_x = np.asarray(x, np.int64) - input_zero_point
    centered_w = np.asarray(weight, np.int64) - weight_zero_point
    acc = centered_x @ centered_w.T
    if bias is not None:
        acc = acc + np.asarray(bias, np.int64)
    return wrap_int32(acc)


def qlinear(x, weight, bias, *, input_zero_point, output_zero_point, multiplier, shift,
            act_min=-128, act_max=127, weight_zero_point=0, rounding="double"):
    """TFLM FullyConnected (int8): int8 [N, IN] x int8 [OUT, IN] -> int8 [N, OUT]."""
    acc = linear_accumulator(x, weight, bias, input_zero_point, weight_zero_point)
    return requantize(acc, _per_channel(multiplier, 1, 2), _per_channel(shift, 1, 2),
                      output_zero_point, act_min, act_max, rounding)


# --------------------------------------------------------------------------------------------
# Convolution
# --------------------------------------------------------------------------------------------


def conv2d_output_size(size: int, kernel: int, stride: int, pad_before: int, pad_after: int,
                       dilation: int) -> int:
    """Output length along one spatial axis (floor mode, as PyTorch and TFLite VALID/SAME)."""
    return (size + pad_before + pad_after - dilation * (kernel - 1) - 1) // stride + 1


def conv2d_accumulator(x, weight, bias, *, stride, padding, dilation, groups, input_zero_point):
    """int32 accumulators [N, OC, OH, OW] of a grouped 2-D convolution.

    x [N, C, H, W]; weight [OC, C/groups, KH, KW]; stride/dilation (sh, sw); padding
    (top, bottom, left, right). Taps that fall in the padding are skipped, exactly as TFLM's
    `is_point_inside_image` test does; this is the same as padding x with its zero point.
    """
    x = np.asarray(x, np.int64)
    weight = np.asarray(weight, np.int64)
    batch, channels, height, width = x.shape
    out_channels, group_channels, kernel_h, kernel_w = weight.shape
    (stride_h, stride_w), (dilation_h, dilation_w) = stride, dilation
    top, bottom, left, right = padding
    out_h = conv2d_output_size(height, kernel_h, stride_h, top, bottom, dilation_h)
    out_w = conv2d_output_size(width, kernel_w, stride_w, left, right, dilation_w)

    # Centre first, then pad with zeros: a padded tap contributes (z_x - z_x) * w = 0.
    centered = np.pad(x - input_zero_point, ((0, 0), (0, 0), (top, bottom), (left, right)))
    out_per_group = out_channels // groups
    acc = np.zeros((batch, out_channels, out_h, out_w), np.int64)
    for g in range(groups):
        x_group = centered[:, g * group_channels:(g + 1) * group_channels]
        w_group = weight[g * out_per_group:(g + 1) * out_per_group]
        for ky in range(kernel_h):
            for kx in range(kernel_w):
                y0, x0 = ky * dilation_h, kx * dilation_w
                window = x_group[:, :, y0:y0 + stride_h * (out_h - 1) + 1:stride_h,
                                 x0:x0 + stride_w * (out_w - 1) + 1:stride_w]
                # window [N, Cg, OH, OW] . w [OCg, Cg] -> [N, OCg, OH, OW]
                acc[:, g * out_per_group:(g + 1) * out_per_group] += np.einsum(
                    "nchw,oc->nohw", window, w_group[:, :, ky, kx])
    if bias is not None:
        acc = acc + _per_channel(bias, 1, 4)
    return wrap_int32(acc)


def qconv2d(x, weight, bias, *, stride, padding, dilation, groups, input_zero_point,
            output_zero_point, multiplier, shift, act_min=-128, act_max=127, rounding="double"):
    """TFLM ConvPerChannel / DepthwiseConvPerChannel (int8), NCHW. Depthwise is groups == C."""
    acc = conv2d_accumulator(x, weight, bias, stride=stride, padding=padding, dilation=dilation,
                             groups=groups, input_zero_point=input_zero_point)
    return requantize(acc, _per_channel(multiplier, 1, 4), _per_channel(shift, 1, 4),
                      output_zero_point, act_min, act_max, rounding)


# --------------------------------------------------------------------------------------------
# Residual add
# --------------------------------------------------------------------------------------------


def qadd(a, b, *, a_zero_point, a_multiplier, a_shift, b_zero_point, b_multiplier, b_shift,
         left_shift, output_zero_point, output_multiplier, output_shift, act_min=-128,
         act_max=127, rounding="double"):
    """TFLite int8 ADD (reference_integer_ops/add.h), elementwise on equal shapes.

    Each input is centred, shifted left by `left_shift` (20 for int8 in TFLite) to gain
    precision, rescaled to a common scale, summed, and rescaled to the output. The three
    rescales are TFLite's MultiplyByQuantizedMultiplierSmallerThanOneExp: double rounding by
    default, one rounding (MultiplyByQuantizedMultiplier) in a TFLITE_SINGLE_ROUNDING build.
    """
    def rescale(values, zero_point, multiplier, shift):
        centered = np.asarray(values, np.int64) - zero_point
        shifted = wrap_int32(centered << left_shift)
        return multiply_by_quantized_multiplier(shifted, multiplier, shift, rounding)

    raw_sum = wrap_int32(rescale(a, a_zero_point, a_multiplier, a_shift)
                         + rescale(b, b_zero_point, b_multiplier, b_shift))
    return requantize(raw_sum, output_multiplier, output_shift, output_zero_point, act_min, act_max,
                      rounding)


# --------------------------------------------------------------------------------------------
# Average pooling
# --------------------------------------------------------------------------------------------


def qavg_pool2d(x, *, kernel_size, stride, padding, act_min=-128, act_max=127):
    """TFLM AveragePool (int8), NCHW; input and output share scale and zero point.

    The divisor counts only the cells inside the input; the quotient is rounded to nearest with
    ties away from zero, as TFLM's `(acc +/- count/2) / count` in C integer division.
    padding is (top, bottom, left, right); every window must overlap the input.
    """
    x = np.asarray(x, np.int64)
    batch, channels, height, width = x.shape
    (kernel_h, kernel_w), (stride_h, stride_w) = kernel_size, stride
    top, bottom, left, right = padding
    out_h = conv2d_output_size(height, kernel_h, stride_h, top, bottom, 1)
    out_w = conv2d_output_size(width, kernel_w, stride_w, left, right, 1)
    out = np.zeros((batch, channels, out_h, out_w), np.int64)
    for oy in range(out_h):
        y_start, y_end = max(oy * stride_h - top, 0), min(oy * stride_h - top + kernel_h, height)
        for ox in range(out_w):
            x_start, x_end = max(ox * stride_w - left, 0), min(ox * stride_w - left + kernel_w, width)
            count = (y_end - y_start) * (x_end - x_start)
            if count <= 0:
                raise ValueError(f"qavg_pool2d: output cell ({oy}, {ox}) lies wholly in padding")
            total = x[:, :, y_start:y_end, x_start:x_end].sum(axis=(2, 3))
            half = count // 2
            out[:, :, oy, ox] = np.where(total > 0, (total + half) // count,
                                         -((-total + half) // count))
    return np.clip(out, act_min, act_max).astype(np.int8)
