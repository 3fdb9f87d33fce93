"""The reference oracle: the integer spec of DESIGN.md in numpy int64, plus float64 meanings.

Installed as ``intunlearn.reference``. Small, slow, obviously right; every kernel is tested
bit-exactly against it, and it is tested against float64 computation.
"""

from . import backward, float64
from .fixedpoint import (
    INT32_MAX,
    INT32_MIN,
    multiply_by_quantized_multiplier,
    quantize_multiplier,
    requantize,
    round_half_away_from_zero,
    rounding_divide_by_pot,
    saturating_rounding_doubling_high_mul,
    wrap_int32,
)
from .int4 import pack_int4, unpack_int4, unpacked_weight
from .integer_ops import (
    conv2d_accumulator,
    conv2d_output_size,
    linear_accumulator,
    qadd,
    qavg_pool2d,
    qconv2d,
    qlinear,
)

__all__ = [
    "INT32_MAX", "INT32_MIN", "backward", "conv2d_accumulator", "conv2d_output_size", "float64",
    "linear_accumulator", "multiply_by_quantized_multiplier", "pack_int4", "qadd", "qavg_pool2d",
    "qconv2d", "qlinear", "quantize_multiplier", "requantize", "round_half_away_from_zero",
    "rounding_divide_by_pot",
    "saturating_rounding_doubling_high_mul", "unpack_int4", "unpacked_weight", "wrap_int32",
]
