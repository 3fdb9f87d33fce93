"""The unlearning engine: forget sets, methods, metrics and the experiment runner."""

from intunlearn.unlearning.engine import ExperimentConfig, run_experiment
from intunlearn.unlearning.methods import METHODS, Method, UnlearnTask, get_method

__all__ = ["ExperimentConfig", "METHODS", "Method", "UnlearnTask", "get_method", "run_experiment"]
