"""Numba CPU kernels: exact int8 / packed-int4 GEMM and convolution with fused TFLite
requantization (int_gemm), ADD and average pooling (elementwise), and the STE backward with
fused per-sample weights (backward). Compiled on first use and cached on disk (cache=True);
threads follow numba.set_num_threads / NUMBA_NUM_THREADS.

The GEMM's micro-kernels, one per instruction set (the backend picks one, see
intunlearn.backends.numba_cpu.kernel_isa): microkernel.py (AVX-512 VNNI and portable IR),
microkernel_avx2.py (AVX2 int16 pairs, AVX-VNNI), microkernel_dot.py (aarch64 sdot);
pair_gemm.py prepares the AVX2 path's operands and runs its few-row kernels; isa_report.py
compiles any of them for another CPU and counts its hot loop's instructions.

The disk cache is kept per version of this package's sources. Numba keys a cached function on
its own file's time stamp, not on what it imports, and the LLVM-IR micro-kernels (and helpers
such as fixedpoint.py) are compiled into their callers' entries: after an edit of
microkernel.py alone (or a `git pull` that brings one), Numba would load the callers' old
machine code and compute with the old kernels, silently. So every kernel module's cache lives
in a folder named after the SHA-256 of all of them (`cache_folder()`): any change to any file
here compiles afresh. The folder is under NUMBA_CACHE_DIR when set, else the user's cache
(XDG_CACHE_HOME or ~/.cache)/intunlearn; folders of older sources can be deleted at will. Where
it cannot be written, Numba falls back to its own locations.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

from numba.core import config as _numba_config

# Every module with cached Numba functions, imported below inside cache_folder()'s scope.
CACHED_MODULES = ("fixedpoint", "quantize", "int_gemm", "pair_gemm", "elementwise", "backward")


def source_digest(folder: Path | None = None) -> str:
    """SHA-256 (16 hex digits) of every Python file of this package (or of `folder`), names
    and bytes."""
    digest = hashlib.sha256()
    for path in sorted(Path(folder or Path(__file__).parent).glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def cache_folder() -> Path:
    """The folder of this package's compiled kernels for its current sources."""
    base = os.environ.get("NUMBA_CACHE_DIR")
    if base:
        root = Path(base)
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "intunlearn"
    return root / f"numba-kernels-{source_digest()}"


@contextlib.contextmanager
def _numba_cache_dir(folder: Path):
    """Numba's CACHE_DIR while the modules' functions are decorated (a cached function picks
    its cache location then), the caller's setting restored afterwards."""
    previous = _numba_config.CACHE_DIR
    _numba_config.CACHE_DIR = str(folder)
    try:
        yield
    finally:
        _numba_config.CACHE_DIR = previous


with _numba_cache_dir(cache_folder()):
    from . import backward, elementwise, fixedpoint, int_gemm, pair_gemm, quantize  # noqa: F401,E402
