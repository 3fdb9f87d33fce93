"""The "numba" backend: multithreaded Numba CPU kernels (intunlearn.kernels.cpu), bit-exact
with the reference oracle.

Forward ops receive validated, canonical arguments from intunlearn.ops. This module turns the
Python-level parameters into the kernels' form: weights into int8 micro-kernel panels (packed
int4 is unpacked first), the input into a padded NHWC uint8 image holding x + 128, and the zero
points and bias into an int32 correction added in the fused epilogue (see kernels/cpu/int_gemm.py
for why that is exact).

Backward functions (qlinear_backward, qconv2d_backward) implement the STE of DESIGN.md with
the per-sample weights fused into the reductions; see their docstrings.
"""

from __future__ import annotations

import collections
import contextlib
import os
import threading

import numpy as np
import torch

from intunlearn import reference as spec
from intunlearn.kernels.cpu import elementwise as _elementwise
from intunlearn.kernels.cpu import int_gemm as _gemm
from intunlearn.kernels.cpu import microkernel as _microkernel
from intunlearn.kernels.cpu import microkernel_avx2 as _microkernel_avx2
from intunlearn.kernels.cpu import microkernel_dot as _microkernel_dot
from intunlearn.kernels.cpu import pair_gemm as _pairs

_MASK32 = 0xFFFFFFFF


def _wrap32(value):
    """Python int or int64 array -> the same value modulo 2**32, as a signed int32 in int64."""
    if isinstance(value, np.ndarray):
        return ((value.astype(np.int64) + 2**31) & _MASK32) - 2**31
    return ((int(value) + 2**31) & _MASK32) - 2**31


def _per_channel(values: torch.Tensor, channels: int) -> np.ndarray:
    array = values.detach().cpu().numpy().astype(np.int64)
    return np.ascontiguousarray(np.broadcast_to(array, (channels,)))


# The micro-kernels' instruction set, chosen from the features of the machine Numba compiles
# for (NUMBA_CPU_NAME / NUMBA_CPU_FEATURES honoured), best first:
#   "vnni"     AVX-512 VNNI vpdpbusd on zmm (int8 panels; packed int4 unpacked in registers)
#   "avxvnni"  AVX-VNNI vpdpbusd on ymm (int8 panels); few rows as "avx2"
#   "avx2"     vpmaddwd on int16 pair panels and an int16 x - z_x image (microkernel_avx2.py)
#   "dotprod"  aarch64 sdot on int8 panels (microkernel_dot.py)
#   "generic"  portable vector IR (any CPU)
# All are bit-exact. FORCE_ISA (or the environment variable INTUNLEARN_NUMBA_ISA) selects one,
# e.g. to test a path on a machine that would pick another; "dotprod" can be forced anywhere
# (without the Arm extension it runs the same arithmetic as portable IR, slowly).
ISAS = ("vnni", "avxvnni", "avx2", "dotprod", "generic")
FORCE_ISA: str | None = None


def _isa_native(isa: str) -> bool:
    """Whether the target CPU has the instructions the path is written for."""
    return {"vnni": _microkernel.has_vnni512, "avxvnni": _microkernel_avx2.has_avxvnni,
            "avx2": _microkernel_avx2.has_avx2, "dotprod": _microkernel_dot.has_dotprod,
            "generic": lambda: True}[isa]()


def isa_runs_here(isa: str) -> bool:
    """Whether the path can be forced on this machine."""
    return isa == "dotprod" or _isa_native(isa)


def kernel_isa() -> str:
    forced = FORCE_ISA or os.environ.get("INTUNLEARN_NUMBA_ISA")
    if forced:
        if forced not in ISAS:
            raise ValueError(f"INTUNLEARN_NUMBA_ISA must be one of {', '.join(map(repr, ISAS))}, "
                             f"got {forced!r}")
        if not isa_runs_here(forced):
            raise ValueError(f"the {forced!r} kernel needs a CPU feature that the target CPU "
                             f"({_microkernel.target_cpu_name()}) lacks")
        return forced
    return next(isa for isa in ISAS if _isa_native(isa))


def _weight_array(weight, out_channels) -> np.ndarray:
    """int8 [OC, length] or packed int4 uint8 [OC, ceil(length / 2)] numpy view."""
    w = weight.detach().cpu().contiguous().numpy()
    return w.reshape(out_channels, -1)


def _threads() -> int:
    import numba
    return numba.get_num_threads()


_NO_BIAS = np.zeros(0, np.int32)
_NO_ROW_CORRECTION = np.zeros(1, np.int64)  # read-only use: no row correction
ITEMS_PER_THREAD = 4  # GEMM work items per thread, where the rows allow
_MIN_ITEM_ROWS = 8 * _microkernel.MR  # ... but no item under 8 register tiles of rows
_SERIAL_BYTES = 512 << 10  # packing / layout passes over less than this run on one thread


@contextlib.contextmanager
def _serial_if_small(nbytes):
    """Run a small data-movement kernel on the calling thread: waking the other threads costs
    more than the work (and, on a busy machine, up to a scheduler time slice)."""
    import numba
    if nbytes >= _SERIAL_BYTES:
        yield
        return
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(threads)


def _work_split(rows, groups, channel_blocks):
    """(row_blocks, channel_splits): the GEMM's work items. Rows go in about ROW_BLOCK-row
    items, at least ITEMS_PER_THREAD per thread where the rows allow, their count a multiple of
    the thread count so that the items (equal to a register tile, conv_requant) divide evenly
    among threads: with 1024 rows on 2 threads, 8 items of 132 rows left one thread a 100-row
    item, 3% of the GEMM idle. The driver hands items out dynamically, so that a thread slowed
    down by other work does not hold up the rest. Output channels are split when rows are few."""
    threads = _threads()
    row_tiles = -(-rows // _microkernel.MR)
    row_blocks = max(1, -(-rows // _gemm.ROW_BLOCK),
                     min(ITEMS_PER_THREAD * threads, rows // _MIN_ITEM_ROWS))
    if row_blocks >= threads:
        row_blocks = _gemm.padded(row_blocks, threads)
    row_blocks = min(row_blocks, row_tiles)
    channel_splits = 1
    if row_blocks * groups < ITEMS_PER_THREAD * threads:
        wanted = -(-ITEMS_PER_THREAD * threads // (row_blocks * groups))
        channel_splits = max(1, min(channel_blocks, wanted))
    return row_blocks, channel_splits


class PanelCache:
    """Packed weight panels kept between calls, for weights that do not change between them
    (inference; a layer applied to many batches): packing a 1024 x 1024 int8 weight into the
    AVX2 path's int16 panels takes ~1 ms, next to ~15 ms for its GEMM.

    An entry is served only if the weight's bytes are the ones it was packed from: the cache
    keeps a copy and compares them (~0.05 ms for 1 MB, stopping at the first difference).
    Neither the address nor torch's version counter is enough: writes through `.data` or a
    numpy view leave the counter alone, and a new tensor can reuse a freed tensor's address.
    Entries are looked up by (address, shape, strides, dtype, panel layout), least recently
    used first out; weights under `min_weight_bytes` are packed every time (it costs
    microseconds), and the entries together hold at most `max_bytes` (copies and panels)."""

    def __init__(self, max_bytes: int = 64 << 20, min_weight_bytes: int = 32 << 10):
        if max_bytes < 0 or min_weight_bytes < 0:
            raise ValueError(f"max_bytes and min_weight_bytes must be >= 0, got {max_bytes} "
                             f"and {min_weight_bytes}")
        self.max_bytes = max_bytes
        self.min_weight_bytes = min_weight_bytes
        self.hits = 0
        self.misses = 0
        self._entries: collections.OrderedDict = collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def panel(self, weight: np.ndarray, layout: tuple, pack):
        """pack() (the panel of `weight` in `layout`), or the one packed from the same bytes."""
        if weight.nbytes < self.min_weight_bytes:
            return pack()
        key = (weight.ctypes.data, weight.shape, weight.strides, weight.dtype.str, layout)
        with self._lock:
            entry = self._entries.get(key)
        if entry is not None and _gemm.same_bytes(entry[0], _bytes_of(weight)):
            with self._lock:
                self.hits += 1
                if key in self._entries:
                    self._entries.move_to_end(key)
            return entry[1]
        panel = pack()
        source = np.ascontiguousarray(weight).copy().reshape(-1).view(np.uint8)
        size = source.nbytes + panel.nbytes
        with self._lock:
            self.misses += 1
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old[0].nbytes + old[1].nbytes
            if size <= self.max_bytes:
                self._entries[key] = (source, panel)
                self._bytes += size
            while self._bytes > self.max_bytes:
                _, (old_source, old_panel) = self._entries.popitem(last=False)
                self._bytes -= old_source.nbytes + old_panel.nbytes
        return panel

    @property
    def nbytes(self) -> int:
        return self._bytes

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0


def _bytes_of(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8)


# The AVX2 path's weight panels (the others pack on every call). Replace or clear() it to
# change its limits or drop what it holds.
PANEL_CACHE = PanelCache()


def _padded_image(x4, groups, channels_padded, top, left, height_padded, width_padded, pad_byte):
    """The kernels' input: uint8 flat [N][Hp][Wp][G][Cgp] holding x + 128, border pad_byte."""
    batch, channels, height, width = x4.shape
    if height == width == 1 and groups == 1 and height_padded == width_padded == 1:
        # Linear layer rows: already in place; flip the sign bits and pad K to Cgp.
        image = np.zeros((batch, channels_padded), np.uint8)
        np.bitwise_xor(x4.reshape(batch, channels).view(np.uint8), np.uint8(0x80),
                       out=image[:, :channels])
        return image.reshape(-1)
    if groups == 1 and channels % 8 == 0 and width % 8 == 0 and x4.flags.c_contiguous:
        words = np.empty(batch * height_padded * width_padded * channels // 8, np.uint64)
        _gemm.pad_nhwc_words(x4.view(np.uint64), top, left, height_padded, width_padded,
                             pad_byte, words)
        return words.view(np.uint8)
    return _gemm.pad_nhwc(x4, groups, channels_padded, top, left, height_padded, width_padded,
                          np.uint8(pad_byte))


def _run_conv(x4, weight2d, bias, *, groups, geometry, padding, input_zero_point,
              output_zero_point, multiplier, shift, act_min, act_max, rounding,
              row_correction=None, extra_correction=0):
    """Shared driver for qlinear (1x1 conv of 1x1 images) and qconv2d. weight2d int8
    [OC, Cg * KH * KW] or packed int4 uint8 [OC, ceil(Cg * KH * KW / 2)]; padding (top,
    bottom, left, right). Returns int8 numpy [N, OC, positions]."""
    batch, channels, height, width = x4.shape
    out_channels = weight2d.shape[0]
    group_channels = channels // groups
    kernel_h, kernel_w = geometry.kernel_h, geometry.kernel_w
    stride_h, stride_w, dilation_h, dilation_w = (geometry.stride_h, geometry.stride_w,
                                                  geometry.dilation_h, geometry.dilation_w)
    out_w, positions = geometry.out_w, geometry.positions
    top, bottom, left, right = padding
    taps = kernel_h * kernel_w
    length = group_channels * taps
    isa = kernel_isa()
    if isa == "avx2" and row_correction is None and _pairs.pairs_exact(input_zero_point):
        return _run_conv_pairs(x4, weight2d, bias, groups=groups, geometry=geometry, padding=padding,
                               input_zero_point=input_zero_point,
                               output_zero_point=output_zero_point, multiplier=multiplier,
                               shift=shift, act_min=act_min, act_max=act_max, rounding=rounding,
                               extra_correction=extra_correction)
    vnni = isa == "vnni"
    # The image holds u = x + 128; the sdot kernel flips it back to x in registers, so its
    # accumulator is sum w x and the correction's offset is 0 instead of 128.
    offset = 0 if isa == "dotprod" else 128
    # Packed int4 stays packed (half the panel bytes, unpacked in registers) on VNNI, except
    # where the correction needs the weights per tap (z_x not an int8, with padding).
    int4_panel = (weight2d.dtype == np.uint8 and vnni
                  and (-128 <= input_zero_point <= 127 or not any(padding)))
    k_step = _gemm.INT4_K_STEP if int4_panel else _microkernel.K_GROUP
    channels_padded = _gemm.padded(group_channels, k_step)
    with _serial_if_small(out_channels * taps * channels_padded):
        if int4_panel:
            if groups == 1 and taps == 1 and group_channels % k_step == 0 and weight2d.flags.c_contiguous:
                panel, weight_sums = _gemm.pack_int4_panel_words(weight2d.view(np.uint32), weight2d,
                                                                 out_channels)
            else:
                panel, weight_sums = _gemm.pack_int4_panel(weight2d, out_channels, groups, group_channels,
                                                           taps, channels_padded)
            panel = panel.view(np.int8)
        else:
            if weight2d.dtype == np.uint8:  # packed int4 without VNNI: unpack, then int8 panels
                weight2d = _gemm.unpack_int4_rows(weight2d, length)
            if (groups == 1 and taps == 1 and group_channels % 4 == 0
                    and weight2d.flags.c_contiguous):
                panel, weight_sums = _gemm.pack_weight_panel_words(weight2d.view(np.uint32), weight2d,
                                                                   out_channels)
            else:
                panel, weight_sums = _gemm.pack_weight_panel(weight2d, groups, group_channels,
                                                             taps, channels_padded)
    z_x = _wrap32(input_zero_point)
    bias32 = _NO_BIAS if bias is None else bias.detach().cpu().numpy()
    multiplier32, shift32 = multiplier.detach().cpu().numpy(), shift.detach().cpu().numpy()
    per_channel = -128 <= input_zero_point <= 127 or not any(padding)
    if per_channel:
        # Padding taps hold z_x + 128 like any tap whose x equals z_x: one correction per channel.
        pad_byte = input_zero_point + 128 if -128 <= input_zero_point <= 127 else 128
        qparams, correction, multiplier64, shift64 = _gemm.channel_epilogue(
            bias32, weight_sums, np.int64(_wrap32(offset + z_x)), np.int64(_wrap32(extra_correction)),
            multiplier32, shift32)
    else:
        # z_x is not an int8: padding taps hold x = 0, and the correction sums only the weights
        # of in-image taps, per output position (the scalar epilogue, on raw int32 tiles).
        pad_byte = 128
        qparams, base, multiplier64, shift64 = _gemm.channel_epilogue(
            bias32, weight_sums, np.int64(offset), np.int64(_wrap32(extra_correction)), multiplier32,
            shift32)
        sums = _gemm.valid_weight_sums(weight2d, groups, group_channels, geometry, height, width)
        correction = np.ascontiguousarray(_wrap32(base - _wrap32(_wrap32(sums) * z_x)))
    if row_correction is None:
        row_correction = _NO_ROW_CORRECTION
    height_padded, width_padded = height + top + bottom, width + left + right
    pixel = groups * channels_padded
    with _serial_if_small(batch * height_padded * width_padded * groups * channels_padded):
        image = _padded_image(x4, groups, channels_padded, top, left, height_padded,
                              width_padded, pad_byte)
    tap_offsets = np.array([(ky * dilation_h * width_padded + kx * dilation_w) * pixel
                            for ky in range(kernel_h) for kx in range(kernel_w)], np.int64)
    rows = batch * positions
    out = np.empty((rows, out_channels), np.int8)  # NHWC; transposed to NCHW at the end
    if rows == 0 or out_channels == 0:
        return out.reshape(batch, positions, out_channels).transpose(0, 2, 1)
    channel_blocks = -(-(out_channels // groups) // _microkernel.NR)
    row_blocks, channel_splits = _work_split(rows, groups, channel_blocks)
    # The micro-kernel's fused epilogue covers a per-channel correction; a correction per
    # position (z_x not an int8, with padding) or per row (a weight zero point) takes the
    # scalar epilogue on raw int32 tiles.
    fused = per_channel and row_correction.shape[0] == 1 and row_correction[0] == 0
    epilogue = np.array([rounding == "single", _wrap32(output_zero_point), act_min, act_max],
                        np.int64)
    params = (np.int64(_wrap32(output_zero_point)), np.int64(act_min), np.int64(act_max),
              rounding == "single", np.int64(positions))
    isa = (_gemm.ISA_VNNI_INT4 if int4_panel else _gemm.ISA_VNNI if vnni
           else {"avxvnni": _gemm.ISA_AVXVNNI, "dotprod": _gemm.ISA_SDOT}.get(isa, _gemm.ISA_GENERIC))
    _gemm.conv_requant(image, panel, tap_offsets, np.int64(channels_padded // k_step),
                       (np.int64(height_padded), np.int64(width_padded), np.int64(groups),
                        np.int64(channels_padded)),
                       (np.int64(stride_h), np.int64(stride_w), np.int64(out_w)),
                       qparams, epilogue, correction, row_correction, multiplier64, shift64, out,
                       params, np.int64(row_blocks), np.int64(channel_splits), fused,
                       np.int64(isa), np.int64(_threads()))
    return _to_nchw(out.reshape(batch, positions, out_channels))


def _run_conv_pairs(x4, weight2d, bias, *, groups, geometry, padding,
                    input_zero_point, output_zero_point, multiplier, shift, act_min, act_max,
                    rounding, extra_correction=0):
    """_run_conv on the AVX2 path: int16 pair panels and an int16 image of x - z_x (padding
    0), so the accumulator is already sum w (x - z_x) and the epilogue adds only the bias
    (kernels/cpu/pair_gemm.py). The GEMM driver reads both through byte views."""
    batch, channels, height, width = x4.shape
    out_channels = weight2d.shape[0]
    group_channels = channels // groups
    kernel_h, kernel_w = geometry.kernel_h, geometry.kernel_w
    stride_h, stride_w, dilation_h, dilation_w = (geometry.stride_h, geometry.stride_w,
                                                  geometry.dilation_h, geometry.dilation_w)
    out_w, positions = geometry.out_w, geometry.positions
    top, bottom, left, right = padding
    taps = kernel_h * kernel_w
    channels_padded = _gemm.padded(group_channels, _pairs.PAIR)

    def pack():
        weight = weight2d
        if weight.dtype == np.uint8:  # packed int4: the same int16 panels as int8
            with _serial_if_small(weight.size * 2):
                weight = _gemm.unpack_int4_rows(weight, group_channels * taps)
        with _serial_if_small(out_channels * taps * channels_padded * 2):
            if groups == 1 and taps == 1 and group_channels % 2 == 0 and weight.flags.c_contiguous:
                return _pairs.pack_pair_panel_words(weight.view(np.uint16), out_channels)
            return _pairs.pack_pair_panel(weight, groups, group_channels, taps, channels_padded)

    panel = PANEL_CACHE.panel(weight2d, ("pairs", groups, group_channels, taps, channels_padded), pack)
    height_padded, width_padded = height + top + bottom, width + left + right
    if height == width == 1 and groups == 1 and height_padded == width_padded == 1:
        with _serial_if_small(batch * channels_padded * 2):  # linear rows: x - z_x in place
            image = _pairs.linear_rows_pairs(x4.reshape(batch, channels), np.int64(input_zero_point),
                                             channels_padded)
    else:
        with _serial_if_small(batch * height_padded * width_padded * channels_padded * 2):
            image = _pairs.pad_nhwc_pairs(x4, groups, channels_padded, top, left, height_padded,
                                          width_padded, np.int64(input_zero_point))
    bias32 = _NO_BIAS if bias is None else bias.detach().cpu().numpy()
    qparams, _, _, _ = _gemm.channel_epilogue(
        bias32, np.zeros(out_channels, np.int64), np.int64(0), np.int64(_wrap32(extra_correction)),
        multiplier.detach().cpu().numpy(), shift.detach().cpu().numpy())
    pixel_bytes = groups * channels_padded * 2
    tap_offsets = np.array([(ky * dilation_h * width_padded + kx * dilation_w) * pixel_bytes
                            for ky in range(kernel_h) for kx in range(kernel_w)], np.int64)
    rows = batch * positions
    out = np.empty((rows, out_channels), np.int8)  # NHWC; transposed to NCHW at the end
    if rows == 0 or out_channels == 0:
        return out.reshape(batch, positions, out_channels).transpose(0, 2, 1)
    channel_blocks = -(-(out_channels // groups) // _microkernel.NR)
    row_blocks, channel_splits = _work_split(rows, groups, channel_blocks)
    epilogue = np.array([rounding == "single", _wrap32(output_zero_point), act_min, act_max],
                        np.int64)
    unused = np.zeros((1, 1), np.int64)  # the scalar epilogue's tables (fused: not read)
    _gemm.conv_requant(image.view(np.uint8), panel.view(np.int8), tap_offsets,
                       np.int64(channels_padded // _pairs.PAIR),
                       (np.int64(height_padded), np.int64(width_padded), np.int64(groups),
                        np.int64(2 * channels_padded)),
                       (np.int64(stride_h), np.int64(stride_w), np.int64(out_w)),
                       qparams, epilogue, unused, _NO_ROW_CORRECTION, unused[0], unused[0], out,
                       (np.int64(0), np.int64(0), np.int64(0), False, np.int64(positions)),
                       np.int64(row_blocks), np.int64(channel_splits), True,
                       np.int64(_gemm.ISA_AVX2), np.int64(_threads()))
    return _to_nchw(out.reshape(batch, positions, out_channels))


def _to_nchw(nhwc):
    """int8 [N, P, C] -> [N, C, P] (a view when P == 1)."""
    batch, positions, channels = nhwc.shape
    if positions == 1:
        return nhwc.reshape(batch, channels, 1)
    nchw = np.empty((batch, channels, positions), np.int8)
    with _serial_if_small(nhwc.size):
        if positions % 8 == 0 and channels % 8 == 0:
            _gemm.nhwc_to_nchw_words(nhwc.view(np.uint64), nchw.view(np.uint64))
        else:
            _gemm.nhwc_to_nchw(nhwc, nchw)
    return nchw


# --------------------------------------------------------------------------------------------
# Forward ops
# --------------------------------------------------------------------------------------------


def qlinear(x, weight, bias, *, in_features, input_zero_point, output_zero_point, multiplier,
            shift, act_min, act_max, weight_zero_point, rounding):
    """int8 [N, IN] x int8 / packed int4 [OUT, IN] -> int8 [N, OUT] (TFLM FullyConnected).

    The legacy weight zero point z_w is exact too: sum (w - z_w)(x - z_x) = sum w x
    - z_x sum w - z_w sum x + K z_x z_w, all in wrapping int32."""
    x_np = x.detach().cpu().contiguous().numpy()
    batch = x_np.shape[0]
    if batch == 0 or weight.shape[0] == 0:
        return torch.empty((batch, weight.shape[0]), dtype=torch.int8, device=x.device)
    isa = kernel_isa()
    if batch <= _microkernel.GEMV_ROWS and weight_zero_point == 0:
        if isa == "vnni":
            return torch.from_numpy(_gemv(x_np, weight, bias, input_zero_point, output_zero_point,
                                          multiplier, shift, act_min, act_max, rounding)).to(x.device)
        if isa in ("avx2", "avxvnni") and _pairs.pairs_exact(input_zero_point):
            return torch.from_numpy(_gemv(x_np, weight, bias, input_zero_point, output_zero_point,
                                          multiplier, shift, act_min, act_max, rounding,
                                          pairs=True)).to(x.device)
    row_correction, extra = None, 0
    if weight_zero_point != 0:
        z_w = _wrap32(weight_zero_point)
        row_sums = x_np.sum(axis=1, dtype=np.int64)
        row_correction = _wrap32(-_wrap32(row_sums * z_w))
        extra = _wrap32(_wrap32(in_features * _wrap32(input_zero_point)) * z_w)
    geometry = _gemm.LINEAR_GEOMETRY
    out = _run_conv(x_np.reshape(batch, in_features, 1, 1),
                    _weight_array(weight, weight.shape[0]), bias, groups=1,
                    geometry=geometry, padding=(0, 0, 0, 0),
                    input_zero_point=input_zero_point, output_zero_point=output_zero_point,
                    multiplier=multiplier, shift=shift, act_min=act_min, act_max=act_max,
                    rounding=rounding, row_correction=row_correction, extra_correction=extra)
    return torch.from_numpy(out.reshape(batch, -1)).to(x.device)


def _gemv(x_np, weight, bias, input_zero_point, output_zero_point, multiplier, shift, act_min,
          act_max, rounding, pairs=False):
    """A few rows (batch-1 inference): weights streamed in place, packed int4 included, no
    panels (kernels/cpu/int_gemm.py: gemv_requant; with pairs, the AVX2 int16 kernel
    kernels/cpu/pair_gemm.py: gemv_requant_pairs)."""
    out_channels = weight.shape[0]
    w = weight.detach().cpu().contiguous().numpy()
    out = np.empty((x_np.shape[0], out_channels), np.int8)
    bias64 = np.zeros(out_channels, np.int64) if bias is None else bias.cpu().numpy().astype(np.int64)
    params = (np.int64(_wrap32(output_zero_point)), np.int64(act_min), np.int64(act_max),
              rounding == "single")
    int4 = w.dtype == np.uint8
    multiplier64, shift64 = _per_channel(multiplier, out_channels), _per_channel(shift, out_channels)
    if pairs and int4 and x_np.shape[0] > 1:  # int4 on AVX2: vpmaddubsw is exact and twice as fast
        _pairs.gemv_requant_nibbles(x_np, w, bias64, np.int64(input_zero_point), multiplier64,
                                    shift64, params, out)
        return out
    run = _pairs.gemv_requant_pairs if pairs else _gemm.gemv_requant
    run(x_np, w, int4, bias64, np.int64(input_zero_point), multiplier64, shift64, params, out)
    return out


def _conv_geometry(x_shape, weight_shape, stride, padding, dilation):
    _, _, height, width = x_shape
    _, _, kernel_h, kernel_w = weight_shape
    top, bottom, left, right = padding
    out_h = spec.conv2d_output_size(height, kernel_h, stride[0], top, bottom, dilation[0])
    out_w = spec.conv2d_output_size(width, kernel_w, stride[1], left, right, dilation[1])
    geometry = _gemm.KernelGeometry(kernel_h=kernel_h, kernel_w=kernel_w, stride_h=stride[0],
                                    stride_w=stride[1], pad_top=top, pad_left=left,
                                    dilation_h=dilation[0], dilation_w=dilation[1], out_w=out_w,
                                    positions=out_h * out_w)
    return geometry, out_h, out_w


def qconv2d(x, weight, bias, *, weight_shape, stride, padding, dilation, groups, input_zero_point,
            output_zero_point, multiplier, shift, act_min, act_max, rounding):
    """int8 NCHW grouped / depthwise convolution with fused requantization -> int8 NCHW."""
    x_np = x.detach().cpu().contiguous().numpy()
    out_channels = weight_shape[0]
    geometry, out_h, out_w = _conv_geometry(x_np.shape, weight_shape, stride, padding, dilation)
    out = _run_conv(x_np, _weight_array(weight, out_channels), bias, groups=groups,
                    geometry=geometry, padding=tuple(padding),
                    input_zero_point=input_zero_point, output_zero_point=output_zero_point,
                    multiplier=multiplier, shift=shift, act_min=act_min, act_max=act_max,
                    rounding=rounding)
    return torch.from_numpy(out.reshape(x_np.shape[0], out_channels, out_h, out_w)).to(x.device)


def qadd(a, b, *, a_zero_point, a_multiplier, a_shift, b_zero_point, b_multiplier, b_shift,
         left_shift, output_zero_point, output_multiplier, output_shift, act_min, act_max,
         rounding="double"):
    """TFLite int8 ADD, elementwise on equal shapes."""
    a_np = a.detach().cpu().contiguous().numpy().reshape(-1)
    b_np = b.detach().cpu().contiguous().numpy().reshape(-1)
    out = np.empty_like(a_np)
    i64 = np.int64
    _elementwise.qadd(a_np, b_np, out,
                      (i64(_wrap32(a_zero_point)), i64(a_multiplier), i64(a_shift)),
                      (i64(_wrap32(b_zero_point)), i64(b_multiplier), i64(b_shift)),
                      i64(left_shift),
                      (i64(_wrap32(output_zero_point)), i64(output_multiplier), i64(output_shift),
                       i64(act_min), i64(act_max)), rounding == "single")
    return torch.from_numpy(out.reshape(a.shape)).to(a.device)


def qavg_pool2d(x, *, kernel_size, stride, padding, act_min, act_max):
    """TFLM int8 average pool, NCHW."""
    x_np = x.detach().cpu().contiguous().numpy()
    batch, channels, height, width = x_np.shape
    top, bottom, left, right = padding
    out_h = spec.conv2d_output_size(height, kernel_size[0], stride[0], top, bottom, 1)
    out_w = spec.conv2d_output_size(width, kernel_size[1], stride[1], left, right, 1)
    out = np.empty((batch, channels, out_h, out_w), np.int8)
    _elementwise.qavg_pool2d(x_np, out, kernel_size[0], kernel_size[1], stride[0], stride[1],
                             top, left, act_min, act_max)
    return torch.from_numpy(out).to(x.device)


# --------------------------------------------------------------------------------------------
# Backward (STE) with fused per-sample weights
# --------------------------------------------------------------------------------------------

def _unpacked_weight(weight, out_channels, length) -> np.ndarray:
    """int weight values [OC, length] (packed int4 is unpacked; int8 is a view)."""
    return spec.unpacked_weight(weight.detach().cpu().contiguous().numpy().reshape(out_channels, -1), length)


def _conv_backward(grad_output, output, x, weight, *, weight_shape, groups, geometry,
                   input_zero_point, input_scale, weight_scales, act_min, act_max,
                   sample_weights, needs_input_grad, needs_weight_grad):
    """Shared STE backward on NCHW-shaped numpy views (linear: 1x1 conv of a 1x1 image); see
    kernels/cpu/backward.py for the layout."""
    from intunlearn.kernels.cpu import backward as bk

    out_channels, group_channels, kernel_h, kernel_w = weight_shape
    out_group_channels = out_channels // groups
    length = group_channels * kernel_h * kernel_w
    batch, channels = x.shape[0], x.shape[1]
    stride_h, stride_w, dilation_h, dilation_w = (geometry.stride_h, geometry.stride_w,
                                                  geometry.dilation_h, geometry.dilation_w)
    top, left = geometry.pad_top, geometry.pad_left
    out_w, positions = geometry.out_w, geometry.positions
    out_h = positions // out_w
    rows = batch * positions
    # The padded image spans exactly what the taps read; input pixels outside it get no gradient.
    height_padded = (out_h - 1) * stride_h + (kernel_h - 1) * dilation_h + 1
    width_padded = (out_w - 1) * stride_w + (kernel_w - 1) * dilation_w + 1
    row_base, column_offsets = bk.tap_offsets(batch, out_h, out_w, stride_h, stride_w, dilation_h,
                                              dilation_w, kernel_h, kernel_w, group_channels,
                                              height_padded, width_padded, channels)

    go = np.ascontiguousarray(grad_output, dtype=np.float32).reshape(batch, out_channels, positions)
    y = np.ascontiguousarray(output).reshape(batch, out_channels, positions)
    alpha = (np.ones(batch, np.float32) if sample_weights is None
             else sample_weights.detach().cpu().numpy().astype(np.float32))
    stride = bk.row_stride(out_channels)
    panel_size = rows * stride + _microkernel.NR
    # Lanes past OC (row padding, zeroed by the packing kernel, and the tail) are read by the
    # 64-wide tiles and dropped; they are kept zero so that no stale denormal slows the FMAs.
    gradient_rows = np.empty(panel_size, np.float32)
    weighted_rows = np.empty(panel_size if needs_weight_grad else _microkernel.NR, np.float32)
    gradient_rows[rows * stride:] = 0
    weighted_rows[-_microkernel.NR:] = 0
    bias_partials = np.empty((batch, out_channels), np.float64)
    with _serial_if_small(rows * out_channels * 8):
        bk.pack_gradient_rows(go, y, alpha, act_min, act_max,
                              gradient_rows[:rows * stride].reshape(rows, stride),
                              (weighted_rows[:rows * stride].reshape(rows, stride) if needs_weight_grad
                               else np.empty((0, stride), np.float32)),
                              bias_partials)
    grad_bias = bias_partials.sum(axis=0).astype(np.float32)

    grad_w = None
    if needs_weight_grad:
        image = np.empty((batch, height_padded, width_padded, channels), np.float32)
        with _serial_if_small(image.size * 4):
            bk.centered_image(x, np.float64(input_zero_point), top, left, image)
        shares = -(-rows // bk.ROWS_PER_SHARE)
        partial = np.empty((shares, groups, bk.padded(length, _microkernel.MR),
                            bk.padded(out_group_channels, _microkernel.NR)), np.float32)
        bk.weight_gradient(image.reshape(-1), row_base, column_offsets, weighted_rows, stride,
                           group_channels, out_group_channels, partial)
        summed = partial[0] if shares == 1 else partial.sum(axis=0)
        grad_w = (summed[:, :length, :out_group_channels].transpose(0, 2, 1)
                  * np.float32(input_scale)).reshape(out_channels, length)

    grad_input = None
    if needs_input_grad:
        scales = weight_scales.detach().cpu().numpy().astype(np.float32, copy=False).reshape(-1, 1)
        columns_stride = bk.row_stride(length)
        weight_flat = np.zeros(out_channels * columns_stride + _microkernel.NR, np.float32)
        weight_t = weight_flat[:out_channels * columns_stride].reshape(out_channels, columns_stride)
        np.multiply(_unpacked_weight(weight, out_channels, length), scales,
                    out=weight_t[:, :length])  # s_w[c] * w[c, k]
        grad_image = np.empty((batch, height_padded, width_padded, channels), np.float32)
        images_per_item = max(1, -(-4 * _microkernel.MR // positions))
        bk.input_gradient(gradient_rows, stride, weight_flat, columns_stride, groups, row_base,
                          column_offsets, positions, images_per_item, group_channels,
                          out_group_channels, grad_image.reshape(-1))
        if height_padded == width_padded == 1 and x.shape[2] == x.shape[3] == 1:
            grad_input = grad_image.reshape(x.shape)  # a linear layer: already [N, C, 1, 1]
        else:
            grad_input = np.empty(x.shape, np.float32)
            with _serial_if_small(grad_input.size * 4):
                bk.image_to_nchw(grad_image, top, left, grad_input)
    return grad_input, grad_w, grad_bias


def qlinear_backward(grad_output, output, x, weight, *, in_features, input_zero_point,
                     input_scale, weight_scales, act_min, act_max, sample_weights=None,
                     needs_input_grad=True, needs_weight_grad=True):
    """STE backward of qlinear, per-sample weights fused (see kernels/cpu/backward.py).

    grad_output float32 [N, OUT] = dL/dy_real; output int8 [N, OUT] (the forward result; the
    gradient passes where act_min < y < act_max); x int8 [N, IN]; weight int8 [OUT, IN] or packed
    int4 uint8 [OUT, ceil(IN/2)]; input_scale float s_x; weight_scales float [OUT] or [1] s_w;
    sample_weights float [N] alpha or None (all ones). Returns float32 torch tensors
    (grad_input [N, IN] or None, grad_weight [OUT, IN] or None, grad_bias [OUT]): grad_weight
    and grad_bias are those of sum_n alpha_n L_n (alpha fused into the reduction), grad_input
    is per-sample and unweighted (so that alpha enters each layer's reduction exactly once).
    Accumulates in float32 (grad_bias in float64).
    """
    batch = x.shape[0]
    x_np = x.detach().cpu().contiguous().numpy().reshape(batch, in_features, 1, 1)
    gi, gw, gb = _conv_backward(
        grad_output.detach().cpu().numpy(), output.detach().cpu().numpy(), x_np, weight,
        weight_shape=(weight.shape[0], in_features, 1, 1), groups=1,
        geometry=_gemm.LINEAR_GEOMETRY, input_zero_point=input_zero_point,
        input_scale=input_scale, weight_scales=_as_tensor(weight_scales), act_min=act_min,
        act_max=act_max, sample_weights=sample_weights, needs_input_grad=needs_input_grad,
        needs_weight_grad=needs_weight_grad)
    return (None if gi is None else torch.from_numpy(gi.reshape(batch, in_features)),
            None if gw is None else torch.from_numpy(np.ascontiguousarray(gw)),
            torch.from_numpy(gb))


def qconv2d_backward(grad_output, output, x, weight, *, weight_shape, stride, padding, dilation,
                     groups, input_zero_point, input_scale, weight_scales, act_min, act_max,
                     sample_weights=None, needs_input_grad=True, needs_weight_grad=True):
    """STE backward of qconv2d, per-sample weights fused (see kernels/cpu/backward.py).

    grad_output float32 / output int8 [N, OC, OH, OW]; x int8 [N, C, H, W]; weight as for
    qconv2d with weight_shape (OC, C/g, KH, KW); stride/dilation pairs; padding (top, bottom,
    left, right). Returns float32 (grad_input [N, C, H, W] or None — the transposed convolution
    honouring stride, padding, dilation and groups —, grad_weight [OC, C/g, KH, KW] or None,
    grad_bias [OC]). Accumulates in float32 (grad_bias in float64).
    """
    x_np = x.detach().cpu().contiguous().numpy()
    geometry, _, _ = _conv_geometry(x_np.shape, weight_shape, stride, padding, dilation)
    gi, gw, gb = _conv_backward(
        grad_output.detach().cpu().numpy(), output.detach().cpu().numpy(), x_np, weight,
        weight_shape=tuple(weight_shape), groups=groups, geometry=geometry,
        input_zero_point=input_zero_point, input_scale=input_scale,
        weight_scales=_as_tensor(weight_scales), act_min=act_min, act_max=act_max,
        sample_weights=sample_weights, needs_input_grad=needs_input_grad,
        needs_weight_grad=needs_weight_grad)
    return (None if gi is None else torch.from_numpy(gi),
            None if gw is None else torch.from_numpy(np.ascontiguousarray(gw).reshape(weight_shape)),
            torch.from_numpy(gb))


def _as_tensor(values):
    return values if isinstance(values, torch.Tensor) else torch.as_tensor(values, dtype=torch.float32)
