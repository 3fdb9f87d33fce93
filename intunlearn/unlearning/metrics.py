"""Unlearning metrics of the SalUn / Q-MUL protocol.

FA, RA, TA: accuracy on the forget, retain and test sets. MIA-Efficacy: a membership-inference
attack trained on the model's confidence in the true label (RBF SVC, C=3, gamma="auto"; shadow
members: a random retain sample as large as the test set; non-members: the test set) and scored
as the fraction of forget samples it predicts to be non-members (higher = more forgotten).
Average gap: mean |metric - retrain's metric| over FA, RA, TA and MIA-Efficacy (in %).

Class-wise forgetting adds MIA-NN, after the nearest-neighbour class attack of Ebrahimpour-
Boroojeny et al. ("Unlearning isn't forgetting"): the attacker looks at the probabilities the
model assigns to the classes neighbouring the forgotten one and tries to tell the unlearned
training samples of the forgotten class from its test samples (which no model has seen). Our
reading, stated exactly: neighbours are the k=3 remaining classes with the highest mean
probability on the forgotten-class test samples; features are those probabilities (sorted per
sample) and their sum; the score is the 5-fold cross-validated balanced accuracy (in %) of an
RBF SVC (C=3, gamma="auto") on equally many forget and forgotten-class test samples. A model
retrained without the class scores about 50; higher means the forgotten samples are still
recognisable. In class-wise mode TA is measured on the test samples of the remaining classes.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.svm import SVC

METRICS = ("FA", "RA", "TA", "MIA")


def true_label_confidence(probabilities: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    return probabilities.gather(1, labels[:, None]).squeeze(1).double().numpy()


def mia_efficacy(member_confidence, nonmember_confidence, target_confidence) -> float:
    """Fraction of the target samples a confidence-based SVC attack calls non-members."""
    member_confidence = np.asarray(member_confidence, np.float64)
    nonmember_confidence = np.asarray(nonmember_confidence, np.float64)
    target_confidence = np.asarray(target_confidence, np.float64)
    if len(target_confidence) == 0:
        return float("nan")
    if len(member_confidence) == 0 or len(nonmember_confidence) == 0:
        raise ValueError("mia_efficacy needs member and non-member samples to train the attack")
    features = np.concatenate([member_confidence, nonmember_confidence])[:, None]
    labels = np.concatenate([np.ones(len(member_confidence)), np.zeros(len(nonmember_confidence))])
    attack = SVC(C=3, gamma="auto", kernel="rbf").fit(features, labels)
    return float((attack.predict(target_confidence[:, None]) == 0).mean())


def evaluate(probabilities: dict[str, torch.Tensor], labels: dict[str, torch.Tensor], seed: int) -> dict[str, float]:
    """FA/RA/TA/MIA (in %) from the model's probabilities on the forget, retain and test sets."""
    accuracy = {name: float((probabilities[name].argmax(1) == labels[name]).double().mean() * 100)
                if len(labels[name]) else float("nan") for name in ("forget", "retain", "test")}
    generator = torch.Generator().manual_seed(seed)
    shadow = torch.randperm(len(labels["retain"]), generator=generator)[:len(labels["test"])]
    mia = mia_efficacy(true_label_confidence(probabilities["retain"][shadow], labels["retain"][shadow]),
                       true_label_confidence(probabilities["test"], labels["test"]),
                       true_label_confidence(probabilities["forget"], labels["forget"]))
    return {"FA": accuracy["forget"], "RA": accuracy["retain"], "TA": accuracy["test"], "MIA": mia * 100}


def average_gap(metrics: dict[str, float], retrain: dict[str, float]) -> float:
    return float(np.mean([abs(metrics[name] - retrain[name]) for name in METRICS]))


def mia_nn(forget_probabilities: torch.Tensor, unseen_probabilities: torch.Tensor,
           forgotten_classes, seed: int, neighbours: int = 3) -> float:
    """MIA-NN (see the module docstring): balanced accuracy in % of telling forget samples from
    unseen samples of the forgotten classes by their neighbouring-class probabilities."""
    count = min(len(forget_probabilities), len(unseen_probabilities))
    if count < 5:
        return float("nan")
    remaining = [c for c in range(unseen_probabilities.shape[1]) if c not in set(forgotten_classes)]
    mean = unseen_probabilities[:, remaining].mean(dim=0)
    nearest = [remaining[i] for i in mean.argsort(descending=True)[:neighbours].tolist()]

    def features(probabilities):
        chosen = probabilities[:, nearest].sort(dim=1, descending=True).values
        return torch.cat([chosen, chosen.sum(dim=1, keepdim=True)], dim=1).double().numpy()

    generator = torch.Generator().manual_seed(seed)
    members = features(forget_probabilities[torch.randperm(len(forget_probabilities), generator=generator)[:count]])
    unseen = features(unseen_probabilities[torch.randperm(len(unseen_probabilities), generator=generator)[:count]])
    x = np.concatenate([members, unseen])
    y = np.concatenate([np.ones(count), np.zeros(count)])
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    scores = cross_val_score(SVC(C=3, gamma="auto", kernel="rbf"), x, y, cv=folds, scoring="balanced_accuracy")
    return float(scores.mean() * 100)
