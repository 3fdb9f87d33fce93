"""Compile the micro-kernels' IR for any CPU with llvmlite (no such machine needed) and count
the instructions of their hot loops: what benchmarks/bench_numba.py records and
tests/test_numba_isa.py checks (AVX-VNNI emits the VEX vpdpbusd, aarch64 with the
dot-product extension emits sdot/udot, the AVX2 loop is vpmaddwd rather than shuffles).

The kernels are compiled alone (-O3, as Numba's pipeline does), not inside their Numba callers.
"""

from __future__ import annotations

import re
from collections import Counter

import llvmlite.binding as llvm

from . import microkernel, microkernel_avx2, microkernel_dot

KERNELS = ("vnni", "vnni_int4", "generic", "avx2", "avxvnni", "gemv_avx2", "gemv_avx2_int4",
           "sdot", "sdot_portable")

# Instructions that multiply: a basic block holding one of them is part of a hot loop.
_MULTIPLIES = re.compile(r"^\s*(?:\{vex\}\s*)?(vpdpbusd|vpdpwssd|vpmaddwd|vpmaddubsw|vpmulld|sdot|udot|"
                         r"usdot)\b", re.MULTILINE)
_BLOCK_START = re.compile(r"\n(?=\.?LBB|\S+:)")


def kernel_module(kernel: str, requantized: bool = True):
    """An llvmlite ir.Module holding one kernel (an external function, kept by the optimizer)."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
    if kernel in ("avx2", "avxvnni", "gemv_avx2", "gemv_avx2_int4"):
        return microkernel_avx2.kernel_ir_module(kernel, requantized)
    if kernel in ("sdot", "sdot_portable"):
        return microkernel_dot.kernel_ir_module(requantized, use_sdot=kernel == "sdot")
    from llvmlite import ir
    module = ir.Module(name=f"intunlearn_{kernel}")
    make = {"vnni": microkernel._vnni_kernel, "vnni_int4": microkernel._vnni_int4_kernel,
            "generic": microkernel._generic_kernel}[kernel]
    make(module, requantized).linkage = "external"
    return module


def compile_for(kernel: str, triple: str, cpu: str, features: str = "",
                requantized: bool = True) -> str:
    """Assembly of `kernel` optimized (-O3) for the target (triple, cpu, features), e.g.
    ("x86_64-unknown-linux-gnu", "alderlake", "") or ("aarch64-unknown-linux-gnu",
    "neoverse-n1", "+dotprod")."""
    llvm.initialize_all_targets()
    llvm.initialize_all_asmprinters()
    module = kernel_module(kernel, requantized)
    module.triple = triple
    parsed = llvm.parse_assembly(str(module))
    machine = llvm.Target.from_triple(triple).create_target_machine(
        cpu=cpu, features=features, opt=3, reloc="pic", codemodel="default")
    parsed.data_layout = str(machine.target_data)
    options = llvm.create_pipeline_tuning_options(speed_level=3)
    options.loop_vectorization = True
    options.slp_vectorization = True
    builder = llvm.create_pass_builder(machine, options)
    builder.getModulePassManager().run(parsed, builder)
    return machine.emit_assembly(parsed)


def hot_blocks(asm: str) -> list[str]:
    """The basic blocks of `asm` that multiply (the kernels' inner loops)."""
    return [block for block in _BLOCK_START.split(asm) if _MULTIPLIES.search(block)]


def instruction_mix(asm: str) -> dict[str, int]:
    """{mnemonic: count} over the hot blocks, most frequent first."""
    counts = Counter()
    for block in hot_blocks(asm):
        for line in block.splitlines():
            words = line.replace("{vex}", "").split()  # AVX-VNNI's VEX encoding prefix
            if words and not words[0].endswith(":") and not words[0].startswith((".", "#", "//")):
                counts[words[0]] += 1
    return dict(counts.most_common())


def hot_loop_counts(asm: str, names) -> dict[str, int]:
    mix = instruction_mix(asm)
    return {name: mix.get(name, 0) for name in names}
