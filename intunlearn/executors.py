"""Executors: where independent pieces of work run (a study's units, U-LiRA's shadow models).

An executor maps a module-level function over a list of tasks and yields (index, result) as
each task finishes, in any order. Functions return plain data (dicts, lists, numpy arrays,
bytes); the caller, the driver, alone writes files, so a task never touches the output folder.

    local  one task after another in this process (the default; needs nothing more)
    ray    Ray tasks (https://docs.ray.io): a local Ray started here, or a cluster started with
           `ray start --head` joined by its address; each task asks Ray for `cpus_per_task`
           CPUs (and a GPU when the work runs on cuda) and runs with that many compute threads

Compute threads are part of what a task computes: float32 sums split over threads are added in
another order (torch's float GEMM splits its reductions by thread count), so a float model
trained with 2 threads differs in its last bits from one trained with 1. Every executor
therefore has a `threads` count that it gives each task, and the engine keys its caches and
progress files on it; two executors with the same `threads` give identical results. Integer
arithmetic itself does not depend on it (integer sums are exact in any order).

Ray is an optional dependency: `pip install "intunlearn[distributed]"`.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Callable, Iterator, Sequence

from tqdm import tqdm

from intunlearn import threads as compute_threads

EXECUTORS = ("local", "ray")
RAY_HINT = 'the ray executor needs Ray: pip install "intunlearn[distributed]" (or pip install ray)'

TaskFunction = Callable[[Any, Any], Any]  # function(shared, task) -> plain data

# The environment of the workers of a local Ray that RayExecutor starts itself (a cluster
# joined by its address keeps its own settings). Ray starts its workers at niceness 15, below
# every other process of the user: on a machine with anything else running, the study's tasks
# get the cores only when nothing else wants them, while the local executor computes at the
# user's own priority. RAY_worker_niceness=0 (Ray's own setting, which its job submission uses
# the same way) runs them at the niceness of the command that started the run.
LOCAL_WORKER_ENV = {"RAY_worker_niceness": "0"}


def _positive_int(name: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _progress(total: int, desc: str):
    """Units done / total with rate and ETA (tqdm), on stderr."""
    return tqdm(total=total, desc=desc, unit="task", smoothing=0.0)


class LocalExecutor:
    """Run tasks one after another in this process with `threads` compute threads (default:
    this machine's cores). The thread counts in effect before are restored afterwards."""

    name = "local"
    serial = True  # tasks run one at a time, in order

    def __init__(self, threads: int | None = None):
        self.threads = _positive_int("threads", threads) if threads is not None else default_threads()

    def map_unordered(self, function: TaskFunction, tasks: Sequence, *, shared=None,
                      desc: str = "tasks") -> Iterator[tuple[int, Any]]:
        import numba
        import torch

        before = torch.get_num_threads(), numba.get_num_threads()
        compute_threads.set_compute_threads(self.threads)
        try:
            with _progress(len(tasks), desc) as bar:
                for index, task in enumerate(tasks):
                    yield index, function(shared, task)
                    bar.update()
        finally:
            torch.set_num_threads(before[0])
            numba.set_num_threads(before[1])

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def default_threads() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _check_cluster_address(address: str, timeout: float = 5.0) -> None:
    """`address` is "auto", HOST:PORT or ray://HOST:PORT, and something answers at HOST:PORT.
    Without this check ray.init retries an unreachable address for ~20 s of warnings and then
    raises a ConnectionError with a traceback."""
    if address == "auto":
        return
    host, separator, port = address.removeprefix("ray://").rpartition(":")
    if not (separator and host and port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"the Ray address (--ray-address) must be 'auto', HOST:PORT or "
                         f"ray://HOST:PORT, got {address!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as error:
        raise ValueError(f"no Ray cluster answers at --ray-address {address} ({error}); start one "
                         f"with `ray start --head` and pass the address it prints") from None


def _run_task(function: TaskFunction, shared, task, threads: int):
    """What a Ray worker runs: set the compute threads to the CPUs Ray gave the task, then
    the function."""
    compute_threads.set_compute_threads(threads)
    return function(shared, task)


class RayExecutor:
    """Run tasks as Ray tasks, `cpus_per_task` CPUs (and threads) each, `gpus_per_task` GPUs.

    address: None starts a local Ray on this machine (with `num_cpus` CPUs, default all; its
    workers at this process's niceness, LOCAL_WORKER_ENV) and stops it on close(); "auto" or
    "HOST:PORT" joins a running cluster (`ray start --head` prints the address). A task whose
    worker process dies (killed, out of memory, a lost node) is run again, up to `max_retries`
    times; an exception raised by the function itself is not retried (it would raise again) and
    reaches the caller."""

    name = "ray"
    serial = False

    def __init__(self, address: str | None = None, cpus_per_task: int = 1, gpus_per_task: float = 0,
                 num_cpus: int | None = None, max_retries: int = 3):
        self.threads = _positive_int("cpus_per_task", cpus_per_task)
        if not (isinstance(gpus_per_task, (int, float)) and gpus_per_task >= 0):
            raise ValueError(f"gpus_per_task must be a number >= 0, got {gpus_per_task!r}")
        if num_cpus is not None:
            _positive_int("num_cpus", num_cpus)
        if not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be an int >= 0, got {max_retries!r}")
        try:
            import ray
        except ImportError:
            raise ImportError(RAY_HINT) from None
        self.gpus_per_task, self.max_retries = gpus_per_task, max_retries
        self._started = False
        if not ray.is_initialized():
            # Workers must sleep between parallel regions like this process (intunlearn.threads).
            env = {name: os.environ[name] for name in compute_threads.WAIT_VARIABLES if name in os.environ}
            if address is None:
                env.update(LOCAL_WORKER_ENV)
            else:
                _check_cluster_address(address)
            try:
                ray.init(address=address, num_cpus=num_cpus if address is None else None,
                         include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                         runtime_env={"env_vars": env} if env else None)
            except ConnectionError as error:
                raise ValueError(f"could not join the Ray cluster at --ray-address {address}: "
                                 f"{error}") from None
            self._started = True
        available = ray.cluster_resources().get("CPU", 0)
        if available < self.threads:
            self.close()
            raise ValueError(f"cpus_per_task={self.threads} but the Ray cluster has {available:g} CPUs")

    def map_unordered(self, function: TaskFunction, tasks: Sequence, *, shared=None,
                      desc: str = "tasks") -> Iterator[tuple[int, Any]]:
        import ray

        remote = ray.remote(_run_task).options(num_cpus=self.threads, num_gpus=self.gpus_per_task,
                                               max_retries=self.max_retries, retry_exceptions=False)
        shared_ref = ray.put(shared)  # sent to the object store once, not once per task
        pending = {remote.remote(function, shared_ref, task, self.threads): index
                   for index, task in enumerate(tasks)}
        try:
            with _progress(len(tasks), desc) as bar:
                while pending:
                    done, _ = ray.wait(list(pending), num_returns=1)
                    index = pending.pop(done[0])
                    yield index, _result(ray, done[0])
                    bar.update()
        finally:
            for ref in pending:  # the caller stopped early (an error, Ctrl-C): drop the rest
                ray.cancel(ref, force=True)

    def close(self) -> None:
        import ray

        if self._started and ray.is_initialized():
            ray.shutdown()
        self._started = False

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def _result(ray, ref):
    """ray.get(ref), with an exception raised by the task's function re-raised as itself: Ray
    wraps it in a RayTaskError whose message is the worker's whole traceback, where the local
    executor's caller gets the exception (the CLI prints its one line)."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as error:
        if isinstance(error.cause, Exception):
            raise error.cause from error
        raise


def _check_local_threads(cpus_per_task) -> None:
    """The local executor runs one task at a time on this machine: more threads than the cores
    this process may run on (os.sched_getaffinity) would only oversubscribe them, as Ray
    refuses a task larger than its cluster."""
    cores = default_threads()
    if isinstance(cpus_per_task, int) and not isinstance(cpus_per_task, bool) and cpus_per_task > cores:
        raise ValueError(f"--cpus-per-task {cpus_per_task} is more than the {cores} core(s) this process may run "
                         f"on (the local executor runs each task here): give at most {cores}, or use --executor "
                         f"ray with a cluster that has the CPUs")


def make_executor(name: str, *, cpus_per_task: int | None = None, address: str | None = None,
                  device: str = "cpu"):
    """The executor called `name` ("local" or "ray"). cpus_per_task: threads per task (local
    default: this machine's cores; ray default: 1). A GPU per task when device is cuda."""
    if name not in EXECUTORS:
        raise ValueError(f"executor must be one of {EXECUTORS}, got {name!r}")
    if name == "local":
        if address is not None:
            raise ValueError("--ray-address needs --executor ray")
        _check_local_threads(cpus_per_task)
        return LocalExecutor(threads=cpus_per_task)
    return RayExecutor(address=address, cpus_per_task=1 if cpus_per_task is None else cpus_per_task,
                       gpus_per_task=1 if str(device).startswith("cuda") else 0)
