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


def gemm_configs():
    """int8 GEMM (qlinear). Large square tiles for big GEMMs (int8 MMA wants BLOCK_K >= 64);
    thin BLOCK_M=16/32 tiles for decode-like small-M calls where weight bandwidth dominates."""
    if INTERPRET:
        return [_config(32, 32, 64, 1, 4, GROUP_M=8)]
    return [
        _config(128, 256, 128, 3, 8, GROUP_M=8),
        _config(256, 128, 128, 3, 8, GROUP_M=8),
        _config(128, 128, 128, 4, 8, GROUP_M=8),
        _config(128, 128, 64, 4, 4, GROUP_M=8),
        _config(64, 128, 128, 4, 4, GROUP_M=8),
        _config(64, 64, 128, 4, 4, GROUP_M=8),
        _config(32, 128, 256, 4, 4, GROUP_M=8),
        _config(16, 128, 256, 4, 4, GROUP_M=8),
        _config(16, 64, 512, 3, 4, GROUP_M=8),
        _config(16, 256, 128, 4, 8, GROUP_M=8),
    ]


def conv_configs():
    """Implicit-GEMM convolution: M = N*OH*OW is large, N = OC/groups is 64..512, K = C/g*KH*KW."""
    if INTERPRET:
        return [_config(64, 32, 64, 1, 4)]
    return [
        _config(128, 128, 64, 4, 8),
        _config(128, 64, 64, 4, 4),
        _config(256, 128, 64, 3, 8),
        _config(128, 256, 64, 3, 8),
        _config(64, 64, 64, 4, 4),
        _config(128, 128, 128, 3, 8),
        _config(64, 32, 32, 4, 4),  # depthwise / tiny groups
    ]


def backward_configs():
    """fp32 backward GEMMs (IEEE fp32 dot)."""
    if INTERPRET:
        return [_config(32, 32, 64, 1, 4)]
    return [
        _config(64, 64, 32, 3, 4),
        _config(128, 64, 32, 3, 8),
        _config(64, 128, 32, 3, 8),
        _config(32, 32, 32, 2, 4),
    ]


def elementwise_block():
    """Elements per program for qadd / avg pool."""
    return 4096 if INTERPRET else 1024
