"""Bad state, bad data and concurrent runs at the run's boundary (issue 17, items 1-5 and 7): each
case of the issue reproduced, then either one clear error (naming the file or folder, what is
wrong and what to do) before any training, or the earlier results kept.

The state loaders are fuzzed: progress.json and a cached model, truncated, with a flipped bit or
with an entry of another type, either load to exactly what was saved or are refused with the
named error, never anything else."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import intunlearn.io
from intunlearn.cli import main
from intunlearn.data import Dataset, check_labels
from intunlearn.io import FileLock
from intunlearn.unlearning import engine
from intunlearn.executors import LocalExecutor
from intunlearn.unlearning.engine import (LOCK_NAME, Experiment, Interrupted, data_fingerprint, progress_checksum,
                                          read_progress, run_experiment)
from intunlearn.unlearning.study import StudyConfig, run_study

from test_unlearning import blobs, tiny_config, tiny_dataset

FUZZ = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def config(**changes):
    """The smallest run: two epochs of pre-training, one of QAT, fine-tuning for one epoch."""
    values = dict(methods=("retrain", "ft"), pretrain_epochs=2, qat_epochs=1)
    values.update(changes)
    return tiny_config(**values)


class Trainings:
    """Counts the models trained (the engine's train calls, by description)."""

    def __init__(self, monkeypatch):
        self.calls = []
        real = engine.train

        def counting(model, x, y, settings, seed, desc=""):
            self.calls.append(desc)
            return real(model, x, y, settings, seed=seed, desc=desc)

        monkeypatch.setattr(engine, "train", counting)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished run (retrain, ft) and its cache: tests copy it."""
    root = tmp_path_factory.mktemp("finished")
    results = run_experiment(config(), root / "out", root / "cache", data=tiny_dataset(), tables=False)
    return root, results


def copy_of(finished, tmp_path) -> tuple[Path, Path]:
    root, _ = finished
    shutil.copytree(root / "out", tmp_path / "out")
    shutil.copytree(root / "cache", tmp_path / "cache")
    return tmp_path / "out", tmp_path / "cache"


def numbers(results):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in results["rows"]]


def npz_blobs(path, y=None, y_test=None):
    x, labels = blobs(2)
    x_test, labels_test = blobs(3, per_class=10)
    np.savez(path, x=(x.numpy() * 255).astype(np.uint8), y=labels.numpy() if y is None else y,
             x_test=(x_test.numpy() * 255).astype(np.uint8), y_test=labels_test.numpy() if y_test is None else y_test)
    return path


def cli_run(data_path, out, *extra):
    return main(["run", "--dataset", f"npz:{data_path}", "--model", "mlp", "--width", "8", "--methods", "retrain,ft",
                 "--epochs", "2", "--qat-epochs", "1", "--unlearn-epochs", "1", "--seed", "0",
                 "--pipelines", "integer", "--out", str(out), *extra])


# ---- 1. checked before any work: folders, labels, backend -----------------------------------------


def _read_only(monkeypatch, folder, code=errno.EROFS):
    """A folder on a read-only mount (EROFS) or without write permission (EACCES, an immutable
    folder): creating the probe file fails as it would there (the tests run as root, whom
    permissions do not stop)."""
    real = intunlearn.io._create_temporary

    def refuse(path):
        if path.name == "write-probe" and path.parent == folder:
            raise OSError(code, os.strerror(code), str(path))
        return real(path)

    monkeypatch.setattr(intunlearn.io, "_create_temporary", refuse)


@pytest.mark.parametrize("which", ["out", "cache"])
@pytest.mark.parametrize("case", ["read-only mount", "no permission", "below a regular file", "/proc"])
def test_a_folder_that_cannot_be_written_is_named_before_training(tmp_path, monkeypatch, capsys, which, case):
    trainings = Trainings(monkeypatch)
    folders = {"out": tmp_path / "out", "cache": tmp_path / "cache"}
    reason = {"read-only mount": "Read-only file system", "no permission": "Permission denied",
              "below a regular file": "is a file, not a folder", "/proc": "No such file or directory"}[case]
    if case == "read-only mount":
        _read_only(monkeypatch, folders[which])
    elif case == "no permission":
        _read_only(monkeypatch, folders[which], errno.EACCES)
    elif case == "below a regular file":
        (tmp_path / "a_file").write_text("")
        folders[which] = tmp_path / "a_file" / "sub"
    else:
        folders[which] = Path("/proc/intunlearn-test")
    data = npz_blobs(tmp_path / "blobs.npz")
    assert cli_run(data, folders["out"], "--cache-dir", str(folders["cache"])) == 2
    error = capsys.readouterr().err
    assert f"{which}: " in error and str(folders[which]) in error and reason in error
    assert "Traceback" not in error and len([line for line in error.splitlines() if "intunlearn" in line]) == 1
    assert trainings.calls == []


@pytest.mark.parametrize("labels, message", [
    (np.array([0, 1] * 79 + [2**40, 1]), "holds the label 1099511627776; labels must be class indices 0..C-1"),
    (np.array([0, 1] * 79 + [5_000_000, 1]), "holds the label 5000000"),
    (np.zeros(160, np.int64), "every label is 0: a single class"),
])
def test_impossible_labels_are_named_before_training(tmp_path, monkeypatch, capsys, labels, message):
    trainings = Trainings(monkeypatch)
    data = npz_blobs(tmp_path / "blobs.npz", y=labels, y_test=np.zeros(40, np.int64))
    assert cli_run(data, tmp_path / "out") == 2
    error = capsys.readouterr().err
    assert message in error and "blobs.npz" in error
    assert trainings.calls == []


def test_labels_must_be_a_contiguous_range_with_every_class_trained():
    data = tiny_dataset()
    gap = Dataset("gap", data.x_train, torch.where(data.y_train == 2, 3, data.y_train), data.x_test,
                  torch.where(data.y_test == 2, 3, data.y_test), 4)
    with pytest.raises(ValueError, match=r"contiguous range 0..3 .* 1 classes have none \(2\)"):
        check_labels(gap)
    one = Dataset("one", data.x_train, torch.zeros_like(data.y_train), data.x_test, data.y_test % 1, 1)
    with pytest.raises(ValueError, match="has 1 classes; expected at least 2"):
        check_labels(one)
    beyond = Dataset("beyond", data.x_train, data.y_train, data.x_test, data.y_test + 1, 4)
    with pytest.raises(ValueError, match=r"test labels lie in 1..4; expected class indices 0..3"):
        Experiment(config(), "unused", data=beyond)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the case is a CPU-only machine")
def test_triton_on_a_cpu_machine_is_refused_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    trainings = Trainings(monkeypatch)
    assert cli_run(npz_blobs(tmp_path / "blobs.npz"), tmp_path / "out", "--backend", "triton") == 2
    assert "backend 'triton' computes on CUDA devices" in capsys.readouterr().err
    assert trainings.calls == []


# ---- 2. damaged state files: progress.json ----------------------------------------------------


def _progress(out):
    return json.loads((out / "progress.json").read_text())


def _write(out, progress, sign=True):
    if sign:  # as a deliberate editor would: the checksum recomputed
        progress["checksum"] = progress_checksum(progress)
    (out / "progress.json").write_text(json.dumps(progress))


def _entry(progress):
    return progress["methods"]["ft"]


@pytest.mark.parametrize("damage, message", [
    (lambda p: p["methods"].update(ft={}), r"method 'ft' has the entries \[\]"),
    (lambda p: _entry(p)["metrics"]["integer"].update(FA="abc"), 'integer FA is "abc"; a metric is a number'),
    (lambda p: _entry(p)["metrics"]["integer"].update(FA=None), "integer FA is null; a metric is a number"),
    (lambda p: _entry(p)["metrics"]["deployed"].update(TA=12345.0), r"deployed TA is 12345.0; .* in \[0, 100\]"),
    (lambda p: _entry(p)["metrics"]["fake"].update(MIA=True), "fake MIA is true"),
    (lambda p: _entry(p)["metrics"].pop("fake"), "its metrics are for"),
    (lambda p: _entry(p).update(metrics=None), "its metrics are for NoneType"),
    (lambda p: _entry(p).update(seconds=-1), "seconds is -1, expected a number >= 0"),
    (lambda p: _entry(p).update(update_steps="x"), "update_steps is 'x'"),
    (lambda p: p.update(methods=[1]), "'config' and 'methods' must be objects"),
    (lambda p: p.update(format=7), "format 7, expected 2"),
])
def test_a_damaged_progress_entry_is_named(finished, tmp_path, damage, message, monkeypatch):
    out, cache = copy_of(finished, tmp_path)
    progress = _progress(out)
    damage(progress)
    _write(out, progress)
    trainings = Trainings(monkeypatch)
    with pytest.raises(ValueError, match=message) as error:
        run_experiment(config(), out, cache, data=tiny_dataset(), tables=False)
    assert str(out / "progress.json") in str(error.value) and "use a fresh --out" in str(error.value)
    assert trainings.calls == []


def test_an_edited_metric_is_refused_by_the_checksum(finished, tmp_path):
    out, cache = copy_of(finished, tmp_path)
    progress = _progress(out)
    _entry(progress)["metrics"]["integer"]["FA"] = 12345.0
    _write(out, progress, sign=False)
    with pytest.raises(ValueError, match="progress.json: checksum mismatch: the file is damaged or was edited"):
        run_experiment(config(), out, cache, data=tiny_dataset(), tables=False)


@pytest.mark.parametrize("case, message", [
    ("directory", r"progress.json cannot be read \(Is a directory\)"),
    ("utf-8", r"progress.json is not UTF-8 text \(byte 0"),
    ("nan", r"progress.json is not valid JSON \(NaN is not JSON\)"),
    ("array", r"progress.json is not a progress file of intunlearn run \(a JSON list"),
])
def test_a_progress_file_that_is_not_one_is_named_through_the_cli(tmp_path, capsys, case, message):
    unit = tmp_path / "out" / "units" / "seed0-integer"
    unit.mkdir(parents=True)
    path = unit / "progress.json"
    if case == "directory":
        path.mkdir()
    else:
        path.write_bytes({"utf-8": b"\xff\xfe{}", "nan": b'{"x": NaN}', "array": b"[1, 2]"}[case])
    assert cli_run(npz_blobs(tmp_path / "blobs.npz"), tmp_path / "out") == 2
    error = capsys.readouterr().err
    assert "Traceback" not in error and len([line for line in error.splitlines() if "intunlearn" in line]) == 1
    assert str(path) in error and "delete it to redo this experiment, or use a fresh --out" in error
    assert pytest.importorskip("re").search(message, error)


# ---- 2. damaged state files: cached models ----------------------------------------------------


def _cached(cache, role):
    (path,) = cache.glob(f"{role}-*.pt")
    return path


def test_a_cache_file_copied_over_another_is_refused(finished, tmp_path):
    """The issue's case: the retrained model copied over the original's made a run report the
    retrained model as the original, exit 0."""
    out, cache = copy_of(finished, tmp_path)
    shutil.rmtree(out)
    shutil.copyfile(_cached(cache, "retrain"), _cached(cache, "original"))
    with pytest.raises(ValueError, match=r"was made by another recipe \(role 'retrain', expected 'original'.*"
                                         r"a file copied or renamed in the cache; delete it to train"):
        run_experiment(config(), out, cache, data=tiny_dataset(), tables=False)


def _resave(path, change):
    payload = torch.load(path, weights_only=True)
    change(payload["state"])
    payload["checksum"] = engine._cache_checksum(payload["recipe"], payload["state"])
    torch.save(payload, path)


@pytest.mark.parametrize("change, message", [
    (lambda state: [v.zero_() for v in state.values()], "must hold finite positive scales, found 0"),
    (lambda state: [v.fill_(float("nan")) for k, v in state.items() if k.endswith("weight")], "holds NaN or inf"),
    (lambda state: [v.fill_(300) for k, v in state.items() if k.endswith("zero_point")], "must hold int8 zero"),
    (lambda state: state.pop(next(iter(state))), "does not fit the model"),
])
def test_impossible_quantization_parameters_in_a_cached_model_are_named(finished, tmp_path, change, message):
    """Zeroed tensors gave a ZeroDivisionError traceback; here the checksum is recomputed (an
    editor), so the parameters' own check must catch them."""
    out, cache = copy_of(finished, tmp_path)
    shutil.rmtree(out)
    _resave(_cached(cache, "original"), change)
    with pytest.raises(ValueError, match=f"the cached model .*original-.*pt.*{message}"):
        run_experiment(config(), out, cache, data=tiny_dataset(), tables=False)


def test_zeroed_or_truncated_cache_files_are_refused(finished, tmp_path):
    out, cache = copy_of(finished, tmp_path)
    path = _cached(cache, "original")
    payload = torch.load(path, weights_only=True)
    for value in payload["state"].values():
        value.zero_()
    torch.save(payload, path)
    experiment = Experiment(config(), cache, data=tiny_dataset())
    with pytest.raises(ValueError, match="checksum mismatch: the file is damaged or was edited"):
        experiment.original()
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="cannot be loaded"):
        experiment.original()


# ---- the state loaders, fuzzed -------------------------------------------------------------------


def _fuzz_progress(finished, tmp_path, content: bytes):
    """read_progress on `content`: the saved entries exactly, or a ValueError naming the file."""
    root, _ = finished
    path = tmp_path / "progress.json"
    path.write_bytes(content)
    c = config(threads=LocalExecutor().threads)  # what the run that wrote it recorded
    data = tiny_dataset()
    fingerprint = data_fingerprint(data.x_train, data.y_train, data.x_test, data.y_test)
    expected = read_progress(root / "out" / "progress.json", c, fingerprint, "random")
    try:
        loaded = read_progress(path, c, fingerprint, "random")
    except ValueError as error:
        assert str(path) in str(error)
        return
    assert json.dumps(loaded, sort_keys=True) == json.dumps(expected, sort_keys=True)


@pytest.fixture
def progress_bytes(finished):
    return (finished[0] / "out" / "progress.json").read_bytes()


@FUZZ
@given(cut=st.floats(0, 1, exclude_max=True))
def test_fuzz_a_truncated_progress_file_is_refused(finished, tmp_path_factory, progress_bytes, cut):
    _fuzz_progress(finished, tmp_path_factory.mktemp("p"), progress_bytes[:int(cut * len(progress_bytes))])


@FUZZ
@given(where=st.floats(0, 1, exclude_max=True), bit=st.integers(0, 7))
def test_fuzz_a_flipped_bit_in_progress_is_refused_or_harmless(finished, tmp_path_factory, progress_bytes, where, bit):
    data = bytearray(progress_bytes)
    data[int(where * len(data))] ^= 1 << bit
    _fuzz_progress(finished, tmp_path_factory.mktemp("p"), bytes(data))


def _leaves(value, path=()):
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, (*path, key))
    elif isinstance(value, list) and value:
        for index, item in enumerate(value):
            yield from _leaves(item, (*path, index))
    yield path


def _json_type(value) -> str:
    return {bool: "bool", int: "number", float: "number"}.get(type(value), type(value).__name__)


REPLACEMENTS = [None, True, 0, 1.5, "x", [], {}, [1.0], {"a": 1}]


@FUZZ
@given(data=st.data())
def test_fuzz_a_changed_progress_value_is_refused_or_harmless(finished, tmp_path_factory, progress_bytes, data):
    """Any value (or whole object) replaced by one of another type, or a number by a negative
    one, the checksum recomputed as an editor would: refused by name, or (where it changed
    nothing) the same entries. (A number changed within its range cannot be told from a
    measured one once the checksum is recomputed.)"""
    progress = json.loads(progress_bytes)
    paths = [p for p in _leaves(progress) if p and p[0] != "checksum"]
    target = data.draw(st.sampled_from(paths))
    parent = progress
    for key in target[:-1]:
        parent = parent[key]
    old = parent[target[-1]]
    candidates = [r for r in REPLACEMENTS if _json_type(r) != _json_type(old)]
    parent[target[-1]] = data.draw(st.sampled_from(candidates + ([-1] if _json_type(old) == "number" else [])))
    progress["checksum"] = progress_checksum(progress)
    _fuzz_progress(finished, tmp_path_factory.mktemp("p"), json.dumps(progress).encode())


@pytest.fixture
def cached_original(finished):
    path = _cached(finished[0] / "cache", "original")
    experiment = Experiment(config(), finished[0] / "cache", data=tiny_dataset())
    return path.read_bytes(), {k: v.clone() for k, v in experiment.original().state_dict().items()}


def _fuzz_cache(finished, tmp_path, content: bytes, expected):
    """The original model from a cache whose file holds `content`: exactly the saved model, or a
    ValueError naming the file."""
    cache = tmp_path / "cache"
    shutil.copytree(finished[0] / "cache", cache)
    path = _cached(cache, "original")
    path.write_bytes(content)
    experiment = Experiment(config(), cache, data=tiny_dataset())
    try:
        model = experiment.original()
    except ValueError as error:
        assert f"the cached model {path}" in str(error) and "delete it to train the model again" in str(error)
        return
    state = model.state_dict()
    assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in expected)


@FUZZ
@given(cut=st.floats(0, 1, exclude_max=True))
def test_fuzz_a_truncated_cached_model_is_refused(finished, tmp_path_factory, cached_original, cut):
    content, expected = cached_original
    _fuzz_cache(finished, tmp_path_factory.mktemp("c"), content[:int(cut * len(content))], expected)


@FUZZ
@given(where=st.floats(0, 1, exclude_max=True), bit=st.integers(0, 7))
def test_fuzz_a_flipped_bit_in_a_cached_model_is_refused_or_harmless(finished, tmp_path_factory, cached_original,
                                                                     where, bit):
    content, expected = cached_original
    data = bytearray(content)
    data[int(where * len(data))] ^= 1 << bit
    _fuzz_cache(finished, tmp_path_factory.mktemp("c"), bytes(data), expected)


@FUZZ
@given(data=st.data())
def test_fuzz_a_changed_cached_entry_is_refused_or_harmless(finished, tmp_path_factory, cached_original, data):
    """A state entry replaced by one of another dtype or shape, or a payload field by another
    type, the checksum recomputed: refused by name, or the same model. (Values changed within
    their dtype and range cannot be told from trained ones once the checksum is recomputed;
    impossible ones are the test above.)"""
    content, expected = cached_original
    import io

    payload = torch.load(io.BytesIO(content), weights_only=True)
    if data.draw(st.booleans()):
        key = data.draw(st.sampled_from(sorted(payload["state"])))
        value = payload["state"][key]
        candidates = [torch.tensor(0.5), torch.tensor(7), torch.zeros(3, dtype=value.dtype), value.double(),
                      value.float(), value.to(torch.int32), value.to(torch.int64), value.flatten()[:1].clone(),
                      value.reshape(-1, 1)]
        payload["state"][key] = data.draw(st.sampled_from(
            [c for c in candidates if (c.dtype, c.shape) != (value.dtype, value.shape)]))
    else:
        key = data.draw(st.sampled_from(["format", "recipe", "state"]))
        payload[key] = data.draw(st.sampled_from([None, 1, "x", [], {}, torch.zeros(2)]))
    if isinstance(payload["recipe"], str) and isinstance(payload["state"], dict) and all(
            isinstance(v, torch.Tensor) for v in payload["state"].values()):
        payload["checksum"] = engine._cache_checksum(payload["recipe"], payload["state"])
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    _fuzz_cache(finished, tmp_path_factory.mktemp("c"), buffer.getvalue(), expected)


# ---- 5. Ctrl-C and what hard kills leave ----------------------------------------------------------


def test_ctrl_c_prints_where_the_run_stopped_and_the_rerun_resumes(tmp_path, monkeypatch, capsys):
    from intunlearn.unlearning.methods.simple import FineTune

    data = npz_blobs(tmp_path / "blobs.npz")
    real = FineTune.unlearn
    monkeypatch.setattr(FineTune, "unlearn", lambda self, model, task: (_ for _ in ()).throw(KeyboardInterrupt))
    assert cli_run(data, tmp_path / "out") == 130
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == (f"intunlearn run: interrupted in experiment 1 of 1 (seed0-integer): unlearning with ft (method 2 "
                     f"of 2); the finished work is kept in {tmp_path / 'out'}: run the same command to resume")
    leftovers = [p.name for p in (tmp_path / "out").rglob(".*")] + [p.name for p in (tmp_path / "cache").rglob(".*")]
    assert leftovers == []  # no temporary file, no lock
    monkeypatch.setattr(FineTune, "unlearn", real)
    progress = json.loads((tmp_path / "out" / "units" / "seed0-integer" / "progress.json").read_text())
    assert set(progress["methods"]) == {"original", "retrain"}
    trainings = Trainings(monkeypatch)
    assert cli_run(data, tmp_path / "out") == 0
    assert trainings.calls == []  # the models came from the cache
    resumed = json.loads((tmp_path / "out" / "units" / "seed0-integer" / "progress.json").read_text())
    assert resumed["methods"]["retrain"] == progress["methods"]["retrain"] and "ft" in resumed["methods"]


def test_ctrl_c_in_the_library_raises_interrupted_with_the_place(finished, tmp_path, monkeypatch):
    out, cache = copy_of(finished, tmp_path)
    monkeypatch.setattr(Experiment, "original", lambda self: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(Interrupted) as error:
        run_study(StudyConfig(base=config(), seeds=(0, 1), pipelines=("integer",)), tmp_path / "study", cache,
                  data=tiny_dataset())
    assert error.value.where == "experiment 1 of 2 (seed0-integer): training (or loading) the original model"
    assert not (tmp_path / "study" / LOCK_NAME).exists()


def test_temporaries_left_by_a_hard_kill_are_removed_at_the_start(finished, tmp_path):
    out, cache = copy_of(finished, tmp_path)
    original = _cached(cache, "original")
    original.unlink()  # so that this run trains it again, holding its lock
    stale = [out / ".progress.json.0123456789ab.tmp", cache / f".{original.name}.0123456789ab.tmp"]
    foreign = [cache / f".{_cached(cache, 'retrain').name}.0123456789ab.tmp", out / ".notes.tmp"]
    for path in stale + foreign:
        path.write_bytes(b"half")
    # a method added to the finished run needs the original model, which is trained again
    run_experiment(config(methods=("retrain", "ft", "ga")), out, cache, data=tiny_dataset(), tables=False)
    assert not any(path.exists() for path in stale)
    # another process may be writing the retrained model (not locked by this run), and .notes.tmp
    # is not a name write_bytes_atomic gives
    assert all(path.exists() for path in foreign)


# ---- 4. a changed configuration ------------------------------------------------------------------


def test_adding_a_method_keeps_the_finished_ones(finished, tmp_path, monkeypatch):
    out, cache = copy_of(finished, tmp_path)
    before = _progress(out)["methods"]
    trainings = Trainings(monkeypatch)
    results = run_experiment(config(methods=("retrain", "ft", "ga")), out, cache, data=tiny_dataset(), tables=False)
    assert trainings.calls == []
    assert [row["method"] for row in results["rows"]] == ["original", "retrain", "ft", "ga"]
    assert [row for row in results["rows"][:3]] == finished[1]["rows"]  # seconds included: not run again
    after = _progress(out)["methods"]
    assert set(after) == {"original", "retrain", "ft", "ga"} and all(after[name] == before[name] for name in before)


def test_another_configuration_is_refused_saying_what_differs(finished, tmp_path, monkeypatch, capsys):
    out, cache = copy_of(finished, tmp_path)
    before = (out / "progress.json").read_bytes()
    trainings = Trainings(monkeypatch)
    with pytest.raises(ValueError, match=r"holds the finished methods ft, original, retrain of a run with another "
                                         r"configuration \(lr: 0.05 then, 0.01 now, set by --lr\); rerun with the "
                                         r"earlier options to keep them, or use a fresh --out"):
        run_experiment(config(lr=0.01), out, cache, data=tiny_dataset(), tables=False)
    assert (out / "progress.json").read_bytes() == before and trainings.calls == []


def test_a_progress_file_of_the_previous_format_is_refused_by_name(finished, tmp_path):
    """Written before progress was keyed without the methods (format 1): its methods ran with the
    defaults of their time, so it is refused, saying why, even when every other option matches
    (and, as before, when they differ: it does not say which)."""
    out, cache = copy_of(finished, tmp_path)
    progress = _progress(out)
    data = tiny_dataset()
    fingerprint = data_fingerprint(data.x_train, data.y_train, data.x_test, data.y_test)
    options = {k: v for k, v in dataclasses.asdict(config()).items() if k not in engine.LATER_OPTIONS}
    legacy = {"config_hash": engine.config_hash({**options, "data": fingerprint}),
              "methods": progress["methods"]}
    (out / "progress.json").write_text(json.dumps(legacy))
    with pytest.raises(ValueError, match="whose methods had other defaults"):
        run_experiment(config(), out, cache, data=data, tables=False)
    with pytest.raises(ValueError, match="an earlier intunlearn's progress file does not say which"):
        run_experiment(config(methods=("retrain", "ft", "ga")), out, cache, data=data, tables=False)


# ---- 3. one writer per output folder; a shared cache ---------------------------------------------


def test_a_second_run_into_the_same_out_stops_at_once_naming_the_holder(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    holder = FileLock(out / LOCK_NAME).acquire()  # as another process holds it (flock: per open file)
    try:
        trainings = Trainings(monkeypatch)
        assert cli_run(npz_blobs(tmp_path / "blobs.npz"), out) == 2
        error = capsys.readouterr().err
        assert f"out: {out} is in use by another intunlearn run (process {os.getpid()} on " in error
        assert "wait for it to finish, or use another --out" in error and trainings.calls == []
    finally:
        holder.release()


def test_a_lock_left_by_a_dead_process_is_taken_over(finished, tmp_path, capsys):
    out, cache = copy_of(finished, tmp_path)
    (out / LOCK_NAME).write_text(json.dumps({"pid": 999999999, "host": "gone", "started": "yesterday",
                                             "command": "intunlearn run"}))
    results = run_experiment(config(), out, cache, data=tiny_dataset(), tables=False)
    assert numbers(results) == numbers(finished[1])
    assert "left locked by process 999999999 on gone" in capsys.readouterr().err
    assert not (out / LOCK_NAME).exists()


def test_a_model_another_process_is_training_is_waited_for_not_trained_again(finished, tmp_path, monkeypatch,
                                                                            capsys):
    """Two runs share a cache: while one trains the original (holding its lock), the other waits,
    then loads what the first saved."""
    _, cache = copy_of(finished, tmp_path)
    original = _cached(cache, "original")
    saved = original.read_bytes()
    original.unlink()
    lock = FileLock(original.with_name(f".{original.name}.lock")).acquire()
    waiting, describe = threading.Event(), FileLock.describe
    monkeypatch.setattr(FileLock, "describe", staticmethod(lambda holder: waiting.set() or describe(holder)))

    def finish_training():
        waiting.wait(timeout=60)
        time.sleep(0.2)
        intunlearn.io.write_bytes_atomic(original, saved)
        lock.release()

    trainings = Trainings(monkeypatch)
    other = threading.Thread(target=finish_training)
    other.start()
    try:
        results = run_experiment(config(), tmp_path / "second", cache, data=tiny_dataset(), tables=False)
    finally:
        other.join()
    assert trainings.calls == []  # neither the original nor the retrained model was trained again
    assert numbers(results) == numbers(finished[1])
    assert f"waiting for process {os.getpid()}" in capsys.readouterr().err


def test_a_lock_held_by_another_process_and_then_killed_hard(finished, tmp_path):
    """Another process holds --out: the run stops naming its PID; once that process is killed
    (SIGKILL: no clean-up), its lock file is found dead and taken over."""
    import signal
    import subprocess
    import sys

    out, cache = copy_of(finished, tmp_path)
    child = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom intunlearn.io import FileLock\n"
        f"FileLock({str(out / LOCK_NAME)!r}).acquire()\nprint('held', flush=True)\ntime.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        with pytest.raises(ValueError, match=f"is in use by another intunlearn run \\(process {child.pid} on "):
            run_experiment(config(), out, cache, data=tiny_dataset(), tables=False)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert (out / LOCK_NAME).exists()  # a hard kill leaves the file
    assert numbers(run_experiment(config(), out, cache, data=tiny_dataset(), tables=False)) == numbers(finished[1])
    assert not (out / LOCK_NAME).exists()
