"""Unlearning methods: one small module each behind `Method`, collected in a registry.

Adding a method means writing its class and listing it in METHOD_CLASSES.
"""

from __future__ import annotations

from intunlearn.unlearning.methods.amun import AMUN
from intunlearn.unlearning.methods.base import Method, UnlearnTask
from intunlearn.unlearning.methods.boundary_shrink import BoundaryShrink
from intunlearn.unlearning.methods.l1sparse import L1Sparse
from intunlearn.unlearning.methods.qmul import QMUL, QMULRelabel, QMULSequential, SimilarLabels
from intunlearn.unlearning.methods.salun import SalUn
from intunlearn.unlearning.methods.simple import FineTune, GradientAscent, RandomLabels, Retrain
from intunlearn.unlearning.methods.trw import TRW

METHOD_CLASSES = (Retrain, FineTune, GradientAscent, RandomLabels, SimilarLabels, QMUL, QMULRelabel, QMULSequential,
                  SalUn, L1Sparse, BoundaryShrink, AMUN, TRW)
METHODS: dict[str, type[Method]] = {cls.name: cls for cls in METHOD_CLASSES}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(METHODS)}")
    return METHODS[name]()


__all__ = ["METHODS", "Method", "UnlearnTask", "get_method"]
