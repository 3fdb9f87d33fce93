"""Benchmark of the Numba CPU kernels against PyTorch peers, in one run on one machine.

    python benchmarks/bench_numba.py [--quick] [--threads N] [--isa vnni|avxvnni|avx2|generic]

Reports GOPS (2 * MACs / s, best of several runs after a warm-up that compiles) for:
exact int8 GEMM 1024^3 (intunlearn) vs torch.mm float32, torch._int_mm, quantized linear
(x86/fbgemm and qnnpack engines); packed-int4-weight GEMM vs int8 (1024^3 and few-row shapes
whose time is the weight traffic); int8 conv2d on ResNet-18 CIFAR layer shapes (batch 128) vs
torch conv2d float32; STE backward time vs forward time and vs PyTorch's float32 backward of
the same layer; the micro-kernels'
instruction counts. The exactness probe reads each engine's int32 accumulator 1:1 (scales 1, a
small K) on an input where vpmaddubsw (u8 x s8 pairs summed in saturating int16, the AVX2 path
of fbgemm / oneDNN) saturates, under the default dispatch and with the engines forced to AVX2.
On the AVX2 path intunlearn reuses a weight's packed panels while its bytes are unchanged
(numba_cpu.PANEL_CACHE), as PyTorch's quantized linear reuses its prepacked weight; the GEMM
table also times the int8 GEMM with the panels packed on every call.
--isa forces intunlearn's kernel path (INTUNLEARN_NUMBA_ISA) and, for the 256-bit paths,
PyTorch's (ATEN_CPU_CAPABILITY=avx2), so both contenders use the same instruction set.
Writes benchmarks/results/numba-cpu-<isa>-<date>.json with the machine description and load.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import intunlearn  # noqa: F401 - first: it sets how idle OpenMP workers wait (intunlearn.threads)
import numba
import numpy as np
import torch

from intunlearn import ops
from intunlearn import reference as spec
from intunlearn.backends import numba_cpu
import vector_pipes
from machine import cpu_model, load_average, unused_result_path


def best_times(fns, repeats):
    """{name: best seconds} with the callables timed round-robin (after one warm-up call each),
    so that a burst of load from another process hits every contender alike."""
    for fn in fns.values():
        fn()
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best




def requant(channels):
    return dict(multiplier=torch.full((channels,), 1 << 30, dtype=torch.int32),
                shift=torch.full((channels,), -12, dtype=torch.int32))


def torch_quantized_linear(engine, x_float, w_float):
    """A callable running PyTorch's quantized linear under `engine`, or None if unsupported."""
    if engine not in torch.backends.quantized.supported_engines:
        return None, None
    torch.backends.quantized.engine = engine
    qx = torch.quantize_per_tensor(x_float, 1.0, 128, torch.quint8)
    qw = torch.quantize_per_tensor(w_float, 1.0, 0, torch.qint8)
    layer = torch.ao.nn.quantized.Linear(w_float.shape[1], w_float.shape[0])
    layer.set_weight_bias(qw, None)
    layer.scale, layer.zero_point = 2.0**14, 0  # large output scale: the sum stays in range

    def run():
        torch.backends.quantized.engine = engine
        return layer(qx)
    return run, layer


def gemm_benchmarks(size, repeats, results):
    m = n = k = size
    ops_count = 2 * m * n * k
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.integers(-128, 128, (m, k)).astype(np.int8))
    w8 = torch.from_numpy(rng.integers(-127, 128, (n, k)).astype(np.int8))
    w4 = ops.pack_int4(torch.from_numpy(rng.integers(-7, 8, (n, k)).astype(np.int8)))
    params = dict(input_zero_point=-3, output_zero_point=2, **requant(n))
    a_f, b_f = x.float(), w8.float().t().contiguous()
    repacking = numba_cpu.PanelCache(min_weight_bytes=1 << 62)  # takes no weight

    def int8_packing_every_call():
        cache, numba_cpu.PANEL_CACHE = numba_cpu.PANEL_CACHE, repacking
        try:
            return ops.qlinear(x, w8, None, **params, backend="numba")
        finally:
            numba_cpu.PANEL_CACHE = cache

    entries = {
        "intunlearn int8 (exact)": lambda: ops.qlinear(x, w8, None, **params, backend="numba"),
        "intunlearn int8 (exact), weight panels packed every call": int8_packing_every_call,
        "intunlearn int4 packed (exact)": lambda: ops.qlinear(x, w4, None, **params, weight_bits=4,
                                                              backend="numba"),
        "torch.mm float32": lambda: torch.mm(a_f, b_f),
        "torch._int_mm (exact)": lambda: torch._int_mm(x, w8.t()),
    }
    for engine in ("x86", "fbgemm", "qnnpack"):
        run, _ = torch_quantized_linear(engine, a_f + 128 - 128, w8.float())
        if run is not None:
            entries[f"torch quantized linear ({engine})"] = run
    runnable = {}
    timings = {}
    for name, fn in entries.items():
        try:
            fn()
            runnable[name] = fn
        except Exception as error:  # an engine missing on this build
            timings[name] = {"error": repr(error)}
    for name, seconds in best_times(runnable, repeats).items():
        timings[name] = {"seconds": seconds, "gops": ops_count / seconds / 1e9}
    base = timings["torch.mm float32"]["seconds"]
    for entry in timings.values():
        if "seconds" in entry:
            entry["speedup_vs_torch_mm_f32"] = base / entry["seconds"]
    int8 = timings["intunlearn int8 (exact)"]["seconds"]
    for entry in timings.values():
        if "seconds" in entry:  # how much faster intunlearn's int8 GEMM is than this entry
            entry["intunlearn_int8_speedup_over_this"] = entry["seconds"] / int8
    results["gemm"] = {"shape": [m, n, k], "timings": timings,
                       "int4_speedup_vs_int8": int8 / timings["intunlearn int4 packed (exact)"]["seconds"],
                       "one_thread": one_thread_gemm(entries, repeats)}


def one_thread_gemm(entries, repeats):
    """intunlearn's int8 GEMM and torch.mm float32 with one thread each: the kernels alone,
    without how each library splits the work over threads (a static split waits for its
    slowest thread, which another process's work can slow down)."""
    names = ("intunlearn int8 (exact)", "torch.mm float32")
    threads = numba.get_num_threads(), torch.get_num_threads()
    numba.set_num_threads(1)
    torch.set_num_threads(1)
    try:
        best = best_times({name: entries[name] for name in names}, repeats)
    finally:
        numba.set_num_threads(threads[0])
        torch.set_num_threads(threads[1])
    return {"seconds": best, "speedup_vs_torch_mm_f32": best[names[1]] / best[names[0]]}


def int4_benchmarks(sizes, repeats, results):
    """Packed-int4 vs int8 weights where weight bytes matter (few rows: every call streams the
    whole weight, packed into panels and read by the micro-kernel) and where they do not."""
    rng = np.random.default_rng(1)
    rows = []
    for m, k, n in sizes:
        x = torch.from_numpy(rng.integers(-128, 128, (m, k)).astype(np.int8))
        w8 = torch.from_numpy(rng.integers(-7, 8, (n, k)).astype(np.int8))
        w4 = ops.pack_int4(w8)
        params = dict(input_zero_point=-3, output_zero_point=2, **requant(n), backend="numba")
        best = best_times({"int8": lambda: ops.qlinear(x, w8, None, **params),
                           "int4": lambda: ops.qlinear(x, w4, None, weight_bits=4, **params)}, repeats)
        rows.append({"shape": [m, n, k], "int8_seconds": best["int8"], "int4_seconds": best["int4"],
                     "int4_speedup_vs_int8": best["int8"] / best["int4"]})
    results["int4"] = rows


# --------------------------------------------------------------------------------------------
# Exactness probe: does an engine saturate u8 x s8 pair sums at int16 (vpmaddubsw)?
# --------------------------------------------------------------------------------------------
# x = 127 as quint8 255 with zero point 128 (the u8 operand is 255), w = (-128, -128, 127, 127,
# 1, 0): the first pair's products sum to 255 * -256 = -65280 and the second to 255 * 254 =
# 64770, both outside int16. Exact accumulator: sum (x_q - 128) * w = 127 * -1 = -127.
# vpmaddubsw gives -32768 + 32767 + 255 - 128 * sum(w) = 382. With input, weight and output
# scales ~1 and output zero point 128 every accumulator in [-128, 127] maps 1:1 to the output
# (the output scale is 1 + 2**-20, not 1, because qnnpack requires a requantization scale < 1),
# so the output *is* the accumulator; a saturated one shows up clamped at 127.
# A control channel w = (1, 0, 0, 0, 0, 0) (no saturation possible) must read 127.

PROBE_WEIGHTS = [[-128, -128, 127, 127, 1, 0], [1, 0, 0, 0, 0, 0]]
PROBE_EXACT = [-127, 127]
PROBE_ENVIRONMENTS = {  # how each engine can be forced onto its AVX2 (pre-VNNI) code path
    "default dispatch": {},
    "FBGEMM_ENABLE_INSTRUCTIONS=AVX2": {"FBGEMM_ENABLE_INSTRUCTIONS": "AVX2"},
    "ONEDNN_MAX_CPU_ISA=AVX2": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
}


def exactness_probe():
    """The probe in this process: {engine: outputs / verdict}. Run per environment."""
    record = {"torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}
    k = len(PROBE_WEIGHTS[0])
    x_float = torch.full((1, k), 127.0)
    w_float = torch.tensor(PROBE_WEIGHTS, dtype=torch.float32)
    for engine in ("x86", "fbgemm", "onednn", "qnnpack"):
        if engine not in torch.backends.quantized.supported_engines:
            continue
        try:
            torch.backends.quantized.engine = engine
            qx = torch.quantize_per_tensor(x_float, 1.0, 128, torch.quint8)
            qw = torch.quantize_per_tensor(w_float, 1.0, 0, torch.qint8)
            packed = torch.ops.quantized.linear_prepack(qw, None)
            y = torch.ops.quantized.linear(qx, packed, 1.0 + 2.0**-20, 128)
            got = [int(v) for v in y.int_repr()[0].tolist()]
            got = [v - 128 for v in got]
            record[engine] = {"accumulators_read": got, "exact": PROBE_EXACT,
                              "verdict": "matches" if got == PROBE_EXACT else "differs"}
        except Exception as error:  # noqa: BLE001 - an engine missing or refusing the case
            record[engine] = {"error": repr(error)[:200]}
    # torch._int_mm: s8 x s8 -> s32 (K = 64, a multiple of 8 as it requires).
    x = torch.full((32, 64), 127, dtype=torch.int8)
    w = torch.tensor(PROBE_WEIGHTS[0][:4] * 16, dtype=torch.int8).repeat(32, 1)
    w[1::2] = -128
    try:
        got = torch._int_mm(x, w.t().contiguous()).numpy().astype(np.int64)
        exact = x.numpy().astype(np.int64) @ w.numpy().astype(np.int64).T
        record["torch._int_mm"] = {"max_abs_error": int(np.abs(got - exact).max()),
                                   "verdict": "matches" if np.array_equal(got, exact) else "differs"}
    except Exception as error:  # noqa: BLE001
        record["torch._int_mm"] = {"error": repr(error)[:200]}
    return record


def intunlearn_probe():
    """The same accumulators through intunlearn (x = 127, z_x = 0, M = 1: output = acc)."""
    x = torch.full((1, len(PROBE_WEIGHTS[0])), 127, dtype=torch.int8)
    w = torch.tensor(PROBE_WEIGHTS, dtype=torch.int8)
    params = dict(input_zero_point=0, output_zero_point=0,
                  multiplier=torch.tensor([1 << 30], dtype=torch.int32),
                  shift=torch.tensor([1], dtype=torch.int32))
    record = {}
    for isa in numba_cpu.ISAS:
        try:
            numba_cpu.FORCE_ISA = isa
            got = [int(v) for v in ops.qlinear(x, w, None, **params, backend="numba")[0]]
        except ValueError as error:  # a kernel whose instructions this machine lacks
            record[isa] = {"error": str(error)}
            continue
        finally:
            numba_cpu.FORCE_ISA = None
        record[isa] = {"accumulators_read": got, "exact": PROBE_EXACT,
                       "verdict": "matches" if got == PROBE_EXACT else "differs"}
    oracle = spec.qlinear(x.numpy(), w.numpy(), None, input_zero_point=0, output_zero_point=0,
                          multiplier=np.array([1 << 30]), shift=np.array([1]))
    record["oracle"] = [int(v) for v in oracle[0]]
    return record


def exactness_check(results):
    record = {"input": "x = 127 (quint8 255, zero point 128), w rows " + json.dumps(PROBE_WEIGHTS)
                       + ", all scales 1: output = int32 accumulator",
              "exact_accumulators": PROBE_EXACT,
              "vpmaddubsw_would_give": [382, 127],
              "intunlearn": intunlearn_probe(), "torch": {}}
    for label, env in PROBE_ENVIRONMENTS.items():
        try:
            done = subprocess.run([sys.executable, __file__, "--exactness-probe"], capture_output=True,
                                  text=True, timeout=120, env={**os.environ, **env})
            record["torch"][label] = json.loads(done.stdout.strip().splitlines()[-1])
        except Exception as error:  # noqa: BLE001
            record["torch"][label] = {"error": repr(error)[:200]}
    results["exactness"] = record


RESNET18_CIFAR = [  # (name, channels_in, channels_out, size, stride)
    ("conv2_x 64ch 32x32", 64, 64, 32, 1),
    ("conv3_1 64->128 s2", 64, 128, 32, 2),
    ("conv3_x 128ch 16x16", 128, 128, 16, 1),
    ("conv4_1 128->256 s2", 128, 256, 16, 2),
    ("conv4_x 256ch 8x8", 256, 256, 8, 1),
    ("conv5_1 256->512 s2", 256, 512, 8, 2),
    ("conv5_x 512ch 4x4", 512, 512, 4, 1),
]


def conv_benchmarks(batch, repeats, results, layers):
    rng = np.random.default_rng(1)
    rows = []
    for name, cin, cout, size, stride in layers:
        x = torch.from_numpy(rng.integers(-128, 128, (batch, cin, size, size)).astype(np.int8))
        w = torch.from_numpy(rng.integers(-127, 128, (cout, cin, 3, 3)).astype(np.int8))
        params = dict(stride=stride, padding=1, input_zero_point=-5, output_zero_point=3, **requant(cout))
        x_f, w_f = x.float(), w.float()
        out_size = (size + 2 - 3) // stride + 1
        ops_count = 2 * batch * cout * out_size * out_size * cin * 9
        best = best_times({
            "mine": lambda: ops.qconv2d(x, w, None, **params, backend="numba"),
            "peer": lambda: torch.nn.functional.conv2d(x_f, w_f, stride=stride, padding=1)}, repeats)
        mine, peer = best["mine"], best["peer"]
        rows.append({"layer": name, "batch": batch, "intunlearn_seconds": mine,
                     "intunlearn_gops": ops_count / mine / 1e9, "torch_conv2d_f32_seconds": peer,
                     "torch_gops": ops_count / peer / 1e9, "speedup_vs_torch_f32": peer / mine})
    results["conv2d"] = rows


def backward_benchmarks(repeats, results, size, conv_layer, batch):
    rng = np.random.default_rng(2)
    out = {}
    # Linear size^3
    x = torch.from_numpy(rng.integers(-128, 128, (size, size)).astype(np.int8))
    w = torch.from_numpy(rng.integers(-127, 128, (size, size)).astype(np.int8))
    params = dict(input_zero_point=-3, output_zero_point=2, **requant(size))
    y = ops.qlinear(x, w, None, **params, backend="numba")
    g = torch.randn(size, size)
    alpha = torch.rand(size)
    best = best_times({
        "fwd": lambda: ops.qlinear(x, w, None, **params, backend="numba"),
        "bwd": lambda: numba_cpu.qlinear_backward(
            g, y, x, w, in_features=size, input_zero_point=-3, input_scale=0.05,
            weight_scales=torch.full((size,), 0.01), act_min=-128, act_max=127,
            sample_weights=alpha)}, repeats)
    x_f, w_f, g_f = x.float().requires_grad_(), w.float().requires_grad_(), g.clone()
    torch_bwd = best_times({"torch": lambda: torch.autograd.grad(
        torch.nn.functional.linear(x_f, w_f), (x_f, w_f), g_f)}, repeats)["torch"]
    fwd, bwd = best["fwd"], best["bwd"]
    out["linear"] = {"shape": [size, size, size], "forward_seconds": fwd, "backward_seconds": bwd,
                     "backward_over_forward": bwd / fwd, "torch_f32_backward_seconds": torch_bwd,
                     "backward_over_torch_f32_backward": bwd / torch_bwd}
    name, cin, cout, hw, stride = conv_layer
    x = torch.from_numpy(rng.integers(-128, 128, (batch, cin, hw, hw)).astype(np.int8))
    w = torch.from_numpy(rng.integers(-127, 128, (cout, cin, 3, 3)).astype(np.int8))
    params = dict(stride=stride, padding=1, input_zero_point=-5, output_zero_point=3, **requant(cout))
    y = ops.qconv2d(x, w, None, **params, backend="numba")
    g = torch.randn(y.shape)
    alpha = torch.rand(batch)
    best = best_times({
        "fwd": lambda: ops.qconv2d(x, w, None, **params, backend="numba"),
        "bwd": lambda: numba_cpu.qconv2d_backward(
            g, y, x, w, weight_shape=tuple(w.shape), stride=(stride, stride),
            padding=(1, 1, 1, 1), dilation=(1, 1), groups=1, input_zero_point=-5,
            input_scale=0.05, weight_scales=torch.full((cout,), 0.01), act_min=-128,
            act_max=127, sample_weights=alpha)}, repeats)
    x_f, w_f, g_f = x.float().contiguous(), w.float().contiguous(), g.clone()
    torch_bwd = best_times({"torch": lambda: torch.ops.aten.convolution_backward(
        g_f, x_f, w_f, None, [stride, stride], [1, 1], [1, 1], False, [0, 0], 1,
        [True, True, True])}, repeats)["torch"]
    fwd, bwd = best["fwd"], best["bwd"]
    out["conv2d"] = {"layer": name, "batch": batch, "forward_seconds": fwd, "backward_seconds": bwd,
                     "backward_over_forward": bwd / fwd, "torch_f32_backward_seconds": torch_bwd,
                     "backward_over_torch_f32_backward": bwd / torch_bwd}
    results["backward"] = out


def cpu_flags():
    wanted = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                present = set(line.split(":", 1)[1].split())
                return {flag: flag in present for flag in wanted}
    except OSError:
        pass
    return {}




# Each kernel compiled for a CPU that has its instructions (no such machine needed), and the
# instruction mix of its hot loop (the basic blocks that multiply).
ASSEMBLY_TARGETS = {
    "vnni": ("x86_64-unknown-linux-gnu", "icelake-server", ""),
    "vnni_int4": ("x86_64-unknown-linux-gnu", "icelake-server", ""),
    "avxvnni": ("x86_64-unknown-linux-gnu", "alderlake", ""),
    "avx2": ("x86_64-unknown-linux-gnu", "znver3", ""),
    "gemv_avx2": ("x86_64-unknown-linux-gnu", "znver3", ""),
    "gemv_avx2_int4": ("x86_64-unknown-linux-gnu", "znver3", ""),
    "generic": ("x86_64-unknown-linux-gnu", "znver3", ""),
}


def assembly_check():
    """{kernel: {"target": ..., "hot_loop": {mnemonic: count}}} (the top 12 mnemonics)."""
    from intunlearn.kernels.cpu import isa_report

    report = {}
    for kernel, (triple, cpu, features) in ASSEMBLY_TARGETS.items():
        mix = isa_report.instruction_mix(isa_report.compile_for(kernel, triple, cpu, features))
        report[kernel] = {"target": f"{triple} {cpu} {features}".strip(),
                          "hot_loop": dict(list(mix.items())[:12])}
    return report


def targets(results):
    """The performance targets for the kernel path measured (issue #16 for the 256-bit paths,
    issue #3 for AVX-512 VNNI), each with the measured value and met / missed."""
    isa = results["machine"]["intunlearn_kernel"]
    timings = results["gemm"]["timings"]
    conv = [row["speedup_vs_torch_f32"] for row in results["conv2d"]]
    gemm = timings["intunlearn int8 (exact)"]["speedup_vs_torch_mm_f32"]
    few_rows = min([row["int4_speedup_vs_int8"] for row in results["int4"]
                    if row["shape"][0] <= 16 and row["shape"][2] >= 8192] or [0.0])
    int4_name = "int4 vs int8 >= 1.1 (M <= 16, weights beyond the cache: K = N = 8192)"
    if isa == "vnni":
        fbgemm = timings.get("torch quantized linear (fbgemm)", {}).get("intunlearn_int8_speedup_over_this")
        measured = {"int8 GEMM vs torch.mm f32 >= 2.0": (gemm, 2.0, ">="),
                    "int8 GEMM vs PyTorch quantized linear (fbgemm) >= 1.0": (fbgemm or 0.0, 1.0, ">="),
                    int4_name: (few_rows, 1.1, ">="),
                    "int8 conv2d vs torch conv2d f32 (every layer) >= 1.5": (min(conv), 1.5, ">=")}
    else:
        measured = {"int8 GEMM vs torch.mm f32 >= 1.6": (gemm, 1.6, ">="),
                    int4_name: (few_rows, 1.1, ">="),
                    "int8 conv2d vs torch conv2d f32 (every layer) >= 1.3": (min(conv), 1.3, ">=")}
    backward = results.get("backward")
    if backward:
        measured["linear backward / forward <= 2.5"] = (backward["linear"]["backward_over_forward"], 2.5, "<=")
        measured["conv2d backward / forward <= 2.5"] = (backward["conv2d"]["backward_over_forward"], 2.5, "<=")
    return {name: {"measured": round(value, 3),
                   "met": value >= bound if op == ">=" else value <= bound}
            for name, (value, bound, op) in measured.items()}


def _rerun_forced(isa, argv):
    """Run this script again with intunlearn and PyTorch forced onto `isa`'s instruction set
    (the environment must be set before torch and Numba start); returns its exit status."""
    env = dict(os.environ, INTUNLEARN_NUMBA_ISA=isa)
    if isa in ("avx2", "avxvnni"):
        env["ATEN_CPU_CAPABILITY"] = "avx2"  # torch's own kernels on the same 256-bit ISA
    return subprocess.run([sys.executable, __file__, *argv], env=env).returncode


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller shapes, fewer repeats")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--isa", choices=numba_cpu.ISAS, default=None,
                        help="force intunlearn's kernel path (and PyTorch's AVX2 kernels for the "
                             "256-bit paths); default: the path this CPU dispatches to")
    parser.add_argument("--skip-backward", action="store_true", help="leave out the STE backward")
    parser.add_argument("--exactness-probe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.exactness_probe:  # child process of exactness_check, under a forced ISA
        print(json.dumps(exactness_probe()))
        return
    if args.isa and os.environ.get("INTUNLEARN_NUMBA_ISA") != args.isa:
        sys.exit(_rerun_forced(args.isa, sys.argv[1:]))
    if args.threads:
        numba.set_num_threads(args.threads)
        torch.set_num_threads(args.threads)
    size, batch, repeats = (512, 32, 2) if args.quick else (1024, 128, 7)
    import llvmlite
    results = {
        "machine": {"cpu": cpu_model(), "cpu_flags": cpu_flags(), "cores": os.cpu_count(),
                    "load_average_at_start": load_average(),
                    "numba_threads": numba.get_num_threads(),
                    "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "numba": numba.__version__, "llvmlite": llvmlite.__version__,
                    "numpy": np.__version__, "python": platform.python_version(),
                    "host_cpu_llvm": _host_cpu(), "intunlearn_kernel": numba_cpu.kernel_isa(),
                    "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
                    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    "env": {k: os.environ[k] for k in os.environ
                            if k.startswith(("OPENBLAS", "OMP", "GOMP", "KMP", "MKL", "NUMBA", "INTUNLEARN", "ATEN"))}},
        "args": {"quick": args.quick, "size": size, "batch": batch, "repeats": repeats},
    }
    started = time.perf_counter()
    exactness_check(results)
    results["assembly"] = assembly_check()
    if results["machine"]["cpu_flags"].get("avx2"):
        # the most an exact int8 GEMM can gain over float32 on this core (vector_pipes.py)
        results["vector_pipes"] = vector_pipes.rates()
    gemm_benchmarks(size, repeats, results)
    # K = N = 8192: 64 MB of int8 weights, more than the last-level cache of most CPUs (32 MB
    # here), as for a network whose layers together exceed it; 4096 (16 MB) stays in this L3.
    int4_benchmarks([(1, 4096, 4096), (16, 4096, 4096), (1, 8192, 8192), (16, 8192, 8192),
                     (64, 4096, 4096)] if not args.quick else [(1, 2048, 2048), (16, 2048, 2048)],
                    repeats, results)
    conv_benchmarks(batch, repeats, results, RESNET18_CIFAR)
    if not args.skip_backward:
        backward_benchmarks(repeats, results, size, RESNET18_CIFAR[2], batch)
    results["machine"]["load_average_at_end"] = load_average()
    results["targets"] = targets(results)
    results["wall_seconds"] = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    path = unused_result_path(args.out, f"numba-cpu-{results['machine']['intunlearn_kernel']}-"
                                        f"{datetime.date.today().isoformat()}{'-quick' if args.quick else ''}")
    path.write_text(json.dumps(results, indent=2))
    print_table(results)
    print(f"wrote {path}")


def _host_cpu():
    try:
        import llvmlite.binding as llvm
        return llvm.get_host_cpu_name()
    except Exception:
        return None


def print_table(results):
    machine = results["machine"]
    print(f"{machine['cpu']}, {machine['cores']} cores, kernel {machine['intunlearn_kernel']}, "
          f"load average {machine['load_average_at_start']} -> {machine['load_average_at_end']}")
    print()
    print("| GEMM %s | ms | GOPS | x torch.mm f32 | intunlearn int8 speedup over it |"
          % "x".join(map(str, results["gemm"]["shape"])))
    print("| --- | --- | --- | --- | --- |")
    for name, entry in results["gemm"]["timings"].items():
        if "seconds" in entry:
            print(f"| {name} | {entry['seconds'] * 1e3:.2f} | {entry['gops']:.1f} | "
                  f"{entry['speedup_vs_torch_mm_f32']:.2f} | {entry['intunlearn_int8_speedup_over_this']:.2f} |")
        else:
            print(f"| {name} | error | | | |")
    one = results["gemm"]["one_thread"]
    print(f"\none thread each: intunlearn int8 {one['seconds']['intunlearn int8 (exact)'] * 1e3:.2f} ms, "
          f"torch.mm f32 {one['seconds']['torch.mm float32'] * 1e3:.2f} ms: "
          f"{one['speedup_vs_torch_mm_f32']:.2f}x")
    if "vector_pipes" in results:
        print(f"ceiling of an exact int8 GEMM over float32 on this core (vpmaddwd + vpaddd "
              f"against FMA, vector_pipes.py): {results['vector_pipes']['int8_over_f32_ceiling']:.2f}x")
    print(f"int4 / int8 speed: {results['gemm']['int4_speedup_vs_int8']:.2f}x")
    for row in results["int4"]:
        print(f"int4 / int8 speed, M x N x K = {'x'.join(map(str, row['shape']))}: "
              f"{row['int4_speedup_vs_int8']:.2f}x ({row['int8_seconds'] * 1e3:.2f} ms -> "
              f"{row['int4_seconds'] * 1e3:.2f} ms)")
    print()
    print("| conv2d 3x3 pad 1, batch %d | intunlearn GOPS | torch f32 GOPS | speedup |" % results["args"]["batch"])
    print("| --- | --- | --- | --- |")
    for row in results["conv2d"]:
        print(f"| {row['layer']} | {row['intunlearn_gops']:.1f} | {row['torch_gops']:.1f} | {row['speedup_vs_torch_f32']:.2f} |")
    print()
    for kind, entry in results.get("backward", {}).items():
        print(f"backward {kind}: forward {entry['forward_seconds']*1e3:.1f} ms, backward "
              f"{entry['backward_seconds']*1e3:.1f} ms, ratio {entry['backward_over_forward']:.2f}; "
              f"torch float32 backward {entry['torch_f32_backward_seconds']*1e3:.1f} ms "
              f"(ours / torch {entry['backward_over_torch_f32_backward']:.2f})")
    print()
    for name, entry in results["targets"].items():
        print(f"target {name}: {entry['measured']} -> {'met' if entry['met'] else 'MISSED'}")
    print()
    for kernel, entry in results["assembly"].items():
        print(f"hot loop of {kernel} ({entry['target']}): {json.dumps(entry['hot_loop'])}")
    exactness = results["exactness"]
    print("exactness probe (exact accumulators %s):" % exactness["exact_accumulators"])
    for isa, entry in exactness["intunlearn"].items():
        if isa != "oracle":
            print(f"  intunlearn {isa}: {entry.get('verdict', entry)} {entry.get('accumulators_read', '')}")
    for label, engines in exactness["torch"].items():
        for engine, entry in engines.items():
            if isinstance(entry, dict):
                print(f"  [{label}] {engine}: {entry.get('verdict', entry.get('error'))} "
                      f"{entry.get('accumulators_read', '')}")


if __name__ == "__main__":
    main()
