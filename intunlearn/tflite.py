"""TFLite flatbuffers in and out: deploy an integer model to TFLite Micro / LiteRT, and bring a
deployed .tflite model back in to unlearn it.

`export_tflite(model, path)` writes a model converted by `intunlearn.quantize` (or loaded by
`load_tflite`, or unlearned from either) as an int8 .tflite flatbuffer: CONV_2D,
DEPTHWISE_CONV_2D, FULLY_CONNECTED, ADD, AVERAGE_POOL_2D (global pooling too), MAX_POOL_2D,
PAD (where PyTorch's padding is not TFLite's SAME split), RESHAPE (after a TRANSPOSE to NCHW where
a multi-channel map is flattened, as PyTorch orders its features), ReLU/ReLU6 fused through the
activation range, int8 input and output with their scales and zero points. TFLite Micro's
interpreter runs the file bit-identically with intunlearn's integer forward (tested).

`load_tflite(path)` reads such a file (or a converter's int8 file with those ops) into a
quantized torch model in integer arithmetic whose forward is bit-identical with TFLM's on it.

The runtime derives every multiplier from the float32 scales stored in the file; intunlearn's
calibration chooses float64 scales. `export_tflite` checks that the runtime will derive exactly
the model's integers and otherwise refuses, pointing at `round_scales_to_float32(model)`, which
rounds the model's scales as deploying does (the engine does it for `--export`).

The flatbuffer is built with the TFLite schema's Python object API from the `tflite-micro`
package (`pip install 'intunlearn[deploy]'`).
"""

from __future__ import annotations

import copy
import json
import math
import operator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import fx, nn

from intunlearn import ops
from intunlearn._checks import positive_int_option
from intunlearn import qparams as qp
from intunlearn.deploy import integer_state_dict, load_integer_state_dict
from intunlearn.io import write_bytes_atomic
from intunlearn.modules import (InputQuantizer, QuantAdd, QuantAvgPool2d, QuantConv2d, QuantLinear,
                                QuantModule, expected_input, set_arithmetic)

FILE_IDENTIFIER = b"TFL3"
METADATA_NAME = "intunlearn"

# Where the runtimes take TFLite's packed INT4 weights, measured with the tflite-micro and
# ai-edge-litert versions of the test extra (tests/test_tflite.py::test_int4_format_table
# re-measures it). Elsewhere export stores the int4 values in an int8 tensor, which computes
# identically.
PACKED_INT4 = {"CONV_2D": True, "DEPTHWISE_CONV_2D": True, "FULLY_CONNECTED": False}

SUPPORTED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "AVERAGE_POOL_2D",
                 "MAX_POOL_2D", "PAD", "RESHAPE", "TRANSPOSE (NHWC to NCHW before a flatten)",
                 "trailing SOFTMAX/DEQUANTIZE (stripped)", "leading QUANTIZE (stripped)")


def _schema():
    try:
        from tflite_micro.tensorflow.lite.micro.python import schema_py_generated
    except ImportError as error:  # pragma: no cover - the deploy extra is missing
        raise ImportError("TFLite export/import needs the tflite-micro package: "
                          "pip install 'intunlearn[deploy]'") from error
    return schema_py_generated


def _f32(value: float) -> float:
    """The float32 nearest to value (what a .tflite file stores), as a Python float."""
    return float(np.float32(value))


def _names(enum_class) -> dict[int, str]:
    return {value: name for name, value in vars(enum_class).items() if not name.startswith("_")}


# ---- export ----------------------------------------------------------------------------------


@dataclass
class ExportReport:
    """What export_tflite wrote: one line per operator, and notes (formats chosen instead of
    packed int4, a rounding mode that needs another runtime build, ...)."""

    path: str
    input_shape: tuple
    output_shape: tuple
    operators: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    size_bytes: int = 0

    def __str__(self):
        lines = [f"wrote {self.path} ({self.size_bytes} bytes): int8 input {list(self.input_shape)} "
                 f"-> int8 output {list(self.output_shape)}"]
        lines += [f"  {line}" for line in self.operators]
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


@dataclass
class _Tensor:
    index: int
    shape: tuple  # the TFLite shape (NHWC for images)
    q: qp.ActivationQParams
    nchw: bool  # a 4-D torch NCHW tensor stored as NHWC
    pad: tuple | None = None


class _Builder:
    """The TFLite model being assembled with the schema's object API."""

    def __init__(self):
        self.s = _schema()
        self.tensors, self.operators = [], []
        self.buffers = [self.s.BufferT()]  # buffer 0: the empty buffer of non-constant tensors
        self.opcodes: dict[int, int] = {}
        self.op_names = _names(self.s.BuiltinOperator)

    def buffer(self, data: bytes) -> int:
        buffer = self.s.BufferT()
        buffer.data = np.frombuffer(data, dtype=np.uint8).copy()
        self.buffers.append(buffer)
        return len(self.buffers) - 1

    def tensor(self, name, shape, dtype, data: bytes | None = None, scales=None, zero_points=None,
               quantized_dimension=0) -> int:
        tensor = self.s.TensorT()
        tensor.name = name
        tensor.shape = np.array(shape, dtype=np.int32)
        tensor.type = dtype
        tensor.buffer = 0 if data is None else self.buffer(data)
        if scales is not None:
            quant = self.s.QuantizationParametersT()
            quant.scale = np.array(scales, dtype=np.float32)
            quant.zeroPoint = np.array(zero_points, dtype=np.int64)
            quant.quantizedDimension = quantized_dimension
            tensor.quantization = quant
        self.tensors.append(tensor)
        return len(self.tensors) - 1

    def activation(self, name, shape, q: qp.ActivationQParams) -> int:
        return self.tensor(name, shape, self.s.TensorType.INT8, scales=[q.scale], zero_points=[q.zero_point])

    def op(self, code: int, inputs, outputs, options_type=0, options=None) -> int:
        self.opcodes.setdefault(code, len(self.opcodes))
        operator = self.s.OperatorT()
        operator.opcodeIndex = self.opcodes[code]
        operator.inputs = np.array(inputs, dtype=np.int32)
        operator.outputs = np.array(outputs, dtype=np.int32)
        operator.builtinOptionsType = options_type
        operator.builtinOptions = options
        self.operators.append(operator)
        return len(self.operators) - 1

    def finish(self, inputs, outputs, metadata: dict) -> bytes:
        import flatbuffers

        s = self.s
        subgraph = s.SubGraphT()
        subgraph.tensors, subgraph.operators = self.tensors, self.operators
        subgraph.inputs = np.array(inputs, dtype=np.int32)
        subgraph.outputs = np.array(outputs, dtype=np.int32)
        subgraph.name = "main"
        entry = s.MetadataT()
        entry.name = METADATA_NAME
        entry.buffer = self.buffer(json.dumps(metadata, sort_keys=True).encode())
        model = s.ModelT()
        model.version = 3
        model.description = "intunlearn integer model"
        codes = sorted(self.opcodes, key=self.opcodes.get)
        model.operatorCodes = []
        for code in codes:
            opcode = s.OperatorCodeT()
            opcode.builtinCode, opcode.deprecatedBuiltinCode, opcode.version = code, min(code, 127), 1
            model.operatorCodes.append(opcode)
        model.subgraphs, model.buffers, model.metadata = [subgraph], self.buffers, [entry]
        builder = flatbuffers.Builder(1024)
        builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
        return bytes(builder.Output())


def round_scales_to_float32(model: nn.Module) -> nn.Module:
    """Round every activation scale of `model` to the nearest float32, in place, as a .tflite
    file stores it (relative change < 2**-24). Weight scales are float32 already. Afterwards the
    runtime derives from the file exactly the multipliers intunlearn uses."""
    for module in model.modules():
        if not isinstance(module, QuantModule):
            continue
        buffers = dict(module.named_buffers(recurse=False))
        for name in buffers:
            if name.endswith("_scale") and f"{name[:-6]}_zero_point" in buffers and name != "weight_scale":
                prefix = name[:-6]
                q = module.qparams(prefix)
                if _f32(q.scale) != q.scale:
                    module.set_qparams(prefix, qp.ActivationQParams(_f32(q.scale), q.zero_point))
    return model


def _runtime_multipliers(input_scale, weight_scales, output_scale):
    """(multiplier, shift) as TFLM's PopulateConvolutionQuantizationParams derives them from the
    file's float32 scales: double(s_x) * double(s_w[c]) / double(s_y)."""
    real = (_f32(input_scale) * torch.tensor(np.asarray(weight_scales, dtype=np.float32), dtype=torch.float64)
            / _f32(output_scale))
    return ops.quantize_multiplier(real)


def _runtime_activation_range(activation, q: qp.ActivationQParams):
    """TFLite's CalculateActivationRangeQuantized: zero_point + round(x / scale) in float32."""
    act_min, act_max = -128, 127
    if activation in ("relu", "relu6"):
        act_min = max(act_min, q.zero_point)
    if activation == "relu6":
        act_max = min(act_max, q.zero_point + qp.round_half_away_scalar(float(np.float32(6.0) / np.float32(q.scale))))
    return act_min, act_max


def _same_padding(size, kernel, stride, dilation):
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return out, total // 2, total - total // 2


def _padding_plan(in_hw, kernel, stride, dilation, padding):
    """How TFLite expresses PyTorch's (top, bottom, left, right) padding: ("VALID" | "SAME",
    explicit pad or None)."""
    effective, same_ok = [], True
    for axis, (before, after) in enumerate(((padding[0], padding[1]), (padding[2], padding[3]))):
        size, k, st, d = in_hw[axis], kernel[axis], stride[axis], dilation[axis]
        span = (k - 1) * d + 1
        out = (size + before + after - span) // st + 1
        used_after = max(0, (out - 1) * st + span - size - before)
        effective.append((before, used_after))
        same_out, same_before, same_after = _same_padding(size, k, st, d)
        same_ok &= (out, before, used_after) == (same_out, same_before, same_after)
    if all(pair == (0, 0) for pair in effective):
        return "VALID", None
    if same_ok:
        return "SAME", None
    return "VALID", (effective[0][0], effective[0][1], effective[1][0], effective[1][1])


def _tflite_shape(shape, nchw):
    shape = tuple(int(v) for v in shape)
    return (shape[0], shape[2], shape[3], shape[1]) if nchw else shape


def _pack_flat_int4(values: torch.Tensor) -> bytes:
    """TFLite's INT4 tensor buffer: the flattened tensor, two values per byte, low nibble first."""
    return ops.pack_int4(values.reshape(1, -1).to(torch.int8)).numpy().tobytes()


def _module_state(state, name):
    prefix = f"{name}."
    return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)
            and "." not in key[len(prefix):]}


def _producer_qparams(node: fx.Node, modules) -> qp.ActivationQParams:
    while True:
        if node.op == "call_module" and isinstance(modules[node.target], QuantModule):
            return modules[node.target].output_qparams
        inputs = [a for a in node.args if isinstance(a, fx.Node)]
        if not inputs:
            raise NotImplementedError(f"cannot find the quantized producer of node {node.name!r}")
        node = inputs[0]


_RESHAPE_FUNCTIONS = {torch.flatten, torch.reshape}
_RESHAPE_METHODS = {"view", "reshape", "flatten"}
_ALIAS_METHODS = {"contiguous"}


class _Exporter:
    def __init__(self, model, input_shape, batch_size, int4_format, exact):
        if not isinstance(model, fx.GraphModule):
            raise TypeError(f"export_tflite takes a model converted by intunlearn.quantize or loaded by "
                            f"load_tflite (a torch.fx.GraphModule), got {type(model).__name__}")
        if int4_format not in ("auto", "packed", "int8"):
            raise ValueError(f"int4_format must be 'auto', 'packed' or 'int8', got {int4_format!r}")
        if input_shape is None:
            input_shape = getattr(model, "meta", {}).get("tflite_input_shape")
        if input_shape is None:
            raise ValueError("input_shape is needed (the shape of one input sample, e.g. (1, 8, 8)); "
                             "a model from load_tflite carries its own")
        self.model, self.input_shape = model, _sample_shape(input_shape)
        self.batch_size, self.int4_format, self.exact = batch_size, int4_format, exact
        self.modules = dict(model.named_modules())
        self.state = {key: value.detach().cpu() for key, value in integer_state_dict(model).items()}
        self.b = _Builder()
        self.s = self.b.s
        self.values: dict[fx.Node, _Tensor | None] = {}
        self.report_ops, self.notes, self.weight_bits = [], [], {}
        self.roundings = set()
        self.mismatches = []

    def shapes(self):
        probe = copy.deepcopy(self.model).cpu().eval()
        set_arithmetic(probe, "float")
        from torch.fx.passes.shape_prop import ShapeProp

        with torch.no_grad():
            try:
                ShapeProp(probe).propagate(torch.zeros((self.batch_size, *self.input_shape)))
            except RuntimeError as error:  # the model cannot take inputs of this shape
                cause = error.__cause__ or error
                reason = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
                expected = expected_input(self.model)
                raise ValueError(f"input_shape {self.input_shape} does not fit the model"
                                 + (f"; it takes {expected}" if expected else "") + f" ({reason})") from None
        shapes = {}
        for node in probe.graph.nodes:
            meta = node.meta.get("tensor_meta")
            shapes[node.name] = tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None
        return shapes

    def run(self):
        shapes = self.shapes()
        s, b = self.s, self.b
        input_index = output_index = None
        for node in self.model.graph.nodes:
            shape = shapes.get(node.name)
            if node.op == "placeholder":
                if input_index is not None:
                    raise NotImplementedError("export_tflite supports models with one input")
                input_index = -1
                self.values[node] = None  # real-valued: the InputQuantizer puts it on the int8 grid
                continue
            if node.op == "output":
                result = node.args[0]
                if not isinstance(result, fx.Node) or self.values.get(result) is None:
                    raise NotImplementedError("export_tflite supports models with one tensor output")
                output_index = self.values[result].index
                output = self.values[result]
                continue
            if node.op == "call_module":
                module = self.modules[node.target]
                if isinstance(module, QuantModule) and module.pinned_float:
                    raise NotImplementedError(f"layer {node.target!r} is kept in float; a TFLite int8 model "
                                              f"needs every layer quantized")
                if isinstance(module, InputQuantizer):
                    if self.values.get(node.args[0], 0) is not None or input_index != -1:
                        raise NotImplementedError(f"{node.target}: only the model input may be quantized "
                                                  f"by an InputQuantizer")
                    q = module.output_qparams
                    nchw = len(shape) == 4
                    index = b.activation(node.target, _tflite_shape(shape, nchw), self._q(q))
                    self.values[node] = _Tensor(index, _tflite_shape(shape, nchw), q, nchw)
                    input_index = index
                elif isinstance(module, QuantConv2d):
                    self.values[node] = self.conv(node, module, shape)
                elif isinstance(module, QuantLinear):
                    self.values[node] = self.linear(node, module, shape)
                elif isinstance(module, QuantAdd):
                    self.values[node] = self.add(node, module, shape)
                elif isinstance(module, QuantAvgPool2d):
                    self.values[node] = self.pool(node, module, shape)
                elif isinstance(module, nn.MaxPool2d):
                    self.values[node] = self.max_pool(node, module, shape)
                elif isinstance(module, nn.Flatten):
                    self.values[node] = self.reshape(node, shape)
                elif isinstance(module, (nn.Identity, nn.Dropout)):
                    self.values[node] = self.source(node)
                else:
                    raise NotImplementedError(f"module {node.target!r} ({type(module).__name__}) has no "
                                              f"TFLite export")
            elif node.op == "call_function" and node.target in _RESHAPE_FUNCTIONS \
                    or node.op == "call_method" and node.target in _RESHAPE_METHODS:
                self.values[node] = self.reshape(node, shape)
            elif node.op == "call_method" and node.target == "permute":
                self.values[node] = self.permute(node, shape)
            elif node.op == "call_method" and node.target in _ALIAS_METHODS or \
                    node.op == "call_function" and node.target is torch.nn.functional.dropout:
                self.values[node] = self.source(node)
            elif shape is None:  # a shape query (x.size(0), ...): used by reshapes only
                self.values[node] = None
            else:
                raise NotImplementedError(f"node {node.name!r} ({node.op} {node.target}) has no TFLite export")
        if self.mismatches and self.exact:
            raise ValueError(
                "the runtime derives requantization multipliers and clamps from the float32 scales a "
                ".tflite file stores, and would not reproduce this model's integers: "
                + "; ".join(self.mismatches[:3])
                + ". Call intunlearn.tflite.round_scales_to_float32(model) first (it rounds the "
                  "model's scales as deploying does), or pass exact=False to write the file anyway")
        if len(self.roundings - {"double"}):
            self.notes.append("this model requantizes with single rounding: it runs bit-exactly only in a "
                              "TFLite (Micro) build with -DTFLITE_SINGLE_ROUNDING=1; the default builds "
                              "(and the pip packages) round twice and will differ in some outputs")
        metadata = {"producer": "intunlearn", "input_shape": list(self.input_shape),
                    "rounding": "single" if "single" in self.roundings else "double",
                    "weight_bits": {str(k): v for k, v in self.weight_bits.items()}}
        data = b.finish([input_index], [output_index], metadata)
        in_tensor = b.tensors[input_index]
        return data, tuple(in_tensor.shape.tolist()), output.shape

    def _q(self, q):
        return qp.ActivationQParams(_f32(q.scale), q.zero_point)

    def source(self, node) -> _Tensor:
        inputs = [a for a in node.args if isinstance(a, fx.Node)]
        value = self.values.get(inputs[0])
        if value is None:
            raise NotImplementedError(f"node {node.name!r} reads the real-valued input before it is quantized")
        return value

    def _check_input(self, name, value: _Tensor, q: qp.ActivationQParams):
        if value.pad is not None:
            raise NotImplementedError(f"{name}: an explicit pad can only feed a convolution")
        if (value.q.scale, value.q.zero_point) != (q.scale, q.zero_point):
            raise NotImplementedError(f"{name}: its input parameters {q} differ from its producer's {value.q} "
                                      f"(a requantization TFLite would need as a separate op)")

    def _check_integers(self, name, entries, activation, q_in, q_out, weight_scales):
        multiplier, shift = _runtime_multipliers(q_in.scale, weight_scales, q_out.scale)
        if not (torch.equal(multiplier, entries["multiplier"]) and torch.equal(shift, entries["shift"])):
            channel = int((multiplier != entries["multiplier"]).logical_or(shift != entries["shift"])
                          .nonzero()[0])
            self.mismatches.append(f"{name}: channel {channel} multiplier/shift "
                                   f"{int(entries['multiplier'][channel])}/{int(entries['shift'][channel])} "
                                   f"here, {int(multiplier[channel])}/{int(shift[channel])} in the runtime")
        runtime_range = _runtime_activation_range(activation, self._q(q_out))
        if runtime_range != (int(entries["act_min"]), int(entries["act_max"])):
            self.mismatches.append(f"{name}: activation range {int(entries['act_min'])}..{int(entries['act_max'])}"
                                   f" here, {runtime_range[0]}..{runtime_range[1]} in the runtime")

    def _activation_code(self, activation):
        kinds = self.s.ActivationFunctionType
        return {None: kinds.NONE, "relu": kinds.RELU, "relu6": kinds.RELU6}[activation]

    def _weights(self, name, op_name, layer, values: torch.Tensor, scales, quantized_dimension):
        """The weight tensor: int8, or int4 packed where the runtime takes it, else int4 values in
        an int8 tensor."""
        bits = layer.weight_bits
        s = self.s
        packed = bits == 4 and (self.int4_format == "packed"
                                or self.int4_format == "auto" and PACKED_INT4.get(op_name, False))
        if bits == 4 and not packed:
            why = (f"TFLite Micro does not run {op_name} with packed per-channel INT4 weights"
                   if self.int4_format == "auto" else "int4_format='int8'")
            self.notes.append(f"{name}: int4 weights stored as int8 values in [-7, 7] ({why}); computes identically")
        data = _pack_flat_int4(values) if packed else values.contiguous().numpy().astype(np.int8).tobytes()
        dtype = s.TensorType.INT4 if packed else s.TensorType.INT8
        index = self.b.tensor(f"{name}/weight", tuple(values.shape), dtype, data, scales=scales,
                              zero_points=[0] * len(scales), quantized_dimension=quantized_dimension)
        return index, ("packed INT4" if packed else "int4 values in INT8" if bits == 4 else "INT8")

    def _bias(self, name, entries, q_in, scales):
        if "bias" not in entries:
            return -1
        bias = entries["bias"].to(torch.int32).numpy()
        bias_scales = [_f32(_f32(q_in.scale) * float(w)) for w in scales]
        return self.b.tensor(f"{name}/bias", (len(bias),), self.s.TensorType.INT32, bias.tobytes(),
                             scales=bias_scales, zero_points=[0] * len(bias))

    def _layer_common(self, node, layer):
        name = node.target
        entries = _module_state(self.state, name)
        x = self.values.get(node.args[0])
        if x is None:
            raise NotImplementedError(f"{name}: reads the real-valued input before it is quantized")
        q_in, q_out = layer.input_qparams, layer.output_qparams
        self.roundings.add(layer.rounding)
        weight = entries["weight"]
        shape = tuple(entries["weight_shape"].tolist())
        if layer.weight_bits == 4:
            weight = ops.unpack_int4(weight, math.prod(shape[1:]))
        weight = weight.reshape(shape)
        scales = [_f32(v) for v in entries["weight_scale"].double().tolist()]
        self._check_integers(name, entries, layer.activation, q_in, q_out, scales)
        return name, entries, x, q_in, q_out, weight, scales

    def conv(self, node, layer: QuantConv2d, shape):
        s, b = self.s, self.b
        name, entries, x, q_in, q_out, weight, scales = self._layer_common(node, layer)
        if x.pad is not None:
            raise NotImplementedError(f"{name}: two explicit pads in a row")
        self._check_input(name, x, q_in)
        if not x.nchw:
            raise NotImplementedError(f"{name}: a convolution needs a 4-D NCHW input")
        out_channels, in_per_group, kh, kw = weight.shape
        in_channels = x.shape[3]
        depthwise = layer.groups == in_channels and in_per_group == 1 and layer.groups > 1
        if layer.groups != 1 and not depthwise:
            raise NotImplementedError(f"{name}: grouped convolution (groups={layer.groups}) has no TFLite export; "
                                      f"groups=1 and depthwise (groups=in_channels) do")
        padding, explicit = _padding_plan(x.shape[1:3], (kh, kw), layer.stride, layer.dilation, layer.padding)
        if explicit is not None:
            x = self._pad(name, x, explicit)
        op_name = "DEPTHWISE_CONV_2D" if depthwise else "CONV_2D"
        if depthwise:
            values = weight[:, 0].permute(1, 2, 0).unsqueeze(0)  # [1, KH, KW, OC]
            w_index, fmt = self._weights(name, op_name, layer, values, scales, 3)
            options = s.DepthwiseConv2DOptionsT()
            options.depthMultiplier = out_channels // in_channels
            options_type, code = s.BuiltinOptions.DepthwiseConv2DOptions, s.BuiltinOperator.DEPTHWISE_CONV_2D
        else:
            values = weight.permute(0, 2, 3, 1)  # OHWI
            w_index, fmt = self._weights(name, op_name, layer, values, scales, 0)
            options = s.Conv2DOptionsT()
            options_type, code = s.BuiltinOptions.Conv2DOptions, s.BuiltinOperator.CONV_2D
        options.padding = getattr(s.Padding, padding)
        options.strideH, options.strideW = layer.stride
        options.dilationHFactor, options.dilationWFactor = layer.dilation
        options.fusedActivationFunction = self._activation_code(layer.activation)
        out_shape = _tflite_shape(shape, True)
        out = b.activation(name, out_shape, self._q(q_out))
        b.op(code, [x.index, w_index, self._bias(name, entries, q_in, scales)], [out], options_type, options)
        self.weight_bits[len(b.operators) - 1] = layer.weight_bits
        self.report_ops.append(f"#{len(b.operators) - 1} {op_name} {name}: {layer.weight_bits}-bit weights as "
                               f"{fmt}, padding {padding}, activation {layer.activation or 'none'}")
        return _Tensor(out, out_shape, q_out, True)

    def _pad(self, name, x: _Tensor, pads) -> _Tensor:
        s, b = self.s, self.b
        top, bottom, left, right = pads
        paddings = np.array([[0, 0], [top, bottom], [left, right], [0, 0]], dtype=np.int32)
        p_index = b.tensor(f"{name}/paddings", (4, 2), s.TensorType.INT32, paddings.tobytes())
        n, h, w, c = x.shape
        out_shape = (n, h + top + bottom, w + left + right, c)
        out = b.activation(f"{name}/pad", out_shape, self._q(x.q))
        b.op(s.BuiltinOperator.PAD, [x.index, p_index], [out], s.BuiltinOptions.PadOptions, s.PadOptionsT())
        self.report_ops.append(f"#{len(b.operators) - 1} PAD {name}: (top, bottom, left, right) = {pads} "
                               f"(PyTorch's padding is not TFLite's SAME split here)")
        return _Tensor(out, out_shape, x.q, True)

    def linear(self, node, layer: QuantLinear, shape):
        s, b = self.s, self.b
        name, entries, x, q_in, q_out, weight, scales = self._layer_common(node, layer)
        self._check_input(name, x, q_in)
        if len(x.shape) != 2:
            raise NotImplementedError(f"{name}: a linear layer on a {len(x.shape)}-D tensor has no TFLite export "
                                      f"(flatten first)")
        w_index, fmt = self._weights(name, "FULLY_CONNECTED", layer, weight, scales, 0)
        options = s.FullyConnectedOptionsT()
        options.fusedActivationFunction = self._activation_code(layer.activation)
        out_shape = tuple(int(v) for v in shape)
        out = b.activation(name, out_shape, self._q(q_out))
        b.op(s.BuiltinOperator.FULLY_CONNECTED, [x.index, w_index, self._bias(name, entries, q_in, scales)], [out],
             s.BuiltinOptions.FullyConnectedOptions, options)
        self.weight_bits[len(b.operators) - 1] = layer.weight_bits
        self.report_ops.append(f"#{len(b.operators) - 1} FULLY_CONNECTED {name}: {layer.weight_bits}-bit weights "
                               f"as {fmt} (per-channel), activation {layer.activation or 'none'}")
        return _Tensor(out, out_shape, q_out, False)

    def add(self, node, module: QuantAdd, shape):
        s, b = self.s, self.b
        name = node.target
        a, c = (self.values.get(arg) for arg in node.args[:2])
        if a is None or c is None or len(node.args) != 2:
            raise NotImplementedError(f"{name}: ADD of two quantized tensors only")
        qa, qb, qy = module.input_qparams("a"), module.input_qparams("b"), module.output_qparams
        self._check_input(name, a, qa)
        self._check_input(name, c, qb)
        if a.shape != c.shape:
            raise NotImplementedError(f"{name}: ADD with broadcasting")
        self.roundings.add(module.rounding)
        entries = _module_state(self.state, name)
        runtime = qp.add_params(self._q(qa), self._q(qb), self._q(qy))
        for key, value in runtime.items():
            if key in entries and int(entries[key]) != value:
                self.mismatches.append(f"{name}: ADD {key} {int(entries[key])} here, {value} in the runtime")
        act = _runtime_activation_range(module.activation, self._q(qy))
        if act != (int(entries["act_min"]), int(entries["act_max"])):
            self.mismatches.append(f"{name}: ADD activation range differs")
        options = s.AddOptionsT()
        options.fusedActivationFunction = self._activation_code(module.activation)
        out = b.activation(name, a.shape, self._q(qy))
        b.op(s.BuiltinOperator.ADD, [a.index, c.index], [out], s.BuiltinOptions.AddOptions, options)
        self.report_ops.append(f"#{len(b.operators) - 1} ADD {name}: activation {module.activation or 'none'}")
        return _Tensor(out, a.shape, qy, a.nchw)

    def _pool(self, node, name, x: _Tensor, kernel, stride, padding, code, label, q_out):
        s, b = self.s, self.b
        if not x.nchw or x.pad is not None:
            raise NotImplementedError(f"{name}: pooling needs a 4-D NCHW input")
        mode, explicit = _padding_plan(x.shape[1:3], kernel, stride, (1, 1), padding)
        if explicit is not None:
            raise NotImplementedError(f"{name}: pooling padding {padding} is neither VALID nor TFLite's SAME")
        if (q_out.scale, q_out.zero_point) != (x.q.scale, x.q.zero_point):
            raise NotImplementedError(f"{name}: pooling that changes the quantization parameters")
        options = s.Pool2DOptionsT()
        options.padding = getattr(s.Padding, mode)
        options.strideH, options.strideW = stride
        options.filterHeight, options.filterWidth = kernel
        n, h, w, c = x.shape
        out_h = (h - kernel[0]) // stride[0] + 1 if mode == "VALID" else -(-h // stride[0])
        out_w = (w - kernel[1]) // stride[1] + 1 if mode == "VALID" else -(-w // stride[1])
        out_shape = (n, out_h, out_w, c)
        out = b.activation(name, out_shape, self._q(x.q))
        b.op(code, [x.index], [out], s.BuiltinOptions.Pool2DOptions, options)
        self.report_ops.append(f"#{len(b.operators) - 1} {label} {name}: kernel {tuple(kernel)}, stride "
                               f"{tuple(stride)}, padding {mode}")
        return _Tensor(out, out_shape, x.q, True)

    def pool(self, node, module: QuantAvgPool2d, shape):
        x = self.source(node)
        kernel = tuple(x.shape[1:3]) if module.kernel_size is None else module.kernel_size
        stride = kernel if module.stride is None else module.stride
        label = "AVERAGE_POOL_2D (global)" if module.kernel_size is None else "AVERAGE_POOL_2D"
        return self._pool(node, node.target, x, kernel, stride, module.padding,
                          self.s.BuiltinOperator.AVERAGE_POOL_2D, label, module.output_qparams)

    def max_pool(self, node, module: nn.MaxPool2d, shape):
        x = self.source(node)
        kernel, stride = _pair(module.kernel_size), _pair(module.stride or module.kernel_size)
        if _pair(module.dilation) != (1, 1) or module.ceil_mode or _pair(module.padding) != (0, 0):
            raise NotImplementedError(f"{node.target}: MaxPool2d with padding, dilation or ceil_mode")
        return self._pool(node, node.target, x, kernel, stride, (0, 0, 0, 0),
                          self.s.BuiltinOperator.MAX_POOL_2D, "MAX_POOL_2D", x.q)

    def permute(self, node, shape):
        x = self.source(node)
        dims = tuple(node.args[1:]) if len(node.args) > 2 else tuple(node.args[1])
        if not x.nchw or dims != (0, 2, 3, 1) or any(user.op not in ("call_method", "call_function", "call_module")
                                                      for user in node.users):
            raise NotImplementedError(f"node {node.name!r}: only permute(0, 2, 3, 1) (to NHWC) before a flatten")
        return _Tensor(x.index, x.shape, x.q, False)  # the NHWC tensor itself, now in torch's order too

    def _transpose_to_nchw(self, name, x: _Tensor) -> _Tensor:
        s, b = self.s, self.b
        perm = np.array([0, 3, 1, 2], dtype=np.int32)
        p_index = b.tensor(f"{name}/perm", (4,), s.TensorType.INT32, perm.tobytes())
        n, h, w, c = x.shape
        out = b.activation(f"{name}/nchw", (n, c, h, w), self._q(x.q))
        b.op(s.BuiltinOperator.TRANSPOSE, [x.index, p_index], [out], s.BuiltinOptions.TransposeOptions,
             s.TransposeOptionsT())
        self.report_ops.append(f"#{len(b.operators) - 1} TRANSPOSE {name}: NHWC -> NCHW, so that the flatten "
                               f"orders features as PyTorch does")
        return _Tensor(out, (n, c, h, w), x.q, False)

    def reshape(self, node, shape):
        s, b = self.s, self.b
        x = self.source(node)
        if x.pad is not None:
            raise NotImplementedError(f"node {node.name!r}: reshape of a padded tensor")
        out_shape = tuple(int(v) for v in shape)
        if len(out_shape) == 4:
            raise NotImplementedError(f"node {node.name!r}: a reshape to 4-D has no TFLite export")
        if x.nchw and x.shape[3] != 1 and x.shape[1] * x.shape[2] != 1:
            x = self._transpose_to_nchw(node.name, x)  # PyTorch flattens channel-major, TFLite's NHWC does not
        if out_shape == x.shape and not x.nchw:
            return x
        shape_data = np.array(out_shape, dtype=np.int32)
        shape_index = b.tensor(f"{node.name}/shape", (len(out_shape),), s.TensorType.INT32, shape_data.tobytes())
        options = s.ReshapeOptionsT()
        options.newShape = shape_data.copy()
        out = b.activation(node.name, out_shape, self._q(x.q))
        b.op(s.BuiltinOperator.RESHAPE, [x.index, shape_index], [out], s.BuiltinOptions.ReshapeOptions, options)
        self.report_ops.append(f"#{len(b.operators) - 1} RESHAPE {node.name}: {list(x.shape)} -> {list(out_shape)}")
        return _Tensor(out, out_shape, x.q, False)


def _sample_shape(input_shape) -> tuple[int, ...]:
    """input_shape as a tuple of positive ints (one sample's shape, no batch dimension)."""
    try:  # operator.index: ints of any kind (numpy's too), never floats or bools
        shape = tuple(operator.index(v) for v in input_shape if not isinstance(v, bool))
        shape = shape if len(shape) == len(input_shape) else None
    except TypeError:
        shape = None
    if not shape or not all(v > 0 for v in shape):
        raise ValueError(f"input_shape must be one sample's shape, a tuple of positive ints such as (1, 8, 8), "
                         f"got {input_shape!r}")
    return shape


def _pair(value):
    return (value, value) if isinstance(value, int) else tuple(value)


def export_tflite(model: nn.Module, path, *, input_shape=None, batch_size: int = 1, int4_format: str = "auto",
                  exact: bool = True) -> ExportReport:
    """Write `model` as an int8 .tflite flatbuffer at `path` (atomically) and return the report.

    input_shape: one sample's shape in PyTorch's layout, e.g. (1, 8, 8) (not needed for a model
    from load_tflite). batch_size: the batch dimension of the file's tensors. int4_format: how
    4-bit weights are stored: "auto" (packed INT4 where TFLM runs it, int4 values in an int8
    tensor elsewhere), "packed" or "int8". exact: refuse (ValueError) when the runtime would
    derive other multipliers or clamps from the file's float32 scales than this model uses.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    exporter = _Exporter(model, input_shape, batch_size, int4_format, exact)
    data, in_shape, out_shape = exporter.run()
    report = ExportReport(str(path), in_shape, out_shape, exporter.report_ops, exporter.notes, len(data))
    if exporter.mismatches:
        report.notes.append(f"not exact: the runtime derives other integers from the file's float32 scales in "
                            f"{len(exporter.mismatches)} places, e.g. " + "; ".join(exporter.mismatches[:2]))
    write_bytes_atomic(path, data)
    return report


def export_tflite_bytes(model, **kwargs) -> tuple[bytes, ExportReport]:
    """export_tflite to memory: (the flatbuffer, the report)."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.tflite"
        report = export_tflite(model, path, **kwargs)
        return path.read_bytes(), report


# ---- import ----------------------------------------------------------------------------------


def _read_model(data: bytes, source: str):
    s = _schema()
    if len(data) < 8:
        raise ValueError(f"{source}: not a .tflite file: {len(data)} bytes is too short for a flatbuffer")
    identifier = bytes(data[4:8])
    if identifier != FILE_IDENTIFIER:
        raise ValueError(f"{source}: not a .tflite file: file identifier {identifier!r}, expected {FILE_IDENTIFIER!r}")
    root = int.from_bytes(data[:4], "little")
    if root + 4 > len(data):
        raise ValueError(f"{source}: truncated or corrupt .tflite file (root table at {root}, file has {len(data)} "
                         f"bytes)")
    try:
        model = s.ModelT.InitFromObj(s.Model.GetRootAs(data, 0))
    except Exception as error:  # flatbuffers reads past the end of a truncated buffer
        raise ValueError(f"{source}: truncated or corrupt .tflite file ({type(error).__name__}: {error})") from None
    if not model.subgraphs:
        raise ValueError(f"{source}: the model has no subgraph (truncated or corrupt .tflite file?)")
    return model


def _buffer_bytes(model, data: bytes, index: int, source: str) -> bytes | None:
    if index <= 0 or index >= len(model.buffers or []):
        return None
    buffer = model.buffers[index]
    if buffer.offset and buffer.offset > 1:  # large models keep buffers after the flatbuffer
        if buffer.offset + buffer.size > len(data):
            raise ValueError(f"{source}: truncated .tflite file: buffer {index} ends at byte "
                             f"{buffer.offset + buffer.size}, the file has {len(data)}")
        return bytes(data[buffer.offset:buffer.offset + buffer.size])
    if buffer.data is None or len(buffer.data) == 0:
        return None
    return np.asarray(buffer.data, dtype=np.uint8).tobytes()


@dataclass
class _Value:
    node: fx.Node
    shape: tuple  # TFLite shape
    q: qp.ActivationQParams
    pad: tuple = (0, 0, 0, 0)
    transposed: bool = False  # a TRANSPOSE to NCHW: the TFLite tensor is in PyTorch's order


class _Importer:
    def __init__(self, data: bytes, source: str):
        self.s = _schema()
        self.data, self.source = data, source
        self.model = _read_model(data, source)
        if len(self.model.subgraphs) != 1:
            raise NotImplementedError(f"{source}: {len(self.model.subgraphs)} subgraphs; load_tflite reads "
                                      f"single-subgraph models")
        self.graph = self.model.subgraphs[0]
        self.tensors = self.graph.tensors or []
        self.op_names = _names(self.s.BuiltinOperator)
        self.type_names = _names(self.s.TensorType)
        self.notes: list[str] = []
        self.metadata = self._metadata()
        self.root = nn.Module()
        self.fx_graph = fx.Graph()
        self.qsets: dict[str, dict[str, qp.ActivationQParams]] = {}  # module -> its activation parameters
        self.layer_entries: dict[str, dict[str, torch.Tensor]] = {}  # weighted layer -> its integers
        self.rounding = self.metadata.get("rounding", "double")
        self.weight_bits_meta = {int(k): v for k, v in self.metadata.get("weight_bits", {}).items()}

    def _metadata(self):
        for entry in self.model.metadata or []:
            name = entry.name.decode() if isinstance(entry.name, bytes) else entry.name
            if name == METADATA_NAME:
                raw = _buffer_bytes(self.model, self.data, entry.buffer, self.source)
                try:
                    return json.loads(raw.decode()) if raw else {}
                except (UnicodeDecodeError, json.JSONDecodeError):
                    raise ValueError(f"{self.source}: the {METADATA_NAME!r} metadata is not JSON") from None
        return {}

    def op_name(self, operator):
        code = self.model.operatorCodes[operator.opcodeIndex]
        value = max(code.builtinCode, code.deprecatedBuiltinCode)
        return self.op_names.get(value, f"builtin {value}") if value != self.s.BuiltinOperator.CUSTOM else \
            f"CUSTOM {code.customCode!r}"

    def tensor_name(self, index):
        name = self.tensors[index].name
        return name.decode() if isinstance(name, bytes) else str(name)

    def tensor_type(self, index):
        return self.type_names.get(self.tensors[index].type, str(self.tensors[index].type))

    def qparams(self, index, what) -> qp.ActivationQParams:
        tensor = self.tensors[index]
        quant = tensor.quantization
        if quant is None or quant.scale is None or len(quant.scale) == 0:
            raise ValueError(f"{self.source}: {what} tensor {self.tensor_name(index)!r} ({self.tensor_type(index)}) "
                             f"has no quantization parameters; load_tflite reads int8-quantized models")
        if len(quant.scale) != 1:
            raise ValueError(f"{self.source}: {what} tensor {self.tensor_name(index)!r} is quantized per axis")
        return qp.ActivationQParams(float(quant.scale[0]), int(quant.zeroPoint[0]))

    def activation_tensor(self, index, what, op_index, op_name):
        if self.tensor_type(index) != "INT8":
            kind = "a float model" if self.tensor_type(index).startswith("FLOAT") else "an unsupported tensor type"
            raise ValueError(f"{self.source}: {kind}: {what} tensor {self.tensor_name(index)!r} of op #{op_index} "
                             f"{op_name} is {self.tensor_type(index)}; load_tflite reads models quantized to "
                             f"int8 activations (full integer quantization)")
        return self.qparams(index, what)

    def shape(self, index):
        return tuple(int(v) for v in (self.tensors[index].shape if self.tensors[index].shape is not None else ()))

    def constant(self, index, what, op_index, op_name):
        raw = _buffer_bytes(self.model, self.data, self.tensors[index].buffer, self.source)
        if raw is None:
            raise NotImplementedError(f"{self.source}: op #{op_index} {op_name}: the {what} tensor "
                                      f"{self.tensor_name(index)!r} is not a constant")
        return raw

    def weights(self, index, op_index, op_name, quantized_dimension):
        """(int8 values as a numpy array of the tensor's shape, float32 scales [channels], bits)."""
        kind = self.tensor_type(index)
        shape = self.shape(index)
        raw = self.constant(index, "weight", op_index, op_name)
        count = math.prod(shape)
        where = f"{self.source}: op #{op_index} {op_name}, weight tensor {self.tensor_name(index)!r}"
        if kind == "INT8":
            if len(raw) != count:
                raise ValueError(f"{where}: {len(raw)} bytes for {count} int8 values")
            values = np.frombuffer(raw, dtype=np.int8).reshape(shape)
            bits = self.weight_bits_meta.get(op_index, 8)
        elif kind == "INT4":
            if len(raw) != (count + 1) // 2:
                raise ValueError(f"{where}: {len(raw)} bytes for {count} packed int4 values")
            packed = torch.from_numpy(np.frombuffer(raw, dtype=np.uint8).copy()).reshape(1, -1)
            values = ops.unpack_int4(packed, count).numpy().reshape(shape)
            bits = 4
        elif kind.startswith("FLOAT"):
            raise ValueError(f"{self.source}: a float model: {where[len(self.source) + 2:]} is {kind}; "
                             f"load_tflite reads int8/int4-quantized models")
        else:
            raise ValueError(f"{where}: weights of type {kind}; load_tflite reads INT8 and INT4 weights")
        quant = self.tensors[index].quantization
        if quant is None or quant.scale is None or len(quant.scale) == 0:
            raise ValueError(f"{where}: weights without quantization parameters")
        zero_points = np.asarray(quant.zeroPoint if quant.zeroPoint is not None else [0])
        if np.any(zero_points != 0):
            raise ValueError(f"{where}: weight zero point {int(zero_points[np.nonzero(zero_points)[0][0]])}; "
                             f"intunlearn's weights are symmetric (zero point 0) and cannot represent it")
        channels = shape[quantized_dimension]
        scales = np.asarray(quant.scale, dtype=np.float32)
        if len(scales) == 1:
            scales = np.repeat(scales, channels)
        elif len(scales) != channels or quant.quantizedDimension != quantized_dimension:
            raise ValueError(f"{where}: {len(scales)} scales along dimension {quant.quantizedDimension}; expected "
                             f"per-channel scales along dimension {quantized_dimension} ({channels} channels)")
        if np.any(~np.isfinite(scales)) or np.any(scales <= 0):
            raise ValueError(f"{where}: weight scales must be finite and positive")
        limit = qp.weight_max(bits)
        if values.size and (values.min() < -limit or values.max() > limit):
            raise ValueError(f"{where}: weight value {int(values.min() if values.min() < -limit else values.max())} "
                             f"is outside [-{limit}, {limit}], the range of intunlearn's symmetric {bits}-bit "
                             f"weights")
        return values, scales, bits

    def bias(self, index, op_index, op_name, channels):
        if index < 0:
            return None
        if self.tensor_type(index) != "INT32":
            raise ValueError(f"{self.source}: op #{op_index} {op_name}: bias tensor {self.tensor_name(index)!r} is "
                             f"{self.tensor_type(index)}, expected INT32")
        raw = self.constant(index, "bias", op_index, op_name)
        bias = np.frombuffer(raw, dtype=np.int32)
        if bias.shape != (channels,):
            raise ValueError(f"{self.source}: op #{op_index} {op_name}: bias has {bias.size} values for "
                             f"{channels} channels")
        return torch.from_numpy(bias.copy())

    def add_module(self, name, module, args):
        self.root.add_module(name, module)
        return self.fx_graph.call_module(name, args)

    def fused(self, options, op_index, op_name, allowed=(None, "relu", "relu6")):
        kinds = self.s.ActivationFunctionType
        mapping = {kinds.NONE: None, kinds.RELU: "relu", kinds.RELU6: "relu6"}
        code = options.fusedActivationFunction
        if code not in mapping or mapping[code] not in allowed:
            raise NotImplementedError(f"{self.source}: op #{op_index} {op_name}: fused activation "
                                      f"{_names(kinds).get(code, code)} is not supported")
        return mapping[code]

    def layer_state(self, name, layer, weight, scales, bias, q_in, q_out, bits):
        """weight: int8 values in PyTorch's layout."""
        weight = torch.from_numpy(np.array(weight, dtype=np.int8, order="C"))
        stored = ops.pack_int4(weight.flatten(1)) if bits == 4 else weight
        scale_tensor = torch.from_numpy(scales.astype(np.float32))
        multiplier, shift = _runtime_multipliers(q_in.scale, scales, q_out.scale)
        act_min, act_max = _runtime_activation_range(layer.activation, q_out)
        self.qsets[name] = {"input": q_in, "output": q_out}
        entries = {"weight_bits": torch.tensor(bits), "weight": stored, "weight_shape": torch.tensor(weight.shape),
                   "weight_scale": scale_tensor, "multiplier": multiplier, "shift": shift,
                   "act_min": torch.tensor(act_min), "act_max": torch.tensor(act_max)}
        if bias is not None:
            entries["bias"] = bias
        self.layer_entries[name] = entries

    def qparams_state(self, name, **prefixes):
        self.qsets[name] = prefixes

    def load_integers(self, module: fx.GraphModule):
        """Put the file's integers into the built structure through load_integer_state_dict,
        which checks them: the state starts from the structure's own integer_state_dict (its
        entries and their layout), with the file's activation parameters set first and the
        weighted layers' integers replaced by the file's."""
        modules = dict(module.named_modules())
        for name, prefixes in self.qsets.items():
            for prefix, q in prefixes.items():
                modules[name].set_qparams(prefix, q)
        state = {key: value.clone() for key, value in integer_state_dict(module).items()}
        for name, entries in self.layer_entries.items():
            for key, value in entries.items():
                full = f"{name}.{key}"
                if full not in state:
                    raise ValueError(f"{self.source}: {name}: the integer state has no entry {key!r}")
                state[full] = value.to(state[full].dtype) if key in ("weight_bits", "act_min", "act_max") else value
        load_integer_state_dict(module, state)

    def run(self):
        s = self.s
        operators = list(self.graph.operators or [])
        inputs, outputs = list(self.graph.inputs), list(self.graph.outputs)
        if len(inputs) != 1 or len(outputs) != 1:
            raise NotImplementedError(f"{self.source}: {len(inputs)} inputs and {len(outputs)} outputs; "
                                      f"load_tflite reads single-input, single-output models")
        input_index, output_index = inputs[0], outputs[0]
        # a leading QUANTIZE (float input) and trailing SOFTMAX / DEQUANTIZE are stripped
        if operators and self.op_name(operators[0]) == "QUANTIZE" and operators[0].inputs[0] == input_index:
            self.notes.append(f"stripped the leading QUANTIZE (float input {self.tensor_type(input_index)}); the "
                              f"model takes the int8 tensor {self.tensor_name(operators[0].outputs[0])!r} "
                              f"(intunlearn's InputQuantizer quantizes real inputs the same way)")
            input_index = operators[0].outputs[0]
            operators = operators[1:]
            self.offset = 1
        else:
            self.offset = 0
        while operators and self.op_name(operators[-1]) in ("SOFTMAX", "DEQUANTIZE") \
                and operators[-1].outputs[0] == output_index:
            name = self.op_name(operators[-1])
            output_index = operators[-1].inputs[0]
            self.notes.append(f"stripped the trailing {name} (op #{len(operators) - 1 + self.offset}): the model "
                              f"outputs its int8 input {self.tensor_name(output_index)!r}, the logits "
                              f"({name.lower()} is applied by whoever reads them)")
            operators = operators[:-1]
        self.input_index, self.output_index = input_index, output_index
        q_in = self.activation_tensor(input_index, "input", 0, "model input")
        in_shape = self.shape(input_index)
        x = self.fx_graph.placeholder("x")
        quantizer = self.add_module("input_quantizer", InputQuantizer(), (x,))
        self.qparams_state("input_quantizer", output=q_in)
        values = {input_index: _Value(quantizer, in_shape, q_in)}
        for position, operator in enumerate(operators):
            op_index = position + self.offset
            name = self.op_name(operator)
            handler = getattr(self, f"op_{name.lower()}", None)
            if handler is None:
                raise NotImplementedError(f"{self.source}: op #{op_index} {name} is not supported by load_tflite "
                                          f"(supported: {', '.join(SUPPORTED_OPS)})")
            for index in operator.inputs[:1]:
                if index not in values:
                    raise NotImplementedError(f"{self.source}: op #{op_index} {name} reads tensor "
                                              f"{self.tensor_name(index)!r}, which no earlier supported op makes")
            values[operator.outputs[0]] = handler(operator, op_index, name, values)
        if output_index not in values:
            raise NotImplementedError(f"{self.source}: the output tensor is not computed by the supported ops")
        result = values[output_index]
        if result.pad != (0, 0, 0, 0):
            raise NotImplementedError(f"{self.source}: the model ends in a PAD")
        self.fx_graph.output(result.node)
        module = fx.GraphModule(self.root, self.fx_graph, class_name="TFLiteModel")
        self.load_integers(module)
        torch_shape = in_shape[1:] if len(in_shape) != 4 else (in_shape[3], in_shape[1], in_shape[2])
        module.meta["tflite_input_shape"] = tuple(torch_shape)
        module.meta["tflite_notes"] = list(self.notes)
        return module.eval()

    # ---- operators ---------------------------------------------------------------------------

    def _conv(self, operator, op_index, name, values, depthwise):
        s = self.s
        x = values[operator.inputs[0]]
        if x.transposed:
            raise NotImplementedError(f"{self.source}: op #{op_index} {name} reads a TRANSPOSE output (only a "
                                      f"flattening RESHAPE or FULLY_CONNECTED may)")
        q_in = self.activation_tensor(operator.inputs[0], "input", op_index, name)
        out_index = operator.outputs[0]
        q_out = self.activation_tensor(out_index, "output", op_index, name)
        options = operator.builtinOptions
        activation = self.fused(options, op_index, name)
        if len(x.shape) != 4:
            raise NotImplementedError(f"{self.source}: op #{op_index} {name} on a {len(x.shape)}-D input")
        weights, scales, bits = self.weights(operator.inputs[1], op_index, name, 3 if depthwise else 0)
        _, h, w, in_channels = x.shape
        if depthwise:
            _, kh, kw, out_channels = weights.shape
            torch_weight = weights[0].transpose(2, 0, 1)[:, None]  # [OC, 1, KH, KW]
            groups = in_channels
            if out_channels % in_channels:
                raise ValueError(f"{self.source}: op #{op_index} {name}: {out_channels} output channels for "
                                 f"{in_channels} inputs")
        else:
            out_channels, kh, kw, per_group = weights.shape
            torch_weight = weights.transpose(0, 3, 1, 2)  # OIHW
            groups = 1
            if per_group != in_channels:
                raise NotImplementedError(f"{self.source}: op #{op_index} {name}: grouped convolution "
                                          f"({in_channels} input channels, filters of {per_group})")
        stride = (options.strideH, options.strideW)
        dilation = (options.dilationHFactor or 1, options.dilationWFactor or 1)
        padding = self._padding(options.padding, (h, w), (kh, kw), stride, dilation)
        top, bottom, left, right = (a + b for a, b in zip(padding, x.pad))
        bias = self.bias(operator.inputs[2] if len(operator.inputs) > 2 else -1, op_index, name, out_channels)
        module_name = f"op{op_index}_{'depthwise' if depthwise else 'conv'}"
        layer = QuantConv2d(in_channels, out_channels, (kh, kw), stride, (top, bottom, left, right), dilation,
                            groups, bias is not None, weight_bits=bits, activation=activation, rounding=self.rounding)
        node = self.add_module(module_name, layer, (x.node,))
        self.layer_state(module_name, layer, torch_weight, scales, bias, q_in, q_out, bits)
        return _Value(node, self.shape(out_index), q_out)

    def _padding(self, mode, in_hw, kernel, stride, dilation):
        if mode == self.s.Padding.VALID:
            return (0, 0, 0, 0)
        (_, top, bottom), (_, left, right) = (_same_padding(in_hw[i], kernel[i], stride[i], dilation[i])
                                              for i in range(2))
        return (top, bottom, left, right)

    def op_conv_2d(self, operator, op_index, name, values):
        return self._conv(operator, op_index, name, values, depthwise=False)

    def op_depthwise_conv_2d(self, operator, op_index, name, values):
        return self._conv(operator, op_index, name, values, depthwise=True)

    def op_fully_connected(self, operator, op_index, name, values):
        x = values[operator.inputs[0]]
        self.no_pad(x, op_index, name, flattens=True)
        q_in = self.activation_tensor(operator.inputs[0], "input", op_index, name)
        out_index = operator.outputs[0]
        q_out = self.activation_tensor(out_index, "output", op_index, name)
        options = operator.builtinOptions
        activation = self.fused(options, op_index, name)
        if options.keepNumDims or options.weightsFormat != 0:
            raise NotImplementedError(f"{self.source}: op #{op_index} {name}: keep_num_dims or a shuffled "
                                      f"weights format")
        weights, scales, bits = self.weights(operator.inputs[1], op_index, name, 0)
        out_features, in_features = weights.shape
        node = x.node
        if len(x.shape) != 2:  # FULLY_CONNECTED flattens its input itself
            node = self._flatten(x, op_index)
        if math.prod(x.shape[1:]) != in_features:
            raise ValueError(f"{self.source}: op #{op_index} {name}: input {list(x.shape)} for {in_features} features")
        bias = self.bias(operator.inputs[2] if len(operator.inputs) > 2 else -1, op_index, name, out_features)
        module_name = f"op{op_index}_linear"
        layer = QuantLinear(in_features, out_features, bias is not None, weight_bits=bits, activation=activation,
                            rounding=self.rounding)
        node = self.add_module(module_name, layer, (node,))
        self.layer_state(module_name, layer, weights, scales, bias, q_in, q_out, bits)
        return _Value(node, self.shape(out_index), q_out)

    def no_pad(self, x, op_index, name, flattens=False):
        if x.pad != (0, 0, 0, 0):
            raise NotImplementedError(f"{self.source}: op #{op_index} {name} reads a PAD output (only a "
                                      f"convolution may)")
        if x.transposed and not flattens:
            raise NotImplementedError(f"{self.source}: op #{op_index} {name} reads a TRANSPOSE output (only a "
                                      f"flattening RESHAPE or FULLY_CONNECTED may)")

    def _flatten(self, x: _Value, op_index):
        node = x.node
        if len(x.shape) == 4 and not x.transposed and x.shape[3] != 1 and x.shape[1] * x.shape[2] != 1:
            node = self.fx_graph.call_method("permute", (node, 0, 2, 3, 1))  # NCHW -> TFLite's NHWC order
        return self.fx_graph.call_method("flatten", (node, 1))

    def op_reshape(self, operator, op_index, name, values):
        x = values[operator.inputs[0]]
        self.no_pad(x, op_index, name, flattens=True)
        out_index = operator.outputs[0]
        q_out = self.activation_tensor(out_index, "output", op_index, name)
        if (q_out.scale, q_out.zero_point) != (x.q.scale, x.q.zero_point):
            raise NotImplementedError(f"{self.source}: op #{op_index} {name} changes the quantization parameters")
        out_shape = self.shape(out_index)
        if len(out_shape) != 2 or out_shape[0] != x.shape[0] or math.prod(out_shape) != math.prod(x.shape):
            raise NotImplementedError(f"{self.source}: op #{op_index} {name}: only reshapes to [batch, features] "
                                      f"are supported, got {list(x.shape)} -> {list(out_shape)}")
        node = x.node if len(x.shape) == 2 else self._flatten(x, op_index)
        return _Value(node, out_shape, x.q)

    def op_add(self, operator, op_index, name, values):
        if len(operator.inputs) != 2 or any(i not in values for i in operator.inputs):
            raise NotImplementedError(f"{self.source}: op #{op_index} {name}: ADD of two computed tensors only")
        a, b = (values[i] for i in operator.inputs)
        self.no_pad(a, op_index, name)
        self.no_pad(b, op_index, name)
        if a.shape != b.shape:
            raise NotImplementedError(f"{self.source}: op #{op_index} {name}: ADD with broadcasting "
                                      f"({list(a.shape)} + {list(b.shape)})")
        qa = self.activation_tensor(operator.inputs[0], "input", op_index, name)
        qb = self.activation_tensor(operator.inputs[1], "input", op_index, name)
        q_out = self.activation_tensor(operator.outputs[0], "output", op_index, name)
        activation = self.fused(operator.builtinOptions, op_index, name, (None, "relu"))
        module_name = f"op{op_index}_add"
        node = self.add_module(module_name, QuantAdd(activation, rounding=self.rounding), (a.node, b.node))
        self.qparams_state(module_name, a=qa, b=qb, output=q_out)
        return _Value(node, self.shape(operator.outputs[0]), q_out)

    def _pool_common(self, operator, op_index, name, values):
        x = values[operator.inputs[0]]
        self.no_pad(x, op_index, name)
        out_index = operator.outputs[0]
        q_out = self.activation_tensor(out_index, "output", op_index, name)
        if (q_out.scale, q_out.zero_point) != (x.q.scale, x.q.zero_point):
            raise NotImplementedError(f"{self.source}: op #{op_index} {name} with different input and output "
                                      f"quantization parameters")
        options = operator.builtinOptions
        self.fused(options, op_index, name, (None,))
        kernel, stride = (options.filterHeight, options.filterWidth), (options.strideH, options.strideW)
        padding = self._padding(options.padding, x.shape[1:3], kernel, stride, (1, 1))
        return x, out_index, q_out, kernel, stride, padding

    def op_average_pool_2d(self, operator, op_index, name, values):
        x, out_index, q_out, kernel, stride, padding = self._pool_common(operator, op_index, name, values)
        is_global = kernel == tuple(x.shape[1:3]) and padding == (0, 0, 0, 0)
        module = QuantAvgPool2d(None) if is_global else QuantAvgPool2d(kernel, stride, padding)
        module_name = f"op{op_index}_avgpool"
        node = self.add_module(module_name, module, (x.node,))
        self.qparams_state(module_name, output=q_out)
        return _Value(node, self.shape(out_index), q_out)

    def op_max_pool_2d(self, operator, op_index, name, values):
        x, out_index, q_out, kernel, stride, padding = self._pool_common(operator, op_index, name, values)
        if padding != (0, 0, 0, 0):
            raise NotImplementedError(f"{self.source}: op #{op_index} {name} with SAME padding")
        node = self.add_module(f"op{op_index}_maxpool", nn.MaxPool2d(kernel, stride), (x.node,))
        return _Value(node, self.shape(out_index), q_out)

    def op_transpose(self, operator, op_index, name, values):
        x = values[operator.inputs[0]]
        self.no_pad(x, op_index, name)
        q_out = self.activation_tensor(operator.outputs[0], "output", op_index, name)
        raw = self.constant(operator.inputs[1], "permutation", op_index, name)
        perm = np.frombuffer(raw, dtype=np.int32 if self.tensor_type(operator.inputs[1]) == "INT32" else np.int64)
        if len(x.shape) != 4 or perm.tolist() != [0, 3, 1, 2] or (q_out.scale, q_out.zero_point) != \
                (x.q.scale, x.q.zero_point):
            raise NotImplementedError(f"{self.source}: op #{op_index} {name}: only a TRANSPOSE of NHWC to NCHW "
                                      f"(perm [0, 3, 1, 2]) before a flatten, got perm {perm.tolist()}")
        return _Value(x.node, self.shape(operator.outputs[0]), x.q, transposed=True)

    def op_pad(self, operator, op_index, name, values):
        x = values[operator.inputs[0]]
        self.no_pad(x, op_index, name)
        q_out = self.activation_tensor(operator.outputs[0], "output", op_index, name)
        if (q_out.scale, q_out.zero_point) != (x.q.scale, x.q.zero_point) or len(x.shape) != 4:
            raise NotImplementedError(f"{self.source}: op #{op_index} {name}: only a 4-D PAD that keeps the "
                                      f"quantization parameters")
        paddings = np.frombuffer(self.constant(operator.inputs[1], "paddings", op_index, name),
                                 dtype=np.int32 if self.tensor_type(operator.inputs[1]) == "INT32" else np.int64)
        paddings = paddings.reshape(4, 2)
        if paddings[0].any() or paddings[3].any():
            raise NotImplementedError(f"{self.source}: op #{op_index} {name} pads the batch or channels")
        return _Value(x.node, self.shape(operator.outputs[0]), x.q,
                      (int(paddings[1][0]), int(paddings[1][1]), int(paddings[2][0]), int(paddings[2][1])))


def load_tflite(path_or_bytes, *, source: str | None = None) -> fx.GraphModule:
    """A .tflite model (a path, or the file's bytes) as a quantized torch model in integer
    arithmetic: its forward takes real-valued NCHW inputs like a model from intunlearn.quantize
    and computes bit for bit what TFLite Micro computes on the file. `model.meta` holds
    "tflite_input_shape" and "tflite_notes" (stripped ops). source: what error messages call
    the model given as bytes (e.g. the file they were read from; default "<bytes>")."""
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        data, source = bytes(path_or_bytes), source or "<bytes>"
    else:
        path = Path(path_or_bytes)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such .tflite file")
        data, source = path.read_bytes(), str(path)
    return _Importer(data, source).run()


# ---- running the file ------------------------------------------------------------------------


def input_qparams(model: fx.GraphModule) -> qp.ActivationQParams:
    for module in model.modules():
        if isinstance(module, InputQuantizer):
            return module.output_qparams
    raise ValueError("the model has no InputQuantizer")


def output_qparams(model: fx.GraphModule) -> qp.ActivationQParams:
    modules = dict(model.named_modules())
    output = next(node for node in model.graph.nodes if node.op == "output")
    return _producer_qparams(output.args[0], modules)


def integer_forward(model: fx.GraphModule, codes: torch.Tensor) -> torch.Tensor:
    """The model's integer forward on int8 input codes in TFLite's layout (NHWC for images),
    returning the int8 output codes: what the .tflite file computes, computed by intunlearn."""
    q_in, q_out = input_qparams(model), output_qparams(model)
    codes = torch.as_tensor(codes)
    if codes.dtype != torch.int8:
        raise TypeError(f"codes must be int8, got {codes.dtype}")
    x = codes.permute(0, 3, 1, 2) if codes.dim() == 4 else codes
    real = qp.dequantize_activation(x.contiguous(), q_in.scale, q_in.zero_point)
    modes = {m: m.mode for m in model.modules() if isinstance(m, QuantModule)}
    training = model.training
    set_arithmetic(model, "integer")
    model.eval()
    device = next((t.device for t in model.state_dict().values()), torch.device("cpu"))
    try:
        with torch.no_grad():
            y = model(real.to(device)).cpu()
    finally:
        for module, mode in modes.items():
            module.mode = mode
        model.train(training)
    y_codes = qp.round_half_away(y.double() / q_out.scale) + q_out.zero_point
    if y_codes.dim() == 4:
        y_codes = y_codes.permute(0, 2, 3, 1)
    return y_codes.clamp(-128, 127).to(torch.int8)


def quantize_inputs(model: fx.GraphModule, x: torch.Tensor) -> torch.Tensor:
    """Real NCHW inputs -> int8 codes in TFLite's layout, as the model's InputQuantizer rounds."""
    q = input_qparams(model)
    codes = qp.quantize(x, q.scale, q.zero_point, -128, 127)
    return codes.permute(0, 2, 3, 1).contiguous() if codes.dim() == 4 else codes


RUNTIMES = ("tflm", "litert", "litert-ref", "litert-nodelegate")


def runtime_available(runtime: str) -> bool:
    try:
        if runtime == "tflm":
            from tflite_micro.python.tflite_micro import runtime as _  # noqa: F401
        else:
            from ai_edge_litert import interpreter as _  # noqa: F401,F811
    except ImportError:
        return False
    return True


def run_runtime(runtime: str, data: bytes, codes: np.ndarray, preserve_tensor: int | None = None,
                input_q: qp.ActivationQParams | None = None) -> np.ndarray:
    """Run the .tflite flatbuffer `data` on int8 inputs [N, ...] one batch-sized slice at a time
    in TFLM ("tflm") or LiteRT ("litert": default kernels and XNNPACK delegate; "litert-ref": the
    reference kernels; "litert-nodelegate": optimized kernels without XNNPACK); the int8 outputs.
    preserve_tensor: return that tensor instead of the model output (a stripped op's input).
    input_q: the int8 codes' parameters, for a file with a float input (a leading QUANTIZE),
    which is fed the codes' real values (exactly on the grid, so QUANTIZE recovers the codes)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    codes = np.ascontiguousarray(codes, dtype=np.int8)

    def feed(chunk, dtype):
        if np.dtype(dtype) == np.float32 and input_q is not None:
            return (np.float64(input_q.scale) * (chunk.astype(np.float64) - input_q.zero_point)).astype(np.float32)
        return chunk
    if runtime == "tflm":
        from tflite_micro.python.tflite_micro import runtime as tflm

        config = tflm.InterpreterConfig.kPreserveAllTensors if preserve_tensor is not None \
            else tflm.InterpreterConfig.kAllocationRecording
        interpreter = tflm.Interpreter.from_bytes(data, arena_size=max(len(data) * 10, 1 << 20),
                                                  intrepreter_config=config)
        batch = interpreter.get_input_details(0)["shape"][0]

        in_dtype = interpreter.get_input_details(0)["dtype"]

        def invoke(chunk):
            interpreter.set_input(feed(chunk, in_dtype), 0)
            interpreter.invoke()
            if preserve_tensor is not None:
                return np.array(interpreter.GetTensor(preserve_tensor, 0)["tensor_data"]).copy()
            return np.array(interpreter.get_output(0)).copy()
    else:
        from ai_edge_litert import interpreter as litert

        resolver = {"litert": litert.OpResolverType.AUTO, "litert-ref": litert.OpResolverType.BUILTIN_REF,
                    "litert-nodelegate": litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}[runtime]
        interpreter = litert.Interpreter(model_content=data, experimental_op_resolver_type=resolver,
                                         experimental_preserve_all_tensors=preserve_tensor is not None,
                                         num_threads=1)
        interpreter.allocate_tensors()
        in_detail = interpreter.get_input_details()[0]
        out_index = interpreter.get_output_details()[0]["index"] if preserve_tensor is None else preserve_tensor
        batch = in_detail["shape"][0]

        def invoke(chunk):
            interpreter.set_tensor(in_detail["index"], feed(chunk, in_detail["dtype"]))
            interpreter.invoke()
            return interpreter.get_tensor(out_index).copy()
    if len(codes) % batch:
        raise ValueError(f"{len(codes)} inputs do not fill batches of {batch}")
    return np.concatenate([invoke(codes[i:i + batch]) for i in range(0, len(codes), batch)])


@dataclass
class Comparison:
    runtime: str
    identical: int
    total: int
    max_lsb: int
    error: str | None = None

    def __str__(self):
        if self.error:
            return f"{self.runtime}: not run ({self.error})"
        verdict = "bit-identical" if self.identical == self.total else f"max difference {self.max_lsb} LSB"
        return f"{self.runtime}: {self.identical}/{self.total} outputs bit-identical ({verdict})"


def compare(data: bytes, model: fx.GraphModule, codes: torch.Tensor, runtime: str,
            output_tensor: int | None = None) -> Comparison:
    """Run `data` in `runtime` and `model` in intunlearn on the same int8 inputs; per sample,
    whether the int8 outputs agree bit for bit."""
    expected = integer_forward(model, codes).numpy().astype(np.int32)
    try:
        got = run_runtime(runtime, data, codes.numpy(), output_tensor, input_qparams(model)).astype(np.int32)
    except (RuntimeError, ValueError) as error:
        return Comparison(runtime, 0, len(codes), -1, f"{type(error).__name__}: {error}")
    got = got.reshape(expected.shape)
    diff = np.abs(got - expected).reshape(len(codes), -1)
    same = int((diff.max(axis=1) == 0).sum()) if diff.size else len(codes)
    return Comparison(runtime, same, len(codes), int(diff.max()) if diff.size else 0)


def stripped_output_tensor(data: bytes) -> int | None:
    """The index of the tensor load_tflite takes as the output, when it stripped trailing ops."""
    importer = _Importer(data, "<bytes>")
    importer.run()
    original = int(importer.graph.outputs[0])
    return None if importer.output_index == original else int(importer.output_index)


# ---- measuring the runtimes --------------------------------------------------------------------


def _table_models():
    """(row label, float model, input shape, weight formats) of single-op models."""
    conv = lambda *a, **k: nn.Sequential(nn.Conv2d(*a, **k), nn.ReLU())  # noqa: E731

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 1)

        def forward(self, x):
            return torch.relu(x + self.conv(x))

    weighted = ("int8", "int4 packed", "int4 in int8")
    return [
        ("CONV_2D 3x3, SAME, ReLU", conv(4, 8, 3, padding=1), (4, 8, 8), weighted),
        ("PAD + CONV_2D 3x3 stride 2", nn.Conv2d(4, 8, 3, stride=2, padding=1), (4, 8, 8), weighted),
        ("DEPTHWISE_CONV_2D 3x3, multiplier 2, ReLU6",
         nn.Sequential(nn.Conv2d(4, 8, 3, padding=1, groups=4), nn.ReLU6()), (4, 8, 8), weighted),
        ("FULLY_CONNECTED (per-channel)", nn.Sequential(nn.Flatten(), nn.Linear(64, 16)), (1, 8, 8), weighted),
        ("ADD + ReLU (after a 1x1 CONV_2D)", Residual(), (4, 8, 8), ("int8",)),
        ("AVERAGE_POOL_2D 2x2", nn.AvgPool2d(2), (4, 8, 8), ("-",)),
        ("AVERAGE_POOL_2D global + RESHAPE", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()), (4, 8, 8), ("-",)),
        ("MAX_POOL_2D 2x2", nn.MaxPool2d(2), (4, 8, 8), ("-",)),
    ]


def runtime_table(samples: int = 200, seed: int = 0, runtimes=RUNTIMES) -> list[dict]:
    """Which ops and weight formats each runtime computes bit-exactly: per single-op model,
    weight format and runtime, the fraction of `samples` random int8 inputs whose outputs equal
    intunlearn's with double rounding and with single rounding (or the runtime's error)."""
    from intunlearn.convert import quantize

    formats = {"int8": (8, "auto"), "int4 packed": (4, "packed"), "int4 in int8": (4, "int8"), "-": (8, "auto")}
    rows = []
    for label, float_model, shape, weight_formats in _table_models():
        for fmt in weight_formats:
            bits, int4_format = formats[fmt]
            row = {"op": label, "weights": fmt, "runtimes": {}}
            blobs, models = {}, {}
            for rounding in ("double", "single"):
                torch.manual_seed(seed)
                calibration = torch.rand(64, *shape) * 2 - 0.5
                model = round_scales_to_float32(
                    quantize(nn.Sequential(copy.deepcopy(float_model)).eval(), weight_bits=bits,
                                                      calibration=calibration, rounding=rounding))
                blobs[rounding], _ = export_tflite_bytes(model, input_shape=shape, int4_format=int4_format)
                models[rounding] = model
            generator = torch.Generator().manual_seed(seed)
            tflite_shape = _tflite_shape((samples, *shape), len(shape) == 3)
            codes = torch.randint(-128, 128, tflite_shape, generator=generator, dtype=torch.int8)
            for runtime in runtimes:
                if not runtime_available(runtime):
                    continue
                results = {rounding: compare(blobs["double"], models[rounding], codes, runtime)
                           for rounding in ("double", "single")}
                row["runtimes"][runtime] = {rounding: (r.identical, r.total, r.max_lsb, r.error)
                                            for rounding, r in results.items()}
            rows.append(row)
    return rows


def format_runtime_table(rows) -> str:
    runtimes = [r for r in RUNTIMES if any(r in row["runtimes"] for row in rows)]
    header = "| op | weights | " + " | ".join(runtimes) + " |"
    lines = [header, "|" + " --- |" * (len(runtimes) + 2)]
    for row in rows:
        cells = []
        for runtime in runtimes:
            entry = row["runtimes"].get(runtime)
            if entry is None:
                cells.append("not installed")
                continue
            (d_same, total, d_lsb, error), (s_same, _, s_lsb, _) = entry["double"], entry["single"]
            if error:
                cells.append("refused")
            elif d_same == total and s_same == total:
                cells.append("exact (both roundings)")
            elif d_same == total:
                cells.append("exact")
            elif s_same == total:
                cells.append("exact with single rounding")
            else:
                cells.append(f"{d_same}/{total} ({s_same}/{total} single), <= {min(d_lsb, s_lsb)} LSB")
        lines.append(f"| {row['op']} | {row['weights']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _main(argv=None) -> int:
    """python -m intunlearn.tflite [SAMPLES]: measure and print the runtime table."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m intunlearn.tflite",
        description="Measure which single-op models and weight formats each installed runtime computes "
                    "bit-exactly against intunlearn (the README's runtime table).")
    parser.add_argument("samples", nargs="?", type=positive_int_option, default=200,
                        help="random int8 inputs per model (default: %(default)s)")
    args = parser.parse_args(argv)
    measured = runtime_table(args.samples)
    print(format_runtime_table(measured))
    for row in measured:
        for runtime, entry in row["runtimes"].items():
            if entry["double"][3]:
                print(f"{row['op']} / {row['weights']} / {runtime}: {entry['double'][3]}")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(_main())
