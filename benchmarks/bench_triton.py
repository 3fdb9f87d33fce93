"""GPU benchmark of the Triton kernels (backend="triton"). Needs a CUDA GPU; one command:

    python benchmarks/bench_triton.py            # writes benchmarks/results/triton-<device>-<date>.json

  * int8 GEMM (qlinear, fused requantization) at 4096^3 and 8192^3 vs torch._int_mm (cuBLASLt,
    int32 output, no epilogue), in TOPS and % of the H100/H200 SXM dense int8 peak (1979 TOPS);
  * packed-int4-weight GEMM at M <= 16 vs the int8 kernel at the same shape (weight-bandwidth bound);
  * int8 implicit-GEMM conv on ResNet-18 CIFAR layer shapes (batch 256, channels_last) vs cuDNN
    fp16 conv (torch.nn.functional.conv2d, channels_last).
Times are medians of triton.testing.do_bench (warm-up and autotuning excluded).
"""

from __future__ import annotations

import argparse
import datetime
import pathlib
import platform
import sys

import torch

from intunlearn.io import write_json_atomic

PEAK_INT8_TOPS = 1979.0  # H100/H200 SXM dense int8 tensor-core peak


def _require_cuda():
    if not torch.cuda.is_available():
        sys.exit("bench_triton.py needs a CUDA GPU (torch.cuda.is_available() is False); "
                 "the Triton kernels are only tested on CPU, through the interpreter.")


def _requant(out_channels, device):
    multiplier = torch.full((out_channels,), 1 << 30, dtype=torch.int32, device=device)
    shift = torch.full((out_channels,), -12, dtype=torch.int32, device=device)
    return multiplier, shift


def bench_gemm(do_bench, ops, sizes):
    rows = []
    for size in sizes:
        m = n = k = size
        x = torch.randint(-128, 128, (m, k), dtype=torch.int8, device="cuda")
        w = torch.randint(-127, 128, (n, k), dtype=torch.int8, device="cuda")
        bias = torch.randint(-1000, 1000, (n,), dtype=torch.int32, device="cuda")
        multiplier, shift = _requant(n, "cuda")
        run = lambda: ops.qlinear(x, w, bias, input_zero_point=-3, output_zero_point=5,  # noqa: E731
                                  multiplier=multiplier, shift=shift, backend="triton")
        ms = do_bench(run)
        ms_cublas = do_bench(lambda: torch._int_mm(x, w.t()))
        tops = 2 * m * n * k / ms / 1e9
        tops_cublas = 2 * m * n * k / ms_cublas / 1e9
        rows.append({"shape": [m, n, k], "triton_ms": ms, "triton_tops": tops,
                     "triton_pct_peak": 100 * tops / PEAK_INT8_TOPS, "cublaslt_int_mm_ms": ms_cublas,
                     "cublaslt_tops": tops_cublas, "cublaslt_pct_peak": 100 * tops_cublas / PEAK_INT8_TOPS,
                     "speedup_vs_cublaslt": ms_cublas / ms})
        print(f"int8 GEMM {m}x{n}x{k}: triton {tops:.0f} TOPS ({100 * tops / PEAK_INT8_TOPS:.1f}% peak), "
              f"torch._int_mm {tops_cublas:.0f} TOPS")
    return rows


def bench_int4(do_bench, ops, ms_list=(1, 4, 16), n=8192, k=8192):
    rows = []
    w8 = torch.randint(-8, 8, (n, k), dtype=torch.int8, device="cuda")
    w4 = ops.pack_int4(w8)
    multiplier, shift = _requant(n, "cuda")
    for m in ms_list:
        x = torch.randint(-128, 128, (m, k), dtype=torch.int8, device="cuda")
        common = dict(input_zero_point=0, output_zero_point=0, multiplier=multiplier, shift=shift,
                      backend="triton")
        ms8 = do_bench(lambda: ops.qlinear(x, w8, None, **common))
        ms4 = do_bench(lambda: ops.qlinear(x, w4, None, weight_bits=4, **common))
        rows.append({"shape": [m, n, k], "int8_weight_ms": ms8, "int4_packed_weight_ms": ms4,
                     "int4_speedup": ms8 / ms4,
                     "int4_weight_gbps": n * k / 2 / ms4 / 1e6})
        print(f"M={m:2d} {n}x{k}: int8 weights {ms8 * 1e3:.1f} us, packed int4 {ms4 * 1e3:.1f} us "
              f"({ms8 / ms4:.2f}x)")
    return rows


# ResNet-18 for CIFAR (32x32 input, 3x3 stem): (C, OC, H, stride) of its distinct conv layers.
RESNET18_CIFAR = [
    ("conv1", 3, 64, 32, 1), ("layer1", 64, 64, 32, 1), ("layer2.0", 64, 128, 32, 2),
    ("layer2", 128, 128, 16, 1), ("layer3.0", 128, 256, 16, 2), ("layer3", 256, 256, 8, 1),
    ("layer4.0", 256, 512, 8, 2), ("layer4", 512, 512, 4, 1),
]


def bench_conv(do_bench, ops, batch=256):
    rows = []
    for name, c, oc, h, stride in RESNET18_CIFAR:
        x = torch.randint(-128, 128, (batch, c, h, h), dtype=torch.int8, device="cuda")
        x = x.contiguous(memory_format=torch.channels_last)
        w = torch.randint(-127, 128, (oc, c, 3, 3), dtype=torch.int8, device="cuda")
        multiplier, shift = _requant(oc, "cuda")
        run = lambda: ops.qconv2d(x, w, None, stride=stride, padding=1, input_zero_point=-2,  # noqa: E731
                                  output_zero_point=0, multiplier=multiplier, shift=shift,
                                  backend="triton")
        ms = do_bench(run)
        xh = x.half().contiguous(memory_format=torch.channels_last)
        wh = w.half().contiguous(memory_format=torch.channels_last)
        ms_cudnn = do_bench(lambda: torch.nn.functional.conv2d(xh, wh, stride=stride, padding=1))
        out = (h + 2 - 3) // stride + 1
        ops_count = 2 * batch * out * out * oc * c * 9
        rows.append({"layer": name, "shape": {"batch": batch, "C": c, "OC": oc, "H": h, "stride": stride},
                     "triton_int8_ms": ms, "triton_tops": ops_count / ms / 1e9,
                     "cudnn_fp16_ms": ms_cudnn, "cudnn_tflops": ops_count / ms_cudnn / 1e9,
                     "speedup_vs_cudnn_fp16": ms_cudnn / ms})
        print(f"{name:9s} C={c:3d} OC={oc:3d} {h}x{h} s{stride}: triton int8 {ms:.3f} ms, "
              f"cuDNN fp16 {ms_cudnn:.3f} ms ({ms_cudnn / ms:.2f}x)")
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4096^3 GEMM only, fewer conv layers")
    parser.add_argument("--out", type=pathlib.Path, default=None, help="JSON path")
    args = parser.parse_args(argv)
    _require_cuda()
    import triton
    from triton.testing import do_bench

    from intunlearn import ops

    device_name = torch.cuda.get_device_name()
    results = {
        "device": device_name,
        "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
        "python": platform.python_version(), "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "peak_int8_tops": PEAK_INT8_TOPS,
        "int8_gemm": bench_gemm(do_bench, ops, [4096] if args.quick else [4096, 8192]),
        "int4_weight_gemm_small_m": bench_int4(do_bench, ops),
        "conv_resnet18_cifar": bench_conv(do_bench, ops),
    }
    slug = "".join(ch if ch.isalnum() else "-" for ch in device_name.lower()).strip("-")
    out = args.out or (pathlib.Path(__file__).parent / "results"
                       / f"triton-{slug}-{datetime.date.today().isoformat()}.json")
    write_json_atomic(out, results)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
