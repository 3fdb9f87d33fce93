"""Triton GPU kernels of the integer ops, bit-exact with ``intunlearn.reference``.

    fixedpoint.py   the spec's fixed-point primitives as @triton.jit helpers, int4 unpacking
    gemm.py         qlinear: int8 / packed-int4 GEMM, int32 MMA, fused requantization
    conv.py         qconv2d: implicit-GEMM convolution (stride, padding, dilation, groups)
    elementwise.py  qadd (TFLite int8 ADD) and qavg_pool2d
    backward.py     STE backward of qlinear and qconv2d (fp32), mask and per-sample weights fused
    configs.py      autotuning configs: Hopper search space, one large-block config interpreted
    aot.py          compile for sm_90 without a GPU; registers, spills, pipelining, MMA kinds

They run compiled on CUDA tensors, or on CPU tensors under Triton's interpreter
(TRITON_INTERPRET=1 set before triton is imported) for testing. They depend on triton, torch and
numpy only; ``intunlearn.backends.triton_gpu`` is the backend that dispatches to them.
"""

from .backward import qconv2d_backward, qlinear_backward
from .conv import qconv2d
from .elementwise import qadd, qavg_pool2d
from .gemm import qlinear

__all__ = ["qadd", "qavg_pool2d", "qconv2d", "qconv2d_backward", "qlinear", "qlinear_backward"]
