"""Quantization primitives: parameter choice, quantize/dequantize, derived integer parameters."""

import numpy as np
import pytest
import torch
from hypothesis import assume, event, example, given
from hypothesis import strategies as st

from intunlearn import qparams
from intunlearn.reference import float64

finite = st.floats(-100, 100, allow_subnormal=False)


@given(finite, finite)
def test_activation_qparams_cover_the_range_and_zero_exactly(a, b):
    low, high = min(a, b), max(a, b)
    assume(max(abs(low), abs(high)) == 0 or max(abs(low), abs(high)) > 1e-6)  # float32 dequantize
    q = qparams.choose_activation_qparams(low, high)
    assert -128 <= q.zero_point <= 127 and q.scale > 0
    # real 0 is exactly representable: it quantizes to the zero point and back to 0
    zero = qparams.quantize(torch.zeros(1), q.scale, q.zero_point, -128, 127)
    assert int(zero) == q.zero_point and float(qparams.dequantize(zero, q.scale, q.zero_point)) == 0.0
    # the ends of the range are within one step of representable values
    ends = torch.tensor([min(low, 0.0), max(high, 0.0)], dtype=torch.float64)
    back = qparams.dequantize(qparams.quantize(ends, q.scale, q.zero_point, -128, 127), q.scale, q.zero_point)
    assert torch.all((back.double() - ends).abs() <= q.scale * 1.0001)


def test_activation_qparams_by_hand():
    q = qparams.choose_activation_qparams(0.0, 2.55)  # ReLU output: zero at the bottom
    assert q.zero_point == -128 and q.scale == pytest.approx(0.01)
    q = qparams.choose_activation_qparams(-1.0, 1.0)
    assert q.scale == pytest.approx(2 / 255) and q.zero_point == -1  # -128 + 127.5 = -0.5 -> -1
    assert qparams.choose_activation_qparams(0.0, 0.0) == qparams.ActivationQParams(1.0, 0)
    with pytest.raises(ValueError, match="min_value <= max_value"):
        qparams.choose_activation_qparams(1.0, -1.0)


@given(st.integers(1, 6), st.integers(1, 20), st.sampled_from([4, 8]), st.integers(0, 2**31))
def test_weight_quantization_is_symmetric_per_channel(rows, cols, bits, seed):
    weight = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)) * 3
    q, scales = qparams.quantize_weight(weight, bits)
    limit = 7 if bits == 4 else 127
    assert q.dtype == torch.int8 and q.abs().max() <= limit
    assert torch.all(q.abs().amax(dim=1) == limit)  # each channel's largest weight hits the limit
    error = (qparams.dequantize(q, scales, axis=0).double() - weight.double()).abs()
    assert torch.all(error <= scales[:, None] / 2 + 1e-6)


def test_zero_weight_channel_gets_scale_one():
    q, scales = qparams.quantize_weight(torch.tensor([[0.0, 0.0], [1.0, -2.0]]), 8)
    assert scales[0] == 1.0 and q[0].tolist() == [0, 0] and q[1].tolist() == [64, -127]


@pytest.mark.parametrize("bad, where", [(float("nan"), (1, 0)), (float("inf"), (0, 2)), (float("-inf"), (1, 2))])
def test_a_weight_with_nan_or_inf_is_refused_naming_the_entries(bad, where):
    weight = torch.tensor([[0.5, -1.0, 0.25], [1.0, 2.0, -0.5]])
    weight[where] = bad
    with pytest.raises(ValueError, match=rf"weight has 1 NaN or infinite entries of 6 \(the first at index "
                                         rf"\({where[0]}, {where[1]}\)"):
        qparams.quantize_weight(weight, 4)
    weight[0, 1] = float("nan")
    with pytest.raises(ValueError, match=r"weight has 2 NaN or infinite entries of 6"):
        qparams.quantize_weight(weight, 8)


@pytest.mark.parametrize("input_scale, weight_scales, output_scale, message", [
    (0.05, [0.1, 0.2], 0.0, "output_scale must be finite and > 0, got 0.0"),
    (0.0, [0.1, 0.2], 0.1, "input_scale must be finite and > 0, got 0.0"),
    (-0.05, [0.1, 0.2], 0.1, "input_scale must be finite and > 0, got -0.05"),
    (float("inf"), [0.1, 0.2], 0.1, "input_scale must be finite and > 0, got inf"),
    (0.05, [0.1, 0.0, 0.2], 0.1, r"weight_scales must be finite and > 0, got 0.0 at channel 1 \(1 of 3"),
    (0.05, [-0.1, float("nan")], 0.1, r"weight_scales must be finite and > 0, got -0.1 at channel 0 \(2 of 2"),
])
def test_output_multipliers_names_the_scale_that_is_not_positive(input_scale, weight_scales, output_scale, message):
    with pytest.raises(ValueError, match=message):
        qparams.output_multipliers(input_scale, torch.tensor(weight_scales, dtype=torch.float64), output_scale)


def test_output_multipliers_of_valid_scales_are_the_float64_multipliers():
    scales = torch.tensor([0.1, 0.2], dtype=torch.float64)
    multiplier, shift = qparams.output_multipliers(0.05, scales, 0.1)
    real = (multiplier.double() * 2.0 ** (shift.double() - 31)).numpy()
    np.testing.assert_allclose(real, 0.05 * scales.numpy() / 0.1, rtol=2**-30)


def test_round_half_away():
    values = torch.tensor([0.5, 1.5, 2.5, -0.5, -2.5, 0.49999999999999994, 2.4], dtype=torch.float64)
    assert qparams.round_half_away(values).tolist() == [1, 2, 3, -1, -3, 0, 2]


def test_quantize_matches_the_float64_reference():
    real = torch.linspace(-3, 3, 101, dtype=torch.float64)
    np.testing.assert_array_equal(qparams.quantize(real, 0.05, 3, -128, 127).numpy(),
                                  float64.quantize(real.numpy(), 0.05, 3))


def test_bias_quantization_refuses_overflow():
    with pytest.raises(ValueError, match="bias does not fit int32"):
        qparams.quantize_bias(torch.tensor([1e6]), 1e-3, torch.tensor([1e-6]))


def test_add_params_multipliers_reconstruct_the_scales():
    a, b, out = (qparams.ActivationQParams(s, 0) for s in (0.1, 0.05, 0.2))
    params = qparams.add_params(a, b, out)
    real = lambda prefix: params[f"{prefix}_multiplier"] * 2.0 ** (params[f"{prefix}_shift"] - 31)  # noqa: E731
    assert real("a") == pytest.approx(0.5) and real("b") == pytest.approx(0.25)
    assert real("output") == pytest.approx(0.2 / (2**20 * 0.2))


@given(st.lists(st.floats(-400, 400, allow_subnormal=False) | st.sampled_from([0.5, -0.5, 2.5, -2.5, 0.49999999999999994, 127.5, -128.5]),
                min_size=1, max_size=50),
       st.floats(0.01, 4.0), st.integers(-128, 127))
def test_numba_quantizer_is_bit_identical_to_the_torch_formulation(values, scale, zero_point):
    real = torch.tensor(values, dtype=torch.float64)
    codes, inside = qparams.quantize_activation(real, scale, zero_point)
    # the torch formulation, written out here: exact tie detection via trunc
    ratio = real / scale
    truncated = torch.trunc(ratio)
    rounded = torch.where((ratio - truncated).abs() == 0.5, truncated + torch.sign(ratio), torch.round(ratio))
    unclamped = rounded + zero_point
    assert torch.equal(codes, unclamped.clamp(-128, 127).to(torch.int8))
    assert torch.equal(inside, (unclamped >= -128) & (unclamped <= 127))
    assert torch.equal(qparams.round_half_away(ratio), rounded)


def _round_half_away_oracle(values):
    from intunlearn.reference.fixedpoint import round_half_away_from_zero
    return torch.from_numpy(round_half_away_from_zero(values.double().numpy()))


@given(st.integers(1, 5), st.integers(1, 9), st.sampled_from([4, 8]), st.integers(0, 2**32 - 1),
       st.booleans())
def test_training_weight_quantizer_matches_the_float64_formulation(rows, cols, bits, seed, ties):
    """qparams.weight_codes (a Numba pass on CPU): codes, STE mask and LSQ slope exactly as
    the float64 formulas give them, ties (w / s = k + 1/2) and clipping included."""
    quantize_weight = qparams.weight_codes
    rng = np.random.default_rng(seed)
    limit = qparams.weight_max(bits)
    scales = torch.from_numpy(rng.uniform(0.01, 1.0, rows).astype(np.float32))
    if ties:
        halves = rng.integers(-2 * limit - 4, 2 * limit + 4, (rows, cols)) + 0.5
        weight = (torch.from_numpy(halves).float() * scales[:, None]).float()
    else:
        weight = torch.from_numpy(rng.normal(0, limit * 0.7, (rows, cols)).astype(np.float32)) * scales[:, None]
    codes, inside, slope = quantize_weight(weight, scales, bits)
    ratio = weight.double() / scales.double()[:, None]
    want = _round_half_away_oracle(ratio).clamp(-limit, limit)
    assert torch.equal(codes, want.to(torch.int8))
    assert torch.equal(inside, ratio.abs() <= limit)
    assert torch.equal(slope, torch.where(ratio.abs() <= limit, want - ratio, want))
    assert torch.equal(quantize_weight(weight, scales, bits, mask=False, slope=False)[0], codes)


@given(st.lists(st.floats(1e-6, 1.0), min_size=1, max_size=6), st.floats(1e-4, 1.0), st.floats(1e-4, 10.0),
       st.integers(0, 2**32 - 1))
def test_integer_params_match_the_reference_multiplier_and_bias(weight_scales, input_scale, output_scale, seed):
    """The fused Numba derivation of multipliers, shifts and int32 biases equals
    reference QuantizeMultiplier and qparams.quantize_bias."""
    integer_params = qparams.integer_params
    from intunlearn.reference.fixedpoint import quantize_multiplier
    scales = torch.tensor(weight_scales, dtype=torch.float32)
    real = input_scale * scales.double() / output_scale
    assume(bool((real < 2**29).all()))
    rng = np.random.default_rng(seed)
    weight = torch.from_numpy(rng.normal(0, 1, (len(weight_scales), 3)).astype(np.float32))
    bias = torch.from_numpy(rng.normal(0, 1, len(weight_scales)).astype(np.float32))
    try:
        want_bias = qparams.quantize_bias(bias, input_scale, scales.double())
    except ValueError:  # both refuse a bias beyond int32
        with pytest.raises(ValueError, match="bias does not fit int32"):
            integer_params(weight, bias, scales, input_scale, output_scale, 8)
        bias, want_bias = None, None
    _, b_q, multiplier, shift = integer_params(weight, bias, scales, input_scale, output_scale, 8)
    want_multiplier, want_shift = quantize_multiplier(real.numpy())
    assert multiplier.tolist() == want_multiplier.tolist() and shift.tolist() == want_shift.tolist()
    assert (b_q is None) == (want_bias is None) and (b_q is None or torch.equal(b_q, want_bias))


def test_integer_params_name_what_does_not_fit():
    integer_params = qparams.integer_params
    weight, scales = torch.ones(2, 3), torch.tensor([1.0, 1.0])
    with pytest.raises(ValueError, match="bias does not fit int32"):
        integer_params(weight, torch.tensor([1e6, 0.0]), scales, 1e-6, 1.0, 8)
    with pytest.raises(ValueError, match="below 2\\*\\*30"):
        integer_params(weight, None, scales, 2.0**31, 1.0, 8)
    with pytest.raises(ValueError, match="finite"):
        integer_params(weight, None, torch.tensor([1.0, float("nan")]), 1.0, 1.0, 8)


@given(st.lists(st.integers(-128, 127), min_size=1, max_size=40), st.floats(1e-4, 10.0),
       st.integers(-128, 127))
def test_dequantize_activation_is_the_float64_product_rounded_once(codes, scale, zero_point):
    q = torch.tensor(codes, dtype=torch.int8)
    assert torch.equal(qparams.dequantize_activation(q, scale, zero_point),
                       (scale * (q.double() - zero_point)).float())


@given(st.floats(0, 2.0**30, allow_nan=False, allow_infinity=False)
       | st.floats(2.0**-40, 2.0**-28) | st.integers(-40, 29).map(lambda e: 2.0**e)
       | st.tuples(st.integers(2**30, 2**31 - 1), st.integers(-45, 29)).map(
           lambda pair: (pair[0] + 0.5) * 2.0**(pair[1] - 31)))  # exact ties of the fraction
@example(2.0**30)  # refused (shift 31): the drawn values rarely reach the refusal
@example(2.0**30 - 0.0537)  # rounds up to 2**30: refused as well
@example(2.0**30 - 64)  # the largest accepted: (2**31 - 128, 30)
def test_scalar_quantize_multiplier_matches_the_reference(real):
    """The plain-Python QuantizeMultiplier (torch.compile folds it) gives the reference's
    (multiplier, shift), rounding ties, carries to 2**31 and the underflow to (0, 0) included."""
    from intunlearn import ops
    try:
        expected = tuple(int(v) for v in ops.quantize_multiplier(real))
    except ValueError:
        expected = None  # the reference refuses it (shift > 30): the scalar version must too
    event("refused" if expected is None else "accepted")
    if expected is None:
        with pytest.raises(ValueError):
            qparams.quantize_multiplier_scalar(real)
    else:
        assert qparams.quantize_multiplier_scalar(real) == expected


@given(st.floats(-1e6, 1e6, allow_nan=False) | st.integers(-1000, 1000).map(lambda n: n + 0.5)
       | st.sampled_from([0.49999999999999994, -0.49999999999999994, 2.5 - 2**-51, -2.5 + 2**-51]))
def test_scalar_round_half_away_matches_the_tensor_version(value):
    expected = int(qparams.round_half_away(torch.tensor(value, dtype=torch.float64)))
    assert qparams.round_half_away_scalar(value) == expected


@given(st.floats(1e-30, 1e30) | st.floats(-1e30, -1e-30)
       | st.integers(1, 2**24 - 1).map(lambda n: (n + 0.5) * 2.0**-20))  # float32 ties
def test_round_to_float32_is_what_a_float32_tensor_stores(value):
    assert qparams.round_to_float32(value) == torch.tensor(value, dtype=torch.float32).item()


def test_the_scalar_helpers_carry_the_mark_torch_compilers_decorator_sets():
    """qparams marks its trace-time constants without importing Dynamo; the mark must be the
    one torch.compiler.assume_constant_result itself sets (compared on a fresh function)."""
    import torch._dynamo  # noqa: F401 - what the public decorator needs

    def probe():
        return 0

    mark = dict(vars(torch.compiler.assume_constant_result(probe)))
    assert mark, "assume_constant_result no longer marks the function: see qparams._constant_result"
    for helper in (qparams.round_half_away_scalar, qparams.round_to_float32, qparams.quantize_multiplier_scalar):
        assert {name: getattr(helper, name, None) for name in mark} == mark, helper.__name__


def test_importing_intunlearn_does_not_load_dynamo():
    import subprocess
    import sys

    code = "import sys, intunlearn.cli, intunlearn.qparams; print('torch._dynamo' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
