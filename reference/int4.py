"""Packed int4: two signed 4-bit values per byte along the last axis.

Element 2i goes to the low nibble of byte i, element 2i+1 to the high nibble; an odd length
leaves the last high nibble 0. Unpacking sign-extends each nibble: (b << 4) >> 4 for the low
one and b >> 4 for the high one, in int8 arithmetic.
"""

from __future__ import annotations

import numpy as np

INT4_MIN = -8
INT4_MAX = 7


def packed_length(length: int) -> int:
    """Bytes needed for `length` int4 values."""
    return (length + 1) // 2


def pack_int4(values):
    """int values in [-8, 7], shape [..., K] -> uint8 [..., ceil(K/2)]."""
    values = np.asarray(values, dtype=np.int64)
    if values.size and (values.min() < INT4_MIN or values.max() > INT4_MAX):
        raise ValueError("pack_int4: values must lie in [-8, 7]")
    length = values.shape[-1]
    if length % 2:
        values = np.concatenate([values, np.zeros(values.shape[:-1] + (1,), np.int64)], axis=-1)
    nibbles = values & 0xF
    return (nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)).astype(np.uint8)


def unpack_int4(packed, length: int):
    """uint8 [..., ceil(K/2)] -> int8 [..., K] (K = length), sign-extending each nibble."""
    packed = np.asarray(packed, dtype=np.uint8)
    if packed.shape[-1] != packed_length(length):
        raise ValueError(
            f"unpack_int4: packed last dim must be ceil({length}/2) = {packed_length(length)}, "
            f"got {packed.shape[-1]}"
        )
    as_int8 = packed.view(np.int8)
    low = (as_int8 << 4) >> 4  # arithmetic shifts on int8 sign-extend the low nibble
    high = as_int8 >> 4
    both = np.stack([low, high], axis=-1).reshape(packed.shape[:-1] + (2 * packed.shape[-1],))
    return both[..., :length].astype(np.int8)


def unpacked_weight(weight, length: int):
    """A layer's int8 weight values [OUT, length] from its stored form: uint8 weights are packed
    int4 [OUT, ceil(length/2)] and get unpacked, int8 weights are reshaped."""
    weight = np.asarray(weight)
    if weight.dtype == np.uint8:
        return unpack_int4(weight.reshape(weight.shape[0], packed_length(length)), length)
    return weight.reshape(weight.shape[0], length)
