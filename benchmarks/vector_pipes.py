"""How fast this core issues the instructions an exact int8 GEMM and a float32 GEMM are made of.

    python benchmarks/vector_pipes.py

An exact int8 GEMM on AVX2 is, per 16 products, one `vpmaddwd` (16 int16 products summed in
pairs into int32) and one `vpaddd` (AVX2 has no accumulating form; AVX-VNNI's `vpdpwssd` is
one); a float32 GEMM is, per 8 products, one `vfmadd231ps`. Four loops of 12 independent
chains each measure the rates (instructions per ns, no clock needed):

    madd       r[i] = vpmaddwd(r[i], b)                 the multiplier alone
    madd+add   r[i] = r[i] + vpmaddwd(r[i + 1], b)      what the int8 GEMM's loop needs
    fma        r[i] = vfmadd(r[i], a, b)                what sgemm's loop needs
    mixed      8 madd+add chains and 4 fma chains        whether the FMA units add int8 work

and `int8_over_f32_ceiling` = 16 x rate(madd+add) / (8 x rate(fma)): the most an exact int8
GEMM can gain over a float32 GEMM on this core when both run their loops at full rate. The
multiplies alone would allow 2x (two `vpmaddwd` and two FMAs a cycle on Zen 3 and Skylake);
the adds take the same vector pipes, which is what the second loop measures. Each chain's
latency (3-5 cycles) is covered by the 12 chains, so the loops measure throughput.
`mixed_over_madd_add` is the products per ns of the mixed loop (16 per pair, 8 exact int8
products per FMA on floats holding small integers) over the madd+add loop's: below 1 where
FMAs take the pipes `vpmaddwd` needs (Zen 3: 0.92-0.95 on 2026-11-30), so a GEMM that sent
part of its work to the FMA units would gain nothing.

The loops are LLVM IR called from Numba (x86 with AVX2 and FMA only).
"""

from __future__ import annotations

import json
import time

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

CHAINS = 12
MIXED_PAIRS = 8  # of the mixed loop's 12 chains; the other 4 are FMAs
STEPS = 2_000_000

_I16x16 = ir.VectorType(ir.IntType(16), 16)
_I32x8 = ir.VectorType(ir.IntType(32), 8)
_F32x8 = ir.VectorType(ir.FloatType(), 8)


def _loop(builder, steps, initial, step):
    """Run `step(values) -> values` `steps` times on SSA values (phi nodes), return the last."""
    entry = builder.block
    body = builder.append_basic_block("body")
    done = builder.append_basic_block("done")
    builder.branch(body)
    builder.position_at_end(body)
    counter = builder.phi(ir.IntType(64))
    counter.add_incoming(ir.Constant(ir.IntType(64), 0), entry)
    phis = []
    for value in initial:
        phi = builder.phi(value.type)
        phi.add_incoming(value, entry)
        phis.append(phi)
    updated = step(phis)
    following = builder.add(counter, ir.Constant(ir.IntType(64), 1))
    for phi, value in zip(phis, updated):
        phi.add_incoming(value, builder.block)
    counter.add_incoming(following, builder.block)
    builder.cbranch(builder.icmp_signed("<", following, steps), body, done)
    builder.position_at_end(done)
    return updated


def _kernel(kind):
    """An intrinsic `f(seed int32[8], steps) -> int32`: the `kind` loop, its chains summed
    (so that nothing is dead code)."""

    @intrinsic
    def run(typingctx, seed, steps):
        sig = types.int32(seed, types.int64)

        def codegen(context, builder, signature, args):
            module = builder.module
            seed_array = context.make_array(signature.args[0])(context, builder, args[0])
            start = builder.load(builder.bitcast(seed_array.data, _I32x8.as_pointer()), align=4)
            pmaddwd = cgutils.get_or_insert_function(
                module, ir.FunctionType(_I32x8, [_I16x16, _I16x16]), "llvm.x86.avx2.pmadd.wd")
            fma = cgutils.get_or_insert_function(
                module, ir.FunctionType(_F32x8, [_F32x8] * 3), "llvm.fma.v8f32")
            shifts = [builder.add(start, ir.Constant(_I32x8, [i] * 8)) for i in range(CHAINS)]
            factor = builder.bitcast(builder.add(start, ir.Constant(_I32x8, [3] * 8)), _I16x16)

            def madd(value):
                return builder.call(pmaddwd, [builder.bitcast(value, _I16x16), factor])

            if kind == "fma":
                initial = [builder.sitofp(value, _F32x8) for value in shifts]
                a = builder.sitofp(start, _F32x8)

                def step(values):
                    return [builder.call(fma, [value, a, a]) for value in values]
            elif kind == "madd":
                initial = shifts

                def step(values):
                    return [madd(value) for value in values]
            elif kind == "madd+add":
                initial = shifts

                def step(values):
                    return [builder.add(values[i], madd(values[(i + 1) % CHAINS]))
                            for i in range(CHAINS)]
            else:  # mixed: MIXED_PAIRS madd+add chains, the rest fma chains, interleaved
                a = builder.sitofp(start, _F32x8)
                initial = (shifts[:MIXED_PAIRS]
                           + [builder.sitofp(value, _F32x8) for value in shifts[MIXED_PAIRS:]])

                def step(values):
                    pairs = [builder.add(values[i], madd(values[(i + 1) % MIXED_PAIRS]))
                             for i in range(MIXED_PAIRS)]
                    fmas = [builder.call(fma, [value, a, a]) for value in values[MIXED_PAIRS:]]
                    return pairs + fmas

            final = _loop(builder, args[1], initial, step)
            if kind == "fma":
                final = [builder.fptosi(value, _I32x8) for value in final]
            elif kind == "mixed":
                final = final[:MIXED_PAIRS] + [builder.fptosi(value, _I32x8)
                                               for value in final[MIXED_PAIRS:]]
            total = final[0]
            for value in final[1:]:
                total = builder.xor(total, value)
            return builder.extract_element(total, ir.Constant(ir.IntType(32), 0))

        return sig, codegen

    @njit(nogil=True)
    def call(seed, steps):
        return run(seed, steps)

    return call


def rates(steps: int = STEPS, repeats: int = 5) -> dict:
    """{kind: best instructions per ns} for the loops, round-robin, and the ceilings."""
    seed = np.arange(8, dtype=np.int32)
    kernels = {kind: _kernel(kind) for kind in ("madd", "madd+add", "fma", "mixed")}
    for kernel in kernels.values():
        kernel(seed, 1000)
    best = {kind: float("inf") for kind in kernels}
    for _ in range(repeats):
        for kind, kernel in kernels.items():
            start = time.perf_counter()
            kernel(seed, steps)
            best[kind] = min(best[kind], time.perf_counter() - start)
    per_ns = {kind: CHAINS * steps / seconds / 1e9 for kind, seconds in best.items()}
    mixed_steps_per_ns = per_ns.pop("mixed") / CHAINS
    mixed_products = (16 * MIXED_PAIRS + 8 * (CHAINS - MIXED_PAIRS)) * mixed_steps_per_ns
    return {"instructions_per_ns": per_ns,
            "mixed_over_madd_add": mixed_products / (16 * per_ns["madd+add"]),
            "int8_over_f32_ceiling": 16 * per_ns["madd+add"] / (8 * per_ns["fma"]),
            "multiplier_only_ceiling": 16 * per_ns["madd"] / (8 * per_ns["fma"])}


if __name__ == "__main__":
    print(json.dumps(rates(), indent=2))
