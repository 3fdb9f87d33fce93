"""Autotuning configurations: a search space for Hopper GPUs (H100/H200), and one config with
large blocks under Triton's interpreter (TRITON_INTERPRET=1), where every program instance is
paid for in Python and autotuning would only multiply the cost (one config: no benchmarking)."""

from __future__ import annotations

import os

import triton

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def _config(block_m, block_n, block_k, stages, warps, **extra):
    return triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k, **extra},
                         num_stages=stages, num_warps=warps)


def gemm_configs(interpret: bool = INTERPRET):
    """int8 GEMM (qlinear). 256x128 and square tiles for big GEMMs (int8 MMA wants BLOCK_K >=
    64); thin BLOCK_M=16/32 tiles for decode-like small-M calls where weight bandwidth dominates.
    Every config compiles for sm_90 without register spills, int8 and int4, except 8 bytes in
    16x64x512 for int4 weights with the ones row (benchmarks/triton_compile_report.py).
    128x256 spills ~340 bytes, so the wide tile runs along M: 256x128 fits since the epilogue
    is int32."""
    if interpret:
        return [_config(32, 32, 64, 1, 4, GROUP_M=8)]
    return [
        _config(256, 128, 128, 3, 8, GROUP_M=8),
        _config(256, 128, 128, 4, 8, GROUP_M=8),
        _config(256, 128, 64, 5, 8, GROUP_M=8),
        _config(128, 128, 128, 4, 8, GROUP_M=8),
        _config(128, 128, 256, 3, 8, GROUP_M=8),
        _config(128, 64, 128, 4, 4, GROUP_M=8),
        _config(64, 128, 128, 4, 4, GROUP_M=8),
        _config(64, 64, 128, 4, 4, GROUP_M=8),
        _config(32, 128, 256, 4, 4, GROUP_M=8),
        _config(16, 128, 256, 4, 4, GROUP_M=8),
        _config(16, 64, 512, 3, 4, GROUP_M=8),
        _config(16, 256, 128, 4, 8, GROUP_M=8),
    ]


def smallest_gemm_block_m(interpret: bool = INTERPRET) -> int:
    """Below this many rows every GEMM tile has a spare row (gemm.py's ONES_ROW)."""
    return min(config.kwargs["BLOCK_M"] for config in gemm_configs(interpret))


def conv_configs(interpret: bool = INTERPRET):
    """Implicit-GEMM convolution: M = N*OH*OW is large, N = OC/groups is 64..512, K = C/g per
    tap. Up to 128x128 tiles compile for sm_90 without spills (benchmarks/
    triton_compile_report.py); 256x128 and 128x256 spill, and stay out."""
    if interpret:
        return [_config(64, 32, 64, 1, 4)]
    return [
        _config(128, 128, 64, 3, 8),
        _config(128, 128, 64, 4, 8),
        _config(128, 128, 128, 3, 8),
        _config(128, 64, 64, 4, 8),
        _config(64, 128, 64, 4, 8),
        _config(64, 64, 128, 3, 4),
        _config(64, 64, 64, 4, 4),
        _config(32, 64, 64, 4, 4),
        _config(64, 32, 32, 4, 4),  # depthwise / tiny groups
    ]


# The z_x-outside-int8 conv epilogue (TAP_CORRECTION) holds one tap's weight sums per column:
# tiles above 128x64 spill there, so the autotuner does not try them on that path.
TAP_CORRECTION_MAX_TILE = 128 * 64


def conv_config_fits(config, tap_correction: bool) -> bool:
    return not tap_correction or \
        config.kwargs["BLOCK_M"] * config.kwargs["BLOCK_N"] <= TAP_CORRECTION_MAX_TILE


def prune_conv_configs(configs, named_args, **launch_kwargs):
    """triton.autotune's early_config_prune: the conv search space for this launch's path."""
    fitting = [config for config in configs
               if conv_config_fits(config, launch_kwargs.get("TAP_CORRECTION", False))]
    return fitting or configs


def backward_configs(interpret: bool = INTERPRET):
    """fp32 backward GEMMs (IEEE fp32 dot)."""
    if interpret:
        return [_config(32, 32, 64, 1, 4)]
    return [
        _config(64, 64, 32, 3, 4),
        _config(128, 64, 32, 3, 8),
        _config(64, 128, 32, 3, 8),
        _config(32, 32, 32, 2, 4),
    ]


def row_sum_blocks(interpret: bool = INTERPRET):
    """(rows, columns) per step of the row-sum pass that feeds the zero-point corrections."""
    return (16, 256) if interpret else (32, 256)


def elementwise_block(interpret: bool = INTERPRET):
    """Elements per program for qadd / avg pool."""
    return 4096 if interpret else 1024
