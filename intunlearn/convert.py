"""`quantize(model, ...)`: turn a float model into one whose Linear/Conv2d/residual add/average
pool run in true integer arithmetic, the way a model is prepared for TFLite Micro deployment.

The model is traced with torch.fx. Batch norms are folded into the preceding convolution,
ReLU/ReLU6 following a layer fold into its clamp, the input gets an InputQuantizer, and
activation ranges are calibrated on data in float. Shape-only ops (flatten, reshape, view,
dropout, identity) and ops that are exact on the int8 grid (max pooling, a standalone ReLU) pass
through unchanged. Anything else raises NotImplementedError naming the node.
"""

from __future__ import annotations

import copy
import operator
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import fx, nn

from intunlearn import _checks as check
from intunlearn import ops
from intunlearn import qparams as qp
from intunlearn.backends import BACKENDS
from intunlearn.modules import (InputQuantizer, QuantAdd, QuantAvgPool2d, QuantConv2d, QuantLinear,
                                QuantModule, _check_mode, _WeightedLayer, expected_input,
                                set_arithmetic)

PASS_THROUGH_MODULES = (nn.Flatten, nn.Dropout, nn.Identity, nn.MaxPool2d, nn.ReLU)
PASS_THROUGH_FUNCTIONS = {torch.flatten, torch.reshape, F.dropout, F.max_pool2d, F.relu, torch.relu}
PASS_THROUGH_METHODS = {"view", "reshape", "flatten", "contiguous", "relu"}
SHAPE_QUERIES = {getattr, operator.getitem}
RELU_MODULES = {nn.ReLU: "relu", nn.ReLU6: "relu6"}
RELU_FUNCTIONS = {F.relu: "relu", torch.relu: "relu", F.relu6: "relu6"}
ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}


def quantize(model: nn.Module, *, weight_bits: int = 8, act_bits: int = 8, calibration,
             keep_float: Iterable[str] = (), lsq: bool = False, mode: str = "integer",
             backend: str = "auto", rounding: str = "double", calibration_batch_size: int = 256) -> fx.GraphModule:
    """A quantized copy of `model` (the original is not modified).

    weight_bits: 4 or 8 (per-channel symmetric); act_bits: 8 (int8 activations, the only width
    TFLite Micro's int8 kernels use). calibration: a tensor of inputs, or an iterable of batches
    (tensors, or tuples whose first element is the input) on which activation ranges are
    observed. keep_float: names of Linear/Conv2d modules to keep in float arithmetic (as the
    Q-MUL paper keeps its stem and classifier). lsq: learn the per-channel weight step sizes
    (LSQ). mode: the initial arithmetic ("integer", "fake" or "float"; switch later with
    `set_arithmetic`). rounding: "double" (TFLite's default build) or "single"
    (TFLITE_SINGLE_ROUNDING), for every requantization, the layers' and the residual adds'.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if act_bits != 8:
        raise ValueError(f"act_bits must be 8 (int8 activations), got {act_bits!r}")
    qp.weight_max(weight_bits)  # validates weight_bits
    _check_mode(mode)
    check.choice("backend", backend, ("auto", *BACKENDS))
    check.choice("rounding", rounding, ops.ROUNDINGS)
    if isinstance(calibration, torch.Tensor) and (calibration.dim() == 0 or calibration.shape[0] == 0):
        raise ValueError(f"calibration must provide at least one input, got a tensor of shape "
                         f"{tuple(calibration.shape)}")
    _check_finite_state(model)
    keep_float = set(keep_float)
    graph_module = fx.symbolic_trace(copy.deepcopy(model).eval())
    unknown = keep_float - {name for name, _ in graph_module.named_modules()}
    if unknown:
        raise ValueError(f"keep_float names modules that do not exist: {sorted(unknown)}")
    layer_options = dict(weight_bits=weight_bits, lsq=lsq, backend=backend, rounding=rounding)
    _Converter(graph_module, layer_options, keep_float, backend).run()
    _calibrate(graph_module, calibration, calibration_batch_size)
    set_arithmetic(graph_module, mode)
    return graph_module.train(model.training)


class _Converter:
    def __init__(self, graph_module, layer_options, keep_float, backend):
        self.gm = graph_module
        self.modules = dict(graph_module.named_modules())
        self.layer_options = layer_options
        self.keep_float = keep_float
        self.backend = backend
        self.counter = 0
        self.absorbed = set()  # nodes folded into a quantized layer (batch norms, ReLUs)

    def run(self):
        graph = self.gm.graph
        for node in list(graph.nodes):
            if node in self.absorbed:
                continue
            if node.op == "placeholder":
                self._quantize_input(node)
            elif node.op == "call_module":
                self._convert_module(node, self.modules[node.target])
            elif node.op == "call_function":
                self._convert_function(node)
            elif node.op == "call_method":
                if node.target not in PASS_THROUGH_METHODS | {"size", "dim"}:
                    raise NotImplementedError(f"method .{node.target}() at node {node.name!r} is not supported")
            elif node.op == "get_attr":
                raise NotImplementedError(f"direct parameter use at node {node.name!r} is not supported")
        graph.lint()
        self.gm.delete_all_unused_submodules()
        self.gm.recompile()

    def _add_module(self, base: str, module: nn.Module) -> str:
        self.counter += 1
        name = f"{base.replace('.', '_')}_q{self.counter}"
        self.gm.add_submodule(name, module)
        return name

    def _quantize_input(self, node):
        name = self._add_module("input_quantizer", InputQuantizer(backend=self.backend))
        with self.gm.graph.inserting_after(node):
            quantized = self.gm.graph.call_module(name, (node,))
        node.replace_all_uses_with(quantized, delete_user_cb=lambda user: user is not quantized)

    def _sole_user(self, node):
        users = list(node.users)
        return users[0] if len(users) == 1 else None

    def _folded_activation(self, node):
        """(activation name, node to remove) when node's only user is a ReLU/ReLU6."""
        user = self._sole_user(node)
        if user is None:
            return None, None
        if user.op == "call_module" and type(self.modules[user.target]) in RELU_MODULES:
            return RELU_MODULES[type(self.modules[user.target])], user
        if user.op == "call_function" and user.target in RELU_FUNCTIONS and not user.kwargs.get("inplace"):
            return RELU_FUNCTIONS[user.target], user
        if user.op == "call_method" and user.target == "relu":
            return "relu", user
        return None, None

    def _replace(self, node, module, remove=()):
        """Swap node for a call of `module` on node's tensor inputs; absorb the nodes in remove."""
        name = self._add_module(str(node.target) if node.op == "call_module" else node.name, module)
        args = tuple(a for a in node.args if isinstance(a, fx.Node))
        with self.gm.graph.inserting_after(node):
            replacement = self.gm.graph.call_module(name, args)
        last = node
        for absorbed in remove:
            self.absorbed.add(absorbed)
            absorbed.replace_all_uses_with(last)
            self.gm.graph.erase_node(absorbed)
        node.replace_all_uses_with(replacement)
        self.gm.graph.erase_node(node)
        return replacement

    def _convert_module(self, node, module):
        if isinstance(module, nn.Conv2d):
            self._convert_conv(node, module)
        elif isinstance(module, nn.Linear):
            activation, relu = self._folded_activation(node)
            layer = QuantLinear.from_float(module, activation=activation, **self.layer_options)
            self._replace(node, self._pinned(layer, node.target), [relu] if relu else [])
        elif isinstance(module, nn.AvgPool2d):
            if module.ceil_mode or (module.count_include_pad and module.padding != 0) or module.divisor_override:
                raise NotImplementedError(f"AvgPool2d {node.target!r}: TFLite's average pool excludes padding "
                                          "and floors; use count_include_pad=False, ceil_mode=False")
            self._replace(node, QuantAvgPool2d(module.kernel_size, module.stride, module.padding, backend=self.backend))
        elif isinstance(module, nn.AdaptiveAvgPool2d):
            if module.output_size not in (1, (1, 1)):
                raise NotImplementedError(f"AdaptiveAvgPool2d {node.target!r}: only output_size 1 (global) is supported")
            self._replace(node, QuantAvgPool2d(None, backend=self.backend))
        elif isinstance(module, (nn.BatchNorm2d, nn.ReLU6)):
            raise NotImplementedError(f"{type(module).__name__} {node.target!r} must directly follow a Conv2d "
                                      "(batch norm) or a Conv2d/Linear (ReLU6) to be folded")
        elif not isinstance(module, PASS_THROUGH_MODULES):
            raise NotImplementedError(
                f"layer {node.target!r} ({type(module).__name__}) is not supported; supported: Linear, Conv2d "
                "(+BatchNorm2d, ReLU, ReLU6), residual add, AvgPool2d, AdaptiveAvgPool2d(1), and the "
                "pass-through Flatten, Dropout, Identity, MaxPool2d, ReLU")

    def _convert_conv(self, node, conv):
        remove, weight, bias = [], conv.weight, conv.bias
        user = self._sole_user(node)
        if user is not None and user.op == "call_module" and isinstance(self.modules[user.target], nn.BatchNorm2d):
            weight, bias = fold_batch_norm(conv, self.modules[user.target])
            remove.append(user)
            node_for_activation = user
        else:
            node_for_activation = node
        activation, relu = self._folded_activation(node_for_activation)
        if relu is not None:
            remove.append(relu)
        layer = QuantConv2d.from_float(conv, weight, bias, activation=activation, **self.layer_options)
        self._replace(node, self._pinned(layer, node.target), remove)

    def _pinned(self, layer, name):
        if name in self.keep_float:
            layer.mode, layer.pinned_float = "float", True
        return layer

    def _convert_function(self, node):
        target = node.target
        if target in ADD_FUNCTIONS and len(node.args) == 2 and all(isinstance(a, fx.Node) for a in node.args):
            if node.kwargs:
                raise NotImplementedError(f"add with {dict(node.kwargs)} at node {node.name!r} is not supported")
            activation, relu = self._folded_activation(node)
            if activation == "relu6":
                raise NotImplementedError(f"ReLU6 after the add at node {node.name!r} is not supported")
            self._replace(node, QuantAdd(activation, backend=self.backend,
                                         rounding=self.layer_options["rounding"]),
                          [relu] if relu else [])
        elif target is F.adaptive_avg_pool2d:
            if node.args[1] not in (1, (1, 1)):
                raise NotImplementedError(f"adaptive_avg_pool2d at node {node.name!r}: only output size 1")
            self._replace(node, QuantAvgPool2d(None, backend=self.backend))
        elif target in PASS_THROUGH_FUNCTIONS or target in SHAPE_QUERIES:
            return
        else:
            raise NotImplementedError(f"function {getattr(target, '__name__', target)} at node {node.name!r} "
                                      "is not supported in a quantized model")


def _check_finite_state(model: nn.Module) -> None:
    """Every floating parameter and buffer finite: a NaN would otherwise surface much later
    as a range that calibration cannot choose."""
    for kind, named in (("parameter", model.named_parameters()), ("buffer", model.named_buffers())):
        for name, value in named:
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise ValueError(f"model {kind} {name!r} contains NaN or inf")


def fold_batch_norm(conv: nn.Conv2d, bn: nn.BatchNorm2d):
    """Conv weight and bias with the (eval-mode) batch norm folded in, as for deployment."""
    if not bn.track_running_stats or bn.running_var is None:
        raise NotImplementedError("batch norm without running statistics cannot be folded")
    if bool((bn.running_var.double() + bn.eps <= 0).any()):
        raise ValueError(f"batch norm has running_var + eps <= 0 (eps={bn.eps}) in some channel: "
                         f"1/sqrt(var + eps) is not finite, so it cannot be folded")
    inv_std = torch.rsqrt(bn.running_var.double() + bn.eps)
    gamma = bn.weight.double() if bn.affine else torch.ones_like(inv_std)
    beta = bn.bias.double() if bn.affine else torch.zeros_like(inv_std)
    factor = gamma * inv_std
    weight = conv.weight.double() * factor.reshape(-1, 1, 1, 1)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(inv_std)
    bias = (bias - bn.running_mean.double()) * factor + beta
    return weight.float().detach(), bias.float().detach()


def _calibration_batches(calibration, batch_size):
    if isinstance(calibration, torch.Tensor):
        yield from calibration.split(batch_size)
        return
    for batch in calibration:
        yield batch[0] if isinstance(batch, (tuple, list)) else batch


def _calibrate(gm: fx.GraphModule, calibration, batch_size):
    quant_modules = [m for m in gm.modules() if isinstance(m, QuantModule)]
    for module in quant_modules:
        module.observing = True
    seen = 0
    with torch.no_grad():
        for batch in _calibration_batches(calibration, batch_size):
            if not isinstance(batch, torch.Tensor) or not batch.is_floating_point():
                described = f"{batch.dtype} tensor" if isinstance(batch, torch.Tensor) else type(batch).__name__
                raise TypeError(f"calibration batch {seen} must be a floating tensor, got {described}")
            if not bool(torch.isfinite(batch).all()):
                raise ValueError(f"calibration batch {seen} contains NaN or inf")
            _calibration_step(gm, batch, seen)
            seen += 1
    for module in quant_modules:
        module.observing = False
    if seen == 0:
        raise ValueError("calibration must provide at least one batch of inputs")
    for module in quant_modules:
        if not isinstance(module, QuantAvgPool2d):
            module.freeze_observed_range()
    _link_input_qparams(gm)


def _calibration_step(gm: fx.GraphModule, batch: torch.Tensor, index: int) -> None:
    """One forward pass of calibration; a batch the model cannot take (a wrong channel count or
    size) is refused naming `calibration` and what the model expects."""
    try:
        gm(batch)
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        expected = expected_input(gm)
        raise ValueError(f"calibration batch {index} of shape {tuple(batch.shape)} does not fit the model"
                         + (f"; the model takes {expected}" if expected else "") + f" ({reason})") from None


def _producer(gm, node) -> QuantModule:
    """The quantized module whose output grid `node`'s value lies on (through pass-throughs)."""
    while True:
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), QuantModule):
            return gm.get_submodule(node.target)
        tensors = [a for a in node.args if isinstance(a, fx.Node)]
        if node.op == "placeholder" or not tensors:
            raise NotImplementedError(f"cannot find the quantized producer of node {node.name!r}")
        node = tensors[0]


def input_links(gm: fx.GraphModule):
    """(consumer, prefix, producer) for every quantized input of a converted model: the
    consumer's `prefix` parameters ("input", "a", "b"; an average pool's "output") must be its
    producer's output parameters, so int8 values pass exactly. In topological order."""
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        module = gm.get_submodule(node.target)
        if isinstance(module, _WeightedLayer):
            yield module, "input", _producer(gm, node.args[0])
        elif isinstance(module, QuantAdd):
            yield module, "a", _producer(gm, node.args[0])
            yield module, "b", _producer(gm, node.args[1])
        elif isinstance(module, QuantAvgPool2d):
            yield module, "output", _producer(gm, node.args[0])


def _link_input_qparams(gm):
    """Each consumer reads its producer's output grid. Average pools keep their producer's
    parameters for their output too (TFLite requires it). Producers come first, so a pool's
    output is linked before its consumers read it."""
    for consumer, prefix, producer in input_links(gm):
        consumer.set_qparams(prefix, producer.output_qparams)
