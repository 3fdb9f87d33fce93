"""Method defaults that scale with the data and the recipe, the divergence guard, the
learning-rate search (--tune) and Q-MUL's per-epoch relabelling (issue 15), on the tiny problem
of test_unlearning."""

import copy
import dataclasses
import json

import pytest
import torch
from test_unlearning import tiny_config, tiny_dataset, tiny_problem, tiny_task

from intunlearn.cli import main
from intunlearn.unlearning import training
from intunlearn.unlearning.engine import ExperimentConfig, progress_checksum, run_experiment
from intunlearn.unlearning.methods import UnlearnTask, base, get_method

# ---- helpers -------------------------------------------------------------------------------------


FORGET = "random:0.2"


def problem():
    return tiny_problem(FORGET)


def random_task(**options):
    return tiny_task(FORGET, **options)


def original():
    return copy.deepcopy(problem()[2])


def rows(x) -> set:
    return {tuple(row) for row in x.flatten(1).tolist()}


def percent(model, x, y) -> float:
    """Accuracy in %, computed here (not with the code under test)."""
    model.eval()
    with torch.no_grad():
        return 100.0 * float((model(x).argmax(1) == y).double().mean())


class StepRecorder:
    """Wraps training.make_optimizer: counts the optimizer steps, records the initial learning
    rate and (optionally) the weights after every step."""

    def __init__(self, monkeypatch, model=None):
        self.steps, self.lrs, self.states, self.model = 0, [], [], model
        real = training.make_optimizer

        def make(model, config, steps):
            optimizer, schedule = real(model, config, steps)
            self.lrs.append(optimizer.param_groups[0]["lr"])

            def after_step(optimizer, args, kwargs):
                self.steps += 1
                if self.model is not None:
                    self.states.append(copy.deepcopy(self.model.state_dict()))

            optimizer.register_step_post_hook(after_step)
            return optimizer, schedule

        monkeypatch.setattr(training, "make_optimizer", make)


# ---- defaults that scale -------------------------------------------------------------------------


@pytest.mark.parametrize("forget_size", [20, 90])
def test_gradient_ascent_takes_its_step_budget_whatever_the_forget_set_size(forget_size, monkeypatch):
    """The stated rule: ga runs 15 optimizer steps at 0.01 x the recipe's lr, for any forget set."""
    data, _, _ = problem()
    x, y = data.x_train, data.y_train
    recorder = StepRecorder(monkeypatch)
    task = UnlearnTask(x[:forget_size], y[:forget_size], x[forget_size:], y[forget_size:], 4, "random", 0,
                       retrain_from_scratch=None, batch_size=8, recipe_lr=0.02)
    method = get_method("ga")
    # keep the guard out of the way: this test counts steps, another tests the guard
    monkeypatch.setattr(base, "GUARD_MARGIN", 100.0)
    method.unlearn(original(), task)
    assert recorder.steps == 15  # 20 samples / 8 = 3 batches an epoch; 90 samples: 12
    assert recorder.lrs == [pytest.approx(0.01 * 0.02)]
    assert method.diagnostics()["budget"] == {"steps": 15}


@pytest.mark.parametrize("retain_size, recipe_lr", [(60, 0.05), (130, 0.2)])
def test_fine_tuning_takes_five_passes_at_a_fifth_of_the_recipe_lr(retain_size, recipe_lr, monkeypatch):
    data, _, _ = problem()
    x, y = data.x_train, data.y_train
    recorder = StepRecorder(monkeypatch)
    task = UnlearnTask(x[:20], y[:20], x[20:20 + retain_size], y[20:20 + retain_size], 4, "random", 0,
                       retrain_from_scratch=None, batch_size=16, recipe_lr=recipe_lr)
    get_method("ft").unlearn(original(), task)
    assert recorder.steps == 5 * -(-retain_size // 16)
    assert recorder.lrs == [pytest.approx(0.2 * recipe_lr)]


def test_overrides_are_passes_and_an_absolute_learning_rate(monkeypatch):
    """--unlearn-epochs replaces a step budget by passes over the set; --unlearn-lr is absolute."""
    monkeypatch.setattr(base, "GUARD_MARGIN", 100.0)
    recorder = StepRecorder(monkeypatch)
    task = random_task(epochs=2, lr=0.003, recipe_lr=0.5)
    get_method("ga").unlearn(original(), task)
    forget = len(task.y_forget)  # 32: one batch of 32 per epoch
    assert recorder.steps == 2 * -(-forget // 32)
    assert recorder.lrs == [pytest.approx(0.003)]


def test_default_learning_rates_are_the_stated_fractions_of_the_recipe_lr():
    task = random_task(recipe_lr=0.1)
    expected = {"ft": 0.02, "rl": 0.02, "sl": 0.02, "qmul": 0.02, "qmul-relabel": 0.02, "qmul-seq": 0.02,
                "salun": 0.02, "l1sparse": 0.02, "amun": 0.02, "trw": 0.02, "ga": 0.001, "bs": 0.004}
    for name, lr in expected.items():
        assert get_method(name).lr(task) == pytest.approx(lr), name
    # the engine hands the recipe's lr to the task
    assert ExperimentConfig(lr=0.1).lr == 0.1


# ---- the divergence guard ------------------------------------------------------------------------


def test_the_guard_stops_a_diverging_ascent_and_restores_the_last_good_weights(monkeypatch):
    """Gradient ascent at 100x its learning rate for 60 steps collapses the tiny model; the guard
    must stop it and hand back exactly the weights of the last check that passed."""
    model = original()
    recorder = StepRecorder(monkeypatch, model=model)
    task = random_task(lr=0.5)
    method = get_method("ga")
    monkeypatch.setattr(type(method), "default_budget", base.Budget(steps=60))
    holdout = base.holdout_split(task)[1]
    reference = percent(copy.deepcopy(model), holdout.x, holdout.y)
    unlearned = method.unlearn(model, task)
    guard = method.diagnostics()["guard"]
    assert guard["stopped"] is True
    every = guard["check_every_steps"]
    assert every == 6  # 60 steps / GUARD_CHECKS
    # replay the checks from the recorded weights: the first check below reference - 5 points
    probe = copy.deepcopy(model)
    good, stop = None, None
    for step in range(every, recorder.steps + 1, every):
        probe.load_state_dict(recorder.states[step - 1])
        if percent(probe, holdout.x, holdout.y) < reference - 5.0:
            stop = step
            break
        good = step
    assert stop is not None and stop == guard["stopped_at_step"] == recorder.steps  # nothing ran after the stop
    assert guard["steps_kept"] == (good or 0)
    expected = recorder.states[good - 1] if good else problem()[2].state_dict()
    for name, value in unlearned.state_dict().items():
        assert torch.equal(value, expected[name]), name
    assert percent(unlearned, holdout.x, holdout.y) >= reference - 5.0


def test_an_unguarded_run_of_the_same_ascent_does_collapse(monkeypatch):
    """The case above really diverges: without the guard the held-out accuracy falls > 5 points."""
    task = random_task(lr=0.5)
    holdout = base.holdout_split(task)[1]
    model = original()
    reference = percent(copy.deepcopy(model), holdout.x, holdout.y)
    training.train(model, task.x_forget, task.y_forget, training.TrainConfig(0, 0.5, 32, weight_decay=0.0, steps=60),
                   seed=0, desc="unguarded", loss_sign=-1.0)
    assert percent(model, holdout.x, holdout.y) < reference - 20


@pytest.mark.parametrize("name, tune", [("ga", ()), ("bs", ()), ("ft", (0.5, 2.0)), ("rl", (0.5, 2.0))])
def test_the_held_out_slice_is_never_trained_on_and_never_test_data(name, tune, monkeypatch):
    data, _, _ = problem()
    task = random_task(tune=tune, epochs=1)
    trained, evaluated = [], []
    real_train = training.train

    def record_train(model, x, y, config, **kwargs):
        trained.append(rows(x))
        return real_train(model, x, y, config, **kwargs)

    real_predict = training.predict_probabilities

    def record_predict(model, x, *args, **kwargs):
        evaluated.append(rows(x))
        return real_predict(model, x, *args, **kwargs)

    import intunlearn.unlearning.methods.boundary_shrink as bs_module
    import intunlearn.unlearning.methods.simple as simple_module
    for module in (simple_module, bs_module):
        monkeypatch.setattr(module, "train", record_train)
    monkeypatch.setattr(training, "predict_probabilities", record_predict)
    monkeypatch.setattr(base, "predict_probabilities", record_predict)
    method = get_method(name)
    method.unlearn(original(), task)
    report = method.diagnostics().get("guard") or method.diagnostics()["tune"]
    size = report["slice_samples"]
    retain = len(task.y_retain)
    assert size == min(retain // 2, max(round(0.05 * retain), 50))  # the stated rule
    slices = [r for r in evaluated if len(r) == size and r <= rows(task.x_retain)]
    assert slices, "the held-out slice was never evaluated"
    held = slices[0]
    assert all(s == held for s in slices)
    assert trained and all(not (t & held) for t in trained)
    test_rows = rows(data.x_test)
    assert all(not (e & test_rows) for e in evaluated)


def test_the_slice_is_seeded():
    task = random_task()
    first, second = base.holdout_split(task)[1], base.holdout_split(task)[1]
    other = base.holdout_split(dataclasses.replace(task, seed=1))[1]
    assert torch.equal(first.indices, second.indices) and not torch.equal(first.indices, other.indices)
    rest = base.holdout_split(task)[0]
    assert len(rest.y_retain) + len(first.y) == len(task.y_retain)
    assert not (rows(rest.x_retain) & rows(first.x))


# ---- --tune ----------------------------------------------------------------------------------------


def expected_choice(candidates, reference, margin=5.0):
    """The README's rule, written out here: within the margin, the lowest forget accuracy, then
    the highest slice accuracy, then the smallest lr; none within: the highest slice accuracy."""
    ok = [c for c in candidates if c[1] >= reference - margin]
    if ok:
        best = sorted(ok, key=lambda c: (c[2], -c[1], c[0]))[0]
    else:
        best = sorted(candidates, key=lambda c: (-c[1], c[0]))[0]
    return best[0]


@pytest.mark.parametrize("reference, outcomes", [
    (98.0, {1 / 3: (97.0, 60.0), 1.0: (95.0, 30.0), 3.0: (80.0, 0.0)}),  # 3x forgets most but breaks the slice
    (98.0, {1 / 3: (97.0, 30.0), 1.0: (99.0, 30.0), 3.0: (94.0, 30.0)}),  # a tie on forgetting: the better slice
    (98.0, {1 / 3: (90.0, 80.0), 1.0: (85.0, 10.0), 3.0: (70.0, 0.0)}),  # none within: the best slice
    (90.0, {1 / 3: (89.0, 50.0), 1.0: (88.0, 50.0), 3.0: (88.0, 50.0)}),
])
def test_tune_picks_by_its_stated_rule_and_evaluates_only_slice_and_forget_set(reference, outcomes, monkeypatch):
    data, _, _ = problem()
    task = random_task(tune=base.TUNE_FACTORS)
    method = get_method("ft")
    default = method.lr(dataclasses.replace(task, tune=()))
    current = {}

    def fake_fit(self, model, run_task):
        current["lr"] = run_task.lr
        model.marker = run_task.lr  # which candidate this model is
        return model

    def fake_percent(model, x, y):
        kind = "forget" if rows(x) == rows(task.x_forget) else "slice"
        assert kind == "forget" or rows(x) <= rows(task.x_retain)
        assert not rows(x) & rows(data.x_test)
        if "lr" not in current:
            assert kind == "slice"
            return reference
        factor = min(outcomes, key=lambda f: abs(f * default - current["lr"]))
        return outcomes[factor][0 if kind == "slice" else 1]

    monkeypatch.setattr(type(method), "fit", fake_fit)
    monkeypatch.setattr(base, "percent_correct", fake_percent)
    chosen = method.unlearn(original(), task)
    expected = expected_choice([(f * default, *o) for f, o in outcomes.items()], reference)
    report = method.diagnostics()["tune"]
    assert report["chosen_lr"] == pytest.approx(expected)
    assert chosen.marker == pytest.approx(expected)
    assert method.diagnostics()["lr"] == pytest.approx(expected)
    assert [c["lr"] for c in report["candidates"]] == pytest.approx([f * default for f in outcomes])


def test_a_tuned_run_reports_the_chosen_learning_rate(tmp_path):
    results = run_experiment(tiny_config(methods=("retrain", "ft", "ga"), tune=(0.5, 2.0)), tmp_path / "out",
                             tmp_path / "cache", data=tiny_dataset())
    for row in results["rows"][2:]:
        tune = row["tune"]
        assert tune["chosen_lr"] in [c["lr"] for c in tune["candidates"]] and len(tune["candidates"]) == 2
        assert row["lr"] == tune["chosen_lr"]
    assert "tune" not in results["rows"][1]  # retrain runs the recipe


@pytest.mark.parametrize("value", ["1", "0,1", "a,b", "1,1", "2,inf", "-1,2"])
def test_bad_tune_values_are_refused_by_the_cli(value, capsys):
    with pytest.raises(SystemExit) as error:
        main(["run", f"--tune={value}"])
    assert error.value.code == 2
    assert "--tune" in capsys.readouterr().err


@pytest.mark.parametrize("overrides, message", [
    (dict(tune=(1.0,)), "tune must be at least two distinct finite positive"),
    (dict(tune=(1.0, 1.0)), "tune must be at least two distinct finite positive"),
    (dict(tune=(0.5, float("nan"))), "tune must be at least two distinct finite positive"),
    (dict(tune=(0.5, 2.0), unlearn_lr=0.01), "not both"),
    (dict(method_defaults=1), "method_defaults records the version"),
])
def test_bad_tune_settings_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides).validate()


def test_cli_refuses_tune_with_an_unlearning_lr(tmp_path, capsys):
    assert main(["run", "--tune", "--unlearn-lr", "0.01", "--out", str(tmp_path / "out")]) == 2
    assert "not both" in capsys.readouterr().err


def test_a_progress_file_of_the_earlier_defaults_is_refused_with_a_clear_error(tmp_path):
    config = tiny_config(methods=("retrain",))
    run_experiment(config, tmp_path / "out", tmp_path / "cache", data=tiny_dataset())
    path = tmp_path / "out" / "progress.json"
    progress = json.loads(path.read_text())
    for key in ("tune", "method_defaults"):  # written before these fields existed
        del progress["config"][key]
    del progress["checksum"]
    progress["checksum"] = progress_checksum(progress)
    path.write_text(json.dumps(progress))
    with pytest.raises(ValueError, match=r"another configuration \(method_defaults: None then, 2 now"):
        run_experiment(config, tmp_path / "out", tmp_path / "cache", data=tiny_dataset())


# ---- Q-MUL with per-epoch relabelling ------------------------------------------------------------


def test_qmul_relabel_relabels_every_epoch_in_mixed_batches(monkeypatch):
    """qmul-relabel: the similar labels are recomputed at the start of each epoch with the model
    as it is then, and that epoch's training batches use them; batches mix forget and retain
    samples (the joint objective), unlike qmul-seq's separate passes."""
    from intunlearn.unlearning.methods import qmul
    from intunlearn.unlearning.methods.qmul import QMULRelabel

    task = random_task(epochs=3, lr=0.5)  # large enough that the labels change between epochs
    labels, batches = [], []

    def relabel(self, model, t):
        probabilities = training.predict_probabilities(model, t.x_forget)
        labels.append(qmul.similar_labels(probabilities, t.y_forget))  # the stated rule, on the current model
        return labels[-1].clone()

    real_cross_entropy = torch.nn.functional.cross_entropy
    forget_index = {tuple(r): i for i, r in enumerate(task.x_forget.flatten(1).tolist())}
    inputs = []

    def cross_entropy(logits, target, *args, **kwargs):
        if kwargs.get("reduction") == "none":  # train()'s batches (the gradient norms use the mean)
            batches.append((len(labels), inputs[-1], target.clone()))
        return real_cross_entropy(logits, target, *args, **kwargs)

    monkeypatch.setattr(QMULRelabel, "relabel", relabel)
    monkeypatch.setattr(training.F, "cross_entropy", cross_entropy)
    model = original()
    model.register_forward_pre_hook(
        lambda module, args: inputs.append([tuple(r) for r in args[0].flatten(1).tolist()]) if module.training else None)
    method = get_method("qmul-relabel")
    method.unlearn(model, task)
    assert len(labels) == 3
    assert [entry["epoch"] for entry in method.diagnostics()["agr_history"]] == [0, 1, 2]
    assert len(batches) == 3 * -(-(len(task.y_forget) + len(task.y_retain)) // 32)
    mixed = 0
    for relabellings, batch_rows, target in batches:
        current = labels[relabellings - 1]  # the latest relabelling when this batch ran
        forget = [(i, forget_index[r]) for i, r in enumerate(batch_rows) if r in forget_index]
        assert all(int(target[i]) == int(current[j]) for i, j in forget)
        mixed += 0 < len(forget) < len(batch_rows)
    assert mixed > 0  # the joint objective: forget and retain samples share batches
    # the labels did change between epochs here, so using stale ones would have failed above
    assert any(not torch.equal(labels[0], later) for later in labels[1:])
