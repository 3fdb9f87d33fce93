"""Unlearning metrics of the SalUn / Q-MUL protocol.

FA, RA, TA: accuracy on the forget, retain and test sets. MIA-Efficacy: a membership-inference
attack trained on the model's confidence in the true label (RBF SVC, C=3, gamma="auto"; shadow
members: a random retain sample as large as the test set; non-members: the test set) and scored
as the fraction of forget samples it predicts to be non-members (higher = more forgotten).
Average gap: mean |metric - retrain's metric| over FA, RA, TA and MIA-Efficacy (in %).
"""

from __future__ import annotations

import numpy as np
import torch
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
