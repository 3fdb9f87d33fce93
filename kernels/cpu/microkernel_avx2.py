"""Micro-kernels for 256-bit x86 without AVX-512 (AVX2, AVX-VNNI), in LLVM IR via llvmlite.

AVX2 has no instruction that multiplies int8 by int8 into int32 without saturating
(vpmaddubsw sums pairs of u8 x s8 products in saturating int16). Its exact multiply-add is
vpmaddwd: 16 int16 x int16 products, summed in pairs into 8 int32 lanes. So the AVX2 kernels
work on int16 operands, which makes them simple:

* Activations are widened once to int16 holding x - z_x (the real value's integer, padding
  = 0), so the accumulator is sum w * (x - z_x) directly: no weight sums, no zero-point
  correction. |x - z_x| <= 32767 whenever |z_x| <= 32640, and a pair of products
  |(x - z_x) * w| <= 32767 * 128 fits int32 with room to spare, so nothing saturates and the
  int32 lanes wrap like the spec's accumulator.
* Weights are int16 too: panels of pairs of k per 32-bit lane (int8 and int4 alike).

Panel tile (``pair_tile_avx2``): the same interface and 6 x 64 output tile as the VNNI
kernel (microkernel.py), swept in 4 segments of 16 channels so that the 12 accumulators,
2 weight registers and 1 broadcast fit the 16 ymm registers:

    for segment s (channels 16s .. 16s + 15), for tap t, for k-pair q:
        b[j] = panel[s][t][q][8j .. 8j + 7][2 int16]             (j = 0, 1: two ymm)
        a[m] = the int16 pair (x[row m, 2q], x[row m, 2q + 1]) broadcast to 8 lanes
        acc[m][j] += vpmaddwd(a[m], b[j])                        (m = 0..5: 12 ymm)

The panel of a 64-channel block is segment-major, [segment][tap][k-pair][16 channels][2 int16]
(pair_gemm.pack_pair_panel), so each sweep reads its 64 bytes a step sequentially: read as a
quarter of every 256-byte row of int8's [tap][k-group][64 channels] layout, the same loop ran
~25% slower once the panel no longer fit L1 (1024 k: 56-58 against 76-77 GMAC/s, one thread
on Zen 3), the hardware prefetcher not following the 4-line stride. The block's size and the
image's byte offsets are int8's, so the GEMM driver, its blocking and the fused
requantization are shared with the other kernels unchanged.

The multiply-add is AVX2's vpmaddwd intrinsic where Numba compiles for AVX2, and portable IR
(sign-extend, multiply, add the even and odd products) elsewhere, so that the same module
compiles for every target (the dispatcher takes this path only on AVX2 CPUs).

AVX-VNNI tile (``int8_tile_avxvnni``): the VNNI kernel on ymm registers — the VEX
``vpdpbusd`` of Alder Lake / Zen 4 client cores, u8 x s8 in groups of 4 on the u8 = x + 128
image and int8 panels — also in 4 segments of 16 channels.

Few-row kernels, weights read in place: ``gemv_pairs`` (int16, 6 rows x 2 channels, or one
row x 8 channels; int8, or packed int4 unpacked in registers) and ``gemv_nibbles`` (packed int4
on 4 rows with vpmaddubsw, exact for 4-bit weights).
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .microkernel import (K_GROUP, MR, NR, _I8, _I16, _I32, _I64, _counted_loop, _define_kernel,
                          _generic_kernel, _load, _shuffle, _splat, _tile_intrinsic,
                          target_features)

YMM_I32 = 8                 # int32 lanes of one ymm register
SEGMENT = 2 * YMM_I32       # channels per sweep over K (two ymm accumulators per row)
SEGMENTS = NR // SEGMENT    # sweeps per 64-channel tile


def has_avx2() -> bool:
    return "avx2" in target_features()


def has_avxvnni() -> bool:
    """AVX-VNNI (VEX vpdpbusd on ymm), as on Alder Lake and later Intel / Zen 5 client cores."""
    return "avxvnni" in target_features()


def _pair_products(builder, a, b):
    """<16 x i16> a, b -> <8 x i32> lane l = a[2l] * b[2l] + a[2l+1] * b[2l+1] (exact for our
    operands): vpmaddwd. Called as AVX2's intrinsic where Numba compiles for AVX2 (~4% faster
    in the GEMM loop than the portable idiom, which LLVM also lowers to vpmaddwd but schedules
    less well), written portably otherwise so that the module compiles for any target."""
    if has_avx2():
        pair_ty = ir.VectorType(_I16, 2 * YMM_I32)
        pmaddwd = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VectorType(_I32, YMM_I32), [pair_ty, pair_ty]),
            "llvm.x86.avx2.pmadd.wd")
        return builder.call(pmaddwd, [a, b])
    wide = ir.VectorType(_I32, 2 * YMM_I32)
    products = builder.mul(builder.sext(a, wide), builder.sext(b, wide))
    even = _shuffle(builder, products, range(0, 2 * YMM_I32, 2))
    odd = _shuffle(builder, products, range(1, 2 * YMM_I32, 2))
    return builder.add(even, odd)


def _pair_kernel(module, requantized):
    acc_ty = ir.VectorType(_I32, YMM_I32)
    pairs_ty = ir.VectorType(_I16, 2 * YMM_I32)
    blocks = SEGMENT // YMM_I32

    def step(builder, accs, a_words, panel, b_offset, segment):
        # One ymm = 8 channels x 2 int16 = 32 bytes of the segment's 64 bytes a step.
        b = [_load(builder, pairs_ty, panel, builder.add(b_offset, _I64(j * 32)))
             for j in range(blocks)]
        for m, word in enumerate(a_words[0]):
            a = builder.bitcast(_splat(builder, word, YMM_I32), pairs_ty)
            for j in range(blocks):
                slot = accs[m * blocks + j]
                builder.store(builder.add(builder.load(slot), _pair_products(builder, a, b[j])), slot)

    def finish(builder, accs, segment):
        return [(index // blocks, segment * SEGMENT + (index % blocks) * YMM_I32, builder.load(slot))
                for index, slot in enumerate(accs)]

    suffix = "_requant" if requantized else ""
    return _define_kernel(module, "intunlearn_pair_tile_avx2" + suffix, acc_ty, MR * blocks,
                          step, finish, requantized, segments=SEGMENTS, segment_major=True)


def _avxvnni_kernel(module, requantized):
    acc_ty = ir.VectorType(_I32, YMM_I32)
    fnty = ir.FunctionType(acc_ty, [acc_ty, acc_ty, acc_ty])
    dpbusd = cgutils.get_or_insert_function(module, fnty, "llvm.x86.avx512.vpdpbusd.256")
    blocks = SEGMENT // YMM_I32

    def step(builder, accs, a_words, panel, b_offset, segment):
        b = [_load(builder, acc_ty, panel, builder.add(b_offset, _I64((segment * blocks + j) * 32)))
             for j in range(blocks)]
        for m, word in enumerate(a_words[0]):
            a = _splat(builder, word, YMM_I32)
            for j in range(blocks):
                slot = accs[m * blocks + j]
                builder.store(builder.call(dpbusd, [builder.load(slot), a, b[j]]), slot)

    def finish(builder, accs, segment):
        return [(index // blocks, segment * SEGMENT + (index % blocks) * YMM_I32, builder.load(slot))
                for index, slot in enumerate(accs)]

    suffix = "_requant" if requantized else ""
    return _define_kernel(module, "intunlearn_int8_tile_avxvnni" + suffix, acc_ty, MR * blocks,
                          step, finish, requantized, segments=SEGMENTS)


def _avxvnni_or_generic(module, requantized):
    # Compiled for a machine without AVX-VNNI (where the dispatcher never takes this path) the
    # entry point still has to compile: it falls back to the portable body.
    return (_avxvnni_kernel if has_avxvnni() else _generic_kernel)(module, requantized)


pair_tile_avx2 = _tile_intrinsic(_pair_kernel, requantized=False)
pair_tile_avx2_requant = _tile_intrinsic(_pair_kernel, requantized=True)
int8_tile_avxvnni = _tile_intrinsic(_avxvnni_or_generic, requantized=False)
int8_tile_avxvnni_requant = _tile_intrinsic(_avxvnni_or_generic, requantized=True)


# --------------------------------------------------------------------------------------------
# Few-row kernel: weights read in place, activations int16
# --------------------------------------------------------------------------------------------
# With a handful of rows a GEMM's time is the weight traffic (and on AVX2 the multiplies), so
# no panel is packed: CH output channels at a time read their weight rows straight from the
# [OC, K] int8 (or packed int4 [OC, K/2]) tensor, PAIR_CHUNK k per step, widen them to int16
# in registers and multiply them with the same k of up to PAIR_ROWS activation rows
# (int16 x - z_x): PAIR_ROWS x CH accumulators. Each weight register serves PAIR_ROWS rows
# and each activation load CH channels.
#
# int4: 16 packed bytes hold the chunk's 32 nibbles; sign-extending the bytes to int16 gives
# the high nibble by an arithmetic shift right by 4 and the low one by shifting left by 12 and
# back, i.e. the even elements (low nibbles) in one register and the odd ones in the other. The
# activation rows are stored in the same order — per chunk, its 16 even k, then its 16 odd k
# (pair_activation_order) — so no shuffle is needed at all.

PAIR_CHUNK = 32   # k values per step (two ymm of int16)
PAIR_ROWS = 6     # rows per pass
PAIR_CHANNELS = 2  # channels per pass


def _gemv_pairs_kernel(module, int4, rows_count, channels):
    name = f"intunlearn_gemv_pairs{rows_count}x{channels}" + ("_int4" if int4 else "")
    existing = module.globals.get(name)
    if existing is not None:
        return existing
    i16 = ir.VectorType(_I16, 2 * YMM_I32)
    bytes16 = ir.VectorType(_I8, 2 * YMM_I32)
    acc_ty = ir.VectorType(_I32, YMM_I32)
    i8p, i64p, i32p = _I8.as_pointer(), _I64.as_pointer(), _I32.as_pointer()
    fnty = ir.FunctionType(ir.VoidType(), [i8p, i64p, i8p, i64p, _I64, i32p])
    fn = ir.Function(module, fnty, name)
    fn.linkage = "internal"
    fn.attributes.add("nounwind")
    fn.attributes.add("noinline")
    for index in (0, 2, 5):
        fn.args[index].add_attribute("noalias")
    x, row_offsets, weight, channel_offsets, chunks, out = fn.args
    builder = ir.IRBuilder(fn.append_basic_block("entry"))
    rows = [builder.load(builder.gep(row_offsets, [_I64(r)])) for r in range(rows_count)]
    starts = [builder.load(builder.gep(channel_offsets, [_I64(c)])) for c in range(channels)]
    accs = [cgutils.alloca_once_value(builder, ir.Constant(acc_ty, None))
            for _ in range(rows_count * channels)]

    def shifts(value):
        return ir.Constant(i16, [value] * (2 * YMM_I32))

    def weights(c, chunk):
        """The chunk's weights of channel c as two <16 x i16> (in the activations' order)."""
        if int4:
            raw = _load(builder, bytes16, weight, builder.add(starts[c], builder.mul(chunk, _I64(16))))
            wide = builder.sext(raw, i16)
            low = builder.ashr(builder.shl(wide, shifts(12)), shifts(12))
            return [low, builder.ashr(wide, shifts(4))]
        base = builder.add(starts[c], builder.mul(chunk, _I64(PAIR_CHUNK)))
        return [builder.sext(_load(builder, bytes16, weight, builder.add(base, _I64(16 * h))), i16)
                for h in range(2)]

    def body(chunk):
        w = [weights(c, chunk) for c in range(channels)]
        for r, row in enumerate(rows):
            # x is int16: byte offset 2 * (row + 32 chunk) + 32 h
            base = builder.add(builder.mul(row, _I64(2)), builder.mul(chunk, _I64(2 * PAIR_CHUNK)))
            a = [_load(builder, i16, x, builder.add(base, _I64(32 * h))) for h in range(2)]
            for c in range(channels):
                slot = accs[r * channels + c]
                total = builder.add(_pair_products(builder, a[0], w[c][0]),
                                    _pair_products(builder, a[1], w[c][1]))
                builder.store(builder.add(builder.load(slot), total), slot)

    _counted_loop(builder, chunks, body)
    for index, slot in enumerate(accs):  # out[r * channels + c]: lane sums
        vec = builder.load(slot)
        total = builder.extract_element(vec, _I32(0))
        for lane in range(1, YMM_I32):
            total = builder.add(total, builder.extract_element(vec, _I32(lane)))
        builder.store(total, builder.gep(out, [_I64(index)]))
    builder.ret_void()
    return fn


# int4 weights on few rows: vpmaddubsw. AVX2's u8 x s8 multiply-add sums pairs of products in
# saturating int16, which is not exact for int8 weights (255 * -128 * 2 < -32768) but is for
# int4 ones: |u * w| <= 255 * 8, a pair <= 4080. Two of them per 64-k chunk add <= 8160 to an
# int16 lane, so four chunks (<= 32640) are summed in int16 before vpmaddwd with ones widens
# the lanes into the int32 accumulators: about half the instructions per product of the int16
# path. The activations are u = x + 128 bytes (per 64-k chunk its 32 even k, then its 32 odd
# k: the low and high nibbles of 32 packed bytes); the kernel also returns each channel's
# weight sum for the caller's correction -(128 + z_x) * sum w.

NIBBLE_CHUNK = 64   # k values per step of the byte kernel (32 packed bytes)
NIBBLE_ROWS = 4     # rows per pass (4 x 1 keeps every int16 sum in a register)
NIBBLE_CHANNELS = 1
_INT16_CHUNKS = 4   # chunks summed in int16 lanes before widening (4 * 8160 < 32768)


def _gemv_nibbles_kernel(module):
    name = f"intunlearn_gemv_nibbles{NIBBLE_ROWS}x{NIBBLE_CHANNELS}"
    existing = module.globals.get(name)
    if existing is not None:
        return existing
    bytes32 = ir.VectorType(_I8, 32)
    words16 = ir.VectorType(_I16, 16)
    acc_ty = ir.VectorType(_I32, YMM_I32)
    pmaddubsw = cgutils.get_or_insert_function(
        module, ir.FunctionType(words16, [bytes32, bytes32]), "llvm.x86.avx2.pmadd.ub.sw")
    # The widening is vpmaddwd with ones, called as the intrinsic: written portably, LLVM
    # folds the multiply by one away and emits four sign-extends and shuffles instead.
    pmaddwd = cgutils.get_or_insert_function(
        module, ir.FunctionType(acc_ty, [words16, words16]), "llvm.x86.avx2.pmadd.wd")
    i8p, i64p, i32p = _I8.as_pointer(), _I64.as_pointer(), _I32.as_pointer()
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [i8p, i64p, i8p, i64p, _I64, i32p]), name)
    fn.linkage = "internal"
    fn.attributes.add("nounwind")
    fn.attributes.add("noinline")
    for index in (0, 2, 5):
        fn.args[index].add_attribute("noalias")
    u, row_offsets, weight, channel_offsets, chunks, out = fn.args
    builder = ir.IRBuilder(fn.append_basic_block("entry"))
    rows = [builder.load(builder.gep(row_offsets, [_I64(r)])) for r in range(NIBBLE_ROWS)]
    starts = [builder.load(builder.gep(channel_offsets, [_I64(c)])) for c in range(NIBBLE_CHANNELS)]
    pairs = NIBBLE_ROWS * NIBBLE_CHANNELS
    wide = [cgutils.alloca_once_value(builder, ir.Constant(acc_ty, None)) for _ in range(pairs + NIBBLE_CHANNELS)]
    narrow = [cgutils.alloca_once_value(builder, ir.Constant(words16, None)) for _ in range(pairs + NIBBLE_CHANNELS)]

    def byte_constant(value):
        return ir.Constant(bytes32, [value] * 32)

    def signed_nibbles(nibbles):  # 0..15 -> -8..7: (n ^ 8) - 8
        return builder.sub(builder.xor(nibbles, byte_constant(8)), byte_constant(8))

    def chunk_body(chunk):
        w = []
        for c in range(NIBBLE_CHANNELS):
            raw = _load(builder, bytes32, weight, builder.add(starts[c], builder.mul(chunk, _I64(32))))
            low = signed_nibbles(builder.and_(raw, byte_constant(0x0F)))
            high = signed_nibbles(builder.lshr(raw, byte_constant(4)))
            w.append((low, high))
            slot = narrow[pairs + c]  # the weight sums: ones x w
            ones = byte_constant(1)
            total = builder.add(builder.call(pmaddubsw, [ones, low]), builder.call(pmaddubsw, [ones, high]))
            builder.store(builder.add(builder.load(slot), total), slot)
        for r, row in enumerate(rows):
            base = builder.add(row, builder.mul(chunk, _I64(NIBBLE_CHUNK)))
            even = _load(builder, bytes32, u, base)
            odd = _load(builder, bytes32, u, builder.add(base, _I64(32)))
            for c, (low, high) in enumerate(w):
                slot = narrow[r * NIBBLE_CHANNELS + c]
                total = builder.add(builder.call(pmaddubsw, [even, low]), builder.call(pmaddubsw, [odd, high]))
                builder.store(builder.add(builder.load(slot), total), slot)

    def group_body(group):
        for slot in narrow:
            builder.store(ir.Constant(words16, None), slot)
        first = builder.mul(group, _I64(_INT16_CHUNKS))
        remaining = builder.sub(chunks, first)
        count = builder.select(builder.icmp_signed("<", remaining, _I64(_INT16_CHUNKS)), remaining,
                               _I64(_INT16_CHUNKS))
        _counted_loop(builder, count, lambda j: chunk_body(builder.add(first, j)))
        ones16 = ir.Constant(words16, [1] * 16)
        for slot16, slot32 in zip(narrow, wide):
            widened = builder.call(pmaddwd, [builder.load(slot16), ones16])
            builder.store(builder.add(builder.load(slot32), widened), slot32)

    groups = builder.sdiv(builder.add(chunks, _I64(_INT16_CHUNKS - 1)), _I64(_INT16_CHUNKS))
    _counted_loop(builder, groups, group_body)
    for index, slot in enumerate(wide):  # out[r * CH + c], then the CH weight sums
        vec = builder.load(slot)
        total = builder.extract_element(vec, _I32(0))
        for lane in range(1, YMM_I32):
            total = builder.add(total, builder.extract_element(vec, _I32(lane)))
        builder.store(total, builder.gep(out, [_I64(index)]))
    builder.ret_void()
    return fn


@intrinsic
def gemv_nibbles(typingctx, u, row_offsets, weight, channel_offsets, chunks, out):
    """out[r * CH + c] = sum over k < 64 * chunks of u[row_offsets[r] + k'] * w_c[k] and
    out[NIBBLE_ROWS * CH + c] = sum of those w_c[k] (wrapping int32), for NIBBLE_ROWS rows and
    CH = NIBBLE_CHANNELS channels: u uint8 flat (x + 128, per 64-k chunk the even k then the
    odd k), w_c the packed int4 row starting at byte channel_offsets[c] of `weight`. x86 AVX2
    only (vpmaddubsw)."""
    sig = types.void(u, row_offsets, weight, channel_offsets, types.int64, out)

    def codegen(context, builder, signature, args):
        u_v, rows_v, weight_v, channels_v, chunks_v, out_v = args
        arrays = [context.make_array(signature.args[i])(context, builder, v)
                  for i, v in ((0, u_v), (1, rows_v), (2, weight_v), (3, channels_v), (5, out_v))]
        u_a, rows_a, weight_a, channels_a, out_a = arrays
        i8p = _I8.as_pointer()
        builder.call(_gemv_nibbles_kernel(builder.module),
                     [builder.bitcast(u_a.data, i8p), rows_a.data, builder.bitcast(weight_a.data, i8p),
                      channels_a.data, chunks_v, builder.bitcast(out_a.data, _I32.as_pointer())])
        return context.get_dummy_value()

    return sig, codegen


def _gemv_pairs_intrinsic(int4, rows_count, channels):
    def tile(typingctx, x, row_offsets, weight, channel_offsets, chunks, out):
        """out[r * CH + c] = sum over k < 32 * chunks of x[row_offsets[r] + k] * w_c[k]
        (wrapping int32): x int16 flat (pair_activation_order for int4), w_c the weight row
        starting at byte channel_offsets[c] of `weight` (int8, or packed int4 with k counted in
        nibbles). out int32 [>= rows_count * CH]."""
        sig = types.void(x, row_offsets, weight, channel_offsets, types.int64, out)

        def codegen(context, builder, signature, args):
            x_v, rows_v, weight_v, channels_v, chunks_v, out_v = args
            arrays = [context.make_array(signature.args[i])(context, builder, v)
                      for i, v in ((0, x_v), (1, rows_v), (2, weight_v), (3, channels_v), (5, out_v))]
            x_a, rows_a, weight_a, channels_a, out_a = arrays
            i8p = _I8.as_pointer()
            builder.call(_gemv_pairs_kernel(builder.module, int4, rows_count, channels),
                         [builder.bitcast(x_a.data, i8p), rows_a.data,
                          builder.bitcast(weight_a.data, i8p), channels_a.data, chunks_v,
                          builder.bitcast(out_a.data, _I32.as_pointer())])
            return context.get_dummy_value()

        return sig, codegen

    return intrinsic(tile)


# PAIR_ROWS rows x PAIR_CHANNELS channels (12 accumulators), and one row x 8 channels for
# batch 1, where each weight is used once and only the accumulators need registers.
GEMV_ONE_ROW_CHANNELS = 8
gemv_pairs = _gemv_pairs_intrinsic(False, PAIR_ROWS, PAIR_CHANNELS)
gemv_pairs_int4 = _gemv_pairs_intrinsic(True, PAIR_ROWS, PAIR_CHANNELS)
gemv_pairs_row = _gemv_pairs_intrinsic(False, 1, GEMV_ONE_ROW_CHANNELS)
gemv_pairs_row_int4 = _gemv_pairs_intrinsic(True, 1, GEMV_ONE_ROW_CHANNELS)


def kernel_ir_module(isa: str, requantized: bool = True) -> ir.Module:
    """A module holding one of this file's kernels ("avx2", "avxvnni", "gemv_avx2",
    "gemv_avx2_int4"), for compiling to another target (benchmarks, tests)."""
    module = ir.Module(name=f"intunlearn_{isa}")
    if isa == "avx2":
        fn = _pair_kernel(module, requantized)
    elif isa == "avxvnni":
        fn = _avxvnni_kernel(module, requantized)
    elif isa == "gemv_avx2":
        fn = _gemv_pairs_kernel(module, False, PAIR_ROWS, PAIR_CHANNELS)
    elif isa == "gemv_avx2_int4":
        fn = _gemv_nibbles_kernel(module)
    else:
        raise ValueError(f"isa must be 'avx2', 'avxvnni', 'gemv_avx2' or 'gemv_avx2_int4', got {isa!r}")
    fn.linkage = "external"  # keep it alive through the optimizer
    return module
