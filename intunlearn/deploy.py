"""The deployable integer state of a quantized model: what would be flashed to the device.

`integer_state_dict(model)` exports, per quantized module, the int8 (or packed int4) weights,
int32 biases, fixed-point multipliers and shifts, zero points and clamp limits, plus the real
scales they were derived from. Every value is a tensor, so the file loads with
`torch.load(weights_only=True)`. `load_integer_state_dict` puts such a state back into a
converted model of the same structure; its integer forward then reproduces the exported one.
Layers kept in float are exported as float weights (they are not integer layers).

Loading trusts nothing: the entries must be exactly those the model's own state has, scales
finite and positive, zero points int8, and every derived integer (weights, bias, multipliers,
clamp limits, the residual adds' rescaling) must follow from the stored scales as export
derives it. A saved file also carries a SHA-256 checksum of its entries, so a flipped bit or a
truncated file is refused with the file's name.
"""

from __future__ import annotations

import hashlib
import io
import math
import pickle
import zipfile

import torch

from intunlearn import ops
from intunlearn import qparams as qp
from intunlearn.convert import input_links
from intunlearn.io import check_output_file, write_bytes_atomic
from intunlearn.modules import InputQuantizer, QuantAdd, QuantAvgPool2d, _WeightedLayer, require_quantized

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
    """Flat {"<module>.<entry>": tensor} of every quantized module's integer parameters.
    ValueError for a model without any (a float model: convert it with intunlearn.quantize)."""
    require_quantized(model, "integer_state_dict")
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
    require_quantized(model, "load_integer_state_dict")
    if not isinstance(state, dict) or not all(isinstance(key, str) for key in state):
        raise TypeError(f"state must be a dict of named tensors (from integer_state_dict), got "
                        f"{type(state).__name__}")
    version = state.get("format_version")
    if not isinstance(version, torch.Tensor) or version.numel() != 1 or int(version) != FORMAT_VERSION:
        raise ValueError(f"state: unknown format_version {version}, expected {FORMAT_VERSION}")
    modules = _quantized_modules(model)
    names = {key.rsplit(".", 1)[0] for key in state if "." in key}
    if names - set(modules):
        raise ValueError(f"state has entries for modules the model lacks: {sorted(names - set(modules))}")
    if set(modules) - names:
        raise ValueError(f"state lacks the quantized modules {sorted(set(modules) - names)} of the model")
    expected = set(integer_state_dict(model))
    missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing:
        raise ValueError(f"state lacks the entry {missing[0]!r} (missing: {missing})")
    if extra:
        raise ValueError(f"state has entries the model does not: {extra}")
    before = {key: value.clone() for key, value in model.state_dict().items()}
    try:
        for name in sorted(names):
            _load_module(modules[name], name, state)
        _check_links(model)
    except BaseException:  # Ctrl-C included: never leave a half-loaded model
        model.load_state_dict(before)
        raise


def _check_links(model) -> None:
    """In a converted model each layer reads its producer's output grid: a state that gives
    them different parameters would make the integer forward read codes on the wrong grid."""
    if not isinstance(model, torch.fx.GraphModule):
        return
    names = {module: name for name, module in model.named_modules()}
    for consumer, prefix, producer in input_links(model):
        if consumer.qparams(prefix) != producer.output_qparams:
            raise ValueError(f"{names[consumer]}: state gives its {prefix} parameters "
                             f"{consumer.qparams(prefix)}, but its producer {names[producer]} "
                             f"outputs {producer.output_qparams}: the state is damaged or was edited")


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

    def scalar(key):
        value = entry(key)
        if value.numel() != 1:
            raise ValueError(f"state entry {name}.{key!r} must hold one value, got shape {tuple(value.shape)}")
        return value.item()

    def q(prefix):
        scale, zero_point = scalar(f"{prefix}_scale"), scalar(f"{prefix}_zero_point")
        if not (isinstance(scale, float) and math.isfinite(scale) and scale > 0):
            raise ValueError(f"state entry '{name}.{prefix}_scale' must be a finite positive float, got {scale}")
        if not (isinstance(zero_point, int) and qp.ACTIVATION_MIN <= zero_point <= qp.ACTIVATION_MAX):
            raise ValueError(f"state entry '{name}.{prefix}_zero_point' must be an int8 zero point in "
                             f"[-128, 127], got {zero_point}")
        return qp.ActivationQParams(scale, zero_point)

    if isinstance(module, _WeightedLayer):
        _load_layer(module, name, entry, q)
        if not module.pinned_float:
            _check_derived(name, {"act_min": scalar("act_min"), "act_max": scalar("act_max")},
                           dict(zip(("act_min", "act_max"), module.activation_range())))
    elif isinstance(module, QuantAdd):
        module.set_input_qparams("a", q("a"))
        module.set_input_qparams("b", q("b"))
        module.set_output_qparams(q("output"))
        derived = {key: value for key, value in qp.add_params(q("a"), q("b"), q("output")).items()
                   if key.endswith(("multiplier", "shift")) or key == "left_shift"}
        act_min, act_max = module.activation_range()
        _check_derived(name, {key: scalar(key) for key in (*derived, "act_min", "act_max")},
                       {**derived, "act_min": act_min, "act_max": act_max})
    else:
        module.set_output_qparams(q("output"))


def _check_derived(name, stored: dict, derived: dict) -> None:
    """Integers that export derives from the scales must be the ones derived from them again."""
    wrong = {key: (stored[key], derived[key]) for key in derived if stored[key] != derived[key]}
    if wrong:
        details = ", ".join(f"{key} {got} (the scales give {want})" for key, (got, want) in wrong.items())
        raise ValueError(f"{name}: stored {details}: the state is damaged or was edited")


def _load_layer(layer, name, entry, q):
    if int(entry("weight_bits")) != layer.weight_bits:
        raise ValueError(f"{name}: state has {int(entry('weight_bits'))}-bit weights, the model {layer.weight_bits}-bit")
    kind = 1 if layer.weight.dim() == 2 else 2
    if int(entry("kind")) != kind:
        raise ValueError(f"{name}: state has layer kind {int(entry('kind'))}, the model {kind} "
                         f"(1 linear, 2 convolution)")
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
        if not bool((torch.isfinite(scales) & (scales > 0)).all()):
            raise ValueError(f"state entry '{name}.weight_scale' must be finite and positive")
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


CHECKSUM = "checksum"


def state_checksum(state: dict[str, torch.Tensor]) -> torch.Tensor:
    """SHA-256 (uint8 [32]) of every entry but the checksum: names, dtypes, shapes and bytes."""
    digest = hashlib.sha256()
    for key in sorted(k for k in state if k != CHECKSUM):
        value = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return torch.tensor(list(digest.digest()), dtype=torch.uint8)


def save_integer_state(model: torch.nn.Module, path) -> None:
    """Write integer_state_dict(model) with its checksum to `path` atomically (torch.save format).
    ValueError naming `path` if no file can be written there (a folder, a folder below a
    file, a read-only place), checked first."""
    require_quantized(model, "save_integer_state")
    check_output_file(path, "path")
    state = integer_state_dict(model)
    state[CHECKSUM] = state_checksum(state)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_bytes_atomic(path, buffer.getvalue())


def load_integer_state(path) -> dict[str, torch.Tensor]:
    """Read a saved integer state safely (weights_only=True) and check it is whole: a dict of
    tensors whose checksum matches. Returns it without the checksum, for
    load_integer_state_dict. A file that is not one raises ValueError naming it."""
    try:
        state = torch.load(path, weights_only=True)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except (EOFError, OSError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError,
            UnicodeDecodeError, TypeError, KeyError, IndexError, AttributeError) as error:
        raise ValueError(f"{path}: not a readable integer state (truncated or not written by "
                         f"save_integer_state): {type(error).__name__}: {error}") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise ValueError(f"{path}: not an integer state (expected a dict of named tensors)")
    stored = state.pop(CHECKSUM, None)
    if stored is None:
        raise ValueError(f"{path}: the integer state has no checksum (save it with save_integer_state)")
    if stored.dtype != torch.uint8 or not torch.equal(stored, state_checksum(state)):
        raise ValueError(f"{path}: checksum mismatch: the file is damaged or was edited")
    return state
