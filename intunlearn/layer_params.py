"""A quantized layer's parameters as named values.

The torch.library ops take these flat (their schemas allow only plain types), in the field order
below; everywhere else they travel as these tuples, built with keywords and spread into an op
with `*`. Adding a field means adding it here and to the two training ops' signatures in
library.py, whose argument lists are checked against these fields when the module loads.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

from torch import Tensor


class LayerQuant(NamedTuple):
    """How a weighted layer quantizes: real = scale * (q - zero_point) for its int8 input and
    output, the output clamp [act_min, act_max] (a fused ReLU/ReLU6), the weight width, the
    requantization rounding ("double" or "single") and the kernel backend."""

    input_scale: float
    input_zero_point: int
    output_scale: float
    output_zero_point: int
    act_min: int
    act_max: int
    weight_bits: int
    rounding: str
    backend: str


class ConvGeometry(NamedTuple):
    """A convolution's geometry: stride (h, w), padding (top, bottom, left, right), dilation
    (h, w) and groups. A linear layer has none (geometry None)."""

    stride: tuple[int, int]
    padding: tuple[int, int, int, int]
    dilation: tuple[int, int]
    groups: int

    @classmethod
    def of(cls, stride, padding, dilation, groups) -> "ConvGeometry":
        """From the ops' lists (or any sequences), as tuples."""
        return cls(tuple(stride), tuple(padding), tuple(dilation), groups)

    def op_args(self) -> tuple[list[int], list[int], list[int], int]:
        """The custom ops' form: lists, as their schemas declare."""
        return list(self.stride), list(self.padding), list(self.dilation), self.groups


class SavedForBackward(NamedTuple):
    """What the integer forward keeps for the straight-through backward: the int8 input and the
    mask of where its quantizer did not saturate, the int8 weight codes with the mask of weights
    inside the clip range and LSQ's step-size slope (None unless asked for), and the int8
    output."""

    x_q: Tensor
    x_inside: Tensor
    w_q: Tensor
    w_inside: Optional[Tensor]
    w_slope: Optional[Tensor]
    y_q: Tensor
