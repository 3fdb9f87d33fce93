"""AMUN: adversarial machine unlearning (Ebrahimpour-Boroojeny, Sundaram and Chandrasekaran, "Not All
Wrong is Bad: Using Adversarial Examples for Unlearning", ICML 2025; arXiv 2503.00917 "AMUN:
Adversarial Machine UNlearning").

Adversarial set: for each forget sample (x, y), an L2 PGD attack (untargeted, maximising
CE(f(x'), y)) within an L2 ball of radius epsilon around x, starting at x; each step moves
2.5 * epsilon / steps (the usual PGD heuristic of Madry et al.; our choice) along the per-sample
L2-normalised gradient, then projects back into the ball and clips to the value range of the
task's inputs. If the model still predicts y at the result,
epsilon is doubled and the attack repeated, at most `max_doublings` times: this finds an
adversarial example close to x. Each adversarial example is labelled with the model's own
prediction on it. The attack's gradients are the model's: quantized layers run their own forward
pass (integer or fake-quant) and the straight-through estimator backward reaches the input.

Unlearning: fine-tune on the adversarial examples (with those labels) together with the retain
set, the paper's main setting when the retain set is available (the paper also reports a variant
without the retain set). Fine-tuning on nearby, mislabelled points moves the decision boundary
locally across the forget samples while the retain set anchors everything else. (Our reading of
the paper's training set; we do not add the forget samples themselves with their true labels.)

Defaults: 5 epochs over the adversarial + retain set, SGD lr 0.2 x the recipe's (0.01 at the
default 0.05; momentum 0.9, weight decay 5e-4, cosine schedule), the shared fine-tuning defaults
(methods.base): the retain set anchors the model, so no divergence guard; initial
epsilon 1/255 * sqrt(input dimension) (the L2 length of a 1/255 change in every input value);
20 PGD steps (the paper uses PGD-50: fewer steps keep the search affordable in integer
arithmetic on the CPU; the epsilon doubling makes up for a weaker attack); at most 10 doublings.
Forget samples still predicted as y after the last doubling keep the last attack point and are
labelled with the most likely class other than y there (`self.found` records which succeeded).
"""

from __future__ import annotations

import math

import torch

from intunlearn.unlearning.methods.base import Method, UnlearnTask
from intunlearn.unlearning.methods.boundary_shrink import input_bounds, input_gradient
from intunlearn.unlearning.training import train


def _per_sample_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (t.dim() - 1)))


def pgd_l2(model, x, y, epsilon: torch.Tensor, steps: int, bounds: tuple[float, float]) -> torch.Tensor:
    """Untargeted L2 PGD from x: per-sample radius epsilon [N], step 2.5 * epsilon / steps."""
    radius = epsilon.view(-1, *([1] * (x.dim() - 1))).to(x.dtype)
    step = 2.5 * radius / max(1, steps)
    adversarial = x.detach().clone()
    for _ in range(steps):
        gradient = input_gradient(model, adversarial, y)
        adversarial = adversarial + step * gradient / _per_sample_norm(gradient)
        delta = adversarial - x
        delta = delta * torch.clamp(radius / _per_sample_norm(delta), max=1.0)
        adversarial = (x + delta).clamp(*bounds).detach()
    return adversarial


@torch.no_grad()
def _logits(model, x, batch_size=512):
    return torch.cat([model(part) for part in x.split(batch_size)])


def amun_adversarial_examples(model, x, y, *, epsilon: float, steps: int = 20, max_doublings: int = 10,
                              bounds: tuple[float, float] = (0.0, 1.0), batch_size: int = 256):
    """For each (x_i, y_i): the PGD point of the smallest radius epsilon * 2^k (k <= max_doublings)
    at which the model's prediction differs from y_i.

    Returns (x_adv [N, ...], labels [N], radius [N], found [N] bool). labels: the model's
    prediction at x_adv; for samples not found, the most likely class other than y_i there.
    """
    model.eval()
    adversarial = x.detach().clone()
    radius = torch.full((len(x),), float(epsilon), device=x.device)
    found = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    for doubling in range(max_doublings + 1):
        pending = (~found).nonzero().squeeze(1)
        if len(pending) == 0:
            break
        if doubling > 0:
            radius[pending] *= 2
        for part in pending.split(batch_size):
            points = pgd_l2(model, x[part], y[part], radius[part], steps, bounds)
            adversarial[part] = points
            found[part] = _logits(model, points).argmax(dim=1) != y[part]
    logits = _logits(model, adversarial) if len(x) else torch.empty(0, 0, device=x.device)
    if len(x):
        logits[torch.arange(len(y), device=x.device), y] = float("-inf")  # success: argmax is unchanged
    labels = logits.argmax(dim=1) if len(x) else y.clone()
    return adversarial, labels, radius, found


class AMUN(Method):
    name = "amun"
    summary = "fine-tune on the nearest adversarial examples of the forget set (own predictions) + retain set"
    steps = 20
    max_doublings = 10

    def fit(self, model, task: UnlearnTask):
        epsilon = math.sqrt(task.x_forget[0].numel()) / 255 if len(task.x_forget) else 0.0
        x_adv, labels, self.radius, self.found = amun_adversarial_examples(
            model, task.x_forget, task.y_forget, epsilon=epsilon, steps=self.steps,
            max_doublings=self.max_doublings, bounds=input_bounds(task), batch_size=task.batch_size)
        x = torch.cat([x_adv, task.x_retain])
        y = torch.cat([labels, task.y_retain])
        return train(model, x, y, self.train_config(task), seed=task.seed, desc=self.name)
