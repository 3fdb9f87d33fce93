"""The Numba kernels' disk cache is kept per version of their sources (kernels/cpu/__init__.py):
an edit of any kernel file, a micro-kernel's IR included, must not load old machine code."""

from __future__ import annotations

import importlib
import os
import re
import shutil
from pathlib import Path

from numba.core.registry import CPUDispatcher

import intunlearn.kernels.cpu as package

SOURCES = Path(package.__file__).parent


def test_every_cached_kernel_lives_under_the_source_digest():
    folder = package.cache_folder().resolve()
    cached = 0
    for name in package.CACHED_MODULES:
        module = importlib.import_module(f"intunlearn.kernels.cpu.{name}")
        for value in vars(module).values():
            if isinstance(value, CPUDispatcher) and value._cache is not None and hasattr(value._cache, "_cache_path"):
                assert Path(value._cache._cache_path).resolve().is_relative_to(folder), (name, value)
                cached += 1
    assert cached > 20  # the GEMM, convolution, packing, elementwise and backward kernels


def test_every_module_with_cached_functions_is_listed():
    """A new module with cache=True functions must be imported under the digest's folder."""
    with_cache = {path.stem for path in SOURCES.glob("*.py") if re.search(r"cache\s*=\s*True", path.read_text())
                  and path.stem != "__init__"}
    assert with_cache <= set(package.CACHED_MODULES)


def test_any_edit_of_any_kernel_file_changes_the_folder(tmp_path):
    copy = tmp_path / "cpu"
    shutil.copytree(SOURCES, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert package.source_digest(copy) == package.source_digest()
    for name in ("microkernel.py", "fixedpoint.py", "int_gemm.py"):
        path = copy / name
        original = path.read_bytes()
        path.write_bytes(original + b"\n# edited\n")
        assert package.source_digest(copy) != package.source_digest(), name
        path.write_bytes(original)
    (copy / "new_kernel.py").write_text("X = 1\n")
    assert package.source_digest(copy) != package.source_digest()


def test_numbas_own_setting_is_left_as_it_was():
    from numba.core import config

    assert config.CACHE_DIR == os.environ.get("NUMBA_CACHE_DIR", "")
