"""The integer-inference demo and the command line."""

import json

from intunlearn.cli import main
from intunlearn.demo import run_demo


def test_demo_integer_model_classifies_digits_like_fake_quant():
    result = run_demo(weight_bits=4, epochs=8, seed=1, backend="reference")
    assert result["float_accuracy"] > 0.85
    assert result["integer_accuracy"] > 0.8
    # Same parameters, integer vs float simulation: predictions nearly always agree.
    assert result["integer_vs_fake_prediction_agreement"] >= 0.97
    assert result["integer_vs_fake_max_logit_diff_lsb"] <= 2


def test_demo_is_deterministic_for_a_seed():
    assert run_demo(epochs=3, seed=3) == run_demo(epochs=3, seed=3)


def test_cli_demo_prints_a_table_and_writes_json(tmp_path, capsys):
    path = tmp_path / "result.json"
    assert main(["demo", "--epochs", "3", "--weight-bits", "8", "--json", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "integer" in printed and "fake-quant" in printed
    assert json.loads(path.read_text())["weight_bits"] == 8
