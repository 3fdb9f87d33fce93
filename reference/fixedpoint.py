"""Fixed-point primitives of the TFLite integer spec, in numpy int64.

Each function is the array form of one primitive from gemmlowp's fixedpoint.h or TFLite's
kernels/internal/common.h, and states its rounding. All inputs are integer arrays (or Python
ints) holding int32 values; results are int64 arrays holding int32 values.

Where the C code would overflow int32 (TFLite guards those spots only with debug checks), we
do what the compiled C does on every two's-complement target: wrap modulo 2**32. That makes the
spec total, and every backend is required to reproduce it.
"""

from __future__ import annotations

import numpy as np

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1


def wrap_int32(x):
    """Reduce int64 values modulo 2**32 into [INT32_MIN, INT32_MAX] (two's-complement wrap)."""
    x = np.asarray(x, dtype=np.int64)
    return ((x - INT32_MIN) & 0xFFFFFFFF) + INT32_MIN


def divide_truncating(numerator, denominator):
    """C's integer division: the quotient rounded toward zero (numpy's // rounds toward -inf)."""
    numerator = np.asarray(numerator, dtype=np.int64)
    denominator = np.asarray(denominator, dtype=np.int64)
    quotient = np.abs(numerator) // np.abs(denominator)
    return np.where((numerator < 0) != (denominator < 0), -quotient, quotient)


def saturating_rounding_doubling_high_mul(a, b):
    """gemmlowp's SaturatingRoundingDoublingHighMul: a * b / 2**31 rounded to nearest.

    Ties round toward +inf: the nudge is +2**30 for a non-negative product and 1 - 2**30 for a
    negative one, then C division truncates toward zero (so -0.5 -> 0, 0.5 -> 1). The only
    product whose result does not fit is INT32_MIN * INT32_MIN (2**62, i.e. 2**31 after the
    division); it saturates to INT32_MAX.
    """
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    product = a * b  # |a * b| <= 2**62: exact in int64
    nudge = np.where(product >= 0, 1 << 30, 1 - (1 << 30))
    high = divide_truncating(product + nudge, 1 << 31)
    overflow = (a == INT32_MIN) & (b == INT32_MIN)
    return np.where(overflow, INT32_MAX, high)


def rounding_divide_by_pot(x, exponent):
    """gemmlowp's RoundingDivideByPOT: x / 2**exponent rounded to nearest, ties away from zero.

    exponent is in [0, 31].
    """
    x = np.asarray(x, dtype=np.int64)
    exponent = np.asarray(exponent, dtype=np.int64)
    mask = (np.int64(1) << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> exponent) + (remainder > threshold)


def multiply_by_quantized_multiplier_double_rounding(x, multiplier, shift):
    """TFLite's MultiplyByQuantizedMultiplier (default build): x * multiplier * 2**(shift - 31).

    Two roundings: the doubling high multiply rounds to 2**-31 (ties toward +inf), then the
    right shift rounds again (ties away from zero), so results can differ from the exactly
    rounded product by 1 near a tie. A positive shift is applied as a left shift of x first,
    in int32 (wrapping, like the compiled C).
    """
    x = np.asarray(x, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    left_shift = np.maximum(shift, 0)
    right_shift = np.maximum(-shift, 0)
    shifted = wrap_int32(x << left_shift)
    return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(shifted, multiplier), right_shift)


def multiply_by_quantized_multiplier_single_rounding(x, multiplier, shift):
    """TFLite's MultiplyByQuantizedMultiplier under TFLITE_SINGLE_ROUNDING.

    One rounding: (x * multiplier + 2**(30 - shift)) >> (31 - shift), i.e. ties toward +inf.
    The 64-bit intermediate cannot overflow for shift in [-31, 30]; the result is cast to int32
    (wrapping) as the C code does.
    """
    x = np.asarray(x, dtype=np.int64)
    multiplier = np.asarray(multiplier, dtype=np.int64)
    total_shift = 31 - np.asarray(shift, dtype=np.int64)
    rounding = np.int64(1) << (total_shift - 1)
    return wrap_int32((x * multiplier + rounding) >> total_shift)


MULTIPLY_BY_QUANTIZED_MULTIPLIER = {
    "double": multiply_by_quantized_multiplier_double_rounding,
    "single": multiply_by_quantized_multiplier_single_rounding,
}


def multiply_by_quantized_multiplier(x, multiplier, shift, rounding="double"):
    """Dispatch on the rounding mode: "double" (TFLite's default) or "single"."""
    return MULTIPLY_BY_QUANTIZED_MULTIPLIER[rounding](x, multiplier, shift)


def round_half_away_from_zero(values):
    """C's std::round (TfLiteRound) on float64: ties go away from zero. Exact at ties."""
    values = np.asarray(values, dtype=np.float64)
    truncated = np.trunc(values)
    is_tie = np.abs(values - truncated) == 0.5
    return np.where(is_tie, truncated + np.sign(values), np.round(values))


def quantize_multiplier(real):
    """TFLite's QuantizeMultiplier: real = multiplier * 2**(shift - 31), multiplier in [2**30, 2**31).

    real must be finite and >= 0. A real multiplier of 0, or one so small that shift would be
    below -31, gives (0, 0) as in TFLite (every result is then 0). One that rounds to 2**30 or
    more would need a shift above 30, which the spec does not allow: ValueError.
    Returns (multiplier, shift) as int64 arrays of real's shape.
    """
    real = np.asarray(real, dtype=np.float64)
    if not np.all(np.isfinite(real)) or np.any(real < 0):
        raise ValueError(f"real multiplier must be finite and >= 0, got {real}")
    fraction, exponent = np.frexp(real)  # real = fraction * 2**exponent, fraction in [0.5, 1)
    fixed = round_half_away_from_zero(fraction * 2.0**31).astype(np.int64)  # exact scaling
    carried = fixed == 2**31  # the fraction rounded up to 1.0
    fixed = np.where(carried, fixed // 2, fixed)
    shift = np.where(carried, exponent + 1, exponent).astype(np.int64)
    underflow = (real == 0) | (shift < -31)
    fixed = np.where(underflow, 0, fixed)
    shift = np.where(underflow, 0, shift)
    if np.any(shift > 30):
        raise ValueError(f"real multiplier must round to below 2**30 (shift <= 30), got {real}")
    return fixed, shift


def requantize(acc, multiplier, shift, output_zero_point, act_min, act_max, rounding="double"):
    """int32 accumulator -> int8: scale by the quantized multiplier, add the zero point, clamp.

    Follows TFLM: MultiplyByQuantizedMultiplier, then `acc += output_offset` in int32, then
    clamp to [act_min, act_max].
    """
    scaled = multiply_by_quantized_multiplier(acc, multiplier, shift, rounding)
    shifted = wrap_int32(scaled + np.int64(output_zero_point))
    return np.clip(shifted, act_min, act_max).astype(np.int8)
