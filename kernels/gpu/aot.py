"""Compile the Triton kernels for an NVIDIA GPU on a machine that has none, and report what the
compiler made of them.

Triton's compiler and the ``ptxas`` assembler shipped in the triton wheel need no GPU: a kernel
can be lowered for sm_90 (H100/H200) anywhere. The interpreter tests check the arithmetic; this
module checks the other half, what only shows on the GPU:

    registers / spill bytes   from ``ptxas -v``: spills (local-memory traffic) ruin a GEMM;
    shared memory             must fit the SM (227 KiB usable on Hopper);
    pipelined                 whether the K loop loads through cp.async (software pipelining)
                              or stalls on every tile;
    mma                       the tensor-core instructions in the PTX: int8 GEMMs must use an
                              s8 x s8 -> s32 MMA, the fp32 backward no TF32 MMA.

A launch specialises its scalar arguments, and that decides vectorisation and pipelining, so a
report compiles from example argument values and specialises them as Triton's JIT does (a value
of 1 becomes a constant, a multiple of 16 gets a divisibility hint, tensors are 16-byte
aligned). ``benchmarks/triton_compile_report.py`` runs every kernel over its Hopper search space.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.jit import JITFunction

HOPPER = 90  # compute capability of H100 / H200
HOPPER_SHARED_MEMORY = 227 * 1024  # usable shared memory per block on sm_90


@dataclasses.dataclass(frozen=True)
class CompileReport:
    kernel: str
    meta: dict  # constexpr values (block sizes, flags)
    num_warps: int
    num_stages: int
    registers: int
    spill_bytes: int  # spill stores, from ptxas -v
    shared_bytes: int
    pipelined: bool  # the main loop loads through cp.async
    mma: tuple[str, ...]  # distinct MMA instructions in the PTX
    ptx: str = dataclasses.field(repr=False, compare=False)


def jit_function(kernel) -> JITFunction:
    """The JITFunction under any @triton.autotune / @triton.heuristics wrappers."""
    while not isinstance(kernel, JITFunction):
        kernel = kernel.fn
    return kernel


def specialize_like_jit(fn: JITFunction, args: dict, constexprs: dict):
    """(signature, constants, attributes) as a launch with these argument values would give.

    `args` names every non-constexpr argument: a tensor argument by its Triton pointer type
    (e.g. "*i8"), a scalar by an example value (Python int or float)."""
    signature, constants, attributes = {}, dict(constexprs), {}
    for index, (name, param) in enumerate(zip(fn.arg_names, fn.params)):
        if param.is_constexpr:
            signature[name] = "constexpr"
            continue
        if name not in args:
            raise KeyError(f"{fn.__name__}: no example value for argument {name!r}")
        value = args[name]
        if isinstance(value, str):  # a tensor, 16-byte aligned like every torch allocation
            signature[name] = value
            attributes[(index,)] = [["tt.divisibility", 16]]
        elif isinstance(value, float):
            signature[name] = "fp32"
        elif value == 1 and not param.do_not_specialize:
            signature[name] = "constexpr"
            constants[name] = 1
        else:
            signature[name] = "i32" if -2**31 <= value < 2**31 else "i64"
            if value % 16 == 0 and not param.do_not_specialize_on_alignment:
                attributes[(index,)] = [["tt.divisibility", 16]]
    return signature, constants, attributes


def ptxas_usage(ptx: str, arch: int) -> tuple[int, int]:
    """(registers per thread, spill-store bytes) reported by ``ptxas -v`` for one kernel."""
    from triton.backends.nvidia.compiler import get_ptxas

    suffix = "a" if arch >= 90 else ""
    with tempfile.TemporaryDirectory() as scratch:
        source = os.path.join(scratch, "kernel.ptx")
        with open(source, "w") as handle:
            handle.write(ptx)
        result = subprocess.run(
            [get_ptxas(arch).path, "-v", "--regAllocOptLevel=2", f"--gpu-name=sm_{arch}{suffix}",
             source, "-o", os.path.join(scratch, "kernel.cubin")],
            capture_output=True, text=True, check=True)
    registers = re.search(r"Used (\d+) registers", result.stderr)
    spills = re.search(r"(\d+) bytes spill stores", result.stderr)
    if registers is None or spills is None:
        raise RuntimeError(f"unexpected ptxas -v output:\n{result.stderr}")
    return int(registers.group(1)), int(spills.group(1))


def compile_for_gpu(kernel, args: dict, constexprs: dict, *, num_warps: int, num_stages: int,
                    arch: int = HOPPER) -> CompileReport:
    """Compiles `kernel` for CUDA compute capability `arch` (no GPU needed) and reports on it."""
    fn = jit_function(kernel)
    signature, constants, attributes = specialize_like_jit(fn, args, constexprs)
    compiled = triton.compile(ASTSource(fn, signature, constants, attributes),
                              target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": num_warps, "num_stages": num_stages})
    ptx = compiled.asm["ptx"]
    registers, spill_bytes = ptxas_usage(ptx, arch)
    mma = tuple(sorted(set(re.findall(r"\b(wgmma\.mma_async\S*|mma\.sync\S*)", ptx))))
    return CompileReport(
        kernel=fn.__name__, meta=dict(constexprs), num_warps=num_warps, num_stages=num_stages,
        registers=registers, spill_bytes=spill_bytes, shared_bytes=compiled.metadata.shared,
        pipelined="async_copy_global_to_local" in compiled.asm["ttgir"], mma=mma, ptx=ptx)


# --------------------------------------------------------------------------------------------
# Example launches: each kernel on an H100-sized problem, its arguments as the launcher in
# gemm.py / conv.py / backward.py / elementwise.py would pass them.
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class KernelCase:
    name: str
    kernel: object  # the (autotuned) Triton kernel
    args: dict  # example values of its runtime arguments, see specialize_like_jit
    flags: dict  # its constexpr flags (everything but the tuned block sizes)
    configs: list  # triton.Config search space to compile

    def compile(self, config, arch: int = HOPPER) -> CompileReport:
        return compile_for_gpu(self.kernel, self.args, {**self.flags, **config.kwargs},
                               num_warps=config.num_warps, num_stages=config.num_stages, arch=arch)


def channels_last_strides(channels, height, width):
    """(n, c, h, w) element strides of a channels_last NCHW tensor."""
    return height * width * channels, 1, width * channels, channels


def qlinear_case(M, N, K, *, int4: bool) -> KernelCase:
    from .configs import gemm_configs, smallest_gemm_block_m
    from .gemm import qlinear_kernel

    row_bytes = (K + 1) // 2 if int4 else K
    args = dict(x_ptr="*i8", w_ptr="*i8", column_term_ptr="*i32", multiplier_ptr="*i32",
                shift_ptr="*i32", x_sum_ptr="*i32", y_ptr="*i8", M=M, N=N, K=K,
                n_bytes=row_bytes,
                stride_xm=K, stride_xk=1, stride_wn=row_bytes, stride_wk=1, stride_ym=N,
                stride_yn=1, stride_requant=1, input_zero_point=-3, weight_zero_point=0,
                zero_point_product=0, output_zero_point=5, act_min=-128, act_max=127)
    flags = dict(HAS_COLUMN_TERM=True, ONES_ROW=M < smallest_gemm_block_m(interpret=False),
                 PACKED=int4, HAS_WZP=False, SINGLE_ROUNDING=False, LONG_K=False)
    return KernelCase(f"qlinear {'int4' if int4 else 'int8'} M={M} N={N} K={K}", qlinear_kernel,
                      args, flags, gemm_configs(interpret=False))


def qconv2d_case(batch, channels, size, out_channels, *, int4: bool,
                 zero_point_outside_int8: bool = False) -> KernelCase:
    """A 3x3, stride-1, pad-1 convolution on channels_last activations (ResNet-18 CIFAR); with
    zero_point_outside_int8, the per-tap epilogue path (TAP_CORRECTION) and its search space."""
    from .configs import conv_config_fits, conv_configs
    from .conv import qconv2d_kernel

    tap_stride = channels + channels % 2 if int4 else channels  # see conv.taps_major_weight
    row_bytes = 9 * tap_stride // 2 if int4 else 9 * tap_stride
    x_strides = channels_last_strides(channels, size, size)
    y_strides = channels_last_strides(out_channels, size, size)
    args = dict(x_ptr="*i8", w_ptr="*i8", column_term_ptr="*i32", multiplier_ptr="*i32",
                shift_ptr="*i32", tap_sum_ptr="*i32", y_ptr="*i8", M=batch * size * size, H=size,
                W=size, OH=size,
                OW=size, GROUP_C=channels, GROUP_OC=out_channels, tap_stride=tap_stride,
                n_bytes=row_bytes,
                **dict(zip(["stride_xn", "stride_xc", "stride_xh", "stride_xw"], x_strides)),
                stride_wo=row_bytes,
                **dict(zip(["stride_yn", "stride_yc", "stride_yh", "stride_yw"], y_strides)),
                stride_requant=1, conv_stride_h=1, conv_stride_w=1, pad_top=1, pad_left=1,
                dilation_h=1, dilation_w=1,
                input_zero_point=200 if zero_point_outside_int8 else -3,
                pad_value=0 if zero_point_outside_int8 else -3,
                output_zero_point=5, act_min=-128, act_max=127)
    flags = dict(KH=3, KW=3, HAS_COLUMN_TERM=True, TAP_CORRECTION=zero_point_outside_int8,
                 PACKED=int4, SINGLE_ROUNDING=False, LONG_K=False)
    configs = [config for config in conv_configs(interpret=False)
               if conv_config_fits(config, zero_point_outside_int8)]
    path = ", z_x outside int8" if zero_point_outside_int8 else ""
    return KernelCase(f"qconv2d {'int4' if int4 else 'int8'} {batch}x{channels}x{size}x{size}"
                      f" -> {out_channels} 3x3{path}", qconv2d_kernel, args, flags, configs)


def linear_backward_cases(N, OUT, IN) -> list[KernelCase]:
    from .backward import linear_input_grad_kernel, linear_weight_grad_kernel
    from .configs import backward_configs

    common = dict(grad_ptr="*fp32", out_ptr="*i8", N=N, OUT=OUT, IN=IN, act_min=-128,
                  act_max=127)
    weight_grad = dict(common, x_ptr="*i8", alpha_ptr="*fp32", grad_w_ptr="*fp32",
                       grad_b_ptr="*fp32", input_zero_point=-3, input_scale=0.02)
    input_grad = dict(common, w_ptr="*i8", w_scale_ptr="*fp32", grad_x_ptr="*fp32",
                      w_row_stride=IN, stride_scale=1)
    configs = backward_configs(interpret=False)
    return [
        KernelCase(f"linear weight grad N={N} {OUT}x{IN}", linear_weight_grad_kernel, weight_grad,
                   dict(HAS_ALPHA=True, WEIGHT_GRAD=True), configs),
        KernelCase(f"linear input grad N={N} {OUT}x{IN}", linear_input_grad_kernel, input_grad,
                   dict(PACKED=False), configs),
    ]


def conv_backward_cases(batch, channels, size, out_channels) -> list[KernelCase]:
    """Backward of a 3x3, stride-1, pad-1 channels_last convolution."""
    from .backward import conv_input_grad_kernel, conv_weight_grad_kernel
    from .configs import backward_configs

    K = channels * 9
    x_strides = channels_last_strides(channels, size, size)
    g_strides = channels_last_strides(out_channels, size, size)
    geometry = dict(H=size, W=size, OH=size, OW=size, GROUP_C=channels, GROUP_OC=out_channels,
                    K=K, conv_stride_h=1, conv_stride_w=1, pad_top=1, pad_left=1, dilation_h=1,
                    dilation_w=1, act_min=-128, act_max=127,
                    **dict(zip(["stride_gn", "stride_gc", "stride_gh", "stride_gw"], g_strides)))
    weight_grad = dict(geometry, grad_ptr="*fp32", out_ptr="*i8", x_ptr="*i8",
                       alpha_ptr="*fp32", grad_w_ptr="*fp32", grad_b_ptr="*fp32",
                       M=batch * size * size, input_zero_point=-3, input_scale=0.02,
                       **dict(zip(["stride_xn", "stride_xc", "stride_xh", "stride_xw"],
                                  x_strides)))
    input_grad = dict(geometry, grad_ptr="*fp32", out_ptr="*i8", w_ptr="*i8",
                      w_scale_ptr="*fp32", grad_x_ptr="*fp32", M=batch * size * size,
                      w_row_stride=K, stride_scale=1,
                      **dict(zip(["stride_dn", "stride_dc", "stride_dh", "stride_dw"],
                                 x_strides)))
    configs = backward_configs(interpret=False)
    shape = f"{batch}x{channels}x{size}x{size} -> {out_channels} 3x3"
    return [
        KernelCase(f"conv weight grad {shape}", conv_weight_grad_kernel, weight_grad,
                   dict(KH=3, KW=3, HAS_ALPHA=True, WEIGHT_GRAD=True), configs),
        KernelCase(f"conv input grad {shape}", conv_input_grad_kernel, input_grad,
                   dict(KH=3, KW=3, PACKED=False), configs),
    ]


def elementwise_cases(numel) -> list[KernelCase]:
    from .configs import elementwise_block
    from .elementwise import qadd_kernel, qavg_pool2d_kernel

    one_config = [triton.Config({"BLOCK": elementwise_block(interpret=False)}, num_warps=4,
                                num_stages=1)]
    add = dict(a_ptr="*i8", b_ptr="*i8", y_ptr="*i8", numel=numel, a_zero_point=-3,
               a_multiplier=1518500250, a_shift=-1, b_zero_point=7, b_multiplier=1288490189,
               b_shift=-2, left_shift=20, output_zero_point=-1, output_multiplier=1431655765,
               output_shift=-19, act_min=-128, act_max=127)
    batch, channels, size = 256, 512, 4  # the global average pool closing ResNet-18
    pool = dict(x_ptr="*i8", y_ptr="*i8", numel=batch * channels, C=channels, H=size, W=size,
                OH=1, OW=1, stride_xn=channels * size * size, stride_xc=size * size,
                stride_xh=size, stride_xw=1, stride_yn=channels, stride_yc=1, stride_yh=1,
                stride_yw=1, pool_stride_h=size, pool_stride_w=size, pad_top=0, pad_left=0,
                act_min=-128, act_max=127)
    return [KernelCase(f"qadd numel={numel}", qadd_kernel, add, dict(SINGLE_ROUNDING=False),
                       one_config),
            KernelCase(f"qavg_pool2d {batch}x{channels}x{size}x{size}", qavg_pool2d_kernel, pool,
                       dict(KH=size, KW=size), one_config)]


def hopper_cases() -> list[KernelCase]:
    """Every kernel on the problem sizes the H100 benchmarks use (benchmarks/bench_triton.py)."""
    return [
        qlinear_case(4096, 4096, 4096, int4=False),
        qlinear_case(4096, 4096, 4096, int4=True),
        qlinear_case(16, 4096, 4096, int4=False),
        qlinear_case(16, 4096, 4096, int4=True),
        qlinear_case(8, 4096, 4096, int4=False),  # weight sums in the MMA's spare row
        qlinear_case(8, 4096, 4096, int4=True),
        qconv2d_case(256, 128, 16, 128, int4=False),
        qconv2d_case(256, 128, 16, 128, int4=True),
        qconv2d_case(256, 128, 16, 128, int4=False, zero_point_outside_int8=True),
        qconv2d_case(256, 128, 16, 128, int4=True, zero_point_outside_int8=True),
        *linear_backward_cases(256, 4096, 4096),
        *conv_backward_cases(256, 128, 16, 128),
        *elementwise_cases(1 << 24),
    ]
