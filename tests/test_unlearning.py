"""The unlearning engine: metric definitions on hand-made cases, the similar-label and AGR
formulas, methods on a tiny problem, determinism, resuming, and errors."""

import copy
import json
import math
from functools import lru_cache

import numpy as np
import pytest
import torch

import intunlearn
from intunlearn.cli import main
from intunlearn.data import Dataset
from intunlearn.models import build_model
from intunlearn.unlearning.engine import ExperimentConfig, progress_checksum, run_experiment
from intunlearn.unlearning.forget import forget_mask, parse_forget
from intunlearn.unlearning.methods import METHODS, UnlearnTask, get_method
from intunlearn.unlearning.methods.qmul import agr_weights, similar_labels
from intunlearn.unlearning.metrics import average_gap, mia_efficacy, mia_nn
from intunlearn.unlearning.training import TrainConfig, predict_probabilities, train

# ---- metrics -----------------------------------------------------------------------------------


def test_mia_separates_confident_members_from_unsure_non_members():
    rng = np.random.default_rng(0)
    members = rng.uniform(0.9, 1.0, 200)
    nonmembers = rng.uniform(0.1, 0.5, 200)
    assert mia_efficacy(members, nonmembers, rng.uniform(0.1, 0.5, 100)) > 0.95  # looks unseen: forgotten
    assert mia_efficacy(members, nonmembers, rng.uniform(0.9, 1.0, 100)) < 0.05  # looks seen: remembered


def test_mia_is_near_chance_on_identical_distributions():
    rng = np.random.default_rng(1)
    score = mia_efficacy(rng.uniform(0, 1, 400), rng.uniform(0, 1, 400), rng.uniform(0, 1, 400))
    assert 0.2 < score < 0.8


def test_average_gap_by_hand():
    retrain = {"FA": 90.0, "RA": 100.0, "TA": 95.0, "MIA": 10.0}
    assert average_gap({"FA": 100.0, "RA": 99.0, "TA": 95.0, "MIA": 2.0}, retrain) == pytest.approx((10 + 1 + 0 + 8) / 4)


# ---- Q-MUL formulas ------------------------------------------------------------------------------


def test_similar_labels_pick_the_wrong_class_closest_in_probability():
    probabilities = torch.tensor([[0.10, 0.50, 0.38, 0.02],   # true 1 (0.50): 0.38 is closest
                                  [0.40, 0.05, 0.15, 0.40],   # true 0 (0.40): class 3 ties exactly
                                  [0.70, 0.10, 0.05, 0.15]])  # true 3 (0.15): 0.10 (0.05 away) vs 0.05
    labels = torch.tensor([1, 0, 3])
    assert similar_labels(probabilities, labels).tolist() == [2, 3, 1]


def test_agr_weights_by_hand():
    assert agr_weights(1.0, 3.0) == (0.75, 0.25)  # the side with the smaller gradient gets more weight
    assert agr_weights(0.0, 0.0) == (0.5, 0.5)


# ---- a tiny problem --------------------------------------------------------------------------


def blobs(seed=0, per_class=40, classes=4):
    """1x4x4 'images': class c lights pixel block c, except that class 2 looks like class 3
    with a faint extra block: without class-2 examples its region falls to class 3."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(per_class * classes, 1, 4, 4, generator=g) * 0.3
    y = torch.arange(classes).repeat_interleave(per_class)

    def light(c, block, level):
        x[y == c, 0, (block // 2) * 2:(block // 2) * 2 + 2, (block % 2) * 2:(block % 2) * 2 + 2] += level

    for c in (0, 1, 3):
        light(c, c, 0.7)
    light(2, 3, 0.7)
    light(2, 2, 0.25)
    order = torch.randperm(len(y), generator=g)
    return x[order], y[order]


def tiny_dataset():
    x, y = blobs(0)
    x_test, y_test = blobs(1, per_class=10)
    return Dataset("blobs", x, y, x_test, y_test, 4)


def tiny_trained_model(x, y, seed=0):
    torch.manual_seed(seed)
    model = build_model("mlp", (1, 4, 4), 4, width=32)
    train(model, x, y, TrainConfig(30, 0.05, 32), seed=seed, desc="tiny float")
    model = intunlearn.quantize(model, weight_bits=4, calibration=x)
    return train(model, x, y, TrainConfig(3, 0.005, 32), seed=seed, desc="tiny qat")


@lru_cache(maxsize=None)
def tiny_problem(forget: str):
    """(data, forget mask of `forget` at seed 0, the model trained on all of it), shared between
    tests: copy the model before changing it."""
    data = tiny_dataset()
    mask = forget_mask(parse_forget(forget, 4), data.y_train, seed=0)
    return data, mask, tiny_trained_model(data.x_train, data.y_train)


def tiny_task(forget: str, **options):
    """The UnlearnTask of `forget` on the tiny problem (batch size 32 unless `options` say)."""
    data, mask, _ = tiny_problem(forget)
    options = {"batch_size": 32, **options}
    return UnlearnTask(data.x_train[mask], data.y_train[mask], data.x_train[~mask], data.y_train[~mask], 4,
                       parse_forget(forget, 4).mode, 0, retrain_from_scratch=None, **options)


# 160 samples make few steps per epoch: the fine-tuning-like methods and gradient ascent get a
# larger budget (salun repairs the retain set with half its weights).
TINY_BUDGETS = {"ft": {"epochs": 8, "lr": 0.05}, "ga": {"epochs": 5, "lr": 0.05},
                "l1sparse": {"epochs": 8, "lr": 0.05}, "salun": {"epochs": 10}}


@pytest.mark.parametrize("name", [name for name in METHODS if name != "retrain"])
def test_each_method_reduces_forget_accuracy_on_a_tiny_problem(name):
    data = tiny_dataset()
    mask = forget_mask(parse_forget("class:2", 4), data.y_train, seed=0)
    original = tiny_trained_model(data.x_train, data.y_train)
    task = UnlearnTask(data.x_train[mask], data.y_train[mask], data.x_train[~mask], data.y_train[~mask], 4,
                       "class", 0, retrain_from_scratch=lambda x, y, seed: tiny_trained_model(x, y, seed),
                       batch_size=32, **TINY_BUDGETS.get(name, {}))
    before = (predict_probabilities(original, task.x_forget).argmax(1) == task.y_forget).float().mean()
    unlearned = get_method(name).unlearn(copy.deepcopy(original), task)
    after = (predict_probabilities(unlearned, task.x_forget).argmax(1) == task.y_forget).float().mean()
    retained = (predict_probabilities(unlearned, task.x_retain).argmax(1) == task.y_retain).float().mean()
    assert before > 0.9
    assert after < before - 0.3, f"{name}: forget accuracy {before:.2f} -> {after:.2f}"
    if name != "ga":  # gradient ascent alone does not protect the retain set
        assert retained > 0.8


def test_qmul_records_its_reweighting_history():
    data = tiny_dataset()
    mask = forget_mask(parse_forget("random:0.2", 4), data.y_train, seed=0)
    original = tiny_trained_model(data.x_train, data.y_train)
    method = get_method("qmul")
    task = UnlearnTask(data.x_train[mask], data.y_train[mask], data.x_train[~mask], data.y_train[~mask], 4,
                       "random", 0, retrain_from_scratch=None, epochs=2, batch_size=32)
    method.unlearn(original, task)
    history = method.diagnostics()["agr_history"]
    assert len(history) == 2
    for entry in history:
        assert entry["w_f"] == pytest.approx(entry["G_r"] / (entry["G_f"] + entry["G_r"]))
        assert entry["w_f"] + entry["w_r"] == pytest.approx(1.0)



def test_qmul_seq_relabels_every_epoch_and_passes_forget_then_retain(monkeypatch):
    """The authors' schedule: similar labels recomputed each epoch, then whole passes over the
    forget set and the retain set in that order, each loss scaled by its AGR weight."""
    from intunlearn.unlearning.methods.qmul import QMULSequential

    data = tiny_dataset()
    mask = forget_mask(parse_forget("random:0.2", 4), data.y_train, seed=0)
    original = tiny_trained_model(data.x_train, data.y_train)
    task = UnlearnTask(data.x_train[mask], data.y_train[mask], data.x_train[~mask], data.y_train[~mask], 4,
                       "random", 0, retrain_from_scratch=None, epochs=3, batch_size=32)
    method = get_method("qmul-seq")
    relabels, seen = [], []
    real_relabel = QMULSequential.relabel
    monkeypatch.setattr(QMULSequential, "relabel", lambda self, model, t: relabels.append(1) or real_relabel(self, model, t))
    forget_rows = {tuple(row) for row in task.x_forget.flatten(1).tolist()}
    model = copy.deepcopy(original)
    model.register_forward_pre_hook(lambda module, args: seen.append(
        "forget" if tuple(args[0][0].flatten().tolist()) in forget_rows else "retain") if module.training else None)
    method.unlearn(model, task)
    assert len(relabels) == 3
    history = method.diagnostics()["agr_history"]
    assert [entry["epoch"] for entry in history] == [0, 1, 2]
    assert all(e["w_f"] == pytest.approx(e["G_r"] / (e["G_f"] + e["G_r"])) for e in history)
    # each epoch: the gradient-norm batches (forget, then retain), then the training passes: the
    # forget set (one batch of 32) and then every retain batch; mixed batches would interleave them
    per_epoch = len(seen) // 3
    for epoch in range(3):
        block = seen[epoch * per_epoch:(epoch + 1) * per_epoch]
        passes = block[-(1 + -(-len(task.x_retain) // 32)):]
        assert passes[0] == "forget" and set(passes[1:]) == {"retain"}

# ---- the runner --------------------------------------------------------------------------------


def tiny_config(**overrides):
    values = dict(dataset="blobs", model="mlp", width=16, forget="random:0.2", methods=("retrain", "ft", "qmul"),
                  pretrain_epochs=8, qat_epochs=1, unlearn_epochs=1, batch_size=32)
    values.update(overrides)
    return ExperimentConfig(**values)


def strip_times(results):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in results["rows"]]


def test_run_is_deterministic_for_a_seed_and_writes_its_files(tmp_path):
    first = run_experiment(tiny_config(), tmp_path / "a", tmp_path / "cache_a", data=tiny_dataset())
    second = run_experiment(tiny_config(), tmp_path / "b", tmp_path / "cache_b", data=tiny_dataset())
    assert strip_times(first) == strip_times(second)
    assert [row["method"] for row in first["rows"]] == ["original", "retrain", "ft", "qmul"]
    for name in ("results.json", "results.csv", "results.png", "progress.json"):
        assert (tmp_path / "a" / name).stat().st_size > 0
    retrain = first["rows"][1]
    assert retrain["integer"]["gap"] == 0 and retrain["fake"]["gap"] == 0
    assert set(first["rows"][2]["integer"]) == {"FA", "RA", "TA", "MIA", "gap"}


def test_run_resumes_finished_methods_and_reuses_the_cached_original(tmp_path):
    config = tiny_config(methods=("retrain", "ft"))
    run_experiment(config, tmp_path / "out", tmp_path / "cache", data=tiny_dataset())
    cached = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(cached) == 2 and all(name.endswith(".pt") for name in cached)  # original + retrain
    progress_path = tmp_path / "out" / "progress.json"
    progress = json.loads(progress_path.read_text())
    # a marker only a resumed run keeps (a possible value no run measures: 32 forget samples give
    # multiples of 3.125), with the file's checksum recomputed as a deliberate editor would
    progress["methods"]["ft"]["metrics"]["integer"]["FA"] = 12.345
    progress["checksum"] = progress_checksum(progress)
    progress_path.write_text(json.dumps(progress))
    resumed = run_experiment(config, tmp_path / "out", tmp_path / "cache", data=tiny_dataset())
    assert resumed["rows"][2]["integer"]["FA"] == 12.345
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == cached


@pytest.mark.parametrize("spec", ["random:1.5", "random:x", "class:4", "class:", "class:0,1,2,3", "half"])
def test_bad_forget_spec_is_refused(spec):
    with pytest.raises(ValueError, match="forget"):
        parse_forget(spec, 4)


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="unknown method 'salsa'; available: retrain, ft, ga"):
        ExperimentConfig(methods=("salsa",)).validate()


def test_cli_reports_a_bad_dataset_path(tmp_path, capsys):
    code = main(["run", "--dataset", f"npz:{tmp_path / 'missing.npz'}", "--out", str(tmp_path / "out")])
    assert code == 2
    assert "missing.npz" in capsys.readouterr().err


def test_cli_run_on_an_npz_file(tmp_path, capsys):
    x, y = blobs(2)
    x_test, y_test = blobs(3, per_class=10)
    path = tmp_path / "blobs.npz"
    np.savez(path, x=(x.numpy() * 255).astype(np.uint8), y=y.numpy(), x_test=(x_test.numpy() * 255).astype(np.uint8),
             y_test=y_test.numpy())
    code = main(["run", "--dataset", f"npz:{path}", "--model", "mlp", "--width", "16", "--methods", "retrain,ga,rl",
                 "--epochs", "5", "--qat-epochs", "1", "--unlearn-epochs", "1", "--forget", "class:1",
                 "--seed", "0", "--pipelines", "fake,integer", "--out", str(tmp_path / "out")])
    assert code == 0
    printed = capsys.readouterr().out
    assert "FA integer arithmetic" in printed and "FA fake quantization" in printed and "| rl |" in printed
    assert json.loads((tmp_path / "out" / "results.json").read_text())["study"]["base"]["forget"] == "class:1"


def test_mia_nn_detects_a_neighbour_signature_and_not_identical_distributions():
    rng = np.random.default_rng(2)

    def probabilities(n, neighbour_mass):
        p = rng.dirichlet(np.ones(5), n) * 0.2
        p[:, 1] += neighbour_mass  # class 1 neighbours the forgotten class 0
        return torch.from_numpy(p / p.sum(1, keepdims=True))

    leaky = mia_nn(probabilities(60, 0.8), probabilities(60, 0.1), [0], seed=0)
    clean = mia_nn(probabilities(60, 0.4), probabilities(60, 0.4), [0], seed=0)
    assert leaky > 90
    assert 25 < clean < 75


def test_classwise_run_reports_mia_nn_and_tests_on_remaining_classes(tmp_path):
    results = run_experiment(tiny_config(forget="class:2", methods=("retrain", "rl")), tmp_path / "out",
                             tmp_path / "cache", data=tiny_dataset())
    assert results["metrics"] == ["FA", "RA", "TA", "MIA", "MIA-NN"]
    assert results["test_samples"] == 30  # 4 classes x 10 test samples, class 2 left out
    retrain = results["rows"][1]["integer"]
    assert retrain["FA"] == 0.0 and 0 <= retrain["MIA-NN"] <= 100


def test_cached_models_are_not_reused_for_other_data(tmp_path):
    data = tiny_dataset()
    other = Dataset("blobs", 1 - data.x_train, (data.y_train + 1) % 4, data.x_test, data.y_test, 4)
    config = tiny_config(methods=("ft",))
    run_experiment(config, tmp_path / "a", tmp_path / "cache", data=data)
    run_experiment(config, tmp_path / "b", tmp_path / "cache", data=other)
    assert len(list((tmp_path / "cache").glob("original-*.pt"))) == 2


@pytest.mark.parametrize("overrides, message", [
    (dict(batch_size=0), "batch_size must be >= 1"), (dict(pretrain_epochs=0), "pretrain_epochs"),
    (dict(unlearn_epochs=-3), "unlearn_epochs must be >= 1"), (dict(width=0), "width must be >= 1"),
    (dict(unlearn_lr=float("nan")), "unlearn_lr must be a finite positive number"),
    (dict(methods=("ft", "ft")), "must not repeat"),
])
def test_bad_experiment_settings_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides).validate()


def test_forgetting_a_class_without_training_samples_is_refused():
    y_train = torch.tensor([0, 1, 1, 0, 2])
    with pytest.raises(ValueError, match=r"no training sample has class \[3\]"):
        forget_mask(parse_forget("class:3", 4), y_train, seed=0)


def test_json_output_is_strict_and_readable_by_others(tmp_path):
    """NaN (a metric with too few samples) is written as null, which strict parsers accept;
    the file gets the permissions a plain open would give, not mkstemp's 0600."""
    import json
    import os

    from intunlearn.io import write_json_atomic

    path = tmp_path / "out.json"
    write_json_atomic(path, {"MIA-NN": float("nan"), "rows": [1.5, float("inf"), (2, -float("inf"))]})

    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    assert json.loads(path.read_text(), parse_constant=refuse) == {"MIA-NN": None, "rows": [1.5, None, [2, None]]}
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


@pytest.mark.parametrize("argv, message", [
    (["run", "--device", "tpu"], "device must be 'cpu' or 'cuda"),
    (["run", "--model", "mlp", "--width", "1"], "width must be >= 2 for the mlp"),
    (["bench", "e2e", "--device", "cuda:0"] if not torch.cuda.is_available() else ["bench", "e2e", "--device", "tpu"],
     "device"),
    (["bench", "e2e", "--repeats", "0"], "repeats must be >= 1"),
    (["bench", "e2e", "--method", "salsa"], "unknown method 'salsa'"),
    (["bench", "e2e", "--method", "trw"], "supports forget modes"),
    (["demo", "--hidden", "0"], "hidden must be an integer >= 1"),
    (["demo", "--epochs", "-3"], "epochs must be an integer >= 1"),
])
def test_cli_refuses_bad_options_by_name(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["bench", "e2e", "--method", "retrain"], "method (--method) 'retrain' has no unlearning epoch to time"),
    (["bench", "e2e", "--width", "0"], "width must be >= 1, got 0"),
    (["bench", "e2e", "--seed", "-1"], "seeds must be distinct integers >= 0"),
    (["bench", "e2e", "--json", "{file}/result.json"], "--json: cannot write"),
    (["bench", "e2e", "--json", "{folder}"], "is a directory"),
    (["demo", "--seed", "-1"], "seed must be an int in [0, 2**32), got -1"),
    (["demo", "--json", "{file}/demo.json"], "is a file, not a folder"),
    (["export", "{folder}", "--model", "mlp"], "output: {folder} is a directory"),
    (["export", "{file}/model.tflite", "--model", "mlp"], "output: cannot write {file}/model.tflite"),
])
def test_cli_refuses_bad_options_and_output_paths_before_any_training(argv, message, capsys, tmp_path,
                                                                      monkeypatch):
    """bench e2e checks its options as `run` does, and every command checks where it will write,
    before the training (which here would fail loudly) starts."""
    import intunlearn.bench
    import intunlearn.demo
    from intunlearn.unlearning import engine

    def no_training(*args, **kwargs):
        raise AssertionError("trained before refusing the options")

    for module, name in ((intunlearn.bench, "train"), (intunlearn.demo, "train_mlp"), (engine, "train")):
        monkeypatch.setattr(module, name, no_training)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("")
    (tmp_path / "a-folder").mkdir()
    places = {"file": str(tmp_path / "a-file"), "folder": str(tmp_path / "a-folder")}
    assert main([part.format(**places) for part in argv]) == 2
    err = capsys.readouterr().err
    assert message.format(**places) in err
    assert "Traceback" not in err and ".tmp" not in err


def test_retrain_without_a_recipe_is_refused_by_name():
    x, y = blobs(2)
    task = UnlearnTask(x[:5], y[:5], x[5:], y[5:], 4, "random", 0, retrain_from_scratch=None)
    with pytest.raises(ValueError, match="'retrain' needs the original recipe"):
        get_method("retrain").unlearn(build_model("mlp", (1, 4, 4), 4, None), task)


def test_cli_run_names_a_bad_out_or_progress_file(tmp_path, capsys):
    x, y = blobs(2)
    x_test, y_test = blobs(3, per_class=10)
    data = tmp_path / "blobs.npz"
    np.savez(data, x=(x.numpy() * 255).astype(np.uint8), y=y.numpy(),
             x_test=(x_test.numpy() * 255).astype(np.uint8), y_test=y_test.numpy())
    common = ["run", "--dataset", f"npz:{data}", "--model", "mlp", "--width", "8", "--methods", "ft",
              "--epochs", "1", "--qat-epochs", "0", "--unlearn-epochs", "1", "--seed", "0", "--pipelines", "integer",
              "--cache-dir", str(tmp_path / "cache")]
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    assert main([*common, "--out", str(a_file)]) == 2
    assert "exists and is not a directory" in capsys.readouterr().err
    out = tmp_path / "out"
    unit = out / "units" / "seed0-integer"  # the study's one experiment
    unit.mkdir(parents=True)
    (unit / "progress.json").write_text("[1, 2]")
    assert main([*common, "--out", str(out)]) == 2
    assert "progress.json is not a progress file" in capsys.readouterr().err
    (unit / "progress.json").write_text("{not json")
    assert main([*common, "--out", str(out)]) == 2
    assert "progress.json is not valid JSON" in capsys.readouterr().err


def test_a_resumed_run_reads_unmeasured_metrics_back_as_nan():
    from intunlearn.unlearning.engine import _missing_as_nan

    saved = {"methods": {"ft": {"metrics": {"integer": {"FA": 1.0, "MIA-NN": None}}, "seconds": 2.0}},
             "rows": [{"gap": None}]}
    restored = _missing_as_nan(saved)
    assert restored["methods"]["ft"]["metrics"]["integer"]["FA"] == 1.0
    assert math.isnan(restored["methods"]["ft"]["metrics"]["integer"]["MIA-NN"])
    assert restored["rows"][0]["gap"] is None  # no retrain to compare with stays None
