"""The "intunlearn" torch.compile backend: a float model's Linear and Conv2d run in true integer
arithmetic.

    compiled = torch.compile(model, backend="intunlearn", fullgraph=True)

The backend is registered through the `torch_dynamo_backends` entry point, so no import is
needed. In the captured graph every linear and conv2d call becomes an int8 layer with dynamic
quantization: input parameters from the batch's range, symmetric per-channel weights (8-bit by
default; `make_backend(weight_bits=4)` for int4), output parameters from the range of the float
result, then the integer kernel (`intunlearn::quant_linear` / `quant_conv2d`) and its STE
backward, so `loss.backward()` works through the compiled model. Everything else in the graph
(activations, normalisation, pooling, losses, ...) runs unchanged in float. Convolutions with
string padding other than "valid"/"same" or non-zero padding modes keep running in float.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx

from intunlearn import library  # noqa: F401  (registers the ops)
from intunlearn import qparams as qp
from intunlearn.layer_params import ConvGeometry, LayerQuant

LINEAR_TARGETS = {F.linear, torch._C._nn.linear}
CONV2D_TARGETS = {F.conv2d, torch.conv2d}


def _dynamic_qparams(tensor: torch.Tensor) -> qp.ActivationQParams:
    """Parameters covering the batch's range widened by a step on each side, so that the batch's
    extremes land inside (-128, 127) and keep their straight-through gradient."""
    low, high = float(tensor.detach().min()), float(tensor.detach().max())
    margin = (max(high, 0.0) - min(low, 0.0)) / 253
    return qp.choose_activation_qparams(low - margin, high + margin)


def _layer_quant(x, y_estimate, weight_bits, backend) -> LayerQuant:
    q_in, q_out = _dynamic_qparams(x), _dynamic_qparams(y_estimate)
    return LayerQuant(input_scale=q_in.scale, input_zero_point=q_in.zero_point, output_scale=q_out.scale,
                      output_zero_point=q_out.zero_point, act_min=-128, act_max=127,
                      weight_bits=weight_bits, rounding="double", backend=backend)


def integer_linear(x, weight, bias=None, *, weight_bits=8, backend="auto"):
    """F.linear computed as a dynamically quantized int8 layer (any leading batch dims)."""
    flat = x.reshape(-1, x.shape[-1])
    with torch.no_grad():
        estimate = F.linear(flat, weight, bias)
    scales = qp.choose_weight_scales(weight, weight_bits).float()
    y = torch.ops.intunlearn.quant_linear(flat, weight, bias, scales, None,
                                          *_layer_quant(flat, estimate, weight_bits, backend))
    return y.reshape(*x.shape[:-1], weight.shape[0]).to(x.dtype)


def _conv_padding(padding, weight, dilation):
    if padding == "valid":
        return (0, 0, 0, 0)
    if padding == "same":
        pads = []
        for kernel, dil in zip(weight.shape[2:], dilation):
            total = dil * (kernel - 1)
            pads += [total // 2, total - total // 2]
        return tuple(pads)
    ph, pw = (padding, padding) if isinstance(padding, int) else tuple(padding)
    return (ph, ph, pw, pw)


def integer_conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, weight_bits=8,
                   backend="auto"):
    """F.conv2d computed as a dynamically quantized int8 layer."""
    pair = lambda v: [v, v] if isinstance(v, int) else list(v)  # noqa: E731
    stride, dilation = pair(stride), pair(dilation)
    pads = _conv_padding(padding, weight, dilation)
    with torch.no_grad():
        estimate = F.conv2d(F.pad(x, (pads[2], pads[3], pads[0], pads[1])), weight, bias, stride, 0, dilation, groups)
    scales = qp.choose_weight_scales(weight, weight_bits).float()
    geometry = ConvGeometry.of(stride, pads, dilation, groups)
    return torch.ops.intunlearn.quant_conv2d(x, weight, bias, scales, None,
                                             *_layer_quant(x, estimate, weight_bits, backend),
                                             *geometry.op_args()).to(x.dtype)


def make_backend(weight_bits: int = 8, backend: str = "auto"):
    """A torch.compile backend with the given weight width and kernel backend."""
    qp.weight_max(weight_bits)

    def compile_graph(gm: fx.GraphModule, example_inputs):
        for node in gm.graph.nodes:
            if node.op != "call_function":
                continue
            if node.target in LINEAR_TARGETS:
                node.target = integer_linear
            elif node.target in CONV2D_TARGETS:
                node.target = integer_conv2d
            else:
                continue
            node.kwargs = {**node.kwargs, "weight_bits": weight_bits, "backend": backend}
        gm.recompile()
        return gm.forward

    return compile_graph


intunlearn_backend = make_backend()
