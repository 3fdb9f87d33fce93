"""Bad state and bad data at the library's boundary (issue 17, item 6): each case gets one clear
error naming what is wrong, before any expensive work, and never a silent wrong result.

The saved integer state is fuzzed: a truncated file, a flipped bit or a changed entry is either
refused with a named error or (where the change is invisible to the model) loads to a model that
computes exactly what the original computes."""

from __future__ import annotations

import io

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import intunlearn
import intunlearn.io
from intunlearn.deploy import CHECKSUM, state_checksum


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3))


def conv_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU6(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))


CALIBRATION = torch.randn(32, 12, generator=torch.Generator().manual_seed(1))
_MODEL = intunlearn.quantize(mlp(), weight_bits=4, calibration=CALIBRATION)
_INPUT = torch.randn(6, 12, generator=torch.Generator().manual_seed(2))
_EXPECTED = _MODEL(_INPUT)


def saved_bytes(model=_MODEL) -> bytes:
    buffer = io.BytesIO()
    state = intunlearn.integer_state_dict(model)
    state[CHECKSUM] = state_checksum(state)
    torch.save(state, buffer)
    return buffer.getvalue()


_SAVED = saved_bytes()


def fresh_target():
    return intunlearn.quantize(mlp(seed=5), weight_bits=4, calibration=CALIBRATION[:8])


# ---- quantize: the model, its weights and the calibration data --------------------------------


def test_quantize_names_a_model_that_is_not_a_module():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got str"):
        intunlearn.quantize("model", calibration=CALIBRATION)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_quantize_names_nan_or_inf_in_the_calibration_data(bad):
    data = CALIBRATION.clone()
    data[40 % len(data), 3] = bad
    with pytest.raises(ValueError, match="calibration batch 0 contains NaN or inf"):
        intunlearn.quantize(mlp(), calibration=data)
    batches = [CALIBRATION[:8], data]
    with pytest.raises(ValueError, match="calibration batch 1 contains NaN or inf"):
        intunlearn.quantize(mlp(), calibration=batches)


def test_quantize_names_calibration_batches_that_are_not_float_tensors():
    with pytest.raises(TypeError, match="calibration batch 0 must be a floating tensor, got torch.int64"):
        intunlearn.quantize(mlp(), calibration=torch.ones(4, 12, dtype=torch.int64))


def test_quantize_names_a_nan_weight():
    model = mlp()
    with torch.no_grad():
        model[2].weight[1, 4] = float("nan")
    with pytest.raises(ValueError, match="model parameter '2.weight' contains NaN or inf"):
        intunlearn.quantize(model, calibration=CALIBRATION)


def test_quantize_refuses_a_batch_norm_it_cannot_fold():
    """Zero running variance with eps 0: 1/sqrt(var + eps) is infinite."""
    model = conv_net()
    model[1].eps = 0.0
    with torch.no_grad():
        model[1].running_var[2] = 0.0
    with pytest.raises(ValueError, match="running_var \\+ eps <= 0"):
        intunlearn.quantize(model, calibration=torch.randn(8, 1, 6, 6))


@pytest.mark.parametrize("mode", ["integer", "fake"])
def test_a_nan_input_is_refused_not_quantized(mode):
    model = intunlearn.quantize(mlp(), calibration=CALIBRATION, mode=mode)
    x = _INPUT.clone()
    x[0, 0] = float("nan")
    with pytest.raises(ValueError, match="model input contains NaN or inf"):
        model(x)


@pytest.mark.parametrize("mode", ["integer", "fake", "float"])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.bool])
def test_an_integer_input_is_refused_not_cast(mode, dtype):
    """Integer data would be quantized and then cast back to its own integer dtype (all 0 for
    uint8 pixels): refused, asking for a floating tensor."""
    model = intunlearn.quantize(conv_net(), calibration=torch.rand(16, 1, 8, 8), mode=mode)
    with pytest.raises(TypeError, match=rf"model input must be a floating tensor .* got {dtype}"):
        model(torch.ones(2, 1, 8, 8, dtype=dtype))


def test_a_float64_input_gives_what_the_same_values_in_float32_give():
    """float64 holds every float32 exactly: the same real inputs, so the same integer codes."""
    model = intunlearn.quantize(conv_net(), calibration=torch.rand(16, 1, 8, 8))
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    assert torch.equal(model(x.double()), model(x))


@pytest.mark.parametrize("channels", [3, 2])
def test_calibration_of_the_wrong_shape_is_named_with_what_the_model_takes(channels):
    with pytest.raises(ValueError, match=r"calibration batch 0 of shape \(8, %d, 8, 8\) does not fit the model; "
                                         r"the model takes samples of shape \[1, H, W\]" % channels):
        intunlearn.quantize(conv_net(), calibration=torch.rand(8, channels, 8, 8))
    with pytest.raises(ValueError, match=r"calibration batch 0 of shape \(4, 10\) .* 12 inputs"):
        intunlearn.quantize(mlp(), calibration=torch.rand(4, 10))


# ---- calls that need a quantized model; where files are written -------------------------------


def test_a_float_model_is_refused_where_a_quantized_one_is_needed(tmp_path):
    path = tmp_path / "model.int.pt"
    for call in (lambda: intunlearn.save_integer_state(mlp(), path), lambda: intunlearn.set_arithmetic(mlp(), "fake"),
                 lambda: intunlearn.integer_state_dict(mlp()),
                 lambda: intunlearn.load_integer_state_dict(mlp(), intunlearn.integer_state_dict(_MODEL))):
        with pytest.raises(ValueError, match=r"the model \(Sequential\) has no quantized layers; convert it with "
                                             r"intunlearn.quantize first"):
            call()
    assert not path.exists()


def test_save_integer_state_names_a_path_it_cannot_write(tmp_path):
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ValueError, match=f"path: {tmp_path} is a directory"):
        intunlearn.save_integer_state(_MODEL, tmp_path)
    with pytest.raises(ValueError, match=f"path: cannot write {tmp_path / 'a-file' / 'sub'}: "
                                         f"{tmp_path / 'a-file'} is a file, not a folder"):
        intunlearn.save_integer_state(_MODEL, tmp_path / "a-file" / "sub")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_check_output_file_accepts_a_new_file_in_a_new_folder_and_leaves_no_trace(tmp_path):
    from intunlearn.io import check_output_file

    target = tmp_path / "new" / "deeper" / "out.json"
    assert check_output_file(target, "--json") == target
    assert list(tmp_path.iterdir()) == []  # the folders it probed are removed again
    (tmp_path / "old.json").write_text("{}")
    assert check_output_file(str(tmp_path / "old.json"), "--json") == tmp_path / "old.json"
    for bad in ("", None):
        with pytest.raises(ValueError, match="--json: expected a file path"):
            check_output_file(bad, "--json")


def test_the_atomic_writer_names_the_callers_path_not_its_temporary_file(tmp_path, monkeypatch):
    from intunlearn.io import write_bytes_atomic

    (tmp_path / "a-file").write_text("")
    with pytest.raises(IsADirectoryError, match=f"cannot write {tmp_path}") as caught:
        write_bytes_atomic(tmp_path, b"x")
    assert caught.value.filename == str(tmp_path)
    with pytest.raises(FileExistsError) as caught:
        write_bytes_atomic(tmp_path / "a-file" / "sub", b"x")
    assert caught.value.filename == str(tmp_path / "a-file" / "sub")

    def refuse(source, target):
        raise PermissionError(13, "Permission denied", source)

    monkeypatch.setattr(intunlearn.io.os, "replace", refuse)
    with pytest.raises(PermissionError) as caught:
        write_bytes_atomic(tmp_path / "out.bin", b"x")
    assert caught.value.filename == str(tmp_path / "out.bin") and ".tmp" not in str(caught.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # the temporary file is removed


# ---- the saved integer state --------------------------------------------------------------------


def test_an_empty_or_truncated_file_is_named(tmp_path):
    path = tmp_path / "model.int.pt"
    for content in (b"", _SAVED[: len(_SAVED) // 2], b"not a torch file at all"):
        path.write_bytes(content)
        with pytest.raises(ValueError, match=f"{path.name}: not a readable integer state"):
            intunlearn.load_integer_state(path)


def test_a_file_without_its_checksum_is_refused(tmp_path):
    path = tmp_path / "model.int.pt"
    torch.save(intunlearn.integer_state_dict(_MODEL), path)
    with pytest.raises(ValueError, match="has no checksum"):
        intunlearn.load_integer_state(path)


def test_load_integer_state_dict_names_a_state_that_is_not_a_dict():
    with pytest.raises(TypeError, match="state must be a dict of named tensors .* got list"):
        intunlearn.load_integer_state_dict(fresh_target(), [1, 2, 3])


def _state():
    return intunlearn.integer_state_dict(_MODEL)


def _first_layer(state):
    return sorted(key.rsplit(".", 1)[0] for key in state if key.endswith(".weight"))[0]


@pytest.mark.parametrize("entry, value, message", [
    ("output_scale", float("nan"), "output_scale' must be a finite positive float"),
    ("output_scale", 0.0, "output_scale' must be a finite positive float"),
    ("output_scale", -0.5, "output_scale' must be a finite positive float"),
    ("output_zero_point", 1000, "output_zero_point' must be an int8 zero point"),
    ("input_zero_point", -129, "input_zero_point' must be an int8 zero point"),
    ("act_min", -100, "stored act_min -100"),
    ("kind", 2, "layer kind 2, the model 1"),
])
def test_load_integer_state_dict_refuses_impossible_values(entry, value, message):
    state = _state()
    key = f"{_first_layer(state)}.{entry}"
    state[key] = torch.tensor(value, dtype=state[key].dtype)
    target = fresh_target()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        intunlearn.load_integer_state_dict(target, state)
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())  # left as it was


def test_load_integer_state_dict_refuses_extra_and_missing_entries():
    state = _state()
    layer = _first_layer(state)
    with pytest.raises(ValueError, match=f"entries the model does not: \\['{layer}.surprise'\\]"):
        intunlearn.load_integer_state_dict(fresh_target(), {**state, f"{layer}.surprise": torch.tensor(1)})
    del state[f"{layer}.act_max"]
    with pytest.raises(ValueError, match=f"state lacks the entry '{layer}.act_max'"):
        intunlearn.load_integer_state_dict(fresh_target(), state)


def test_a_residual_adds_rescaling_must_follow_from_its_scales():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(12, 12), nn.Linear(12, 3)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)) + x)

    torch.manual_seed(0)
    model = intunlearn.quantize(Residual(), calibration=CALIBRATION)
    state = intunlearn.integer_state_dict(model)
    key = next(k for k in state if k.endswith(".a_multiplier"))
    state[key] = state[key] + 1
    with pytest.raises(ValueError, match="a_multiplier .* the state is damaged or was edited"):
        intunlearn.load_integer_state_dict(intunlearn.quantize(Residual(), calibration=CALIBRATION), state)


def _load_bytes(tmp_path, data: bytes):
    path = tmp_path / "fuzzed.int.pt"
    path.write_bytes(data)
    target = fresh_target()
    intunlearn.load_integer_state_dict(target, intunlearn.load_integer_state(path))
    return target


@settings(max_examples=40, deadline=None)
@given(position=st.integers(0, len(_SAVED) * 8 - 1))
def test_a_flipped_bit_is_refused_or_harmless(tmp_path_factory, position):
    """Every single-bit flip of a saved file: a named error, or (a bit torch.save does not
    read back, e.g. in zip padding) the same model."""
    data = bytearray(_SAVED)
    data[position // 8] ^= 1 << (position % 8)
    try:
        target = _load_bytes(tmp_path_factory.mktemp("flip"), bytes(data))
    except ValueError as error:
        assert "fuzzed.int.pt" in str(error) or "state" in str(error)
        return
    assert torch.equal(target(_INPUT), _EXPECTED)


@settings(max_examples=20, deadline=None)
@given(length=st.integers(0, len(_SAVED) - 1))
def test_a_truncated_file_is_refused(tmp_path_factory, length):
    with pytest.raises(ValueError, match="fuzzed.int.pt"):
        _load_bytes(tmp_path_factory.mktemp("cut"), _SAVED[:length])


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_a_changed_entry_is_refused_or_loads_the_same_model(tmp_path_factory, data):
    """Entries replaced by other types, shapes or values (checksum recomputed, as an editor
    would): load_integer_state_dict either refuses with a named error or reproduces the model."""
    state = _state()
    key = data.draw(st.sampled_from(sorted(state)))
    value = state[key]
    replacement = data.draw(st.sampled_from([
        torch.tensor(0.5), torch.tensor(7), torch.zeros(3, dtype=value.dtype), value.double(),
        value.float() if value.is_floating_point() else value.to(torch.int32),
        value.flatten()[:1].clone(), value.clone() + (1 if not value.dtype == torch.bool else 0),
    ]))
    state[key] = replacement
    target = fresh_target()
    try:
        intunlearn.load_integer_state_dict(target, state)
    except (ValueError, TypeError) as error:
        assert str(error)
        return
    assert torch.equal(target(_INPUT), _EXPECTED)
