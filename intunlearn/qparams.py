"""Quantization primitives: choose scales and zero points, quantize and dequantize tensors, and
derive the integer parameters (multipliers, shifts, int32 biases) of the integer ops.

Conventions are the TFLite int8 quantization spec's: activations asymmetric int8 per tensor with
a range that always contains 0 (so real zero is exactly representable, e.g. in padding), weights
symmetric per output channel with zero point 0 (int8 in [-127, 127], int4 in [-7, 7]), biases
int32 at scale s_x * s_w[c]. Rounding is to nearest with ties away from zero, as TFLite rounds.
"""

from __future__ import annotations

import math

from dataclasses import dataclass

import torch

from intunlearn.ops import quantize_multiplier

ACTIVATION_MIN, ACTIVATION_MAX = -128, 127


def weight_max(bits: int) -> int:
    """Largest weight magnitude the symmetric quantizer produces: 127 for int8, 7 for int4."""
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, got {bits!r}")
    return 2 ** (bits - 1) - 1


def _cpu_kernels():
    """The Numba quantization kernels, or None where numba is not installed or while
    torch.compile traces (Dynamo cannot trace a Numba call; the torch code that replaces them
    gives the same bits and compiles into the graph)."""
    if torch.compiler.is_compiling():
        return None
    try:
        from intunlearn.kernels.cpu import quantize as kernels
    except ImportError:
        return None
    return kernels


def round_half_away_scalar(value: float) -> int:
    """round_half_away of one Python float, in exact float64 steps (value - trunc(value) is
    exact), so that torch.compile folds it to a constant."""
    truncated = math.trunc(value)
    if abs(value - truncated) >= 0.5:
        return truncated + (1 if value > 0 else -1)
    return truncated


def round_to_float32(value: float) -> float:
    """The float32 nearest to a (normal-range) Python float, ties to even, as torch.tensor(value)
    stores it, in plain Python (a constant to torch.compile)."""
    if value == 0 or not math.isfinite(value):
        return value
    mantissa, exponent = math.frexp(value)  # mantissa in [0.5, 1): 24 bits kept
    return math.ldexp(round(mantissa * 2.0**24) / 2.0**24, exponent)  # round(): ties to even


def round_half_away(values: torch.Tensor) -> torch.Tensor:
    """Round to nearest, ties away from zero (torch.round sends ties to even). Not
    differentiable (its derivative is zero almost everywhere; STE callers detach first)."""
    kernels = _cpu_kernels() if values.device.type == "cpu" and values.dtype == torch.float64 else None
    if kernels is not None:
        flat = values.detach().contiguous().reshape(-1)
        out = torch.empty_like(flat)
        kernels.round_half_away_array(flat.numpy(), out.numpy())
        return out.reshape(values.shape)
    truncated = torch.trunc(values)
    is_tie = (values - truncated).abs() == 0.5
    return torch.where(is_tie, truncated + torch.sign(values), torch.round(values))


def quantize_activation(real: torch.Tensor, scale: float, zero_point: int, qmin: int = -128,
                        qmax: int = 127) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor int8 codes clamp(round(real / scale) + zero_point, qmin, qmax) and the mask of
    entries the clamp left alone (where a straight-through gradient passes). float64 division."""
    kernels = _cpu_kernels() if real.device.type == "cpu" and real.dtype in (torch.float32, torch.float64) else None
    if kernels is not None:
        flat = real.detach().contiguous().reshape(-1)
        codes = torch.empty(flat.shape, dtype=torch.int8)
        inside = torch.empty(flat.shape, dtype=torch.bool)
        kernels.quantize_per_tensor(flat.numpy(), float(scale), int(zero_point), qmin, qmax, codes.numpy(),
                                    inside.numpy())
        return codes.reshape(real.shape), inside.reshape(real.shape)
    unclamped = round_half_away(real.detach().double() / scale) + zero_point
    return unclamped.clamp(qmin, qmax).to(torch.int8), (unclamped >= qmin) & (unclamped <= qmax)


def dequantize_activation(codes: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """float32 scale * (codes - zero_point) of per-tensor int8 codes, the product in float64."""
    kernels = _cpu_kernels() if codes.device.type == "cpu" else None
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
    zero_point = int(round_half_away(torch.tensor(ACTIVATION_MIN - low / scale, dtype=torch.float64)))
    return ActivationQParams(scale, max(ACTIVATION_MIN, min(ACTIVATION_MAX, zero_point)))


def _finite(value: float) -> bool:
    return value == value and abs(value) != float("inf")


def choose_weight_scales(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric per-output-channel scales (float64 [OUT]) = max|w_c| / qmax.

    A channel of zeros gets scale 1.0 (its weights quantize to 0 at any scale).
    """
    if not weight.is_floating_point() or weight.dim() < 2:
        raise ValueError(f"weight must be a floating tensor [OUT, ...], got {weight.dtype} {tuple(weight.shape)}")
    absmax = weight.detach().double().abs().flatten(1).amax(dim=1)
    return torch.where(absmax > 0, absmax / weight_max(bits), torch.ones_like(absmax))


def quantize(real: torch.Tensor, scale, zero_point, qmin: int, qmax: int, axis: int | None = None):
    """q = clamp(round(real / scale) + zero_point, qmin, qmax) as int8 (int32 if the range needs).

    scale/zero_point are scalars, or 1-D tensors applied along `axis`. The clamp is the
    quantizer's saturation; callers that train through it mask gradients there (STE).
    """
    per_tensor = not isinstance(scale, torch.Tensor) and not isinstance(zero_point, torch.Tensor)
    if per_tensor and -128 <= qmin and qmax <= 127:
        return quantize_activation(real, float(scale), int(zero_point), qmin, qmax)[0]
    scale = _along(scale, real, axis)
    zero_point = _along(zero_point, real, axis)
    q = round_half_away(real.double() / scale) + zero_point
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
    """Symmetric per-channel quantization: (int8 values in [-qmax, qmax], float64 scales [OUT])."""
    scales = choose_weight_scales(weight, bits)
    return quantize(weight, scales, 0, -weight_max(bits), weight_max(bits), axis=0), scales


def quantize_bias(bias: torch.Tensor, input_scale: float, weight_scales: torch.Tensor) -> torch.Tensor:
    """int32 bias at scale s_x * s_w[c]; raises if a value does not fit int32."""
    q = round_half_away(bias.detach().double() / (input_scale * weight_scales.double()))
    if q.numel() and q.abs().max() > 2**31 - 1:
        raise ValueError("bias does not fit int32 at scale input_scale * weight_scale")
    return q.to(torch.int32)


def output_multipliers(input_scale: float, weight_scales: torch.Tensor, output_scale: float):
    """(multiplier, shift) int32 [OUT] for M[c] = s_x * s_w[c] / s_y."""
    return quantize_multiplier(input_scale * weight_scales.double() / output_scale)


def quantize_multiplier_scalar(real: float) -> tuple[int, int]:
    """ops.quantize_multiplier of one Python float, in plain Python (so that torch.compile
    folds it to a constant): real = multiplier * 2**(shift - 31), multiplier in [2**30, 2**31)
    or 0, ties of the 31-bit fraction rounded away from zero; (0, 0) below 2**-32."""
    if not math.isfinite(real) or real < 0:
        raise ValueError(f"real multiplier must be finite and >= 0, got {real}")
    fraction, exponent = math.frexp(real)  # real = fraction * 2**exponent, fraction in [0.5, 1)
    fixed = round_half_away_scalar(fraction * 2.0**31)  # exact scaling
    if fixed == 2**31:  # the fraction rounded up to 1.0
        fixed, exponent = fixed // 2, exponent + 1
    if real == 0 or exponent < -31:
        return 0, 0
    if exponent > 30:
        raise ValueError(f"real multiplier must round to below 2**30 (shift <= 30), got {real}")
    return fixed, exponent


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
