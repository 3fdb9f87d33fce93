"""Statistics over seeds: what a reader of a results table may conclude.

Every figure of a study is measured once per seed. It is reported as the mean with a 95%
confidence interval from Student's t distribution (the seeds are a small sample; the interval
widens accordingly), and two methods, pipelines or evaluations are compared *paired by seed*
(same forget set, same training randomness): the interval of the per-seed differences and the
paired t-test's p-value (scipy.stats.ttest_rel). Something is called best only where the paired
intervals against every other candidate exclude zero in its favour; otherwise the candidates are
"not distinguishable".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from scipy import stats

LEVEL = 0.95
NOT_DISTINGUISHABLE = "not distinguishable"


@dataclass(frozen=True)
class Estimate:
    """mean of n values with its confidence interval [low, high] (NaN bounds when n < 2)."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def excludes(self, value: float) -> bool:
        """Whether the interval lies wholly on one side of `value` (False without an interval)."""
        return self.n >= 2 and (self.low > value or self.high < value)

    def format(self, digits: int = 1) -> str:
        if self.n < 2 or not math.isfinite(self.half_width):
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.half_width:.{digits}f}"


def _finite_values(name: str, values: Sequence[float]) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty list of numbers, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} must be finite, got {array.tolist()}")
    return array


def mean_interval(values: Sequence[float], level: float = LEVEL) -> Estimate:
    """Mean and the Student-t confidence interval of the mean (NaN bounds for one value; a zero-
    width interval when all values agree)."""
    array = _finite_values("values", values)
    mean, n = float(array.mean()), array.size
    if n < 2:
        return Estimate(mean, math.nan, math.nan, n)
    sem = float(stats.sem(array))
    if sem == 0:
        return Estimate(mean, mean, mean, n)
    low, high = stats.t.interval(level, n - 1, loc=mean, scale=sem)
    return Estimate(mean, float(low), float(high), n)


@dataclass(frozen=True)
class PairedComparison:
    """a - b paired by seed: the mean difference with its interval, and the paired t-test's
    two-sided p-value (NaN for a single pair; 1 or 0 when every pair differs by the same amount,
    zero or not, where the t statistic is 0/0 or infinite)."""

    difference: Estimate
    p_value: float

    @property
    def distinguishable(self) -> bool:
        return self.difference.excludes(0.0)


def paired_comparison(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> PairedComparison:
    first, second = _finite_values("a", a), _finite_values("b", b)
    if first.shape != second.shape:
        raise ValueError(f"a and b must pair up seed by seed, got {first.size} and {second.size} values")
    difference = mean_interval(first - second, level)
    p_value = math.nan
    if first.size >= 2:
        if np.ptp(first - second) > 0:
            p_value = float(stats.ttest_rel(first, second).pvalue)
        else:  # a constant difference: certain when it is not zero, no evidence when it is
            p_value = 1.0 if difference.mean == 0 else 0.0
    return PairedComparison(difference, p_value)


def best(values: Mapping[str, Sequence[float]], lower_is_better: bool = True, level: float = LEVEL) -> str:
    """The candidate whose paired interval against every other one excludes zero in its
    favour, or NOT_DISTINGUISHABLE."""
    if len(values) < 2:
        raise ValueError(f"best needs at least two candidates, got {list(values)}")
    means = {name: float(np.mean(_finite_values(name, v))) for name, v in values.items()}
    leader = (min if lower_is_better else max)(means, key=means.get)
    sign = -1.0 if lower_is_better else 1.0
    for name, other in values.items():
        if name == leader:
            continue
        comparison = paired_comparison(values[leader], other, level)
        if not (comparison.distinguishable and sign * comparison.difference.mean > 0):
            return NOT_DISTINGUISHABLE
    return leader
