"""GPU benchmark of the Triton kernels (backend="triton"). One command on a CUDA machine:

    python benchmarks/bench_triton.py            # writes benchmarks/results/triton-<device>-<date>.json

  * int8 GEMM (qlinear, fused requantization) at 4096^3 and 8192^3 vs torch._int_mm (cuBLASLt,
    int32 output, no epilogue), in TOPS and % of the device's dense int8 peak (1979 TOPS on
    H100/H200 SXM);
  * packed-int4-weight GEMM at M <= 16 vs the int8 kernel at the same shape (weight-bandwidth bound);
  * int8 implicit-GEMM conv on ResNet-18 CIFAR layer shapes (batch 256, channels_last) vs cuDNN
    fp16 conv (torch.nn.functional.conv2d, channels_last).

Before timing anything it checks, through the validated public ops, that the Triton kernels are
bit-exact with the reference oracle on moderate shapes (int8 and int4, linear with M above and
below the smallest tile, conv), and after timing each problem it checks sampled rows of the
timed output against the oracle; it stops at the first difference: a fast wrong kernel is not a
result. The timed calls are the kernel launchers (intunlearn.kernels.gpu), not intunlearn.ops,
whose argument checks read value ranges back to the host, as cuBLAS and cuDNN do not. GPU times
are medians of triton.testing.do_bench (warm-up and autotuning excluded).

`--smoke` runs the same code on tiny shapes, on the CPU through Triton's interpreter when there
is no GPU (TRITON_INTERPRET=1 must be set before Python starts), with wall-clock medians: it
proves the script works end to end, its times mean nothing. CI runs it (tests/test_benchmarks.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import pathlib
import platform
import statistics
import sys
import time

import torch

from intunlearn.io import write_json_atomic

# Dense int8 tensor-core peaks (TOPS, without sparsity) from NVIDIA's data sheets; the first
# name that occurs in torch.cuda.get_device_name() wins.
PEAK_INT8_TOPS = (("H100 PCIe", 1513.0), ("H100 NVL", 1671.0), ("H100", 1979.0), ("H200", 1979.0))

# ResNet-18 for CIFAR (32x32 input, 3x3 stem): (name, C, OC, H, stride) of its distinct convs.
RESNET18_CIFAR = (
    ("conv1", 3, 64, 32, 1), ("layer1", 64, 64, 32, 1), ("layer2.0", 64, 128, 32, 2),
    ("layer2", 128, 128, 16, 1), ("layer3.0", 128, 256, 16, 2), ("layer3", 256, 256, 8, 1),
    ("layer4.0", 256, 512, 8, 2), ("layer4", 512, 512, 4, 1),
)


@dataclasses.dataclass(frozen=True)
class Plan:
    """The problem sizes of one run."""
    gemm_sizes: tuple[int, ...]
    int4_rows: tuple[int, ...]
    int4_features: int             # N = K of the small-M int4-vs-int8 comparison
    conv_batch: int
    conv_layers: tuple[tuple, ...]
    check_linear: tuple[tuple[int, int, int], ...]  # (M, N, K) of the exactness checks
    check_conv: tuple[int, int, int, int]            # (batch, C, OC, H) of the conv check


def _scaled_layers(divisor: int, spatial_divisor: int) -> tuple[tuple, ...]:
    return tuple((name, max(3, c // divisor), max(4, oc // divisor), h // spatial_divisor, stride)
                 for name, c, oc, h, stride in RESNET18_CIFAR)


# The linear checks take M above and below the smallest BLOCK_M (16 on a GPU, 32 interpreted),
# so both ways of summing the weights for the zero-point correction run; K is odd.
PLANS = {
    "full": Plan((4096, 8192), (1, 4, 16), 8192, 256, RESNET18_CIFAR,
                 ((192, 320, 521), (5, 320, 521)), (8, 40, 72, 12)),
    "quick": Plan((4096,), (1, 16), 8192, 256, RESNET18_CIFAR[1::2],
                  ((192, 320, 521), (5, 320, 521)), (8, 40, 72, 12)),
    "smoke": Plan((40,), (1, 4), 72, 2, _scaled_layers(16, 4),
                  ((40, 24, 37), (5, 24, 37)), (2, 5, 8, 6)),
}


def peak_int8_tops(device_name: str) -> float | None:
    for name, tops in PEAK_INT8_TOPS:
        if name in device_name:
            return tops
    return None


def cuda_timer(fn) -> float:
    """Median milliseconds of fn on the GPU (triton.testing.do_bench)."""
    from triton.testing import do_bench
    return do_bench(fn, return_mode="median")


def wall_timer(fn, repeats: int = 3) -> float:
    """Median wall-clock milliseconds of fn after one warm-up call (the interpreter smoke run)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _requant(out_channels, device):
    multiplier = torch.full((out_channels,), 1 << 30, dtype=torch.int32, device=device)
    shift = torch.full((out_channels,), -12, dtype=torch.int32, device=device)
    return multiplier, shift


def _int8(shape, device, low=-128, high=128, generator=None):
    return torch.randint(low, high, shape, dtype=torch.int8, generator=generator).to(device)


def _mismatch_exit(name, got, expected):
    mismatches = int((got != expected).sum())
    sys.exit(f"bench_triton.py: {name}: the Triton kernel differs from the reference in "
             f"{mismatches} of {expected.numel()} outputs; a wrong kernel's time is no result")


def check_exact(ops, plan: Plan, device) -> list[str]:
    """Triton vs the reference oracle through intunlearn.ops on the plan's check shapes (zero
    points, bias, int8 and int4 weights, a strided padded conv). Exits at the first mismatch."""
    generator = torch.Generator().manual_seed(0)
    batch, c, oc, h = plan.check_conv
    image = _int8((batch, c, h, h), "cpu", generator=generator)
    checked = []
    for bits in (8, 4):
        low, high = (-128, 128) if bits == 8 else (-8, 8)
        w_conv = _int8((oc, c, 3, 3), "cpu", low, high, generator)
        bias_conv = torch.randint(-5000, 5000, (oc,), dtype=torch.int32, generator=generator)
        if bits == 4:
            w_conv = ops.pack_int4(w_conv.reshape(oc, -1))
        cases = []
        for m, n, k in plan.check_linear:
            x = _int8((m, k), "cpu", generator=generator)
            w = _int8((n, k), "cpu", low, high, generator)
            w = ops.pack_int4(w) if bits == 4 else w
            bias = torch.randint(-5000, 5000, (n,), dtype=torch.int32, generator=generator)

            def linear(backend, dev, x=x, w=w, bias=bias, n=n):
                multiplier, shift = _requant(n, dev)
                return ops.qlinear(x.to(dev), w.to(dev), bias.to(dev), input_zero_point=-3,
                                   output_zero_point=5, multiplier=multiplier, shift=shift,
                                   weight_bits=bits, backend=backend)
            cases.append((f"qlinear int{bits} {m}x{n}x{k}", linear))

        def conv(backend, dev):
            multiplier, shift = _requant(oc, dev)
            return ops.qconv2d(image.to(dev).contiguous(memory_format=torch.channels_last),
                               w_conv.to(dev), bias_conv.to(dev), stride=2, padding=1,
                               input_zero_point=-2, output_zero_point=1, multiplier=multiplier,
                               shift=shift, weight_bits=bits, kernel_size=(3, 3), backend=backend)
        cases.append((f"qconv2d int{bits} {batch}x{c}x{h}x{h} -> {oc}, 3x3 stride 2 pad 1", conv))

        for name, run in cases:
            got, expected = run("triton", device).cpu(), run("reference", "cpu")
            if not torch.equal(got, expected):
                _mismatch_exit(name, got, expected)
            checked.append(name)
            print(f"exact: {name}")
    return checked


def _sampled(count: int) -> list[int]:
    return sorted({0, count // 2, count - 1})


def check_linear_rows(ops, name, y, x, w, bias, bits, **params):
    """Rows 0, M/2 and M-1 of a timed qlinear output against the reference oracle."""
    rows = _sampled(x.shape[0])
    cpu = {key: value.cpu() if isinstance(value, torch.Tensor) else value
           for key, value in params.items()}
    expected = ops.qlinear(x[rows].cpu(), w.cpu(), None if bias is None else bias.cpu(),
                           weight_bits=bits, backend="reference", **cpu)
    if not torch.equal(y[rows].cpu(), expected):
        _mismatch_exit(name, y[rows].cpu(), expected)


def check_conv_images(ops, name, y, x, w, stride, **params):
    """The first image of a timed qconv2d output against the reference oracle."""
    cpu = {key: value.cpu() if isinstance(value, torch.Tensor) else value
           for key, value in params.items()}
    expected = ops.qconv2d(x[:1].cpu(), w.cpu(), None, stride=stride, padding=1,
                           backend="reference", **cpu)
    if not torch.equal(y[:1].cpu(), expected):
        _mismatch_exit(name, y[:1].cpu(), expected)


def bench_gemm(ops, launch, plan: Plan, device, timer, peak):
    rows = []
    for size in plan.gemm_sizes:
        m = n = k = size
        x, w = _int8((m, k), device), _int8((n, k), device, -127)
        bias = torch.randint(-1000, 1000, (n,), dtype=torch.int32, device=device)
        multiplier, shift = _requant(n, device)
        params = dict(input_zero_point=-3, output_zero_point=5, multiplier=multiplier,
                      shift=shift, act_min=-128, act_max=127)
        run = lambda: launch.qlinear(x, w, bias, in_features=k, **params)  # noqa: E731
        ms = timer(run)
        check_linear_rows(ops, f"int8 GEMM {m}x{n}x{k}", run(), x, w, bias, 8, **params)
        ms_cublas = timer(lambda: torch._int_mm(x, w.t()))
        tops, tops_cublas = 2 * m * n * k / ms / 1e9, 2 * m * n * k / ms_cublas / 1e9
        row = {"shape": [m, n, k], "triton_ms": ms, "triton_tops": tops,
               "int_mm_ms": ms_cublas, "int_mm_tops": tops_cublas,
               "speedup_vs_int_mm": ms_cublas / ms}
        if peak:
            row["triton_pct_peak"] = 100 * tops / peak
            row["int_mm_pct_peak"] = 100 * tops_cublas / peak
        rows.append(row)
        print(f"int8 GEMM {m}x{n}x{k}: triton {ms:.3f} ms {tops:.1f} TOPS"
              + (f" ({100 * tops / peak:.1f}% of peak)" if peak else "")
              + f", torch._int_mm {ms_cublas:.3f} ms ({ms_cublas / ms:.2f}x)")
    return rows


def bench_int4(ops, launch, plan: Plan, device, timer):
    """Packed int4 vs int8 weights at small M, with z_x = 0 and with z_x = -128 (activations
    after a ReLU), where the weight sums of the zero-point correction are needed too."""
    rows = []
    n = k = plan.int4_features
    w8 = _int8((n, k), device, -8, 8)
    w4 = ops.pack_int4(w8)
    multiplier, shift = _requant(n, device)
    for input_zero_point in (0, -128):
        params = dict(input_zero_point=input_zero_point, output_zero_point=0,
                      multiplier=multiplier, shift=shift, act_min=-128, act_max=127)
        for m in plan.int4_rows:
            x = _int8((m, k), device)
            run8 = lambda: launch.qlinear(x, w8, None, in_features=k, **params)  # noqa: E731
            run4 = lambda: launch.qlinear(x, w4, None, in_features=k, **params)  # noqa: E731
            ms8, ms4 = timer(run8), timer(run4)
            name = f"M={m} {n}x{k} z_x={input_zero_point}"
            check_linear_rows(ops, f"{name} int8 weights", run8(), x, w8, None, 8, **params)
            check_linear_rows(ops, f"{name} int4 weights", run4(), x, w4, None, 4, **params)
            rows.append({"shape": [m, n, k], "input_zero_point": input_zero_point,
                         "int8_weight_ms": ms8, "int4_packed_weight_ms": ms4,
                         "int4_speedup": ms8 / ms4, "int4_weight_gbps": n * k / 2 / ms4 / 1e6})
            print(f"{name}: int8 weights {ms8 * 1e3:.1f} us, packed int4 {ms4 * 1e3:.1f} us "
                  f"({ms8 / ms4:.2f}x)")
    return rows


def bench_conv(ops, launch, plan: Plan, device, timer):
    rows = []
    batch = plan.conv_batch
    for name, c, oc, h, stride in plan.conv_layers:
        x = _int8((batch, c, h, h), device).contiguous(memory_format=torch.channels_last)
        # channels_last weights, as model.to(memory_format=torch.channels_last) leaves them:
        # the kernel reads them in place (OHWI); OIHW weights are reordered on every call.
        w = _int8((oc, c, 3, 3), device, -127).contiguous(memory_format=torch.channels_last)
        multiplier, shift = _requant(oc, device)
        params = dict(input_zero_point=-2, output_zero_point=0, multiplier=multiplier,
                      shift=shift, act_min=-128, act_max=127)
        run = lambda: launch.qconv2d(x, w, None, weight_shape=(oc, c, 3, 3),  # noqa: E731
                                     stride=(stride, stride), padding=(1, 1, 1, 1),
                                     dilation=(1, 1), groups=1, **params)
        ms = timer(run)
        check_conv_images(ops, f"conv {name}", run(), x, w, stride, **params)
        x_half = x.half().contiguous(memory_format=torch.channels_last)
        w_half = w.half().contiguous(memory_format=torch.channels_last)
        ms_fp16 = timer(lambda: torch.nn.functional.conv2d(x_half, w_half, stride=stride, padding=1))
        out = (h + 2 - 3) // stride + 1
        ops_count = 2 * batch * out * out * oc * c * 9
        rows.append({"layer": name, "shape": {"batch": batch, "C": c, "OC": oc, "H": h, "stride": stride},
                     "triton_int8_ms": ms, "triton_tops": ops_count / ms / 1e9,
                     "fp16_conv_ms": ms_fp16, "fp16_conv_tflops": ops_count / ms_fp16 / 1e9,
                     "speedup_vs_fp16_conv": ms_fp16 / ms})
        print(f"{name:9s} C={c:3d} OC={oc:3d} {h}x{h} s{stride}: triton int8 {ms:.3f} ms, "
              f"fp16 conv {ms_fp16:.3f} ms ({ms_fp16 / ms:.2f}x)")
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="4096^3 GEMM only, half the conv layers")
    mode.add_argument("--smoke", action="store_true",
                      help="tiny shapes; on the CPU through the interpreter when there is no GPU")
    parser.add_argument("--out", type=pathlib.Path, default=None,
                        help="JSON path (default: results/triton-<device>-<date>.json; "
                             "a smoke run writes only where --out says)")
    args = parser.parse_args(argv)
    plan_name = "smoke" if args.smoke else "quick" if args.quick else "full"
    if torch.cuda.is_available():
        device, timer = "cuda", cuda_timer
        device_name = torch.cuda.get_device_name()
    elif args.smoke and os.environ.get("TRITON_INTERPRET") == "1":
        device, timer = "cpu", wall_timer
        device_name = f"cpu (Triton interpreter), {platform.processor() or platform.machine()}"
    else:
        sys.exit("bench_triton.py needs a CUDA GPU (torch.cuda.is_available() is False); without one "
                 "only `TRITON_INTERPRET=1 python benchmarks/bench_triton.py --smoke` runs, and its "
                 "times mean nothing")
    import triton

    from intunlearn import ops
    from intunlearn.kernels import gpu as launch

    plan = PLANS[plan_name]
    peak = peak_int8_tops(device_name) if device == "cuda" else None
    results = {
        "mode": plan_name, "device": device_name,
        "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
        "python": platform.python_version(), "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "peak_int8_tops": peak,
        "bit_exact_with_reference": check_exact(ops, plan, device),
        "int8_gemm": bench_gemm(ops, launch, plan, device, timer, peak),
        "int4_weight_gemm_small_m": bench_int4(ops, launch, plan, device, timer),
        "conv_resnet18_cifar": bench_conv(ops, launch, plan, device, timer),
    }
    out = args.out
    if out is None and plan_name != "smoke":
        slug = "".join(ch if ch.isalnum() else "-" for ch in device_name.lower()).strip("-")
        out = (pathlib.Path(__file__).parent / "results"
               / f"triton-{slug}-{plan_name}-{datetime.date.today().isoformat()}.json")
    if out is not None:
        write_json_atomic(out, results)
        print(f"wrote {out}")
    return results


if __name__ == "__main__":
    main()
