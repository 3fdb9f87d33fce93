"""intunlearn: machine unlearning for quantized networks in true integer arithmetic.

The integer spec (TFLite int8 quantization, TFLM reference semantics) lives in
`intunlearn.reference`; the public ops in `intunlearn.ops`; quantization primitives in
`intunlearn.qparams`; torch.library ops in `intunlearn.library`; quantized modules in
`intunlearn.modules`. See DESIGN.md for the layers.
"""

# First, before torch and Numba load their OpenMP runtimes: idle workers sleep instead of
# spinning (see intunlearn.threads; it imports nothing heavy).
from intunlearn.threads import configure_waiting

configure_waiting()

from intunlearn import ops, qparams  # noqa: E402
from intunlearn.convert import fold_batch_norm, quantize  # noqa: E402
from intunlearn.deploy import (integer_state_dict, load_integer_state, load_integer_state_dict,  # noqa: E402
                               save_integer_state)
from intunlearn.modules import (InputQuantizer, QuantAdd, QuantAvgPool2d, QuantConv2d, QuantLinear,  # noqa: E402
                                sample_weights, set_arithmetic)

__version__ = "0.1.0"
__all__ = [
    "InputQuantizer", "QuantAdd", "QuantAvgPool2d", "QuantConv2d", "QuantLinear", "__version__",
    "export_tflite", "fold_batch_norm", "integer_state_dict", "load_integer_state",
    "load_integer_state_dict", "load_tflite", "ops", "qparams", "quantize", "sample_weights",
    "round_scales_to_float32", "save_integer_state", "set_arithmetic",
]

# The .tflite functions load on first use (PEP 562): `python -m intunlearn.tflite` then runs a
# module that the package has not imported already (runpy warns otherwise).
_TFLITE_NAMES = ("export_tflite", "load_tflite", "round_scales_to_float32")


def __getattr__(name):
    if name in _TFLITE_NAMES:
        from intunlearn import tflite
        return getattr(tflite, name)
    raise AttributeError(f"module 'intunlearn' has no attribute {name!r}")
