"""U-LiRA: a per-example membership-inference attack on unlearning, with shadow models.

After Hayes et al., "Inexact unlearning needs more careful evaluations to avoid a false sense of
privacy" (arXiv 2403.01218). A population attack such as MIA-Efficacy asks whether the forget set
*as a whole* looks like unseen data; U-LiRA asks, for each example, whether the unlearned model's
output on it looks like that of a model that never saw it, calibrated per example with shadow
models. What this implementation does, exactly:

Planning (`plan_shadows`). A fixed target pool of `pool_size` training examples (seeded). K
shadow models; every training example is held by exactly ceil(K/2) of them (a seeded random
choice per example, as in LiRA), so each shadow trains on about half the training set, D_k.
Shadow k's forget set is F_k = D_k ∩ pool, its retain set D_k \\ F_k.

Per shadow and pipeline (`shadow_task`, one executor task): the original O_k (the pipeline's
recipe on D_k, seed `seed + 2k`), each method unlearning F_k from a copy of it (task seed
`seed + 2k`; the method "retrain" is then the recipe on D_k \\ F_k with that seed), and the
reference R_k: the recipe on D_k \\ F_k with another seed, `seed + 2k + 1`, so that "retrain"
scored against R_k is an independent retrain and sits at chance. For every pool example x it
records phi = log(p_y / (1 - p_y)), the logit-scaled true-label confidence, computed from the
logits z as z_y - logsumexp_{c != y} z_c in float64 (the same quantity without forming p, so
no clipping is needed), for every model as unlearned (the pipeline's own arithmetic) and as
deployed (engine.Experiment.deploy: integer arithmetic, float32 activation scales). Every model
comes from the content-addressed model cache when it is there.

The attack (`attack_pipeline`). Observations of phi at x when x was unlearned: U_j(x) for the
shadows j with x in F_j. Observations when x was never seen: R_j(x) for *every* shadow j, since
R_j trains on D_j \\ pool and never sees a pool example (for j with x in F_j it is exactly the
retrained counterpart; for the others, a model of the same recipe that never saw x). Each shadow
k in turn is the target (leave-one-out): one Gaussian per example is fitted to each group of the
other K - 1 shadows' observations (mean, standard deviation with ddof=1, floored at SIGMA_FLOOR),
and the score of an observation is the log-likelihood ratio log N(phi; unlearned) - log N(phi;
never seen). Positives: U_k(x), negatives: R_k(x), for x in F_k. An example with fewer than
MIN_OBSERVATIONS observations in either group is skipped (counted and reported). Per target:
the AUC (sklearn.metrics.roc_auc_score), the balanced accuracy at likelihood ratio > 1 (score >
0 is called "unlearned"), and the TPR at 1% and 0.1% FPR read off sklearn.metrics.roc_curve as
the largest TPR among its points with FPR <= the level (with n negatives, floor(level n) false
positives are allowed; below 1/n that is the TPR at zero false positives). Each figure is
reported as the mean with a 95% Student-t interval over the K targets (stats.mean_interval). A
perfect unlearner sits at chance: AUC 0.5, balanced accuracy 0.5, TPR at a FPR level about that
level. The original model (no unlearning) is attacked the same way, as the attack's reference
strength. Simplifications: no offline variant (both Gaussians are always fitted), no
augmentations or multiple queries per example, one fixed pool, Gaussians per example without a
global variance.

The population MIA-Efficacy of the same models (engine metrics on F_k, the retain set and the
test set, as in the main experiment) is reported beside the attack, as its mean over shadows.

`run_ulira` plans, runs every (shadow, pipeline) task through an executor
(intunlearn.executors), writes each finished task's data atomically under out_dir/shadows/, and
skips finished tasks when restarted; then it writes ulira.json and ulira.md.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve

import intunlearn
from intunlearn.io import check_writable, json_safe, write_bytes_atomic, write_json_atomic
from intunlearn.unlearning import stats
from intunlearn.unlearning.engine import (PIPELINES, Experiment, ExperimentConfig, Interrupted, _is_quantized,
                                          data_fingerprint, lock_output)
from intunlearn.unlearning.forget import parse_forget
from intunlearn.unlearning.methods import get_method

EVALUATIONS = ("as_unlearned", "deployed")
ORIGINAL, REFERENCE = "original", "reference"  # O_k (attacked as a reference) and R_k (never saw the pool)
SIGMA_FLOOR = 1e-3  # the smallest standard deviation of a fitted Gaussian, in phi units (logits)
MIN_OBSERVATIONS = 2  # per group and example, after leaving the target out
FPR_LEVELS = (0.01, 0.001)
SHADOW_FORMAT = "intunlearn U-LiRA shadow"
SHADOW_VERSION = 1
MIN_SHADOWS = 5  # ceil(K/2) - 1 >= MIN_OBSERVATIONS unlearned observations per example


# ---- planning ----------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ShadowPlan:
    """pool: sorted training-set indices of the target pool [P]; members: [K, N] bool, shadow k
    trains on example i."""

    pool: np.ndarray
    members: np.ndarray
    seed: int

    @property
    def shadows(self) -> int:
        return self.members.shape[0]

    def train_mask(self, k: int) -> torch.Tensor:
        return torch.from_numpy(self.members[k].copy())

    def forget_mask(self, k: int) -> torch.Tensor:
        """F_k = D_k ∩ pool, over the training set."""
        in_pool = np.zeros(self.members.shape[1], dtype=bool)
        in_pool[self.pool] = True
        return torch.from_numpy(self.members[k] & in_pool)

    def pool_in_forget(self) -> np.ndarray:
        """[K, P] bool: pool example p is in F_k."""
        return self.members[:, self.pool]

    def seeds(self, k: int) -> tuple[int, int]:
        """(seed of O_k and of the unlearning task, seed of the reference R_k)."""
        return self.seed + 2 * k, self.seed + 2 * k + 1


def plan_shadows(train_size: int, shadows: int, pool_size: int, seed: int) -> ShadowPlan:
    """The target pool and the shadows' training halves (see the module docstring)."""
    check_counts(train_size, shadows, pool_size)
    rng = np.random.default_rng(seed)
    pool = np.sort(rng.choice(train_size, size=pool_size, replace=False))
    # each example's rank among the shadows (a random permutation per example): the shadows
    # ranked below K/2 hold it, i.e. exactly ceil(K/2) of them
    ranks = rng.random((shadows, train_size)).argsort(axis=0).argsort(axis=0)
    plan = ShadowPlan(pool=pool, members=ranks < shadows / 2, seed=seed)
    forget_sizes = plan.pool_in_forget().sum(axis=1)
    retain_sizes = plan.members.sum(axis=1) - forget_sizes
    for k in range(shadows):
        if forget_sizes[k] == 0 or retain_sizes[k] == 0:
            raise ValueError(f"pool_size {pool_size}: shadow {k} would unlearn {forget_sizes[k]} and keep "
                             f"{retain_sizes[k]} examples; both must be non-empty (use a larger pool, or a smaller "
                             f"one than the training set)")
    return plan


def check_counts(train_size: int, shadows, pool_size) -> None:
    for name, value in (("shadows", shadows), ("pool_size", pool_size)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{name} must be an int, got {value!r}")
    if shadows < MIN_SHADOWS:
        raise ValueError(f"shadows must be >= {MIN_SHADOWS}, got {shadows}: each pool example is unlearned in "
                         f"ceil(K/2) shadows, and with the target left out the Gaussian of the unlearned "
                         f"observations needs {MIN_OBSERVATIONS} of them")
    if not 1 <= pool_size < train_size:
        raise ValueError(f"pool_size must be in [1, {train_size - 1}] (the training set has {train_size} samples "
                         f"and the shadows need some outside the pool to retrain on), got {pool_size}")


# ---- one shadow: the data the attack needs -----------------------------------------------------


class ShadowInputs(NamedTuple):
    """What every shadow task shares: the base configuration (its methods), the data, the plan
    and the model cache."""

    config: ExperimentConfig
    data: object  # intunlearn.data.Dataset
    plan: ShadowPlan
    cache_dir: str


class ShadowTask(NamedTuple):
    shadow: int
    pipeline: str


def logit_confidence(logits: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """phi = log(p_y / (1 - p_y)) with p = softmax(logits), as z_y - logsumexp_{c != y} z_c in
    float64 (exact algebra: p_y / (1 - p_y) = exp(z_y) / sum_{c != y} exp(z_c))."""
    z = logits.detach().double().cpu()
    labels = labels.cpu()
    true = z.gather(1, labels[:, None]).squeeze(1)
    others = z.scatter(1, labels[:, None], -math.inf)
    phi = (true - torch.logsumexp(others, dim=1)).numpy()
    if not np.isfinite(phi).all():
        raise ValueError("the model's logits on the pool are not finite")
    return phi


@torch.no_grad()
def _logits(model, x, batch_size: int = 512) -> torch.Tensor:
    model.eval()
    return torch.cat([model(part) for part in x.split(batch_size)])


def _measure(experiment: Experiment, model, x_pool, y_pool, pipeline: str, with_metrics: bool) -> dict:
    """phi on the pool and (with_metrics) the engine's FA/RA/TA/MIA, as unlearned (the pipeline's
    arithmetic) and as deployed."""
    if _is_quantized(model):
        intunlearn.set_arithmetic(model, pipeline)
    deployed = experiment.deploy(model)
    result = {"phi": {}, "metrics": {}}
    for evaluation, candidate in (("as_unlearned", model), ("deployed", deployed)):
        result["phi"][evaluation] = logit_confidence(_logits(candidate, x_pool), y_pool).tolist()
        if with_metrics:
            result["metrics"][evaluation] = experiment._metrics(candidate)
    return result


def shadow_task(shared: ShadowInputs, task: ShadowTask) -> dict:
    """Shadow `task.shadow` in `task.pipeline`: O_k, every method's unlearned model, R_k; for
    each, phi on the pool as unlearned and as deployed, and (not for R_k) the engine's metrics.
    Plain data; writes nothing but the model cache."""
    config, data, plan = shared.config, shared.data, shared.plan
    k = task.shadow
    train_seed, reference_seed = plan.seeds(k)
    split = (plan.train_mask(k), plan.forget_mask(k))
    shadow_config = dataclasses.replace(config, arithmetic=task.pipeline, seed=train_seed)
    experiment = Experiment(shadow_config, shared.cache_dir, data, split=split)
    reference_experiment = Experiment(dataclasses.replace(shadow_config, seed=reference_seed), shared.cache_dir,
                                      data, split=split)
    device = experiment.device
    x_pool, y_pool = data.x_train[plan.pool].to(device), data.y_train[plan.pool].to(device)

    models, seconds = {}, {}
    start = time.perf_counter()
    original = experiment.original()
    seconds[ORIGINAL] = time.perf_counter() - start
    models[ORIGINAL] = original
    unlearn_task = experiment.task()
    for name in config.methods:
        start = time.perf_counter()
        models[name] = get_method(name).unlearn(copy.deepcopy(original), unlearn_task)
        seconds[name] = time.perf_counter() - start
    start = time.perf_counter()
    models[REFERENCE] = reference_experiment.run_recipe(reference_experiment.x_retain, reference_experiment.y_retain,
                                                        reference_seed, "retrain")
    seconds[REFERENCE] = time.perf_counter() - start

    phi, metrics = {}, {}
    for name, model in models.items():
        measured = _measure(experiment, model, x_pool, y_pool, task.pipeline, with_metrics=name != REFERENCE)
        phi[name] = measured["phi"]
        if name != REFERENCE:
            metrics[name] = measured["metrics"]
    in_forget = plan.pool_in_forget()[k]
    return {"shadow": k, "pipeline": task.pipeline, "in_forget": in_forget.tolist(),
            "forget_samples": int(in_forget.sum()), "retain_samples": len(experiment.y_retain),
            "phi": phi, "metrics": metrics, "seconds": seconds}


# ---- the attack --------------------------------------------------------------------------------


class Gaussians(NamedTuple):
    """One Gaussian per example: mean, sd (floored) and the number of observations [P]."""

    mean: np.ndarray
    sd: np.ndarray
    count: np.ndarray


def fit_gaussians(phi: np.ndarray, observed: np.ndarray, leave_out: int) -> Gaussians:
    """Per example (column), a Gaussian fitted to phi[j, p] over the shadows j != leave_out with
    observed[j, p]: mean, sample standard deviation (ddof=1) floored at SIGMA_FLOOR. The left-out
    row is never read (its values may be anything, NaN included)."""
    keep = np.ones(phi.shape[0], dtype=bool)
    keep[leave_out] = False
    values, mask = phi[keep], observed[keep]
    count = mask.sum(axis=0)
    safe = np.where(mask, values, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = safe.sum(axis=0) / count
        squares = np.where(mask, (values - mean) ** 2, 0.0).sum(axis=0)
        sd = np.sqrt(squares / (count - 1))
    return Gaussians(mean, np.maximum(np.nan_to_num(sd, nan=0.0), SIGMA_FLOOR), count)


def _log_normal(x, gaussians: Gaussians):
    z = (x - gaussians.mean) / gaussians.sd
    return -0.5 * z * z - np.log(gaussians.sd) - 0.5 * math.log(2 * math.pi)


def likelihood_ratio_scores(phi_unlearned, phi_never, unlearned_observed, never_observed, target: int):
    """Leave-one-out scores for one target shadow: (positive scores, negative scores, skipped).
    Positives: log N(U_target(x); unlearned) - log N(U_target(x); never seen); negatives the same
    for R_target(x); over the examples x the target unlearned (unlearned_observed[target]) that
    have MIN_OBSERVATIONS observations in both groups among the other shadows."""
    inside = fit_gaussians(phi_unlearned, unlearned_observed, target)
    outside = fit_gaussians(phi_never, never_observed, target)
    candidates = unlearned_observed[target]
    enough = (inside.count >= MIN_OBSERVATIONS) & (outside.count >= MIN_OBSERVATIONS)
    used = candidates & enough

    def score(phi):
        return (_log_normal(phi, inside) - _log_normal(phi, outside))[used]

    return score(phi_unlearned[target]), score(phi_never[target]), int((candidates & ~enough).sum())


def tpr_at_fpr(labels, scores, level: float) -> float:
    """The largest TPR on the ROC curve among its points with FPR <= level."""
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(tpr[fpr <= level].max())


def attack_metrics(positive_scores, negative_scores) -> dict[str, float]:
    """AUC, balanced accuracy at likelihood ratio > 1 (score > 0) and TPR at FPR_LEVELS."""
    positive_scores, negative_scores = np.asarray(positive_scores), np.asarray(negative_scores)
    if len(positive_scores) == 0 or len(negative_scores) == 0:
        raise ValueError("attack_metrics needs positive and negative scores")
    labels = np.concatenate([np.ones(len(positive_scores)), np.zeros(len(negative_scores))])
    scores = np.concatenate([positive_scores, negative_scores])
    tpr = float((positive_scores > 0).mean())
    tnr = float((negative_scores <= 0).mean())
    result = {"auc": float(roc_auc_score(labels, scores)), "balanced_accuracy": (tpr + tnr) / 2}
    for level in FPR_LEVELS:
        result[_tpr_name(level)] = tpr_at_fpr(labels, scores, level)
    return result


def _tpr_name(level: float) -> str:
    return f"tpr_at_{level * 100:g}%_fpr"


ATTACK_METRICS = ("auc", "balanced_accuracy", *(_tpr_name(level) for level in FPR_LEVELS))


def attack(phi_unlearned, phi_never, unlearned_observed, never_observed) -> dict:
    """Every shadow in turn as the target: per-target metrics, their means with 95% intervals,
    and the skipped (target, example) pairs."""
    per_target, skipped, used = [], 0, 0
    for target in range(phi_unlearned.shape[0]):
        positives, negatives, missed = likelihood_ratio_scores(phi_unlearned, phi_never, unlearned_observed,
                                                               never_observed, target)
        skipped += missed
        if len(positives):
            used += len(positives)
            per_target.append(attack_metrics(positives, negatives))
    summary = {"targets": len(per_target), "examples_used": used, "examples_skipped": skipped}
    for name in ATTACK_METRICS:
        values = [entry[name] for entry in per_target]
        summary[name] = _estimate(values)
    return summary


def _estimate(values) -> dict | None:
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return None
    estimate = stats.mean_interval(finite)
    return {"mean": estimate.mean, "low": estimate.low, "high": estimate.high, "n": estimate.n,
            "values": finite}


def attack_pipeline(shadows: list[dict], names: Sequence[str]) -> list[dict]:
    """One row per model name x evaluation of one pipeline's shadows (in shadow order): the
    attack's figures and the population MIA-Efficacy / forget accuracy over the shadows."""
    in_forget = np.array([s["in_forget"] for s in shadows], dtype=bool)
    never_observed = np.ones_like(in_forget)  # R_j never sees a pool example
    rows = []
    for name in names:
        for evaluation in EVALUATIONS:
            unlearned = np.array([s["phi"][name][evaluation] for s in shadows], dtype=np.float64)
            never = np.array([s["phi"][REFERENCE][evaluation] for s in shadows], dtype=np.float64)
            row = {"method": name, "evaluation": evaluation, **attack(unlearned, never, in_forget, never_observed)}
            for metric, key in (("MIA", "mia_efficacy"), ("FA", "forget_accuracy")):
                row[key] = _estimate([s["metrics"][name][evaluation][metric] for s in shadows])
            rows.append(row)
    return rows


# ---- the driver --------------------------------------------------------------------------------


@dataclass(frozen=True)
class UliraSettings:
    """Everything a shadow file's content depends on (the key of a resumable run)."""

    config: dict
    pipelines: tuple[str, ...]
    shadows: int
    pool_size: int
    seed: int
    threads: int
    data: str

    def key(self) -> str:
        text = json.dumps(json_safe(dataclasses.asdict(self)), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_ulira(config: ExperimentConfig, out_dir, cache_dir, *, pipelines: Sequence[str] = PIPELINES,
              methods: Sequence[str] | None = None, shadows: int = 16, pool_size: int = 200, seed: int = 0,
              executor=None, data=None) -> dict:
    """Run (or resume) U-LiRA: every (shadow, pipeline) task through `executor` (default
    intunlearn.executors.LocalExecutor()), each finished task's data written to
    out_dir/shadows/<pipeline>/shadow-<k>.json as it arrives (a restarted run skips those), then
    ulira.json and ulira.md. Returns the results (as in ulira.json).

    config: the experiment every shadow follows (its dataset, model, recipe, unlearning budget;
    its seed loads the data; its arithmetic and forget fraction are not used: each pipeline is
    run, and the forget sets are the pool's). methods: default config.methods. data: a Dataset in
    place of config.dataset (tests). Everything is checked before any training."""
    from intunlearn.executors import LocalExecutor

    methods = tuple(config.methods if methods is None else methods)
    pipelines = tuple(pipelines)
    config = dataclasses.replace(config, methods=methods)
    check_inputs(config, pipelines)
    if data is None:
        from intunlearn.data import load_dataset
        data = load_dataset(config.dataset, root=config.data_root, seed=config.seed)
    plan = plan_shadows(len(data.y_train), shadows, pool_size, seed)
    out_dir = Path(out_dir)
    check_writable(out_dir, "out")
    check_writable(cache_dir, "cache")
    executor = LocalExecutor() if executor is None else executor
    settings = UliraSettings(config=json_safe(dataclasses.asdict(config)), pipelines=pipelines, shadows=shadows,
                             pool_size=pool_size, seed=seed, threads=executor.threads,
                             data=data_fingerprint(data.x_train, data.y_train, data.x_test, data.y_test))
    lock = lock_output(out_dir)
    finished = {}
    total = shadows * len(pipelines)
    try:
        tasks = []
        for pipeline in pipelines:
            for k in range(shadows):
                path = shadow_path(out_dir, pipeline, k)
                if path.exists():
                    finished[(pipeline, k)] = read_shadow(path, settings, plan, pipeline, k)
                else:
                    tasks.append(ShadowTask(k, pipeline))
        if finished:
            print(f"resuming: {len(finished)} of {total} shadow tasks had finished in {out_dir / 'shadows'}",
                  file=sys.stderr)
        # an absolute cache path: a Ray worker may run in another directory
        shared = ShadowInputs(config, data, plan, str(Path(cache_dir).resolve()))
        for index, result in executor.map_unordered(shadow_task, tasks, shared=shared, desc="U-LiRA shadows"):
            task = tasks[index]
            write_shadow(shadow_path(out_dir, task.pipeline, task.shadow), settings, result)
            finished[(task.pipeline, task.shadow)] = result
        results = summarise(settings, plan, finished, methods)
        write_json_atomic(out_dir / "ulira.json", results)
        write_bytes_atomic(out_dir / "ulira.md", report_markdown(results).encode())
        return results
    except KeyboardInterrupt as error:
        if isinstance(error, Interrupted):
            raise
        raise Interrupted(f"U-LiRA, with {len(finished)} of {total} shadow tasks finished (they are kept)",
                          out_dir) from None
    finally:
        lock.release()


def check_inputs(config: ExperimentConfig, pipelines: tuple[str, ...]) -> None:
    config.validate()
    if not pipelines or len(set(pipelines)) != len(pipelines) or not set(pipelines) <= set(PIPELINES):
        raise ValueError(f"pipelines must be distinct names from {PIPELINES}, at least one, got {pipelines}")
    if config.tflite_path is not None:
        raise ValueError("U-LiRA trains shadow models with the pipeline's recipe; a tflite: model has none")
    if not str(config.forget).startswith("random:"):
        raise ValueError(f"U-LiRA forgets individual examples (the pool's): forget must be a random:FRACTION spec "
                         f"(its fraction is not used), got {config.forget!r}")
    parse_forget(config.forget, 2)  # a malformed fraction is refused here, by the engine's message
    for name in config.methods:
        method = get_method(name)
        if "random" not in method.forget_modes:
            raise ValueError(f"method {name!r} does not unlearn random examples (its forget modes are "
                             f"{method.forget_modes}); U-LiRA needs methods that do")
    for pipeline in pipelines:
        dataclasses.replace(config, arithmetic=pipeline).validate()


def shadow_path(out_dir: Path, pipeline: str, k: int) -> Path:
    return Path(out_dir) / "shadows" / pipeline / f"shadow-{k:03d}.json"


def _checksum(content: dict) -> str:
    return hashlib.sha256(json.dumps(json_safe(content), sort_keys=True, allow_nan=False).encode()).hexdigest()


def write_shadow(path: Path, settings: UliraSettings, result: dict) -> None:
    content = {"format": SHADOW_FORMAT, "version": SHADOW_VERSION, "key": settings.key(),
               "settings": json_safe(dataclasses.asdict(settings)), "result": result}
    write_json_atomic(path, {**content, "checksum": _checksum(content)})


def read_shadow(path: Path, settings: UliraSettings, plan: ShadowPlan, pipeline: str, k: int) -> dict:
    """A finished shadow's data, validated: format, checksum, the run it belongs to, its shape;
    ValueError naming the file otherwise."""
    hint = "delete it to compute this shadow again, or use a fresh out folder"

    def bad(detail):
        return ValueError(f"{path}: {detail}; {hint}")

    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise bad(f"cannot be read as JSON ({error})") from None
    expected = {"format", "version", "key", "settings", "result", "checksum"}
    if not isinstance(saved, dict) or set(saved) != expected:
        raise bad("is not a U-LiRA shadow file")
    if saved["format"] != SHADOW_FORMAT or saved["version"] != SHADOW_VERSION:
        raise bad(f"format {saved['format']!r} version {saved['version']!r}, expected {SHADOW_FORMAT!r} "
                  f"version {SHADOW_VERSION}")
    if saved["checksum"] != _checksum({key: value for key, value in saved.items() if key != "checksum"}):
        raise bad("checksum mismatch: the file is damaged or was edited")
    current = json_safe(dataclasses.asdict(settings))
    if not isinstance(saved["settings"], dict):
        raise bad("its settings are not an object")
    if saved["key"] != settings.key() or saved["settings"] != current:
        differences = "; ".join(f"{name}: {saved['settings'].get(name)!r} then, {current[name]!r} now"
                                for name in current if saved["settings"].get(name) != current[name])
        raise ValueError(f"{path} belongs to a U-LiRA run with other settings ({differences or 'its key differs'});"
                         f" rerun with those settings to keep it, or use a fresh out folder")
    result = saved["result"]
    _check_result(result, plan, pipeline, k, settings.config["methods"], bad)
    return result


def _check_result(result, plan: ShadowPlan, pipeline: str, k: int, methods, bad) -> None:
    if not isinstance(result, dict) or result.get("shadow") != k or result.get("pipeline") != pipeline:
        raise bad(f"does not hold shadow {k} of the {pipeline} pipeline")
    if result.get("in_forget") != plan.pool_in_forget()[k].tolist():
        raise bad("its forget set is not the plan's")
    names = {ORIGINAL, REFERENCE, *methods}
    phi = result.get("phi")
    if not isinstance(phi, dict) or set(phi) != names:
        raise bad(f"its models are {sorted(phi) if isinstance(phi, dict) else phi!r}, expected {sorted(names)}")
    for name, values in phi.items():
        for evaluation in EVALUATIONS:
            series = values.get(evaluation) if isinstance(values, dict) else None
            if not (isinstance(series, list) and len(series) == len(plan.pool)
                    and all(isinstance(v, float) and math.isfinite(v) for v in series)):
                raise bad(f"phi of {name} ({evaluation}) is not {len(plan.pool)} finite numbers")
    metrics = result.get("metrics")
    if not isinstance(metrics, dict) or set(metrics) != names - {REFERENCE}:
        raise bad("its metrics do not cover the models")
    for name, values in metrics.items():
        for evaluation in EVALUATIONS:
            entry = values.get(evaluation) if isinstance(values, dict) else None
            if not isinstance(entry, dict) or not all(
                    isinstance(entry.get(m), (int, float)) and 0 <= entry[m] <= 100 for m in ("FA", "MIA")):
                raise bad(f"the metrics of {name} ({evaluation}) are not numbers in [0, 100]")


def summarise(settings: UliraSettings, plan: ShadowPlan, finished: dict, methods: Sequence[str]) -> dict:
    names = (ORIGINAL, *methods)
    rows = []
    for pipeline in settings.pipelines:
        shadows = [finished[(pipeline, k)] for k in range(settings.shadows)]
        for row in attack_pipeline(shadows, names):
            rows.append({"pipeline": pipeline, **row})
    return {"settings": json_safe(dataclasses.asdict(settings)), "pool": plan.pool.tolist(),
            "shadow_train_sizes": plan.members.sum(axis=1).tolist(),
            "forget_sizes": plan.pool_in_forget().sum(axis=1).tolist(),
            "attack": {"sigma_floor": SIGMA_FLOOR, "min_observations": MIN_OBSERVATIONS,
                       "threshold": "likelihood ratio > 1", "fpr_levels": list(FPR_LEVELS),
                       "never_seen": "R_j(x) for every other shadow j (R_j trains on D_j minus the pool)"},
            "metrics": list(ATTACK_METRICS), "rows": rows,
            "machine": {"platform": platform.platform(), "processor": platform.processor(),
                        "python": platform.python_version(), "torch": torch.__version__}}


def _format(estimate: dict | None, scale: float = 1.0, digits: int = 1) -> str:
    if estimate is None:
        return "-"
    value = stats.Estimate(estimate["mean"] * scale,
                           (estimate["low"] if estimate["low"] is not None else math.nan) * scale,
                           (estimate["high"] if estimate["high"] is not None else math.nan) * scale, estimate["n"])
    return value.format(digits)


def report_markdown(results: dict) -> str:
    settings = results["settings"]
    lines = [f"# U-LiRA: {settings['shadows']} shadows, a pool of {settings['pool_size']} examples "
             f"(dataset {settings['config']['dataset']}, model {settings['config']['model']})", "",
             "Mean ± half-width of the 95% interval over the targets (each shadow in turn). AUC and balanced "
             "accuracy 0.5 = chance; TPR at a FPR level: chance is that level. MIA-Efficacy and FA: the engine's "
             "population metrics (in %) of the same models, mean over shadows.", "",
             "| method | pipeline | evaluation | AUC | balanced acc. | TPR@1%FPR (%) | TPR@0.1%FPR (%) | "
             "MIA-Efficacy (%) | FA (%) | skipped |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in sorted(results["rows"], key=lambda r: (_order(results, r["method"]),
                                                      settings["pipelines"].index(r["pipeline"]),
                                                      EVALUATIONS.index(r["evaluation"]))):
        lines.append(f"| {row['method']} | {row['pipeline']} | {row['evaluation'].replace('_', ' ')} | "
                     f"{_format(row['auc'], digits=3)} | {_format(row['balanced_accuracy'], digits=3)} | "
                     f"{_format(row[_tpr_name(0.01)], 100)} | {_format(row[_tpr_name(0.001)], 100)} | "
                     f"{_format(row['mia_efficacy'])} | {_format(row['forget_accuracy'])} | "
                     f"{row['examples_skipped']} |")
    return "\n".join(lines) + "\n"


def _order(results, method) -> int:
    names = [ORIGINAL, *results["settings"]["config"]["methods"]]
    return names.index(method)
