"""The "numba" backend's host quantizers: intunlearn.qparams' quantization steps as one-pass
Numba loops (intunlearn.kernels.cpu.quantize), bit-identical with qparams' torch formulation
(tests/test_qparams.py checks each against it and against the reference)."""

from intunlearn.kernels.cpu.quantize import (  # noqa: F401  (the interface qparams calls)
    dequantize_per_tensor,
    quantize_per_tensor,
    quantize_weight_channels,
    requantization_params,
    round_half_away_array,
)
