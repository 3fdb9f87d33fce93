"""The deployable integer state of a quantized model: what would be flashed to the device.

`integer_state_dict(model)` exports, per quantized module, the int8 (or packed int4) weights,
int32 biases, fixed-point multipliers and shifts, zero points and clamp limits, plus the real
scales they were derived from. Every value is a tensor, so the file loads with
`torch.load(weights_only=True)`. `load_integer_state_dict` puts such a state back into a
converted model of the same structure; its integer forward then reproduces the exported one.
Layers kept in float are exported as float weights (they are not integer layers).
"""

from __future__ import annotations

import io
import math

import torch

from intunlearn import ops
from intunlearn import qparams as qp
from intunlearn.io import write_bytes_atomic
from intunlearn.modules import InputQuantizer, QuantAdd, QuantAvgPool2d, _WeightedLayer

FORMAT_VERSION = 1


def _scalar(value, dtype=torch.int64):
    return torch.tensor(value, dtype=dtype)


def _qparams_entries(prefix, q: qp.ActivationQParams):
    return {f"{prefix}_scale": _scalar(q.scale, torch.float64), f"{prefix}_zero_point": _scalar(q.zero_point)}


def _layer_state(layer: _WeightedLayer) -> dict:
    q_in, q_out = layer.input_qparams, layer.output_qparams
    state = {"kind": _scalar(1 if layer.weight.dim() == 2 else 2), "weight_bits": _scalar(layer.weight_bits),
             **_qparams_entries("input", q_in), **_qparams_entries("output", q_out)}
    if layer.pinned_float:
        state["float_weight"] = layer.weight.detach().clone()
        if layer.bias is not None:
            state["float_bias"] = layer.bias.detach().clone()
        return state
    w_q, b_q, multiplier, shift = qp.integer_params(layer.weight, layer.bias, layer.weight_scale,
                                                  q_in.scale, q_out.scale, layer.weight_bits, layer.backend)
    act_min, act_max = layer.activation_range()
    state.update(weight=ops.pack_int4(w_q.flatten(1)) if layer.weight_bits == 4 else w_q,
                 weight_shape=torch.tensor(layer.weight.shape), weight_scale=layer.weight_scale.detach().clone(),
                 multiplier=multiplier, shift=shift, act_min=_scalar(act_min), act_max=_scalar(act_max))
    if b_q is not None:
        state["bias"] = b_q
    return state


def integer_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Flat {"<module>.<entry>": tensor} of every quantized module's integer parameters."""
    state = {"format_version": _scalar(FORMAT_VERSION)}
    for name, module in model.named_modules():
        entries = {}
        if isinstance(module, _WeightedLayer):
            entries = _layer_state(module)
        elif isinstance(module, QuantAdd):
            qa, qb, qy = module.input_qparams("a"), module.input_qparams("b"), module.output_qparams
            entries = {**_qparams_entries("a", qa), **_qparams_entries("b", qb), **_qparams_entries("output", qy)}
            entries.update({key: _scalar(value) for key, value in qp.add_params(qa, qb, qy).items()
                            if key.endswith(("multiplier", "shift")) or key == "left_shift"})
            act_min, act_max = module.activation_range()
            entries.update(act_min=_scalar(act_min), act_max=_scalar(act_max))
        elif isinstance(module, (InputQuantizer, QuantAvgPool2d)):
            entries = _qparams_entries("output", module.output_qparams)
        state.update({f"{name}.{key}": value for key, value in entries.items()})
    return state


def _quantized_modules(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    kinds = (_WeightedLayer, QuantAdd, InputQuantizer, QuantAvgPool2d)
    return {name: module for name, module in model.named_modules() if isinstance(module, kinds)}


def load_integer_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load an exported integer state into a converted model of the same structure, in place.

    Every quantized module of the model must have its entries in the state and no other
    module may appear; each loaded layer must reproduce the stored integers (weights, bias,
    multipliers) exactly. On any error the model is left as it was."""
    if int(state.get("format_version", -1)) != FORMAT_VERSION:
        raise ValueError(f"state: unknown format_version {state.get('format_version')}, expected {FORMAT_VERSION}")
    modules = _quantized_modules(model)
    names = {key.rsplit(".", 1)[0] for key in state if "." in key}
    if names - set(modules):
        raise ValueError(f"state has entries for modules the model lacks: {sorted(names - set(modules))}")
    if set(modules) - names:
        raise ValueError(f"state lacks the quantized modules {sorted(set(modules) - names)} of the model")
    before = {key: value.clone() for key, value in model.state_dict().items()}
    try:
        for name in sorted(names):
            _load_module(modules[name], name, state)
    except BaseException:  # Ctrl-C included: never leave a half-loaded model
        model.load_state_dict(before)
        raise


def _load_module(module, name, state):
    def entry(key, dtype=None):
        full = f"{name}.{key}"
        if full not in state:
            raise ValueError(f"state lacks the entry {full!r}")
        value = state[full]
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"state entry {full!r} must be a tensor, got {type(value).__name__}")
        if dtype is not None and value.dtype not in dtype:
            raise ValueError(f"state entry {full!r} must be a tensor of dtype "
                             f"{' or '.join(map(str, dtype))}, got {value.dtype}")
        return value

    def q(prefix):
        return qp.ActivationQParams(float(entry(f"{prefix}_scale")), int(entry(f"{prefix}_zero_point")))

    if isinstance(module, _WeightedLayer):
        _load_layer(module, name, entry, q)
    elif isinstance(module, QuantAdd):
        module.set_input_qparams("a", q("a"))
        module.set_input_qparams("b", q("b"))
        module.set_output_qparams(q("output"))
    else:
        module.set_output_qparams(q("output"))


def _load_layer(layer, name, entry, q):
    if int(entry("weight_bits")) != layer.weight_bits:
        raise ValueError(f"{name}: state has {int(entry('weight_bits'))}-bit weights, the model {layer.weight_bits}-bit")
    layer.set_input_qparams(q("input"))
    layer.set_output_qparams(q("output"))
    with torch.no_grad():
        if layer.pinned_float:  # a layer kept in float is stored as float weights
            _copy_exact(layer.weight, entry("float_weight"), f"{name}.float_weight")
            if layer.bias is not None:
                _copy_exact(layer.bias, entry("float_bias"), f"{name}.float_bias")
            return
        shape = tuple(entry("weight_shape").tolist())
        if shape != tuple(layer.weight.shape):
            raise ValueError(f"{name}: state has weights of shape {shape}, the model {tuple(layer.weight.shape)}")
        values = entry("weight", (torch.uint8,) if layer.weight_bits == 4 else (torch.int8,))
        length = math.prod(shape[1:])
        stored = (shape[0], (length + 1) // 2) if layer.weight_bits == 4 else shape
        if tuple(values.shape) != stored:
            raise ValueError(f"state entry '{name}.weight' must have shape {stored}, got {tuple(values.shape)}")
        if layer.weight_bits == 4:
            values = ops.unpack_int4(values, length)
        scales = entry("weight_scale", (torch.float32, torch.float64))
        _copy_exact(layer.weight_scale, scales, f"{name}.weight_scale")
        layer.weight.copy_(values.reshape(shape).float() * scales.reshape((-1,) + (1,) * (len(shape) - 1)))
        if layer.bias is not None:
            bias_scale = q("input").scale * scales.double()
            layer.bias.copy_((entry("bias", (torch.int32,)).double() * bias_scale).float())
    w_q, b_q, multiplier, shift = qp.integer_params(layer.weight, layer.bias, layer.weight_scale,
                                                    q("input").scale, q("output").scale, layer.weight_bits,
                                                    layer.backend)
    if not torch.equal(w_q.flatten(1), values.reshape(shape[0], -1)):
        raise ValueError(f"{name}: the stored weights are not reproduced by the stored scales")
    if b_q is not None and not torch.equal(b_q, entry("bias")):
        worst = int((b_q.long() - entry("bias").long()).abs().argmax())
        raise ValueError(f"{name}: the stored int32 bias {int(entry('bias')[worst])} (channel {worst}) "
                         f"does not survive the float32 latent bias at its scale (it would become "
                         f"{int(b_q[worst])}); biases beyond 2**24 need a coarser scale")
    if not (torch.equal(multiplier, entry("multiplier", (torch.int32,)))
            and torch.equal(shift, entry("shift", (torch.int32,)))):
        raise ValueError(f"{name}: the stored multipliers do not follow from the stored scales")


def _copy_exact(target: torch.Tensor, source: torch.Tensor, name: str) -> None:
    if tuple(source.shape) != tuple(target.shape) or not source.is_floating_point():
        raise ValueError(f"state entry {name!r} must be a floating tensor of shape "
                         f"{tuple(target.shape)}, got {source.dtype} {tuple(source.shape)}")
    target.copy_(source)


def save_integer_state(model: torch.nn.Module, path) -> None:
    """Write integer_state_dict(model) to `path` atomically (torch.save format)."""
    buffer = io.BytesIO()
    torch.save(integer_state_dict(model), buffer)
    write_bytes_atomic(path, buffer.getvalue())


def load_integer_state(path) -> dict[str, torch.Tensor]:
    """Read a saved integer state safely (weights_only=True)."""
    return torch.load(path, weights_only=True)
