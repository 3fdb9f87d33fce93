"""The int8 GEMM micro-kernel, written in LLVM IR (llvmlite) and called from Numba.

Why IR: Numba widens int8/int16/int32 arithmetic to int64, which hides from LLVM the patterns it
turns into x86's multiply-add instructions. Emitting the vector IR directly gives, per host:

* ``vnni``: AVX-512 VNNI ``vpdpbusd`` — 16 int32 lanes, each += the sum of 4 products u8 x s8.
* ``generic``: portable vector IR (zext/sext, mul, add) that LLVM lowers to ``vpmaddwd`` on
  x86 (AVX2 or AVX-512BW) and to its own multiply-accumulate instructions elsewhere.

Both compute exactly the same int32 values: a product u8 x s8 lies in [-32640, 32385], a sum of
four fits int32, and the accumulators wrap modulo 2**32 (no saturating instruction is used —
unlike vpmaddubsw, which saturates pair sums at int16, or vpdpbusds).

Register tile (the micro-kernel computes one MR x NR block of int32 dot products over all of K):

    rows (MR = 6 output positions)   x   NR = 64 output channels (4 zmm of 16 int32 lanes)

    for tap t, for k-group q (4 input channels):
        b[j]  = 64 bytes of the weight panel: channels 16j..16j+15, 4 k each   (j = 0..3)
        a[m]  = the 4 activation bytes of row m, broadcast to all 16 lanes      (m = 0..5)
        acc[m][j] = vpdpbusd(acc[m][j], a[m], b[j])                             (24 zmm)

The activations are read in place from a padded NHWC uint8 image (x + 128), with no im2col:
row m's data for tap t starts at image[row_offsets[m] + tap_offsets[t]] and holds the group's
channels contiguously (an indirect "implicit GEMM", like XNNPACK's indirection buffer).
The weight panel of one 64-channel block is laid out [tap][k-group][64 channels][4 bytes], so
it is read strictly sequentially, 256 bytes per k-group.
"""

from __future__ import annotations

import functools

import llvmlite.binding as _llvm
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

MR = 6        # rows (output positions) per register tile
NR = 64       # output channels per register tile (panel block width)
K_GROUP = 4   # k values per 32-bit word of the panels (vpdpbusd's group)
LANES = 16    # int32 lanes of one zmm register

_I8, _I16, _I32, _I64 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)


@functools.lru_cache(maxsize=None)
def target_features() -> frozenset[str]:
    """Features of the machine Numba compiles for (NUMBA_CPU_NAME / _FEATURES honoured).
    Fixed for the process (Numba reads its target at start-up), so computed once."""
    try:
        from numba.core.registry import cpu_target
        text = cpu_target.target_context.codegen()._tm_features
        return frozenset(f[1:] for f in text.split(",") if f.startswith("+"))
    except Exception:  # noqa: BLE001 - private attribute; fall back to the host's features
        return frozenset(name for name, on in _llvm.get_host_cpu_features().items() if on)


def target_cpu_name() -> str:
    """The CPU Numba compiles for: NUMBA_CPU_NAME if set, else the host's (LLVM's name)."""
    from numba.core import config
    return config.CPU_NAME or _llvm.get_host_cpu_name()


def has_vnni512() -> bool:
    features = target_features()
    return {"avx512f", "avx512bw", "avx512vnni"} <= features


def _generic_pass_lanes() -> int:
    """int32 output lanes per pass of the generic kernel: one zmm of pair sums with AVX-512BW,
    otherwise one ymm (keeps 6 accumulators in AVX2's 16 registers)."""
    return 16 if "avx512bw" in target_features() else 8


# --------------------------------------------------------------------------------------------
# IR helpers
# --------------------------------------------------------------------------------------------


def _ptr(builder, base, byte_offset):
    return builder.gep(base, [byte_offset])


def _load(builder, ty, base, byte_offset):
    ptr = builder.bitcast(_ptr(builder, base, byte_offset), ty.as_pointer())
    return builder.load(ptr, align=1)


def _splat(builder, scalar, count):
    vec_ty = ir.VectorType(scalar.type, count)
    vec = builder.insert_element(ir.Constant(vec_ty, ir.Undefined), scalar, _I32(0))
    return builder.shuffle_vector(vec, ir.Constant(vec_ty, ir.Undefined),
                                  ir.Constant(ir.VectorType(_I32, count), [0] * count))


def _shuffle(builder, vec, indices):
    return builder.shuffle_vector(vec, ir.Constant(vec.type, ir.Undefined),
                                  ir.Constant(ir.VectorType(_I32, len(indices)), list(indices)))


def _counted_loop(builder, count, body):
    """for i in range(count): body(i) — i64 counter in an alloca (SROA promotes it)."""
    counter = cgutils.alloca_once_value(builder, _I64(0))
    head = builder.append_basic_block("loop.head")
    loop = builder.append_basic_block("loop.body")
    done = builder.append_basic_block("loop.done")
    builder.branch(head)
    builder.position_at_end(head)
    i = builder.load(counter)
    builder.cbranch(builder.icmp_signed("<", i, count), loop, done)
    builder.position_at_end(loop)
    body(i)
    builder.store(builder.add(i, _I64(1)), counter)
    builder.branch(head)
    builder.position_at_end(done)


# --------------------------------------------------------------------------------------------
# The two kernel bodies: (image, row_offsets, tap_offsets, taps, groups_per_tap, panel, out)
# --------------------------------------------------------------------------------------------


def _define_kernel(module, name, acc_type, acc_count, emit_step, emit_finish, requantized,
                   segments=1, k_groups_per_step=1, segment_major=False):
    """Define `void name(i8* image, i64* row_offsets, i64* tap_offsets, i64 taps,
    i64 steps_per_tap, i8* panel, i8* out, i32* qparams, i64 qstride, i64 single_rounding,
    i32 z_y, i32 act_min, i32 act_max)`: the taps x steps loop around emit_step, then
    emit_finish's int32 results either stored raw (out = int32 [MR][NR]) or requantized
    (out = int8 [MR][NR]; see _emit_requantize). A step covers k_groups_per_step k-groups of 4
    (one for int8 panels, two for int4 ones) and 256 panel bytes; emit_step gets each row's
    activation words per k-group, a_words[i][m], and b_offset, the byte offset of the step's
    256 panel bytes.

    segment_major: the panel holds each segment's channels as a panel of their own
    ([segment][tap][k-group][NR / segments channels][4 bytes]), so a segment's sweep reads
    its 256 / segments bytes a step sequentially instead of a quarter of every 256-byte row;
    b_offset then points at the segment's bytes of the step."""
    existing = module.globals.get(name)
    if existing is not None:
        return existing
    i8p, i64p, i32p = _I8.as_pointer(), _I64.as_pointer(), _I32.as_pointer()
    fnty = ir.FunctionType(ir.VoidType(), [i8p, i64p, i64p, _I64, _I64, i8p, i8p, i32p, _I64,
                                           _I64, _I32, _I32, _I32])
    fn = ir.Function(module, fnty, name)
    fn.linkage = "internal"
    fn.attributes.add("nounwind")
    fn.attributes.add("noinline")  # one copy per module; the call costs nothing next to K
    for index in (0, 1, 2, 5, 6, 7):
        fn.args[index].add_attribute("noalias")
    image, row_offsets, tap_offsets, taps, groups, panel, out = fn.args[:7]
    builder = ir.IRBuilder(fn.append_basic_block("entry"))
    rows = [builder.load(builder.gep(row_offsets, [_I64(m)])) for m in range(MR)]
    # The NR channels are computed in `segments` sequential sweeps over K (one for VNNI; more
    # where the tile's accumulators would not fit the register file in one sweep).
    for segment in range(segments):
        accs = [cgutils.alloca_once_value(builder, ir.Constant(acc_type, None))
                for _ in range(acc_count)]
        step_bytes = NR * K_GROUP // segments if segment_major else NR * K_GROUP
        first_byte = (builder.mul(builder.mul(taps, groups), _I64(segment * step_bytes))
                      if segment_major else _I64(0))
        panel_cursor = cgutils.alloca_once_value(builder, first_byte)

        def tap_body(t, accs=accs, panel_cursor=panel_cursor, segment=segment,
                     step_bytes=step_bytes):
            tap = builder.load(builder.gep(tap_offsets, [t]))
            row_starts = [builder.add(r, tap) for r in rows]

            def group_body(q):
                b_offset = builder.load(panel_cursor)
                first = builder.mul(q, _I64(K_GROUP * k_groups_per_step))
                a_words = [[_load(builder, _I32, image, builder.add(start, builder.add(first, _I64(K_GROUP * i))))
                            for start in row_starts] for i in range(k_groups_per_step)]
                emit_step(builder, accs, a_words, panel, b_offset, segment)
                builder.store(builder.add(b_offset, _I64(step_bytes)), panel_cursor)

            _counted_loop(builder, groups, group_body)

        _counted_loop(builder, taps, tap_body)
        results = emit_finish(builder, accs, segment)  # [(m, first channel, <L x i32>)]
        if requantized:
            _emit_requantize(builder, results, *fn.args[6:])
        else:
            out32 = builder.bitcast(out, i32p)
            for m, first, vec in results:
                ptr = builder.gep(out32, [_I64(m * NR + first)])
                builder.store(vec, builder.bitcast(ptr, vec.type.as_pointer()), align=4)
    builder.ret_void()
    return fn


def _emit_requantize(builder, results, out, qparams, qstride, single_rounding, z_y, act_min,
                     act_max):
    """The fused epilogue, vectorized over channels, bit-exact with fixedpoint.requantize:

    acc = dot + correction[c]                                 (wrapping int32)
    double rounding (TFLite default, gemmlowp):
        x = acc << max(shift, 0)                              (wrapping int32)
        q = (x * m + (x * m >= 0 ? 2**30 : 1 - 2**30)) / 2**31, truncated toward zero (int64)
          = floor((x * m + 2**30) / 2**31)                    (for a negative v = x * m + 1 - 2**30,
            trunc(v / 2**31) = ceil(v / 2**31) = floor((v + 2**31 - 1) / 2**31): one formula
            for both signs, ties toward +infinity as gemmlowp)
          = low 32 bits of (x * m + 2**30) >>> 31             (a logical shift: bits 31..62 of
            the int64 are the same whichever way the top is filled; AVX2 has no 64-bit
            arithmetic shift, and this form needs no sign select)
            (x = m = INT32_MIN cannot occur: multipliers are validated non-negative)
        e = max(-shift, 0); mask = 2**e - 1
        q = (q >> e) + ((q & mask) > (mask >> 1) + (q < 0))   (round half away from zero)
    single rounding: q = (acc * m + 2**(30 - shift)) >> (31 - shift)   (int64, then int32)
    y = clamp(q + z_y, act_min, act_max)                      (wrapping int32 add)

    qparams points at multiplier[c0]; shift and correction follow at qstride and 2 * qstride.
    The rounding mode is uniform, so it is a branch around two straight-line bodies."""
    lanes = results[0][2].type.count
    v32 = ir.VectorType(_I32, lanes)
    v64 = ir.VectorType(_I64, lanes)
    v8 = ir.VectorType(_I8, lanes)

    def load_row(row, first):
        ptr = builder.gep(qparams, [builder.add(builder.mul(qstride, _I64(row)), _I64(first))])
        return builder.load(builder.bitcast(ptr, v32.as_pointer()), align=4)

    def const32(value):
        return ir.Constant(v32, [value] * lanes)

    def const64(value):
        return ir.Constant(v64, [value] * lanes)

    def smax(a, b):
        return builder.select(builder.icmp_signed(">", a, b), a, b)

    def smin(a, b):
        return builder.select(builder.icmp_signed("<", a, b), a, b)

    zero = const32(0)
    z_v, low_v, high_v = (_splat(builder, s, lanes) for s in (z_y, act_min, act_max))
    params = {first: (load_row(0, first), load_row(1, first), load_row(2, first))
              for first in sorted({first for _, first, _ in results})}
    out_i8 = out

    pairs64 = ir.VectorType(_I64, lanes // 2)

    def const_pairs(value):
        return ir.Constant(pairs64, [value] * (lanes // 2))

    def high_mul(x, m):
        """floor((x m + 2**30) / 2**31) per int32 lane, the way vpmuldq multiplies: the even
        lanes as the sign-extended low halves of int64 lanes, the odd ones as their high halves,
        each product's bits 31..62 shifted into the int32 lane it came from, instead of
        widening the vectors to int64 and narrowing them back (fewer shuffles; the AVX2 tile
        with requantization ran 2-4% faster at 256-1024 k)."""
        def low_halves(v):
            wide = builder.bitcast(v, pairs64)
            return builder.ashr(builder.shl(wide, const_pairs(32)), const_pairs(32))

        def high_halves(v):
            return builder.ashr(builder.bitcast(v, pairs64), const_pairs(32))

        nudge = const_pairs(1 << 30)
        even = builder.add(builder.mul(low_halves(x), low_halves(m)), nudge)
        odd = builder.add(builder.mul(high_halves(x), high_halves(m)), nudge)
        even = builder.bitcast(builder.lshr(even, const_pairs(31)), v32)  # into the low half
        odd = builder.bitcast(builder.shl(odd, const_pairs(1)), v32)      # into the high half
        return builder.shuffle_vector(even, odd, ir.Constant(ir.VectorType(_I32, lanes), [
            lane if lane % 2 == 0 else lanes + lane for lane in range(lanes)]))

    def double_rounding(acc, multiplier, shift):
        x = builder.shl(acc, smax(shift, zero))
        q = high_mul(x, multiplier)
        exponent = smax(builder.sub(zero, shift), zero)
        mask = builder.sub(builder.shl(const32(1), exponent), const32(1))
        threshold = builder.add(builder.ashr(mask, const32(1)),
                                builder.zext(builder.icmp_signed("<", q, zero), v32))
        round_up = builder.zext(builder.icmp_signed(">", builder.and_(q, mask), threshold), v32)
        return builder.add(builder.ashr(q, exponent), round_up)

    def single(acc, multiplier, shift):
        total = builder.sext(builder.sub(const32(31), shift), v64)
        rounding = builder.shl(const64(1), builder.sub(total, const64(1)))
        product = builder.mul(builder.sext(acc, v64), builder.sext(multiplier, v64))
        return builder.trunc(builder.ashr(builder.add(product, rounding), total), v32)

    def body(scale):
        for m, first, dot in results:
            multiplier, shift, correction = params[first]
            acc = builder.add(dot, correction)
            y = builder.add(scale(acc, multiplier, shift), z_v)
            y = smin(smax(y, low_v), high_v)
            ptr = builder.gep(out_i8, [_I64(m * NR + first)])
            builder.store(builder.trunc(y, v8), builder.bitcast(ptr, v8.as_pointer()), align=1)

    with builder.if_else(builder.icmp_signed("!=", single_rounding, _I64(0))) as (then, otherwise):
        with then:
            body(single)
        with otherwise:
            body(double_rounding)


def _vnni_kernel(module, requantized):
    acc_ty = ir.VectorType(_I32, LANES)
    fnty = ir.FunctionType(acc_ty, [acc_ty, acc_ty, acc_ty])
    dpbusd = cgutils.get_or_insert_function(module, fnty, "llvm.x86.avx512.vpdpbusd.512")
    blocks = NR // LANES

    def step(builder, accs, a_words, panel, b_offset, segment):
        b = [_load(builder, acc_ty, panel, builder.add(b_offset, _I64(j * LANES * K_GROUP)))
             for j in range(blocks)]
        for m, word in enumerate(a_words[0]):
            a = _splat(builder, word, LANES)
            for j in range(blocks):
                slot = accs[m * blocks + j]
                builder.store(builder.call(dpbusd, [builder.load(slot), a, b[j]]), slot)

    def finish(builder, accs, segment):
        return [(index // blocks, (index % blocks) * LANES, builder.load(slot))
                for index, slot in enumerate(accs)]

    suffix = "_requant" if requantized else ""
    return _define_kernel(module, "intunlearn_int8_tile_vnni512" + suffix, acc_ty, MR * blocks,
                          step, finish, requantized)


def _vnni_int4_kernel(module, requantized):
    """vpdpbusd on a packed-int4 panel, unpacked in registers: a step reads 256 panel bytes
    holding two k-groups for 64 channels — byte j of channel c's word is
    nibble(k = 8p + j) | nibble(k = 8p + 4 + j) << 4 — splits them into low and high
    nibbles, sign-extends each (n ^ 8) - 8, and feeds two vpdpbusd per accumulator. Half the
    weight bytes of the int8 panel cross the memory hierarchy; the unpacking costs 6 byte ops
    per 64 channels x 2 k-groups, shared by the 6 rows."""
    acc_ty = ir.VectorType(_I32, LANES)
    bytes_ty = ir.VectorType(_I8, LANES * K_GROUP)
    fnty = ir.FunctionType(acc_ty, [acc_ty, acc_ty, acc_ty])
    dpbusd = cgutils.get_or_insert_function(module, fnty, "llvm.x86.avx512.vpdpbusd.512")
    blocks = NR // LANES

    def byte_constant(value):
        return ir.Constant(bytes_ty, [value] * (LANES * K_GROUP))

    def sign_extended(builder, nibbles):
        flipped = builder.xor(nibbles, byte_constant(8))
        return builder.bitcast(builder.sub(flipped, byte_constant(8)), acc_ty)

    def step(builder, accs, a_words, panel, b_offset, segment):
        low, high = [], []
        for j in range(blocks):
            raw = _load(builder, bytes_ty, panel, builder.add(b_offset, _I64(j * LANES * K_GROUP)))
            low.append(sign_extended(builder, builder.and_(raw, byte_constant(0x0F))))
            high.append(sign_extended(builder, builder.lshr(raw, byte_constant(4))))
        for m in range(MR):
            a_low = _splat(builder, a_words[0][m], LANES)
            a_high = _splat(builder, a_words[1][m], LANES)
            for j in range(blocks):
                slot = accs[m * blocks + j]
                acc = builder.call(dpbusd, [builder.load(slot), a_low, low[j]])
                builder.store(builder.call(dpbusd, [acc, a_high, high[j]]), slot)

    def finish(builder, accs, segment):
        return [(index // blocks, (index % blocks) * LANES, builder.load(slot))
                for index, slot in enumerate(accs)]

    suffix = "_requant" if requantized else ""
    return _define_kernel(module, "intunlearn_int4_tile_vnni512" + suffix, acc_ty, MR * blocks,
                          step, finish, requantized, k_groups_per_step=2)


def _generic_kernel(module, requantized):
    """Pair sums in portable IR: for output lane l, acc2[2l] += a0*b0 + a1*b1 and
    acc2[2l + 1] += a2*b2 + a3*b3 (the pmaddwd idiom: mul of sign-extended 16-bit values, add
    of even/odd lanes), folded as acc[l] = acc2[2l] + acc2[2l + 1] at the end.

    An accumulator holds `width` output lanes as 2 * width int32 pair sums (one vector
    register); a sweep over K covers `passes` of them for each of the MR rows, and the NR
    channels take NR / (width * passes) sweeps: 6 x 4 zmm per sweep with AVX-512BW (2 sweeps),
    6 x 2 ymm with AVX2 (8 sweeps), so that the accumulators never spill."""
    wide = _generic_pass_lanes() == 16
    width, passes = (8, 4) if wide else (4, 2)
    segments = NR // (width * passes)
    acc_ty = ir.VectorType(_I32, 2 * width)
    bytes_ty = ir.VectorType(_I8, K_GROUP * width)
    even = [2 * i for i in range(2 * width)]
    odd = [2 * i + 1 for i in range(2 * width)]

    def step(builder, accs, a_words, panel, b_offset, segment):
        for p in range(passes):
            first = (segment * passes + p) * width
            b = _load(builder, bytes_ty, panel, builder.add(b_offset, _I64(first * K_GROUP)))
            b_even = builder.sext(_shuffle(builder, b, even), acc_ty)
            b_odd = builder.sext(_shuffle(builder, b, odd), acc_ty)
            for m, word in enumerate(a_words[0]):
                a_bytes = builder.bitcast(word, ir.VectorType(_I8, K_GROUP))
                a = _shuffle(builder, a_bytes, [i % K_GROUP for i in range(K_GROUP * width)])
                a_even = builder.zext(_shuffle(builder, a, even), acc_ty)
                a_odd = builder.zext(_shuffle(builder, a, odd), acc_ty)
                pairs = builder.add(builder.mul(a_even, b_even), builder.mul(a_odd, b_odd))
                slot = accs[m * passes + p]
                builder.store(builder.add(builder.load(slot), pairs), slot)

    def finish(builder, accs, segment):
        results = []
        for m in range(MR):
            for p in range(passes):
                acc2 = builder.load(accs[m * passes + p])
                total = builder.add(_shuffle(builder, acc2, even[:width]),
                                    _shuffle(builder, acc2, odd[:width]))
                results.append((m, (segment * passes + p) * width, total))
        return results

    suffix = "_requant" if requantized else ""
    return _define_kernel(module, f"intunlearn_int8_tile_generic{width}x{passes}" + suffix,
                          acc_ty, MR * passes, step, finish, requantized, segments)


# --------------------------------------------------------------------------------------------
# Few-row kernel (GEMV): weights read in place, no panel
# --------------------------------------------------------------------------------------------
# With a handful of rows (batch-1 inference) a GEMM's time is the weight traffic, and packing
# panels costs more than the multiply. Here the lanes run along K instead: one output channel
# at a time, its weight row is read straight from the [OC, K] (or packed int4 [OC, K/2])
# tensor, 64 k per step, and multiplied with the same 64 activation bytes of up to GEMV_ROWS
# rows; a ninth accumulator multiplies the weights by ones (their sum, for the zero-point
# correction). Lane sums are folded at the end. Only whole 64-k chunks run here; the caller
# does the K % 64 tail.

GEMV_ROWS = 16
GEMV_CHUNK = 64  # k values per step


def _gemv_kernel(module, int4, rows_count):
    name = f"intunlearn_gemv{rows_count}_vnni512" + ("_int4" if int4 else "")
    existing = module.globals.get(name)
    if existing is not None:
        return existing
    acc_ty = ir.VectorType(_I32, LANES)
    bytes_ty = ir.VectorType(_I8, GEMV_CHUNK)
    half_ty = ir.VectorType(_I8, GEMV_CHUNK // 2)
    dpbusd = cgutils.get_or_insert_function(
        module, ir.FunctionType(acc_ty, [acc_ty, acc_ty, acc_ty]), "llvm.x86.avx512.vpdpbusd.512")
    i8p, i64p, i32p = _I8.as_pointer(), _I64.as_pointer(), _I32.as_pointer()
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [i8p, i64p, i8p, _I64, i32p]), name)
    fn.linkage = "internal"
    fn.attributes.add("nounwind")
    fn.attributes.add("noinline")
    x, row_offsets, weight, chunks, out = fn.args
    builder = ir.IRBuilder(fn.append_basic_block("entry"))
    rows = [builder.load(builder.gep(row_offsets, [_I64(r)])) for r in range(rows_count)]
    accs = [cgutils.alloca_once_value(builder, ir.Constant(acc_ty, None)) for _ in range(rows_count + 1)]
    ones = builder.bitcast(ir.Constant(bytes_ty, [1] * GEMV_CHUNK), acc_ty)

    def half_constant(value):
        return ir.Constant(half_ty, [value] * (GEMV_CHUNK // 2))

    def signed_nibbles(nibbles):
        return builder.sub(builder.xor(nibbles, half_constant(8)), half_constant(8))

    def body(c):
        start = builder.mul(c, _I64(GEMV_CHUNK))
        if int4:  # 32 bytes = 64 nibbles, element 2i the low nibble of byte i
            raw = _load(builder, half_ty, weight, builder.mul(c, _I64(GEMV_CHUNK // 2)))
            low = signed_nibbles(builder.and_(raw, half_constant(0x0F)))
            high = signed_nibbles(builder.lshr(raw, half_constant(4)))
            interleave = [i // 2 + (GEMV_CHUNK // 2) * (i % 2) for i in range(GEMV_CHUNK)]
            w = builder.bitcast(builder.shuffle_vector(
                low, high, ir.Constant(ir.VectorType(_I32, GEMV_CHUNK), interleave)), acc_ty)
        else:
            w = _load(builder, acc_ty, weight, start)
        for r, row in enumerate(rows):
            a = _load(builder, acc_ty, x, builder.add(row, start))
            builder.store(builder.call(dpbusd, [builder.load(accs[r]), a, w]), accs[r])
        builder.store(builder.call(dpbusd, [builder.load(accs[-1]), ones, w]), accs[-1])

    _counted_loop(builder, chunks, body)
    for r, slot in enumerate(accs):  # the weight sum goes to out[GEMV_ROWS]
        vec = builder.load(slot)
        total = builder.extract_element(vec, _I32(0))
        for lane in range(1, LANES):
            total = builder.add(total, builder.extract_element(vec, _I32(lane)))
        builder.store(total, builder.gep(out, [_I64(r if r < rows_count else GEMV_ROWS)]))
    builder.ret_void()
    return fn


def _gemv_intrinsic(int4, rows_count):
    def tile(typingctx, x, row_offsets, weight, weight_start, chunks, out):
        """out[r] (r < rows_count) = sum over k < 64 * chunks of the u8 x s8 products of
        x[row_offsets[r] + k] and weight element weight_start + k (int8 bytes, or packed int4
        nibbles with weight_start counted in elements, even); out[GEMV_ROWS] = the sum of
        those weights. Wrapping int32. x uint8 flat, out int32 [GEMV_ROWS + 1]."""
        sig = types.void(x, row_offsets, weight, types.int64, types.int64, out)

        def codegen(context, builder, signature, args):
            x_v, rows_v, weight_v, start_v, chunks_v, out_v = args
            x_a, rows_a, weight_a, out_a = (context.make_array(signature.args[i])(context, builder, v)
                                            for i, v in ((0, x_v), (1, rows_v), (2, weight_v), (5, out_v)))
            i8p = _I8.as_pointer()
            byte_start = builder.ashr(start_v, _I64(1)) if int4 else start_v
            builder.call(_gemv_kernel(builder.module, int4, rows_count),
                         [builder.bitcast(x_a.data, i8p), rows_a.data,
                          builder.gep(builder.bitcast(weight_a.data, i8p), [byte_start]), chunks_v,
                          builder.bitcast(out_a.data, _I32.as_pointer())])
            return context.get_dummy_value()

        return sig, codegen

    return intrinsic(tile)


# One row (batch 1) and GEMV_ROWS rows; the one-row kernel does not pay for seven idle rows.
gemv_tile_vnni = _gemv_intrinsic(int4=False, rows_count=GEMV_ROWS)
gemv_tile_vnni_int4 = _gemv_intrinsic(int4=True, rows_count=GEMV_ROWS)
gemv_row_vnni = _gemv_intrinsic(int4=False, rows_count=1)
gemv_row_vnni_int4 = _gemv_intrinsic(int4=True, rows_count=1)


# --------------------------------------------------------------------------------------------
# Numba entry points
# --------------------------------------------------------------------------------------------


@intrinsic
def claim_next(typingctx, counter):
    """Atomically counter[0] += 1 and return the old value (int64): how the threads of a
    parallel loop hand out work items one at a time (see int_gemm.conv_requant)."""
    sig = types.int64(counter)

    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        return builder.atomic_rmw("add", array.data, _I64(1), "monotonic")

    return sig, codegen



def _tile_intrinsic(make_kernel, requantized):
    def tile(typingctx, image, row_offsets, tap_offsets, groups_per_tap, panel, panel_start,
             qparams, channel_start, epilogue, out):
        """out[m * NR + c] for the rows m < MR and channels c < NR of one register tile:
        dot[m, c] = sum over taps t and k-groups q of the u8 x s8 products of
        image[row_offsets[m] + tap_offsets[t] + 4q + 0..3] and
        panel[panel_start + (t * groups_per_tap + q) * 256 + 4c + 0..3] (int8 panels; for
        int4 panels groups_per_tap counts pairs of k-groups, see _vnni_int4_kernel).
        Raw kernels store dot (out int32); requantizing ones store
        requantize(dot + qparams[2, channel_start + c]) with multiplier qparams[0, ...] and
        shift qparams[1, ...] (out int8; qparams int32 [3, >= channel_start + NR];
        epilogue int64 [single_rounding, z_y, act_min, act_max])."""
        sig = types.void(image, row_offsets, tap_offsets, types.int64, panel, types.int64,
                         qparams, types.int64, epilogue, out)

        def codegen(context, builder, signature, args):
            (image_v, rows_v, taps_v, groups_v, panel_v, panel_start_v, qparams_v, channel_v,
             epilogue_v, out_v) = args
            arrays = [context.make_array(ty)(context, builder, value)
                      if isinstance(ty, types.Array) else None
                      for ty, value in zip(signature.args, args)]
            image_a, rows_a, taps_a, _, panel_a, _, qparams_a, _, epilogue_a, out_a = arrays
            i8p, i32p = _I8.as_pointer(), _I32.as_pointer()
            panel_ptr = builder.gep(builder.bitcast(panel_a.data, i8p), [panel_start_v])
            qparams_ptr = builder.gep(builder.bitcast(qparams_a.data, i32p), [channel_v])
            qstride = builder.sdiv(cgutils.unpack_tuple(builder, qparams_a.strides)[0], _I64(4))
            epilogue_ptr = builder.bitcast(epilogue_a.data, _I64.as_pointer())
            single, z_y, act_min, act_max = (
                builder.load(builder.gep(epilogue_ptr, [_I64(i)])) for i in range(4))
            fn = make_kernel(builder.module, requantized)
            builder.call(fn, [builder.bitcast(image_a.data, i8p), rows_a.data, taps_a.data,
                              taps_a.nitems, groups_v, panel_ptr, builder.bitcast(out_a.data, i8p),
                              qparams_ptr, qstride, single, builder.trunc(z_y, _I32),
                              builder.trunc(act_min, _I32), builder.trunc(act_max, _I32)])
            return context.get_dummy_value()

        return sig, codegen

    return intrinsic(tile)


def _vnni_or_generic(module, requantized):
    # Compiled for a machine without VNNI (where the dispatcher never takes this path), the
    # VNNI entry points still have to compile: they fall back to the generic body.
    return (_vnni_kernel if has_vnni512() else _generic_kernel)(module, requantized)


def _vnni_int4_or_generic(module, requantized):
    # Never taken without VNNI (int4 then goes through int8 panels), but it has to compile.
    return (_vnni_int4_kernel if has_vnni512() else _generic_kernel)(module, requantized)


int4_tile_vnni = _tile_intrinsic(_vnni_int4_or_generic, requantized=False)
int4_tile_vnni_requant = _tile_intrinsic(_vnni_int4_or_generic, requantized=True)
int8_tile_vnni = _tile_intrinsic(_vnni_or_generic, requantized=False)
int8_tile_vnni_requant = _tile_intrinsic(_vnni_or_generic, requantized=True)
int8_tile_generic = _tile_intrinsic(_generic_kernel, requantized=False)
int8_tile_generic_requant = _tile_intrinsic(_generic_kernel, requantized=True)


# --------------------------------------------------------------------------------------------
# float32 register tile for the STE backward (kernels/cpu/backward.py)
# --------------------------------------------------------------------------------------------
# Same shape as the int8 tile: 6 rows x 64 columns in 24 vector accumulators. Row m's value at
# step k is a[row_offsets[m] + k_offsets[k]] (broadcast): an index per step, so the backward
# reads the padded NHWC image in place (the rows being im2col columns (c, ky, kx) and the steps
# output positions) as the forward's implicit GEMM does. The panel [k][stride] is read
# sequentially, 64 columns a step. Multiply-adds carry the "contract" flag so LLVM fuses them
# into vfmadd231ps where the target has FMA (plain mul + add elsewhere).

_F32 = ir.FloatType()


def _f32_gather_kernel(module):
    name = "intunlearn_f32_gather_tile"
    existing = module.globals.get(name)
    if existing is not None:
        return existing
    f32p, i64p = _F32.as_pointer(), _I64.as_pointer()
    fnty = ir.FunctionType(ir.VoidType(), [f32p, i64p, i64p, f32p, _I64, _I64, f32p])
    fn = ir.Function(module, fnty, name)
    fn.linkage = "internal"
    fn.attributes.add("nounwind")
    fn.attributes.add("noinline")
    for index in (0, 1, 2, 3, 6):
        fn.args[index].add_attribute("noalias")
    a, row_offsets, k_offsets, panel, panel_stride, length, out = fn.args
    builder = ir.IRBuilder(fn.append_basic_block("entry"))
    vec = ir.VectorType(_F32, LANES)
    blocks = NR // LANES
    accs = [cgutils.alloca_once_value(builder, ir.Constant(vec, None)) for _ in range(MR * blocks)]
    rows = [builder.load(builder.gep(row_offsets, [_I64(m)])) for m in range(MR)]

    def body(k):
        base = builder.mul(k, panel_stride)
        step = builder.load(builder.gep(k_offsets, [k]))
        b = [builder.load(builder.bitcast(builder.gep(panel, [builder.add(base, _I64(j * LANES))]),
                                          vec.as_pointer()), align=4) for j in range(blocks)]
        for m, row in enumerate(rows):
            value = _splat(builder, builder.load(builder.gep(a, [builder.add(row, step)])), LANES)
            for j in range(blocks):
                slot = accs[m * blocks + j]
                product = builder.fmul(value, b[j], flags=("contract",))
                builder.store(builder.fadd(builder.load(slot), product, flags=("contract",)), slot)

    _counted_loop(builder, length, body)
    for index, slot in enumerate(accs):
        ptr = builder.bitcast(builder.gep(out, [_I64(index * LANES)]), vec.as_pointer())
        builder.store(builder.load(slot), ptr, align=4)
    builder.ret_void()
    return fn


@intrinsic
def f32_gather_tile(typingctx, a, row_offsets, k_offsets, k_start, panel, panel_start, panel_stride,
                    length, out):
    """out[m * NR + c] = sum_{k < length} a[row_offsets[m] + k_offsets[k_start + k]]
    * panel[panel_start + k * panel_stride + c] (float32; a, panel and out flat float32 arrays,
    row_offsets int64 [MR], k_offsets int64). The caller keeps every index in bounds."""
    sig = types.void(a, row_offsets, k_offsets, types.int64, panel, types.int64, types.int64,
                     types.int64, out)

    def codegen(context, builder, signature, args):
        a_v, rows_v, koff_v, kstart_v, panel_v, start_v, stride_v, length_v, out_v = args
        arrays = [context.make_array(signature.args[i])(context, builder, v)
                  for i, v in ((0, a_v), (1, rows_v), (2, koff_v), (4, panel_v), (8, out_v))]
        a_a, rows_a, koff_a, panel_a, out_a = arrays
        builder.call(_f32_gather_kernel(builder.module),
                     [a_a.data, rows_a.data, builder.gep(koff_a.data, [kstart_v]),
                      builder.gep(panel_a.data, [start_v]), stride_v, length_v, out_a.data])
        return context.get_dummy_value()

    return sig, codegen
