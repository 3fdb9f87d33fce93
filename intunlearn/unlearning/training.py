"""Training and evaluation loops shared by the recipe and the unlearning methods."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from intunlearn.modules import parameters_outside_weighted_layers
from intunlearn.modules import sample_weights as record_sample_weights


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser settings of one training phase (SGD with momentum, cosine learning rate).

    The phase lasts `epochs` passes over its training set, or, when `steps` is given, that many
    optimizer steps (whole passes, then part of one; `epochs` is then ignored): a budget that
    does not grow with the size of the set.
    """

    epochs: int
    lr: float
    batch_size: int = 64
    weight_decay: float = 5e-4
    momentum: float = 0.9
    steps: int | None = None

    def total_steps(self, samples: int) -> int:
        """The optimizer steps this phase takes on `samples` training samples."""
        if samples == 0:
            return 0
        if self.steps is not None:
            return max(0, self.steps)
        return max(0, self.epochs) * -(-samples // self.batch_size)


@dataclass
class DivergenceGuard:
    """Stops a training phase that is wrecking the model, and backs off.

    Every `every` optimizer steps (and after the last one) the model's accuracy on a held-out
    slice (x, y) is measured; the slice must be data the phase does not train on (the methods
    use a seeded slice of the retain set, `methods.base.holdout_split`). The first measurement,
    before any step, is the reference. When the accuracy falls more than `margin` percentage
    points below the reference, the weights of the last check that passed (the model as given,
    at first) are put back and training stops. `history` records every check as
    (step, accuracy in %).
    """

    x: torch.Tensor
    y: torch.Tensor
    margin: float
    every: int
    reference: float | None = None
    stopped: bool = False
    stopped_at: int | None = None
    history: list[tuple[int, float]] = field(default_factory=list)
    _good: dict | None = field(default=None, repr=False)

    def __post_init__(self):
        if len(self.y) == 0:
            raise ValueError("the divergence guard needs a non-empty held-out slice")
        if not (self.margin >= 0) or self.every < 1:
            raise ValueError(f"the divergence guard needs margin >= 0 and every >= 1, got {self.margin}, "
                             f"{self.every}")

    def start(self, model) -> None:
        self.reference = self._accuracy(model)
        self.history = [(0, self.reference)]
        self.stopped, self.stopped_at = False, None
        self._good = copy.deepcopy(model.state_dict())

    def check(self, model, step: int) -> bool:
        """Measure at `step`; True (and the last good weights restored) when training must stop."""
        accuracy = self._accuracy(model)
        self.history.append((step, accuracy))
        if accuracy < self.reference - self.margin:
            model.load_state_dict(self._good)
            self.stopped, self.stopped_at = True, step
            return True
        self._good = copy.deepcopy(model.state_dict())
        return False

    def _accuracy(self, model) -> float:
        mode = model.training
        value = 100.0 * accuracy(predict_probabilities(model, self.x), self.y)
        model.train(mode)
        return value

    def report(self) -> dict:
        """JSON: the slice, the rule and what happened. steps_kept: the optimizer steps whose
        updates the returned model holds (all of them unless the guard stopped training);
        final_accuracy: the slice accuracy of the returned model."""
        kept = [(step, acc) for step, acc in self.history if not (self.stopped and step == self.stopped_at)]
        return {"slice_samples": len(self.y), "margin_points": self.margin, "check_every_steps": self.every,
                "reference_accuracy": self.reference, "stopped": self.stopped, "stopped_at_step": self.stopped_at,
                "steps_kept": kept[-1][0] if kept else None, "final_accuracy": kept[-1][1] if kept else None,
                "checks": [{"step": step, "accuracy": acc} for step, acc in self.history]}


def batches(count: int, batch_size: int, generator: torch.Generator):
    """Shuffled index batches covering range(count)."""
    return torch.randperm(count, generator=generator).split(batch_size)


def make_optimizer(model, config: TrainConfig, steps: int):
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, steps))
    return optimizer, schedule


def train(model, x, y, config: TrainConfig, *, seed: int, desc: str, alpha: torch.Tensor | None = None,
          loss_sign: float = 1.0, on_epoch_start: Callable[[int], torch.Tensor | None] | None = None,
          extra_loss: Callable[[torch.nn.Module, int], torch.Tensor] | None = None,
          gradient_mask: dict[str, torch.Tensor] | None = None, guard: DivergenceGuard | None = None):
    """Mini-batch training of `model` on (x, y).

    y: class indices [N], or class probabilities [N, classes] (soft labels).
    alpha [N]: per-sample loss weights, fused into the weight-gradient reductions; the batch
    loss is sum_i alpha_i CE_i / batch size. on_epoch_start(epoch) may return a new alpha
    (Q-MUL recomputes its weights every epoch). loss_sign=-1 ascends the loss (gradient ascent).
    extra_loss(model, epoch): a term added to every batch's objective as is (not multiplied by
    loss_sign), e.g. an l1 penalty on the weights.
    Per-sample weights reach the gradients of a quantized model through its layers' weight-
    gradient reductions (intunlearn.sample_weights, fused into the kernels), so every trainable
    parameter of such a model must sit in a QuantLinear / QuantConv2d, which is checked; a plain
    float model (no quantized layers) gets them as weights on its per-sample losses instead,
    which has the same gradient.
    gradient_mask {parameter name: bool tensor of the parameter's shape}: only the True entries
    of those parameters are trained. Their gradients are masked before each optimizer step and
    the False entries are put back to their values after it, so that neither weight decay nor
    momentum moves them: they stay bit-identical. Parameters not named are trained in full.
    guard: a DivergenceGuard checked every guard.every steps and after the last; when it trips,
    the weights of its last passing check are restored and training stops.
    """
    total = config.total_steps(len(x))
    if total == 0:
        return model
    generator = torch.Generator().manual_seed(seed)
    optimizer, schedule = make_optimizer(model, config, total)
    masked = _masked_parameters(model, gradient_mask)
    if guard is not None:
        guard.start(model)
    model.train()
    per_epoch = -(-len(x) // config.batch_size)
    step = 0
    for epoch in tqdm(range(-(-total // per_epoch)), desc=desc, unit="epoch", leave=False):
        if on_epoch_start is not None:
            alpha = on_epoch_start(epoch)
            model.train()
        fused = alpha is not None and _sample_weights_fused(model, alpha, len(x))
        for batch in batches(len(x), config.batch_size, generator):
            if step == total:
                break
            optimizer.zero_grad(set_to_none=True)
            weights = None if alpha is None else alpha[batch]
            with record_sample_weights(model, weights if fused else None):
                losses = F.cross_entropy(model(x[batch]), y[batch], reduction="none")
            if weights is not None and not fused:
                losses = losses * weights
            loss = losses.sum() / len(batch) if weights is not None else losses.mean()
            objective = loss_sign * loss
            if extra_loss is not None:
                objective = objective + extra_loss(model, epoch)
            objective.backward()
            for parameter, mask, _ in masked:
                if parameter.grad is not None:
                    parameter.grad.mul_(mask)
            optimizer.step()
            with torch.no_grad():
                for parameter, mask, frozen in masked:
                    parameter.copy_(torch.where(mask, parameter, frozen))
            schedule.step()
            step += 1
            if guard is not None and (step % guard.every == 0 or step == total) and guard.check(model, step):
                return model.eval()
    return model.eval()


def _masked_parameters(model, gradient_mask):
    """[(parameter, bool mask, frozen copy)] for train(gradient_mask=...), checked against the model."""
    if gradient_mask is None:
        return []
    parameters = dict(model.named_parameters())
    unknown = sorted(set(gradient_mask) - set(parameters))
    if unknown:
        raise ValueError(f"gradient_mask names parameters the model does not have: {unknown}")
    masked = []
    for name, mask in gradient_mask.items():
        parameter = parameters[name]
        if mask.shape != parameter.shape:
            raise ValueError(f"gradient_mask[{name!r}] has shape {tuple(mask.shape)}; "
                             f"expected {tuple(parameter.shape)}")
        mask = mask.to(device=parameter.device, dtype=torch.bool)
        masked.append((parameter, mask, parameter.detach().clone()))
    return masked


def _sample_weights_fused(model, alpha, samples) -> bool:
    """Whether alpha reaches the gradients through the quantized layers (True) or must weight
    the losses (False: a model without quantized layers); a model with both is refused."""
    if alpha.dim() != 1 or len(alpha) != samples:
        raise ValueError(f"alpha must have one weight per training sample ({samples}), got shape "
                         f"{tuple(alpha.shape)}")
    outside = parameters_outside_weighted_layers(model)
    if not outside:
        return True
    if len(outside) == sum(1 for p in model.parameters() if p.requires_grad):
        return False
    raise ValueError(f"per-sample weights reach only quantized layers' gradients, but the "
                     f"parameters {outside} lie outside them (convert the whole model with "
                     f"intunlearn.quantize)")


@torch.no_grad()
def predict_probabilities(model, x, batch_size: int = 512) -> torch.Tensor:
    """Softmax outputs [N, classes] in eval mode."""
    model.eval()
    return torch.cat([F.softmax(model(part), dim=1) for part in x.split(batch_size)]) if len(x) else \
        torch.empty(0, 0)


def accuracy(probabilities: torch.Tensor, y: torch.Tensor) -> float:
    if len(y) == 0:
        return float("nan")
    return float((probabilities.argmax(dim=1) == y).double().mean())
