"""TFLite int8 ADD and int8 average pooling: one element (or output cell) per lane, BLOCK
lanes per program over the flattened output."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .configs import elementwise_block
from .fixedpoint import multiply_by_quantized_multiplier, requantize


@triton.jit
def rescale_input(values, zero_point, multiplier, shift, left_shift,
                  SINGLE_ROUNDING: tl.constexpr):
    """ADD's per-input rescale: ((q - z) << left_shift, wrapping int32) * M_in."""
    centered = values.to(tl.int32) - zero_point
    return multiply_by_quantized_multiplier(centered << left_shift, multiplier, shift,
                                            SINGLE_ROUNDING)


@triton.jit
def qadd_kernel(a_ptr, b_ptr, y_ptr, numel,
                a_zero_point, a_multiplier, a_shift, b_zero_point, b_multiplier, b_shift,
                left_shift, output_zero_point, output_multiplier, output_shift, act_min, act_max,
                SINGLE_ROUNDING: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    a = tl.load(a_ptr + offs, mask=mask, other=0)
    b = tl.load(b_ptr + offs, mask=mask, other=0)
    # The scalar parameters as int32 tensors of the block's shape, as the primitives take.
    zeros = tl.zeros((BLOCK,), dtype=tl.int32)
    raw_sum = rescale_input(a, a_zero_point, zeros + a_multiplier, zeros + a_shift,
                            zeros + left_shift, SINGLE_ROUNDING) \
        + rescale_input(b, b_zero_point, zeros + b_multiplier, zeros + b_shift, zeros + left_shift,
                        SINGLE_ROUNDING)
    y = requantize(raw_sum, zeros + output_multiplier, zeros + output_shift, output_zero_point,
                   act_min, act_max, SINGLE_ROUNDING)
    tl.store(y_ptr + offs, y, mask=mask)


@triton.jit
def qavg_pool2d_kernel(x_ptr, y_ptr, numel, C, H, W, OH, OW,
                       stride_xn, stride_xc, stride_xh, stride_xw,
                       stride_yn, stride_yc, stride_yh, stride_yw,
                       pool_stride_h, pool_stride_w, pad_top, pad_left, act_min, act_max,
                       KH: tl.constexpr, KW: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # flat NCHW output index
    mask = offs < numel
    out_x = offs % OW
    out_y = (offs // OW) % OH
    channel = (offs // (OW * OH)) % C
    batch = offs // (OW * OH * C)
    y0 = out_y * pool_stride_h - pad_top
    x0 = out_x * pool_stride_w - pad_left
    base = x_ptr + batch * stride_xn + channel * stride_xc
    total = tl.zeros((BLOCK,), dtype=tl.int32)
    for ky in tl.static_range(KH):
        for kx in tl.static_range(KW):
            iy = y0 + ky
            ix = x0 + kx
            inside = mask & (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
            total += tl.load(base + iy * stride_xh + ix * stride_xw, mask=inside, other=0).to(tl.int32)
    # Divisor: cells of the window inside the input.
    count = (tl.minimum(y0 + KH, H) - tl.maximum(y0, 0)) * (tl.minimum(x0 + KW, W) - tl.maximum(x0, 0))
    count = tl.maximum(count, 1)  # only reached by masked lanes; every real window overlaps
    # TFLM: (total +/- count/2) / count in C (truncating) division. Divide magnitudes only
    # (non-negative // is the same compiled and interpreted), then restore the sign.
    half = count // 2
    magnitude = (tl.abs(total) + half) // count
    average = tl.where(total > 0, magnitude, -magnitude)
    average = tl.minimum(tl.maximum(average, act_min), act_max)
    tl.store(y_ptr + batch * stride_yn + channel * stride_yc + out_y * stride_yh + out_x * stride_yw,
             average.to(tl.int8), mask=mask)


def qadd(a: torch.Tensor, b: torch.Tensor, **params) -> torch.Tensor:
    a = a.contiguous()
    b = b.contiguous()
    y = torch.empty_like(a)
    numel = a.numel()
    if numel == 0:
        return y
    block = elementwise_block()
    qadd_kernel[(triton.cdiv(numel, block),)](
        a, b, y, numel, params["a_zero_point"], params["a_multiplier"], params["a_shift"],
        params["b_zero_point"], params["b_multiplier"], params["b_shift"], params["left_shift"],
        params["output_zero_point"], params["output_multiplier"], params["output_shift"],
        params["act_min"], params["act_max"], SINGLE_ROUNDING=params.get("rounding") == "single",
        BLOCK=block)
    return y


def qavg_pool2d(x: torch.Tensor, *, kernel_size, stride, padding, act_min: int,
                act_max: int) -> torch.Tensor:
    batch, channels, height, width = x.shape
    top, bottom, left, right = padding
    out_h = (height + top + bottom - kernel_size[0]) // stride[0] + 1
    out_w = (width + left + right - kernel_size[1]) // stride[1] + 1
    y = torch.empty((batch, channels, out_h, out_w), dtype=torch.int8, device=x.device)
    numel = y.numel()
    if numel == 0:
        return y
    block = elementwise_block()
    qavg_pool2d_kernel[(triton.cdiv(numel, block),)](
        x, y, numel, channels, height, width, out_h, out_w,
        x.stride(0), x.stride(1), x.stride(2), x.stride(3),
        y.stride(0), y.stride(1), y.stride(2), y.stride(3),
        stride[0], stride[1], top, left, act_min, act_max,
        KH=kernel_size[0], KW=kernel_size[1], BLOCK=block)
    return y
