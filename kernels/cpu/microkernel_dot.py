"""The signed int8 dot-product micro-kernel: Arm's ``sdot`` (aarch64 with the dot-product
extension, ARMv8.2+: Neoverse, Apple M, Cortex-A55 / A76 and later), in LLVM IR via llvmlite.

``sdot`` adds to each int32 lane the sum of four int8 x int8 products — the VNNI kernel's
arithmetic (microkernel.py) with both operands signed. So the kernel reads the same int8
panels ([tap][k-group][64 channels][4 bytes]) and the same u = x + 128 image, and flips each
activation word back to x (u ^ 0x80 in every byte) before multiplying: the accumulator is
sum w * x, and the caller's zero-point correction uses z_x where the u8 kernels use 128 + z_x.
Products of int8 fit int16 and four fit int32: nothing saturates.

Register tile: 6 rows x 16 channels (4 q-registers of 4 int32 lanes, 24 accumulators of the
32 NEON registers) per sweep over K, 4 sweeps per 64-channel tile, like the 256-bit kernels.

Where the target has no dot-product extension (any x86 machine, in the tests) the same
arithmetic is written as portable IR — sign-extend, multiply, add each lane's four products —
so the path can be forced and checked bit-exact anywhere; it is only fast with sdot.
"""

from __future__ import annotations

from llvmlite import ir
from numba.core import cgutils

from .microkernel import (MR, NR, _I8, _I32, _I64, _define_kernel, _load, _shuffle, _splat,
                          _tile_intrinsic, target_features)

NEON_I32 = 4              # int32 lanes of one q register
SEGMENT = 4 * NEON_I32    # channels per sweep over K
SEGMENTS = NR // SEGMENT
_SIGN_FLIP = 0x80808080 - (1 << 32)  # u ^ 0x80 in every byte: u8 x + 128 -> int8 x (as i32)


def has_dotprod() -> bool:
    return "dotprod" in target_features()


def _portable_sdot(builder, acc, a, b):
    """acc[l] += sum_{j<4} a[4l + j] * b[4l + j] for <16 x i8> a, b (signed)."""
    wide = ir.VectorType(_I32, 4 * NEON_I32)
    products = builder.mul(builder.sext(a, wide), builder.sext(b, wide))
    total = acc
    for j in range(4):
        total = builder.add(total, _shuffle(builder, products, range(j, 4 * NEON_I32, 4)))
    return total


def _dot_kernel(module, requantized, use_sdot=None):
    """use_sdot: the Arm intrinsic (default: where the target has the dot-product extension)
    or the portable twin."""
    acc_ty = ir.VectorType(_I32, NEON_I32)
    bytes_ty = ir.VectorType(_I8, 4 * NEON_I32)
    blocks = SEGMENT // NEON_I32
    if has_dotprod() if use_sdot is None else use_sdot:
        sdot_fn = cgutils.get_or_insert_function(
            module, ir.FunctionType(acc_ty, [acc_ty, bytes_ty, bytes_ty]), "llvm.aarch64.neon.sdot.v4i32.v16i8")

        def sdot(builder, acc, a, b):
            return builder.call(sdot_fn, [acc, a, b])
    else:
        sdot = _portable_sdot

    def step(builder, accs, a_words, panel, b_offset, segment):
        b = [_load(builder, bytes_ty, panel, builder.add(b_offset, _I64((segment * blocks + j) * 16)))
             for j in range(blocks)]
        for m, word in enumerate(a_words[0]):
            signed = builder.xor(word, ir.Constant(_I32, _SIGN_FLIP))
            a = builder.bitcast(_splat(builder, signed, NEON_I32), bytes_ty)
            for j in range(blocks):
                slot = accs[m * blocks + j]
                builder.store(sdot(builder, builder.load(slot), a, b[j]), slot)

    def finish(builder, accs, segment):
        return [(index // blocks, segment * SEGMENT + (index % blocks) * NEON_I32, builder.load(slot))
                for index, slot in enumerate(accs)]

    suffix = ("_requant" if requantized else "") + ("" if sdot is _portable_sdot else "_neon")
    return _define_kernel(module, "intunlearn_int8_tile_sdot" + suffix, acc_ty, MR * blocks,
                          step, finish, requantized, segments=SEGMENTS)


int8_tile_sdot = _tile_intrinsic(_dot_kernel, requantized=False)
int8_tile_sdot_requant = _tile_intrinsic(_dot_kernel, requantized=True)


def kernel_ir_module(requantized: bool = True, use_sdot: bool = True) -> ir.Module:
    """A module holding the kernel, for compiling to an aarch64 target (benchmarks, tests):
    with the sdot intrinsic (use_sdot) or its portable twin."""
    module = ir.Module(name="intunlearn_sdot")
    _dot_kernel(module, requantized, use_sdot).linkage = "external"
    return module
