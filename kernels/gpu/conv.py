"""Implicit-GEMM int8 (or packed int4) 2-D convolution with the fused requantization epilogue.

The convolution of one group is a GEMM  y[m, oc] = sum_k x_col[m, k] * w[oc, k]  with
    m = (n, oh, ow)          over N*OH*OW output positions,
    k = (ky, kx, ci)         over the KH*KW taps, and within a tap the C/groups input channels,
    x_col[m, k] = x[n, g*C/groups + ci, oh*sh - top + ky*dh, ow*sw - left + kx*dw].
No im2col tensor exists. Taps are the outer loop (a loop, not unrolled, so one tap's row
addresses are live at a time): for one tap every output position reads one input cell, so the
address of a tile is a per-row base plus the channel offset, and the padding mask is per row. Channels are the inner loop, in BLOCK_K
slices, contiguous in memory for channels_last activations. Grid: (M tiles, OC/groups tiles,
groups); depthwise is groups = C with one channel per tap.

Weights are reordered on the host from OIHW to tap-major rows [OC, KH*KW*C/g] (OHWI), so each
tap's slice is contiguous; packed int4 is repacked in that order with every tap padded to a
whole number of bytes (an odd channel count gets a zero nibble), so a slice starts on a byte.
The weights are small beside the activations; the reorder is one pass over them.

Zero point and padding: the spec is sum_k w * (x - z_x) over the in-image taps only, i.e.
padding holds the real zero, x = z_x. When z_x fits int8 (every TFLite model), padded cells are
loaded as z_x (a masked load with other=z_x, which the compiler still pipelines), and

    acc = dot(x_col, w) + column_term[oc],   column_term = bias - z_x * sum_k w[oc, k],

the column term coming from a row-sum pass over the weights (gemm.row_sums), as in gemm.py.
A z_x outside int8 cannot be loaded into an int8 tile (TAP_CORRECTION): padded cells load 0 and

    acc = dot(x_col, w) + bias[oc] - z_x * sum over the in-image taps t of tap_sum[oc, t],

with tap_sum[oc, t] = sum_ci w[oc, ci, t], a KH*KW-step outer-product sum in the epilogue that
costs registers (a tap's sums per column), so it is kept off the common path.
Everything after the dot is wrapping int32, the spec's own arithmetic, and long reductions are
cut into chunks that cannot overflow a saturating int32 MMA (LONG_K), as in gemm.py.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .configs import conv_configs, prune_conv_configs
from .fixedpoint import MAX_EXACT_DOT_LENGTH, exact_dot_length, requantize
from .gemm import load_weight_tile_kn, row_sums


@triton.jit
def accumulate_tap_products(acc, x_rows, row_inside, pad_value, w_ptr, offs_oc, tap_column,
                            c_begin, c_end, GROUP_OC, stride_xc, stride_wo, n_bytes,
                            PACKED: tl.constexpr, BLOCK_K: tl.constexpr):
    """acc + the products of one tap over input channels [c_begin, c_end). x_rows: the address
    of channel 0 of the tap's input cell per output position; row_inside: that cell is in the
    image (and the position exists). Padded cells (and channels past c_end, whose weights are 0)
    read as pad_value."""
    for c_start in range(c_begin, c_end, BLOCK_K):
        offs_c = c_start + tl.arange(0, BLOCK_K)
        x = tl.load(x_rows[:, None] + offs_c[None, :] * stride_xc,
                    mask=row_inside[:, None] & (offs_c < c_end)[None, :], other=pad_value)
        w = load_weight_tile_kn(w_ptr, offs_oc, tap_column + c_start, GROUP_OC, tap_column + c_end,
                                stride_wo, 1, n_bytes, PACKED, BLOCK_K)
        acc = tl.dot(x, w, acc, out_dtype=tl.int32)
    return acc


@triton.jit
def window_cell_inside(in_y0, in_x0, m_valid, H, W, ky, kx, dilation_h, dilation_w):
    """Per output position: tap (ky, kx) of its window lies in the image."""
    in_y = in_y0 + ky * dilation_h
    in_x = in_x0 + kx * dilation_w
    return m_valid & (in_y >= 0) & (in_y < H) & (in_x >= 0) & (in_x < W)


@triton.autotune(configs=conv_configs(),
                 key=["M", "GROUP_C", "GROUP_OC", "KH", "KW", "PACKED", "LONG_K", "TAP_CORRECTION"],
                 prune_configs_by={"early_config_prune": prune_conv_configs})
@triton.jit
def qconv2d_kernel(
    x_ptr, w_ptr, column_term_ptr, multiplier_ptr, shift_ptr, tap_sum_ptr, y_ptr,
    M, H, W, OH, OW, GROUP_C, GROUP_OC, tap_stride, n_bytes,
    stride_xn, stride_xc, stride_xh, stride_xw, stride_wo,
    stride_yn, stride_yc, stride_yh, stride_yw, stride_requant,
    conv_stride_h, conv_stride_w, pad_top, pad_left, dilation_h, dilation_w,
    input_zero_point, pad_value, output_zero_point, act_min, act_max,
    KH: tl.constexpr, KW: tl.constexpr,
    HAS_COLUMN_TERM: tl.constexpr, TAP_CORRECTION: tl.constexpr, PACKED: tl.constexpr,
    SINGLE_ROUNDING: tl.constexpr, LONG_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    group = tl.program_id(2)

    # Output positions of this tile: m -> (n, oh, ow); all operands non-negative.
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_valid = offs_m < M
    batch = offs_m // (OH * OW)
    spatial = offs_m % (OH * OW)
    in_y0 = (spatial // OW) * conv_stride_h - pad_top  # top-left tap of each window
    in_x0 = (spatial % OW) * conv_stride_w - pad_left
    x_images = x_ptr + batch * stride_xn + group * GROUP_C * stride_xc

    offs_oc = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # within the group
    out_channel = group * GROUP_OC + offs_oc
    oc_valid = offs_oc < GROUP_OC
    w_rows = tl.where(oc_valid, out_channel, 0)  # rows past the group are masked via GROUP_OC
    w_group = w_ptr + group * GROUP_OC * stride_wo

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for tap in range(KH * KW):  # a loop, not unrolled: one tap's row addresses live at a time
        ky = tap // KW
        kx = tap % KW
        row_inside = window_cell_inside(in_y0, in_x0, m_valid, H, W, ky, kx, dilation_h,
                                        dilation_w)
        x_rows = x_images + (in_y0 + ky * dilation_h) * stride_xh \
            + (in_x0 + kx * dilation_w) * stride_xw
        tap_column = tap * tap_stride
        if LONG_K:  # chunks that cannot overflow, summed in wrapping int32
            chunk = exact_dot_length(BLOCK_K)
            for c_begin in range(0, GROUP_C, chunk):
                acc += accumulate_tap_products(
                    tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32), x_rows, row_inside, pad_value,
                    w_group,
                    offs_oc, tap_column, c_begin, tl.minimum(c_begin + chunk, GROUP_C),
                    GROUP_OC, stride_xc, stride_wo, n_bytes, PACKED, BLOCK_K)
        else:
            acc = accumulate_tap_products(acc, x_rows, row_inside, pad_value, w_group, offs_oc,
                                          tap_column, 0, GROUP_C, GROUP_OC, stride_xc, stride_wo,
                                          n_bytes, PACKED, BLOCK_K)

    total = acc  # wrapping int32 from here on, as the spec
    if TAP_CORRECTION:  # z_x times the weights of the in-image taps: sum of inside * tap_sum
        inside_weights = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
        for ky in tl.static_range(KH):
            for kx in tl.static_range(KW):
                row_inside = window_cell_inside(in_y0, in_x0, m_valid, H, W, ky, kx, dilation_h,
                                                dilation_w)
                tap_sum = tl.load(tap_sum_ptr + w_rows * (KH * KW) + (ky * KW + kx),
                                  mask=oc_valid, other=0)
                inside_weights += tl.where(row_inside[:, None], tap_sum[None, :], 0)
        total -= inside_weights * input_zero_point
    if HAS_COLUMN_TERM:  # bias - z_x * sum_k w, or the bias alone with TAP_CORRECTION
        total += tl.load(column_term_ptr + w_rows, mask=oc_valid, other=0)[None, :]
    multiplier = tl.load(multiplier_ptr + w_rows * stride_requant, mask=oc_valid, other=0)
    shift = tl.load(shift_ptr + w_rows * stride_requant, mask=oc_valid, other=0)
    y = requantize(total, multiplier[None, :], shift[None, :], output_zero_point, act_min,
                   act_max, SINGLE_ROUNDING)
    out_y = spatial // OW
    out_x = spatial % OW
    y_offsets = (batch * stride_yn + out_y * stride_yh + out_x * stride_yw)[:, None] \
        + (w_rows * stride_yc)[None, :]
    tl.store(y_ptr + y_offsets, y, mask=m_valid[:, None] & oc_valid[None, :])


def conv2d_output_size(size, kernel, stride, pad_before, pad_after, dilation):
    return (size + pad_before + pad_after - dilation * (kernel - 1) - 1) // stride + 1


def unpack_int4_torch(packed: torch.Tensor, length: int) -> torch.Tensor:
    """int8 [rows, length] from packed int4 bytes [rows, ceil(length/2)] (low nibble first)."""
    as_bytes = packed.view(torch.uint8).to(torch.int16)
    low = ((as_bytes & 15) ^ 8) - 8  # sign-extend a nibble: 8..15 -> -8..-1
    high = ((as_bytes >> 4) ^ 8) - 8
    return torch.stack((low, high), dim=-1).reshape(packed.shape[0], -1)[:, :length].to(torch.int8)


def pack_int4_torch(values: torch.Tensor) -> torch.Tensor:
    """Packed int4 bytes [rows, length/2] (uint8) from int8 [rows, length], length even."""
    nibbles = (values.to(torch.int16) & 15).reshape(values.shape[0], -1, 2)
    return (nibbles[..., 0] | (nibbles[..., 1] << 4)).to(torch.uint8)


def taps_major_weight(weight: torch.Tensor, weight_shape, packed: bool):
    """(weight rows [OC, KH*KW*tap_stride] in (ky, kx, ci) order, tap_stride): the int8 OIHW
    weight, or the packed flattened-OIHW int4 weight, reordered for the tap loop. Packed taps
    are padded to an even channel count (tap_stride) so each starts on a byte."""
    out_channels, group_channels, kernel_h, kernel_w = weight_shape
    K = group_channels * kernel_h * kernel_w
    if not packed:  # a view, no copy, when the weight is channels_last (OHWI in memory)
        taps = weight.reshape(weight_shape).permute(0, 2, 3, 1)
        return taps.reshape(out_channels, -1), group_channels
    values = unpack_int4_torch(weight, K)
    taps = values.reshape(out_channels, group_channels, kernel_h * kernel_w).transpose(1, 2)
    tap_stride = group_channels + group_channels % 2
    padded = torch.nn.functional.pad(taps, (0, tap_stride - group_channels))
    return pack_int4_torch(padded.reshape(out_channels, -1)).view(torch.int8), tap_stride


def qconv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *, weight_shape,
            stride, padding, dilation, groups: int, input_zero_point: int, output_zero_point: int,
            multiplier: torch.Tensor, shift: torch.Tensor, act_min: int, act_max: int,
            rounding: str = "double") -> torch.Tensor:
    """Launches qconv2d_kernel. x int8 [N, C, H, W] (any strides, channels_last included);
    weight int8 [OC, C/g, KH, KW] or uint8 packed [OC, ceil(C/g*KH*KW/2)]. The output has x's
    memory format."""
    batch, channels, height, width = x.shape
    out_channels, group_channels, kernel_h, kernel_w = weight_shape
    top, bottom, left, right = padding
    out_h = conv2d_output_size(height, kernel_h, stride[0], top, bottom, dilation[0])
    out_w = conv2d_output_size(width, kernel_w, stride[1], left, right, dilation[1])
    K = group_channels * kernel_h * kernel_w
    channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) \
        and not x.is_contiguous()
    y = torch.empty((batch, out_channels, out_h, out_w), dtype=torch.int8, device=x.device,
                    memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    M = batch * out_h * out_w
    if M == 0 or out_channels == 0:
        return y
    packed = weight.dtype == torch.uint8
    w, tap_stride = taps_major_weight(weight, weight_shape, packed)
    multiplier = multiplier.contiguous()
    shift = shift.contiguous()
    group_oc = out_channels // groups
    taps = kernel_h * kernel_w
    column_term = None if bias is None else bias.contiguous()
    tap_correction = not -128 <= input_zero_point <= 127
    if tap_correction:  # padded cells load 0; per-tap weight sums for the epilogue
        tap_sums = row_sums(w.reshape(out_channels * taps, -1), tap_stride, packed=packed)
    else:  # padded cells load z_x; column_term = bias - z_x * sum_k w
        tap_sums = multiplier  # unused
        if input_zero_point != 0:
            column_term = row_sums(w, taps * tap_stride, packed=packed,
                                   scale=-input_zero_point, offset=column_term)
    def grid(meta):
        return (triton.cdiv(M, meta["BLOCK_M"]), triton.cdiv(group_oc, meta["BLOCK_N"]), groups)

    qconv2d_kernel[grid](
        x, w, column_term if column_term is not None else multiplier, multiplier, shift,
        tap_sums, y,
        M, height, width, out_h, out_w, group_channels, group_oc, tap_stride, w.shape[1],
        x.stride(0), x.stride(1), x.stride(2), x.stride(3), w.stride(0),
        y.stride(0), y.stride(1), y.stride(2), y.stride(3),
        0 if multiplier.numel() == 1 else 1,
        stride[0], stride[1], top, left, dilation[0], dilation[1],
        input_zero_point, 0 if tap_correction else input_zero_point, output_zero_point,
        act_min, act_max, KH=kernel_h, KW=kernel_w,
        HAS_COLUMN_TERM=column_term is not None, TAP_CORRECTION=tap_correction, PACKED=packed,
        SINGLE_ROUNDING=rounding == "single", LONG_K=K > MAX_EXACT_DOT_LENGTH,
    )
    return y
