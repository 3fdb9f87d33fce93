"""int8 x int8 (or packed int4) GEMM with the fused TFLite requantization epilogue: qlinear.

    y[m, n] = requantize(sum_k (w[n, k] - z_w) * (x[m, k] - z_x) + bias[n])

Tiling (as in Triton's matmul tutorial): each program owns a BLOCK_M x BLOCK_N tile of y and
walks K in BLOCK_K steps, accumulating tl.dot(int8, int8) -> int32 on the tensor cores. Program
ids are grouped GROUP_M tiles down M so neighbouring programs reuse the same weight columns.

Zero points. x and w are fed to the MMA as they are (int8), never centred: (x - z_x) may leave
int8 for an arbitrary int32 z_x. The zero points are folded into corrections, exactly in
wrapping int32 (all terms are reduced modulo 2**32, which commutes with + and *):

    acc = sum w*x + column_term[n] - z_w * sum_k x[m, k] + K * z_w * z_x
    column_term[n] = bias[n] - z_x * sum_k w[n, k]

The row sums come from a separate pass (row_sums_kernel, which also folds the bias into the
column term): summed in the main loop they keep every tile in registers as well as in shared
memory, and the compiled kernel spills (benchmarks/triton_compile_report.py). Small M is the
exception (ONES_ROW): the x tile has rows to spare, one of them is set to ones, and the MMA
sums the weights for free, where a separate pass would read the weights twice. One column vector
in the epilogue instead of two also saves registers. The constant K * z_w * z_x is folded into
one wrapped int32 on the host.

Overflow. The spec's int32 accumulator wraps; the MMA's need not (sm_80-style mma.sync is
emitted with .satfinite and saturates). K is therefore walked in chunks short enough that their
sum of products cannot overflow (fixedpoint.exact_dot_length), each added to the total in
wrapping int32 (LONG_K); below K = 131072 no sum can overflow and the loop is the plain one.

Packed int4 weights ([OUT, ceil(K/2)] bytes) are loaded as BLOCK_K/2 bytes per row and unpacked
in registers (mask, sign-extend, interleave) to an int8 tile before tl.dot: Hopper has no int4
MMA, the saving is half the weight bytes read, which is what limits small-M GEMMs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .configs import gemm_configs, row_sum_blocks, smallest_gemm_block_m
from .fixedpoint import MAX_EXACT_DOT_LENGTH, exact_dot_length, requantize, unpack_int4_rows


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


@triton.jit
def accumulate_products(acc, x_ptr, w_ptr, offs_m, offs_n, k_begin, k_end, M, N, K, n_bytes,
                        stride_xm, stride_xk, stride_wn, stride_wk,
                        PACKED: tl.constexpr, ONES_ROW: tl.constexpr, BLOCK_K: tl.constexpr):
    """acc + sum over k in [k_begin, k_end) of x[m, k] * w[n, k]: int8 MMAs into int32. With
    ONES_ROW, row M of the x tile (past the last real row) is all ones, so that row M of acc
    collects the weight row sums sum_k w[n, k] on the tensor cores."""
    for k_start in range(k_begin, k_end, BLOCK_K):
        offs_k = k_start + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk,
                    mask=(offs_m[:, None] < M) & (offs_k[None, :] < K), other=0)
        if ONES_ROW:
            x = tl.where((offs_m[:, None] == M) & (offs_k[None, :] < K), 1, x).to(tl.int8)
        w = load_weight_tile_kn(w_ptr, offs_n, k_start, N, K, stride_wn, stride_wk, n_bytes,
                                PACKED, BLOCK_K)
        acc = tl.dot(x, w, acc, out_dtype=tl.int32)
    return acc


@triton.jit
def row_sums_kernel(ptr, sums_ptr, offset_ptr, rows, length, n_bytes, row_stride, scale,
                    HAS_OFFSET: tl.constexpr, PACKED: tl.constexpr, BLOCK_R: tl.constexpr,
                    BLOCK_K: tl.constexpr):
    """sums[r] = offset[r] + scale * sum_k v[r, k] in wrapping int32, over an int8 matrix or
    packed int4 rows (the sum itself is exact for length < 2**24)."""
    offs_r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    total = tl.zeros((BLOCK_R,), dtype=tl.int32)
    for k_start in range(0, length, BLOCK_K):
        if PACKED:
            tile = unpack_int4_rows(ptr, offs_r, row_stride, k_start // 2, rows, n_bytes, length,
                                    BLOCK_K)
        else:
            offs_k = k_start + tl.arange(0, BLOCK_K)
            tile = tl.load(ptr + offs_r[:, None] * row_stride + offs_k[None, :],
                           mask=(offs_r[:, None] < rows) & (offs_k[None, :] < length), other=0)
        total += tl.sum(tile.to(tl.int32), axis=1)
    total = total * scale
    if HAS_OFFSET:
        total += tl.load(offset_ptr + offs_r, mask=offs_r < rows, other=0)
    tl.store(sums_ptr + offs_r, total, mask=offs_r < rows)


def row_sums(matrix: torch.Tensor, length: int, *, packed: bool, scale: int = 1,
             offset: torch.Tensor | None = None) -> torch.Tensor:
    """int32 [rows]: offset[r] + scale * (the sum of row r's `length` values), wrapping int32;
    matrix int8 [rows, length], or packed int4 bytes [rows, ceil(length/2)] (uint8 or viewed as
    int8) when `packed`; scale an int32 value, offset int32 [rows] or None (zeros)."""
    rows = matrix.shape[0]
    sums = torch.empty((rows,), dtype=torch.int32, device=matrix.device)
    if rows == 0:
        return sums
    values = matrix.view(torch.int8) if matrix.dtype == torch.uint8 else matrix
    if values.stride(1) != 1:
        values = values.contiguous()
    block_r, block_k = row_sum_blocks()
    row_sums_kernel[(triton.cdiv(rows, block_r),)](
        values, sums, offset if offset is not None else sums, rows, length, values.shape[1],
        values.stride(0), scale, HAS_OFFSET=offset is not None, PACKED=packed, BLOCK_R=block_r,
        BLOCK_K=block_k)
    return sums


@triton.autotune(configs=gemm_configs(),
                 key=["M", "N", "K", "PACKED", "HAS_WZP", "LONG_K", "ONES_ROW"])
@triton.jit
def qlinear_kernel(
    x_ptr, w_ptr, column_term_ptr, multiplier_ptr, shift_ptr, x_sum_ptr, y_ptr,
    M, N, K, n_bytes,
    stride_xm, stride_xk, stride_wn, stride_wk, stride_ym, stride_yn, stride_requant,
    input_zero_point, weight_zero_point, zero_point_product, output_zero_point, act_min, act_max,
    HAS_COLUMN_TERM: tl.constexpr, ONES_ROW: tl.constexpr, PACKED: tl.constexpr,
    HAS_WZP: tl.constexpr,
    SINGLE_ROUNDING: tl.constexpr, LONG_K: tl.constexpr,
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
    if LONG_K:  # chunks that cannot overflow, summed in wrapping int32
        chunk_k = exact_dot_length(BLOCK_K)
        for chunk_start in range(0, K, chunk_k):
            acc += accumulate_products(
                tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32), x_ptr, w_ptr, offs_m, offs_n,
                chunk_start, tl.minimum(chunk_start + chunk_k, K), M, N, K, n_bytes,
                stride_xm, stride_xk, stride_wn, stride_wk, PACKED, ONES_ROW, BLOCK_K)
    else:
        acc = accumulate_products(acc, x_ptr, w_ptr, offs_m, offs_n, 0, K, M, N, K, n_bytes,
                                  stride_xm, stride_xk, stride_wn, stride_wk, PACKED, ONES_ROW,
                                  BLOCK_K)

    # Epilogue in wrapping int32, the spec's arithmetic: zero-point corrections, bias, requantize.
    n_mask = offs_n < N
    total = acc
    if HAS_COLUMN_TERM:  # bias[n] - z_x * sum_k w[n, k], or just bias[n] with ONES_ROW
        total += tl.load(column_term_ptr + offs_n, mask=n_mask, other=0)[None, :]
    if ONES_ROW:  # the weight row sums are row M of acc
        w_sum = tl.sum(tl.where(offs_m[:, None] == M, acc, 0), axis=0)
        total -= w_sum[None, :] * input_zero_point
    if HAS_WZP:
        x_sum = tl.load(x_sum_ptr + offs_m, mask=offs_m < M, other=0)
        total = total - x_sum[:, None] * weight_zero_point + zero_point_product
    multiplier = tl.load(multiplier_ptr + offs_n * stride_requant, mask=n_mask, other=0)
    shift = tl.load(shift_ptr + offs_n * stride_requant, mask=n_mask, other=0)
    y = requantize(total, multiplier[None, :], shift[None, :], output_zero_point, act_min,
                   act_max, SINGLE_ROUNDING)
    tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :] * stride_yn, y,
             mask=(offs_m[:, None] < M) & n_mask[None, :])


# M below this leaves row M free in every config's tile (ONES_ROW).
SMALLEST_BLOCK_M = smallest_gemm_block_m()


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
    # column_term = bias - z_x * sum_k w (or just the bias, or nothing, when z_x = 0). When M
    # leaves a spare row in every tile, the MMA sums the weights (ONES_ROW) and the separate
    # pass, a second read of every weight, is skipped: that read would double a small-M GEMM.
    column_term = None if bias is None else bias.contiguous()
    ones_row = input_zero_point != 0 and M < SMALLEST_BLOCK_M
    if input_zero_point != 0 and not ones_row:
        column_term = row_sums(w, K, packed=packed, scale=wrap_int32_host(-input_zero_point),
                               offset=column_term)
    x_sums = row_sums(x, K, packed=False) if weight_zero_point != 0 else None
    def grid(meta):
        return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)

    qlinear_kernel[grid](
        x, w, column_term if column_term is not None else multiplier, multiplier, shift,
        x_sums if x_sums is not None else multiplier, y,
        M, N, K, w.shape[1],
        x.stride(0), x.stride(1), w.stride(0), w.stride(1), y.stride(0), y.stride(1),
        0 if multiplier.numel() == 1 else 1,
        input_zero_point, weight_zero_point,
        wrap_int32_host(K * weight_zero_point * input_zero_point), output_zero_point, act_min,
        act_max, HAS_COLUMN_TERM=column_term is not None, ONES_ROW=ones_row, PACKED=packed,
        HAS_WZP=weight_zero_point != 0, SINGLE_ROUNDING=rounding == "single",
        LONG_K=K > MAX_EXACT_DOT_LENGTH,
    )
    return y
