"""Triton GPU kernels (not written yet: ``backend="triton"`` raises NotImplementedError)."""
