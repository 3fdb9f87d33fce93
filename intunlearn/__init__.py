"""intunlearn: machine unlearning for quantized networks in true integer arithmetic.

The integer spec (TFLite int8 quantization, TFLM reference semantics) lives in
`intunlearn.reference`; the public ops in `intunlearn.ops`; quantization primitives in
`intunlearn.qparams`; torch.library ops in `intunlearn.library`; quantized modules in
`intunlearn.modules`. See DESIGN.md for the layers.
"""

from intunlearn import ops, qparams
from intunlearn.convert import fold_batch_norm, quantize
from intunlearn.deploy import (integer_state_dict, load_integer_state, load_integer_state_dict,
                               save_integer_state)
from intunlearn.modules import (InputQuantizer, QuantAdd, QuantAvgPool2d, QuantConv2d, QuantLinear,
                                sample_weights, set_arithmetic)

__version__ = "0.1.0"
__all__ = [
    "InputQuantizer", "QuantAdd", "QuantAvgPool2d", "QuantConv2d", "QuantLinear", "__version__",
    "fold_batch_norm", "integer_state_dict", "load_integer_state", "load_integer_state_dict", "ops",
    "qparams", "quantize", "sample_weights", "save_integer_state", "set_arithmetic",
]
