"""Training and evaluation loops shared by the recipe and the unlearning methods."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from intunlearn.modules import parameters_outside_weighted_layers
from intunlearn.modules import sample_weights as record_sample_weights


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser settings of one training phase (SGD with momentum, cosine learning rate)."""

    epochs: int
    lr: float
    batch_size: int = 64
    weight_decay: float = 5e-4
    momentum: float = 0.9


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
          gradient_mask: dict[str, torch.Tensor] | None = None):
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
    """
    if config.epochs <= 0 or len(x) == 0:
        return model
    generator = torch.Generator().manual_seed(seed)
    steps = config.epochs * -(-len(x) // config.batch_size)
    optimizer, schedule = make_optimizer(model, config, steps)
    masked = []
    if gradient_mask is not None:
        parameters = dict(model.named_parameters())
        unknown = sorted(set(gradient_mask) - set(parameters))
        if unknown:
            raise ValueError(f"gradient_mask names parameters the model does not have: {unknown}")
        for name, mask in gradient_mask.items():
            parameter = parameters[name]
            if mask.shape != parameter.shape:
                raise ValueError(f"gradient_mask[{name!r}] has shape {tuple(mask.shape)}; "
                                 f"expected {tuple(parameter.shape)}")
            mask = mask.to(device=parameter.device, dtype=torch.bool)
            masked.append((parameter, mask, parameter.detach().clone()))
    model.train()
    for epoch in tqdm(range(config.epochs), desc=desc, unit="epoch", leave=False):
        if on_epoch_start is not None:
            alpha = on_epoch_start(epoch)
            model.train()
        fused = alpha is not None and _sample_weights_fused(model, alpha, len(x))
        for batch in batches(len(x), config.batch_size, generator):
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
    return model.eval()


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
