"""The "numba" backend: multithreaded Numba CPU kernels (intunlearn.kernels.cpu), bit-exact
with the reference oracle.

Forward ops receive validated, canonical arguments from intunlearn.ops. This module turns the
Python-level parameters into the kernels' form: weights into int16 panels (packed int4 is
unpacked inside the packing kernel), and the zero points and bias into an int32 correction
added in the fused epilogue (see kernels/cpu/int_gemm.py for why that is exact).

Backward functions (qlinear_backward, qconv2d_backward) implement the STE of DESIGN.md with
the per-sample weights fused into the reductions; see their docstrings.
"""

from __future__ import annotations

import numpy as np
import torch

from intunlearn.kernels.cpu import elementwise as _elementwise
from intunlearn.kernels.cpu import int_gemm as _gemm

_MASK32 = 0xFFFFFFFF
_L2_PANEL_BYTES = 256 * 1024  # target size of one thread's activation panel / weight block


def _wrap32(value):
    """Python int or int64 array -> the same value modulo 2**32, as a signed int32 in int64."""
    if isinstance(value, np.ndarray):
        return ((value.astype(np.int64) + 2**31) & _MASK32) - 2**31
    return ((int(value) + 2**31) & _MASK32) - 2**31


def _per_channel(values: torch.Tensor, channels: int) -> np.ndarray:
    array = values.detach().cpu().numpy().astype(np.int64)
    return np.ascontiguousarray(np.broadcast_to(array, (channels,)))


def _weight_panel(weight, groups, group_rows, length):
    """int16 panels [groups, group_rows padded to TILE_N, length padded to K_ALIGN]."""
    rows_padded = _gemm.padded(group_rows, _gemm.TILE_N)
    length_padded = _gemm.padded(length, _gemm.K_ALIGN)
    w = weight.detach().cpu().contiguous().numpy()
    if weight.dtype == torch.uint8:
        return _gemm.pack_weight_int4(w.reshape(w.shape[0], -1), length, groups, group_rows,
                                      rows_padded, length_padded)
    return _gemm.pack_weight_int8(w.reshape(w.shape[0], length), groups, group_rows,
                                  rows_padded, length_padded)


def _threads() -> int:
    import numba
    return numba.get_num_threads()


def _run_conv(x4, panel, bias, *, group_channels, group_rows, length, geometry, height, width,
              input_zero_point, output_zero_point, multiplier, shift, act_min, act_max,
              rounding, row_correction=None, extra_correction=0):
    """Shared driver for qlinear (1x1 conv of a 1x1 image) and qconv2d. Returns int8 numpy
    [N, OC, positions]."""
    groups = panel.shape[0]
    out_channels = groups * group_rows
    positions = geometry[-1]
    batch = x4.shape[0]
    weight_sums = panel[:, :group_rows, :].sum(axis=2, dtype=np.int64).reshape(out_channels)
    bias64 = np.zeros(out_channels, np.int64) if bias is None else bias.cpu().numpy().astype(np.int64)
    z_x = _wrap32(input_zero_point)
    padding = geometry[4] > 0 or geometry[5] > 0 or _has_far_padding(geometry, height, width)
    if -2**15 <= input_zero_point < 2**15 or not padding:
        # Padded taps hold z_x itself, so every tap is corrected by the same -z_x * sum W.
        pad_value = input_zero_point if -2**15 <= input_zero_point < 2**15 else 0
        correction = (bias64 - _wrap32(z_x * weight_sums) + extra_correction)[None, :]
    else:
        # z_x does not fit the int16 panel: padded taps hold 0 and the correction sums only
        # the weights of in-image taps, per output position.
        pad_value = 0
        sums = _gemm.valid_weight_sums(np.ascontiguousarray(panel[:, :group_rows, :]),
                                       group_channels, geometry, height, width)
        correction = bias64[None, :] - _wrap32(_wrap32(sums) * z_x) + extra_correction
    correction = np.ascontiguousarray(_wrap32(correction))
    if row_correction is None:
        row_correction = np.zeros(1, np.int64)
    out = np.empty((batch, out_channels, positions), np.int8)
    length_padded = panel.shape[2]
    rows_per_chunk = max(_gemm.TILE_M, min(256, _L2_PANEL_BYTES // (2 * length_padded))
                         // _gemm.TILE_M * _gemm.TILE_M)
    rows = batch * positions
    chunks = -(-rows // rows_per_chunk)
    rows_padded_w = panel.shape[1]
    channel_blocks = 1
    if chunks * groups < 2 * _threads():  # too few work items: split the output channels too
        channel_blocks = max(1, min(rows_padded_w // _gemm.TILE_N, 2 * _threads()))
    channels_per_block = _gemm.padded(-(-rows_padded_w // channel_blocks), _gemm.TILE_N)
    channel_blocks = -(-rows_padded_w // channels_per_block)
    params = (np.int64(_wrap32(output_zero_point)), np.int64(act_min), np.int64(act_max),
              rounding == "single", np.int64(positions))
    _gemm.conv_requant(x4, panel, correction, row_correction, _per_channel(multiplier, out_channels),
                       _per_channel(shift, out_channels), out, group_channels, length,
                       tuple(np.int64(v) for v in geometry), np.int16(pad_value), params,
                       rows_per_chunk, channel_blocks, channels_per_block)
    return out


def _has_far_padding(geometry, height, width):
    """True when some tap of the last output row/column falls past the bottom/right edge."""
    kernel_h, kernel_w, stride_h, stride_w, top, left, dil_h, dil_w, out_w, positions = geometry
    out_h = positions // out_w
    return ((out_h - 1) * stride_h - top + (kernel_h - 1) * dil_h >= height
            or (out_w - 1) * stride_w - left + (kernel_w - 1) * dil_w >= width)


# --------------------------------------------------------------------------------------------
# Forward ops
# --------------------------------------------------------------------------------------------


def qlinear(x, weight, bias, *, in_features, input_zero_point, output_zero_point, multiplier,
            shift, act_min, act_max, weight_zero_point, rounding):
    """int8 [N, IN] x int8 / packed int4 [OUT, IN] -> int8 [N, OUT] (TFLM FullyConnected).

    The legacy weight zero point z_w is exact too: sum (w - z_w)(x - z_x) = sum w x
    - z_x sum w - z_w sum x + K z_x z_w, all in wrapping int32."""
    x_np = x.detach().cpu().contiguous().numpy()
    batch = x_np.shape[0]
    panel = _weight_panel(weight, 1, weight.shape[0], in_features)
    row_correction, extra = None, 0
    if weight_zero_point != 0:
        z_w = _wrap32(weight_zero_point)
        row_sums = x_np.sum(axis=1, dtype=np.int64)
        row_correction = _wrap32(-_wrap32(row_sums * z_w))
        extra = _wrap32(_wrap32(in_features * _wrap32(input_zero_point)) * z_w)
    geometry = (1, 1, 1, 1, 0, 0, 1, 1, 1, 1)
    out = _run_conv(x_np.reshape(batch, in_features, 1, 1), panel, bias,
                    group_channels=in_features, group_rows=weight.shape[0], length=in_features,
                    geometry=geometry, height=1, width=1, input_zero_point=input_zero_point,
                    output_zero_point=output_zero_point, multiplier=multiplier, shift=shift,
                    act_min=act_min, act_max=act_max, rounding=rounding,
                    row_correction=row_correction, extra_correction=extra)
    return torch.from_numpy(out.reshape(batch, -1)).to(x.device)


def _conv_geometry(x_shape, weight_shape, stride, padding, dilation):
    _, _, height, width = x_shape
    _, _, kernel_h, kernel_w = weight_shape
    top, bottom, left, right = padding
    out_h = (height + top + bottom - dilation[0] * (kernel_h - 1) - 1) // stride[0] + 1
    out_w = (width + left + right - dilation[1] * (kernel_w - 1) - 1) // stride[1] + 1
    geometry = (kernel_h, kernel_w, stride[0], stride[1], top, left, dilation[0], dilation[1],
                out_w, out_h * out_w)
    return geometry, out_h, out_w


def qconv2d(x, weight, bias, *, weight_shape, stride, padding, dilation, groups, input_zero_point,
            output_zero_point, multiplier, shift, act_min, act_max, rounding):
    """int8 NCHW grouped / depthwise convolution with fused requantization -> int8 NCHW."""
    x_np = x.detach().cpu().contiguous().numpy()
    out_channels, group_channels, kernel_h, kernel_w = weight_shape
    geometry, out_h, out_w = _conv_geometry(x_np.shape, weight_shape, stride, padding, dilation)
    length = group_channels * kernel_h * kernel_w
    panel = _weight_panel(weight, groups, out_channels // groups, length)
    out = _run_conv(x_np, panel, bias, group_channels=group_channels,
                    group_rows=out_channels // groups, length=length, geometry=geometry,
                    height=x_np.shape[2], width=x_np.shape[3], input_zero_point=input_zero_point,
                    output_zero_point=output_zero_point, multiplier=multiplier, shift=shift,
                    act_min=act_min, act_max=act_max, rounding=rounding)
    return torch.from_numpy(out.reshape(x_np.shape[0], out_channels, out_h, out_w)).to(x.device)


def qadd(a, b, *, a_zero_point, a_multiplier, a_shift, b_zero_point, b_multiplier, b_shift,
         left_shift, output_zero_point, output_multiplier, output_shift, act_min, act_max):
    """TFLite int8 ADD, elementwise on equal shapes."""
    a_np = a.detach().cpu().contiguous().numpy().reshape(-1)
    b_np = b.detach().cpu().contiguous().numpy().reshape(-1)
    out = np.empty_like(a_np)
    i64 = np.int64
    _elementwise.qadd(a_np, b_np, out,
                      (i64(_wrap32(a_zero_point)), i64(a_multiplier), i64(a_shift)),
                      (i64(_wrap32(b_zero_point)), i64(b_multiplier), i64(b_shift)),
                      i64(left_shift),
                      (i64(_wrap32(output_zero_point)), i64(output_multiplier), i64(output_shift),
                       i64(act_min), i64(act_max)))
    return torch.from_numpy(out.reshape(a.shape)).to(a.device)


def qavg_pool2d(x, *, kernel_size, stride, padding, act_min, act_max):
    """TFLM int8 average pool, NCHW."""
    x_np = x.detach().cpu().contiguous().numpy()
    batch, channels, height, width = x_np.shape
    top, bottom, left, right = padding
    out_h = (height + top + bottom - kernel_size[0]) // stride[0] + 1
    out_w = (width + left + right - kernel_size[1]) // stride[1] + 1
    out = np.empty((batch, channels, out_h, out_w), np.int8)
    _elementwise.qavg_pool2d(x_np, out, kernel_size[0], kernel_size[1], stride[0], stride[1],
                             top, left, act_min, act_max)
    return torch.from_numpy(out).to(x.device)


# --------------------------------------------------------------------------------------------
# Backward (STE) with fused per-sample weights
# --------------------------------------------------------------------------------------------

_BACKWARD_ROWS_PER_CHUNK = 8192  # output positions (n, oy, ox) lowered at a time


def _unpacked_weight(weight, out_channels, length) -> np.ndarray:
    """int weight values as float32 [OC, length] (packed int4 is unpacked)."""
    w = weight.detach().cpu().contiguous()
    if w.dtype == torch.uint8:
        from intunlearn import reference as spec
        return spec.unpack_int4(w.numpy().reshape(out_channels, -1), length).astype(np.float32)
    return w.numpy().reshape(out_channels, length).astype(np.float32)


def _conv_backward(grad_output, output, x, weight, *, weight_shape, groups, geometry,
                   input_zero_point, input_scale, weight_scales, act_min, act_max,
                   sample_weights, needs_input_grad, needs_weight_grad):
    """Shared STE backward on NCHW-shaped numpy views (linear: 1x1 conv of a 1x1 image)."""
    from intunlearn.kernels.cpu import backward as bk

    out_channels, group_channels, kernel_h, kernel_w = weight_shape
    group_rows = out_channels // groups
    length = group_channels * kernel_h * kernel_w
    batch, positions = x.shape[0], geometry[-1]
    go = np.ascontiguousarray(grad_output, dtype=np.float32).reshape(batch, out_channels, positions)
    y = np.ascontiguousarray(output).reshape(batch, out_channels, positions)
    alpha = (np.ones(batch, np.float32) if sample_weights is None
             else sample_weights.detach().cpu().numpy().astype(np.float32))
    scales = np.broadcast_to(weight_scales.detach().cpu().numpy().astype(np.float32).reshape(-1),
                             (out_channels,))
    images_per_chunk = max(1, _BACKWARD_ROWS_PER_CHUNK // positions)
    group_rows_4 = bk.padded(group_rows, bk.TILE_M)
    length_2 = bk.padded(length, bk.TILE_N)

    if needs_input_grad:
        # Transposed weights s_w[c] * w[c, k] as rows k: [G, Kg_pad4, OCg_pad].
        w = _unpacked_weight(weight, out_channels, length) * scales[:, None]
        weight_t = np.zeros((groups, bk.padded(length, bk.TILE_N), bk.padded(group_rows, 1)), np.float32)
        weight_t[:, :length, :group_rows] = w.reshape(groups, group_rows, length).transpose(0, 2, 1)
        grad_input = np.zeros(x.shape, np.float32)
    grad_weight = np.zeros((groups, group_rows_4, length_2), np.float32)
    grad_bias = np.zeros(out_channels, np.float64)

    for image_start in range(0, batch, images_per_chunk):
        image_count = min(images_per_chunk, batch - image_start)
        rows = image_count * positions
        by_channel = np.zeros((groups, group_rows_4, rows), np.float32)
        by_row = np.zeros((groups, bk.padded(rows, bk.TILE_M), group_rows), np.float32)
        bk.pack_masked_gradient(go, y, alpha, act_min, act_max, image_start, image_count,
                                groups, by_channel, by_row)
        grad_bias += by_channel[:, :group_rows, :].sum(axis=2, dtype=np.float64).reshape(-1)
        if needs_weight_grad:
            columns_t = np.zeros((groups, length_2, rows), np.float32)
            bk.lower_centered_transposed(x, np.float64(input_zero_point), image_start,
                                         image_count, geometry, columns_t)
            bk.gemm_nt_accumulate(by_channel, columns_t, grad_weight)
        if needs_input_grad:
            columns = np.zeros((groups, by_row.shape[1], length_2), np.float32)
            bk.gemm_nt_accumulate(by_row, weight_t, columns)
            bk.col2im_accumulate(columns, image_start, image_count, geometry, grad_input)

    grad_w = None
    if needs_weight_grad:
        grad_w = (grad_weight[:, :group_rows, :length] * np.float32(input_scale)).reshape(
            out_channels, length)
    return (grad_input if needs_input_grad else None), grad_w, grad_bias.astype(np.float32)


def qlinear_backward(grad_output, output, x, weight, *, in_features, input_zero_point,
                     input_scale, weight_scales, act_min, act_max, sample_weights=None,
                     needs_input_grad=True, needs_weight_grad=True):
    """STE backward of qlinear, per-sample weights fused (see kernels/cpu/backward.py).

    grad_output float32 [N, OUT] = dL/dy_real; output int8 [N, OUT] (the forward result; the
    gradient passes where act_min < y < act_max); x int8 [N, IN]; weight int8 [OUT, IN] or packed
    int4 uint8 [OUT, ceil(IN/2)]; input_scale float s_x; weight_scales float [OUT] or [1] s_w;
    sample_weights float [N] alpha or None (all ones). Returns float32 torch tensors
    (grad_input [N, IN] or None, grad_weight [OUT, IN] or None, grad_bias [OUT]): grad_weight
    and grad_bias are those of sum_n alpha_n L_n (alpha fused into the reduction), grad_input
    is per-sample and unweighted (so that alpha enters each layer's reduction exactly once).
    Accumulates in float32 (grad_bias in float64).
    """
    batch = x.shape[0]
    x_np = x.detach().cpu().contiguous().numpy().reshape(batch, in_features, 1, 1)
    gi, gw, gb = _conv_backward(
        grad_output.detach().cpu().numpy(), output.detach().cpu().numpy(), x_np, weight,
        weight_shape=(weight.shape[0], in_features, 1, 1), groups=1,
        geometry=(1, 1, 1, 1, 0, 0, 1, 1, 1, 1), input_zero_point=input_zero_point,
        input_scale=input_scale, weight_scales=_as_tensor(weight_scales), act_min=act_min,
        act_max=act_max, sample_weights=sample_weights, needs_input_grad=needs_input_grad,
        needs_weight_grad=needs_weight_grad)
    return (None if gi is None else torch.from_numpy(gi.reshape(batch, in_features)),
            None if gw is None else torch.from_numpy(np.ascontiguousarray(gw)),
            torch.from_numpy(gb))


def qconv2d_backward(grad_output, output, x, weight, *, weight_shape, stride, padding, dilation,
                     groups, input_zero_point, input_scale, weight_scales, act_min, act_max,
                     sample_weights=None, needs_input_grad=True, needs_weight_grad=True):
    """STE backward of qconv2d, per-sample weights fused (see kernels/cpu/backward.py).

    grad_output float32 / output int8 [N, OC, OH, OW]; x int8 [N, C, H, W]; weight as for
    qconv2d with weight_shape (OC, C/g, KH, KW); stride/dilation pairs; padding (top, bottom,
    left, right). Returns float32 (grad_input [N, C, H, W] or None — the transposed convolution
    honouring stride, padding, dilation and groups —, grad_weight [OC, C/g, KH, KW] or None,
    grad_bias [OC]). Accumulates in float32 (grad_bias in float64).
    """
    x_np = x.detach().cpu().contiguous().numpy()
    geometry, _, _ = _conv_geometry(x_np.shape, weight_shape, stride, padding, dilation)
    gi, gw, gb = _conv_backward(
        grad_output.detach().cpu().numpy(), output.detach().cpu().numpy(), x_np, weight,
        weight_shape=tuple(weight_shape), groups=groups, geometry=geometry,
        input_zero_point=input_zero_point, input_scale=input_scale,
        weight_scales=_as_tensor(weight_scales), act_min=act_min, act_max=act_max,
        sample_weights=sample_weights, needs_input_grad=needs_input_grad,
        needs_weight_grad=needs_weight_grad)
    return (None if gi is None else torch.from_numpy(gi),
            None if gw is None else torch.from_numpy(np.ascontiguousarray(gw).reshape(weight_shape)),
            torch.from_numpy(gb))


def _as_tensor(values):
    return values if isinstance(values, torch.Tensor) else torch.as_tensor(values, dtype=torch.float32)
