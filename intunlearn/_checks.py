"""Argument checks shared by the public ops. Each raises TypeError or ValueError naming the
argument and what was expected; none converts, clips or casts anything."""

from __future__ import annotations

import numpy as np
import torch

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def tensor(name: str, value, dtype: torch.dtype | tuple[torch.dtype, ...], ndim: int | None = None):
    """value must be a torch.Tensor of `dtype` (one of them, if a tuple) with `ndim` dims."""
    dtypes = dtype if isinstance(dtype, tuple) else (dtype,)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dtype not in dtypes:
        expected = " or ".join(str(d) for d in dtypes)
        raise TypeError(f"{name} must have dtype {expected}, got {value.dtype}")
    if ndim is not None and value.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(value.shape)}")
    return value


def integer(name: str, value, low: int = INT32_MIN, high: int = INT32_MAX) -> int:
    """value must be a Python int (not bool) in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a Python int, got {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{name} must lie in [{low}, {high}], got {value}")
    return value


def values_in_range(name: str, value: torch.Tensor, low: int, high: int) -> None:
    """Every element of the integer tensor `value` must lie in [low, high]."""
    if value.numel() == 0 or value.device.type == "meta":
        return
    smallest, largest = int(value.min()), int(value.max())
    if smallest < low or largest > high:
        raise ValueError(f"{name} has values outside [{low}, {high}]: its range is [{smallest}, {largest}]")


def choice(name: str, value, options) -> None:
    if value not in options:
        raise ValueError(f"{name} must be one of {sorted(options)}, got {value!r}")


def same_device(**tensors) -> torch.device:
    """All given tensors (None ones skipped) must be on one device; returns it."""
    present = {name: t for name, t in tensors.items() if t is not None}
    for name, value in present.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    devices = {t.device for t in present.values()}
    if len(devices) > 1:
        listing = ", ".join(f"{name} on {t.device}" for name, t in present.items())
        raise ValueError(f"tensors must all be on one device, got {listing}")
    return devices.pop()


def pair(name: str, value, low: int) -> tuple[int, int]:
    """int or 2-sequence of ints, each >= low -> (a, b)."""
    items = (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(items, (tuple, list)) or len(items) != 2:
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    return tuple(integer(name, item, low, INT32_MAX) for item in items)


def padding4(name: str, value) -> tuple[int, int, int, int]:
    """int | (ph, pw) | (top, bottom, left, right) -> (top, bottom, left, right), all >= 0."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if isinstance(value, (tuple, list)) and len(value) == 2:
        value = (value[0], value[0], value[1], value[1])
    if not isinstance(value, (tuple, list)) or len(value) != 4:
        raise TypeError(f"{name} must be an int, (ph, pw) or (top, bottom, left, right), got {value!r}")
    return tuple(integer(name, item, 0, INT32_MAX) for item in value)


def requant_params(multiplier, shift, channels: int, device) -> None:
    """multiplier/shift: int32 [channels] or [1], multiplier >= 0, shift in [-31, 30]."""
    for name, value in (("multiplier", multiplier), ("shift", shift)):
        tensor(name, value, torch.int32, ndim=1)
        if value.shape[0] not in (1, channels):
            raise ValueError(f"{name} must have shape [{channels}] or [1], got {tuple(value.shape)}")
    values_in_range("multiplier", multiplier, 0, INT32_MAX)
    values_in_range("shift", shift, -31, 30)


def activation_range(act_min, act_max) -> None:
    integer("act_min", act_min, -128, 127)
    integer("act_max", act_max, -128, 127)
    if act_min > act_max:
        raise ValueError(f"act_min must be <= act_max, got act_min={act_min}, act_max={act_max}")


def seed(value, name: str = "seed") -> int:
    """A random seed: an int (numpy's too, not a bool) in [0, 2**32), the range of numpy's
    RandomState and of scikit-learn's random_state."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value < 2**32:
        raise ValueError(f"{name} must be an int in [0, 2**32), got {value!r}")
    return int(value)


def positive_int_option(text: str) -> int:
    """argparse type: a command-line count, a positive integer (argparse names the option)."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value
