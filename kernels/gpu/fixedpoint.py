"""The fixed-point primitives of the integer spec as small @triton.jit functions.

Each mirrors the numpy function of the same name in ``intunlearn.reference.fixedpoint`` and
works on int64 tensors holding int32 values (every intermediate of the spec fits in int64).

Why only these operations: a kernel runs either compiled (PTX) or, for testing, under Triton's
interpreter (numpy). Integer division, remainder and right shifts of negative numbers can
round differently between the two (C truncation vs numpy's floor), so the primitives below
are built only from operations whose results are identical in both: +, -, *, & and the
arithmetic right shift >> on signed int64 (floor division by a power of two in both), left
shifts that do not overflow int64, comparisons and tl.where. Truncating division by 2**31 is
spelled with a shift of the magnitude and the sign put back; wrapping to int32 is an & of the
low 32 bits. Division by a non-power of two is only ever applied to non-negative operands.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def wrap_int32(x):
    """int64 -> int64 reduced modulo 2**32 into [INT32_MIN, INT32_MAX] (two's-complement wrap)."""
    offset = x + 2147483648  # literal is int64 (> INT32_MAX), so the sum is int64
    low32 = offset & 4294967295
    return low32 - 2147483648


@triton.jit
def saturating_rounding_doubling_high_mul(a, b):
    """gemmlowp's SaturatingRoundingDoublingHighMul on int64 holding int32: round(a*b / 2**31),
    ties away from zero; INT32_MIN * INT32_MIN saturates to INT32_MAX."""
    product = a * b  # |a * b| <= 2**62: exact in int64
    nudge = tl.where(product >= 0, 1073741824, -1073741823)  # 2**30 or 1 - 2**30
    total = product + nudge
    # Truncating division by 2**31: shift the magnitude (>> of a non-negative number), restore sign.
    magnitude = tl.where(total >= 0, total, -total) >> 31
    high = tl.where(total >= 0, magnitude, -magnitude)
    overflow = (a == -2147483648) & (b == -2147483648)
    return tl.where(overflow, 2147483647, high)


@triton.jit
def rounding_divide_by_pot(x, exponent):
    """gemmlowp's RoundingDivideByPOT: x / 2**exponent to nearest, ties away from zero.
    x and exponent int64, exponent in [0, 31]."""
    one = exponent - exponent + 1  # int64 one of exponent's shape
    mask = (one << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0).to(tl.int64)
    return (x >> exponent) + (remainder > threshold).to(tl.int64)


@triton.jit
def multiply_by_quantized_multiplier_double_rounding(x, multiplier, shift):
    """TFLite's MultiplyByQuantizedMultiplier (default build); x, multiplier, shift int64.
    A positive shift is a left shift of x in wrapping int32 first."""
    left_shift = tl.maximum(shift, 0)
    right_shift = tl.maximum(-shift, 0)
    shifted = wrap_int32(x << left_shift)  # |x| <= 2**31, shift <= 30: no int64 overflow
    return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(shifted, multiplier),
                                  right_shift)


@triton.jit
def multiply_by_quantized_multiplier_single_rounding(x, multiplier, shift):
    """TFLITE_SINGLE_ROUNDING: (x*m + 2**(30-shift)) >> (31-shift) in int64, wrapped to int32."""
    total_shift = 31 - shift
    one = total_shift - total_shift + 1
    rounding = one << (total_shift - 1)
    return wrap_int32((x * multiplier + rounding) >> total_shift)


@triton.jit
def multiply_by_quantized_multiplier(x, multiplier, shift, SINGLE_ROUNDING: tl.constexpr):
    if SINGLE_ROUNDING:
        return multiply_by_quantized_multiplier_single_rounding(x, multiplier, shift)
    else:
        return multiply_by_quantized_multiplier_double_rounding(x, multiplier, shift)


@triton.jit
def requantize(acc, multiplier, shift, output_zero_point, act_min, act_max,
               SINGLE_ROUNDING: tl.constexpr):
    """int32 accumulator (held in int64) -> int8: scale, + output zero point (wrapping int32),
    clamp to [act_min, act_max]."""
    scaled = multiply_by_quantized_multiplier(acc, multiplier, shift, SINGLE_ROUNDING)
    shifted = wrap_int32(scaled + output_zero_point)
    return tl.minimum(tl.maximum(shifted, act_min), act_max).to(tl.int8)


# The longest sum of int8 x int8 products that can never leave int32: (2**31 - 1) // 128**2.
MAX_EXACT_DOT_LENGTH = 131071


@triton.jit
def exact_dot_length(BLOCK_K: tl.constexpr):
    """The longest multiple of BLOCK_K no longer than MAX_EXACT_DOT_LENGTH (131071, written out:
    a kernel reads only constexpr globals), over which a saturating int32 MMA sums exactly."""
    return (131071 // BLOCK_K) * BLOCK_K


@triton.jit
def sign_extend_int4(nibble):
    """A nibble 0..15 (int32) as the signed int4 value it encodes, -8..7."""
    return tl.where(nibble >= 8, nibble - 16, nibble)


@triton.jit
def unpack_int4_rows(ptr, rows, row_stride, byte_start, n_rows, n_bytes, length,
                     BLOCK_K: tl.constexpr):
    """Loads packed int4 bytes [len(rows), BLOCK_K // 2] and unpacks them in registers to int8
    [len(rows), BLOCK_K] (element 2i = low nibble, 2i+1 = high nibble of byte i). Columns at or
    past `length` (the odd tail, the K tail) come back 0. `ptr` points at int8 bytes."""
    offs_b = byte_start + tl.arange(0, BLOCK_K // 2)
    mask = (rows[:, None] < n_rows) & (offs_b[None, :] < n_bytes)
    packed = tl.load(ptr + rows[:, None] * row_stride + offs_b[None, :], mask=mask, other=0)
    # In int8: << 4 drops the high nibble, and >> (arithmetic on signed) sign-extends.
    low = (packed << 4) >> 4
    high = packed >> 4
    values = tl.interleave(low, high)  # [rows, BLOCK_K]: low0, high0, low1, high1, ...
    offs_k = 2 * byte_start + tl.arange(0, BLOCK_K)
    return tl.where(offs_k[None, :] < length, values, 0).to(tl.int8)


@triton.jit
def load_int4_gather(ptr, rows, cols, row_stride, mask):
    """Gathers int4 elements [rows, cols] of a packed matrix (any 2-D index pattern) as int32:
    byte cols // 2 of the row, low nibble for even cols, high for odd. cols >= 0."""
    byte = tl.load(ptr + rows * row_stride + (cols >> 1), mask=mask, other=0).to(tl.int32) & 255
    nibble = tl.where((cols & 1) == 0, byte & 15, byte >> 4)
    return sign_extend_int4(nibble)
