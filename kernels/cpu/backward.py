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
in float32 with 6x64 register tiles (see gemm_nt_accumulate).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .microkernel import MR, NR, f32_tile

TILE_M = 4  # panel paddings the backend relies on (rows to a multiple of 4, K of 2)
TILE_N = 2


# The reductions are float32 GEMMs c += a @ b.T on the int8 forward's tiling (microkernel.py):
# b is packed into 64-column panels [k][64], K is cut into chunks of K_CHUNK so that a panel
# chunk (64 KB) stays in L2 while the 6-row register tiles of a row block pass it, and each
# tile's 6 x 64 sums (24 zmm accumulators, vfmadd231ps) are added into c once per chunk.

K_CHUNK = 256
ROW_BLOCK = 96  # rows of a per work item (multiple of MR)


@njit(cache=True, nogil=True, parallel=True)
def _pack_columns(b):
    """float32 [G, N, K] -> panels [G][ceil(N / 64)][K][64] (b transposed, zero padded)."""
    groups, cols, length = b.shape
    blocks = -(-cols // NR)
    panel = np.zeros(groups * blocks * length * NR, np.float32)
    for item in prange(groups * blocks):
        g, block = item // blocks, item % blocks
        base = item * length * NR
        lanes = min(NR, cols - block * NR)
        for k0 in range(0, length, 16):  # a 16 x 64 block of the panel (4 KB) stays in L1
            for lane in range(lanes):
                source = b[g, block * NR + lane]
                for k in range(k0, min(k0 + 16, length)):
                    panel[base + k * NR + lane] = source[k]
    return panel


@njit(cache=True, nogil=True, parallel=True)
def _gemm_panels_accumulate(a, panel, c, transposed):
    """c[g] += a[g] @ b[g].T with b given as _pack_columns panels; a C-contiguous.
    transposed: c holds the transpose, c[g] += (a[g] @ b[g].T).T."""
    groups, rows, length = a.shape
    cols = c.shape[1] if transposed else c.shape[2]
    blocks = -(-cols // NR)
    row_blocks = -(-rows // ROW_BLOCK)
    a_flat = a.reshape(-1)
    for item in prange(groups * row_blocks * blocks):
        g = item // (row_blocks * blocks)
        row_block = (item // blocks) % row_blocks
        block = item % blocks
        lanes = min(NR, cols - block * NR)
        row_offsets = np.empty(MR, np.int64)
        tile = np.empty(MR * NR, np.float32)
        panel_base = (g * blocks + block) * length * NR
        row_end = min((row_block + 1) * ROW_BLOCK, rows)
        for k0 in range(0, length, K_CHUNK):
            chunk = min(K_CHUNK, length - k0)
            for i in range(row_block * ROW_BLOCK, row_end, MR):
                count = min(MR, row_end - i)
                for m in range(MR):  # rows past the end repeat the last one
                    row_offsets[m] = (g * rows + i + min(m, count - 1)) * length + k0
                f32_tile(a_flat, row_offsets, panel, panel_base + k0 * NR, chunk, tile)
                for m in range(count):
                    if transposed:
                        for lane in range(lanes):
                            c[g, block * NR + lane, i + m] += tile[m * NR + lane]
                    else:
                        target = c[g, i + m]
                        for lane in range(lanes):
                            target[block * NR + lane] += tile[m * NR + lane]


def gemm_nt_accumulate(a, b, c):
    """c[g] += a[g] @ b[g].T for float32 panels a [G, M, K], b [G, N, K], c [G, M, N].

    One operand is packed into [k][64] panels (a transpose, O(rows * K)); the other is read in
    place. The smaller one is packed: for the weight gradient b is the lowered input (K = the
    positions of a chunk, N = C * KH * KW) and a the masked gradient (M = OC rows)."""
    if a.shape[1] == 0 or b.shape[1] == 0 or a.shape[2] == 0:
        return
    if a.shape[1] < b.shape[1]:
        _gemm_panels_accumulate(np.ascontiguousarray(b), _pack_columns(a), c, True)
    else:
        _gemm_panels_accumulate(np.ascontiguousarray(a), _pack_columns(b), c, False)


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
    if positions == 1:
        # A linear layer: 16 x 16 blocks of (image, channel), so that both layouts (one the
        # other's transpose) are written in 64-byte runs.
        image_blocks, channel_blocks = -(-image_count // 16), -(-out_channels // 16)
        for item in prange(image_blocks * channel_blocks):
            n0, c0 = (item // channel_blocks) * 16, (item % channel_blocks) * 16
            for channel in range(c0, min(c0 + 16, out_channels)):
                g, r = channel // group_rows, channel % group_rows
                for local_n in range(n0, min(n0 + 16, image_count)):
                    n = image_start + local_n
                    y = output[n, channel, 0]
                    value = np.float32(0)
                    if act_min < y < act_max:
                        value = grad_output[n, channel, 0]
                    by_channel[g, r, local_n] = alpha[n] * value
                    by_row[g, local_n, r] = value
        return
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
    panel[g, (ci, ky, kx), (n, oy, ox)]. Each item fills one panel row, output row by output
    row, without divisions in the inner loop."""
    (kernel_h, kernel_w, stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w,
     out_w, positions) = geometry
    out_h = positions // out_w
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
            for oy in range(out_h):
                iy = oy * stride_h - pad_top + ky * dilation_h
                row = target[(local_n * out_h + oy) * out_w:(local_n * out_h + oy + 1) * out_w]
                if iy < 0 or iy >= height:
                    row[:] = 0
                    continue
                source = plane[iy]
                for ox in range(out_w):
                    ix = ox * stride_w - pad_left + kx * dilation_w
                    value = np.float32(0)
                    if 0 <= ix < width:
                        value = np.float32(np.float64(source[ix]) - input_zero_point)
                    row[ox] = value


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
