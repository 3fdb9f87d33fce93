"""Numba CPU kernels: exact int8 / packed-int4 GEMM and convolution with fused TFLite
requantization (int_gemm), ADD and average pooling (elementwise), and the STE backward with
fused per-sample weights (backward). Compiled on first use and cached on disk (cache=True);
threads follow numba.set_num_threads / NUMBA_NUM_THREADS."""
