"""The SalUn, l1-sparse, boundary-shrink, AMUN and TRW unlearning methods on the tiny problem of
test_unlearning: class-wise forgetting, each method's own mechanism, and TRW's forget-mode check."""

import copy

import pytest
import torch
from test_unlearning import tiny_problem, tiny_task

from intunlearn.unlearning.engine import ExperimentConfig, run_experiment
from intunlearn.unlearning.methods import METHODS, get_method
from intunlearn.unlearning.methods.amun import amun_adversarial_examples
from intunlearn.unlearning.methods.salun import saliency_mask
from intunlearn.unlearning.methods.trw import target_distribution
from intunlearn.unlearning.training import TrainConfig, predict_probabilities, train

NEW_METHODS = ("salun", "l1sparse", "bs", "amun", "trw")

# The tiny problem has 5 steps per epoch. l1sparse is fine-tuning on the retain set, so it needs
# ft's budget there (TINY_BUDGETS in test_unlearning); salun repairs the retain set with only
# half of the weights and needs more steps than rl to do so (5 epochs leave retain accuracy ~0.75).
TINY_BUDGETS = {"l1sparse": {"epochs": 8, "lr": 0.05}, "salun": {"epochs": 10}}


FORGET = "class:2"


def classwise_problem():
    return tiny_problem(FORGET)


def classwise_task(**budget):
    return tiny_task(FORGET, **budget)


def accuracy(model, x, y):
    return float((predict_probabilities(model, x).argmax(1) == y).float().mean())


def test_the_methods_are_registered():
    assert set(NEW_METHODS) <= set(METHODS)
    for name in NEW_METHODS:
        method = get_method(name)
        assert method.name == name and method.summary and method.default_budget and method.default_lr_factor > 0
        assert "class" in method.forget_modes


@pytest.mark.parametrize("name", NEW_METHODS)
def test_each_method_forgets_a_class_and_keeps_the_rest(name):
    _, _, original = classwise_problem()
    task = classwise_task(**TINY_BUDGETS.get(name, {}))
    method = get_method(name)
    unlearned = method.unlearn(copy.deepcopy(original), task)
    before, after = accuracy(original, task.x_forget, task.y_forget), accuracy(unlearned, task.x_forget, task.y_forget)
    retained = accuracy(unlearned, task.x_retain, task.y_retain)
    assert before > 0.9
    assert after < before - 0.3, f"{name}: forget accuracy {before:.2f} -> {after:.2f}"
    assert retained > 0.8, f"{name}: retain accuracy {retained:.2f}"
    if name == "salun":  # the non-salient entries were never trained
        parameters = dict(unlearned.named_parameters())
        originals = dict(original.named_parameters())
        assert 0 < sum(int(m.sum()) for m in method.mask.values()) < sum(m.numel() for m in method.mask.values())
        for key, mask in method.mask.items():
            assert torch.equal(parameters[key].detach()[~mask], originals[key].detach()[~mask]), key
            assert not torch.equal(parameters[key].detach()[mask], originals[key].detach()[mask]) or not mask.any()
    if name == "bs":
        assert (method.labels != task.y_forget).all()


def test_saliency_mask_keeps_the_top_fraction_over_all_tensors():
    gradients = {"a": torch.tensor([[0.1, -5.0], [0.2, 3.0]]), "b": torch.tensor([-4.0, 0.0, 0.3, 1.0])}
    masks = saliency_mask(gradients, 0.5)  # 8 entries, keep the 4 largest |g|: 5, 4, 3, 1
    assert masks["a"].tolist() == [[False, True], [False, True]]
    assert masks["b"].tolist() == [True, False, False, True]
    assert not any(m.any() for m in saliency_mask(gradients, 0.0).values())


def test_gradient_mask_freezes_entries_under_weight_decay_and_momentum():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    mask = {"weight": torch.tensor([[True, False, True], [False, False, True]])}
    x, y = torch.randn(20, 3), torch.randint(0, 2, (20,))
    train(model, x, y, TrainConfig(3, 0.1, 8, weight_decay=0.1), seed=0, desc="masked", gradient_mask=mask)
    assert torch.equal(model.weight.detach()[~mask["weight"]], before["weight"][~mask["weight"]])
    assert not torch.equal(model.weight.detach()[mask["weight"]], before["weight"][mask["weight"]])
    assert not torch.equal(model.bias.detach(), before["bias"])  # not named: trained in full


def test_amun_finds_adversarial_examples_on_the_tiny_model():
    _, _, model = classwise_problem()
    task = classwise_task()
    x, y = task.x_forget[:12], task.y_forget[:12]
    epsilon, cap = 0.02, 6
    x_adv, labels, radius, found = amun_adversarial_examples(model, x, y, epsilon=epsilon, steps=5,
                                                             max_doublings=cap, bounds=(0.0, 1.0))
    predictions = predict_probabilities(model, x_adv).argmax(1)
    assert found.all()
    assert (predictions != y).all() and torch.equal(predictions, labels)
    doublings = torch.log2(radius / epsilon).round()
    assert torch.allclose(radius, epsilon * 2 ** doublings) and doublings.max() <= cap
    assert ((x_adv - x).flatten(1).norm(dim=1) <= radius * (1 + 1e-4)).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_trw_target_distribution():
    probabilities = torch.tensor([[0.70, 0.20, 0.05, 0.05, 0.00],
                                  [0.50, 0.30, 0.10, 0.10, 0.00],
                                  [0.10, 0.10, 0.75, 0.00, 0.05],
                                  [0.05, 0.05, 0.80, 0.05, 0.05]])
    labels = torch.tensor([0, 0, 2, 2])
    targets = target_distribution(probabilities, labels, torch.tensor([0, 2]), temperature=1.0)
    assert targets.shape == (2, 5)
    assert torch.allclose(targets.sum(1), torch.ones(2))
    assert (targets[:, [0, 2]] == 0).all()
    # class 0's samples: mean probabilities of classes 1, 3, 4 are 0.25, 0.075, 0 -> renormalised
    assert torch.allclose(targets[0], torch.tensor([0, 0.25 / 0.325, 0, 0.075 / 0.325, 0.0]), atol=1e-6)
    flat = target_distribution(probabilities, labels, torch.tensor([0, 2]), temperature=1e6)
    assert torch.allclose(flat[1], torch.tensor([0, 1 / 3, 0, 1 / 3, 1 / 3]), atol=1e-3)  # hot: uniform


def test_trw_refuses_random_forgetting(tmp_path):
    data, _, _ = classwise_problem()
    with pytest.raises(ValueError, match=r"method 'trw' supports forget modes \('class',\), not 'random'"):
        run_experiment(ExperimentConfig(dataset="blobs", model="mlp", width=16, forget="random:0.2",
                                        methods=("ft", "trw")), tmp_path / "out", tmp_path / "cache", data=data)
    assert not (tmp_path / "cache").exists()  # refused before anything was trained
