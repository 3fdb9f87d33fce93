"""Public functional integer ops: the contract of DESIGN.md.

torch tensors in, torch tensors out. Every op validates its arguments (raising TypeError or
ValueError that names the argument), puts them in canonical form and hands them to a backend:
"reference" (the numpy oracle), "numba", "triton", or "auto" (Triton for CUDA tensors, Numba for
CPU tensors, falling back to the reference where those are not available yet).
"""

from __future__ import annotations

import numpy as np
import torch

from intunlearn import _checks as check
from intunlearn import reference as spec
from intunlearn.backends import resolve

__all__ = [
    "multiply_by_quantized_multiplier", "pack_int4", "qadd", "qavg_pool2d", "qconv2d", "qlinear",
    "quantize_multiplier", "unpack_int4",
]

ROUNDINGS = ("double", "single")
WEIGHT_BITS = (4, 8)


# --------------------------------------------------------------------------------------------
# Fixed-point primitives
# --------------------------------------------------------------------------------------------


def quantize_multiplier(real):
    """TFLite's QuantizeMultiplier: real = multiplier * 2**(shift - 31).

    real: a float or a floating tensor of values >= 0 and < 2**30. Returns (multiplier, shift),
    int32 tensors of real's shape (0-D for a float); multiplier is in [2**30, 2**31) or 0.
    """
    if isinstance(real, torch.Tensor):
        if not real.is_floating_point():
            raise TypeError(f"real must be a float or a floating-point tensor, got dtype {real.dtype}")
        values, device = real.detach().cpu().double().numpy(), real.device
    elif isinstance(real, (float, int)) and not isinstance(real, bool):
        values, device = np.float64(real), torch.device("cpu")
    else:
        raise TypeError(f"real must be a float or a floating-point tensor, got {type(real).__name__}")
    try:
        multiplier, shift = spec.quantize_multiplier(values)
    except ValueError as error:
        raise ValueError(f"real: {error}") from None
    as_int32 = lambda a: torch.from_numpy(np.asarray(a, np.int32)).to(device)  # noqa: E731
    return as_int32(multiplier), as_int32(shift)


def multiply_by_quantized_multiplier(acc, multiplier, shift, rounding="double"):
    """TFLite's MultiplyByQuantizedMultiplier on an int32 tensor, elementwise.

    multiplier and shift are Python ints or int32 tensors broadcastable to acc. rounding is
    "double" (TFLite's default) or "single" (TFLITE_SINGLE_ROUNDING). Returns int32.
    """
    check.tensor("acc", acc, torch.int32)
    check.choice("rounding", rounding, ROUNDINGS)
    arrays = []
    for name, value, low, high in (("multiplier", multiplier, 0, check.INT32_MAX),
                                   ("shift", shift, -31, 30)):
        if isinstance(value, torch.Tensor):
            check.tensor(name, value, torch.int32)
            check.same_device(acc=acc, **{name: value})
            check.values_in_range(name, value, low, high)
            arrays.append(value.cpu().numpy())
        else:
            arrays.append(check.integer(name, value, low, high))
    try:
        np.broadcast_shapes(acc.shape, np.shape(arrays[0]), np.shape(arrays[1]))
    except ValueError:
        raise ValueError(f"multiplier and shift must broadcast to acc's shape {tuple(acc.shape)}") from None
    result = spec.multiply_by_quantized_multiplier(acc.cpu().numpy(), arrays[0], arrays[1], rounding)
    return torch.from_numpy(result.astype(np.int32)).to(acc.device)


# --------------------------------------------------------------------------------------------
# Packed int4
# --------------------------------------------------------------------------------------------


def pack_int4(values):
    """int8 values in [-8, 7], shape [..., K] -> uint8 [..., ceil(K/2)].

    Element 2i goes to the low nibble of byte i and 2i+1 to the high nibble; an odd K leaves the
    last high nibble 0.
    """
    check.tensor("values", values, torch.int8)
    if values.dim() == 0:
        raise ValueError("values must have at least 1 dimension, got a 0-D tensor")
    check.values_in_range("values", values, -8, 7)
    if values.shape[-1] % 2:
        values = torch.nn.functional.pad(values, (0, 1))
    nibbles = values.to(torch.uint8) & 0xF  # two's-complement low 4 bits
    return nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)


def unpack_int4(packed, length):
    """uint8 [..., ceil(length/2)] -> int8 [..., length], each nibble sign-extended."""
    check.tensor("packed", packed, torch.uint8)
    check.integer("length", length, 0)
    if packed.dim() == 0 or packed.shape[-1] != (length + 1) // 2:
        raise ValueError(f"packed must have last dimension ceil(length/2) = {(length + 1) // 2}, "
                         f"got shape {tuple(packed.shape)}")
    signed = packed.view(torch.int8)
    low = (signed << 4) >> 4  # arithmetic shifts on int8 sign-extend the nibble
    high = signed >> 4
    both = torch.stack([low, high], dim=-1).flatten(-2)
    return both[..., :length].contiguous()


# --------------------------------------------------------------------------------------------
# Linear and convolution
# --------------------------------------------------------------------------------------------


def _check_weight(weight, weight_bits: int, leading: tuple[int, ...] | None, length: int):
    """Checks an int8 (or int4-valued int8, or packed uint8) weight and returns its out dim.

    leading: the expected unpacked shape after the out dim (None: 2-D [OUT, length] only).
    """
    check.choice("weight_bits", weight_bits, WEIGHT_BITS)
    if weight_bits == 8:
        check.tensor("weight", weight, torch.int8)
    else:
        check.tensor("weight", weight, (torch.int8, torch.uint8))
    if weight.dtype == torch.uint8:
        expected = ((length + 1) // 2,)
        form = "packed int4 (uint8)"
    else:
        expected = leading if leading is not None else (length,)
        form = "int8"
    if weight.dim() != 1 + len(expected) or tuple(weight.shape[1:]) != expected:
        raise ValueError(f"{form} weight must have shape [OUT, {', '.join(map(str, expected))}], "
                         f"got {tuple(weight.shape)}")
    if weight_bits == 4 and weight.dtype == torch.int8:
        check.values_in_range("weight", weight, -8, 7)
    return weight.shape[0]


def _check_bias_and_requant(bias, multiplier, shift, out_channels, device, output_zero_point,
                            act_min, act_max, rounding):
    if bias is not None:
        check.tensor("bias", bias, torch.int32, ndim=1)
        if bias.shape[0] != out_channels:
            raise ValueError(f"bias must have shape [{out_channels}], got {tuple(bias.shape)}")
    check.requant_params(multiplier, shift, out_channels, device)
    check.integer("output_zero_point", output_zero_point)
    check.activation_range(act_min, act_max)
    check.choice("rounding", rounding, ROUNDINGS)


def qlinear(x, weight, bias=None, *, input_zero_point, output_zero_point, multiplier, shift,
            act_min=-128, act_max=127, weight_bits=8, weight_zero_point=0, rounding="double",
            backend="auto"):
    """Integer fully connected layer (TFLM FullyConnected, per-channel requantization).

    x int8 [N, IN]; weight int8 [OUT, IN] (values in [-8, 7] when weight_bits=4) or, for
    weight_bits=4, uint8 packed [OUT, ceil(IN/2)]; bias int32 [OUT] or None; multiplier and
    shift int32 [OUT] or [1]. Returns int8 [N, OUT].
    """
    check.tensor("x", x, torch.int8, ndim=2)
    in_features = x.shape[1]
    out_features = _check_weight(weight, weight_bits, None, in_features)
    device = check.same_device(x=x, weight=weight, bias=bias, multiplier=multiplier, shift=shift)
    check.integer("input_zero_point", input_zero_point)
    check.integer("weight_zero_point", weight_zero_point)
    _check_bias_and_requant(bias, multiplier, shift, out_features, device, output_zero_point,
                            act_min, act_max, rounding)
    return resolve(backend, device).qlinear(
        x, weight, bias, in_features=in_features, input_zero_point=input_zero_point,
        output_zero_point=output_zero_point, multiplier=multiplier, shift=shift, act_min=act_min,
        act_max=act_max, weight_zero_point=weight_zero_point, rounding=rounding)


def _conv_weight_shape(weight, kernel_size, out_group_channels_from_x):
    """[OC, C/groups, KH, KW] from a 4-D weight, or from a packed one plus kernel_size."""
    if weight.dtype == torch.uint8 and weight.dim() == 2:
        if kernel_size is None:
            raise ValueError("kernel_size is required with a packed int4 (uint8) conv weight")
        kernel_h, kernel_w = check.pair("kernel_size", kernel_size, 1)
        return (weight.shape[0], out_group_channels_from_x, kernel_h, kernel_w)
    if weight.dim() != 4:
        raise ValueError(f"weight must be 4-D [OC, C/groups, KH, KW] (or packed int4 uint8 "
                         f"[OC, ceil(C/groups*KH*KW/2)]), got shape {tuple(weight.shape)}")
    if kernel_size is not None and tuple(check.pair("kernel_size", kernel_size, 1)) != tuple(weight.shape[2:]):
        raise ValueError(f"kernel_size {kernel_size} does not match weight shape {tuple(weight.shape)}")
    return tuple(weight.shape)


def qconv2d(x, weight, bias=None, *, stride=1, padding=0, dilation=1, groups=1, input_zero_point,
            output_zero_point, multiplier, shift, act_min=-128, act_max=127, weight_bits=8,
            rounding="double", kernel_size=None, backend="auto"):
    """Integer 2-D convolution (TFLM ConvPerChannel / DepthwiseConvPerChannel), NCHW.

    x int8 [N, C, H, W]; weight int8 [OC, C/groups, KH, KW] or, for weight_bits=4, uint8 packed
    along the flattened C/groups*KH*KW axis, [OC, ceil(C/groups*KH*KW/2)], in which case
    kernel_size=(KH, KW) must be given. padding: int | (ph, pw) | (top, bottom, left, right);
    padded taps contribute the input zero point (real zero). Depthwise: groups=C.
    Returns int8 [N, OC, OH, OW].
    """
    check.tensor("x", x, torch.int8, ndim=4)
    channels = x.shape[1]
    groups = check.integer("groups", groups, 1)
    if channels % groups:
        raise ValueError(f"groups={groups} must divide the input channels C={channels}")
    check.tensor("weight", weight, (torch.int8, torch.uint8))
    weight_shape = _conv_weight_shape(weight, kernel_size, channels // groups)
    out_channels, group_channels, kernel_h, kernel_w = weight_shape
    if group_channels != channels // groups:
        raise ValueError(f"weight must have C/groups = {channels // groups} input channels "
                         f"(x has C={channels}, groups={groups}), got weight shape {tuple(weight.shape)}")
    if out_channels % groups:
        raise ValueError(f"groups={groups} must divide the output channels OC={out_channels}")
    _check_weight(weight, weight_bits, (group_channels, kernel_h, kernel_w),
                  group_channels * kernel_h * kernel_w)
    stride = check.pair("stride", stride, 1)
    dilation = check.pair("dilation", dilation, 1)
    padding = check.padding4("padding", padding)
    out_h = spec.conv2d_output_size(x.shape[2], kernel_h, stride[0], padding[0], padding[1], dilation[0])
    out_w = spec.conv2d_output_size(x.shape[3], kernel_w, stride[1], padding[2], padding[3], dilation[1])
    if out_h < 1 or out_w < 1:
        raise ValueError(f"x spatial size {tuple(x.shape[2:])} with padding {padding} is smaller than "
                         f"the dilated kernel ({kernel_h}, {kernel_w}) x dilation {dilation}")
    device = check.same_device(x=x, weight=weight, bias=bias, multiplier=multiplier, shift=shift)
    check.integer("input_zero_point", input_zero_point)
    _check_bias_and_requant(bias, multiplier, shift, out_channels, device, output_zero_point,
                            act_min, act_max, rounding)
    return resolve(backend, device).qconv2d(
        x, weight, bias, weight_shape=weight_shape, stride=stride, padding=padding,
        dilation=dilation, groups=groups, input_zero_point=input_zero_point,
        output_zero_point=output_zero_point, multiplier=multiplier, shift=shift, act_min=act_min,
        act_max=act_max, rounding=rounding)


# --------------------------------------------------------------------------------------------
# Residual add and average pooling
# --------------------------------------------------------------------------------------------


def qadd(a, b, *, a_zero_point, a_multiplier, a_shift, b_zero_point, b_multiplier, b_shift,
         left_shift, output_zero_point, output_multiplier, output_shift, act_min=-128,
         act_max=127, rounding="double", backend="auto"):
    """TFLite int8 ADD of two equally shaped int8 tensors; scalar parameters are Python ints.

    Use `intunlearn.qparams.add_params` to derive the multipliers and shifts from scales.
    rounding="single" rescales as a TFLITE_SINGLE_ROUNDING build does (one rounding each).
    """
    check.tensor("a", a, torch.int8)
    check.tensor("b", b, torch.int8)
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    device = check.same_device(a=a, b=b)
    for name, value in (("a_zero_point", a_zero_point), ("b_zero_point", b_zero_point),
                        ("output_zero_point", output_zero_point)):
        check.integer(name, value)
    for name, value in (("a_multiplier", a_multiplier), ("b_multiplier", b_multiplier),
                        ("output_multiplier", output_multiplier)):
        check.integer(name, value, 0)
    for name, value in (("a_shift", a_shift), ("b_shift", b_shift), ("output_shift", output_shift)):
        check.integer(name, value, -31, 30)
    check.integer("left_shift", left_shift, 0, 30)
    check.activation_range(act_min, act_max)
    check.choice("rounding", rounding, ROUNDINGS)
    return resolve(backend, device).qadd(
        a, b, a_zero_point=a_zero_point, a_multiplier=a_multiplier, a_shift=a_shift,
        b_zero_point=b_zero_point, b_multiplier=b_multiplier, b_shift=b_shift,
        left_shift=left_shift, output_zero_point=output_zero_point,
        output_multiplier=output_multiplier, output_shift=output_shift, act_min=act_min,
        act_max=act_max, rounding=rounding)


def qavg_pool2d(x, kernel_size, stride=None, padding=0, act_min=-128, act_max=127, backend="auto"):
    """TFLM int8 average pool, NCHW; output shares the input's scale and zero point.

    kernel_size and stride: int or (h, w) (stride defaults to kernel_size); padding: int |
    (ph, pw) | (top, bottom, left, right), each smaller than the kernel. Padded cells are not
    counted in the divisor; the mean is rounded to nearest, ties away from zero.
    """
    check.tensor("x", x, torch.int8, ndim=4)
    kernel_size = check.pair("kernel_size", kernel_size, 1)
    stride = kernel_size if stride is None else check.pair("stride", stride, 1)
    padding = check.padding4("padding", padding)
    for name, pad, kernel in zip(("top", "bottom", "left", "right"), padding,
                                 (kernel_size[0], kernel_size[0], kernel_size[1], kernel_size[1])):
        if pad >= kernel:
            raise ValueError(f"padding ({name}={pad}) must be smaller than kernel_size {kernel_size}")
    if (x.shape[2] + padding[0] + padding[1] < kernel_size[0]
            or x.shape[3] + padding[2] + padding[3] < kernel_size[1]):
        raise ValueError(f"kernel_size {kernel_size} is larger than the padded input "
                         f"{tuple(x.shape[2:])} with padding {padding}")
    check.activation_range(act_min, act_max)
    return resolve(backend, x.device).qavg_pool2d(
        x, kernel_size=kernel_size, stride=stride, padding=padding, act_min=act_min, act_max=act_max)
