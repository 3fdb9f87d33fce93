"""Integer-inference demo on scikit-learn's digits: the smallest end-to-end use of the ops.

Trains a 2-layer MLP in float, quantizes it by the TFLite conventions (int8 activations,
per-channel int4/int8 weights, int32 biases, fixed-point multipliers, ReLU folded into the
clamp), and classifies the test set three ways: float, float fake-quantization of the same
parameters, and true integer arithmetic through `intunlearn.ops.qlinear`. It reports how often
the integer model agrees with fake-quantization, the gap this project exists to measure.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from tqdm import tqdm

from intunlearn import _checks as check
from intunlearn import ops
from intunlearn import qparams as qp


@dataclass(frozen=True)
class QuantLinearLayer:
    """The deployable integer parameters of one fully connected layer."""

    weight: torch.Tensor  # int8 values, or packed int4 (uint8)
    weight_scales: torch.Tensor  # float64 [OUT]
    bias: torch.Tensor  # int32 [OUT]
    multiplier: torch.Tensor
    shift: torch.Tensor
    input: qp.ActivationQParams
    output: qp.ActivationQParams
    act_min: int
    weight_bits: int


def load_digits_split(seed: int):
    """Digits as float32 in [0, 1], 75/25 stratified split."""
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, digits.target, test_size=0.25, random_state=seed, stratify=digits.target)
    return (torch.from_numpy(x_train), torch.from_numpy(y_train),
            torch.from_numpy(x_test), torch.from_numpy(y_test))


def train_mlp(x, y, hidden: int, epochs: int, seed: int) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(x.shape[1], hidden), torch.nn.ReLU(),
                                torch.nn.Linear(hidden, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(seed)
    for _ in tqdm(range(epochs), desc="train float MLP", unit="epoch"):
        for batch in torch.randperm(len(x), generator=generator).split(128):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
    return model.eval()


def quantize_layer(linear: torch.nn.Linear, input_q: qp.ActivationQParams, output_range, relu: bool,
                   weight_bits: int) -> QuantLinearLayer:
    output_q = qp.choose_activation_qparams(*output_range)
    weight, scales = qp.quantize_weight(linear.weight, weight_bits)
    multiplier, shift = qp.output_multipliers(input_q.scale, scales, output_q.scale)
    # ReLU folds into the clamp: real 0 is the output zero point.
    act_min = max(output_q.zero_point, -128) if relu else -128
    return QuantLinearLayer(
        weight=ops.pack_int4(weight) if weight_bits == 4 else weight, weight_scales=scales,
        bias=qp.quantize_bias(linear.bias, input_q.scale, scales), multiplier=multiplier, shift=shift,
        input=input_q, output=output_q, act_min=act_min, weight_bits=weight_bits)


def integer_forward(layer: QuantLinearLayer, x_q: torch.Tensor, backend: str) -> torch.Tensor:
    return ops.qlinear(x_q, layer.weight, layer.bias, input_zero_point=layer.input.zero_point,
                       output_zero_point=layer.output.zero_point, multiplier=layer.multiplier,
                       shift=layer.shift, act_min=layer.act_min, weight_bits=layer.weight_bits,
                       backend=backend)


def fake_quant_forward(layer: QuantLinearLayer, x_real: torch.Tensor, in_features: int) -> torch.Tensor:
    """The same parameters simulated in float: dequantized weights/bias, float matmul, then the
    output quantize-dequantize. Returns int8 codes so it compares directly with the integer path."""
    weight = layer.weight
    if layer.weight_bits == 4:
        weight = ops.unpack_int4(weight, in_features)
    w = qp.dequantize(weight, layer.weight_scales, axis=0).double()
    b = layer.bias.double() * layer.input.scale * layer.weight_scales
    y = x_real.double() @ w.T + b
    return qp.quantize(y, layer.output.scale, layer.output.zero_point, layer.act_min, 127)


def run_demo(weight_bits: int = 4, hidden: int = 64, epochs: int = 40, seed: int = 0,
             backend: str = "auto") -> dict:
    for name, value in (("hidden", hidden), ("epochs", epochs)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    check.seed(seed)
    x_train, y_train, x_test, y_test = load_digits_split(seed)
    model = train_mlp(x_train, y_train, hidden, epochs, seed)
    first, second = model[0], model[2]
    with torch.no_grad():
        hidden_train = torch.relu(first(x_train))
        logits_train = second(hidden_train)
        float_logits = model(x_test)

    input_q = qp.choose_activation_qparams(x_train.min(), x_train.max())
    layer1 = quantize_layer(first, input_q, (hidden_train.min(), hidden_train.max()), True, weight_bits)
    layer2 = quantize_layer(second, layer1.output, (logits_train.min(), logits_train.max()), False,
                            weight_bits)

    x_q = qp.quantize(x_test, input_q.scale, input_q.zero_point, -128, 127)
    integer_logits = integer_forward(layer2, integer_forward(layer1, x_q, backend), backend)

    x_real = qp.dequantize(x_q, input_q.scale, input_q.zero_point)
    hidden_fake = fake_quant_forward(layer1, x_real, x_train.shape[1])
    hidden_real = qp.dequantize(hidden_fake, layer1.output.scale, layer1.output.zero_point)
    fake_logits = fake_quant_forward(layer2, hidden_real, hidden)

    def accuracy(logits):
        return float((logits.argmax(dim=1) == y_test).double().mean())

    return {
        "weight_bits": weight_bits, "test_samples": len(y_test),
        "float_accuracy": accuracy(float_logits),
        "fake_quant_accuracy": accuracy(fake_logits),
        "integer_accuracy": accuracy(integer_logits),
        "integer_vs_fake_prediction_agreement": float(
            (integer_logits.argmax(1) == fake_logits.argmax(1)).double().mean()),
        "integer_vs_fake_max_logit_diff_lsb": int(
            (integer_logits.int() - fake_logits.int()).abs().max()),
    }


def format_report(result: dict) -> str:
    rows = [("float", result["float_accuracy"]), ("fake-quant", result["fake_quant_accuracy"]),
            ("integer", result["integer_accuracy"])]
    lines = [f"digits MLP, {result['weight_bits']}-bit weights / 8-bit activations, "
             f"{result['test_samples']} test samples", f"{'arithmetic':<12}{'accuracy':>10}"]
    lines += [f"{name:<12}{acc:>10.4f}" for name, acc in rows]
    lines.append(f"integer vs fake-quant: {result['integer_vs_fake_prediction_agreement']:.4f} "
                 f"prediction agreement, max logit difference "
                 f"{result['integer_vs_fake_max_logit_diff_lsb']} LSB")
    return "\n".join(lines)
