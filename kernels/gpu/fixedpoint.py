"""The fixed-point primitives of the integer spec as small @triton.jit functions.

Each mirrors the numpy function of the same name in ``intunlearn.reference.fixedpoint``. They
take and return int32 tensors and compute in wrapping int32, which is the spec's own arithmetic
(every wrap of the spec is modulo 2**32, and +, - and * commute with it); int64 appears only
in the products of the two multiplies (a widening 32 x 32 -> 64-bit multiply, then a rounding
add and shift) and is narrowed at once. Keeping the epilogue in 32-bit registers is what lets
256x128 GEMM tiles compile without spills on sm_90 (benchmarks/triton_compile_report.py): the
int64 epilogue it replaced needed two registers for every accumulator.

The wraps are intended, so Triton's debug mode (TRITON_DEBUG=1), which checks every int32
+, - and * for overflow, flags correct kernels; they are not meant to run under it.

Why only these operations: a kernel runs either compiled (PTX) or, for testing, under Triton's
interpreter (numpy). Integer division, remainder and right shifts of negative numbers can
round differently between the two (C truncation vs numpy's floor), so the primitives below
are built only from operations whose results are identical in both: wrapping +, - and * on
int32 (two's complement in PTX and in numpy arrays alike), &, the arithmetic right shift >> on
signed integers (floor division by a power of two in both), left shifts by less than the bit
width, comparisons and tl.where.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def widening_multiply(a, b):
    """The exact int64 product of two int32 tensors (one mul.wide.s32 in PTX)."""
    return a.to(tl.int64) * b.to(tl.int64)


@triton.jit
def saturating_rounding_doubling_high_mul(a, b):
    """gemmlowp's SaturatingRoundingDoublingHighMul on int32: a*b / 2**31 to nearest, ties
    toward +inf; INT32_MIN * INT32_MIN saturates to INT32_MAX.

    gemmlowp adds 2**30 to a non-negative product and 1 - 2**30 to a negative one, then divides
    truncating toward zero. Both cases equal floor((a*b + 2**30) / 2**31), an arithmetic right
    shift, which needs no sign test and rounds the same compiled and interpreted."""
    high = ((widening_multiply(a, b) + 1073741824) >> 31).to(tl.int32)  # fits, but for MIN*MIN
    overflow = (a == -2147483648) & (b == -2147483648)
    return tl.where(overflow, 2147483647, high)


@triton.jit
def rounding_divide_by_pot(x, exponent):
    """gemmlowp's RoundingDivideByPOT: x / 2**exponent to nearest, ties away from zero.
    x and exponent int32, exponent in [0, 31]."""
    mask = 2147483647 >> (31 - exponent)  # 2**exponent - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0).to(tl.int32)
    return (x >> exponent) + (remainder > threshold).to(tl.int32)


@triton.jit
def multiply_by_quantized_multiplier_double_rounding(x, multiplier, shift):
    """TFLite's MultiplyByQuantizedMultiplier (default build); x, multiplier, shift int32.
    A positive shift is a left shift of x in wrapping int32 first."""
    left_shift = tl.maximum(shift, 0)
    right_shift = tl.maximum(-shift, 0)
    return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(x << left_shift, multiplier),
                                  right_shift)


@triton.jit
def multiply_by_quantized_multiplier_single_rounding(x, multiplier, shift):
    """TFLITE_SINGLE_ROUNDING: (x*m + 2**(30-shift)) >> (31-shift) in int64, wrapped to int32.
    x, multiplier, shift int32, shift in [-31, 30]."""
    total_shift = (31 - shift).to(tl.int64)
    rounding = (total_shift - total_shift + 1) << (total_shift - 1)
    return ((widening_multiply(x, multiplier) + rounding) >> total_shift).to(tl.int32)


@triton.jit
def multiply_by_quantized_multiplier(x, multiplier, shift, SINGLE_ROUNDING: tl.constexpr):
    if SINGLE_ROUNDING:
        return multiply_by_quantized_multiplier_single_rounding(x, multiplier, shift)
    else:
        return multiply_by_quantized_multiplier_double_rounding(x, multiplier, shift)


@triton.jit
def requantize(acc, multiplier, shift, output_zero_point, act_min, act_max,
               SINGLE_ROUNDING: tl.constexpr):
    """int32 accumulator -> int8: scale, + output zero point (wrapping int32), clamp to
    [act_min, act_max]. All arguments int32."""
    shifted = multiply_by_quantized_multiplier(acc, multiplier, shift, SINGLE_ROUNDING) \
        + output_zero_point
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
