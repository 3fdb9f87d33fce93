"""Hypothesis strategies shared by the test files: integer op cases with their extremes.

Each case is a dict of torch tensors and Python ints, ready to splat into the ops:
`ops.qlinear(case["x"], case["weight"], case["bias"], **case["params"])`. Values lean on the
extremes (-128, 127, the int4 limits), shapes include odd lengths and K not a multiple of any
block, and requantization parameters span the whole allowed shift range.
"""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import strategies as st

INT8_EXTREMES = np.array([-128, -127, -1, 0, 1, 126, 127])


@st.composite
def int_array(draw, shape, low: int, high: int, dtype=np.int8):
    """An integer array in [low, high] whose values are either uniform or pinned at the ends."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    style = draw(st.sampled_from(["uniform", "extremes", "constant"]))
    if style == "uniform":
        values = rng.integers(low, high + 1, size=shape)
    elif style == "extremes":
        values = rng.choice(np.array([low, low + 1, -1, 0, 1, high - 1, high]).clip(low, high), size=shape)
    else:
        values = np.full(shape, draw(st.sampled_from([low, high, 0])))
    return values.astype(dtype)


@st.composite
def requant_params(draw, channels: int, rounding=None):
    """multiplier/shift int32 [channels] or [1], zero points, activation range, rounding."""
    per_channel = draw(st.booleans())
    count = channels if per_channel else 1
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    # Shifts mostly in the range real layers use, sometimes at the spec's ends.
    shift_low, shift_high = draw(st.sampled_from([(-12, 0), (-31, 30), (-20, -5)]))
    shift = rng.integers(shift_low, shift_high + 1, size=count)
    multiplier = rng.integers(2**30, 2**31, size=count)
    if draw(st.booleans()):
        multiplier[0] = draw(st.sampled_from([0, 2**30, 2**31 - 1]))
    act_min = draw(st.integers(-128, 127))
    act_max = draw(st.integers(act_min, 127))
    if draw(st.booleans()):
        act_min, act_max = -128, 127
    return {
        "output_zero_point": draw(st.integers(-128, 127) | st.sampled_from([-300, 128, 1000])),
        "multiplier": torch.from_numpy(multiplier.astype(np.int32)),
        "shift": torch.from_numpy(shift.astype(np.int32)),
        "act_min": act_min,
        "act_max": act_max,
        "rounding": draw(st.sampled_from(["double", "single"])) if rounding is None else rounding,
    }


@st.composite
def linear_cases(draw, max_batch=6, max_in=70, max_out=12, weight_bits=None):
    """qlinear inputs: int8 or int4 weights (int4 sometimes packed), bias or None."""
    batch = draw(st.integers(1, max_batch))
    in_features = draw(st.integers(1, max_in))
    out_features = draw(st.integers(1, max_out))
    bits = draw(st.sampled_from([4, 8])) if weight_bits is None else weight_bits
    w_low, w_high = (-8, 7) if bits == 4 else (-128, 127)
    weight = torch.from_numpy(draw(int_array((out_features, in_features), w_low, w_high)))
    packed = bits == 4 and draw(st.booleans())
    bias = None
    if draw(st.booleans()):
        bias = torch.from_numpy(draw(int_array((out_features,), -2**20, 2**20, np.int32)))
    params = draw(requant_params(out_features))
    params.update(input_zero_point=draw(st.integers(-128, 127)), weight_bits=bits)
    if bits == 8 and draw(st.integers(0, 4)) == 0:
        params["weight_zero_point"] = draw(st.integers(-10, 10))
    x = torch.from_numpy(draw(int_array((batch, in_features), -128, 127)))
    return {"x": x, "weight": weight, "bias": bias, "params": params, "packed": packed}


@st.composite
def conv_cases(draw, max_batch=2, max_channels=6, max_size=9, weight_bits=None):
    """qconv2d inputs: groups (incl. depthwise with a channel multiplier), stride, dilation,
    int / pair / asymmetric padding, int8 or int4 weights."""
    groups = draw(st.integers(1, 3))
    group_channels = draw(st.integers(1, max(1, max_channels // groups)))
    depthwise = draw(st.booleans())
    if depthwise:
        group_channels = 1
        groups = draw(st.integers(1, max_channels))
    channels = groups * group_channels
    out_channels = groups * draw(st.integers(1, 3))
    kernel_h, kernel_w = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding_form = draw(st.sampled_from(["int", "pair", "four"]))
    if padding_form == "int":
        padding = draw(st.integers(0, 2))
        pads = (padding,) * 4
    elif padding_form == "pair":
        padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
        pads = (padding[0], padding[0], padding[1], padding[1])
    else:
        padding = tuple(draw(st.integers(0, 2)) for _ in range(4))
        pads = padding
    min_h = max(1, dilation[0] * (kernel_h - 1) + 1 - pads[0] - pads[1])
    min_w = max(1, dilation[1] * (kernel_w - 1) + 1 - pads[2] - pads[3])
    height = draw(st.integers(min_h, max(min_h, max_size)))
    width = draw(st.integers(min_w, max(min_w, max_size)))
    batch = draw(st.integers(1, max_batch))
    bits = draw(st.sampled_from([4, 8])) if weight_bits is None else weight_bits
    w_low, w_high = (-8, 7) if bits == 4 else (-128, 127)
    weight = torch.from_numpy(draw(int_array((out_channels, group_channels, kernel_h, kernel_w),
                                             w_low, w_high)))
    bias = None
    if draw(st.booleans()):
        bias = torch.from_numpy(draw(int_array((out_channels,), -2**20, 2**20, np.int32)))
    params = draw(requant_params(out_channels))
    params.update(input_zero_point=draw(st.integers(-128, 127)), weight_bits=bits, stride=stride,
                  padding=padding, dilation=dilation, groups=groups)
    x = torch.from_numpy(draw(int_array((batch, channels, height, width), -128, 127)))
    return {"x": x, "weight": weight, "bias": bias, "params": params,
            "packed": bits == 4 and draw(st.booleans()), "pads": pads}
