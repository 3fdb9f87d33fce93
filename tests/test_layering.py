"""The layers of DESIGN.md, enforced: imports point one way only.

    reference/   imports numpy and the standard library only
    kernels/     imports nothing from the engine (only its own modules, numpy, numba, llvmlite,
                 triton, torch)
    intunlearn/  reaches the kernels only through intunlearn/backends/
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Each folder's dotted name once installed (pyproject's package-dir).
PACKAGES = {"reference": "intunlearn.reference", "kernels": "intunlearn.kernels", "intunlearn": "intunlearn"}


def imports(path: Path, text: str | None = None) -> list[tuple[int, str]]:
    """(line, absolute dotted name) of every import in a source file (or in `text`, read as
    that file), relative ones resolved."""
    folder, *inner = path.relative_to(ROOT).with_suffix("").parts
    module = ".".join([PACKAGES[folder], *inner])
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    if path.name == "__init__.py":
        package = package.rsplit(".__init__", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text() if text is None else text, str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = ".".join(parts[:len(parts) - node.level + 1])
                base = f"{anchor}.{base}" if base else anchor
            # `from package import module` imports a module: record package.module as well
            found += [(node.lineno, base)] + [(node.lineno, f"{base}.{alias.name}") for alias in node.names
                                              if base.startswith("intunlearn")]
    return found


def sources(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def violations(folder: str, allowed) -> list[str]:
    return [f"{path.relative_to(ROOT)}:{line} imports {name}"
            for path in sources(folder) for line, name in imports(path) if not allowed(path, name)]


def test_reference_imports_only_numpy_and_the_standard_library():
    def allowed(path, name):
        top = name.split(".")[0]
        return (name == "numpy" or top == "numpy" or top in sys.stdlib_module_names
                or name.startswith("intunlearn.reference"))
    assert violations("reference", allowed) == []


def test_kernels_import_nothing_from_the_engine():
    def allowed(path, name):
        return not name.startswith("intunlearn") or name.startswith("intunlearn.kernels")
    assert violations("kernels", allowed) == []


def test_only_the_backends_import_the_kernels():
    def allowed(path, name):
        in_backends = path.relative_to(ROOT).parts[:2] == ("intunlearn", "backends")
        return in_backends or not name.startswith("intunlearn.kernels")
    assert violations("intunlearn", allowed) == []


def test_no_top_level_kernels_or_reference_imports():
    """The folders install as intunlearn.kernels / intunlearn.reference: `import kernels` would
    only work from a checkout."""
    bad = [f"{path.relative_to(ROOT)}:{line} imports {name}"
           for folder in PACKAGES for path in sources(folder) for line, name in imports(path)
           if name.split(".")[0] in ("kernels", "reference")]
    assert bad == []


@pytest.mark.parametrize("source, expected", [
    ("from intunlearn.kernels.cpu import quantize", "intunlearn.kernels.cpu.quantize"),
    ("from ..kernels.cpu import int_gemm", "intunlearn.kernels.cpu.int_gemm"),
    ("import intunlearn.kernels.gpu", "intunlearn.kernels.gpu"),
])
def test_the_checker_sees_kernel_imports(source, expected):
    """The rules above would pass vacuously if the import reader missed a form of import."""
    probe = ROOT / "intunlearn" / "unlearning" / "probe.py"
    assert expected in [name for _, name in imports(probe, source)]
