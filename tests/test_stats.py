"""Statistics over seeds against hand-made numbers worked out independently (scipy's t quantile
and the textbook formulas, not the module's own code path)."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from intunlearn.unlearning.stats import NOT_DISTINGUISHABLE, best, mean_interval, paired_comparison


def test_mean_interval_of_hand_made_numbers():
    values = [2.0, 4.0, 6.0, 8.0]  # mean 5, sample sd sqrt(20/3), n 4
    half = scipy_stats.t.ppf(0.975, 3) * math.sqrt(20 / 3) / 2  # t_{0.975, 3} * s / sqrt(n)
    estimate = mean_interval(values)
    assert estimate.mean == 5.0 and estimate.n == 4
    assert estimate.low == pytest.approx(5 - half, rel=1e-12)
    assert estimate.high == pytest.approx(5 + half, rel=1e-12)
    assert half == pytest.approx(4.108, abs=1e-3)  # 3.182 * 2.582 / 2, from printed t tables
    assert estimate.format() == "5.0 ± 4.1"


def test_one_value_has_no_interval_and_equal_values_a_zero_width_one():
    single = mean_interval([3.5])
    assert single.mean == 3.5 and math.isnan(single.low) and not single.excludes(0)
    assert single.format() == "3.5"
    same = mean_interval([1.0, 1.0, 1.0])
    assert (same.low, same.high) == (1.0, 1.0) and same.excludes(0.0)


def test_paired_comparison_matches_the_paired_t_test():
    a, b = [10.0, 12.0, 9.0, 11.0, 13.0], [9.0, 11.5, 8.0, 10.0, 11.5]
    differences = np.subtract(a, b)  # 1, .5, 1, 1, 1.5
    comparison = paired_comparison(a, b)
    t = differences.mean() / (differences.std(ddof=1) / math.sqrt(5))
    assert comparison.p_value == pytest.approx(2 * scipy_stats.t.sf(abs(t), 4), rel=1e-10)
    assert comparison.difference.mean == pytest.approx(1.0)
    assert comparison.distinguishable


def test_a_constant_difference_is_certain_and_no_difference_is_not():
    assert paired_comparison([1.0, 2.0, 3.0], [0.5, 1.5, 2.5]).p_value == 0.0
    no_difference = paired_comparison([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert no_difference.p_value == 1.0 and not no_difference.distinguishable


def test_best_only_where_the_intervals_say_so():
    clear = {"a": [1.0, 1.2, 0.9, 1.1], "b": [3.0, 3.1, 2.9, 3.3], "c": [5.0, 5.5, 4.8, 5.1]}
    assert best(clear) == "a"
    assert best(clear, lower_is_better=False) == "c"
    noisy = {"a": [1.0, 4.0, 0.5, 3.0], "b": [2.0, 1.0, 3.0, 2.5]}  # means 2.125 vs 2.125 +- noise
    assert best(noisy) == NOT_DISTINGUISHABLE
    assert best({"a": [1.0], "b": [2.0]}) == NOT_DISTINGUISHABLE  # one seed proves nothing


@pytest.mark.parametrize("bad, message", [
    ([], "non-empty"), ([1.0, float("nan")], "finite"), ([[1.0, 2.0]], "non-empty list"),
])
def test_bad_values_are_named(bad, message):
    with pytest.raises(ValueError, match=message):
        mean_interval(bad)
    with pytest.raises(ValueError, match="pair up"):
        paired_comparison([1.0, 2.0], [1.0])
