"""Numba CPU kernels: exact int8 / packed-int4 GEMM and convolution with fused TFLite
requantization (int_gemm), ADD and average pooling (elementwise), and the STE backward with
fused per-sample weights (backward). Compiled on first use and cached on disk (cache=True);
threads follow numba.set_num_threads / NUMBA_NUM_THREADS.

The GEMM's micro-kernels, one per instruction set (the backend picks one, see
intunlearn.backends.numba_cpu.kernel_isa): microkernel.py (AVX-512 VNNI and portable IR),
microkernel_avx2.py (AVX2 int16 pairs, AVX-VNNI), microkernel_dot.py (aarch64 sdot);
pair_gemm.py prepares the AVX2 path's operands and runs its few-row kernels; isa_report.py
compiles any of them for another CPU and counts its hot loop's instructions.

Developers: Numba's disk cache is keyed on each file's own source and time stamp, not on what it
imports. The LLVM-IR micro-kernels of microkernel.py (and its constants, e.g. GEMV_ROWS) are
compiled into the callers' cache entries, so after editing microkernel.py delete the stale
entries (find . -name "*.nbi" -delete; find . -name "*.nbc" -delete) or point NUMBA_CACHE_DIR at an
empty folder; touching the callers is not enough."""
