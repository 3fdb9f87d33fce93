"""l1-sparse: sparsity-aware unlearning (Jia et al., "Model Sparsity Can Simplify Machine Unlearning",
NeurIPS 2023).

Fine-tune on the retain set with an l1 penalty on the weights,

    loss = CE(retain batch) + gamma_e * sum over weight tensors of ||W||_1,

where gamma decays linearly to 0 over the epochs, gamma_e = gamma * (1 - e / epochs) for epoch
e = 0..epochs-1 (the paper's linearly decaying schedule: strong sparsity pressure early, plain
fine-tuning late).

The penalty acts on the latent float weights of the quantized layers (the tensors named `weight`;
not on biases, nor on LSQ step sizes, whose shrinking would coarsen the quantization grid rather
than sparsify the model). Weight decay (5e-4, the shared recipe) stays on.

Defaults: 5 epochs over the retain set, SGD lr 0.2 x the recipe's (0.01 at the default 0.05;
momentum 0.9, cosine schedule), the shared fine-tuning defaults (methods.base), gamma 5e-3 -- ten times the
paper's 5e-4. The penalty's gradient is gamma * sign(w) per weight whatever the model's size, so
its total pull on a weight scales with gamma * lr * steps: the paper's CIFAR-10 runs take ~3,900
steps, our default budget on digits ~130. Measured on the default digits CNN (4-bit weights,
random 10% forgetting, 5 epochs): the share of int4 weights that are 0 goes from 15.4% (original;
15.4% after plain ft) to 16.4% with gamma 5e-4 (no visible sparsification), 25.7% with 5e-3
(retain/test accuracy unchanged) and 54% with 2e-2 (test accuracy -0.9 points). Set
`L1Sparse.gamma` (or an instance's `gamma`) to change it.
"""

from __future__ import annotations

import torch

from intunlearn.unlearning.methods.base import Method, UnlearnTask
from intunlearn.unlearning.training import train


def weight_l1(model) -> torch.Tensor:
    """sum of |w| over every trainable parameter named `weight` (latent float weights)."""
    terms = [p.abs().sum() for name, p in model.named_parameters()
             if p.requires_grad and name.rsplit(".", 1)[-1] == "weight"]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def linear_decay(gamma: float, epoch: int, epochs: int) -> float:
    """gamma * (1 - epoch / epochs): gamma in the first epoch, reaching 0 after the last."""
    return gamma * (1.0 - epoch / max(1, epochs))


class L1Sparse(Method):
    name = "l1sparse"
    summary = "fine-tune on the retain set with an l1 weight penalty decaying linearly to 0"
    gamma = 5e-3

    def fit(self, model, task: UnlearnTask):
        epochs = self.epochs(task)

        def penalty(model, epoch):
            return linear_decay(self.gamma, epoch, epochs) * weight_l1(model)

        return train(model, task.x_retain, task.y_retain, self.train_config(task), seed=task.seed, desc=self.name,
                     extra_loss=penalty)
