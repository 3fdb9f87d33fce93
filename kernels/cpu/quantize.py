"""Exact affine quantization of float tensors in one pass (Numba).

The torch formulation of TFLite's quantizer (divide, round half away from zero, add the zero
point, clamp) takes five or six tensor passes in float64; these loops do it in one, with the
same float64 arithmetic, so the results are bit-identical to it.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit


@njit(cache=True, nogil=True, inline="always")
def round_half_away_from_zero(value):
    """C's round(): nearest integer, ties away from zero. value - trunc(value) is exact in
    float64, so the tie test is exact (no 0.49999999999999994 + 0.5 == 1.0 trap)."""
    truncated = np.trunc(value)
    fraction = value - truncated
    if fraction >= 0.5:
        return truncated + 1.0
    if fraction <= -0.5:
        return truncated - 1.0
    return truncated


@njit(cache=True, nogil=True)
def round_half_away_array(values, out):
    """out[i] = round_half_away_from_zero(values[i]) for flat float64 arrays."""
    for i in range(values.size):
        out[i] = round_half_away_from_zero(values[i])


@njit(cache=True, nogil=True)
def quantize_per_tensor(values, scale, zero_point, qmin, qmax, out, inside):
    """out[i] = clamp(round(values[i] / scale) + zero_point, qmin, qmax) (int8), with
    inside[i] saying whether the clamp left the value alone. Division in float64."""
    for i in range(values.size):
        code = round_half_away_from_zero(np.float64(values[i]) / scale) + zero_point
        inside[i] = qmin <= code <= qmax
        out[i] = np.int8(min(max(code, qmin), qmax))


@njit(cache=True, nogil=True)
def quantize_weight_channels(weight, scales, limit, codes, inside, lsq_slope):
    """Symmetric per-channel weight codes: codes[c, k] = clamp(round(w / s[c]), -limit, limit)
    (int8), with w / s[c] in float64 as the torch formulation divides. When inside / lsq_slope
    have rows, also inside[c, k] = |w / s[c]| <= limit (where the STE passes) and LSQ's
    d(w_hat / s)/ds term: round(w / s) - w / s inside the range, the clamped code outside.
    weight float32 [OC, K]; scales float32 or float64 [OC] (or [1], shared)."""
    channels, length = weight.shape
    masks = inside.shape[0] > 0
    slopes = lsq_slope.shape[0] > 0
    for c in range(channels):
        scale = np.float64(scales[c if scales.shape[0] > 1 else 0])
        for k in range(length):
            ratio = np.float64(weight[c, k]) / scale
            code = min(max(round_half_away_from_zero(ratio), -limit), limit)
            codes[c, k] = np.int8(code)
            if masks:
                inside[c, k] = abs(ratio) <= limit
            if slopes:
                lsq_slope[c, k] = code - ratio if abs(ratio) <= limit else code


@njit(cache=True, nogil=True)
def requantization_params(input_scale, weight_scales, output_scale, bias, multiplier, shift,
                          bias_codes):
    """Per channel c: TFLite's QuantizeMultiplier of M = s_x * s_w[c] / s_y into
    (multiplier, shift) (as intunlearn.reference.fixedpoint.quantize_multiplier: M =
    multiplier * 2**(shift - 31)), and, when bias has entries, the int32 bias
    round(b[c] / (s_x * s_w[c])) (ties away from zero). Returns 0, or the first problem: 1 = M
    not finite or negative, 2 = M rounds to 2**30 or more (shift > 30), 3 = a bias code beyond
    int32."""
    for c in range(weight_scales.shape[0]):
        real = input_scale * np.float64(weight_scales[c]) / output_scale
        if not np.isfinite(real) or real < 0:
            return 1
        fraction, exponent = math.frexp(real)  # real = fraction * 2**exponent, fraction in [0.5, 1)
        fixed = np.int64(round_half_away_from_zero(fraction * 2.0**31))  # exact scaling
        if fixed == 2**31:  # the fraction rounded up to 1.0
            fixed //= 2
            exponent += 1
        if real == 0 or exponent < -31:
            fixed, exponent = 0, 0
        if exponent > 30:
            return 2
        multiplier[c] = fixed
        shift[c] = exponent
        if bias.shape[0] > 0:
            code = round_half_away_from_zero(np.float64(bias[c]) / (input_scale * np.float64(weight_scales[c])))
            if abs(code) > 2**31 - 1:
                return 3
            bias_codes[c] = np.int32(code)
    return 0


@njit(cache=True, nogil=True)
def dequantize_per_tensor(codes, scale, zero_point, out):
    """out[i] = float32(scale * (codes[i] - zero_point)), the product in float64."""
    for i in range(codes.size):
        out[i] = np.float32(scale * (np.float64(codes[i]) - zero_point))
