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
convolution of a 1x1 image. The per-sample weights alpha_n are applied while packing the masked gradient into the GEMM panels (which the masking needs
anyway), so no scaled copy of grad_output or x is made and no extra pass runs. Reductions run
in float32 with 4x2 register tiles (reassociated by fastmath so that LLVM vectorizes them).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

TILE_M = 4
TILE_N = 2


@njit(cache=True, nogil=True, inline="always", fastmath=True)
def _dot_tile_4x2(a, i, b, j, length):
    """float32 dot products of rows a[i..i+3] with rows b[j], b[j+1] over `length`."""
    a0, a1, a2, a3 = a[i], a[i + 1], a[i + 2], a[i + 3]
    b0, b1 = b[j], b[j + 1]
    s00 = s01 = s10 = s11 = s20 = s21 = s30 = s31 = np.float32(0)
    for k in range(length):
        w0, w1 = b0[k], b1[k]
        s00 += a0[k] * w0
        s01 += a0[k] * w1
        s10 += a1[k] * w0
        s11 += a1[k] * w1
        s20 += a2[k] * w0
        s21 += a2[k] * w1
        s30 += a3[k] * w0
        s31 += a3[k] * w1
    return (s00, s01), (s10, s11), (s20, s21), (s30, s31)


@njit(cache=True, nogil=True, parallel=True, fastmath=True)
def gemm_nt_accumulate(a, b, c):
    """c[g] += a[g] @ b[g].T for float32 panels a [G, M, K], b [G, N, K], c [G, M, N].

    M must be a multiple of 4 and N of 2 (callers pad panels with zero rows)."""
    groups, rows, length = a.shape
    cols = b.shape[1]
    row_blocks = rows // TILE_M
    for item in prange(groups * row_blocks):
        g, i = item // row_blocks, (item % row_blocks) * TILE_M
        for j in range(0, cols, TILE_N):
            tile = _dot_tile_4x2(a[g], i, b[g], j, length)
            for di in range(TILE_M):
                for dj in range(TILE_N):
                    c[g, i + di, j + dj] += tile[di][dj]


def padded(length: int, multiple: int) -> int:
    return -(-length // multiple) * multiple


@njit(cache=True, nogil=True, parallel=True)
def pack_masked_gradient(grad_output, output, alpha, act_min, act_max, image_start, image_count,
                         groups, by_channel, by_row):
    """grad_output zeroed where the output was clamped, for images [image_start, image_start +
    image_count), into two panel layouts (zero padded): by_channel [G, OCg_pad4, R_pad] (rows =
    channels) feeds the weight-gradient reduction and carries alpha_n; by_row [G, R_pad4, OCg_pad]
    (rows = positions) feeds the input gradient, which stays per-sample (unweighted).
    grad_output float32 / output int8 [N, OC, P]."""
    out_channels, positions = grad_output.shape[1], grad_output.shape[2]
    group_rows = out_channels // groups
    for item in prange(image_count * out_channels):
        local_n, channel = item // out_channels, item % out_channels
        n = image_start + local_n
        g, r = channel // group_rows, channel % group_rows
        weight = alpha[n]
        for p in range(positions):
            y = output[n, channel, p]
            value = np.float32(0)
            if act_min < y < act_max:
                value = grad_output[n, channel, p]
            by_channel[g, r, local_n * positions + p] = weight * value
            by_row[g, local_n * positions + p, r] = value


@njit(cache=True, nogil=True, parallel=True)
def lower_centered_transposed(x, input_zero_point, image_start, image_count, geometry, panel):
    """Transposed float32 im2col of x - z_x (padded taps 0): panel [G, Kg_pad2, R_pad],
    panel[g, (ci, ky, kx), (n, oy, ox)]."""
    (kernel_h, kernel_w, stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w,
     out_w, positions) = geometry
    groups = panel.shape[0]
    channels, height, width = x.shape[1], x.shape[2], x.shape[3]
    group_channels = channels // groups
    taps = kernel_h * kernel_w
    for item in prange(groups * group_channels * taps):
        g = item // (group_channels * taps)
        ci = (item // taps) % group_channels
        ky, kx = (item % taps) // kernel_w, item % kernel_w
        target = panel[g, ci * taps + ky * kernel_w + kx]
        for local_n in range(image_count):
            plane = x[image_start + local_n, g * group_channels + ci]
            for p in range(positions):
                oy, ox = p // out_w, p % out_w
                iy = oy * stride_h - pad_top + ky * dilation_h
                ix = ox * stride_w - pad_left + kx * dilation_w
                value = np.float32(0)
                if 0 <= iy < height and 0 <= ix < width:
                    value = np.float32(np.float64(plane[iy, ix]) - input_zero_point)
                target[local_n * positions + p] = value


@njit(cache=True, nogil=True, parallel=True)
def col2im_accumulate(columns, image_start, image_count, geometry, grad_input):
    """grad_input[n, c, iy, ix] += columns[g, (n, oy, ox), (ci, ky, kx)] over in-image taps:
    the transposed convolution's scatter. Parallel over (image, group): no two items write the
    same element."""
    (kernel_h, kernel_w, stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w,
     out_w, positions) = geometry
    groups = columns.shape[0]
    channels, height, width = grad_input.shape[1], grad_input.shape[2], grad_input.shape[3]
    group_channels = channels // groups
    for item in prange(image_count * groups):
        local_n, g = item // groups, item % groups
        n = image_start + local_n
        for p in range(positions):
            oy, ox = p // out_w, p % out_w
            source = columns[g, local_n * positions + p]
            k = 0
            for ci in range(group_channels):
                plane = grad_input[n, g * group_channels + ci]
                for ky in range(kernel_h):
                    iy = oy * stride_h - pad_top + ky * dilation_h
                    for kx in range(kernel_w):
                        ix = ox * stride_w - pad_left + kx * dilation_w
                        if 0 <= iy < height and 0 <= ix < width:
                            plane[iy, ix] += source[k]
                        k += 1
