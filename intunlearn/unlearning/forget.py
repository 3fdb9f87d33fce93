"""Forget sets: which training samples a model must unlearn.

Specs: "random:FRACTION" (a seeded random fraction of the training set, e.g. random:0.1) or
"class:C[,C...]" (every training sample of the given classes: class-wise forgetting).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ForgetSpec:
    mode: str  # "random" or "class"
    fraction: float = 0.0
    classes: tuple[int, ...] = ()

    def __str__(self):
        return f"random:{self.fraction:g}" if self.mode == "random" else "class:" + ",".join(map(str, self.classes))


def parse_forget(spec: str, num_classes: int) -> ForgetSpec:
    mode, _, value = str(spec).partition(":")
    if mode == "random":
        try:
            fraction = float(value)
        except ValueError:
            fraction = -1.0
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"forget: 'random:FRACTION' needs a fraction in (0, 1), got {spec!r}")
        return ForgetSpec("random", fraction=fraction)
    if mode == "class":
        try:
            listed = [int(part) for part in value.split(",")]
        except ValueError:
            listed = []
        if len(set(listed)) != len(listed):
            repeated = sorted({c for c in listed if listed.count(c) > 1})
            raise ValueError(f"forget: 'class:C[,C...]' names class {', '.join(map(str, repeated))} more than once, "
                             f"got {spec!r}: name each class once")
        classes = tuple(sorted(listed))
        if not classes or min(classes) < 0 or max(classes) >= num_classes or len(classes) >= num_classes:
            raise ValueError(f"forget: 'class:C[,C...]' needs classes in [0, {num_classes - 1}] "
                             f"(not all of them), got {spec!r}")
        return ForgetSpec("class", classes=classes)
    raise ValueError(f"forget must be 'random:FRACTION' or 'class:C[,C...]', got {spec!r}")


def forget_mask(spec: ForgetSpec, y_train: torch.Tensor, seed: int) -> torch.Tensor:
    """Boolean mask [N] of the training samples to forget (never empty: ValueError)."""
    if spec.mode == "class":
        mask = torch.isin(y_train, torch.tensor(spec.classes, dtype=y_train.dtype))
        if not bool(mask.any()):
            raise ValueError(f"forget: no training sample has class {list(spec.classes)}, so the "
                             f"forget set would be empty")
        return mask
    count = max(1, round(spec.fraction * len(y_train)))
    chosen = torch.randperm(len(y_train), generator=torch.Generator().manual_seed(seed))[:count]
    mask = torch.zeros(len(y_train), dtype=torch.bool)
    mask[chosen] = True
    return mask
