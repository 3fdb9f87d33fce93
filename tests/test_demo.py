"""The integer-inference demo and the command line."""

import json
from pathlib import Path

from intunlearn.cli import main
from intunlearn.demo import run_demo

ROOT = Path(__file__).resolve().parents[1]  # the repository: `python -m` imports from it


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


def test_python_m_intunlearn_is_the_intunlearn_command():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "intunlearn", "demo", "--seed", "-1"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "intunlearn demo: error: seed must be an int in [0, 2**32), got -1" in result.stderr
    result = subprocess.run([sys.executable, "-m", "intunlearn", "--help"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and "{run,export,verify,bench,demo}" in result.stdout

