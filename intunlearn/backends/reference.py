"""The "reference" backend: runs the numpy oracle (intunlearn.reference) on torch tensors.

Slow and obviously right. Tensors are copied to host numpy, computed on, and the int8 result
is returned on the input's device.
"""

from __future__ import annotations

import numpy as np
import torch

from intunlearn import reference as spec


def _numpy(t: torch.Tensor | None):
    return None if t is None else t.detach().cpu().numpy()


def _to_device(result: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(result)).to(like.device)


def unpacked_weight(weight: torch.Tensor, length: int) -> np.ndarray:
    """int8 weight values [OUT, length]; uint8 weights are packed int4 and get unpacked."""
    return spec.unpacked_weight(_numpy(weight), length)


def qlinear(x, weight, bias, *, in_features, multiplier, shift, **params):
    y = spec.qlinear(_numpy(x), unpacked_weight(weight, in_features), _numpy(bias),
                     multiplier=_numpy(multiplier), shift=_numpy(shift), **params)
    return _to_device(y, x)


def qconv2d(x, weight, bias, *, weight_shape, multiplier, shift, **params):
    out_channels, group_channels, kernel_h, kernel_w = weight_shape
    w = unpacked_weight(weight, group_channels * kernel_h * kernel_w).reshape(weight_shape)
    y = spec.qconv2d(_numpy(x), w, _numpy(bias), multiplier=_numpy(multiplier),
                     shift=_numpy(shift), **params)
    return _to_device(y, x)


def qadd(a, b, **params):
    return _to_device(spec.qadd(_numpy(a), _numpy(b), **params), a)


def qavg_pool2d(x, **params):
    return _to_device(spec.qavg_pool2d(_numpy(x), **params), x)


# STE backward: the spec's float64 definition (intunlearn.reference.backward), float32 results.


def _float32(result, like: torch.Tensor):
    return None if result is None else _to_device(result.astype(np.float32), like)


def _backward_arrays(grad_output, output, x, sample_weights, weight_scales):
    return (_numpy(grad_output), _numpy(output), _numpy(x),
            None if sample_weights is None else _numpy(sample_weights), _numpy(weight_scales))


def qlinear_backward(grad_output, output, x, weight, *, in_features, weight_scales,
                     sample_weights=None, **params):
    """STE gradients of a qlinear (float32 grad_input, grad_weight, grad_bias; None where not
    needed); see intunlearn.reference.backward."""
    g, y, x_values, alpha, scales = _backward_arrays(grad_output, output, x, sample_weights, weight_scales)
    grads = spec.backward.qlinear_backward(g, y, x_values, unpacked_weight(weight, in_features),
                                           weight_scales=scales, sample_weights=alpha, **params)
    return tuple(_float32(grad, grad_output) for grad in grads)


def qconv2d_backward(grad_output, output, x, weight, *, weight_shape, weight_scales,
                     sample_weights=None, **params):
    """STE gradients of a qconv2d; as qlinear_backward. padding (top, bottom, left, right)."""
    g, y, x_values, alpha, scales = _backward_arrays(grad_output, output, x, sample_weights, weight_scales)
    length = int(np.prod(weight_shape[1:]))
    w = unpacked_weight(weight, length).reshape(weight_shape)
    grads = spec.backward.qconv2d_backward(g, y, x_values, w, weight_scales=scales, sample_weights=alpha,
                                           **params)
    return tuple(_float32(grad, grad_output) for grad in grads)
