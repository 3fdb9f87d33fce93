"""Fast kernels, installed as ``intunlearn.kernels``: ``cpu`` (Numba) and ``gpu`` (Triton).

They depend on numpy, numba and triton only, take canonical, validated arguments from
``intunlearn.ops`` and must be bit-exact with ``intunlearn.reference``.
"""
