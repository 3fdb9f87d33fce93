"""Backend registry: which implementation computes an op.

A backend is a module with one function per integer op (qlinear, qconv2d, qadd, qavg_pool2d).
Its functions receive tensors and parameters that `intunlearn.ops` has already validated and
put in canonical form, so a backend only computes. Adding one means adding a module and an
entry in BACKENDS; nothing else changes. Modules are imported on first use, so a backend whose
dependencies are missing (numba, triton) costs nothing until asked for, and then says why.

A backend may also have host quantizers: one-pass kernels for the quantization steps around its
ops (intunlearn.qparams hands them its tensors; without them qparams' torch code runs). Only
this package imports intunlearn.kernels.
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
    host_quantizers: str | None = None  # module with qparams' one-pass kernels, if any

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
    "numba": Backend("numba", frozenset({"cpu"}), "numba_cpu", host_quantizers="numba_quantize"),
    "triton": Backend("triton", frozenset({"cuda", "cpu"}), "triton_gpu"),
}

# What "auto" tries, in order, for each device type. (Triton also runs CPU tensors, but only
# under TRITON_INTERPRET=1 for testing, so "auto" never picks it for them.)
AUTO_PREFERENCE = {"cuda": ("triton", "reference"), "cpu": ("numba", "reference")}


def choose(name: str, device: torch.device) -> Backend:
    """Backend `name` ("auto": the first available one) for tensors on `device`."""
    if name == "auto":
        for candidate in AUTO_PREFERENCE.get(device.type, ()):
            if BACKENDS[candidate].available():
                return BACKENDS[candidate]
        raise ValueError(f"backend='auto': no backend computes on device type {device.type!r}")
    if name not in BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {sorted(BACKENDS)}, got {name!r}")
    backend = BACKENDS[name]
    backend.load()
    if device.type not in backend.devices:
        raise ValueError(
            f"backend={name!r} computes on {sorted(backend.devices)} tensors, got tensors on {device}")
    return backend


def resolve(name: str, device: torch.device) -> ModuleType:
    """The ops module of backend `name` ("auto": the first available one) for `device`."""
    return choose(name, device).load()


def host_quantizers(name: str, device: torch.device) -> ModuleType | None:
    """Backend `name`'s one-pass quantization kernels for tensors on `device`, or None where it
    has none (qparams then runs its torch formulation, which they equal bit for bit). "auto" on
    a device no backend computes on (quantization in fake-quant or float mode there) has none."""
    if name == "auto" and device.type not in AUTO_PREFERENCE:
        return None
    backend = choose(name, device)
    if backend.host_quantizers is None:
        return None
    return importlib.import_module(f"intunlearn.backends.{backend.host_quantizers}")
