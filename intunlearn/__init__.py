"""intunlearn: machine unlearning for quantized networks in true integer arithmetic.

The integer spec (TFLite int8 quantization, TFLM reference semantics) lives in
`intunlearn.reference`; the public ops in `intunlearn.ops`; quantization primitives in
`intunlearn.qparams`. See DESIGN.md for the layers.
"""

from intunlearn import ops, qparams

__version__ = "0.1.0"
__all__ = ["ops", "qparams", "__version__"]
