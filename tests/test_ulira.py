"""U-LiRA: the statistics on hand-made cases, the planning, and a tiny end-to-end run (local and
Ray executors, resume)."""

import json
import math
import shutil

import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats

from intunlearn.executors import LocalExecutor
from intunlearn.unlearning import ulira
from intunlearn.unlearning.ulira import (SIGMA_FLOOR, attack, attack_metrics, fit_gaussians, logit_confidence,
                                         plan_shadows, run_ulira, tpr_at_fpr)
from test_unlearning import tiny_config, tiny_dataset

# ---- phi ---------------------------------------------------------------------------------------


def test_logit_confidence_is_log_odds_of_the_true_label():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 5, generator=generator) * 3
    labels = torch.randint(0, 5, (50,), generator=generator)
    p = torch.softmax(logits.double(), dim=1).numpy()[np.arange(50), labels.numpy()]
    np.testing.assert_allclose(logit_confidence(logits, labels), np.log(p / (1 - p)), rtol=1e-9, atol=1e-9)


def test_logit_confidence_is_finite_where_p_rounds_to_one():
    # p_y / (1 - p_y) = e^60 / (4 e^0): phi = 60 - log 4, although 1 - p_y is 0 in float64
    logits = torch.tensor([[60.0, 0.0, 0.0, 0.0, 0.0]])
    assert logit_confidence(logits, torch.tensor([0]))[0] == pytest.approx(60 - math.log(4), abs=1e-12)


# ---- planning ----------------------------------------------------------------------------------


def test_plan_halves_pool_and_forget_sets():
    n, k, pool_size = 300, 7, 40
    plan = plan_shadows(n, k, pool_size, seed=3)
    assert len(np.unique(plan.pool)) == pool_size and plan.pool.min() >= 0 and plan.pool.max() < n
    # every example is held by exactly ceil(K/2) shadows
    assert (plan.members.sum(axis=0) == math.ceil(k / 2)).all()
    # so each shadow holds about half: 4 of 7 shadows per example -> n * 4/7 on average, sd < sqrt(n)/2
    assert abs(plan.members.sum(axis=1) - n * 4 / 7).max() < 4 * math.sqrt(n) / 2
    pool = set(plan.pool.tolist())
    for shadow in range(k):
        held = set(np.flatnonzero(plan.members[shadow]).tolist())
        forget = set(torch.nonzero(plan.forget_mask(shadow)).flatten().tolist())
        assert forget == held & pool
        assert set(np.asarray(plan.pool)[plan.pool_in_forget()[shadow]].tolist()) == held & pool
        assert torch.equal(plan.train_mask(shadow), torch.from_numpy(plan.members[shadow]))
    again, other = plan_shadows(n, k, pool_size, seed=3), plan_shadows(n, k, pool_size, seed=4)
    assert np.array_equal(again.pool, plan.pool) and np.array_equal(again.members, plan.members)
    assert not np.array_equal(other.members, plan.members)


def test_shadow_models_train_on_their_half_and_the_reference_never_sees_the_pool(tmp_path, monkeypatch):
    """O_k on D_k, the method "retrain" and R_k on D_k minus the pool, with different seeds;
    captured where the recipe is run, compared with the plan by the images themselves."""
    from intunlearn.unlearning import engine

    data = tiny_dataset()
    plan = plan_shadows(len(data.y_train), 6, 40, seed=1)
    index = {row.numpy().tobytes(): i for i, row in enumerate(data.x_train)}
    calls = []
    run_recipe = engine.Experiment._run_recipe

    def recording(self, x, y, seed, role):
        calls.append((role, seed, {index[row.numpy().tobytes()] for row in x}))
        return run_recipe(self, x, y, seed, role)

    monkeypatch.setattr(engine.Experiment, "_run_recipe", recording)
    shared = ulira.ShadowInputs(tiny_config(methods=("retrain",)), data, plan, str(tmp_path / "cache"))
    result = ulira.shadow_task(shared, ulira.ShadowTask(4, "integer"))
    held = set(np.flatnonzero(plan.members[4]).tolist())
    outside_pool = held - set(plan.pool.tolist())
    # seeds: seed + 2k for O_k and the task, seed + 2k + 1 for R_k
    assert [(role, seed) for role, seed, _ in calls] == [("original", 9), ("retrain", 9), ("retrain", 10)]
    assert [rows for _, _, rows in calls] == [held, outside_pool, outside_pool]
    assert result["in_forget"] == [bool(i in held) for i in plan.pool]
    # an independent retrain: the method's model is not the reference
    assert result["phi"]["retrain"]["as_unlearned"] != result["phi"]["reference"]["as_unlearned"]


@pytest.mark.parametrize("shadows, pool, match", [(4, 10, "shadows must be >= 5"), (6, 300, "pool_size"),
                                                  (6, 0, "pool_size"), (6.0, 10, "shadows must be an int")])
def test_plan_refuses_bad_counts(shadows, pool, match):
    with pytest.raises(ValueError, match=match):
        plan_shadows(300, shadows, pool, seed=0)


# ---- the attack's statistics -------------------------------------------------------------------


def test_leave_one_out_never_reads_the_target():
    rng = np.random.default_rng(0)
    phi = rng.normal(size=(8, 30))
    observed = rng.random((8, 30)) < 0.6
    poisoned = phi.copy()
    poisoned[3] = np.nan  # the target's own observations: reading them would make NaN
    fitted = fit_gaussians(poisoned, observed, leave_out=3)
    others = np.delete(np.arange(8), 3)
    for p in range(30):
        values = phi[others, p][observed[others, p]]
        assert fitted.count[p] == len(values)
        if len(values) >= 2:
            assert fitted.mean[p] == pytest.approx(values.mean(), abs=1e-12)
            assert fitted.sd[p] == pytest.approx(max(values.std(ddof=1), SIGMA_FLOOR), abs=1e-12)


def simulated(shift: float, shadows=16, pool=200, seed=0):
    """phi of unlearned (U) and never-seen (R) models: per example a mean of its own (the per-example
    calibration matters), U = mean + shift + noise, R = mean + noise (unit noise)."""
    rng = np.random.default_rng(seed)
    plan = plan_shadows(1000, shadows, pool, seed)
    example_mean = rng.normal(0, 3, size=pool)
    unlearned = example_mean + shift + rng.normal(size=(shadows, pool))
    never = example_mean + rng.normal(size=(shadows, pool))
    return unlearned, never, plan.pool_in_forget(), np.ones((shadows, pool), dtype=bool)


def test_separable_gaussians_give_auc_near_one():
    # unit-variance Gaussians 3 apart: the optimal AUC is Phi(3 / sqrt 2) = 0.983
    result = attack(*simulated(3.0))
    assert result["auc"]["mean"] > 0.95 and result["auc"]["low"] > 0.9
    assert result["balanced_accuracy"]["mean"] > 0.85  # optimal: Phi(1.5) = 0.933
    assert result["examples_skipped"] == 0 and result["targets"] == 16


def test_identical_distributions_give_auc_near_one_half():
    # about 100 positives and 100 negatives per target: the AUC's standard error is
    # sqrt((n+ + n- + 1) / (12 n+ n-)) = 0.04 per target, about 0.01 for the mean of 16; 0.05 is 5 of those
    result = attack(*simulated(0.0))
    assert abs(result["auc"]["mean"] - 0.5) < 0.05
    assert abs(result["balanced_accuracy"]["mean"] - 0.5) < 0.05
    assert result["auc"]["low"] < 0.5 + 0.05  # and the interval is not far above chance


def test_tpr_at_fpr_against_a_direct_count():
    negatives = np.arange(100.0)  # 100 negatives: 1% FPR allows one false positive, 0.1% none
    positives = np.array([99.5, 120.0, 98.5, 50.5, 97.5, 200.0, 10.5, 98.7])
    labels = np.r_[np.ones(len(positives)), np.zeros(len(negatives))]
    scores = np.r_[positives, negatives]
    # zero false positives: the positives above every negative; one: above the second-highest
    assert tpr_at_fpr(labels, scores, 0.001) == pytest.approx(np.mean(positives > 99))
    assert tpr_at_fpr(labels, scores, 0.01) == pytest.approx(np.mean(positives > 98))
    metrics = attack_metrics(positives - 60, negatives - 60)  # threshold 0: likelihood ratio 1
    expected_ba = (np.mean(positives - 60 > 0) + np.mean(negatives - 60 <= 0)) / 2
    assert metrics["balanced_accuracy"] == pytest.approx(expected_ba)
    assert metrics["auc"] == pytest.approx(np.mean(positives[:, None] > negatives[None, :]))


def test_too_few_observations_are_skipped_and_counted():
    unlearned, never, in_forget, never_observed = simulated(1.0, shadows=6, pool=20)
    thin = in_forget.copy()
    thin[:, 0] = [True, True, False, False, False, False]  # example 0: 1 observation left when a holder is the target
    result = attack(unlearned, never, thin, never_observed)
    assert result["examples_skipped"] == 2


def test_interval_is_the_student_t_interval_over_targets():
    result = attack(*simulated(1.0))
    values = np.array(result["auc"]["values"])
    half = scipy_stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    assert result["auc"]["high"] - result["auc"]["mean"] == pytest.approx(half)


# ---- end to end --------------------------------------------------------------------------------

SHADOWS, POOL = 6, 40


def tiny_run(tmp_path, name, executor, cache=None):
    return run_ulira(tiny_config(methods=("ft",)), tmp_path / name, cache or tmp_path / f"cache-{name}",
                     pipelines=("integer",), shadows=SHADOWS, pool_size=POOL, seed=0, executor=executor,
                     data=tiny_dataset())


def comparable(results):
    return {key: value for key, value in results.items() if key != "machine"}


@pytest.fixture(scope="module")
def local_results(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ulira")
    return folder, tiny_run(folder, "local", LocalExecutor(threads=1))


def test_tiny_run_writes_its_files_and_attacks_every_model(local_results):
    folder, results = local_results
    out = folder / "local"
    assert json.loads((out / "ulira.json").read_text())["rows"] == json.loads(json.dumps(results["rows"]))
    table = (out / "ulira.md").read_text()
    assert "| ft | integer | as unlearned |" in table and "| original | integer | deployed |" in table
    assert {(r["method"], r["evaluation"]) for r in results["rows"]} == {
        (m, e) for m in ("original", "ft") for e in ("as_unlearned", "deployed")}
    for row in results["rows"]:
        assert row["targets"] == SHADOWS and row["auc"]["n"] == SHADOWS
        assert 0 <= row["auc"]["mean"] <= 1 and row["mia_efficacy"]["n"] == SHADOWS
    # each target attacks the pool examples it unlearned (ceil(6/2) - 1 = 2 observations each remain)
    assert results["rows"][0]["examples_used"] == sum(results["forget_sizes"]) == 3 * POOL


def test_resume_skips_finished_shadows_and_gives_identical_results(local_results, monkeypatch):
    folder, results = local_results
    out = folder / "resumed"
    shutil.copytree(folder / "local", out)
    (out / "shadows" / "integer" / "shadow-002.json").unlink()
    ran = []
    original_task = ulira.shadow_task

    def counting(shared, task):
        ran.append(task)
        return original_task(shared, task)

    monkeypatch.setattr(ulira, "shadow_task", counting)
    resumed = tiny_run(folder, "resumed", LocalExecutor(threads=1), cache=folder / "cache-fresh")
    assert ran == [ulira.ShadowTask(2, "integer")]
    assert comparable(resumed) == comparable(results)


def test_ctrl_c_keeps_finished_shadows_and_the_same_call_resumes(local_results, monkeypatch):
    from intunlearn.unlearning.engine import Interrupted

    folder, results = local_results
    original_task, calls = ulira.shadow_task, []

    def interrupted_third(shared, task):
        calls.append(task)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original_task(shared, task)

    monkeypatch.setattr(ulira, "shadow_task", interrupted_third)
    with pytest.raises(Interrupted, match="2 of 6 shadow tasks finished"):
        tiny_run(folder, "interrupted", LocalExecutor(threads=1), cache=folder / "cache-local")
    assert len(list((folder / "interrupted" / "shadows" / "integer").glob("*.json"))) == 2
    monkeypatch.setattr(ulira, "shadow_task", original_task)
    resumed = tiny_run(folder, "interrupted", LocalExecutor(threads=1), cache=folder / "cache-local")
    assert comparable(resumed) == comparable(results)


def test_a_damaged_shadow_file_is_named(local_results):
    folder, _ = local_results
    out = folder / "damaged"
    shutil.copytree(folder / "local", out)
    path = out / "shadows" / "integer" / "shadow-001.json"
    saved = json.loads(path.read_text())
    saved["result"]["phi"]["ft"]["deployed"][0] += 1.0
    path.write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="shadow-001.json: checksum mismatch"):
        tiny_run(folder, "damaged", LocalExecutor(threads=1), cache=folder / "cache-local")


def test_bad_inputs_are_refused_before_training(tmp_path):
    def run(**overrides):
        values = dict(pipelines=("integer",), shadows=SHADOWS, pool_size=POOL, data=tiny_dataset(),
                      executor=LocalExecutor(threads=1))
        values.update(overrides)
        config = values.pop("config", tiny_config(methods=("ft",)))
        return run_ulira(config, tmp_path / "out", tmp_path / "cache", **values)

    with pytest.raises(ValueError, match="shadows must be >= 5"):
        run(shadows=1)
    with pytest.raises(ValueError, match="pool_size"):
        run(pool_size=len(tiny_dataset().y_train))
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        run(methods=("nope",))
    with pytest.raises(ValueError, match="pipelines"):
        run(pipelines=("int",))
    with pytest.raises(ValueError, match="forget must be a random"):
        run(config=tiny_config(methods=("ft",), forget="class:2"))
    assert not (tmp_path / "cache").exists()


@pytest.fixture(scope="module")
def ray_executor():
    executors = pytest.importorskip("intunlearn.executors")
    pytest.importorskip("ray")
    executor = executors.RayExecutor(num_cpus=2, cpus_per_task=1)
    yield executor
    executor.close()


def test_ray_gives_the_local_executors_results(local_results, ray_executor, tmp_path):
    # same threads per task (1): identical float sums, hence identical models and scores
    _, results = local_results
    assert comparable(tiny_run(tmp_path, "ray", ray_executor)) == comparable(results)


def test_experiment_takes_an_explicit_split_and_checks_it(tmp_path):
    from intunlearn.unlearning.engine import Experiment

    data = tiny_dataset()
    n = len(data.y_train)
    train = torch.arange(n) % 2 == 0
    forget = torch.arange(n) % 3 == 0
    experiment = Experiment(tiny_config(), tmp_path, data, split=(train, forget))
    assert torch.equal(experiment.x_forget, data.x_train[train & forget])
    assert torch.equal(experiment.x_retain, data.x_train[train & ~forget])
    with pytest.raises(ValueError, match="the train mask must be a bool tensor"):
        Experiment(tiny_config(), tmp_path, data, split=(train.long(), forget))
    with pytest.raises(ValueError, match="must both be non-empty"):
        Experiment(tiny_config(), tmp_path, data, split=(train, torch.zeros(n, dtype=torch.bool)))
    with pytest.raises(ValueError, match="forget spec must be random"):
        Experiment(tiny_config(forget="class:2"), tmp_path, data, split=(train, forget))
