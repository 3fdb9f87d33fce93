"""Exact affine quantization of float tensors in one pass (Numba).

The torch formulation of TFLite's quantizer (divide, round half away from zero, add the zero
point, clamp) takes five or six tensor passes in float64; these loops do it in one, with the
same float64 arithmetic, so the results are bit-identical to it.
"""

from __future__ import annotations

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
