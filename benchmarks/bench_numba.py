"""Benchmark of the Numba CPU kernels against PyTorch peers, in one run on one machine.

    python benchmarks/bench_numba.py [--quick] [--threads N]

Reports GOPS (2 * MACs / s, best of several runs after a warm-up that compiles) for:
exact int8 GEMM 1024^3 (intunlearn) vs torch.mm float32, torch._int_mm, quantized linear
(x86/fbgemm and qnnpack engines); packed-int4-weight GEMM; int8 conv2d on ResNet-18 CIFAR layer
shapes (batch 128) vs torch conv2d float32; STE backward time vs forward time. Also checks that
fbgemm's int8 linear is *not* exact on an input where vpmaddubsw saturates int16 pair sums, while
intunlearn is. Writes benchmarks/results/numba-cpu-<date>.json with the machine description.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from pathlib import Path

import numba
import numpy as np
import torch

from intunlearn import ops
from intunlearn import reference as spec
from intunlearn.backends import numba_cpu


def best_time(fn, repeats):
    fn()  # warm-up (compiles / loads caches)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


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
    entries = {
        "intunlearn int8 (exact)": lambda: ops.qlinear(x, w8, None, **params, backend="numba"),
        "intunlearn int4 packed (exact)": lambda: ops.qlinear(x, w4, None, **params, weight_bits=4,
                                                              backend="numba"),
        "torch.mm float32": lambda: torch.mm(a_f, b_f),
        "torch._int_mm (exact)": lambda: torch._int_mm(x, w8.t()),
    }
    for engine in ("x86", "fbgemm", "qnnpack"):
        run, _ = torch_quantized_linear(engine, a_f + 128 - 128, w8.float())
        if run is not None:
            entries[f"torch quantized linear ({engine})"] = run
    timings = {}
    for name, fn in entries.items():
        try:
            seconds = best_time(fn, repeats if "_int_mm" not in name else 1)
        except Exception as error:  # an engine missing on this build
            timings[name] = {"error": repr(error)}
            continue
        timings[name] = {"seconds": seconds, "gops": ops_count / seconds / 1e9}
    base = timings["torch.mm float32"]["seconds"]
    for entry in timings.values():
        if "seconds" in entry:
            entry["speedup_vs_torch_mm_f32"] = base / entry["seconds"]
    results["gemm"] = {"shape": [m, n, k], "timings": timings}


def exactness_check(results):
    """An input where vpmaddubsw-based int8 GEMMs (fbgemm / oneDNN on AVX2) saturate."""
    k = 64
    x_float = torch.full((1, k), 127.0)  # quint8 255 with zero point 128: u8 operand 255
    w_float = torch.full((1, k), 127.0)
    x = torch.full((1, k), 127, dtype=torch.int8)
    w = torch.full((1, k), 127, dtype=torch.int8)
    exact = int((x.long() + 0) @ w.long().t())  # sum (x - z_x) w with z_x = 0: 64 * 127 * 127
    mine = ops.qlinear(x, w, None, input_zero_point=0, output_zero_point=0,
                       multiplier=torch.tensor([1 << 30], dtype=torch.int32),
                       shift=torch.tensor([-20], dtype=torch.int32), backend="numba")
    oracle = spec.qlinear(x.numpy(), w.numpy(), None, input_zero_point=0, output_zero_point=0,
                          multiplier=np.array([1 << 30]), shift=np.array([-20]))
    record = {"input": "x = 127 (quint8 255, zero point 128), w = 127, K = 64",
              "exact_accumulator": exact,
              "intunlearn_matches_oracle": bool(np.array_equal(mine.numpy(), oracle))}
    for engine in ("x86", "fbgemm", "qnnpack", "onednn"):
        run, layer = torch_quantized_linear(engine, x_float, w_float)
        if run is None:
            continue
        layer.scale = 1.0
        try:
            value = float(run().dequantize()[0, 0])
        except Exception as error:
            record[engine] = {"error": repr(error)}
            continue
        # With output scale 1.0 the int8 output saturates; compare the real accumulator instead.
        torch.backends.quantized.engine = engine
        qx = torch.quantize_per_tensor(x_float, 1.0, 128, torch.quint8)
        y = torch.ops.quantized.linear(qx, layer._packed_params._packed_params, 2.0**14, 0)
        acc = float(y.dequantize()[0, 0])
        record[engine] = {"accumulator_via_output_scale_2^14": acc, "exact": acc == round(exact / 2**14) * 2**14}
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
        mine = best_time(lambda: ops.qconv2d(x, w, None, **params, backend="numba"), repeats)
        peer = best_time(lambda: torch.nn.functional.conv2d(x_f, w_f, stride=stride, padding=1), repeats)
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
    fwd = best_time(lambda: ops.qlinear(x, w, None, **params, backend="numba"), repeats)
    bwd = best_time(lambda: numba_cpu.qlinear_backward(
        g, y, x, w, in_features=size, input_zero_point=-3, input_scale=0.05,
        weight_scales=torch.full((size,), 0.01), act_min=-128, act_max=127, sample_weights=alpha),
        repeats)
    out["linear"] = {"shape": [size, size, size], "forward_seconds": fwd, "backward_seconds": bwd,
                     "backward_over_forward": bwd / fwd}
    name, cin, cout, hw, stride = conv_layer
    x = torch.from_numpy(rng.integers(-128, 128, (batch, cin, hw, hw)).astype(np.int8))
    w = torch.from_numpy(rng.integers(-127, 128, (cout, cin, 3, 3)).astype(np.int8))
    params = dict(stride=stride, padding=1, input_zero_point=-5, output_zero_point=3, **requant(cout))
    y = ops.qconv2d(x, w, None, **params, backend="numba")
    g = torch.randn(y.shape)
    alpha = torch.rand(batch)
    fwd = best_time(lambda: ops.qconv2d(x, w, None, **params, backend="numba"), repeats)
    bwd = best_time(lambda: numba_cpu.qconv2d_backward(
        g, y, x, w, weight_shape=tuple(w.shape), stride=(stride, stride), padding=(1, 1, 1, 1),
        dilation=(1, 1), groups=1, input_zero_point=-5, input_scale=0.05,
        weight_scales=torch.full((cout,), 0.01), act_min=-128, act_max=127, sample_weights=alpha),
        repeats)
    out["conv2d"] = {"layer": name, "batch": batch, "forward_seconds": fwd, "backward_seconds": bwd,
                     "backward_over_forward": bwd / fwd}
    results["backward"] = out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller shapes, fewer repeats")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    if args.threads:
        numba.set_num_threads(args.threads)
        torch.set_num_threads(args.threads)
    size, batch, repeats = (512, 32, 2) if args.quick else (1024, 128, 3)
    results = {
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "numba_threads": numba.get_num_threads(),
                    "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "numba": numba.__version__, "numpy": np.__version__,
                    "python": platform.python_version(), "host_cpu_llvm": _host_cpu(),
                    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    "env": {k: os.environ[k] for k in os.environ if k.startswith(("OPENBLAS", "OMP", "MKL", "NUMBA"))}},
        "args": {"quick": args.quick, "size": size, "batch": batch, "repeats": repeats},
    }
    exactness_check(results)
    gemm_benchmarks(size, repeats, results)
    conv_benchmarks(batch, repeats, results, RESNET18_CIFAR)
    backward_benchmarks(repeats, results, size, RESNET18_CIFAR[2], batch)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"numba-cpu-{datetime.date.today().isoformat()}.json"
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
    print("| GEMM %s | seconds | GOPS | x torch.mm f32 |" % "x".join(map(str, results["gemm"]["shape"])))
    print("| --- | --- | --- | --- |")
    for name, entry in results["gemm"]["timings"].items():
        if "seconds" in entry:
            print(f"| {name} | {entry['seconds']:.4f} | {entry['gops']:.1f} | {entry['speedup_vs_torch_mm_f32']:.2f} |")
        else:
            print(f"| {name} | error | | |")
    print()
    print("| conv2d 3x3 pad 1, batch %d | intunlearn GOPS | torch f32 GOPS | speedup |" % results["args"]["batch"])
    print("| --- | --- | --- | --- |")
    for row in results["conv2d"]:
        print(f"| {row['layer']} | {row['intunlearn_gops']:.1f} | {row['torch_gops']:.1f} | {row['speedup_vs_torch_f32']:.2f} |")
    print()
    for kind, entry in results["backward"].items():
        print(f"backward {kind}: forward {entry['forward_seconds']*1e3:.1f} ms, backward "
              f"{entry['backward_seconds']*1e3:.1f} ms, ratio {entry['backward_over_forward']:.2f}")
    print("exactness:", json.dumps(results["exactness"]))


if __name__ == "__main__":
    main()
