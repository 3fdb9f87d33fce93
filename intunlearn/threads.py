"""Compute threads: how they wait between parallel regions, and how many there are.

Two thread pools work in an intunlearn process: PyTorch's intra-op pool and Numba's. On Linux
both are OpenMP (torch ships its own libgomp, Numba's "omp" layer loads the system's), i.e.
two separate runtimes, each with a worker per core. An OpenMP worker that finishes a parallel
region does not sleep: by default libgomp spins for about 300,000 iterations (a millisecond or
so) waiting for the next region, and each runtime only counts its own threads when deciding
whether it can afford to. The engine runs many short regions, alternating torch and Numba, so:

* in one process, torch's workers spin on the cores that Numba's kernels need next (and vice
  versa): twice as many busy threads as cores;
* with a second process on the machine, a region's last worker waits behind other processes'
  spinning threads for a scheduler time slice (milliseconds) where the work takes
  microseconds. Two `intunlearn bench e2e` on a 2-core machine each ran 16-50x slower than
  alone instead of about 2x.

`configure_waiting()` makes idle OpenMP workers sleep (OMP_WAIT_POLICY=PASSIVE) unless the user
chose a policy, and must run before a runtime starts: libgomp reads its environment once, when
it is loaded (torch's at `import torch`, Numba's at its first parallel kernel). `import
intunlearn` calls it first thing; a process that imported torch before intunlearn keeps torch's
spinning workers, and should set OMP_WAIT_POLICY=PASSIVE in its environment instead.

`set_compute_threads(n)` sets both pools to n threads (an executor that gives a task n cores).
"""

from __future__ import annotations

import os

# The variables that choose how OpenMP workers wait (libgomp and LLVM/Intel OpenMP): a user's
# choice of any of them is respected.
WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


def configure_waiting() -> bool:
    """Idle OpenMP workers sleep instead of spinning (OMP_WAIT_POLICY=PASSIVE) unless a wait
    variable is already set. Returns whether this call set it. Only runtimes loaded after the
    call follow it."""
    if any(name in os.environ for name in WAIT_VARIABLES):
        return False
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True


def set_compute_threads(count: int) -> None:
    """torch's and Numba's pools both to `count` threads (a positive int)."""
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ValueError(f"count must be a positive int, got {count!r}")
    import numba
    import torch
    torch.set_num_threads(count)
    numba.set_num_threads(min(count, numba.config.NUMBA_NUM_THREADS))

