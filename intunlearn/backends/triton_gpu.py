"""The "triton" backend: Triton kernels (intunlearn.kernels.gpu) on CUDA tensors.

CPU tensors are accepted only under Triton's interpreter (TRITON_INTERPRET=1, which must be set
before triton is first imported), which is how the kernels are tested without a GPU. Arguments
arrive validated and in canonical form from intunlearn.ops (forward) or the autograd layer
(backward); this module checks the device, then launches.
"""

from __future__ import annotations

import os

import torch

from intunlearn.kernels import gpu as kernels

__all__ = ["qadd", "qavg_pool2d", "qconv2d", "qconv2d_backward", "qlinear", "qlinear_backward"]


def _check_device(*tensors: torch.Tensor | None) -> None:
    for t in tensors:
        if t is None or t.device.type == "cuda":
            continue
        if t.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
            continue
        raise ValueError(
            f"backend='triton' needs CUDA tensors, or CPU tensors with TRITON_INTERPRET=1 set "
            f"before triton is imported (Triton's interpreter, for testing); got a tensor on "
            f"{t.device}")


def qlinear(x, weight, bias, *, in_features, input_zero_point, output_zero_point, multiplier,
            shift, act_min, act_max, weight_zero_point=0, rounding="double"):
    _check_device(x, weight, bias, multiplier, shift)
    return kernels.qlinear(x, weight, bias, in_features=in_features,
                           input_zero_point=input_zero_point, output_zero_point=output_zero_point,
                           multiplier=multiplier, shift=shift, act_min=act_min, act_max=act_max,
                           weight_zero_point=weight_zero_point, rounding=rounding)


def qconv2d(x, weight, bias, *, weight_shape, stride, padding, dilation, groups, input_zero_point,
            output_zero_point, multiplier, shift, act_min, act_max, rounding="double"):
    _check_device(x, weight, bias, multiplier, shift)
    return kernels.qconv2d(x, weight, bias, weight_shape=weight_shape, stride=stride,
                           padding=padding, dilation=dilation, groups=groups,
                           input_zero_point=input_zero_point, output_zero_point=output_zero_point,
                           multiplier=multiplier, shift=shift, act_min=act_min, act_max=act_max,
                           rounding=rounding)


def qadd(a, b, *, a_zero_point, a_multiplier, a_shift, b_zero_point, b_multiplier, b_shift,
         left_shift, output_zero_point, output_multiplier, output_shift, act_min, act_max,
         rounding="double"):
    _check_device(a, b)
    return kernels.qadd(a, b, a_zero_point=a_zero_point, a_multiplier=a_multiplier,
                        a_shift=a_shift, b_zero_point=b_zero_point, b_multiplier=b_multiplier,
                        b_shift=b_shift, left_shift=left_shift,
                        output_zero_point=output_zero_point, output_multiplier=output_multiplier,
                        output_shift=output_shift, act_min=act_min, act_max=act_max,
                        rounding=rounding)


def qavg_pool2d(x, *, kernel_size, stride, padding, act_min, act_max):
    _check_device(x)
    return kernels.qavg_pool2d(x, kernel_size=kernel_size, stride=stride, padding=padding,
                               act_min=act_min, act_max=act_max)


def qlinear_backward(grad_output, output, x, weight, *, in_features, input_zero_point, input_scale,
                     weight_scales, act_min, act_max, sample_weights=None, needs_input_grad=True,
                     needs_weight_grad=True):
    """STE backward of qlinear: (grad_input [N, IN] or None, grad_weight [OUT, IN] or None,
    grad_bias [OUT]), fp32. sample_weights (alpha) enter the weight and bias reductions only;
    grad_input is per-sample (see intunlearn.kernels.gpu.backward)."""
    _check_device(grad_output, output, x, weight,
                  weight_scales if isinstance(weight_scales, torch.Tensor) else None, sample_weights)
    return kernels.qlinear_backward(
        grad_output, output, x, weight, in_features=in_features, input_zero_point=input_zero_point,
        input_scale=input_scale, weight_scales=weight_scales, act_min=act_min, act_max=act_max,
        sample_weights=sample_weights, needs_input_grad=needs_input_grad,
        needs_weight_grad=needs_weight_grad)


def qconv2d_backward(grad_output, output, x, weight, *, weight_shape, stride, padding, dilation,
                     groups, input_zero_point, input_scale, weight_scales, act_min, act_max,
                     sample_weights=None, needs_input_grad=True, needs_weight_grad=True):
    """STE backward of qconv2d: (grad_input like x or None, grad_weight [OC, C/g, KH, KW] or
    None, grad_bias [OC]), fp32; alpha as in qlinear_backward."""
    _check_device(grad_output, output, x, weight,
                  weight_scales if isinstance(weight_scales, torch.Tensor) else None, sample_weights)
    return kernels.qconv2d_backward(
        grad_output, output, x, weight, weight_shape=weight_shape, stride=stride, padding=padding,
        dilation=dilation, groups=groups, input_zero_point=input_zero_point,
        input_scale=input_scale, weight_scales=weight_scales, act_min=act_min, act_max=act_max,
        sample_weights=sample_weights, needs_input_grad=needs_input_grad,
        needs_weight_grad=needs_weight_grad)
