"""Test-wide settings.

Triton kernels run compiled on a GPU; without one they run on CPU tensors through Triton's
interpreter, which must be switched on before triton is first imported.
"""

import os

import torch
from hypothesis import HealthCheck, settings

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Kernels compile on first use (Numba, Triton), so no per-example deadline. CI derandomizes so a
# failure reproduces; locally `--hypothesis-profile=dev` explores new examples each run.
settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("dev", max_examples=200, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile("ci")
