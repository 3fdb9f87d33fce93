"""Exact int8 / packed-int4 GEMM and convolution with fused TFLite requantization (Numba).

One driver serves convolution and fully connected layers (a linear layer is a 1x1 convolution
of 1x1 images; its rows are the batch):

    out[n, oc, p] = requantize(sum_k W[oc, k] * (x[n, p, k] - z_x) + bias[oc])

Blocking, from the outside in (BLIS / gemmlowp style):

* Work items = (block of output rows, group, block of 64-channel panels), spread over Numba's
  threads with prange. A row is one output position (n, oy, ox).
* Inside an item, each 64-channel weight panel ([tap][k-group][64 ch][4 bytes], at most a few
  hundred KB) stays hot in L2 while the item's rows pass it in register tiles of 6 rows.
* The register tile (microkernel.py) keeps 6 x 64 int32 accumulators in 24 zmm registers over
  the whole K and multiplies with vpdpbusd (4 u8 x s8 products per lane per instruction) — or
  portable IR elsewhere. Activations are read in place from a padded NHWC copy of the input
  (no im2col). The epilogue (correction, requantization, clamp) runs on the accumulators while
  they are still in registers, vectorized over the 64 channels, and stores int8 rows of an NHWC
  output, which the backend transposes to NCHW (8 x 8 byte blocks in 64-bit registers).

Layout passes around the GEMM: pad_nhwc / pad_nhwc_words (NCHW int8 -> padded NHWC x + 128),
pack_weight_panel (weights -> panels, with the weight sums), nhwc_to_nchw(_words).

Exactness (non-negotiable):

* The image holds u = x + 128 (x ^ 0x80 as a byte), so sum w * u = sum w * x + 128 sum w.
  Padding taps hold z_x + 128 when z_x is an int8, so that every tap is corrected alike:
  sum w * (x - z_x) = sum w * u - (128 + z_x) * sum_k w. The per-channel correction (with the
  bias) is added in the epilogue. Every step wraps modulo 2**32 like the spec's int32
  accumulator, and wrapping addition does not depend on order, so any blocking is bit-exact.
* If z_x is not an int8, padding taps hold 128 (x = 0) and the correction becomes per
  (position, channel): -128 sum_k w - z_x * (sum of the weights of in-image taps).
* Products u8 x s8 fit int16 and four of them fit int32: no instruction saturates.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit, prange

from .fixedpoint import requantize, wrap_int32
from .microkernel import (GEMV_CHUNK, GEMV_ROWS, K_GROUP, MR, NR, claim_next, gemv_row_vnni,
                          gemv_row_vnni_int4, gemv_tile_vnni, gemv_tile_vnni_int4, int4_tile_vnni, int4_tile_vnni_requant,
                          int8_tile_generic, int8_tile_generic_requant, int8_tile_vnni,
                          int8_tile_vnni_requant)
from .microkernel_avx2 import (GEMV_ONE_ROW_CHANNELS, PAIR_CHANNELS, PAIR_CHUNK, PAIR_ROWS,
                               gemv_pairs, gemv_pairs_int4, gemv_pairs_row, gemv_pairs_row_int4,
                               int8_tile_avxvnni, int8_tile_avxvnni_requant, pair_tile_avx2,
                               pair_tile_avx2_requant)
from .microkernel_dot import int8_tile_sdot, int8_tile_sdot_requant


class KernelGeometry(NamedTuple):
    """A convolution as the kernels walk it: kernel size, stride, the top and left padding,
    dilation, the output width and the number of output positions. A linear layer is the 1x1
    convolution over one position (LINEAR_GEOMETRY)."""

    kernel_h: int
    kernel_w: int
    stride_h: int
    stride_w: int
    pad_top: int
    pad_left: int
    dilation_h: int
    dilation_w: int
    out_w: int
    positions: int


LINEAR_GEOMETRY = KernelGeometry(kernel_h=1, kernel_w=1, stride_h=1, stride_w=1, pad_top=0, pad_left=0,
                                 dilation_h=1, dilation_w=1, out_w=1, positions=1)

ISA_GENERIC = 0    # portable vector IR (vpmaddwd / vpdpwssd on x86)
ISA_VNNI = 1       # AVX-512 VNNI vpdpbusd
ISA_VNNI_INT4 = 2  # vpdpbusd on packed-int4 panels (pack_int4_panel), unpacked in registers
ISA_AVX2 = 3       # vpmaddwd on int16 pair panels (pack_pair_panel) and an int16 x - z_x image
ISA_AVXVNNI = 4    # AVX-VNNI vpdpbusd on ymm, int8 panels as ISA_VNNI
ISA_SDOT = 5       # aarch64 sdot on int8 panels; its accumulator is sum w x, not sum w (x + 128)
INT4_K_STEP = 2 * K_GROUP  # k values per int4 panel word (channels are padded to a multiple)
ROW_BLOCK = 192  # rows per work item (at most, about) when there are enough rows


def padded(length: int, multiple: int) -> int:
    return -(-length // multiple) * multiple


# --------------------------------------------------------------------------------------------
# Packing
# --------------------------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def same_bytes(a, b):
    """Whether two uint8 arrays of one length hold the same bytes: 4 KB at a time (a
    vectorized OR of XORs over 8-byte words), stopping at the first block that differs."""
    length = a.shape[0]
    words = length // 8
    a_words, b_words = a[:8 * words].view(np.uint64), b[:8 * words].view(np.uint64)
    for start in range(0, words, 512):
        differ = np.uint64(0)
        for i in range(start, min(start + 512, words)):
            differ |= a_words[i] ^ b_words[i]
        if differ != 0:
            return False
    for i in range(8 * words, length):
        if a[i] != b[i]:
            return False
    return True


@njit(cache=True, nogil=True, parallel=True)
def unpack_int4_rows(packed, length):
    """Packed int4 uint8 [R, ceil(L/2)] -> int8 [R, L]: element 2i is the low nibble, 2i+1 the
    high one. A byte at a time without branches so that LLVM vectorizes it: a nibble is
    sign-extended by shifting it to the top of an int32 and back (arithmetic shift)."""
    rows, width = packed.shape
    out = np.empty((rows, 2 * width), np.int8)
    for r in prange(rows):
        source = packed[r]
        target = out[r]
        for j in range(width):
            byte = np.int32(source[j])
            target[2 * j] = np.int8(np.int32(byte << 28) >> 28)
            target[2 * j + 1] = np.int8(np.int32(byte << 24) >> 28)
    return out[:, :length]


@njit(cache=True, nogil=True, inline="always")
def _pack_block(weight, out_channels, groups, group_channels, taps, channels_padded,
                item, panel, sums):
    """Panel block `item` = (group, 64-channel block) and the weight sums of its channels.

    The block is [tap][k-group][64 channels][4 bytes]: element (t, q, lane, byte) is
    W[g * OCg + 64 block + lane, ci = 4q + byte, tap t] (W flattened as k = ci * taps + t, as
    PyTorch flattens [OC, Cg, KH, KW]), zero past the real channels. Written sequentially."""
    group_rows = out_channels // groups
    blocks = -(-group_rows // NR)
    g, block = item // blocks, item % blocks
    row_start = g * group_rows + block * NR
    lanes = min(NR, group_rows - block * NR)
    groups_per_tap = channels_padded // K_GROUP
    cursor = item * taps * groups_per_tap * NR * K_GROUP
    totals = np.zeros(NR, np.int64)
    for t in range(taps):
        for q in range(groups_per_tap):
            if lanes == NR and (q + 1) * K_GROUP <= group_channels:
                # A full line: no padding, four loads and stores per channel, no branches.
                k = q * K_GROUP * taps + t
                for lane in range(NR):
                    source = weight[row_start + lane]
                    v0, v1 = source[k], source[k + taps]
                    v2, v3 = source[k + 2 * taps], source[k + 3 * taps]
                    panel[cursor] = v0
                    panel[cursor + 1] = v1
                    panel[cursor + 2] = v2
                    panel[cursor + 3] = v3
                    totals[lane] += np.int64(v0) + np.int64(v1) + np.int64(v2) + np.int64(v3)
                    cursor += K_GROUP
                continue
            for lane in range(NR):
                for byte in range(K_GROUP):
                    ci = q * K_GROUP + byte
                    value = np.int8(0)
                    if lane < lanes and ci < group_channels:
                        value = weight[row_start + lane, ci * taps + t]
                    panel[cursor] = value
                    totals[lane] += value
                    cursor += 1
    for lane in range(lanes):
        sums[row_start + lane] = totals[lane]


@njit(cache=True, nogil=True, parallel=True)
def pack_weight_panel(weight, groups, group_channels, taps, channels_padded):
    """int8 weight [OC, Cg * taps] -> the micro-kernel panel int8 flat
    [G][blocks][taps][Cgp / 4][64 channels][4] and the weight sums int64 [OC] (_pack_block)."""
    out_channels = weight.shape[0]
    blocks = -(-(out_channels // groups) // NR)
    panel = np.empty(groups * blocks * taps * channels_padded * NR, np.int8)
    sums = np.empty(out_channels, np.int64)
    for item in prange(groups * blocks):
        _pack_block(weight, out_channels, groups, group_channels, taps, channels_padded,
                    item, panel, sums)
    return panel, sums


@njit(cache=True, nogil=True, inline="always")
def _nibble(packed, row, k):
    """Element k of a packed int4 row (element 2i: low nibble of byte i), sign-extended."""
    byte = np.int32(packed[row, k >> 1])
    return np.int32(np.int32(byte << (28 - 4 * (k & 1))) >> 28)


@njit(cache=True, nogil=True, parallel=True)
def pack_int4_panel(packed, out_channels, groups, group_channels, taps, channels_padded):
    """Packed int4 weight uint8 [OC, ceil(Cg * taps / 2)] -> the int4 micro-kernel's panel,
    uint8 flat [G][blocks][taps][Cgp / 8][64 channels][4 bytes], and the weight sums int64
    [OC]. Byte j of the word of (tap t, pair p, channel) holds the nibbles of ci = 8p + j (low)
    and ci = 8p + 4 + j (high), k = ci * taps + t as for int8; zero past the real channels.
    channels_padded is a multiple of 8."""
    group_rows = out_channels // groups
    blocks = -(-group_rows // NR)
    pairs = channels_padded // INT4_K_STEP
    panel = np.empty(groups * blocks * taps * pairs * NR * K_GROUP, np.uint8)
    sums = np.empty(out_channels, np.int64)
    for item in prange(groups * blocks):
        g, block = item // blocks, item % blocks
        row_start = g * group_rows + block * NR
        lanes = min(NR, group_rows - block * NR)
        cursor = item * taps * pairs * NR * K_GROUP
        totals = np.zeros(NR, np.int64)
        for t in range(taps):
            for p in range(pairs):
                for lane in range(NR):
                    for j in range(K_GROUP):
                        low_ci, high_ci = p * INT4_K_STEP + j, p * INT4_K_STEP + K_GROUP + j
                        low, high = np.int32(0), np.int32(0)
                        if lane < lanes and low_ci < group_channels:
                            low = _nibble(packed, row_start + lane, low_ci * taps + t)
                        if lane < lanes and high_ci < group_channels:
                            high = _nibble(packed, row_start + lane, high_ci * taps + t)
                        panel[cursor] = np.uint8((low & 0xF) | ((high & 0xF) << 4))
                        totals[lane] += low + high
                        cursor += 1
        for lane in range(lanes):
            sums[row_start + lane] = totals[lane]
    return panel, sums


@njit(cache=True, nogil=True, inline="always")
def _nibble_word(word):
    """A packed-int4 word (nibbles n0..n7 = elements 8p..8p+7, n0 lowest) -> the panel word
    whose byte j is n_j | n_(j+4) << 4: the outer perfect shuffle of its nibbles."""
    word = (word & np.uint32(0xFF0000FF)) | ((word << np.uint32(8)) & np.uint32(0x00FF0000)) \
        | ((word >> np.uint32(8)) & np.uint32(0x0000FF00))
    return (word & np.uint32(0xF00FF00F)) | ((word << np.uint32(4)) & np.uint32(0x0F000F00)) \
        | ((word >> np.uint32(4)) & np.uint32(0x00F000F0))


@njit(cache=True, nogil=True, parallel=True)
def pad_nhwc(x, groups, channels_padded, pad_top, pad_left, height_padded, width_padded,
             pad_byte):
    """int8 NCHW -> uint8 flat [N][Hp][Wp][G][Cgp] holding x + 128 (x ^ 0x80), the border
    filled with pad_byte; channel padding holds 0 (its weights are 0). Each output image row is
    written sequentially; its source (C rows of W bytes) stays in L1."""
    batch, channels, height, width = x.shape
    group_channels = channels // groups
    pixel = groups * channels_padded
    out = np.empty(batch * height_padded * width_padded * pixel, np.uint8)
    for item in prange(batch * height_padded):
        n, y = item // height_padded, item % height_padded
        row = out[item * width_padded * pixel:(item + 1) * width_padded * pixel]
        iy = y - pad_top
        if iy < 0 or iy >= height:
            row[:] = pad_byte
            continue
        row[:pad_left * pixel] = pad_byte
        row[(pad_left + width) * pixel:] = pad_byte
        source = x[n, :, iy, :]
        for ix in range(width):
            target = row[(pad_left + ix) * pixel:(pad_left + ix + 1) * pixel]
            for g in range(groups):
                for ci in range(channels_padded):
                    value = np.uint8(0)
                    if ci < group_channels:
                        value = np.uint8(source[g * group_channels + ci, ix]) ^ np.uint8(0x80)
                    target[g * channels_padded + ci] = value
    return out


@njit(cache=True, nogil=True, inline="always")
def _transpose_words(words, out_channels, block, convert, panel, segment_lanes=NR):
    """Panel block `block` from 32-bit words [OC, W], in segments of `segment_lanes` channels
    (NR: one segment, the int8 layout; 16: the AVX2 pair layout):
    panel[((block * S + s) * W + q) * L + l] = convert(words[64 block + L s + l, q]) with
    L = segment_lanes, S = NR / L, zero past the real channels. Each row is read 16 words (one
    cache line) at a time into a 4 KB tile that is then stored sequentially."""
    width = words.shape[1]
    lanes = min(NR, out_channels - block * NR)
    segments = NR // segment_lanes
    tile = np.zeros(16 * NR, np.uint32)
    for q0 in range(0, width, 16):
        count = min(16, width - q0)
        for lane in range(lanes):
            source = words[block * NR + lane]
            for i in range(count):
                tile[i * NR + lane] = convert(source[q0 + i])
        if segments == 1:
            start = (block * width + q0) * NR
            panel[start:start + count * NR] = tile[:count * NR]
            continue
        for s in range(segments):
            start = ((block * segments + s) * width + q0) * segment_lanes
            for i in range(count):
                panel[start + i * segment_lanes:start + (i + 1) * segment_lanes] = \
                    tile[i * NR + s * segment_lanes:i * NR + (s + 1) * segment_lanes]


@njit(cache=True, nogil=True, inline="always")
def _same_word(word):
    return word


@njit(cache=True, nogil=True, inline="always")
def _int8_row_sum(row):
    total = np.int32(0)  # |sum| < 2**31 for K < 2**24 (vectorized)
    for i in range(row.shape[0]):
        total += np.int32(row[i])
    return total


@njit(cache=True, nogil=True, inline="always")
def _int4_row_sum(row):
    total = np.int32(0)
    for i in range(row.shape[0]):  # two sign-extended nibbles a byte (vectorized)
        byte = np.int32(row[i])
        total += np.int32(np.int32(byte << 28) >> 28) + np.int32(np.int32(byte << 24) >> 28)
    return total


@njit(cache=True, nogil=True, inline="always")
def _panel_words(words, rows, out_channels, convert, row_sum):
    """Panels of a linear layer's weights from their 32-bit words [OC, W] (each already one
    panel word, up to `convert`) and the weight sums from the same bytes `rows`."""
    blocks = -(-out_channels // NR)
    panel = np.empty(blocks * words.shape[1] * NR, np.uint32)
    sums = np.empty(out_channels, np.int64)
    for block in prange(blocks):
        _transpose_words(words, out_channels, block, convert, panel)
        for lane in range(min(NR, out_channels - block * NR)):
            sums[block * NR + lane] = row_sum(rows[block * NR + lane])
    return panel, sums


@njit(cache=True, nogil=True, parallel=True)
def pack_weight_panel_words(words, weight, out_channels):
    """pack_weight_panel for one group, one tap and K a multiple of 4 (a linear layer): the
    weight viewed as uint32 words [OC, K / 4] already holds each panel word (4 consecutive k),
    so packing is a 32-bit transpose into [blocks][K / 4][64]; weight is the same bytes as int8
    [OC, K], for the weight sums. Returns the panel as int8."""
    panel, sums = _panel_words(words, weight, out_channels, _same_word, _int8_row_sum)
    return panel.view(np.int8), sums


@njit(cache=True, nogil=True, parallel=True)
def pack_int4_panel_words(words, packed, out_channels):
    """pack_int4_panel for one group, one tap and K a multiple of 8 (a linear layer): each
    32-bit word of the packed rows [OC, K / 8] holds one panel word's eight nibbles, so packing
    is a nibble shuffle and a 32-bit transpose; packed is the same bytes as uint8 [OC, K / 2],
    for the weight sums."""
    panel, sums = _panel_words(words, packed, out_channels, _nibble_word, _int4_row_sum)
    return panel.view(np.uint8), sums


_U64 = np.uint64
_SIGN_BITS = np.uint64(0x8080808080808080)  # x ^ 0x80 in every byte: int8 x -> uint8 x + 128


@njit(cache=True, nogil=True, inline="always")
def _swap_blocks(a, b, shift, mask):
    """Exchange the high `shift`-bit halves of a's blocks with the low halves of b's."""
    t = ((a >> shift) ^ b) & mask
    return a ^ (t << shift), b ^ t


@njit(cache=True, nogil=True, inline="always")
def _transpose_8x8(w0, w1, w2, w3, w4, w5, w6, w7):
    """8 words = 8 rows of 8 bytes (byte j of word r = element (r, j)) -> their transpose."""
    s, m = _U64(32), _U64(0x00000000FFFFFFFF)
    w0, w4 = _swap_blocks(w0, w4, s, m)
    w1, w5 = _swap_blocks(w1, w5, s, m)
    w2, w6 = _swap_blocks(w2, w6, s, m)
    w3, w7 = _swap_blocks(w3, w7, s, m)
    s, m = _U64(16), _U64(0x0000FFFF0000FFFF)
    w0, w2 = _swap_blocks(w0, w2, s, m)
    w1, w3 = _swap_blocks(w1, w3, s, m)
    w4, w6 = _swap_blocks(w4, w6, s, m)
    w5, w7 = _swap_blocks(w5, w7, s, m)
    s, m = _U64(8), _U64(0x00FF00FF00FF00FF)
    w0, w1 = _swap_blocks(w0, w1, s, m)
    w2, w3 = _swap_blocks(w2, w3, s, m)
    w4, w5 = _swap_blocks(w4, w5, s, m)
    w6, w7 = _swap_blocks(w6, w7, s, m)
    return w0, w1, w2, w3, w4, w5, w6, w7


@njit(cache=True, nogil=True, parallel=True)
def pad_nhwc_words(x_words, pad_top, pad_left, height_padded, width_padded, pad_byte, out):
    """pad_nhwc's fast path for one group with C and W multiples of 8, on 64-bit words:
    x_words uint64 [N, C, H, W / 8] (the int8 input viewed as words), out uint64 flat
    [N][Hp][Wp][C / 8]. Each 8 channels x 8 pixels block is transposed in registers."""
    batch, channels, height, width_words = x_words.shape
    channel_words = channels // 8
    row_words = width_padded * channel_words
    fill = _U64(pad_byte) * _U64(0x0101010101010101)
    for item in prange(batch * height_padded):
        n, y = item // height_padded, item % height_padded
        row = out[item * row_words:(item + 1) * row_words]
        iy = y - pad_top
        if iy < 0 or iy >= height:
            row[:] = fill
            continue
        row[:pad_left * channel_words] = fill
        row[(pad_left + 8 * width_words) * channel_words:] = fill
        for c8 in range(channel_words):
            for xw in range(width_words):
                c = 8 * c8
                t = _transpose_8x8(x_words[n, c, iy, xw], x_words[n, c + 1, iy, xw],
                                   x_words[n, c + 2, iy, xw], x_words[n, c + 3, iy, xw],
                                   x_words[n, c + 4, iy, xw], x_words[n, c + 5, iy, xw],
                                   x_words[n, c + 6, iy, xw], x_words[n, c + 7, iy, xw])
                base = (pad_left + 8 * xw) * channel_words + c8
                for j in range(8):  # word j: pixel 8 xw + j, channels c .. c + 7
                    row[base + j * channel_words] = t[j] ^ _SIGN_BITS


# --------------------------------------------------------------------------------------------
# Fused epilogue and driver
# --------------------------------------------------------------------------------------------


@njit(cache=True, nogil=True, inline="always")
def _requantize_raw_tile(tile, out, row_start, row_count, channel_start, channel_count,
                         correction, row_correction, multiplier, shift, params):
    """The scalar epilogue for the rare cases the fused one does not cover (a correction per
    position or per row): rows [row_start, +row_count) x channels [channel_start,
    +channel_count) of the int32 tile[m * NR + c] -> out[row, oc] (NHWC)."""
    output_zero_point, act_min, act_max, single_rounding, positions = params
    for m in range(row_count):
        row = row_start + m
        p = row % positions
        extra = row_correction[row] if row_correction.shape[0] > 1 else row_correction[0]
        corr = correction[p] if correction.shape[0] > 1 else correction[0]
        for c in range(channel_count):
            oc = channel_start + c
            acc = wrap_int32(np.int64(tile[m * NR + c]) + corr[oc] + extra)
            out[row, oc] = requantize(acc, multiplier[oc], shift[oc], output_zero_point,
                                      act_min, act_max, single_rounding)


@njit(cache=True, nogil=True)
def item_rows(row_block, row_blocks, rows):
    """Rows [begin, end) of work item `row_block` of `row_blocks`: the ceil(rows / MR)
    register tiles spread as evenly as whole tiles allow (sizes differ by at most one tile),
    in order, every row in exactly one item."""
    tiles = -(-rows // MR)
    begin = MR * (row_block * tiles // row_blocks)
    end = min(MR * ((row_block + 1) * tiles // row_blocks), rows)
    return begin, end


@njit(cache=True, nogil=True, parallel=True)
def conv_requant(image, panel, tap_offsets, groups_per_tap, image_geometry, conv_geometry,
                 qparams, epilogue, correction, row_correction, multiplier, shift, out, params,
                 row_blocks, channel_splits, fused, isa, threads):
    """Grouped convolution (linear = 1x1 convolution of 1x1 images) with fused requantization.

    image: uint8 flat [N][Hp][Wp][G][Cgp] (pad_nhwc); panel: pack_weight_panel's; tap_offsets
    int64 [taps]: byte offset of each tap (ky, kx) relative to tap (0, 0);
    image_geometry = (Hp, Wp, G, Cgp); conv_geometry = (stride_h, stride_w, out_w);
    out int8 [rows = N * positions, OC] (NHWC).
    fused: the micro-kernel requantizes (qparams int32 [3, OC + NR] = multiplier, shift,
    per-channel correction; epilogue int64 [single_rounding, z_y, act_min, act_max]).
    Otherwise the raw int32 tile goes through the scalar epilogue with correction int64
    [1 or positions, OC], row_correction int64 [rows] or [1], multiplier/shift int64 [OC] and
    params = (z_y, act_min, act_max, single_rounding, positions).
    isa: ISA_VNNI, ISA_AVXVNNI, ISA_GENERIC (same results), ISA_SDOT (sum w x: the caller's
    correction uses z_x instead of 128 + z_x) or, with pack_int4_panel's panel and
    groups_per_tap counting pairs of k-groups, ISA_VNNI_INT4. ISA_AVX2 reads an int16 image
    (pad_nhwc_pairs) and pack_pair_panel's panel through byte views: image_geometry's Cgp
    and the tap offsets count bytes, groups_per_tap counts k-pairs.
    row_blocks, channel_splits: the work items, row ranges x channel ranges. The rows' register
    tiles are spread over the row_blocks as evenly as whole tiles allow (sizes differ by at most
    one tile), so that threads taking equal numbers of items finish together.
    threads: Numba's thread count (a worker each, claiming work items one at a time)."""
    height_padded, width_padded, groups, channels_padded = image_geometry
    stride_h, stride_w, out_w = conv_geometry
    positions = params[4]
    rows, out_channels = out.shape
    group_rows = out_channels // groups
    blocks = -(-group_rows // NR)
    block_size = tap_offsets.shape[0] * groups_per_tap * NR * K_GROUP
    pixel = groups * channels_padded
    blocks_per_split = -(-blocks // channel_splits)
    items = row_blocks * groups * channel_splits
    # Items are claimed one at a time from a shared counter (dynamic scheduling): a thread
    # slowed down by another process's work takes fewer, instead of the whole GEMM waiting for
    # its fixed share.
    next_item = np.zeros(1, np.int64)
    for _ in prange(min(threads, items)):
        row_offsets = np.empty(MR, np.int64)
        tile32 = np.empty(MR * NR, np.int32)
        tile8 = np.empty(MR * NR, np.int8)
        item = claim_next(next_item)
        while item < items:
            row_block = item // (groups * channel_splits)
            g = (item // channel_splits) % groups
            split = item % channel_splits
            row_begin, row_end = item_rows(row_block, row_blocks, rows)
            for block in range(split * blocks_per_split, min((split + 1) * blocks_per_split, blocks)):
                panel_start = (g * blocks + block) * block_size
                channel_start = g * group_rows + block * NR
                channel_count = min(NR, group_rows - block * NR)
                for i in range(row_begin, row_end, MR):
                    row_count = min(MR, row_end - i)
                    for m in range(MR):
                        row = i + min(m, row_count - 1)  # rows past the end repeat the last one
                        n = row // positions
                        p = row - n * positions
                        oy = p // out_w
                        ox = p - oy * out_w
                        row_offsets[m] = (((n * height_padded + oy * stride_h) * width_padded
                                           + ox * stride_w) * pixel + g * channels_padded)
                    if fused:
                        if isa == ISA_AVX2:
                            pair_tile_avx2_requant(image, row_offsets, tap_offsets, groups_per_tap,
                                                   panel, panel_start, qparams, channel_start,
                                                   epilogue, tile8)
                        elif isa == ISA_SDOT:
                            int8_tile_sdot_requant(image, row_offsets, tap_offsets, groups_per_tap,
                                                   panel, panel_start, qparams, channel_start,
                                                   epilogue, tile8)
                        elif isa == ISA_AVXVNNI:
                            int8_tile_avxvnni_requant(image, row_offsets, tap_offsets, groups_per_tap,
                                                      panel, panel_start, qparams, channel_start,
                                                      epilogue, tile8)
                        elif isa == ISA_VNNI_INT4:
                            int4_tile_vnni_requant(image, row_offsets, tap_offsets, groups_per_tap,
                                                   panel, panel_start, qparams, channel_start,
                                                   epilogue, tile8)
                        elif isa == ISA_VNNI:
                            int8_tile_vnni_requant(image, row_offsets, tap_offsets, groups_per_tap,
                                                   panel, panel_start, qparams, channel_start,
                                                   epilogue, tile8)
                        else:
                            int8_tile_generic_requant(image, row_offsets, tap_offsets,
                                                      groups_per_tap, panel, panel_start, qparams,
                                                      channel_start, epilogue, tile8)
                        for m in range(row_count):
                            out[i + m, channel_start:channel_start + channel_count] = \
                                tile8[m * NR:m * NR + channel_count]
                    else:
                        if isa == ISA_AVX2:
                            pair_tile_avx2(image, row_offsets, tap_offsets, groups_per_tap, panel,
                                           panel_start, qparams, channel_start, epilogue, tile32)
                        elif isa == ISA_SDOT:
                            int8_tile_sdot(image, row_offsets, tap_offsets, groups_per_tap, panel,
                                           panel_start, qparams, channel_start, epilogue, tile32)
                        elif isa == ISA_AVXVNNI:
                            int8_tile_avxvnni(image, row_offsets, tap_offsets, groups_per_tap, panel,
                                              panel_start, qparams, channel_start, epilogue, tile32)
                        elif isa == ISA_VNNI_INT4:
                            int4_tile_vnni(image, row_offsets, tap_offsets, groups_per_tap, panel,
                                           panel_start, qparams, channel_start, epilogue, tile32)
                        elif isa == ISA_VNNI:
                            int8_tile_vnni(image, row_offsets, tap_offsets, groups_per_tap, panel,
                                           panel_start, qparams, channel_start, epilogue, tile32)
                        else:
                            int8_tile_generic(image, row_offsets, tap_offsets, groups_per_tap, panel,
                                              panel_start, qparams, channel_start, epilogue, tile32)
                        _requantize_raw_tile(tile32, out, i, row_count, channel_start, channel_count,
                                             correction, row_correction, multiplier, shift, params)
            item = claim_next(next_item)


@njit(cache=True, nogil=True)
def channel_epilogue(bias, weight_sums, zero_point_term, extra, multiplier, shift):
    """The fused epilogue's tables in one call: correction[c] = bias[c] - zero_point_term *
    weight_sums[c] + extra (wrapping int32; bias may be empty = 0), and qparams int32
    [3, OC + NR] = (multiplier, shift, correction), padded for the last 64-channel tile.
    multiplier / shift int32 [OC] or [1] (shared). Returns (qparams, correction int64 [1, OC],
    multiplier int64 [OC], shift int64 [OC])."""
    out_channels = weight_sums.shape[0]
    qparams = np.zeros((3, out_channels + NR), np.int32)
    correction = np.empty((1, out_channels), np.int64)
    multiplier64 = np.empty(out_channels, np.int64)
    shift64 = np.empty(out_channels, np.int64)
    for c in range(out_channels):
        base = np.int64(bias[c]) if bias.shape[0] > 0 else np.int64(0)
        value = wrap_int32(base - wrap_int32(zero_point_term * weight_sums[c]) + extra)
        correction[0, c] = value
        multiplier64[c] = multiplier[c if multiplier.shape[0] > 1 else 0]
        shift64[c] = shift[c if shift.shape[0] > 1 else 0]
        qparams[0, c] = multiplier64[c]
        qparams[1, c] = shift64[c]
        qparams[2, c] = value
    return qparams, correction, multiplier64, shift64


@njit(cache=True, nogil=True, parallel=True)
def gemv_requant(x, weight, int4, bias, input_zero_point, multiplier, shift, params, out):
    """A linear layer of at most GEMV_ROWS rows with the weights read in place (VNNI):
    out[r, c] = requantize(sum_k w[c, k] (x[r, k] - z_x) + bias[c]), all in wrapping int32 as
    the spec. x int8 [M, K]; weight int8 [OC, K] or packed int4 uint8 [OC, ceil(K / 2)] (int4
    True); bias, multiplier, shift int64 [OC]; params = (z_y, act_min, act_max, single
    rounding); out int8 [M, OC]. The micro-kernel takes whole 64-k chunks and returns the
    weight sum too; the K % 64 tail is added here. As in the panel GEMM, the activations are
    u = x + 128 and the correction is bias - (128 + z_x) * sum_k w."""
    rows, length = x.shape
    out_channels = weight.shape[0]
    z_y, act_min, act_max, single = params
    # Rows one cache line apart modulo 4 KB: at a power-of-two row length the 16 rows would
    # share one L1 set (8 ways) and evict each other on every chunk.
    row_stride = -(-length // GEMV_CHUNK) * GEMV_CHUNK + GEMV_CHUNK
    u = np.empty(rows * row_stride, np.uint8)
    for r in range(rows):
        for k in range(length):
            u[r * row_stride + k] = np.uint8(x[r, k]) ^ np.uint8(0x80)
    row_offsets = np.empty(GEMV_ROWS, np.int64)
    for r in range(GEMV_ROWS):  # rows past the end repeat the last one (not stored)
        row_offsets[r] = min(r, rows - 1) * row_stride
    chunks = length // GEMV_CHUNK
    row_elements = 2 * weight.shape[1] if int4 else weight.shape[1]
    zero_point_term = wrap_int32(128 + input_zero_point)
    for c in prange(out_channels):
        dots = np.empty(GEMV_ROWS + 1, np.int32)
        if rows == 1 and int4:
            gemv_row_vnni_int4(u, row_offsets, weight, c * row_elements, chunks, dots)
        elif rows == 1:
            gemv_row_vnni(u, row_offsets, weight, c * row_elements, chunks, dots)
        elif int4:
            gemv_tile_vnni_int4(u, row_offsets, weight, c * row_elements, chunks, dots)
        else:
            gemv_tile_vnni(u, row_offsets, weight, c * row_elements, chunks, dots)
        weight_sum = np.int64(dots[GEMV_ROWS])
        tail = np.zeros(GEMV_ROWS, np.int64)
        for k in range(chunks * GEMV_CHUNK, length):
            w = np.int64(_nibble(weight, c, k)) if int4 else np.int64(weight[c, k])
            weight_sum += w
            for r in range(rows):
                tail[r] += w * np.int64(u[r * row_stride + k])
        correction = wrap_int32(bias[c] - wrap_int32(zero_point_term * wrap_int32(weight_sum)))
        for r in range(rows):
            acc = wrap_int32(np.int64(dots[r]) + tail[r] + correction)
            out[r, c] = requantize(acc, multiplier[c], shift[c], z_y, act_min, act_max, single)


@njit(cache=True, nogil=True, parallel=True)
def nhwc_to_nchw(source, target):
    """int8 [N, P, C] -> [N, C, P]. With P and C multiples of 8 each 8 x 8 block moves as eight
    64-bit words transposed in registers (source/target viewed as uint64 [N, P, C/8] and
    [N, C, P/8] by the caller); otherwise element by element."""
    batch, positions, channels = source.shape
    for item in prange(batch * positions):
        n, p = item // positions, item % positions
        for c in range(channels):
            target[n, c, p] = source[n, p, c]


@njit(cache=True, nogil=True, parallel=True)
def nhwc_to_nchw_words(source, target):
    """nhwc_to_nchw's fast path: source uint64 [N, P, C / 8], target uint64 [N, C, P / 8]."""
    batch, positions, channel_words = source.shape
    position_words = positions // 8
    for item in prange(batch * position_words):
        n, pw = item // position_words, item % position_words
        p = 8 * pw
        for cw in range(channel_words):
            t = _transpose_8x8(source[n, p, cw], source[n, p + 1, cw], source[n, p + 2, cw],
                               source[n, p + 3, cw], source[n, p + 4, cw], source[n, p + 5, cw],
                               source[n, p + 6, cw], source[n, p + 7, cw])
            for j in range(8):  # channel 8 cw + j, positions p .. p + 7
                target[n, 8 * cw + j, pw] = t[j]


@njit(cache=True, nogil=True, parallel=True)
def valid_weight_sums(weight, groups, group_channels, geometry, height, width):
    """sum of W[oc, k] over the taps k that fall inside the image, per output position:
    int64 [positions, OC]. weight int8 [OC, Cg * KH * KW]. Needed only when z_x is not an int8
    (see the module docstring)."""
    (kernel_h, kernel_w, stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w,
     out_w, positions) = geometry
    out_channels = weight.shape[0]
    sums = np.zeros((positions, out_channels), np.int64)
    for p in prange(positions):
        oy, ox = p // out_w, p % out_w
        for oc in range(out_channels):
            total = np.int64(0)
            k = 0
            for ci in range(group_channels):
                for ky in range(kernel_h):
                    iy = oy * stride_h - pad_top + ky * dilation_h
                    for kx in range(kernel_w):
                        ix = ox * stride_w - pad_left + kx * dilation_w
                        if 0 <= iy < height and 0 <= ix < width:
                            total += weight[oc, k]
                        k += 1
            sums[p, oc] = total
    return sums
