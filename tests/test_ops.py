"""intunlearn.ops: the public contract on the reference backend (forms of the arguments, int4
packing in torch) and its input validation."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from intunlearn import ops
from intunlearn import reference as spec
from intunlearn.backends import BACKENDS, Backend, resolve
from strategies import conv_cases, int_array, linear_cases

I8, I32, U8 = torch.int8, torch.int32, torch.uint8


def conv_weight_forms(case):
    """The case's conv weight as given, plus the packed form (with kernel_size) for int4."""
    weight = case["weight"]
    forms = [(weight, {})]
    if case["params"]["weight_bits"] == 4:
        forms.append((ops.pack_int4(weight.flatten(1)), {"kernel_size": tuple(weight.shape[2:])}))
    return forms


@given(linear_cases())
def test_qlinear_reference_backend_is_the_oracle(case):
    params = dict(case["params"])
    expected = spec.qlinear(case["x"].numpy(), case["weight"].numpy(),
                            None if case["bias"] is None else case["bias"].numpy(),
                            **{k: v.numpy() if isinstance(v, torch.Tensor) else v
                               for k, v in params.items() if k != "weight_bits"})
    forms = [case["weight"]] + ([ops.pack_int4(case["weight"])] if params["weight_bits"] == 4 else [])
    for weight in forms:
        y = ops.qlinear(case["x"], weight, case["bias"], backend="reference", **params)
        assert y.dtype == I8 and y.shape == (case["x"].shape[0], case["weight"].shape[0])
        np.testing.assert_array_equal(y.numpy(), expected)


@given(conv_cases())
def test_qconv2d_accepts_every_padding_and_weight_form(case):
    params = dict(case["params"])
    canonical = dict(params, padding=case["pads"])
    reference = ops.qconv2d(case["x"], case["weight"], case["bias"], backend="reference", **canonical)
    for weight, extra in conv_weight_forms(case):
        y = ops.qconv2d(case["x"], weight, case["bias"], backend="reference", **params, **extra)
        torch.testing.assert_close(y, reference, rtol=0, atol=0)


@given(st.integers(0, 40).flatmap(lambda n: int_array((2, 3, n), -8, 7)))
def test_torch_int4_packing_matches_the_oracle(values):
    packed = ops.pack_int4(torch.from_numpy(values))
    np.testing.assert_array_equal(packed.numpy(), spec.pack_int4(values))
    np.testing.assert_array_equal(ops.unpack_int4(packed, values.shape[-1]).numpy(), values)


@given(acc=int_array((5, 3), -(2**31), 2**31 - 1, np.int32), data=st.data(),
       rounding=st.sampled_from(["double", "single"]))
def test_multiply_by_quantized_multiplier_matches_the_oracle(acc, data, rounding):
    multiplier = data.draw(int_array((3,), 0, 2**31 - 1, np.int32))
    shift = data.draw(int_array((3,), -31, 30, np.int32))
    got = ops.multiply_by_quantized_multiplier(torch.from_numpy(acc), torch.from_numpy(multiplier),
                                               torch.from_numpy(shift), rounding)
    assert got.dtype == I32
    np.testing.assert_array_equal(got.numpy(), spec.multiply_by_quantized_multiplier(acc, multiplier, shift, rounding))
    scalar = ops.multiply_by_quantized_multiplier(torch.from_numpy(acc), int(multiplier[0]), int(shift[0]), rounding)
    np.testing.assert_array_equal(scalar.numpy(), spec.multiply_by_quantized_multiplier(acc, multiplier[0], shift[0], rounding))


def test_quantize_multiplier_forms():
    multiplier, shift = ops.quantize_multiplier(0.75)
    assert multiplier.dtype == shift.dtype == I32 and multiplier.dim() == 0
    assert (int(multiplier), int(shift)) == (3 * 2**29, 0)
    multipliers, shifts = ops.quantize_multiplier(torch.tensor([0.5, 0.25]))
    assert multipliers.tolist() == [2**30, 2**30] and shifts.tolist() == [0, -1]


def test_auto_backend_runs_on_cpu():
    x = torch.tensor([[1, 2]], dtype=I8)
    w = torch.tensor([[3, 4]], dtype=I8)
    one = torch.tensor([2**30], dtype=I32)
    zero = torch.tensor([1], dtype=I32)  # M = 1.0
    y = ops.qlinear(x, w, None, input_zero_point=0, output_zero_point=0, multiplier=one, shift=zero)
    assert y.tolist() == [[11]]


# ---- bad input -------------------------------------------------------------------------------


def linear_args(**overrides):
    args = dict(x=torch.zeros(2, 5, dtype=I8), weight=torch.zeros(3, 5, dtype=I8), bias=None,
                input_zero_point=0, output_zero_point=0, multiplier=torch.full((3,), 2**30, dtype=I32),
                shift=torch.zeros(3, dtype=I32))
    args.update(overrides)
    return args


def conv_args(**overrides):
    args = dict(x=torch.zeros(1, 4, 5, 5, dtype=I8), weight=torch.zeros(6, 2, 3, 3, dtype=I8), bias=None,
                groups=2, input_zero_point=0, output_zero_point=0,
                multiplier=torch.full((6,), 2**30, dtype=I32), shift=torch.zeros(6, dtype=I32))
    args.update(overrides)
    return args


BAD_LINEAR = [
    (dict(x=torch.zeros(2, 5, dtype=torch.uint8)), TypeError, "x must have dtype torch.int8"),
    (dict(x=torch.zeros(2, 5)), TypeError, "x must have dtype"),
    (dict(x=[[0] * 5]), TypeError, "x must be a torch.Tensor"),
    (dict(x=torch.zeros(2, 5, 1, dtype=I8)), ValueError, "x must be 2-D"),
    (dict(weight=torch.zeros(3, 4, dtype=I8)), ValueError, "weight must have shape [OUT, 5]"),
    (dict(weight=torch.zeros(3, 5, dtype=I32)), TypeError, "weight must have dtype"),
    (dict(weight=torch.zeros(3, 3, dtype=U8)), TypeError, "weight must have dtype torch.int8"),
    (dict(weight=torch.full((3, 5), 8, dtype=I8), weight_bits=4), ValueError, "weight has values outside [-8, 7]"),
    (dict(weight=torch.zeros(3, 2, dtype=U8), weight_bits=4), ValueError, "packed int4 (uint8) weight must have shape [OUT, 3]"),
    (dict(weight_bits=2), ValueError, "weight_bits must be one of"),
    (dict(bias=torch.zeros(3, dtype=I8)), TypeError, "bias must have dtype torch.int32"),
    (dict(bias=torch.zeros(4, dtype=I32)), ValueError, "bias must have shape [3]"),
    (dict(multiplier=torch.full((3,), -1, dtype=I32)), ValueError, "multiplier has values outside [0"),
    (dict(multiplier=torch.full((2,), 2**30, dtype=I32)), ValueError, "multiplier must have shape [3] or [1]"),
    (dict(multiplier=torch.full((3,), 2**30, dtype=torch.int64)), TypeError, "multiplier must have dtype torch.int32"),
    (dict(shift=torch.full((3,), 31, dtype=I32)), ValueError, "shift has values outside [-31, 30]"),
    (dict(shift=torch.full((3,), -32, dtype=I32)), ValueError, "shift has values outside [-31, 30]"),
    (dict(shift=-5), TypeError, "shift must be a torch.Tensor, got int"),
    (dict(input_zero_point=0.5), TypeError, "input_zero_point must be a Python int"),
    (dict(input_zero_point=2**31), ValueError, "input_zero_point must lie in"),
    (dict(output_zero_point=True), TypeError, "output_zero_point must be a Python int"),
    (dict(act_min=-129), ValueError, "act_min must lie in [-128, 127]"),
    (dict(act_min=5, act_max=4), ValueError, "act_min must be <= act_max"),
    (dict(rounding="nearest"), ValueError, "rounding must be one of"),
    (dict(backend="cuda"), ValueError, "backend must be 'auto' or one of"),
    (dict(weight=torch.zeros(3, 5, dtype=I8, device="meta")), ValueError, "tensors must all be on one device"),
]


@pytest.mark.parametrize("overrides, error, message", BAD_LINEAR)
def test_qlinear_rejects_bad_input(overrides, error, message):
    args = linear_args(**overrides)
    with pytest.raises(error, match=_literal(message)):
        ops.qlinear(args.pop("x"), args.pop("weight"), args.pop("bias"), **args)


BAD_CONV = [
    (dict(x=torch.zeros(4, 5, 5, dtype=I8)), ValueError, "x must be 4-D"),
    (dict(groups=3), ValueError, "groups=3 must divide the input channels C=4"),
    (dict(groups=0), ValueError, "groups must lie in [1"),
    (dict(weight=torch.zeros(6, 4, 3, 3, dtype=I8)), ValueError, "weight must have C/groups = 2"),
    (dict(weight=torch.zeros(5, 2, 3, 3, dtype=I8), multiplier=torch.full((5,), 2**30, dtype=I32),
          shift=torch.zeros(5, dtype=I32)), ValueError, "groups=2 must divide the output channels OC=5"),
    (dict(weight=torch.zeros(6, 18, dtype=I8)), ValueError, "weight must be 4-D"),
    (dict(weight=torch.zeros(6, 9, dtype=U8), weight_bits=4), ValueError, "kernel_size is required"),
    (dict(weight=torch.zeros(6, 8, dtype=U8), weight_bits=4, kernel_size=3), ValueError, "packed int4 (uint8) weight must have shape [OUT, 9]"),
    (dict(weight=torch.zeros(6, 9, dtype=U8), weight_bits=8, kernel_size=3), TypeError, "weight must have dtype torch.int8"),
    (dict(kernel_size=2), ValueError, "kernel_size 2 does not match"),
    (dict(stride=0), ValueError, "stride must lie in [1"),
    (dict(stride=(1, 2, 3)), TypeError, "stride must be an int or a pair"),
    (dict(dilation=(1, 0)), ValueError, "dilation must lie in [1"),
    (dict(padding=-1), ValueError, "padding must lie in [0"),
    (dict(padding=(1, 2, 3)), TypeError, "padding must be an int, (ph, pw) or (top, bottom, left, right)"),
    (dict(dilation=3), ValueError, "is smaller than the dilated kernel"),
    (dict(multiplier=torch.full((4,), 2**30, dtype=I32)), ValueError, "multiplier must have shape [6] or [1]"),
]


@pytest.mark.parametrize("overrides, error, message", BAD_CONV)
def test_qconv2d_rejects_bad_input(overrides, error, message):
    args = conv_args(**overrides)
    with pytest.raises(error, match=_literal(message)):
        ops.qconv2d(args.pop("x"), args.pop("weight"), args.pop("bias"), **args)


def add_args(**overrides):
    args = dict(a=torch.zeros(2, 3, dtype=I8), b=torch.zeros(2, 3, dtype=I8), a_zero_point=0,
                a_multiplier=2**30, a_shift=0, b_zero_point=0, b_multiplier=2**30, b_shift=0,
                left_shift=20, output_zero_point=0, output_multiplier=2**30, output_shift=-19)
    args.update(overrides)
    return args


@pytest.mark.parametrize("overrides, error, message", [
    (dict(b=torch.zeros(3, 2, dtype=I8)), ValueError, "a and b must have the same shape"),
    (dict(a=torch.zeros(2, 3, dtype=I32)), TypeError, "a must have dtype torch.int8"),
    (dict(a_multiplier=-5), ValueError, "a_multiplier must lie in [0"),
    (dict(b_shift=31), ValueError, "b_shift must lie in [-31, 30]"),
    (dict(left_shift=31), ValueError, "left_shift must lie in [0, 30]"),
    (dict(output_multiplier=torch.tensor(2**30)), TypeError, "output_multiplier must be a Python int"),
])
def test_qadd_rejects_bad_input(overrides, error, message):
    args = add_args(**overrides)
    with pytest.raises(error, match=_literal(message)):
        ops.qadd(args.pop("a"), args.pop("b"), **args)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(x=torch.zeros(1, 1, 4, 4, dtype=I8), kernel_size=2, padding=2), ValueError, "padding (top=2) must be smaller"),
    (dict(x=torch.zeros(1, 1, 2, 2, dtype=I8), kernel_size=3), ValueError, "larger than the padded input"),
    (dict(x=torch.zeros(1, 4, 4, dtype=I8), kernel_size=2), ValueError, "x must be 4-D"),
    (dict(x=torch.zeros(1, 1, 4, 4, dtype=I8), kernel_size=0), ValueError, "kernel_size must lie in [1"),
    (dict(x=torch.zeros(1, 1, 4, 4, dtype=I8), kernel_size=2, act_max=128), ValueError, "act_max must lie in"),
])
def test_qavg_pool2d_rejects_bad_input(kwargs, error, message):
    with pytest.raises(error, match=_literal(message)):
        ops.qavg_pool2d(**kwargs)


@pytest.mark.parametrize("call, error, message", [
    (lambda: ops.pack_int4(torch.tensor([8], dtype=I8)), ValueError, "values has values outside [-8, 7]"),
    (lambda: ops.pack_int4(torch.tensor([1], dtype=I32)), TypeError, "values must have dtype torch.int8"),
    (lambda: ops.unpack_int4(torch.zeros(3, dtype=U8), 7), ValueError, "packed must have last dimension ceil(length/2) = 4"),
    (lambda: ops.unpack_int4(torch.zeros(3, dtype=I8), 6), TypeError, "packed must have dtype torch.uint8"),
    (lambda: ops.quantize_multiplier(-0.5), ValueError, "real: real multiplier must be finite and >= 0"),
    (lambda: ops.quantize_multiplier(2.0**31), ValueError, "real: real multiplier must round to below 2**30"),
    (lambda: ops.quantize_multiplier(torch.tensor([1])), TypeError, "real must be a float or a floating-point tensor"),
    (lambda: ops.multiply_by_quantized_multiplier(torch.zeros(3, dtype=I32), -1, 0), ValueError, "multiplier must lie in [0"),
    (lambda: ops.multiply_by_quantized_multiplier(torch.zeros(3, dtype=I32), 1, torch.zeros(2, dtype=I32)),
     ValueError, "must broadcast to acc's shape"),
    (lambda: ops.multiply_by_quantized_multiplier(torch.zeros(3, dtype=torch.int64), 1, 0), TypeError, "acc must have dtype torch.int32"),
])
def test_primitives_reject_bad_input(call, error, message):
    with pytest.raises(error, match=_literal(message)):
        call()


def test_backend_without_kernels_says_why():
    ghost = Backend("ghost", frozenset({"cpu"}), "no_such_module")
    assert not ghost.available()
    with pytest.raises(NotImplementedError, match="backend='ghost' is not available: its kernels are not written yet"):
        ghost.load()


def test_backend_refuses_a_device_it_does_not_compute_on():
    cpu_only = [name for name, backend in BACKENDS.items()
                if backend.available() and "cuda" not in backend.devices]
    for name in cpu_only:
        with pytest.raises(ValueError, match="computes on"):
            resolve(name, torch.device("cuda"))
    with pytest.raises(ValueError, match="no backend computes on device type 'meta'"):
        resolve("auto", torch.device("meta"))


def _literal(message):
    import re
    return re.escape(message)
