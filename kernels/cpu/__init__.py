"""Numba CPU kernels (not written yet: ``backend="numba"`` raises NotImplementedError)."""
