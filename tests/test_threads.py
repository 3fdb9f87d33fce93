"""Thread settings: idle OpenMP workers sleep unless the user chose otherwise; both pools sized
together."""

from __future__ import annotations

import pytest

from intunlearn import threads


@pytest.fixture
def clean_wait_env(monkeypatch):
    for name in threads.WAIT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_configure_waiting_sets_passive(clean_wait_env):
    import os
    assert threads.configure_waiting() is True
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"


@pytest.mark.parametrize("name,value", [("OMP_WAIT_POLICY", "ACTIVE"), ("GOMP_SPINCOUNT", "10000"),
                                        ("KMP_BLOCKTIME", "0")])
def test_configure_waiting_keeps_the_users_choice(clean_wait_env, name, value):
    import os
    clean_wait_env.setenv(name, value)
    assert threads.configure_waiting() is False
    assert os.environ[name] == value
    if name != "OMP_WAIT_POLICY":
        assert "OMP_WAIT_POLICY" not in os.environ


def test_set_compute_threads_sets_both_pools():
    import numba
    import torch
    before = (torch.get_num_threads(), numba.get_num_threads())
    try:
        threads.set_compute_threads(1)
        assert torch.get_num_threads() == numba.get_num_threads() == 1
    finally:
        torch.set_num_threads(before[0])
        numba.set_num_threads(before[1])


@pytest.mark.parametrize("count", [0, -1, 1.5, True, "2"])
def test_set_compute_threads_names_a_bad_count(count):
    with pytest.raises(ValueError, match="count"):
        threads.set_compute_threads(count)


def test_import_intunlearn_sets_passive_waiting_before_torch_starts():
    """`import intunlearn` chooses the wait policy before torch is first imported (torch's
    libgomp reads the environment once, when it is loaded)."""
    import os
    import subprocess
    import sys
    code = ("import builtins, os\n"
            "policy_at_torch_import = []\n"
            "real_import = builtins.__import__\n"
            "def spy(name, *args, **kwargs):\n"
            "    if name == 'torch' and not policy_at_torch_import:\n"
            "        policy_at_torch_import.append(os.environ.get('OMP_WAIT_POLICY'))\n"
            "    return real_import(name, *args, **kwargs)\n"
            "builtins.__import__ = spy\n"
            "import intunlearn\n"
            "print(policy_at_torch_import[0])")
    env = {k: v for k, v in os.environ.items() if k not in threads.WAIT_VARIABLES}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120, check=True)
    assert done.stdout.split()[-1] == "PASSIVE"
