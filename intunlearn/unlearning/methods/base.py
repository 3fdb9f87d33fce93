"""The interface every unlearning method implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
from torch import nn


@dataclass(frozen=True)
class UnlearnTask:
    """What a method gets: the data split, the unlearning budget and the training recipe.

    `retrain_from_scratch(x, y, seed)` runs the original model's whole recipe (used by retrain).
    `epochs` and `lr`, when given, override a method's defaults.
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


class Method:
    """One unlearning method. Subclasses set `name`, `summary`, defaults, and implement unlearn().

    A method that records something worth reporting about its last run (Q-MUL's per-epoch
    gradient weights, say) returns it from diagnostics(); the engine stores it with the method's
    results. Values must be JSON-serialisable.
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    forget_modes: ClassVar[tuple[str, ...]] = ("random", "class")
    default_epochs: ClassVar[int] = 5
    default_lr: ClassVar[float] = 0.01

    def epochs(self, task: UnlearnTask) -> int:
        return self.default_epochs if task.epochs is None else task.epochs

    def lr(self, task: UnlearnTask) -> float:
        return self.default_lr if task.lr is None else task.lr

    def check(self, task: UnlearnTask) -> None:
        if task.forget_mode not in self.forget_modes:
            raise ValueError(f"method {self.name!r} supports forget modes {self.forget_modes}, "
                             f"not {task.forget_mode!r}")

    def unlearn(self, model: nn.Module, task: UnlearnTask) -> nn.Module:
        """Return the unlearned model (`model` is the caller's copy and may be modified)."""
        raise NotImplementedError

    def diagnostics(self) -> dict:
        """{name: JSON value} describing the last unlearn() call; empty by default."""
        return {}
