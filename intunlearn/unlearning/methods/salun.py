"""SalUn: saliency-based unlearning (Fan et al., "SalUn: Empowering Machine Unlearning via Gradient-based
Weight Saliency in Both Image Classification and Generation", ICLR 2024).

Weight saliency: the gradient of the forget loss (cross-entropy of the original model on the forget
set with its true labels) with respect to every trainable parameter -- for our quantized models the
latent float weights and biases that the straight-through estimator trains (and LSQ step sizes
where learned). The saliency mask keeps the entries whose |gradient| is among the top `fraction`
of all entries, one hard threshold over all parameter tensors together, as in the paper's
m = 1(|grad| >= gamma).

Unlearning: random-label fine-tuning (forget samples with random wrong labels, trained together
with the retain set) that updates only the salient entries. The gradients of the other entries
are zeroed before every optimizer step, and those entries are restored after it, so weight decay
and momentum cannot move them either: they stay bit-identical to the original model's
(`training.train(gradient_mask=...)`).

Defaults: 5 epochs over the forget + retain set, SGD lr 0.2 x the recipe's (0.01 at the default
0.05; momentum 0.9, weight decay 5e-4, cosine schedule: the shared fine-tuning defaults,
methods.base), fraction 0.5 (50% of the entries salient; the paper studies several ratios, 50% being the
setting of its main image-classification results as far as we know). Deviation:
the random labels are always wrong (our `rl`); the paper's random labels are drawn over all
classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from intunlearn.unlearning.methods.base import UnlearnTask
from intunlearn.unlearning.methods.simple import RandomLabels, random_wrong_labels
from intunlearn.unlearning.training import train


def forget_gradients(model, x, y, batch_size: int) -> dict[str, torch.Tensor]:
    """d(mean CE on (x, y))/d(theta) for every trainable parameter (zeros where it has none)."""
    model.train()
    model.zero_grad(set_to_none=True)
    for part_x, part_y in zip(x.split(batch_size), y.split(batch_size)):
        (F.cross_entropy(model(part_x), part_y, reduction="sum") / len(x)).backward()
    gradients = {name: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
                 for name, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return gradients


def saliency_mask(gradients: dict[str, torch.Tensor], fraction: float) -> dict[str, torch.Tensor]:
    """Bool masks keeping the round(fraction * total) entries of largest |gradient|, ranked over all
    tensors together (one global hard threshold)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must lie in [0, 1], got {fraction!r}")
    names = list(gradients)
    flat = torch.cat([gradients[name].abs().flatten().float() for name in names])
    keep = round(fraction * flat.numel())
    chosen = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if keep > 0:
        chosen[torch.topk(flat, keep, sorted=False).indices] = True
    masks, start = {}, 0
    for name in names:
        count = gradients[name].numel()
        masks[name] = chosen[start:start + count].reshape(gradients[name].shape)
        start += count
    return masks


class SalUn(RandomLabels):
    name = "salun"
    summary = "random-label fine-tuning of only the salient weights (top 50% forget-loss gradient)"
    fraction = 0.5

    def fit(self, model, task: UnlearnTask):
        self.mask = saliency_mask(forget_gradients(model, task.x_forget, task.y_forget, task.batch_size),
                                  self.fraction)
        x = torch.cat([task.x_forget, task.x_retain])
        y = torch.cat([random_wrong_labels(task.y_forget.cpu(), task.num_classes, task.seed)
                       .to(task.y_forget.device), task.y_retain])
        return train(model, x, y, self.train_config(task), seed=task.seed, desc=self.name, gradient_mask=self.mask)
