"""The classic baselines: retrain from scratch, fine-tune, gradient ascent, random labels."""

from __future__ import annotations

import torch

from intunlearn.unlearning.methods.base import Method, UnlearnTask
from intunlearn.unlearning.training import TrainConfig, train


class Retrain(Method):
    name = "retrain"
    summary = "the gold standard: the original recipe on the retain set only"

    def unlearn(self, model, task: UnlearnTask):
        return task.retrain_from_scratch(task.x_retain, task.y_retain, task.seed)


class FineTune(Method):
    name = "ft"
    summary = "fine-tune on the retain set (catastrophic forgetting of the forget set)"
    default_epochs, default_lr = 5, 0.01

    def unlearn(self, model, task: UnlearnTask):
        config = TrainConfig(self.epochs(task), self.lr(task), task.batch_size)
        return train(model, task.x_retain, task.y_retain, config, seed=task.seed, desc=self.name)


class GradientAscent(Method):
    name = "ga"
    summary = "ascend the loss on the forget set"
    default_epochs, default_lr = 5, 0.005

    def unlearn(self, model, task: UnlearnTask):
        config = TrainConfig(self.epochs(task), self.lr(task), task.batch_size, weight_decay=0.0)
        return train(model, task.x_forget, task.y_forget, config, seed=task.seed, desc=self.name,
                     loss_sign=-1.0)


def random_wrong_labels(labels: torch.Tensor, num_classes: int, seed: int) -> torch.Tensor:
    """A uniformly random label different from each true label."""
    offset = torch.randint(1, num_classes, labels.shape, generator=torch.Generator().manual_seed(seed))
    return (labels + offset.to(labels.device)) % num_classes


class RandomLabels(Method):
    name = "rl"
    summary = "train on the forget set with random wrong labels together with the retain set"
    default_epochs, default_lr = 5, 0.01

    def relabel(self, model, task: UnlearnTask) -> torch.Tensor:
        return random_wrong_labels(task.y_forget, task.num_classes, task.seed)

    def unlearn(self, model, task: UnlearnTask):
        x = torch.cat([task.x_forget, task.x_retain])
        y = torch.cat([self.relabel(model, task), task.y_retain])
        config = TrainConfig(self.epochs(task), self.lr(task), task.batch_size)
        return train(model, x, y, config, seed=task.seed, desc=self.name)
