"""int8 x int8 (or packed int4) GEMM with the fused TFLite requantization epilogue: qlinear.

    y[m, n] = requantize(sum_k (w[n, k] - z_w) * (x[m, k] - z_x) + bias[n])

Tiling (as in Triton's matmul tutorial): each program owns a BLOCK_M x BLOCK_N tile of y and
walks K in BLOCK_K steps, accumulating tl.dot(int8, int8) -> int32 on the tensor cores. Program
ids are grouped GROUP_M tiles down M so neighbouring programs reuse the same weight columns.

Zero points. x and w are fed to the MMA as they are (int8), never centred: (x - z_x) may leave
int8 for an arbitrary int32 z_x. The zero points are folded into corrections, exactly in
wrapping int32 (all terms are reduced modulo 2**32, which commutes with + and *):

    acc = sum w*x - z_x * sum_k w[n, k] - z_w * sum_k x[m, k] + K * z_w * z_x + bias[n]

sum_k w and sum_k x are accumulated in registers from the tiles already loaded for the dot.
The constant K * z_w * z_x is folded into one wrapped int32 on the host.

Packed int4 weights ([OUT, ceil(K/2)] bytes) are loaded as BLOCK_K/2 bytes per row and unpacked
in registers (mask, sign-extend, interleave) to an int8 tile before tl.dot: Hopper has no int4
MMA, the saving is half the weight bytes read, which is what limits small-M GEMMs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .configs import gemm_configs
from .fixedpoint import requantize, unpack_int4_rows, wrap_int32


@triton.jit
def load_weight_tile_kn(w_ptr, offs_n, k_start, N, K, stride_wn, stride_wk, n_bytes,
                        PACKED: tl.constexpr, BLOCK_K: tl.constexpr):
    """The int8 weight tile [BLOCK_K, BLOCK_N] (K-major, as tl.dot's right operand) of rows
    offs_n, columns k_start..k_start+BLOCK_K; zeros outside [N, K)."""
    if PACKED:
        tile = unpack_int4_rows(w_ptr, offs_n, stride_wn, k_start // 2, N, n_bytes, K, BLOCK_K)
        return tl.trans(tile)
    else:
        offs_k = k_start + tl.arange(0, BLOCK_K)
        mask = (offs_k[:, None] < K) & (offs_n[None, :] < N)
        return tl.load(w_ptr + offs_k[:, None] * stride_wk + offs_n[None, :] * stride_wn,
                       mask=mask, other=0)


@triton.autotune(configs=gemm_configs(), key=["M", "N", "K", "PACKED", "HAS_WZP"])
@triton.jit
def qlinear_kernel(
    x_ptr, w_ptr, bias_ptr, multiplier_ptr, shift_ptr, y_ptr,
    M, N, K, n_bytes,
    stride_xm, stride_xk, stride_wn, stride_wk, stride_ym, stride_yn, stride_requant,
    input_zero_point, weight_zero_point, zero_point_product, output_zero_point, act_min, act_max,
    HAS_BIAS: tl.constexpr, PACKED: tl.constexpr, HAS_WZP: tl.constexpr,
    SINGLE_ROUNDING: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # Grouped program order: GROUP_M row-tiles share each column-tile for L2 reuse.
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_in_group = GROUP_M * num_pid_n
    first_m = (pid // num_in_group) * GROUP_M
    group_size = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % num_in_group) % group_size
    pid_n = (pid % num_in_group) // group_size

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    w_sum = tl.zeros((BLOCK_N,), dtype=tl.int32)  # sum_k w[n, k], for the z_x correction
    x_sum = tl.zeros((BLOCK_M,), dtype=tl.int32)  # sum_k x[m, k], for the z_w correction
    for k_start in range(0, K, BLOCK_K):
        offs_k = k_start + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk,
                    mask=(offs_m[:, None] < M) & (offs_k[None, :] < K), other=0)
        w = load_weight_tile_kn(w_ptr, offs_n, k_start, N, K, stride_wn, stride_wk, n_bytes,
                                PACKED, BLOCK_K)
        acc += tl.dot(x, w, out_dtype=tl.int32)  # exact int32 MMA, wraps like the spec
        w_sum += tl.sum(w.to(tl.int32), axis=0)
        if HAS_WZP:
            x_sum += tl.sum(x.to(tl.int32), axis=1)

    # Epilogue in int64 (exact), wrapped once to int32: zero-point corrections, bias, requantize.
    total = acc.to(tl.int64) - w_sum.to(tl.int64)[None, :] * input_zero_point
    if HAS_WZP:
        total = total - x_sum.to(tl.int64)[:, None] * weight_zero_point + zero_point_product
    n_mask = offs_n < N
    if HAS_BIAS:
        total += tl.load(bias_ptr + offs_n, mask=n_mask, other=0).to(tl.int64)[None, :]
    total = wrap_int32(total)
    multiplier = tl.load(multiplier_ptr + offs_n * stride_requant, mask=n_mask, other=0)
    shift = tl.load(shift_ptr + offs_n * stride_requant, mask=n_mask, other=0)
    y = requantize(total, multiplier.to(tl.int64)[None, :], shift.to(tl.int64)[None, :],
                   output_zero_point, act_min, act_max, SINGLE_ROUNDING)
    tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :] * stride_yn, y,
             mask=(offs_m[:, None] < M) & n_mask[None, :])


def wrap_int32_host(value: int) -> int:
    """A Python int reduced modulo 2**32 into the int32 range."""
    return ((value + 2**31) % 2**32) - 2**31


def qlinear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *, in_features: int,
            input_zero_point: int, output_zero_point: int, multiplier: torch.Tensor,
            shift: torch.Tensor, act_min: int, act_max: int, weight_zero_point: int = 0,
            rounding: str = "double") -> torch.Tensor:
    """Launches qlinear_kernel. x int8 [M, K]; weight int8 [N, K] or uint8 packed [N, ceil(K/2)]."""
    M, K = x.shape
    N = weight.shape[0]
    packed = weight.dtype == torch.uint8
    w = weight.view(torch.int8) if packed else weight
    y = torch.empty((M, N), dtype=torch.int8, device=x.device)
    if M == 0 or N == 0:
        return y
    multiplier = multiplier.contiguous()
    shift = shift.contiguous()
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)  # noqa: E731
    qlinear_kernel[grid](
        x, w, bias if bias is not None else multiplier, multiplier, shift, y,
        M, N, K, w.shape[1],
        x.stride(0), x.stride(1), w.stride(0), w.stride(1), y.stride(0), y.stride(1),
        0 if multiplier.numel() == 1 else 1,
        input_zero_point, weight_zero_point,
        wrap_int32_host(K * weight_zero_point * input_zero_point), output_zero_point,
        act_min, act_max,
        HAS_BIAS=bias is not None, PACKED=packed, HAS_WZP=weight_zero_point != 0,
        SINGLE_ROUNDING=rounding == "single",
    )
    return y
