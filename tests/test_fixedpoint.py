"""The fixed-point primitives of the oracle: hand-worked cases from the gemmlowp/TFLite
definitions, and properties against exact rational arithmetic (Python ints / Fractions)."""

from fractions import Fraction
import math

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from intunlearn.reference import fixedpoint as fp

INT32 = st.integers(fp.INT32_MIN, fp.INT32_MAX)
SHIFTS = st.integers(-31, 30)
MULTIPLIERS = st.integers(0, fp.INT32_MAX)


def ints(value):
    return int(np.asarray(value))


# ---- hand-worked cases ---------------------------------------------------------------------


@pytest.mark.parametrize("a, b, expected", [
    (fp.INT32_MIN, fp.INT32_MIN, fp.INT32_MAX),  # 2**62 / 2**31 = 2**31 does not fit: saturate
    (2**30, 2**30, 2**29),                        # 0.5 * 0.5 = 0.25 of 2**31
    (-(2**30), 2**30, -(2**29)),
    (fp.INT32_MIN, 2**30, -(2**30)),              # -1.0 * 0.5
    (fp.INT32_MAX, fp.INT32_MAX, fp.INT32_MAX - 1),  # (2**31-1)**2 / 2**31 = 2**31 - 2 + 2**-31
    (1, 2**30, 1),                                # exactly 0.5: the tie goes up
    (-1, 2**30, 0),                               # exactly -0.5: the tie goes up (toward +inf)
    (-3, 2**30, -1),                              # exactly -1.5 -> -1
    (3, 2**30, 2),                                # exactly 1.5 -> 2
    (-1, 2**29, 0),                               # -0.25 -> 0
    (-3, 2**29, -1),                              # -0.75 -> -1
])
def test_saturating_rounding_doubling_high_mul_by_hand(a, b, expected):
    assert ints(fp.saturating_rounding_doubling_high_mul(a, b)) == expected


@pytest.mark.parametrize("x, exponent, expected", [
    (3, 1, 2), (-3, 1, -2),      # +-1.5: ties away from zero
    (5, 1, 3), (-5, 1, -3),      # +-2.5: ties away from zero (not to even)
    (5, 2, 1), (-5, 2, -1),      # +-1.25
    (6, 2, 2), (-6, 2, -2),      # +-1.5
    (7, 2, 2), (-7, 2, -2),      # +-1.75
    (-1, 1, -1), (1, 1, 1),      # +-0.5
    (0, 31, 0), (fp.INT32_MAX, 31, 1), (fp.INT32_MIN, 31, -1),  # 2**31-1 / 2**31 ~ 1; -1 exactly
    (12345, 0, 12345),
])
def test_rounding_divide_by_pot_by_hand(x, exponent, expected):
    assert ints(fp.rounding_divide_by_pot(x, exponent)) == expected


@pytest.mark.parametrize("x, multiplier, shift, double, single", [
    (100, 2**30, 0, 50, 50),     # x * 0.5
    (5, 2**30, -1, 2, 1),        # 5 * 0.25 = 1.25: high mul gives 2.5 -> 3, then 1.5 -> 2
    (-1, 2**30, 0, 0, 0),        # -0.5: both round the tie up
    (-3, 2**30, 0, -1, -1),      # -1.5
    (-5, 2**30, -1, -1, -1),     # -1.25: high mul -2.5 -> -2, then -1.0
    (3, 2**30, 1, 3, 3),         # 3 * 0.5 * 2 = 3: left shift first
    (7, 0, 5, 0, 0),             # multiplier 0
])
def test_multiply_by_quantized_multiplier_by_hand(x, multiplier, shift, double, single):
    assert ints(fp.multiply_by_quantized_multiplier(x, multiplier, shift, "double")) == double
    assert ints(fp.multiply_by_quantized_multiplier(x, multiplier, shift, "single")) == single


@pytest.mark.parametrize("real, multiplier, shift", [
    (0.5, 2**30, 0),
    (1.0, 2**30, 1),
    (0.25, 2**30, -1),
    (0.75, 3 * 2**29, 0),
    (0.0, 0, 0),
    (2.0**-40, 0, 0),             # below 2**-32: shift would be < -31, all results are 0
    (2.0**-32, 2**30, -31),       # the smallest representable
    (1 - 2.0**-40, 2**30, 1),     # the fraction rounds up to 1.0 and carries into the shift
    (1.5 * 2.0**29, 3 * 2**29, 30),
])
def test_quantize_multiplier_by_hand(real, multiplier, shift):
    got_multiplier, got_shift = fp.quantize_multiplier(real)
    assert (ints(got_multiplier), ints(got_shift)) == (multiplier, shift)


@pytest.mark.parametrize("real", [2.0**30, -0.5, float("nan"), float("inf")])
def test_quantize_multiplier_refuses(real):
    with pytest.raises(ValueError, match="real multiplier"):
        fp.quantize_multiplier(real)


def test_wrap_int32():
    assert ints(fp.wrap_int32(2**31)) == fp.INT32_MIN
    assert ints(fp.wrap_int32(-(2**31) - 1)) == fp.INT32_MAX
    assert ints(fp.wrap_int32(2**32 + 5)) == 5


# ---- properties against exact arithmetic -------------------------------------------------


def exact_product(x, multiplier, shift) -> Fraction:
    return Fraction(x * multiplier) * Fraction(2) ** (shift - 31)


@given(x=INT32, multiplier=MULTIPLIERS, shift=SHIFTS)
def test_single_rounding_is_exact_round_half_up(x, multiplier, shift):
    value = exact_product(x, multiplier, shift)
    expected = math.floor(value + Fraction(1, 2))
    assume(fp.INT32_MIN <= expected <= fp.INT32_MAX)  # else the C cast wraps
    assert ints(fp.multiply_by_quantized_multiplier(x, multiplier, shift, "single")) == expected


@given(x=INT32, multiplier=MULTIPLIERS, shift=SHIFTS)
def test_double_rounding_within_one_of_exact_and_equal_away_from_ties(x, multiplier, shift):
    assume(fp.INT32_MIN <= x * 2 ** max(shift, 0) <= fp.INT32_MAX)  # no wrap in the left shift
    value = exact_product(x, multiplier, shift)
    nearest = math.floor(value + Fraction(1, 2))
    assume(fp.INT32_MIN < nearest < fp.INT32_MAX)
    got = ints(fp.multiply_by_quantized_multiplier(x, multiplier, shift, "double"))
    assert abs(got - nearest) <= 1
    # The first rounding moves the value by at most 2**-31 of the high word, i.e.
    # 2**-(right_shift + 1) after the right shift; farther than that from a tie, no difference.
    distance_to_tie = abs(value - math.floor(value) - Fraction(1, 2))
    if distance_to_tie > Fraction(1, 2 ** (max(-shift, 0) + 1)):
        assert got == round_half_away(value)


def round_half_away(value: Fraction) -> int:
    magnitude = math.floor(abs(value) + Fraction(1, 2))
    return magnitude if value >= 0 else -magnitude


@given(x=INT32, multiplier=MULTIPLIERS, shift=SHIFTS)
def test_single_and_double_rounding_differ_by_at_most_one(x, multiplier, shift):
    assume(fp.INT32_MIN <= x * 2 ** max(shift, 0) <= fp.INT32_MAX)
    assume(abs(exact_product(x, multiplier, shift)) < 2**31 - 2)
    double = ints(fp.multiply_by_quantized_multiplier(x, multiplier, shift, "double"))
    single = ints(fp.multiply_by_quantized_multiplier(x, multiplier, shift, "single"))
    assert abs(double - single) <= 1


@given(st.floats(min_value=2.0**-31, max_value=2.0**29, allow_subnormal=False))
def test_quantize_multiplier_reconstructs_within_2_pow_minus_31(real):
    multiplier, shift = (ints(v) for v in fp.quantize_multiplier(real))
    assert 2**30 <= multiplier < 2**31 and -31 <= shift <= 30
    reconstructed = Fraction(multiplier) * Fraction(2) ** (shift - 31)
    assert abs(reconstructed - Fraction(real)) <= Fraction(real) * Fraction(1, 2**31)


@given(st.lists(st.floats(min_value=0, max_value=1e6, allow_subnormal=False), min_size=1, max_size=8))
def test_quantize_multiplier_elementwise(reals):
    multipliers, shifts = fp.quantize_multiplier(np.array(reals))
    for real, multiplier, shift in zip(reals, multipliers, shifts):
        assert (multiplier, shift) == tuple(ints(v) for v in fp.quantize_multiplier(real))


@given(acc=st.lists(INT32, min_size=1, max_size=16), multiplier=MULTIPLIERS, shift=SHIFTS,
       zero_point=st.integers(-1000, 1000), bounds=st.tuples(st.integers(-128, 127), st.integers(-128, 127)),
       rounding=st.sampled_from(["double", "single"]))
def test_requantize_stays_within_activation_range(acc, multiplier, shift, zero_point, bounds, rounding):
    act_min, act_max = sorted(bounds)
    y = fp.requantize(np.array(acc), multiplier, shift, zero_point, act_min, act_max, rounding)
    assert y.dtype == np.int8
    assert y.min() >= act_min and y.max() <= act_max


@given(a=INT32, b=INT32)
def test_saturating_rounding_doubling_high_mul_is_nearest(a, b):
    assume(not (a == fp.INT32_MIN and b == fp.INT32_MIN))
    value = Fraction(a * b, 2**31)
    assert ints(fp.saturating_rounding_doubling_high_mul(a, b)) == math.floor(value + Fraction(1, 2))


@given(x=INT32, exponent=st.integers(0, 31))
def test_rounding_divide_by_pot_is_nearest_ties_away(x, exponent):
    assert ints(fp.rounding_divide_by_pot(x, exponent)) == round_half_away(Fraction(x, 2**exponent))
