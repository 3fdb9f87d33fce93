"""The interface every unlearning method implements, and what all methods share: their default
budgets and learning rates, the divergence guard, and the optional learning-rate search.

Defaults that scale with the data and the recipe (issue 15):

- Budget. A method that trains on the retain set (with or without the forget set) runs
  `Budget(epochs=5)`: five passes over the set it trains on, a third of the recipe's 12 + 3
  epochs, so its cost grows with the data as the recipe's does. A method that trains on the
  forget set alone (gradient ascent, boundary shrink) runs a fixed number of optimizer steps,
  `Budget(steps=15)`: its update pushes every weight away from the original model with nothing
  pulling back, and the distance grows with the number of steps, so an epoch budget - 15 steps on
  digits' 144 forget samples, 65 on an 8,000-image set's 800 - would move a larger set's model
  four times as far. 15 steps is what 5 epochs were on digits.
- Learning rate. A fraction of the recipe's learning rate (ExperimentConfig.lr, the float
  pre-training's; quantization-aware training runs at 0.1 x lr): 0.2 x lr for the fine-tuning
  methods, less for the forget-only ones (gradient ascent 0.01 x lr, boundary shrink 0.04 x lr;
  why, in their classes). With the default lr 0.05: 0.01, ga 0.0005 (0.005 before), bs 0.002.
- Overrides. UnlearnTask.epochs (--unlearn-epochs) replaces any budget by that many passes over
  the method's training set; UnlearnTask.lr (--unlearn-lr) is an absolute learning rate.

Divergence guard (methods with `guarded = True`: those that train on the forget set alone).
A seeded slice of the retain set (HOLDOUT_FRACTION of it, at least HOLDOUT_MINIMUM samples while
that leaves half the retain set) is taken out of the task the method sees; the method never
trains on it. Its accuracy is measured before the first step and every tenth of the budget; when
it falls more than GUARD_MARGIN percentage points below the original model's, the weights of the
last passing check are restored and the method stops (training.DivergenceGuard). The slice comes
from the retain set only: a task holds no test data.

Learning-rate search (UnlearnTask.tune, `intunlearn run --tune`): the method runs once per
factor f in tune (default TUNE_FACTORS = 1/3, 1, 3) at f x its default learning rate, each time
on the task without the held-out slice, and keeps the model of the candidate chosen by
`choose_candidate`: among the candidates whose slice accuracy is at most GUARD_MARGIN points
below the original model's, the one with the lowest forget-set accuracy (ties: the higher slice
accuracy, then the smaller learning rate); when none is within the margin, the one with the
highest slice accuracy. Only the held-out slice and the forget set are evaluated.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, ClassVar, NamedTuple

import torch
from torch import nn

from intunlearn.unlearning.training import DivergenceGuard, TrainConfig, accuracy, predict_probabilities

RECIPE_LR = 0.05  # ExperimentConfig.lr's default: a task built without a recipe gets it
HOLDOUT_FRACTION = 0.05  # the share of the retain set held out for the guard and the search
HOLDOUT_MINIMUM = 50  # samples, while that leaves at least half the retain set to train on
HOLDOUT_SPLIT_LEAST = 2  # retain samples a split needs: one held out, one to train on
GUARD_MARGIN = 5.0  # percentage points of held-out retain accuracy a method may lose
GUARD_CHECKS = 10  # slice evaluations per run (every tenth of the budget, and after the last step)
TUNE_FACTORS = (1 / 3, 1.0, 3.0)  # --tune: multiples of a method's default learning rate


@dataclass(frozen=True)
class UnlearnTask:
    """What a method gets: the data split, the unlearning budget and the training recipe.

    `retrain_from_scratch(x, y, seed)` runs the original model's whole recipe (used by retrain).
    `epochs`, when given, replaces a method's budget by that many passes over its training set;
    `lr`, when given, is the absolute learning rate (both override the defaults). `recipe_lr`
    is the recipe's learning rate, which the default learning rates are fractions of. `tune`:
    the factors of the learning-rate search (empty: no search).
    """

    x_forget: torch.Tensor
    y_forget: torch.Tensor
    x_retain: torch.Tensor
    y_retain: torch.Tensor
    num_classes: int
    forget_mode: str  # "random" or "class"
    seed: int
    retrain_from_scratch: Callable[[torch.Tensor, torch.Tensor, int], nn.Module]
    epochs: int | None = None
    lr: float | None = None
    batch_size: int = 64
    recipe_lr: float = RECIPE_LR
    tune: tuple[float, ...] = ()


@dataclass(frozen=True)
class Budget:
    """How long a method trains: `epochs` passes over the set it trains on, or `steps` optimizer
    steps whatever the size of that set (exactly one of them)."""

    epochs: int | None = None
    steps: int | None = None

    def __post_init__(self):
        if (self.epochs is None) == (self.steps is None):
            raise ValueError(f"a budget is epochs or steps (one of them), got {self}")
        value = self.epochs if self.steps is None else self.steps
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"a budget's epochs or steps must be an integer >= 1, got {self}")

    def train_config(self, lr: float, batch_size: int, **options) -> TrainConfig:
        return TrainConfig(self.epochs or 0, lr, batch_size, steps=self.steps, **options)

    def describe(self) -> dict:
        return {"epochs": self.epochs} if self.steps is None else {"steps": self.steps}


class Holdout(NamedTuple):
    """The held-out slice of the retain set (x, y) and the indices it came from."""

    x: torch.Tensor
    y: torch.Tensor
    indices: torch.Tensor


def holdout_split(task: UnlearnTask) -> tuple[UnlearnTask, Holdout]:
    """(the task without the slice, the slice): a seeded random HOLDOUT_FRACTION of the retain
    set, at least HOLDOUT_MINIMUM samples but never more than half of it. ValueError when the
    retain set is too small to split (under 2 samples)."""
    count = len(task.y_retain)
    if count < HOLDOUT_SPLIT_LEAST:
        raise ValueError(f"the divergence guard and --tune hold out part of the retain set, which has only "
                         f"{count} sample(s)")
    size = min(count // 2, max(round(HOLDOUT_FRACTION * count), HOLDOUT_MINIMUM))
    generator = torch.Generator().manual_seed(task.seed + 7919)  # its own stream: not the forget draw
    order = torch.randperm(count, generator=generator).to(task.y_retain.device)
    held, kept = order[:size].sort().values, order[size:].sort().values
    rest = dataclasses.replace(task, x_retain=task.x_retain[kept], y_retain=task.y_retain[kept])
    return rest, Holdout(task.x_retain[held], task.y_retain[held], held)


class Candidate(NamedTuple):
    """One run of the learning-rate search: its lr and what the rule compares (in %)."""

    lr: float
    slice_accuracy: float
    forget_accuracy: float


def choose_candidate(candidates: list[Candidate], reference: float, margin: float = GUARD_MARGIN) -> int:
    """The index of the candidate --tune keeps (the rule of the module docstring): among those
    whose slice accuracy >= reference - margin, the lowest forget accuracy, then the highest
    slice accuracy, then the smallest lr; if none qualifies, the highest slice accuracy (then
    the smallest lr)."""
    if not candidates:
        raise ValueError("choose_candidate needs at least one candidate")
    within = [i for i, c in enumerate(candidates) if c.slice_accuracy >= reference - margin]
    if within:
        return min(within, key=lambda i: (candidates[i].forget_accuracy, -candidates[i].slice_accuracy,
                                          candidates[i].lr))
    return min(range(len(candidates)), key=lambda i: (-candidates[i].slice_accuracy, candidates[i].lr))


def percent_correct(model, x, y) -> float:
    """Accuracy of the model on (x, y), in %."""
    return 100.0 * accuracy(predict_probabilities(model, x), y)


def check_tune_factors(factors) -> tuple[float, ...]:
    """tune: distinct finite positive factors, at least two (one factor is no search)."""
    values = tuple(factors)
    if len(values) < 2 or len(set(values)) != len(values) or not all(
            isinstance(f, (int, float)) and not isinstance(f, bool) and math.isfinite(f) and f > 0 for f in values):
        raise ValueError(f"tune must be at least two distinct finite positive learning-rate factors, got {factors!r}")
    return values


class Method:
    """One unlearning method. Subclasses set `name`, `summary`, their default budget and learning
    rate factor, and implement fit(model, task).

    unlearn() is what callers use: it takes the held-out slice out of the task where the guard or
    the search needs it, runs the search when the task asks for one, and records what happened.
    A method that records something worth reporting about its last run (Q-MUL's per-epoch
    gradient weights, say) returns it from details(); diagnostics() adds the budget, learning
    rate, guard and search. Values must be JSON-serialisable.
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    forget_modes: ClassVar[tuple[str, ...]] = ("random", "class")
    default_budget: ClassVar[Budget] = Budget(epochs=5)
    default_lr_factor: ClassVar[float] = 0.2  # x the recipe's learning rate
    guarded: ClassVar[bool] = False  # trains on the forget set alone: the divergence guard watches it
    tunable: ClassVar[bool] = True  # trains with a budget and a learning rate (retrain runs the recipe instead)

    def __init__(self):
        self._guard: DivergenceGuard | None = None
        self._report: dict = {}

    # ---- the defaults ------------------------------------------------------------------------

    def budget(self, task: UnlearnTask) -> Budget:
        return self.default_budget if task.epochs is None else Budget(epochs=task.epochs)

    def default_lr(self, task: UnlearnTask) -> float:
        return self.default_lr_factor * task.recipe_lr

    def lr(self, task: UnlearnTask) -> float:
        return self.default_lr(task) if task.lr is None else task.lr

    def epochs(self, task: UnlearnTask) -> int:
        """Passes over the training set, for methods whose schedule is built per epoch (their
        default budget is in epochs)."""
        budget = self.budget(task)
        if budget.epochs is None:
            raise NotImplementedError(f"{self.name}: a budget in steps has no epoch count")
        return budget.epochs

    def train_config(self, task: UnlearnTask, **options) -> TrainConfig:
        return self.budget(task).train_config(self.lr(task), task.batch_size, **options)

    def guard(self) -> DivergenceGuard | None:
        """The divergence guard of the current run (None for unguarded methods): pass it to train()."""
        return self._guard

    # ---- running -----------------------------------------------------------------------------

    def check(self, task: UnlearnTask) -> None:
        if task.forget_mode not in self.forget_modes:
            raise ValueError(f"method {self.name!r} supports forget modes {self.forget_modes}, "
                             f"not {task.forget_mode!r}")
        if task.tune:
            check_tune_factors(task.tune)
            if task.lr is not None:
                raise ValueError("tune searches the learning rate: give tune or lr (--unlearn-lr), not both")
        holds_out = [why for why, used in (("its divergence guard", self.guarded),
                                           ("the learning-rate search (--tune)", bool(task.tune) and self.tunable))
                     if used]
        retained = len(task.y_retain)
        if holds_out and retained < HOLDOUT_SPLIT_LEAST:  # checked here, before the models are trained
            raise ValueError(f"forget (--forget) leaves {retained} retain sample(s), and method {self.name!r} holds "
                             f"out part of the retain set for {' and '.join(holds_out)}, which needs at least "
                             f"{HOLDOUT_SPLIT_LEAST}: forget fewer samples, or leave {self.name} out of --methods")

    def unlearn(self, model: nn.Module, task: UnlearnTask) -> nn.Module:
        """Return the unlearned model (`model` is the caller's copy and may be modified)."""
        self.check(task)
        searched = bool(task.tune) and self.tunable
        holdout = None
        if self.guarded or searched:
            task, holdout = holdout_split(task)
        self._report = {}
        if searched:
            return self._search(model, task, holdout)
        return self._run(model, task, holdout)

    def _run(self, model, task, holdout):
        """fit() under the guard (guarded methods: they train on the forget set alone, so their
        steps are the budget's over the forget set); the report of this run in self._report."""
        self._guard = None
        if self.guarded:
            steps = self.train_config(task).total_steps(len(task.y_forget))
            self._guard = DivergenceGuard(holdout.x, holdout.y, GUARD_MARGIN, every=max(1, -(-steps // GUARD_CHECKS)))
        model = self.fit(model, task)
        self._report = {"budget": self.budget(task).describe(), "lr": self.lr(task)} if self.tunable else {}
        if self._guard is not None:
            self._report["guard"] = self._guard.report()
        self._report.update(self.details())
        return model

    def _search(self, model, task, holdout):
        """Run each candidate learning rate on a copy of the model; keep the chosen one."""
        reference = percent_correct(model, holdout.x, holdout.y)
        candidates, models, reports = [], [], []
        for factor in task.tune:
            candidate_task = dataclasses.replace(task, lr=factor * self.default_lr(task))
            result = self._run(copy.deepcopy(model), candidate_task, holdout)
            candidates.append(Candidate(candidate_task.lr, percent_correct(result, holdout.x, holdout.y),
                                        percent_correct(result, task.x_forget, task.y_forget)))
            models.append(result)
            reports.append(self._report)
        chosen = choose_candidate(candidates, reference)
        self._report = dict(reports[chosen])
        self._report["tune"] = {
            "chosen_lr": candidates[chosen].lr, "reference_slice_accuracy": reference, "margin_points": GUARD_MARGIN,
            "slice_samples": len(holdout.y),
            "candidates": [c._asdict() for c in candidates],
            "rule": "lowest forget accuracy among candidates within the margin of the original's held-out retain "
                    "accuracy (ties: higher held-out accuracy, smaller lr); none within: highest held-out accuracy"}
        return models[chosen]

    def fit(self, model: nn.Module, task: UnlearnTask) -> nn.Module:
        """The method itself, on `task` as given (the slice already taken out where needed)."""
        raise NotImplementedError

    def details(self) -> dict:
        """{name: JSON value}: what this method records about its last fit() (taken into
        diagnostics() after each run; with tune, the chosen candidate's); empty by default."""
        return {}

    def diagnostics(self) -> dict:
        """{name: JSON value} describing the last unlearn() call: the budget and learning rate
        used, the guard's checks (guarded methods), the search's candidates (with tune), and the
        method's own details()."""
        return dict(self._report)
