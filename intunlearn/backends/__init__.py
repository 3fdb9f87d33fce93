"""Backend registry: which implementation computes an op.

A backend is a module with one function per integer op (qlinear, qconv2d, qadd, qavg_pool2d).
Its functions receive tensors and parameters that `intunlearn.ops` has already validated and
put in canonical form, so a backend only computes. Adding one means adding a module and an
entry in BACKENDS; nothing else changes. Modules are imported on first use, so a backend whose
dependencies are missing (numba, triton) costs nothing until asked for, and then says why.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

import torch


@dataclass(frozen=True)
class Backend:
    """An implementation of the integer ops: `module` (under intunlearn.backends) computes on
    tensors whose device type is in `devices`."""

    name: str
    devices: frozenset[str]
    module: str

    def load(self) -> ModuleType:
        """The backend's module; NotImplementedError saying why if it cannot run here."""
        try:
            return importlib.import_module(f"intunlearn.backends.{self.module}")
        except ModuleNotFoundError as error:
            if error.name and error.name.startswith("intunlearn.backends"):
                reason = "its kernels are not written yet"
            else:
                reason = f"it needs the missing package {error.name!r}"
            raise NotImplementedError(f"backend={self.name!r} is not available: {reason}") from None

    def available(self) -> bool:
        try:
            self.load()
        except NotImplementedError:
            return False
        return True


BACKENDS: dict[str, Backend] = {
    "reference": Backend("reference", frozenset({"cpu", "cuda"}), "reference"),
    "numba": Backend("numba", frozenset({"cpu"}), "numba_cpu"),
    "triton": Backend("triton", frozenset({"cuda", "cpu"}), "triton_gpu"),
}

# What "auto" tries, in order, for each device type. (Triton also runs CPU tensors, but only
# under TRITON_INTERPRET=1 for testing, so "auto" never picks it for them.)
AUTO_PREFERENCE = {"cuda": ("triton", "reference"), "cpu": ("numba", "reference")}


def resolve(name: str, device: torch.device) -> ModuleType:
    """The ops module of backend `name` ("auto": the first available one) for `device`."""
    if name == "auto":
        for candidate in AUTO_PREFERENCE.get(device.type, ()):
            if BACKENDS[candidate].available():
                return BACKENDS[candidate].load()
        raise ValueError(f"backend='auto': no backend computes on device type {device.type!r}")
    if name not in BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {sorted(BACKENDS)}, got {name!r}")
    backend = BACKENDS[name]
    module = backend.load()
    if device.type not in backend.devices:
        raise ValueError(
            f"backend={name!r} computes on {sorted(backend.devices)} tensors, got tensors on {device}")
    return module
