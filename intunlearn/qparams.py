"""Quantization primitives: choose scales and zero points, quantize and dequantize tensors, and
derive the integer parameters (multipliers, shifts, int32 biases) of the integer ops.

Conventions are the TFLite int8 quantization spec's: activations asymmetric int8 per tensor with
a range that always contains 0 (so real zero is exactly representable, e.g. in padding), weights
symmetric per output channel with zero point 0 (int8 in [-127, 127], int4 in [-7, 7]), biases
int32 at scale s_x * s_w[c]. Rounding is to nearest with ties away from zero, as TFLite rounds.

One formulation of each step, in torch, lives here; the rounding rule and QuantizeMultiplier
themselves are the spec's (intunlearn.reference). Functions that take `backend` hand large
CPU tensors to that backend's one-pass host kernels where it has them (Numba's, which give the
torch formulation's bits in one pass instead of five or six); every other backend ("reference"
included) gets the torch formulation.
"""

from __future__ import annotations

import numbers
import sys
from dataclasses import dataclass
from typing import NamedTuple, Optional

import numpy as np
import torch
from torch import Tensor

from intunlearn import backends
from intunlearn import reference as spec
from intunlearn.ops import quantize_multiplier

ACTIVATION_MIN, ACTIVATION_MAX = -128, 127


def weight_max(bits: int) -> int:
    """Largest weight magnitude the symmetric quantizer produces: 127 for int8, 7 for int4."""
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, got {bits!r}")
    return 2 ** (bits - 1) - 1


def _host_kernels(backend: str, device: torch.device):
    """The backend's one-pass quantization kernels for tensors on `device`, or None: the torch
    formulation below (always while torch.compile traces: Dynamo cannot trace a Numba call)."""
    if torch.compiler.is_compiling():
        return None
    return backends.host_quantizers(backend, device)


# ---- scalars: the spec's rounding on Python numbers ----------------------------------------------
#
# Quantization parameters reach torch.compile as constants; these run once at trace time on them
# (assume_constant_result), so the derived integers are constants of the graph too.


def _constant_result(fn):
    """torch.compiler.assume_constant_result(fn) without importing Dynamo when intunlearn is
    imported (1.5 s of every process's start, Ray workers' included, where nothing compiles).
    That decorator imports torch._dynamo and only marks the function with the attribute Dynamo
    reads when it traces a call; the same mark is set here until Dynamo is loaded, after which
    the public decorator is used. tests/test_qparams.py checks that both mark a function alike,
    and the fullgraph compile tests fail if Dynamo stops honouring the mark."""
    if "torch._dynamo" in sys.modules:
        return torch.compiler.assume_constant_result(fn)
    fn._dynamo_marked_constant = True
    return fn


@_constant_result
def round_half_away_scalar(value: float) -> int:
    """The spec's round half away from zero of one Python float, as a Python int."""
    return int(spec.round_half_away_from_zero(value))


@_constant_result
def round_to_float32(value: float) -> float:
    """The float32 nearest to a Python float (ties to even), as torch.tensor(value) stores it."""
    return float(np.float32(value))


@_constant_result
def quantize_multiplier_scalar(real: float) -> tuple[int, int]:
    """The spec's QuantizeMultiplier of one Python float: (multiplier, shift) as Python ints."""
    try:
        multiplier, shift = spec.quantize_multiplier(real)
    except ValueError as error:
        raise ValueError(f"real: {error}") from None
    return int(multiplier), int(shift)


# ---- tensors -------------------------------------------------------------------------------------


def round_half_away(values: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Round to nearest, ties away from zero (torch.round sends ties to even). Not
    differentiable (its derivative is zero almost everywhere; STE callers detach first)."""
    kernels = _host_kernels(backend, values.device) if values.dtype == torch.float64 else None
    if kernels is not None:
        flat = values.detach().contiguous().reshape(-1)
        out = torch.empty_like(flat)
        kernels.round_half_away_array(flat.numpy(), out.numpy())
        return out.reshape(values.shape)
    truncated = torch.trunc(values)
    is_tie = (values - truncated).abs() == 0.5
    return torch.where(is_tie, truncated + torch.sign(values), torch.round(values))


def quantize_activation(real: torch.Tensor, scale: float, zero_point: int, qmin: int = -128,
                        qmax: int = 127, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor int8 codes clamp(round(real / scale) + zero_point, qmin, qmax) and the mask of
    entries the clamp left alone (where a straight-through gradient passes). float64 division."""
    kernels = _host_kernels(backend, real.device) if real.dtype in (torch.float32, torch.float64) else None
    if kernels is not None:
        flat = real.detach().contiguous().reshape(-1)
        codes = torch.empty(flat.shape, dtype=torch.int8)
        inside = torch.empty(flat.shape, dtype=torch.bool)
        kernels.quantize_per_tensor(flat.numpy(), float(scale), int(zero_point), qmin, qmax, codes.numpy(),
                                    inside.numpy())
        return codes.reshape(real.shape), inside.reshape(real.shape)
    unclamped = round_half_away(real.detach().double() / scale, backend) + zero_point
    return unclamped.clamp(qmin, qmax).to(torch.int8), (unclamped >= qmin) & (unclamped <= qmax)


def dequantize_activation(codes: torch.Tensor, scale: float, zero_point: int,
                          backend: str = "auto") -> torch.Tensor:
    """float32 scale * (codes - zero_point) of per-tensor int8 codes, the product in float64."""
    kernels = _host_kernels(backend, codes.device)
    if kernels is not None:
        flat = codes.contiguous().reshape(-1)
        out = torch.empty(flat.shape, dtype=torch.float32)
        kernels.dequantize_per_tensor(flat.numpy(), float(scale), int(zero_point), out.numpy())
        return out.reshape(codes.shape)
    return (scale * (codes.double() - zero_point)).float()


@dataclass(frozen=True)
class ActivationQParams:
    """Per-tensor affine int8 quantization: real = scale * (q - zero_point)."""

    scale: float
    zero_point: int


def choose_activation_qparams(min_value: float, max_value: float) -> ActivationQParams:
    """Asymmetric int8 parameters covering [min_value, max_value] and 0 (TFLite's nudging).

    An all-zero range gets scale 1.0, which represents 0 exactly.
    """
    min_value, max_value = float(min_value), float(max_value)
    if not (min_value <= max_value) or not all(map(_finite, (min_value, max_value))):
        raise ValueError(f"need finite min_value <= max_value, got {min_value}, {max_value}")
    low, high = min(min_value, 0.0), max(max_value, 0.0)
    if high == low:
        return ActivationQParams(1.0, 0)
    scale = (high - low) / (ACTIVATION_MAX - ACTIVATION_MIN)
    zero_point = round_half_away_scalar(ACTIVATION_MIN - low / scale)
    return ActivationQParams(scale, max(ACTIVATION_MIN, min(ACTIVATION_MAX, zero_point)))


def _finite(value: float) -> bool:
    return value == value and abs(value) != float("inf")


def check_finite(name: str, values: torch.Tensor) -> None:
    """ValueError naming `name`, how many entries are NaN or infinite and where the first is."""
    if not isinstance(values, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(values).__name__}")
    if not values.is_floating_point():
        return
    bad = ~torch.isfinite(values.detach())
    count = int(bad.sum())
    if count:
        first = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"{name} has {count} NaN or infinite entries of {values.numel()} (the first at index "
                         f"{first}: {values.detach()[first].item()}); quantization cannot represent them")


def choose_weight_scales(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric per-output-channel scales (float64 [OUT]) = max|w_c| / qmax.

    A channel of zeros gets scale 1.0 (its weights quantize to 0 at any scale).
    """
    if not weight.is_floating_point() or weight.dim() < 2:
        raise ValueError(f"weight must be a floating tensor [OUT, ...], got {weight.dtype} {tuple(weight.shape)}")
    absmax = weight.detach().double().abs().flatten(1).amax(dim=1)
    return torch.where(absmax > 0, absmax / weight_max(bits), torch.ones_like(absmax))


def quantize(real: torch.Tensor, scale, zero_point, qmin: int, qmax: int, axis: int | None = None,
             backend: str = "auto"):
    """q = clamp(round(real / scale) + zero_point, qmin, qmax) as int8 (int32 if the range needs).

    scale/zero_point are scalars, or 1-D tensors applied along `axis`. The clamp is the
    quantizer's saturation; callers that train through it mask gradients there (STE).
    """
    per_tensor = not isinstance(scale, torch.Tensor) and not isinstance(zero_point, torch.Tensor)
    if per_tensor and -128 <= qmin and qmax <= 127:
        return quantize_activation(real, float(scale), int(zero_point), qmin, qmax, backend)[0]
    scale = _along(scale, real, axis)
    zero_point = _along(zero_point, real, axis)
    q = round_half_away(real.double() / scale, backend) + zero_point
    dtype = torch.int8 if -128 <= qmin and qmax <= 127 else torch.int32
    return q.clamp(qmin, qmax).to(dtype)


def dequantize(q: torch.Tensor, scale, zero_point=0, axis: int | None = None) -> torch.Tensor:
    """real = scale * (q - zero_point), float32."""
    return (_along(scale, q, axis) * (q.double() - _along(zero_point, q, axis))).float()


def _along(value, like: torch.Tensor, axis: int | None):
    if not isinstance(value, torch.Tensor):  # a Python number acts as a float64 scalar
        return float(value)
    value = value.to(dtype=torch.float64, device=like.device)
    if axis is None or value.dim() == 0:
        return value
    shape = [1] * like.dim()
    shape[axis] = -1
    return value.reshape(shape)


def quantize_weight(weight: torch.Tensor, bits: int):
    """Symmetric per-channel quantization: (int8 values in [-qmax, qmax], float64 scales [OUT]).
    ValueError for a weight with NaN or inf (no scale or code represents them)."""
    check_finite("weight", weight)
    scales = choose_weight_scales(weight, bits)
    return quantize(weight, scales, 0, -weight_max(bits), weight_max(bits), axis=0), scales


def quantize_bias(bias: torch.Tensor, input_scale: float, weight_scales: torch.Tensor) -> torch.Tensor:
    """int32 bias at scale s_x * s_w[c]; raises if a value does not fit int32, or (naming it)
    if a scale is not finite and > 0."""
    check_scales(input_scale=input_scale, weight_scales=weight_scales)
    return _bias_codes(bias, input_scale, weight_scales)


def _bias_codes(bias, input_scale, weight_scales: torch.Tensor) -> torch.Tensor:
    """quantize_bias without checking the scales first (every integer forward pass computes
    it): a code out of int32 range, or NaN, is diagnosed only then, naming a bad scale if that
    is the cause."""
    q = round_half_away(bias.detach().double() / (input_scale * weight_scales.double()))
    if q.numel() and not bool(q.abs().max() <= 2**31 - 1):  # NaN fails this comparison too
        check_scales(input_scale=input_scale, weight_scales=weight_scales)
        raise ValueError("bias does not fit int32 at scale input_scale * weight_scale")
    return q.to(torch.int32)


def output_multipliers(input_scale: float, weight_scales: torch.Tensor, output_scale: float):
    """(multiplier, shift) int32 [OUT] for M[c] = s_x * s_w[c] / s_y. Every scale must be
    finite and > 0 (ValueError naming the argument otherwise)."""
    check_scales(input_scale=input_scale, weight_scales=weight_scales, output_scale=output_scale)
    return _multipliers(input_scale, weight_scales, output_scale)


def _multipliers(input_scale, weight_scales: torch.Tensor, output_scale):
    try:
        return quantize_multiplier(input_scale * weight_scales.double() / output_scale)
    except ValueError:  # say which of the caller's scales is wrong, not the multiplier's value
        check_scales(input_scale=input_scale, weight_scales=weight_scales, output_scale=output_scale)
        raise


def check_scales(**scales) -> None:
    """Each named scale (a number or a floating tensor of per-channel scales) must be finite
    and > 0: ValueError naming the first one that is not and its offending value."""
    for name, value in scales.items():
        if isinstance(value, torch.Tensor):
            if not value.is_floating_point():
                raise TypeError(f"{name} must be a floating tensor of scales, got dtype {value.dtype}")
            values = value.detach().double().cpu().reshape(-1)
            bad = ~(torch.isfinite(values) & (values > 0))
            if bool(bad.any()):
                index = int(bad.nonzero()[0, 0])
                raise ValueError(f"{name} must be finite and > 0, got {values[index].item()} at channel {index} "
                                 f"({int(bad.sum())} of {values.numel()} scales are not)")
        else:
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(f"{name} must be a number, got {type(value).__name__}")
            if not (_finite(float(value)) and value > 0):
                raise ValueError(f"{name} must be finite and > 0, got {value}")


def add_params(a: ActivationQParams, b: ActivationQParams, out: ActivationQParams, left_shift: int = 20):
    """Keyword arguments for ops.qadd, derived as TFLite's ADD Prepare does for int8.

    Both inputs are rescaled to twice the larger input scale, after a left shift of 20 bits
    that keeps the rescaled sums precise.
    """
    twice_max_scale = 2 * max(a.scale, b.scale)
    params = {"a_zero_point": a.zero_point, "b_zero_point": b.zero_point,
              "output_zero_point": out.zero_point, "left_shift": left_shift}
    for prefix, real in (("a", a.scale / twice_max_scale), ("b", b.scale / twice_max_scale),
                         ("output", twice_max_scale / ((1 << left_shift) * out.scale))):
        params[f"{prefix}_multiplier"], params[f"{prefix}_shift"] = quantize_multiplier_scalar(real)
    return params


# ---- the integer layer's parameters from its latent float ones -------------------------------------


class WeightCodes(NamedTuple):
    """Symmetric per-channel weight codes (int8 dtype) and, where asked for, the mask of weights
    inside the clip range |w / s| <= Q (where the straight-through gradient passes) and LSQ's
    d(w_hat / s)/ds term per weight: round(w / s) - w / s inside the range, the clamped code +-Q
    outside (float64)."""

    codes: Tensor
    inside: Optional[Tensor]
    slope: Optional[Tensor]


def weight_codes(weight: Tensor, scales: Tensor, bits: int, *, mask: bool = True, slope: bool = True,
                 backend: str = "auto") -> WeightCodes:
    """clamp(round(w / s[c]), -Q, Q) per output channel, w / s in float64, with the STE mask and
    LSQ slope when asked for (see WeightCodes)."""
    limit = weight_max(bits)
    kernels = _host_kernels(backend, weight.device)
    if kernels is not None:
        flat = _float_array(weight).reshape(weight.shape[0], -1)
        codes = torch.empty(flat.shape, dtype=torch.int8)
        inside = torch.empty(flat.shape if mask else (0, 0), dtype=torch.bool)
        slopes = torch.empty(flat.shape if slope else (0, 0), dtype=torch.float64)
        kernels.quantize_weight_channels(flat.numpy(), scales.detach().contiguous().numpy(), limit,
                                         codes.numpy(), inside.numpy(), slopes.numpy())
        return WeightCodes(codes.reshape(weight.shape), inside.reshape(weight.shape) if mask else None,
                           slopes.reshape(weight.shape) if slope else None)
    shape = (-1,) + (1,) * (weight.dim() - 1)
    ratio = weight.detach().double() / scales.detach().double().reshape(shape)
    codes = round_half_away(ratio).clamp(-limit, limit)
    inside = ratio.abs() <= limit  # LSQ's clip range, on the unrounded ratio
    return WeightCodes(codes.to(torch.int8), inside if mask else None,
                       torch.where(inside, codes - ratio, codes) if slope else None)


class Requantization(NamedTuple):
    """An integer layer's int32 bias (None without one) and per-channel (multiplier, shift)."""

    bias: Optional[Tensor]
    multiplier: Tensor
    shift: Tensor


def requantization_params(bias, weight_scale, input_scale, output_scale, channels,
                          backend: str = "auto") -> Requantization:
    """int32 bias codes round(b / (s_x s_w[c])) and (multiplier, shift) [OC] for M[c] =
    s_x s_w[c] / s_y (TFLite's QuantizeMultiplier)."""
    kernels = _host_kernels(backend, weight_scale.device)
    if kernels is None:
        scales = weight_scale.detach().double()
        b_q = None if bias is None else _bias_codes(bias, input_scale, scales)
        multiplier, shift = _multipliers(input_scale, scales, output_scale)
        return Requantization(b_q, multiplier.to(weight_scale.device), shift.to(weight_scale.device))
    scales = weight_scale.detach().expand(channels).contiguous().numpy()
    multiplier = torch.empty(channels, dtype=torch.int32)
    shift = torch.empty(channels, dtype=torch.int32)
    b_q = None if bias is None else torch.empty(channels, dtype=torch.int32)
    status = kernels.requantization_params(
        float(input_scale), scales, float(output_scale),
        _NO_BIAS if bias is None else _float_array(bias).numpy(), multiplier.numpy(), shift.numpy(),
        _NO_BIAS_CODES if b_q is None else b_q.numpy())
    if status:  # the messages of the torch formulation
        if status == 3:
            raise ValueError("bias does not fit int32 at scale input_scale * weight_scale")
        if status == 1:  # name the caller's scale that is wrong
            check_scales(input_scale=input_scale, weight_scale=weight_scale, output_scale=output_scale)
        real = input_scale * scales.astype(np.float64) / output_scale
        raise ValueError(f"real: real multiplier must be {'finite and >= 0' if status == 1 else 'below 2**30 (shift <= 30)'}"
                         f", got {real}")
    return Requantization(b_q, multiplier, shift)


_NO_BIAS, _NO_BIAS_CODES = np.zeros(0, np.float32), np.zeros(0, np.int32)


def _float_array(values: Tensor) -> Tensor:
    """float32 or float64 values as they are (the kernels divide in float64); other floating
    types widened to float64, which holds them exactly."""
    values = values.detach()
    return (values if values.dtype in (torch.float32, torch.float64) else values.double()).contiguous()


class IntegerParams(NamedTuple):
    """What the integer layer computes with: int8 weight codes, int32 bias (or None) and the
    per-channel requantization (multiplier, shift)."""

    weight: Tensor
    bias: Optional[Tensor]
    multiplier: Tensor
    shift: Tensor


def integer_params(weight, bias, weight_scale, input_scale, output_scale, weight_bits,
                   backend: str = "auto") -> IntegerParams:
    """The integer layer's parameters from the latent float ones, for M[c] = s_x s_w[c] / s_y."""
    codes = weight_codes(weight, weight_scale, weight_bits, mask=False, slope=False, backend=backend).codes
    return IntegerParams(codes, *requantization_params(bias, weight_scale, input_scale, output_scale,
                                                       weight.shape[0], backend))
