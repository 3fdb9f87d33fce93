"""Implicit-GEMM int8 (or packed int4) 2-D convolution with the fused requantization epilogue.

The convolution of one group is a GEMM  y[m, oc] = sum_k x_col[m, k] * w[oc, k]  with
    m = (n, oh, ow)          over N*OH*OW output positions,
    k = (ci, ky, kx)         over C/groups*KH*KW taps, the flattened OIHW weight row,
    x_col[m, k] = x[n, g*C/groups + ci, oh*sh - top + ky*dh, ow*sw - left + kx*dw].
No im2col tensor exists: each program decomposes its BLOCK_M output positions and each BLOCK_K
slice of taps into indices and gathers the x tile straight from the activation (NCHW or
channels_last, through its strides) into registers, then tl.dot(int8, int8) -> int32.
Grid: (M tiles, OC/groups tiles, groups); depthwise is groups = C with K = KH*KW.

Zero point and padding: the spec is sum_k w * (x - z_x) over the in-image taps only.
  * z_x in int8 (the usual case): a padded tap is loaded as z_x itself, so every tap holds
    (x - z_x) + z_x, and acc = dot(x_col, w) - z_x * sum_k w; padded taps cancel exactly.
  * z_x outside int8 (legal in the spec): padded taps are loaded as 0 and a second int8 dot of
    the 0/1 in-image mask with w gives sum over in-image taps of w per output position:
    acc = dot(x_col, w) - z_x * dot(inside, w). Exact, at twice the MMA work.
Everything after the dot is int64 and wrapped to int32 once, as in gemm.py.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .configs import conv_configs
from .fixedpoint import requantize, wrap_int32
from .gemm import load_weight_tile_kn


@triton.autotune(configs=conv_configs(),
                 key=["M", "GROUP_OC", "K", "KH", "KW", "PACKED", "PAD_WITH_ZERO_POINT"])
@triton.jit
def qconv2d_kernel(
    x_ptr, w_ptr, bias_ptr, multiplier_ptr, shift_ptr, y_ptr,
    M, H, W, OH, OW, GROUP_C, GROUP_OC, K, n_bytes,
    stride_xn, stride_xc, stride_xh, stride_xw, stride_wo, stride_wk,
    stride_yn, stride_yc, stride_yh, stride_yw, stride_requant,
    conv_stride_h, conv_stride_w, pad_top, pad_left, dilation_h, dilation_w,
    input_zero_point, output_zero_point, act_min, act_max,
    KH: tl.constexpr, KW: tl.constexpr,
    HAS_BIAS: tl.constexpr, PACKED: tl.constexpr, PAD_WITH_ZERO_POINT: tl.constexpr,
    SINGLE_ROUNDING: tl.constexpr,
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
    x_rows = x_ptr + batch * stride_xn + group * GROUP_C * stride_xc

    offs_oc = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # within the group
    out_channel = group * GROUP_OC + offs_oc
    oc_valid = offs_oc < GROUP_OC
    w_rows = tl.where(oc_valid, out_channel, 0)  # rows past the group are masked via GROUP_OC

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    correction = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)  # sum of w over in-image taps
    w_sum = tl.zeros((BLOCK_N,), dtype=tl.int32)                # sum of w over all taps
    for k_start in range(0, K, BLOCK_K):
        # Taps of this slice: k -> (ci, ky, kx), the OIHW flattening of the weight row.
        offs_k = k_start + tl.arange(0, BLOCK_K)
        in_channel = offs_k // (KH * KW)
        ky = (offs_k % (KH * KW)) // KW
        kx = offs_k % KW
        in_y = in_y0[:, None] + (ky * dilation_h)[None, :]
        in_x = in_x0[:, None] + (kx * dilation_w)[None, :]
        valid = m_valid[:, None] & (offs_k < K)[None, :]
        inside = valid & (in_y >= 0) & (in_y < H) & (in_x >= 0) & (in_x < W)
        x = tl.load(x_rows[:, None] + in_channel[None, :] * stride_xc + in_y * stride_xh
                    + in_x * stride_xw, mask=inside, other=0)
        w = load_weight_tile_kn(w_ptr + group * GROUP_OC * stride_wo, offs_oc, k_start,
                                GROUP_OC, K, stride_wo, stride_wk, n_bytes, PACKED, BLOCK_K)
        if PAD_WITH_ZERO_POINT:
            x = tl.where(inside, x, input_zero_point).to(tl.int8)
            w_sum += tl.sum(w.to(tl.int32), axis=0)
        else:
            correction += tl.dot(inside.to(tl.int8), w, out_dtype=tl.int32)
        acc += tl.dot(x, w, out_dtype=tl.int32)

    if PAD_WITH_ZERO_POINT:
        total = acc.to(tl.int64) - w_sum.to(tl.int64)[None, :] * input_zero_point
    else:
        total = acc.to(tl.int64) - correction.to(tl.int64) * input_zero_point
    if HAS_BIAS:
        total += tl.load(bias_ptr + w_rows, mask=oc_valid, other=0).to(tl.int64)[None, :]
    total = wrap_int32(total)
    multiplier = tl.load(multiplier_ptr + w_rows * stride_requant, mask=oc_valid, other=0)
    shift = tl.load(shift_ptr + w_rows * stride_requant, mask=oc_valid, other=0)
    y = requantize(total, multiplier.to(tl.int64)[None, :], shift.to(tl.int64)[None, :],
                   output_zero_point, act_min, act_max, SINGLE_ROUNDING)
    out_y = spatial // OW
    out_x = spatial % OW
    y_offsets = (batch * stride_yn + out_y * stride_yh + out_x * stride_yw)[:, None] \
        + (w_rows * stride_yc)[None, :]
    tl.store(y_ptr + y_offsets, y, mask=m_valid[:, None] & oc_valid[None, :])


def conv2d_output_size(size, kernel, stride, pad_before, pad_after, dilation):
    return (size + pad_before + pad_after - dilation * (kernel - 1) - 1) // stride + 1


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
    packed = weight.dtype == torch.uint8
    w = weight.view(torch.int8) if packed else weight.reshape(out_channels, K)
    channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) \
        and not x.is_contiguous()
    y = torch.empty((batch, out_channels, out_h, out_w), dtype=torch.int8, device=x.device,
                    memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    M = batch * out_h * out_w
    if M == 0 or out_channels == 0:
        return y
    multiplier = multiplier.contiguous()
    shift = shift.contiguous()
    group_oc = out_channels // groups
    any_padding = any(p > 0 for p in padding)
    pad_with_zero_point = (-128 <= input_zero_point <= 127) or not any_padding
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]), triton.cdiv(group_oc, meta["BLOCK_N"]),  # noqa: E731
                         groups)
    qconv2d_kernel[grid](
        x, w, bias if bias is not None else multiplier, multiplier, shift, y,
        M, height, width, out_h, out_w, group_channels, group_oc, K, w.shape[1],
        x.stride(0), x.stride(1), x.stride(2), x.stride(3), w.stride(0), w.stride(1),
        y.stride(0), y.stride(1), y.stride(2), y.stride(3),
        0 if multiplier.numel() == 1 else 1,
        stride[0], stride[1], top, left, dilation[0], dilation[1],
        input_zero_point, output_zero_point, act_min, act_max,
        KH=kernel_h, KW=kernel_w,
        HAS_BIAS=bias is not None, PACKED=packed, PAD_WITH_ZERO_POINT=pad_with_zero_point,
        SINGLE_ROUNDING=rounding == "single",
    )
    return y
