"""The AVX2 path's weight-panel cache (numba_cpu.PanelCache) never serves a panel packed from
other bytes: a weight changed in place (through torch, through `.data`, through a numpy view),
a new tensor at a freed tensor's address, and a cache hit all give the reference oracle's
output, and the cache stays within its byte limit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings

from intunlearn import ops
from strategies import conv_cases, linear_cases

pytest.importorskip("numba")

from intunlearn.backends import numba_cpu  # noqa: E402

pytestmark = pytest.mark.skipif(not numba_cpu.isa_runs_here("avx2"),
                                reason="the avx2 kernel needs AVX2")


@pytest.fixture
def cache(monkeypatch):
    """The AVX2 path forced, with a fresh cache that takes every weight (no size floor)."""
    monkeypatch.setattr(numba_cpu, "FORCE_ISA", "avx2")
    fresh = numba_cpu.PanelCache(min_weight_bytes=0)
    monkeypatch.setattr(numba_cpu, "PANEL_CACHE", fresh)
    return fresh


ROWS = 24  # more than the few-row kernel takes (16): the panel GEMM
PARAMS = dict(input_zero_point=-3, output_zero_point=2,
              multiplier=torch.tensor([1 << 30], dtype=torch.int32),
              shift=torch.tensor([-6], dtype=torch.int32))


def _check(x, weight, **extra):
    got = ops.qlinear(x, weight, None, **PARAMS, backend="numba", **extra)
    want = ops.qlinear(x, weight, None, **PARAMS, backend="reference", **extra)
    assert torch.equal(got, want)


def _random(rng, shape, low=-128, high=128):
    return torch.from_numpy(rng.integers(low, high, shape).astype(np.int8))


def test_repeated_weight_is_a_hit_and_exact(cache):
    rng = np.random.default_rng(0)
    x, w = _random(rng, (ROWS, 96)), _random(rng, (80, 96))
    _check(x, w)
    _check(_random(rng, (ROWS, 96)), w)
    assert (cache.misses, cache.hits) == (1, 1)


@pytest.mark.parametrize("how", ["torch in place", "through .data", "through a numpy view"])
def test_weight_changed_in_place_is_repacked(cache, how):
    rng = np.random.default_rng(1)
    x, w = _random(rng, (ROWS, 64)), _random(rng, (70, 64))
    _check(x, w)
    version = w._version
    new_values = _random(rng, (70, 64))
    if how == "torch in place":
        w.copy_(new_values)
    elif how == "through .data":
        w.data.copy_(new_values)
    else:
        w.numpy()[...] = new_values.numpy()
    if how != "torch in place":
        assert w._version == version  # the version counter did not see the write
    _check(x, w)
    assert cache.hits == 0


def test_one_changed_byte_is_seen(cache):
    rng = np.random.default_rng(2)
    x, w = _random(rng, (ROWS, 40)), _random(rng, (64, 40))
    _check(x, w)
    w.numpy()[63, 39] = np.int8(-w.numpy()[63, 39] - 1)  # the very last byte, to another value
    _check(x, w)
    assert cache.hits == 0


def test_new_tensor_at_a_freed_address_is_repacked(cache):
    rng = np.random.default_rng(3)
    x = _random(rng, (ROWS, 48))
    storage = torch.empty(2 * 48 * 48, dtype=torch.int8)
    first = storage[:48 * 48].view(48, 48)
    first.copy_(_random(rng, (48, 48)))
    _check(x, first)
    second = storage[:48 * 48].view(48, 48)  # same address, shape and dtype: another tensor
    second.copy_(_random(rng, (48, 48)))
    assert second.data_ptr() == first.data_ptr() and second._version == first._version
    _check(x, second)
    assert cache.hits == 0


def test_packed_int4_weight_changed_in_place(cache):
    rng = np.random.default_rng(4)
    x = _random(rng, (ROWS, 64))
    packed = ops.pack_int4(_random(rng, (48, 64), -8, 8))
    _check(x, packed, weight_bits=4)
    packed.copy_(ops.pack_int4(_random(rng, (48, 64), -8, 8)))
    _check(x, packed, weight_bits=4)
    _check(_random(rng, (ROWS, 64)), packed, weight_bits=4)
    assert (cache.misses, cache.hits) == (2, 1)


def test_cache_stays_within_its_limit(monkeypatch):
    monkeypatch.setattr(numba_cpu, "FORCE_ISA", "avx2")
    small = numba_cpu.PanelCache(max_bytes=3 * (64 * 64 + 64 * 64 * 2), min_weight_bytes=0)
    monkeypatch.setattr(numba_cpu, "PANEL_CACHE", small)
    rng = np.random.default_rng(5)
    weights = [_random(rng, (64, 64)) for _ in range(6)]
    for w in weights:
        _check(_random(rng, (ROWS, 64)), w)
        assert small.nbytes <= small.max_bytes
    _check(_random(rng, (ROWS, 64)), weights[-1])  # the newest is still there
    assert small.hits == 1
    _check(_random(rng, (ROWS, 64)), weights[0])  # the oldest was dropped
    assert small.hits == 1


def test_bad_limits_are_refused():
    with pytest.raises(ValueError, match="max_bytes"):
        numba_cpu.PanelCache(max_bytes=-1)


_FORCED = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@settings(max_examples=20, **_FORCED)
@given(case=linear_cases(max_batch=24, max_in=90, max_out=70))
def test_cached_panels_match_reference_qlinear(cache, case):
    """Each case twice: packed, then (same weight) from the cache."""
    weight = case["weight"]
    if case["packed"]:
        weight = ops.pack_int4(weight.reshape(weight.shape[0], -1))
    for _ in range(2):
        got = ops.qlinear(case["x"], weight, case["bias"], **case["params"], backend="numba")
        want = ops.qlinear(case["x"], weight, case["bias"], **case["params"], backend="reference")
        assert torch.equal(got, want)


@settings(max_examples=15, **_FORCED)
@given(case=conv_cases(max_channels=9))
def test_cached_panels_match_reference_qconv2d(cache, case):
    weight, params = case["weight"], dict(case["params"])
    if case["packed"]:
        params["kernel_size"] = tuple(weight.shape[2:])
        weight = ops.pack_int4(weight.reshape(weight.shape[0], -1))
    for _ in range(2):
        got = ops.qconv2d(case["x"], weight, case["bias"], **params, backend="numba")
        want = ops.qconv2d(case["x"], weight, case["bias"], **params, backend="reference")
        assert torch.equal(got, want)


@pytest.mark.parametrize("out_channels, length", [(64, 2), (70, 64), (130, 96), (1, 1024)])
def test_linear_pair_panel_layout(out_channels, length):
    """pack_pair_panel_words (a linear layer's weights) against the layout's definition:
    element (block, segment, q, lane, j) = W[64 block + 16 segment + lane, 2q + j] as int16,
    0 past the channels."""
    from intunlearn.kernels.cpu import pair_gemm

    rng = np.random.default_rng(out_channels)
    w = rng.integers(-128, 128, (out_channels, length)).astype(np.int8)
    blocks = -(-out_channels // 64)
    want = np.zeros((blocks * 64, length), np.int16)
    want[:out_channels] = w
    want = want.reshape(blocks, 4, 16, length // 2, 2).transpose(0, 1, 3, 2, 4).reshape(-1)
    got = pair_gemm.pack_pair_panel_words(w.view(np.uint16), out_channels)
    assert got.dtype == np.int16 and np.array_equal(got, want)


@pytest.mark.parametrize("out_channels, groups, group_channels, taps",
                         [(64, 1, 3, 9), (70, 1, 4, 1), (40, 2, 5, 4), (130, 1, 2, 9)])
def test_conv_pair_panel_layout(out_channels, groups, group_channels, taps):
    """pack_pair_panel (any convolution) against the layout's definition: element
    (g, block, segment, t, q, lane, j) = W[g * OCg + 64 block + 16 segment + lane,
    ci = 2q + j, tap t] as int16, 0 past the real channels and input channels."""
    from intunlearn.kernels.cpu import pair_gemm

    rng = np.random.default_rng(out_channels + taps)
    w = rng.integers(-128, 128, (out_channels, group_channels * taps)).astype(np.int8)
    group_rows = out_channels // groups
    blocks = -(-group_rows // 64)
    channels_padded = group_channels + group_channels % 2
    want = np.zeros((groups, blocks * 64, channels_padded, taps), np.int16)
    for g in range(groups):
        want[g, :group_rows, :group_channels] = w[g * group_rows:(g + 1) * group_rows].reshape(
            group_rows, group_channels, taps)
    # [g][block][segment][lane][q][j][t] -> [g][block][segment][t][q][lane][j]
    want = want.reshape(groups, blocks, 4, 16, channels_padded // 2, 2, taps)
    want = want.transpose(0, 1, 2, 6, 4, 3, 5).reshape(-1)
    got = pair_gemm.pack_pair_panel(w, groups, group_channels, taps, channels_padded)
    assert got.dtype == np.int16 and np.array_equal(got, want)


@pytest.mark.parametrize("length", [0, 1, 7, 8, 9, 4095, 4096, 4103, 70001])
def test_same_bytes_sees_any_one_changed_byte(length):
    """The cache's comparison (8-byte words, then the tail) against numpy's: equal copies are
    equal, and one flipped bit anywhere (the first and last word, the tail) is a difference."""
    from intunlearn.kernels.cpu import int_gemm

    rng = np.random.default_rng(length)
    a = rng.integers(0, 256, length).astype(np.uint8)
    assert int_gemm.same_bytes(a, a.copy())
    for position in sorted({0, length // 2, length - 8, length - 1} - {-8, -1, -7}):
        if 0 <= position < length:
            b = a.copy()
            b[position] ^= 0x40
            assert not int_gemm.same_bytes(a, b)
