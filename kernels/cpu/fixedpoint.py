"""Fixed-point primitives of the integer spec as small Numba functions (scalar, int64 carriers).

Each function mirrors the numpy oracle of the same name in ``intunlearn.reference.fixedpoint``
(gemmlowp's fixedpoint.h, TFLite's common.h). Values are int32 quantities carried in int64 so
that intermediate products never overflow; every place where the C code would wrap int32 calls
``wrap_int32`` explicitly, so the bits match the compiled C (and the oracle) exactly.
"""

from __future__ import annotations

import numpy as np
from numba import njit

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1


@njit(cache=True, nogil=True, inline="always")
def wrap_int32(value):
    """Two's-complement wrap of an int64 into int32, returned as int64 (LLVM trunc + sext)."""
    return np.int64(np.int32(value))


@njit(cache=True, nogil=True, inline="always")
def divide_truncating_by_pot(value, exponent):
    """C integer division by 2**exponent: rounds toward zero (an arithmetic shift rounds down)."""
    if value >= 0:
        return value >> exponent
    return -((-value) >> exponent)


@njit(cache=True, nogil=True, inline="always")
def saturating_rounding_doubling_high_mul(a, b):
    """round(a * b / 2**31) with ties toward +infinity, as gemmlowp: the nudge 2**30 (1 - 2**30
    for a negative product) and a division truncating toward zero, so -0.5 -> 0 and
    -1.5 -> -1, 0.5 -> 1. INT32_MIN * INT32_MIN saturates to INT32_MAX."""
    if a == INT32_MIN and b == INT32_MIN:
        return np.int64(INT32_MAX)
    product = np.int64(a) * np.int64(b)  # |a * b| <= 2**62: exact in int64
    nudge = np.int64(1 << 30) if product >= 0 else np.int64(1 - (1 << 30))
    return divide_truncating_by_pot(product + nudge, 31)


@njit(cache=True, nogil=True, inline="always")
def rounding_divide_by_pot(value, exponent):
    """value / 2**exponent rounded to nearest, ties away from zero (exponent in [0, 31])."""
    mask = (np.int64(1) << exponent) - 1
    remainder = value & mask
    threshold = (mask >> 1) + (1 if value < 0 else 0)
    return (value >> exponent) + (1 if remainder > threshold else 0)


@njit(cache=True, nogil=True, inline="always")
def multiply_by_quantized_multiplier_double_rounding(value, multiplier, shift):
    """TFLite's default MultiplyByQuantizedMultiplier: a positive shift is a wrapping int32 left
    shift first, then the doubling high multiply, then a rounding right shift."""
    left_shift = shift if shift > 0 else 0
    right_shift = -shift if shift < 0 else 0
    shifted = wrap_int32(np.int64(value) << left_shift)
    return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(shifted, multiplier),
                                  right_shift)


@njit(cache=True, nogil=True, inline="always")
def multiply_by_quantized_multiplier_single_rounding(value, multiplier, shift):
    """TFLITE_SINGLE_ROUNDING: (value * m + 2**(30 - shift)) >> (31 - shift), cast to int32.

    The 64-bit intermediate cannot overflow for shift in [-31, 30] (|value * m| < 2**62)."""
    total_shift = 31 - shift
    rounding = np.int64(1) << (total_shift - 1)
    return wrap_int32((np.int64(value) * np.int64(multiplier) + rounding) >> total_shift)


@njit(cache=True, nogil=True, inline="always")
def requantize(acc, multiplier, shift, output_zero_point, act_min, act_max, single_rounding):
    """int32 accumulator -> int8 as TFLM: scale, add the zero point in wrapping int32, clamp."""
    if single_rounding:
        scaled = multiply_by_quantized_multiplier_single_rounding(acc, multiplier, shift)
    else:
        scaled = multiply_by_quantized_multiplier_double_rounding(acc, multiplier, shift)
    shifted = wrap_int32(scaled + output_zero_point)
    if shifted < act_min:
        shifted = act_min
    if shifted > act_max:
        shifted = act_max
    return np.int8(shifted)
