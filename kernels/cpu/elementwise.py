"""TFLite int8 ADD and AVERAGE_POOL_2D (Numba), bit-exact with intunlearn.reference."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .fixedpoint import (multiply_by_quantized_multiplier_double_rounding,
                         multiply_by_quantized_multiplier_single_rounding, requantize, wrap_int32)


@njit(cache=True, nogil=True, inline="always")
def _rescale_add_input(value, zero_point, multiplier, shift, left_shift, single_rounding):
    """One ADD input: centre, shift left by left_shift (wrapping int32), rescale."""
    shifted = wrap_int32(wrap_int32(np.int64(value) - zero_point) << left_shift)
    if single_rounding:
        return multiply_by_quantized_multiplier_single_rounding(shifted, multiplier, shift)
    return multiply_by_quantized_multiplier_double_rounding(shifted, multiplier, shift)


@njit(cache=True, nogil=True, parallel=True)
def qadd(a, b, out, a_params, b_params, left_shift, output_params, single_rounding):
    """a, b, out: flat int8 arrays. a_params/b_params: (zero_point, multiplier, shift);
    output_params: (zero_point, multiplier, shift, act_min, act_max); single_rounding: the
    TFLITE_SINGLE_ROUNDING rescales."""
    a_zero, a_mult, a_shift = a_params
    b_zero, b_mult, b_shift = b_params
    out_zero, out_mult, out_shift, act_min, act_max = output_params
    for i in prange(a.shape[0]):
        raw_sum = wrap_int32(
            _rescale_add_input(a[i], a_zero, a_mult, a_shift, left_shift, single_rounding)
            + _rescale_add_input(b[i], b_zero, b_mult, b_shift, left_shift, single_rounding))
        out[i] = requantize(raw_sum, out_mult, out_shift, out_zero, act_min, act_max,
                            single_rounding)


@njit(cache=True, nogil=True, inline="always")
def _round_divide(total, count):
    """TFLM's (acc +/- count/2) / count with C (truncating) division: nearest, ties away from 0."""
    half = count // 2
    if total > 0:
        return (total + half) // count
    return -((-total + half) // count)


@njit(cache=True, nogil=True, parallel=True)
def qavg_pool2d(x, out, kernel_h, kernel_w, stride_h, stride_w, pad_top, pad_left,
                act_min, act_max):
    """x int8 [N, C, H, W] -> out int8 [N, C, OH, OW]; the divisor counts in-image cells only."""
    batch, channels, height, width = x.shape
    out_h, out_w = out.shape[2], out.shape[3]
    for plane_index in prange(batch * channels):
        n, c = plane_index // channels, plane_index % channels
        plane = x[n, c]
        for oy in range(out_h):
            y_start = max(oy * stride_h - pad_top, 0)
            y_end = min(oy * stride_h - pad_top + kernel_h, height)
            for ox in range(out_w):
                x_start = max(ox * stride_w - pad_left, 0)
                x_end = min(ox * stride_w - pad_left + kernel_w, width)
                total = np.int64(0)
                for iy in range(y_start, y_end):
                    for ix in range(x_start, x_end):
                        total += plane[iy, ix]
                count = (y_end - y_start) * (x_end - x_start)
                value = _round_divide(total, count)
                out[n, c, oy, ox] = min(max(value, act_min), act_max)
