"""STE backward of qlinear and qconv2d in fp32 (IEEE fp32 tl.dot, fp32 accumulation).

Autograd sees y_real = s_y * (y - z_y); grad_output is dL/dy_real. With the clamp mask
g = grad_output * [act_min < y < act_max] and per-sample weights alpha (None = ones):

    grad_weight[c, k] = s_x * sum_i alpha_i * g[i, c] * (x[i, k] - z_x)
    grad_bias[c]      = sum_i alpha_i * g[i, c]
    grad_input[i, k]  = sum_c g[i, c] * s_w[c] * w[c, k]

alpha enters the weight and bias reductions only; the input gradient stays per-sample, so a
network whose every layer fuses alpha into its own reduction gets the gradient of
sum_i alpha_i L_i with alpha applied exactly once (the semantics of the Numba backend).
grad_bias is always returned; grad_weight and grad_input only where asked for.

The mask, alpha and s_w are applied to tiles in registers on their way into the dot: no
masked, reweighted or dequantized copy of anything is written to memory. Convolution runs the
same sums as implicit GEMMs: the weight gradient reduces over m = (n, oh, ow) with the input
gathered as in conv.py (padding taps are real zeros), and the input gradient is a transposed
convolution that gathers, for each input cell, the output cells whose windows cover it.
grad_bias is accumulated by the programs of the first K tile of the weight-gradient kernel
(launched with one K tile and no dot when only grad_bias is needed).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .configs import backward_configs
from .fixedpoint import load_int4_gather


@triton.jit
def masked_grad(grad_ptr, out_ptr, offsets, valid, act_min, act_max):
    """grad_output where act_min < y < act_max (and `valid`), else 0; fp32."""
    grad = tl.load(grad_ptr + offsets, mask=valid, other=0.0).to(tl.float32)
    y = tl.load(out_ptr + offsets, mask=valid, other=0).to(tl.int32)
    return tl.where(valid & (y > act_min) & (y < act_max), grad, 0.0)


@triton.jit
def load_weight_values(w_ptr, rows, cols, row_stride, col_stride, mask, PACKED: tl.constexpr):
    """Weight values w[rows, cols] as fp32 (packed int4 gathered nibble by nibble)."""
    if PACKED:
        values = load_int4_gather(w_ptr, rows, cols, row_stride, mask)
        return tl.where(mask, values, 0).to(tl.float32)
    else:
        return tl.load(w_ptr + rows * row_stride + cols * col_stride, mask=mask, other=0).to(tl.float32)


# --------------------------------------------------------------------------------------------
# Linear: x [N, IN], weight [OUT, IN], grad/out [N, OUT]
# --------------------------------------------------------------------------------------------


@triton.autotune(configs=backward_configs(), key=["N", "OUT", "IN"])
@triton.jit
def linear_weight_grad_kernel(grad_ptr, out_ptr, x_ptr, alpha_ptr, grad_w_ptr, grad_b_ptr,
                              N, OUT, IN, input_zero_point, input_scale, act_min, act_max,
                              HAS_ALPHA: tl.constexpr, WEIGHT_GRAD: tl.constexpr, BLOCK_M: tl.constexpr,
                              BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # Tile [BLOCK_M output channels c, BLOCK_N input features k], reducing over BLOCK_K samples.
    offs_c = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    bias_acc = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for i_start in range(0, N, BLOCK_K):
        offs_i = i_start + tl.arange(0, BLOCK_K)
        i_valid = offs_i < N
        g = masked_grad(grad_ptr, out_ptr, offs_i[None, :] * OUT + offs_c[:, None],
                        i_valid[None, :] & (offs_c < OUT)[:, None], act_min, act_max)  # [c, i]
        if HAS_ALPHA:
            g = g * tl.load(alpha_ptr + offs_i, mask=i_valid, other=0.0)[None, :]
        if WEIGHT_GRAD:
            x_valid = i_valid[:, None] & (offs_k < IN)[None, :]
            x = tl.load(x_ptr + offs_i[:, None] * IN + offs_k[None, :], mask=x_valid, other=0)
            centered = tl.where(x_valid, (x.to(tl.int64) - input_zero_point).to(tl.float32), 0.0)
            acc += tl.dot(g, centered, input_precision="ieee")
        bias_acc += tl.sum(g, axis=1)
    if WEIGHT_GRAD:
        mask = (offs_c < OUT)[:, None] & (offs_k < IN)[None, :]
        tl.store(grad_w_ptr + offs_c[:, None] * IN + offs_k[None, :], acc * input_scale, mask=mask)
    if tl.program_id(1) == 0:
        tl.store(grad_b_ptr + offs_c, bias_acc, mask=offs_c < OUT)


@triton.autotune(configs=backward_configs(), key=["N", "OUT", "IN", "PACKED"])
@triton.jit
def linear_input_grad_kernel(grad_ptr, out_ptr, w_ptr, w_scale_ptr, grad_x_ptr,
                             N, OUT, IN, w_row_stride, stride_scale, act_min, act_max,
                             PACKED: tl.constexpr,
                             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # Tile [BLOCK_M samples i, BLOCK_N input features k], reducing over BLOCK_K output channels.
    offs_i = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for c_start in range(0, OUT, BLOCK_K):
        offs_c = c_start + tl.arange(0, BLOCK_K)
        c_valid = offs_c < OUT
        g = masked_grad(grad_ptr, out_ptr, offs_i[:, None] * OUT + offs_c[None, :],
                        (offs_i < N)[:, None] & c_valid[None, :], act_min, act_max)  # [i, c]
        g = g * tl.load(w_scale_ptr + offs_c * stride_scale, mask=c_valid, other=0.0)[None, :]
        w = load_weight_values(w_ptr, offs_c[:, None], offs_k[None, :], w_row_stride, 1,
                               c_valid[:, None] & (offs_k < IN)[None, :], PACKED)  # [c, k]
        acc += tl.dot(g, w, input_precision="ieee")
    tl.store(grad_x_ptr + offs_i[:, None] * IN + offs_k[None, :], acc,
             mask=(offs_i < N)[:, None] & (offs_k < IN)[None, :])


# --------------------------------------------------------------------------------------------
# Convolution: x [N, C, H, W], weight [OC, C/g * KH * KW] (flattened OIHW), grad/out [N, OC, OH, OW]
# --------------------------------------------------------------------------------------------


@triton.autotune(configs=backward_configs(), key=["M", "GROUP_OC", "K", "KH", "KW"])
@triton.jit
def conv_weight_grad_kernel(grad_ptr, out_ptr, x_ptr, alpha_ptr, grad_w_ptr, grad_b_ptr,
                            M, H, W, OH, OW, GROUP_C, GROUP_OC, K,
                            stride_xn, stride_xc, stride_xh, stride_xw,
                            stride_gn, stride_gc, stride_gh, stride_gw,
                            conv_stride_h, conv_stride_w, pad_top, pad_left, dilation_h, dilation_w,
                            input_zero_point, input_scale, act_min, act_max,
                            KH: tl.constexpr, KW: tl.constexpr, HAS_ALPHA: tl.constexpr,
                            WEIGHT_GRAD: tl.constexpr,
                            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # Tile [BLOCK_M output channels of the group, BLOCK_N taps k = (ci, ky, kx)], reducing
    # over BLOCK_K output positions m = (n, oh, ow). Grid: (OC/g tiles, K tiles, groups).
    group = tl.program_id(2)
    offs_oc = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    oc_valid = offs_oc < GROUP_OC
    channel = group * GROUP_OC + offs_oc
    offs_k = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    k_valid = offs_k < K
    in_channel = group * GROUP_C + offs_k // (KH * KW)
    ky = (offs_k % (KH * KW)) // KW
    kx = offs_k % KW
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    bias_acc = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for m_start in range(0, M, BLOCK_K):
        offs_m = m_start + tl.arange(0, BLOCK_K)
        m_valid = offs_m < M
        batch = offs_m // (OH * OW)
        out_y = (offs_m % (OH * OW)) // OW
        out_x = offs_m % OW
        g_offsets = (batch * stride_gn + out_y * stride_gh + out_x * stride_gw)[None, :] \
            + (channel * stride_gc)[:, None]
        g = masked_grad(grad_ptr, out_ptr, g_offsets, oc_valid[:, None] & m_valid[None, :],
                        act_min, act_max)  # [oc, m]
        if HAS_ALPHA:
            g = g * tl.load(alpha_ptr + batch, mask=m_valid, other=0.0)[None, :]
        if WEIGHT_GRAD:
            in_y = (out_y * conv_stride_h - pad_top)[:, None] + (ky * dilation_h)[None, :]
            in_x = (out_x * conv_stride_w - pad_left)[:, None] + (kx * dilation_w)[None, :]
            inside = m_valid[:, None] & k_valid[None, :] & (in_y >= 0) & (in_y < H) \
                & (in_x >= 0) & (in_x < W)
            x = tl.load(x_ptr + (batch * stride_xn)[:, None] + (in_channel * stride_xc)[None, :]
                        + in_y * stride_xh + in_x * stride_xw, mask=inside, other=0)  # [m, k]
            centered = tl.where(inside, (x.to(tl.int64) - input_zero_point).to(tl.float32), 0.0)
            acc += tl.dot(g, centered, input_precision="ieee")
        bias_acc += tl.sum(g, axis=1)
    if WEIGHT_GRAD:
        tl.store(grad_w_ptr + channel[:, None] * K + offs_k[None, :], acc * input_scale,
                 mask=oc_valid[:, None] & k_valid[None, :])
    if tl.program_id(1) == 0:
        tl.store(grad_b_ptr + channel, bias_acc, mask=oc_valid)


@triton.autotune(configs=backward_configs(), key=["M", "GROUP_C", "GROUP_OC", "KH", "KW", "PACKED"])
@triton.jit
def conv_input_grad_kernel(grad_ptr, out_ptr, w_ptr, w_scale_ptr, grad_x_ptr,
                           M, H, W, OH, OW, GROUP_C, GROUP_OC, K, w_row_stride, stride_scale,
                           stride_gn, stride_gc, stride_gh, stride_gw,
                           stride_dn, stride_dc, stride_dh, stride_dw,
                           conv_stride_h, conv_stride_w, pad_top, pad_left, dilation_h, dilation_w,
                           act_min, act_max,
                           KH: tl.constexpr, KW: tl.constexpr,
                           PACKED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                           BLOCK_K: tl.constexpr):
    # Transposed convolution as an implicit GEMM. Tile [BLOCK_M input cells m = (n, h, w),
    # BLOCK_N input channels of the group], reducing over r = (oc, ky, kx) in the group:
    # input cell h is hit by tap ky of output row oh iff h + top - ky*dh = oh*sh, 0 <= oh < OH.
    group = tl.program_id(2)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    m_valid = offs_m < M
    batch = offs_m // (H * W)
    in_y = (offs_m % (H * W)) // W
    in_x = offs_m % W
    offs_ci = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    ci_valid = offs_ci < GROUP_C
    R = GROUP_OC * KH * KW
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for r_start in range(0, R, BLOCK_K):
        offs_r = r_start + tl.arange(0, BLOCK_K)
        r_valid = offs_r < R
        channel = group * GROUP_OC + offs_r // (KH * KW)
        ky = (offs_r % (KH * KW)) // KW
        kx = offs_r % KW
        # Candidate output cell, tested for divisibility on non-negative values only.
        num_y = in_y[:, None] + pad_top - (ky * dilation_h)[None, :]
        num_x = in_x[:, None] + pad_left - (kx * dilation_w)[None, :]
        safe_y = tl.where(num_y >= 0, num_y, 0)
        safe_x = tl.where(num_x >= 0, num_x, 0)
        out_y = safe_y // conv_stride_h
        out_x = safe_x // conv_stride_w
        hit = m_valid[:, None] & r_valid[None, :] & (num_y >= 0) & (num_x >= 0) \
            & (out_y * conv_stride_h == safe_y) & (out_x * conv_stride_w == safe_x) \
            & (out_y < OH) & (out_x < OW)
        g_offsets = (batch * stride_gn)[:, None] + (channel * stride_gc)[None, :] \
            + out_y * stride_gh + out_x * stride_gw
        g = masked_grad(grad_ptr, out_ptr, g_offsets, hit, act_min, act_max)  # [m, r]
        g = g * tl.load(w_scale_ptr + channel * stride_scale, mask=r_valid, other=0.0)[None, :]
        # w[oc, ci, ky, kx] at column ci*KH*KW + ky*KW + kx of row oc.
        w_cols = offs_ci[None, :] * (KH * KW) + (ky * KW + kx)[:, None]
        w = load_weight_values(w_ptr, channel[:, None], w_cols, w_row_stride, 1,
                               r_valid[:, None] & ci_valid[None, :], PACKED)  # [r, ci]
        acc += tl.dot(g, w, input_precision="ieee")
    d_offsets = (batch * stride_dn + in_y * stride_dh + in_x * stride_dw)[:, None] \
        + ((group * GROUP_C + offs_ci) * stride_dc)[None, :]
    tl.store(grad_x_ptr + d_offsets, acc, mask=m_valid[:, None] & ci_valid[None, :])


# --------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------


def _alpha(sample_weights, like):
    if sample_weights is None:
        return like, False
    return sample_weights.to(torch.float32).contiguous(), True


def _scales(weight_scales, device):
    scales = torch.as_tensor(weight_scales, dtype=torch.float32, device=device).reshape(-1).contiguous()
    return scales, (0 if scales.numel() == 1 else 1)


def qlinear_backward(grad_output, output, x, weight, *, in_features, input_zero_point, input_scale,
                     weight_scales, act_min, act_max, sample_weights=None, needs_input_grad=True,
                     needs_weight_grad=True):
    """(grad_input [N, IN] or None, grad_weight [OUT, IN] or None, grad_bias [OUT]), fp32."""
    grad_output = grad_output.to(torch.float32).contiguous()
    output = output.contiguous()
    x = x.contiguous()
    N, IN = x.shape
    OUT = output.shape[1]
    alpha, has_alpha = _alpha(sample_weights, grad_output)
    device = x.device
    grad_input = grad_weight = None
    grad_bias = torch.zeros((OUT,), dtype=torch.float32, device=device)
    if needs_weight_grad:
        grad_weight = torch.zeros((OUT, IN), dtype=torch.float32, device=device)
    if OUT:
        weight_grad = needs_weight_grad and IN > 0
        grid = lambda meta: (triton.cdiv(OUT, meta["BLOCK_M"]),  # noqa: E731
                             triton.cdiv(IN, meta["BLOCK_N"]) if weight_grad else 1)
        dummy = grad_weight if grad_weight is not None else grad_bias
        linear_weight_grad_kernel[grid](grad_output, output, x, alpha, dummy, grad_bias,
                                        N, OUT, IN, input_zero_point, float(input_scale),
                                        act_min, act_max, HAS_ALPHA=has_alpha,
                                        WEIGHT_GRAD=weight_grad)
    if needs_input_grad:
        grad_input = torch.zeros((N, IN), dtype=torch.float32, device=device)
        packed = weight.dtype == torch.uint8
        w = (weight.view(torch.int8) if packed else weight).contiguous()
        scales, scale_stride = _scales(weight_scales, device)
        if N and IN:
            grid = lambda meta: (triton.cdiv(N, meta["BLOCK_M"]), triton.cdiv(IN, meta["BLOCK_N"]))  # noqa: E731
            linear_input_grad_kernel[grid](grad_output, output, w, scales, grad_input,
                                           N, OUT, IN, w.stride(0), scale_stride, act_min, act_max,
                                           PACKED=packed)
    return grad_input, grad_weight, grad_bias


def qconv2d_backward(grad_output, output, x, weight, *, weight_shape, stride, padding, dilation,
                     groups, input_zero_point, input_scale, weight_scales, act_min, act_max,
                     sample_weights=None, needs_input_grad=True, needs_weight_grad=True):
    """(grad_input like x or None, grad_weight [OC, C/g, KH, KW] or None, grad_bias [OC]), fp32."""
    batch, channels, height, width = x.shape
    out_channels, group_channels, kernel_h, kernel_w = weight_shape
    out_h, out_w = output.shape[2], output.shape[3]
    K = group_channels * kernel_h * kernel_w
    group_oc = out_channels // groups
    grad_output = grad_output.to(torch.float32)
    if output.stride() != grad_output.stride():
        output, grad_output = output.contiguous(), grad_output.contiguous()
    alpha, has_alpha = _alpha(sample_weights, grad_output)
    device = x.device
    top, left = padding[0], padding[2]
    grad_input = grad_weight = None
    grad_bias = torch.zeros((out_channels,), dtype=torch.float32, device=device)
    if needs_weight_grad:
        grad_weight = torch.zeros((out_channels, K), dtype=torch.float32, device=device)
    M = batch * out_h * out_w
    if M and out_channels:
        grid = lambda meta: (triton.cdiv(group_oc, meta["BLOCK_M"]),  # noqa: E731
                             triton.cdiv(K, meta["BLOCK_N"]) if needs_weight_grad else 1, groups)
        conv_weight_grad_kernel[grid](
            grad_output, output, x, alpha, grad_weight if needs_weight_grad else grad_bias, grad_bias,
            M, height, width, out_h, out_w, group_channels, group_oc, K,
            *x.stride(), *grad_output.stride(), stride[0], stride[1], top, left,
            dilation[0], dilation[1], input_zero_point, float(input_scale), act_min, act_max,
            KH=kernel_h, KW=kernel_w, HAS_ALPHA=has_alpha, WEIGHT_GRAD=needs_weight_grad)
    if needs_weight_grad:
        grad_weight = grad_weight.reshape(weight_shape)
    if needs_input_grad:
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        grad_input = torch.zeros_like(x, dtype=torch.float32,
                                      memory_format=torch.channels_last if channels_last
                                      else torch.contiguous_format)
        packed = weight.dtype == torch.uint8
        w = (weight.view(torch.int8) if packed else weight.reshape(out_channels, K)).contiguous()
        scales, scale_stride = _scales(weight_scales, device)
        M_in = batch * height * width
        if M_in and channels:
            grid = lambda meta: (triton.cdiv(M_in, meta["BLOCK_M"]),  # noqa: E731
                                 triton.cdiv(group_channels, meta["BLOCK_N"]), groups)
            conv_input_grad_kernel[grid](
                grad_output, output, w, scales, grad_input,
                M_in, height, width, out_h, out_w, group_channels, group_oc, K, w.stride(0),
                scale_stride, *grad_output.stride(), *grad_input.stride(),
                stride[0], stride[1], top, left, dilation[0], dilation[1], act_min, act_max,
                KH=kernel_h, KW=kernel_w, PACKED=packed)
    return grad_input, grad_weight, grad_bias
