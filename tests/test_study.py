"""The fidelity study: pipelines, seeds, deployment, resume and its command-line options."""

from __future__ import annotations

import json

import pytest
import torch

import intunlearn
from intunlearn.cli import main
from intunlearn.unlearning.engine import Experiment
from intunlearn.unlearning.study import StudyConfig, run_study

from test_unlearning import tiny_config, tiny_dataset


def float_experiment(tmp_path, seed=0):
    return Experiment(tiny_config(arithmetic="float", seed=seed), tmp_path / "cache", data=tiny_dataset())


def test_the_float_pipelines_deployed_model_is_quantize_of_its_float_model(tmp_path):
    """Deployment of the float pipeline is post-training quantization, bit for bit: the same
    integer state as intunlearn.quantize of the float model (calibrated on the training data),
    and the same integer outputs."""
    experiment = float_experiment(tmp_path)
    float_model = experiment.original()
    assert not any(isinstance(m, intunlearn.modules.QuantModule) for m in float_model.modules())
    deployed = experiment.deploy(float_model)
    calibration = torch.cat([experiment.x_forget, experiment.x_retain])[:1024]
    expected = intunlearn.quantize(float_model, weight_bits=4, calibration=calibration, mode="integer")
    from intunlearn.tflite import round_scales_to_float32
    round_scales_to_float32(expected)  # a .tflite file stores float32 scales
    deployed_state, expected_state = (intunlearn.integer_state_dict(m) for m in (deployed, expected))
    assert deployed_state.keys() == expected_state.keys()
    assert all(torch.equal(deployed_state[k], expected_state[k]) for k in expected_state)
    x = experiment.x_retain[:32]
    assert torch.equal(deployed(x), expected(x))


def test_the_seed_redraws_the_forget_set(tmp_path):
    forget = [set(map(tuple, float_experiment(tmp_path, seed).x_forget.flatten(1).tolist())) for seed in (0, 1)]
    assert len(forget[0]) == len(forget[1]) and forget[0] != forget[1]


def small_study(**changes):
    values = dict(base=tiny_config(methods=("retrain", "ft", "qmul")), seeds=(0, 1), pipelines=("float", "integer"))
    values.update(changes)
    return StudyConfig(**values)


def test_a_study_reports_every_unit_and_its_statistics(tmp_path):
    results = run_study(small_study(), tmp_path / "out", tmp_path / "cache", data=tiny_dataset())
    rows = results["rows"]
    # seeds x pipelines x (original + methods) x evaluations (float: float + deployed; integer: 3)
    assert len(rows) == 2 * 4 * 2 + 2 * 4 * 3
    for name in ("results.json", "results.csv", "report.md", "study-gap.png", "study-shift.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    entry = next(e for e in results["summary"] if e["pipeline"] == "float" and e["method"] == "qmul")
    per_seed = [r["FA"] for r in rows if r["pipeline"] == "float" and r["method"] == "qmul"
                and r["evaluation"] == "deployed"]
    assert entry["FA"]["deployed"]["mean"] == pytest.approx(sum(per_seed) / 2)
    shifts = [d - u for d, u in zip(per_seed, [r["FA"] for r in rows if r["pipeline"] == "float"
                                                and r["method"] == "qmul" and r["evaluation"] == "float"])]
    assert entry["FA"]["shift"]["mean"] == pytest.approx(sum(shifts) / 2)
    # the integer pipeline deploys its own parameters: only float32 scale rounding can move them
    integer = next(e for e in results["summary"] if e["pipeline"] == "integer" and e["method"] == "retrain")
    assert integer["gap"]["as_unlearned"]["mean"] == 0.0
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## float pipeline" in report and "## integer pipeline" in report and "| qmul |" in report


def test_a_killed_study_resumes_without_redoing_finished_units(tmp_path, monkeypatch):
    """Kill the study in its second experiment; the rerun must not unlearn the finished units
    again, and must give the numbers of an uninterrupted study."""
    from intunlearn.unlearning.methods.simple import FineTune

    study = small_study(pipelines=("integer",))
    calls, real = [], FineTune.unlearn

    def dying(self, model, task):
        calls.append(task.seed)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, model, task)

    monkeypatch.setattr(FineTune, "unlearn", dying)
    with pytest.raises(KeyboardInterrupt):
        run_study(study, tmp_path / "out", tmp_path / "cache", data=tiny_dataset())
    calls.clear()
    monkeypatch.setattr(FineTune, "unlearn", lambda self, model, task: calls.append(task.seed) or real(self, model, task))
    resumed = run_study(study, tmp_path / "out", tmp_path / "cache", data=tiny_dataset())
    assert calls == [1]  # seed 0's ft had finished
    fresh = run_study(study, tmp_path / "fresh", tmp_path / "cache", data=tiny_dataset())

    def numbers(results):
        return [{k: v for k, v in row.items() if k != "seconds"} for row in results["rows"]]

    assert numbers(resumed) == numbers(fresh)


def test_work_is_handed_out_originals_first_and_forget_only_methods_last():
    """Originals first (every method needs its experiment's), then the retrains, then the
    methods, gradient ascent and boundary shrink (which train on the forget set alone, the
    shortest tasks) last, so that parallel workers do not end on a long task."""
    from intunlearn.unlearning.engine import _task_order

    class Unit:  # what _task_order reads of the driver's state of an experiment
        def remaining(self):
            return ["original", "ga", "ft", "retrain", "bs", "qmul"]

    assert _task_order([Unit(), Unit()]) == [
        (0, "original"), (1, "original"), (0, "retrain"), (1, "retrain"),
        (0, "ft"), (0, "qmul"), (1, "ft"), (1, "qmul"), (0, "ga"), (0, "bs"), (1, "ga"), (1, "bs")]


@pytest.mark.parametrize("argv, message", [
    (["--seeds", "0"], "must be a count N >= 1"),
    (["--seeds", "1,1"], "distinct"),
    (["--seeds", "a,b"], "comma-separated list of seeds"),
    (["--pipelines", "float,quantum"], "distinct names from float, fake, integer"),
    (["--pipelines", ""], "distinct names"),
    (["--unlearn-lr", "0.1,-1"], "learning rates must be distinct finite numbers > 0"),
])
def test_bad_study_options_are_named(argv, message, capsys):
    with pytest.raises(SystemExit):
        main(["run", *argv])
    assert message in capsys.readouterr().err


def test_seed_and_seeds_together_are_refused(capsys, tmp_path):
    assert main(["run", "--seed", "1", "--seeds", "3", "--out", str(tmp_path / "out")]) == 2
    assert "give --seeds or --seed, not both" in capsys.readouterr().err


def test_a_study_config_names_bad_axes():
    with pytest.raises(ValueError, match="seeds must be distinct integers"):
        small_study(seeds=()).validate()
    with pytest.raises(ValueError, match="pipelines must be distinct names"):
        small_study(pipelines=("integer", "integer")).validate()
    with pytest.raises(ValueError, match="unlearn learning rates"):
        small_study(unlearn_lrs=(float("nan"),)).validate()


def test_the_cli_writes_the_study(tmp_path, capsys):
    import numpy as np

    from test_unlearning import blobs

    x, y = blobs(2)
    x_test, y_test = blobs(3, per_class=10)
    path = tmp_path / "blobs.npz"
    np.savez(path, x=(x.numpy() * 255).astype(np.uint8), y=y.numpy(),
             x_test=(x_test.numpy() * 255).astype(np.uint8), y_test=y_test.numpy())
    assert main(["run", "--dataset", f"npz:{path}", "--model", "mlp", "--width", "8", "--methods", "retrain,ft",
                 "--epochs", "2", "--qat-epochs", "1", "--unlearn-epochs", "1", "--seeds", "2",
                 "--pipelines", "float,fake", "--unlearn-lr", "0.01,0.001", "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "## fake pipeline, unlearning lr 0.001" in printed and "ΔFA" in printed
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["study"]["seeds"] == [0, 1] and results["study"]["unlearn_lrs"] == [0.01, 0.001]
    assert len({(r["seed"], r["pipeline"], r["unlearn_lr"]) for r in results["rows"]}) == 2 * 2 * 2


def _blobs_npz(path):
    import numpy as np

    from test_unlearning import blobs

    x, y = blobs(2)
    x_test, y_test = blobs(3, per_class=10)
    np.savez(path, x=(x.numpy() * 255).astype(np.uint8), y=y.numpy(),
             x_test=(x_test.numpy() * 255).astype(np.uint8), y_test=y_test.numpy())
    return path


@pytest.mark.parametrize("extra, message", [
    (["--forget", "class:1"], "U-LiRA forgets individual examples"),
    (["--shadows", "4"], "shadows must be >= 5"),
    (["--ulira-pool", "100000"], "pool_size must be in"),
])
def test_bad_ulira_options_are_refused_before_the_study_trains(tmp_path, capsys, monkeypatch, extra, message):
    from intunlearn.unlearning import study as study_module

    monkeypatch.setattr(study_module, "run_units", lambda *a, **k: pytest.fail("the study started"))
    path = _blobs_npz(tmp_path / "blobs.npz")
    assert main(["run", "--dataset", f"npz:{path}", "--model", "mlp", "--methods", "retrain,ft", "--mia", "ulira",
                 "--out", str(tmp_path / "out"), *extra]) == 2
    assert message in capsys.readouterr().err


def test_the_cli_runs_ulira_after_the_study(tmp_path, capsys):
    path = _blobs_npz(tmp_path / "blobs.npz")
    assert main(["run", "--dataset", f"npz:{path}", "--model", "mlp", "--width", "8", "--methods", "retrain,ft",
                 "--epochs", "2", "--qat-epochs", "1", "--unlearn-epochs", "1", "--seeds", "1",
                 "--pipelines", "integer", "--mia", "ulira", "--shadows", "5", "--ulira-pool", "30",
                 "--out", str(tmp_path / "out")]) == 0
    assert "| ft | integer | deployed |" in capsys.readouterr().out
    results = json.loads((tmp_path / "out" / "ulira" / "ulira.json").read_text())
    assert results["settings"]["shadows"] == 5 and results["settings"]["pool_size"] == 30
    assert {(r["method"], r["pipeline"]) for r in results["rows"]} == {
        (m, "integer") for m in ("original", "retrain", "ft")}


def test_a_tuned_study_reports_each_seeds_chosen_learning_rate(tmp_path):
    """--tune: report.md and results.json show, per pipeline x method x seed, the learning rate
    the unit's own diagnostics say was chosen; untuned studies print no such table."""
    study = small_study(base=tiny_config(methods=("retrain", "ft"), tune=(0.5, 2.0)), pipelines=("integer",))
    results = run_study(study, tmp_path / "out", tmp_path / "cache", data=tiny_dataset())
    chosen = {}
    for unit_dir in sorted((tmp_path / "out" / "units").iterdir()):
        unit = json.loads((unit_dir / "results.json").read_text())
        row = next(r for r in unit["rows"] if r["method"] == "ft")
        chosen[unit["config"]["seed"]] = row["tune"]["chosen_lr"]
    entry = next(e for e in results["summary"] if e["method"] == "ft")
    assert entry["method_lr"] == {"per_seed": [chosen[0], chosen[1]], "tuned": True}
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Learning rates chosen by --tune" in report
    assert f"| integer | ft | {chosen[0]:.3g} | {chosen[1]:.3g} |" in report
    retrain = next(e for e in results["summary"] if e["method"] == "retrain")
    assert retrain["method_lr"] is None

    untuned = run_study(small_study(pipelines=("integer",)), tmp_path / "plain", tmp_path / "cache",
                        data=tiny_dataset())
    assert "Learning rates chosen" not in (tmp_path / "plain" / "report.md").read_text()
    assert all(not (e["method_lr"] or {}).get("tuned") for e in untuned["summary"])
