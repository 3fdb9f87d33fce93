"""STE backward of the integer conv / linear ops (Numba, float32 accumulation).

Autograd sees y_real = s_y * (y - z_y); grad_output is dL/dy_real. The straight-through
estimator passes it where the output was not clamped (act_min < y < act_max) and reaches
x_real = s_x * (x - z_x) and w_real[c] = s_w[c] * w[c]:

    g[n, c, p]        = grad_output where act_min < y < act_max, else 0
    grad_bias[c]      = sum_{n,p} alpha_n g[n, c, p]
    grad_weight[c, k] = s_x * sum_{n,p} alpha_n g[n, c, p] * (x - z_x)[n, p, k]   (im2col, pads 0)
    grad_input        = col2im(sum_c g[n, c, p] * s_w[c] w[c, k])               (transposed conv)

alpha_n enters the weight and bias reductions only: the input gradient stays per-sample, so a
network whose every layer fuses alpha into its own reduction gets the gradient of
sum_n alpha_n L_n with alpha applied exactly once. A fully connected layer is the 1x1
convolution of a 1x1 image.

Layout: everything runs on the forward's implicit-GEMM geometry, with nothing lowered to an
im2col matrix. Output positions r = (n, oy, ox) are rows; `row_base[r]` is the offset of the
position's top-left tap in a padded NHWC image and `column_offsets[k]` the offset of im2col
column k = (ci, ky, kx) from there, so (x - z_x) at (r, k) is image[row_base[r] +
column_offsets[k]]. The masked gradient is packed once into row-major [R, OC] panels (one
alpha-weighted for the weight reduction, one plain for the input gradient), and both
reductions run on the 6 x 64 float32 register tile of microkernel.f32_gather_tile:

* weight gradient: tile rows = 6 im2col columns, steps = output positions (the image read in
  place through row_base), panel = the weighted gradient rows, 64 output channels wide;
* input gradient: tile rows = 6 output positions, steps = output channels, panel = the scaled
  weights transposed [OC][k], 64 im2col columns wide; the tile is scattered (col2im) straight
  into a padded NHWC float image, one image per work item so no two items touch one element.

Summation order depends on the shapes only (never on the thread count), so results repeat
bit for bit on any machine with the same instruction set.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .microkernel import LANES, MR, NR, f32_gather_tile

ROWS_PER_CHUNK = 256    # positions per weight-gradient step: a 256 x 64 panel chunk is 64 KB (L2)
ROWS_PER_SHARE = 8192   # positions per independent weight-gradient partial sum


def padded(length: int, multiple: int) -> int:
    return -(-length // multiple) * multiple


def row_stride(channels: int) -> int:
    """Floats per row of the gradient panels: channels rounded up to a vector."""
    return padded(max(channels, 1), LANES)


@njit(cache=True, nogil=True, parallel=True)
def pack_gradient_rows(grad_output, output, alpha, act_min, act_max, rows, weighted_rows,
                       bias_partials):
    """Masked gradient into row-major panels (lanes past OC zeroed): rows[n * P + p, c] =
    g[n, c, p] and, when weighted_rows has rows, weighted_rows[...] = alpha_n * g;
    bias_partials[n, c] = sum_p alpha_n g[n, c, p] (float64, p ascending).
    grad_output float32 / output int8 [N, OC, P]."""
    batch, channels, positions = grad_output.shape
    weighted = weighted_rows.shape[0] > 0
    for n in prange(batch):
        weight = alpha[n]
        totals = np.zeros(channels, np.float64)
        for p in range(positions):
            row = rows[n * positions + p]
            for c in range(channels):  # the transposing gather
                y = output[n, c, p]
                row[c] = grad_output[n, c, p] if act_min < y < act_max else np.float32(0)
            row[channels:] = 0  # padding lanes: read by the 64-wide tiles, then dropped
            if weighted:  # the rest runs along contiguous rows (vectorized)
                target = weighted_rows[n * positions + p]
                for c in range(channels):
                    target[c] = weight * row[c]
                target[channels:] = 0
            for c in range(channels):
                totals[c] += weight * row[c]
        bias_partials[n] = totals


@njit(cache=True, nogil=True, parallel=True)
def centered_image(x, input_zero_point, top, left, out):
    """out [N, Hp, Wp, C] float32 = x - z_x where the padded image holds x, 0 in the padding.
    Rows / columns of x past the image's extent (never read by a tap) are left out."""
    batch, channels, height, width = x.shape
    height_padded, width_padded = out.shape[1], out.shape[2]
    for n in prange(batch):
        for py in range(height_padded):
            for px in range(width_padded):
                target = out[n, py, px]
                iy, ix = py - top, px - left
                if 0 <= iy < height and 0 <= ix < width:
                    for c in range(channels):
                        target[c] = np.float32(np.float64(x[n, c, iy, ix]) - input_zero_point)
                else:
                    target[:] = 0


@njit(cache=True, nogil=True)
def tap_offsets(batch, out_h, out_w, stride_h, stride_w, dilation_h, dilation_w, kernel_h,
                kernel_w, group_channels, height_padded, width_padded, channels):
    """(row_base [N * OH * OW], column_offsets [Cg * KH * KW]) int64 offsets into the padded
    NHWC image: position (n, oy, ox)'s top-left tap, and column (ci, ky, kx) relative to it."""
    row_base = np.empty(batch * out_h * out_w, np.int64)
    r = 0
    for n in range(batch):
        for oy in range(out_h):
            for ox in range(out_w):
                row_base[r] = ((n * height_padded + oy * stride_h) * width_padded + ox * stride_w) * channels
                r += 1
    column_offsets = np.empty(group_channels * kernel_h * kernel_w, np.int64)
    k = 0
    for ci in range(group_channels):
        for ky in range(kernel_h):
            for kx in range(kernel_w):
                column_offsets[k] = (ky * dilation_h * width_padded + kx * dilation_w) * channels + ci
                k += 1
    return row_base, column_offsets


@njit(cache=True, nogil=True, parallel=True)
def weight_gradient(image, row_base, column_offsets, weighted_rows, stride, group_channels,
                    out_group_channels, partial):
    """partial[share, g, k, c] = sum over the share's positions r of
    image[row_base[r] + column_offsets[k] + g * Cg] * weighted_rows[r, g * OCg + c].

    image flat float32 (padded NHWC); weighted_rows flat float32 [R * stride + NR] (the tail
    keeps the last 64-wide reads in bounds; lanes past OCg are read and dropped); partial
    float32 [shares, G, Kg_pad6, OCg_pad64]. One work item per (share, group, 6-column block):
    each owns (and first zeroes) its slice of partial."""
    shares, groups, columns_padded, channels_padded = partial.shape
    rows = row_base.shape[0]
    columns = column_offsets.shape[0]
    column_blocks = columns_padded // MR
    channel_blocks = channels_padded // NR
    share_rows = -(-rows // shares)
    for item in prange(shares * groups * column_blocks):
        share = item // (groups * column_blocks)
        g = (item // column_blocks) % groups
        block = item % column_blocks
        offsets = np.empty(MR, np.int64)
        for m in range(MR):  # columns past the end repeat the last one (their sums are dropped)
            offsets[m] = column_offsets[min(block * MR + m, columns - 1)] + g * group_channels
        tile = np.empty(MR * NR, np.float32)
        target = partial[share, g]
        target[block * MR:(block + 1) * MR] = 0
        end = min(rows, (share + 1) * share_rows)
        for start in range(share * share_rows, end, ROWS_PER_CHUNK):
            count = min(ROWS_PER_CHUNK, end - start)
            for channel_block in range(channel_blocks):
                f32_gather_tile(image, offsets, row_base, start, weighted_rows,
                                start * stride + g * out_group_channels + channel_block * NR,
                                stride, count, tile)
                for m in range(MR):
                    row = target[block * MR + m]
                    for lane in range(NR):
                        row[channel_block * NR + lane] += tile[m * NR + lane]


@njit(cache=True, nogil=True, parallel=True)
def input_gradient(rows_flat, stride, weight_flat, columns_stride, groups, row_base,
                   column_offsets, positions, images_per_item, group_channels, out_group_channels,
                   grad_image):
    """grad_image[row_base[r] + column_offsets[k] + g * Cg] += sum_c rows[r, g * OCg + c] *
    weight_t[g, c, k] (the transposed convolution as a scatter of GEMM tiles).

    rows_flat float32 [R * stride + NR]; weight_flat float32 [G * OCg * columns_stride + NR],
    weight_t[g, c, k] at (g * OCg + c) * columns_stride + k (the tails keep the 64-wide reads
    in bounds; lanes past the end are dropped); grad_image flat float32 padded NHWC. Work items
    are runs of whole images: their scatters never overlap, and each first zeroes its images."""
    rows = row_base.shape[0]
    columns = column_offsets.shape[0]
    batch = rows // positions
    column_blocks = -(-columns // NR)
    steps = np.arange(out_group_channels, dtype=np.int64)
    items = -(-batch // images_per_item)
    for item in prange(items):
        first = item * images_per_item * positions
        last = min(batch, (item + 1) * images_per_item) * positions
        offsets = np.empty(MR, np.int64)
        tile = np.empty(MR * NR, np.float32)
        image_size = grad_image.shape[0] // batch
        grad_image[first // positions * image_size:last // positions * image_size] = 0
        for start in range(first, last, MR):
            count = min(MR, last - start)
            for g in range(groups):
                for m in range(MR):  # rows past the end repeat the last one (not scattered)
                    offsets[m] = (start + min(m, count - 1)) * stride + g * out_group_channels
                for block in range(column_blocks):
                    f32_gather_tile(rows_flat, offsets, steps, 0, weight_flat,
                                    g * out_group_channels * columns_stride + block * NR,
                                    columns_stride, out_group_channels, tile)
                    width = min(NR, columns - block * NR)
                    for m in range(count):
                        base = row_base[start + m] + g * group_channels
                        for lane in range(width):
                            grad_image[base + column_offsets[block * NR + lane]] += tile[m * NR + lane]


@njit(cache=True, nogil=True, parallel=True)
def image_to_nchw(grad_image, top, left, out):
    """out[n, c, iy, ix] = grad_image[n, iy + top, ix + left, c] where the padded image covers
    (iy, ix), else 0 (an input pixel no tap reads gets no gradient)."""
    batch, channels, height, width = out.shape
    height_padded, width_padded = grad_image.shape[1], grad_image.shape[2]
    for n in prange(batch):
        for c in range(channels):
            for iy in range(height):
                for ix in range(width):
                    value = np.float32(0)
                    if iy + top < height_padded and ix + left < width_padded:
                        value = grad_image[n, iy + top, ix + left, c]
                    out[n, c, iy, ix] = value
