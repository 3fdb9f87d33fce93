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
    if weight.dtype == torch.uint8:
        return spec.unpack_int4(_numpy(weight), length)
    return _numpy(weight).reshape(weight.shape[0], length)


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
