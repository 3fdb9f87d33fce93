"""Exact int8 / packed-int4 GEMM and convolution with fused TFLite requantization (Numba).

Convolution is computed as a GEMM over lowered rows (im2col), and a fully connected layer is the
special case of a 1x1 convolution on a 1x1 image, so one driver serves both:

    out[n, oc, p] = requantize(sum_k W[oc, k] * col[n, p, k] + corr[p or 0, oc] (+ rowcorr[row]))

* Operands are int16 *panels*: rows of K int16 values, zero padded to a multiple of
  ``K_ALIGN``. Packed int4 weights stay packed in memory and are sign-extended straight into
  the int16 weight panel; activations are lowered chunk by chunk into a thread-local panel, so
  the full im2col matrix is never materialised.
* The micro-kernel reads each panel row as int32 words holding two int16 values and multiplies
  pairs (``_madd_pair``): the exact semantics of x86's pmaddwd on one lane. A 4x2 register tile
  keeps 8 int32 accumulators; LLVM vectorizes the K loop over those 8 reductions.
* Products of int8/int16 pairs never overflow int32, and the accumulators wrap modulo 2**32
  exactly like the spec's int32 accumulator; wrapping addition does not depend on order, so
  the result is bit-exact in any blocking.
* The input zero point is folded out of the inner loop: sum w * (x - z_x) = sum w * x
  - z_x * sum w (exact in wrapping int32). Padded taps are filled with z_x, so the correction
  is per channel; if z_x does not fit int16 the taps are filled with 0 and the correction
  becomes per (position, channel), summing only the weights of in-image taps.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .fixedpoint import requantize, wrap_int32

K_ALIGN = 32  # int16 elements: panel rows are padded with zeros to this multiple (64 bytes)
TILE_M = 4    # rows of activations per register tile
TILE_N = 2    # weight rows (output channels) per register tile
L2_BLOCK_BYTES = 256 * 1024  # weight rows kept hot in L2 while a panel streams past


def padded(length: int, multiple: int) -> int:
    return -(-length // multiple) * multiple


# --------------------------------------------------------------------------------------------
# Micro-kernel
# --------------------------------------------------------------------------------------------


@njit(cache=True, nogil=True, inline="always")
def _madd_pair(p, q):
    """Sum of the products of the two int16 halves of the int32 words p and q (x86 pmaddwd on
    one lane). Exact: |product| <= 2**30, the pair sum fits int32 for int8/int4 operands."""
    p_low = np.int32(np.int32(p << 16) >> 16)
    q_low = np.int32(np.int32(q << 16) >> 16)
    p_high = np.int32(p >> 16)
    q_high = np.int32(q >> 16)
    return np.int32(p_low * q_low + p_high * q_high)


@njit(cache=True, nogil=True, inline="always")
def _dot_tile_4x2(a, i, b, j, words):
    """int32 dot products of activation rows a[i..i+3] with weight rows b[j], b[j+1].

    a, b: int32 views of int16 panels (two values per word); `words` = K/2. Each accumulator is
    an independent reduction, so the K loop vectorizes with 8 accumulator registers."""
    a0, a1, a2, a3 = a[i], a[i + 1], a[i + 2], a[i + 3]
    b0, b1 = b[j], b[j + 1]
    s00 = s01 = s10 = s11 = s20 = s21 = s30 = s31 = np.int32(0)
    for k in range(words):
        x0, x1, x2, x3 = a0[k], a1[k], a2[k], a3[k]
        w0, w1 = b0[k], b1[k]
        s00 = np.int32(s00 + _madd_pair(x0, w0))
        s01 = np.int32(s01 + _madd_pair(x0, w1))
        s10 = np.int32(s10 + _madd_pair(x1, w0))
        s11 = np.int32(s11 + _madd_pair(x1, w1))
        s20 = np.int32(s20 + _madd_pair(x2, w0))
        s21 = np.int32(s21 + _madd_pair(x2, w1))
        s30 = np.int32(s30 + _madd_pair(x3, w0))
        s31 = np.int32(s31 + _madd_pair(x3, w1))
    return (s00, s01), (s10, s11), (s20, s21), (s30, s31)


# --------------------------------------------------------------------------------------------
# Packing
# --------------------------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def pack_weight_int8(weight, groups, group_rows, rows_padded, length_padded):
    """int8 weight [OC, K] -> int16 panels [groups, rows_padded, length_padded], zero padded."""
    length = weight.shape[1]
    panel = np.zeros((groups, rows_padded, length_padded), np.int16)
    for g in range(groups):
        for r in range(group_rows):
            source = weight[g * group_rows + r]
            target = panel[g, r]
            for k in range(length):
                target[k] = source[k]
    return panel


@njit(cache=True, nogil=True)
def pack_weight_int4(packed, length, groups, group_rows, rows_padded, length_padded):
    """Packed int4 weight uint8 [OC, ceil(K/2)] -> int16 panels, sign-extending each nibble
    (element 2i: low nibble, 2i+1: high nibble)."""
    panel = np.zeros((groups, rows_padded, length_padded), np.int16)
    for g in range(groups):
        for r in range(group_rows):
            source = packed[g * group_rows + r]
            target = panel[g, r]
            for k in range(length):
                byte = np.int32(source[k >> 1])
                nibble = (byte >> 4) if (k & 1) else (byte & 15)
                target[k] = nibble - 16 if nibble >= 8 else nibble  # sign-extend 4 bits
    return panel


@njit(cache=True, nogil=True, inline="always")
def _lower_rows(x, group, group_channels, row_start, row_count, panel, geometry, pad_value):
    """im2col of rows [row_start, row_start + row_count) (row = (n, oy, ox)) of one group into
    the int16 panel [rows, K_padded]; taps outside the image get pad_value. The panel's padding
    (columns past K, rows past row_count) is left as it is (zero)."""
    (kernel_h, kernel_w, stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w,
     out_w, positions) = geometry
    height, width = x.shape[2], x.shape[3]
    for r in range(row_count):
        row = row_start + r
        n, p = row // positions, row % positions
        oy, ox = p // out_w, p % out_w
        target = panel[r]
        k = 0
        for ci in range(group_channels):
            plane = x[n, group * group_channels + ci]
            for ky in range(kernel_h):
                iy = oy * stride_h - pad_top + ky * dilation_h
                inside_y = 0 <= iy < height
                for kx in range(kernel_w):
                    ix = ox * stride_w - pad_left + kx * dilation_w
                    if inside_y and 0 <= ix < width:
                        target[k] = plane[iy, ix]
                    else:
                        target[k] = pad_value
                    k += 1


# --------------------------------------------------------------------------------------------
# Fused epilogue and driver
# --------------------------------------------------------------------------------------------


@njit(cache=True, nogil=True, inline="always")
def _store(out, n, p, row, channel, raw, correction, row_correction, multiplier, shift, params):
    """Accumulator correction (zero points, bias) in wrapping int32, then requantize into
    out[n, channel, p] (row = n * positions + p)."""
    output_zero_point, act_min, act_max, single_rounding, positions = params
    correction_row = p if correction.shape[0] > 1 else 0
    row_correction_index = row if row_correction.shape[0] > 1 else 0
    acc = wrap_int32(np.int64(raw) + correction[correction_row, channel]
                     + row_correction[row_correction_index])
    out[n, channel, p] = requantize(acc, multiplier[channel], shift[channel], output_zero_point,
                                    act_min, act_max, single_rounding)


@njit(cache=True, nogil=True, parallel=True)
def conv_requant(x, weight_panel, correction, row_correction, multiplier, shift, out,
                 group_channels, length, geometry, pad_value, params, rows_per_chunk,
                 channel_blocks, channels_per_block):
    """Grouped convolution (linear = 1x1 conv of a 1x1 image) with fused requantization.

    x int8 [N, C, H, W]; weight_panel int16 [G, OCg_padded, K_padded]; correction int64
    [1 or positions, OC] (bias - z_x * weight sums); row_correction int64 [rows] or [1]
    (a weight zero point's -z_w * sum x per row; [0] otherwise); multiplier/shift int64 [OC];
    out int8 [N, OC, positions]. Work items are (row chunk, group, channel block), distributed
    over Numba's threads; each lowers its rows into a thread-local int16 panel and runs the 4x2
    tile over its channel block, reusing the panel rows from L1/L2.
    """
    groups, rows_padded_w, length_padded = weight_panel.shape
    group_rows = out.shape[1] // groups
    positions = params[4]
    rows = out.shape[0] * positions
    chunks = -(-rows // rows_per_chunk)
    words = length_padded // 2
    weight_block = max(TILE_N, (L2_BLOCK_BYTES // (2 * length_padded)) // TILE_N * TILE_N)
    weights32 = weight_panel.view(np.int32)
    for item in prange(chunks * groups * channel_blocks):
        chunk = item // (groups * channel_blocks)
        group = (item // channel_blocks) % groups
        block = item % channel_blocks
        row_start = chunk * rows_per_chunk
        row_count = min(rows_per_chunk, rows - row_start)
        panel = np.zeros((padded_rows(row_count), length_padded), np.int16)
        _lower_rows(x, group, group_channels, row_start, row_count, panel, geometry, pad_value)
        acts32 = panel.view(np.int32)
        b = weights32[group]
        j_start = block * channels_per_block
        j_end = min(j_start + channels_per_block, rows_padded_w)
        # Weight rows in blocks that stay in L2 while every 4-row tile of the panel passes.
        for jb in range(j_start, j_end, weight_block):
            jb_end = min(jb + weight_block, j_end)
            for i in range(0, row_count, TILE_M):
                for j in range(jb, jb_end, TILE_N):
                    tile = _dot_tile_4x2(acts32, i, b, j, words)
                    for di in range(min(TILE_M, row_count - i)):
                        row = row_start + i + di
                        n = row // positions  # one division per row, not per element
                        p = row - n * positions
                        for dj in range(min(TILE_N, group_rows - j)):
                            _store(out, n, p, row, group * group_rows + j + dj, tile[di][dj],
                                   correction, row_correction, multiplier, shift, params)


@njit(cache=True, nogil=True, inline="always")
def padded_rows(count):
    return -(-count // TILE_M) * TILE_M


@njit(cache=True, nogil=True, parallel=True)
def valid_weight_sums(weight_panel, group_channels, geometry, height, width):
    """sum of W[oc, k] over the taps k that fall inside the image, per output position:
    int64 [positions, OC]. Needed only when z_x does not fit int16 (see module docstring)."""
    (kernel_h, kernel_w, stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w,
     out_w, positions) = geometry
    groups, rows_padded_w, _ = weight_panel.shape
    group_rows = rows_padded_w  # caller passes the unpadded row count via slicing
    sums = np.zeros((positions, groups * group_rows), np.int64)
    for p in prange(positions):
        oy, ox = p // out_w, p % out_w
        for g in range(groups):
            for r in range(group_rows):
                total = np.int64(0)
                k = 0
                for ci in range(group_channels):
                    for ky in range(kernel_h):
                        iy = oy * stride_h - pad_top + ky * dilation_h
                        for kx in range(kernel_w):
                            ix = ox * stride_w - pad_left + kx * dilation_w
                            if 0 <= iy < height and 0 <= ix < width:
                                total += weight_panel[g, r, k]
                            k += 1
                sums[p, g * group_rows + r] = total
    return sums
