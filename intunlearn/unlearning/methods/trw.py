"""TRW (Tilted ReWeighting; Ebrahimpour-Boroojeny, Wang and Sundaram, "Unlearning isn't
forgetting", where it is the defence against their MIA-NN attack): class-wise unlearning towards
a similarity-tilted target distribution over the remaining classes.

What is implemented here (our reading of the method, not a reproduction of published code):

1. Inter-class similarity. For each forgotten class c, s_c[k] is the original model's mean
   predicted probability of class k over the forget samples of class c, for every remaining class
   k (the forgotten classes are excluded).
2. Target distribution. t_c[k] = s_c[k]^(1/T) / sum_j s_c[j]^(1/T) over the remaining classes,
   t_c[k] = 0 for every forgotten class: the uniform distribution over the remaining classes,
   tilted towards the classes the model already finds similar to c. T (temperature) = 1 keeps
   the renormalised similarities as they are; a larger T flattens them towards uniform, a
   smaller T sharpens them towards the single most similar class.
3. Fine-tuning. Cross-entropy to t_c (soft labels) on the forget samples of class c, plus ordinary
   cross-entropy on the retain set, in one shuffled training set.

Class-wise forgetting only (a target over "the remaining classes" needs whole classes to be
forgotten); other forget modes are refused by Method.check.

Defaults: 5 epochs over the forget + retain set, SGD lr 0.2 x the recipe's (0.01 at the default
0.05; momentum 0.9, weight decay 5e-4, cosine schedule: the shared fine-tuning defaults,
methods.base), T = 2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from intunlearn.unlearning.methods.base import Method, UnlearnTask
from intunlearn.unlearning.training import predict_probabilities, train


def target_distribution(probabilities: torch.Tensor, labels: torch.Tensor, classes: torch.Tensor,
                        temperature: float = 1.0) -> torch.Tensor:
    """Rows t_c [len(classes), num_classes] for the forgotten `classes`: the mean probabilities of
    the remaining classes on the samples of class c, sharpened by 1/temperature, renormalised;
    zero on every forgotten class."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature!r}")
    num_classes = probabilities.shape[1]
    remaining = torch.ones(num_classes, dtype=torch.bool, device=probabilities.device)
    remaining[classes] = False
    if not remaining.any():
        raise ValueError("target_distribution needs at least one remaining class")
    rows = []
    for c in classes.tolist():
        similarity = probabilities[labels == c].double().mean(dim=0)
        logits = similarity.clamp_min(1e-30).log() / temperature
        logits[~remaining] = float("-inf")
        rows.append(F.softmax(logits, dim=0))
    return torch.stack(rows).to(probabilities.dtype)


class TRW(Method):
    name = "trw"
    summary = ("class-wise: fit the forget samples to a target over the remaining classes tilted by "
               "inter-class similarity, plus CE on the retain set")
    forget_modes = ("class",)
    temperature = 2.0

    def fit(self, model, task: UnlearnTask):
        classes = torch.unique(task.y_forget)
        probabilities = predict_probabilities(model, task.x_forget)
        self.targets = target_distribution(probabilities, task.y_forget, classes, self.temperature)
        row = torch.searchsorted(classes, task.y_forget)
        soft_forget = self.targets.to(task.x_forget.device)[row].float()
        soft_retain = F.one_hot(task.y_retain, task.num_classes).float()
        x = torch.cat([task.x_forget, task.x_retain])
        y = torch.cat([soft_forget, soft_retain])
        return train(model, x, y, self.train_config(task), seed=task.seed, desc=self.name)
