"""What a resumed run keeps and what it refuses, and options that a run would otherwise ignore:
each case first as a user met it (a silent wrong result, or a refusal after the training), then
a clear error naming the option before any work, or the work the option asks for."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from pathlib import Path

import pytest
import torch

import intunlearn
from intunlearn import tflite
from intunlearn.cli import _export_summary, build_parser, main
from intunlearn.executors import default_threads, make_executor
from intunlearn.models import build_model
from intunlearn.unlearning import engine
from intunlearn.unlearning.engine import (ExperimentConfig, data_fingerprint, progress_config, read_progress,
                                          run_experiment, write_progress)
from intunlearn.unlearning.forget import parse_forget
from intunlearn.unlearning.study_report import format_report

from test_unlearning import tiny_config, tiny_dataset, tiny_trained_model


@functools.cache
def deployed_bytes(seed: int) -> bytes:
    """A .tflite file of the tiny task's model (4-bit weights, 4x4 inputs, 4 classes); each seed
    another model."""
    data = tiny_dataset()
    model = tflite.round_scales_to_float32(tiny_trained_model(data.x_train, data.y_train, seed=seed))
    return tflite.export_tflite_bytes(model, input_shape=data.input_shape)[0]


def tflite_config(path, **changes):
    values = dict(model=f"tflite:{path}", methods=("ft",), arithmetic="integer", pretrain_epochs=1, qat_epochs=1)
    values.update(changes)
    return tiny_config(**values)


def models_in(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.glob("*.pt")) if cache.exists() else []


# ---- 1. the --model tflite: file is part of what a progress file is keyed on ---------------------


def test_a_changed_tflite_file_is_refused_on_resume_naming_it(tmp_path):
    path = tmp_path / "m.tflite"
    path.write_bytes(deployed_bytes(0))
    run_experiment(tflite_config(path), tmp_path / "out", tmp_path / "cache", data=tiny_dataset(), tables=False)
    before = (tmp_path / "out" / "progress.json").read_bytes()
    path.write_bytes(deployed_bytes(1))  # another model under the same name
    with pytest.raises(ValueError, match=rf"the file {path} of --model tflite:{path} has changed: its contents are "
                                         rf"not the model the finished methods unlearned"):
        run_experiment(tflite_config(path), tmp_path / "out", tmp_path / "cache", data=tiny_dataset(), tables=False)
    assert (tmp_path / "out" / "progress.json").read_bytes() == before
    saved = json.loads(before)["config"]["tflite_sha256"]
    assert saved == hashlib.sha256(deployed_bytes(0)).hexdigest()


# ---- 2. a new --export folder gets every finished model ----------------------------------------


def test_resuming_with_a_new_export_folder_exports_every_finished_model(tmp_path):
    config = tiny_config(methods=("retrain", "ft"), pretrain_epochs=2)
    first = run_experiment(config, tmp_path / "out", tmp_path / "cache", data=tiny_dataset(), tables=False,
                           export_dir=tmp_path / "one")
    again = run_experiment(config, tmp_path / "out", tmp_path / "cache", data=tiny_dataset(), tables=False,
                           export_dir=tmp_path / "two")
    names = ["ft.tflite", "original.tflite", "retrain.tflite"]
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == names
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == names
    for name in names:  # the same models, bit for bit: run again under the same configuration
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes()
    assert [row["model_sha256"] for row in again["rows"]] == [row["model_sha256"] for row in first["rows"]]
    assert {entry["written"] for entry in again["exports"].values()} == {"now"}
    # the same folder once more: nothing to redo, every file reported as the earlier run's
    kept = run_experiment(config, tmp_path / "out", tmp_path / "cache", data=tiny_dataset(), tables=False,
                          export_dir=tmp_path / "two")
    assert {entry["written"] for entry in kept["exports"].values()} == {"earlier"}
    assert [row["seconds"] for row in kept["rows"]] == [row["seconds"] for row in again["rows"]]


def test_the_export_message_says_what_was_written():
    exports = {"seed0-integer": {"original": {"written": "now"}, "ft": {"written": "earlier"}},
               "seed1-integer": {"original": {"written": "now"}, "ft": {"written": "now"}}}
    assert _export_summary(exports, "exp") == ("exported 3 model(s) as .tflite under exp/<experiment>/; the other 1 "
                                               "were there from an earlier run into exp")


# ---- 3. --weight-bits and --width with a tflite: model ------------------------------------------


@pytest.mark.parametrize("extra, named", [(["--weight-bits", "8"], "--weight-bits"), (["--width", "4"], "--width"),
                                          (["--weight-bits", "4", "--width", "4"], "--weight-bits and --width")])
def test_weight_bits_and_width_with_a_tflite_model_are_refused(tmp_path, capsys, extra, named):
    path = tmp_path / "m.tflite"
    path.write_bytes(deployed_bytes(0))
    assert main(["run", "--model", f"tflite:{path}", *extra, "--out", str(tmp_path / "out"),
                 "--cache-dir", str(tmp_path / "cache")]) == 2
    assert f"{named} set how a model built here is made" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_export_of_a_tflite_model_refuses_weight_bits_too(tmp_path, capsys):
    path = tmp_path / "m.tflite"
    path.write_bytes(deployed_bytes(0))
    assert main(["export", str(tmp_path / "out.tflite"), "--model", f"tflite:{path}", "--weight-bits", "8",
                 "--cache-dir", str(tmp_path / "cache")]) == 2
    assert "--weight-bits set how a model built here is made" in capsys.readouterr().err
    assert not (tmp_path / "out.tflite").exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("bits", [4, 8])
def test_a_tflite_models_weight_bits_come_from_its_file(tmp_path, bits):
    from intunlearn.cli import _study

    torch.manual_seed(0)
    model = intunlearn.quantize(build_model("mlp", (1, 4, 4), 4, width=16), weight_bits=bits,
                                calibration=tiny_dataset().x_train)
    path = tmp_path / "m.tflite"
    path.write_bytes(tflite.export_tflite_bytes(tflite.round_scales_to_float32(model), input_shape=(1, 4, 4))[0])
    args = build_parser().parse_args(["run", "--model", f"tflite:{path}", "--dataset", "digits"])
    study = _study(args)
    assert study.base.weight_bits == bits
    report = format_report({"study": {"seeds": [0], "pipelines": [], "unlearn_lrs": [None],
                                      "base": dataclasses.asdict(study.base)},
                            "summary": [], "best": [], "methods": [], "pipeline_comparisons": [], "machine": {}})
    assert f"{bits}-bit weights" in report.splitlines()[0]


# ---- 4. a retain set too small for the divergence guard ---------------------------------------


def test_a_retain_set_too_small_for_the_guard_is_refused_before_training(tmp_path):
    # 160 samples: random:0.995 forgets round(159.2) = 159, one is retained
    config = tiny_config(methods=("retrain", "ga"), forget="random:0.995")
    with pytest.raises(ValueError, match=r"forget \(--forget\) leaves 1 retain sample\(s\), and method 'ga' holds "
                                         r"out part of the retain set for its divergence guard, which needs at "
                                         r"least 2"):
        run_experiment(config, tmp_path / "out", tmp_path / "cache", data=tiny_dataset(), tables=False)
    assert models_in(tmp_path / "cache") == []


def test_the_search_needs_a_retain_set_to_hold_out_from_too(tmp_path):
    config = tiny_config(methods=("ft",), forget="random:0.995", tune=(0.5, 2.0))
    with pytest.raises(ValueError, match=r"'ft' holds out part of the retain set for the learning-rate search "
                                         r"\(--tune\)"):
        run_experiment(config, tmp_path / "out", tmp_path / "cache", data=tiny_dataset(), tables=False)
    assert models_in(tmp_path / "cache") == []


def test_forgetting_every_training_sample_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"selects all 160 training samples, leaving no retain set"):
        run_experiment(tiny_config(methods=("retrain",), forget="random:0.999"), tmp_path / "out",
                       tmp_path / "cache", data=tiny_dataset(), tables=False)
    assert models_in(tmp_path / "cache") == []


# ---- 5. the local executor's threads ------------------------------------------------------------


def test_more_cpus_per_task_than_cores_is_refused_by_the_local_executor(tmp_path, capsys):
    cores = default_threads()
    with pytest.raises(ValueError, match=rf"--cpus-per-task {cores + 1} is more than the {cores} core\(s\)"):
        make_executor("local", cpus_per_task=cores + 1)
    assert make_executor("local", cpus_per_task=cores).threads == cores
    assert main(["run", "--cpus-per-task", str(cores + 62), "--out", str(tmp_path / "out")]) == 2
    assert f"--cpus-per-task {cores + 62} is more than the {cores} core(s)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ---- 6. a changed configuration named by the options that set it ------------------------------


@pytest.mark.parametrize("field, then, now, source", [
    ("threads", 1, 2, "--cpus-per-task"),
    ("float32_scales", False, True, "--export"),
    ("pretrain_epochs", 8, 9, "--epochs"),
    ("batch_size", 32, 16, "--batch-size"),
])
def test_a_changed_configuration_names_the_option_behind_each_field(tmp_path, field, then, now, source):
    data = tiny_dataset()
    fingerprint = data_fingerprint(data.x_train, data.y_train, data.x_test, data.y_test)
    earlier = tiny_config(**{field: then})
    settings = progress_config(earlier, fingerprint)
    write_progress(tmp_path / "progress.json", {"format": engine.PROGRESS_FORMAT,
                                                "config_hash": engine.config_hash(settings), "config": settings,
                                                "methods": {}})
    with pytest.raises(ValueError, match=rf"{field}: {then!r} then, {now!r} now, set by {source}"):
        read_progress(tmp_path / "progress.json", tiny_config(**{field: now}), fingerprint, "random")


# ---- 7. a one-seed report says what its cells hold ----------------------------------------------


def _report(seeds):
    base = dataclasses.asdict(ExperimentConfig())
    return format_report({"study": {"seeds": seeds, "pipelines": [], "unlearn_lrs": [None], "base": base},
                          "summary": [], "best": [], "methods": [], "pipeline_comparisons": [], "machine": {}})


def test_a_one_seed_report_says_its_cells_are_that_seeds_values():
    one, three = _report([4]), _report([0, 1, 2])
    assert "every cell is that seed's value; one seed gives no interval" in one
    assert "half-width" not in one and "interval excludes 0" not in one
    assert "every cell is the mean over seeds ± the half-width of its 95% Student-t interval" in three
    assert "paired by seed; * where its interval excludes 0" in three


# ---- 8. options the data set does not use, and a class named twice -----------------------------


def test_a_class_named_twice_is_refused_naming_forget(capsys, tmp_path):
    with pytest.raises(ValueError, match=r"forget: 'class:C\[,C\.\.\.\]' names class 3 more than once"):
        parse_forget("class:3,3", 10)
    with pytest.raises(ValueError, match=r"names class 1, 3 more than once"):
        parse_forget("class:3,1,3,1", 10)
    assert parse_forget("class:3,1", 10).classes == (1, 3)
    assert main(["run", "--forget", "class:3,3", "--out", str(tmp_path / "out")]) == 2
    assert "names class 3 more than once" in capsys.readouterr().err


@pytest.mark.parametrize("dataset", ["digits", "npz:blobs.npz"])
def test_data_root_with_a_data_set_that_does_not_read_it_is_refused(dataset, capsys, tmp_path):
    with pytest.raises(ValueError, match=r"data_root \(--data-root\) is where mnist, cifar10, cifar100, svhn are "
                                         rf"read from; the data set '{dataset}' does not read it"):
        ExperimentConfig(dataset=dataset, data_root="/nonexistent").validate()
    ExperimentConfig(dataset="mnist", data_root="/nonexistent").validate()  # read (and checked) when loaded
    assert main(["run", "--data-root", "/nonexistent", "--out", str(tmp_path / "out")]) == 2
    assert "does not read it: leave --data-root out" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
