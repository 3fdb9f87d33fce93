"""Layout passes and the few-row driver of the AVX2 path (int16 pairs, microkernel_avx2.py).

The panel GEMM itself is int_gemm.conv_requant with isa=ISA_AVX2; this module prepares its
operands:

* pad_nhwc_pairs: int8 NCHW -> int16 padded NHWC holding x - z_x (the padding 0, the real
  zero), so that the accumulator needs no zero-point correction.
* pack_pair_panel: int8 weights -> int16 panels [G][64-ch blocks][16-ch segment][tap][k-pair][16][2].

and runs the few-row linear layer with the weights read in place (gemv_requant_pairs; for
packed int4 on more than one row gemv_requant_nibbles, vpmaddubsw on u8 x + 128 bytes).

Exactness: x - z_x lies in int16 for |z_x| <= PAIR_ZERO_POINT_LIMIT (the caller checks), a
product (x - z_x) * w is below 2**22 in magnitude and vpmaddwd adds two of them into an int32
lane exactly; the lanes wrap modulo 2**32 like the spec's int32 accumulator, and wrapping
addition is order-free, so every blocking gives the spec's bits.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .fixedpoint import requantize, wrap_int32
from .int_gemm import _transpose_words
from .microkernel import NR
from .microkernel_avx2 import SEGMENT as SEGMENT_CHANNELS
from .microkernel_avx2 import (GEMV_ONE_ROW_CHANNELS, NIBBLE_CHANNELS, NIBBLE_CHUNK, NIBBLE_ROWS,
                               PAIR_CHANNELS, PAIR_CHUNK, PAIR_ROWS, gemv_nibbles, gemv_pairs,
                               gemv_pairs_int4, gemv_pairs_row, gemv_pairs_row_int4)

PAIR = 2  # k values per 32-bit panel word
# x - z_x fits int16 for every int8 x: -128 - z_x >= -32768 and 127 - z_x <= 32767.
PAIR_ZERO_POINT_LIMIT = 32640


def pairs_exact(input_zero_point: int) -> bool:
    """Whether the int16 path holds x - z_x exactly (always for TFLite's zero points)."""
    return -PAIR_ZERO_POINT_LIMIT <= input_zero_point <= PAIR_ZERO_POINT_LIMIT


@njit(cache=True, nogil=True, parallel=True)
def pack_pair_panel(weight, groups, group_channels, taps, channels_padded):
    """int8 weight [OC, Cg * taps] (k = ci * taps + t, PyTorch's flattening) -> int16 flat
    [G][blocks][segments][taps][Cgp / 2][16 channels][2], segment-major for the AVX2 tile's
    sweeps (microkernel_avx2): element (s, t, q, lane, j) is
    W[g * OCg + 64 block + 16 s + lane, ci = 2q + j, tap t], zero past the real channels."""
    out_channels = weight.shape[0]
    group_rows = out_channels // groups
    blocks = -(-group_rows // NR)
    pairs = channels_padded // PAIR
    panel = np.zeros(groups * blocks * taps * pairs * NR * PAIR, np.int16)
    for item in prange(groups * blocks):
        g, block = item // blocks, item % blocks
        row_start = g * group_rows + block * NR
        lanes = min(NR, group_rows - block * NR)
        base = item * taps * pairs * NR * PAIR
        for segment in range(NR // SEGMENT_CHANNELS):
            for t in range(taps):
                for q in range(pairs):
                    cursor = base + ((segment * taps + t) * pairs + q) * SEGMENT_CHANNELS * PAIR
                    ci = PAIR * q
                    for lane in range(segment * SEGMENT_CHANNELS,
                                      min((segment + 1) * SEGMENT_CHANNELS, lanes)):
                        source = weight[row_start + lane]
                        at = cursor + PAIR * (lane - segment * SEGMENT_CHANNELS)
                        panel[at] = source[ci * taps + t]
                        if ci + 1 < group_channels:
                            panel[at + 1] = source[(ci + 1) * taps + t]
    return panel


@njit(cache=True, nogil=True, inline="always")
def _pair_word(word):
    """A uint16 holding two int8 weights (k even in the low byte) -> the panel's uint32
    holding them as two int16 (sign-extended, k even in the low half)."""
    low = np.int32(np.int8(word & np.uint16(0xFF)))
    high = np.int32(np.int8(word >> np.uint16(8)))
    return np.uint32(low & 0xFFFF) | (np.uint32(high & 0xFFFF) << np.uint32(16))


@njit(cache=True, nogil=True, parallel=True)
def pack_pair_panel_words(pairs, out_channels):
    """pack_pair_panel for one group, one tap and an even K (a linear layer): the weight
    viewed as uint16 [OC, K / 2] holds each panel word's two int8, so packing is a 16-bit
    transpose (16 words of a row at a time, int_gemm._transpose_words) that widens each word
    to two int16. Returns the int16 panel [blocks][segments][K / 2][16][2], zero past the real
    channels."""
    blocks = -(-out_channels // NR)
    panel = np.empty(blocks * pairs.shape[1] * NR, np.uint32)
    for block in prange(blocks):
        _transpose_words(pairs, out_channels, block, _pair_word, panel, SEGMENT_CHANNELS)
    return panel.view(np.int16)


@njit(cache=True, nogil=True, parallel=True)
def pad_nhwc_pairs(x, groups, channels_padded, pad_top, pad_left, height_padded, width_padded,
                   input_zero_point):
    """int8 NCHW -> int16 flat [N][Hp][Wp][G][Cgp] holding x - z_x, the border and channel
    padding 0. One padded image row per work item; its source rows stay in L1."""
    batch, channels, height, width = x.shape
    group_channels = channels // groups
    pixel = groups * channels_padded
    out = np.zeros(batch * height_padded * width_padded * pixel, np.int16)
    z = np.int16(input_zero_point)
    for item in prange(batch * height_padded):
        n, y = item // height_padded, item % height_padded
        iy = y - pad_top
        if iy < 0 or iy >= height:
            continue
        row = out[item * width_padded * pixel:(item + 1) * width_padded * pixel]
        for g in range(groups):
            for ci in range(group_channels):
                source = x[n, g * group_channels + ci, iy]
                start = pad_left * pixel + g * channels_padded + ci
                for ix in range(width):
                    row[start + ix * pixel] = np.int16(source[ix]) - z
    return out


@njit(cache=True, nogil=True, parallel=True)
def linear_rows_pairs(x, input_zero_point, channels_padded):
    """A linear layer's rows int8 [N, K] -> the GEMM's int16 image [N][Kp] of x - z_x (the
    K padding 0), a row per work item."""
    rows, length = x.shape
    out = np.empty((rows, channels_padded), np.int16)  # not zeroed: every element is written
    z = np.int16(input_zero_point)
    for r in prange(rows):
        source, target = x[r], out[r]
        for k in range(length):
            target[k] = np.int16(source[k]) - z
        for k in range(length, channels_padded):
            target[k] = 0
    return out.reshape(-1)


@njit(cache=True, nogil=True, inline="always")
def _activation_row(x_row, z, int4, target):
    """One activation row as int16 x - z_x: in k order for int8 weights; for int4, each
    whole chunk of 32 k as its 16 even k then its 16 odd k (the kernel's nibble order), the
    tail in k order."""
    length = x_row.shape[0]
    whole = length // PAIR_CHUNK * PAIR_CHUNK
    half = PAIR_CHUNK // 2
    for k in range(length):
        value = np.int16(np.int16(x_row[k]) - z)
        if int4 and k < whole:
            chunk, offset = k - k % PAIR_CHUNK, k % PAIR_CHUNK
            target[chunk + (offset % 2) * half + offset // 2] = value
        else:
            target[k] = value


@njit(cache=True, nogil=True, parallel=True)
def gemv_requant_pairs(x, weight, int4, bias, input_zero_point, multiplier, shift, params, out):
    """A linear layer of a few rows with the weights read in place (AVX2 int16 pairs):
    out[r, c] = requantize(sum_k w[c, k] (x[r, k] - z_x) + bias[c]) in wrapping int32.
    x int8 [M, K]; weight int8 [OC, K] or packed int4 uint8 [OC, ceil(K / 2)] (int4 True);
    bias, multiplier, shift int64 [OC]; params = (z_y, act_min, act_max, single rounding);
    out int8 [M, OC]; |z_x| <= PAIR_ZERO_POINT_LIMIT. The kernel takes whole 32-k chunks in
    passes of PAIR_ROWS rows x PAIR_CHANNELS channels (one row x 8 channels for M = 1); the
    K % 32 tail is added here."""
    rows, length = x.shape
    out_channels = weight.shape[0]
    z_y, act_min, act_max, single = params
    z = np.int16(input_zero_point)
    # Rows one cache line past a multiple of 4 KB apart, so that they do not share L1 sets.
    row_stride = -(-length // PAIR_CHUNK) * PAIR_CHUNK + PAIR_CHUNK
    a = np.zeros(rows * row_stride, np.int16)
    for r in range(rows):
        _activation_row(x[r], z, int4, a[r * row_stride:(r + 1) * row_stride])
    chunks = length // PAIR_CHUNK
    row_bytes = weight.shape[1]
    one_row = rows == 1
    rows_per_pass = 1 if one_row else PAIR_ROWS
    channels_per_pass = GEMV_ONE_ROW_CHANNELS if one_row else PAIR_CHANNELS
    passes = -(-rows // rows_per_pass)
    for item in prange(-(-out_channels // channels_per_pass)):
        first = item * channels_per_pass
        count = min(channels_per_pass, out_channels - first)
        channel_offsets = np.empty(channels_per_pass, np.int64)
        for c in range(channels_per_pass):  # channels past the end repeat the last one
            channel_offsets[c] = (first + min(c, count - 1)) * row_bytes
        row_offsets = np.empty(rows_per_pass, np.int64)
        dots = np.empty(rows_per_pass * channels_per_pass, np.int32)
        for p in range(passes):
            row_first = p * rows_per_pass
            row_count = min(rows_per_pass, rows - row_first)
            for r in range(rows_per_pass):
                row_offsets[r] = (row_first + min(r, row_count - 1)) * row_stride
            if one_row and int4:
                gemv_pairs_row_int4(a, row_offsets, weight, channel_offsets, chunks, dots)
            elif one_row:
                gemv_pairs_row(a, row_offsets, weight, channel_offsets, chunks, dots)
            elif int4:
                gemv_pairs_int4(a, row_offsets, weight, channel_offsets, chunks, dots)
            else:
                gemv_pairs(a, row_offsets, weight, channel_offsets, chunks, dots)
            for c in range(count):
                oc = first + c
                for r in range(row_count):
                    row = row_first + r
                    acc = np.int64(dots[r * channels_per_pass + c]) + bias[oc]
                    for k in range(chunks * PAIR_CHUNK, length):
                        if int4:
                            byte = np.int32(weight[oc, k >> 1])
                            w = np.int64(np.int32(byte << (28 - 4 * (k & 1))) >> 28)
                        else:
                            w = np.int64(weight[oc, k])
                        acc += w * np.int64(a[row * row_stride + k])
                    out[row, oc] = requantize(wrap_int32(acc), multiplier[oc], shift[oc], z_y,
                                              act_min, act_max, single)
    return out


@njit(cache=True, nogil=True, inline="always")
def _nibble_row(x_row, target):
    """One activation row as u8 x + 128 for gemv_nibbles: each whole chunk of 64 k as its 32
    even k then its 32 odd k, the tail in k order."""
    length = x_row.shape[0]
    whole = length // NIBBLE_CHUNK * NIBBLE_CHUNK
    half = NIBBLE_CHUNK // 2
    for k in range(length):
        value = np.uint8(x_row[k]) ^ np.uint8(0x80)
        if k < whole:
            chunk, offset = k - k % NIBBLE_CHUNK, k % NIBBLE_CHUNK
            target[chunk + (offset % 2) * half + offset // 2] = value
        else:
            target[k] = value


@njit(cache=True, nogil=True, parallel=True)
def gemv_requant_nibbles(x, weight, bias, input_zero_point, multiplier, shift, params, out):
    """gemv_requant_pairs for packed int4 weights uint8 [OC, ceil(K / 2)] with vpmaddubsw
    (exact for int4: see microkernel_avx2.gemv_nibbles): the kernel returns sum w u over whole
    64-k chunks (u = x + 128) and sum w, so acc = sum w u - (128 + z_x) sum w + the K % 64
    tail's sum w (x - z_x) + bias, in wrapping int32 as the spec."""
    rows, length = x.shape
    out_channels = weight.shape[0]
    z_y, act_min, act_max, single = params
    row_stride = -(-length // NIBBLE_CHUNK) * NIBBLE_CHUNK + NIBBLE_CHUNK
    u = np.zeros(rows * row_stride, np.uint8)
    for r in range(rows):
        _nibble_row(x[r], u[r * row_stride:(r + 1) * row_stride])
    chunks = length // NIBBLE_CHUNK
    row_bytes = weight.shape[1]
    zero_point_term = np.int64(128) + input_zero_point
    passes = -(-rows // NIBBLE_ROWS)
    for item in prange(-(-out_channels // NIBBLE_CHANNELS)):
        first = item * NIBBLE_CHANNELS
        count = min(NIBBLE_CHANNELS, out_channels - first)
        channel_offsets = np.empty(NIBBLE_CHANNELS, np.int64)
        for c in range(NIBBLE_CHANNELS):  # channels past the end repeat the last one
            channel_offsets[c] = (first + min(c, count - 1)) * row_bytes
        row_offsets = np.empty(NIBBLE_ROWS, np.int64)
        dots = np.empty((NIBBLE_ROWS + 1) * NIBBLE_CHANNELS, np.int32)
        for p in range(passes):
            row_first = p * NIBBLE_ROWS
            row_count = min(NIBBLE_ROWS, rows - row_first)
            for r in range(NIBBLE_ROWS):
                row_offsets[r] = (row_first + min(r, row_count - 1)) * row_stride
            gemv_nibbles(u, row_offsets, weight, channel_offsets, chunks, dots)
            for c in range(count):
                oc = first + c
                base = bias[oc] - zero_point_term * np.int64(dots[NIBBLE_ROWS * NIBBLE_CHANNELS + c])
                for r in range(row_count):
                    row = row_first + r
                    acc = np.int64(dots[r * NIBBLE_CHANNELS + c]) + base
                    for k in range(chunks * NIBBLE_CHUNK, length):
                        byte = np.int32(weight[oc, k >> 1])
                        w = np.int64(np.int32(byte << (28 - 4 * (k & 1))) >> 28)
                        acc += w * (np.int64(x[row, k]) - input_zero_point)
                    out[row, oc] = requantize(wrap_int32(acc), multiplier[oc], shift[oc], z_y,
                                              act_min, act_max, single)
    return out
