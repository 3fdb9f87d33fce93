"""Executors: the ray executor (a local Ray, a 2-node cluster) gives the local executor's results
bit for bit, a task whose worker process is killed is run again, and the CLI says what is
missing without Ray.

One Ray session per test (starting one costs ~10 s on two cores), so the study is tiny: the
blobs data set, an MLP, one epoch of unlearning."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from intunlearn.executors import LocalExecutor, make_executor
from intunlearn.unlearning.engine import MethodTask, data_key, run_method
from intunlearn.unlearning.study import StudyConfig, run_study
from tests.test_unlearning import tiny_config, tiny_dataset

ray = pytest.importorskip("ray")
# Ray's workers cannot import this test module (pytest puts tests/ on the driver's path only):
# its functions travel by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def small_study() -> StudyConfig:
    return StudyConfig(base=tiny_config(methods=("retrain", "ft", "qmul"), pretrain_epochs=3),
                       seeds=(0, 1), pipelines=("float", "integer"))


def fingerprint(results) -> list[tuple]:
    """Every figure of every row and the SHA-256 of every model computed (bit for bit)."""
    rows = results["rows"]
    return sorted(tuple((key, row[key]) for key in sorted(row) if key != "seconds") for row in rows)


def model_digests(out: Path) -> dict:
    import json
    return {unit.name: {name: entry["model_sha256"] for name, entry in
                        json.loads((unit / "progress.json").read_text())["methods"].items()}
            for unit in sorted((out / "units").iterdir())}


@pytest.fixture(scope="module")
def local_study(tmp_path_factory):
    """The study on the local executor with one thread per task, as Ray's tasks get."""
    root = tmp_path_factory.mktemp("local")
    results = run_study(small_study(), root / "out", root / "cache", data=tiny_dataset(),
                        executor=LocalExecutor(threads=1))
    return results, root / "out"


def test_a_local_ray_gives_the_local_executors_results_bit_for_bit(local_study, tmp_path):
    from intunlearn.executors import RayExecutor

    expected, expected_out = local_study
    with RayExecutor(num_cpus=2, cpus_per_task=1) as executor:
        results = run_study(small_study(), tmp_path / "out", tmp_path / "cache", data=tiny_dataset(),
                            executor=executor)
    assert not ray.is_initialized()  # the executor stops the Ray it started
    assert fingerprint(results) == fingerprint(expected)
    assert model_digests(tmp_path / "out") == model_digests(expected_out)


def test_a_two_node_cluster_gives_the_same_results(local_study, tmp_path):
    from ray.cluster_utils import Cluster

    from intunlearn.executors import RayExecutor

    expected, expected_out = local_study
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        with RayExecutor(address=cluster.address, cpus_per_task=1) as executor:
            results = run_study(small_study(), tmp_path / "out", tmp_path / "cache", data=tiny_dataset(),
                                executor=executor)
            nodes = [node for node in ray.nodes() if node["Alive"]]
        assert len(nodes) == 2
        assert not ray.is_initialized()
    finally:
        cluster.shutdown()
    assert fingerprint(results) == fingerprint(expected)
    assert model_digests(tmp_path / "out") == model_digests(expected_out)


def killed_once_then_run_method(shared, task):
    """The first attempt of each task kills its own worker process (as the OOM killer or a lost
    node would); the retry runs the method."""
    marker = Path(shared["markers"]) / f"{task.config.seed}-{task.method}"
    if not marker.exists():
        marker.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return run_method(shared["datasets"], task)


def test_a_task_whose_worker_is_killed_runs_again_with_the_same_result(tmp_path):
    from intunlearn.executors import RayExecutor

    config = tiny_config(methods=("ft",), pretrain_epochs=2, threads=1)
    tasks = [MethodTask(config, name, str(tmp_path / "cache"), False) for name in ("original", "ft")]
    datasets = {data_key(config): tiny_dataset()}
    expected = dict(LocalExecutor(threads=1).map_unordered(run_method, tasks, shared=datasets))
    (tmp_path / "markers").mkdir()
    shared = {"datasets": datasets, "markers": str(tmp_path / "markers")}
    with RayExecutor(num_cpus=2, cpus_per_task=1, max_retries=2) as executor:
        results = dict(executor.map_unordered(killed_once_then_run_method, tasks, shared=shared))
    assert sorted(p.name for p in (tmp_path / "markers").iterdir()) == ["0-ft", "0-original"]  # both were killed
    for index in expected:
        assert results[index]["entry"]["model_sha256"] == expected[index]["entry"]["model_sha256"]
        assert results[index]["entry"]["metrics"] == expected[index]["entry"]["metrics"]


def niceness(shared, task):
    return os.nice(0)  # adds 0: reads this process's niceness


def refuse_odd(shared, task):
    if task % 2:
        raise ValueError(f"task {task} is odd")
    return task


def test_a_local_rays_tasks_run_at_the_callers_priority_and_raise_their_own_errors():
    """Ray starts its workers at niceness 15 unless told otherwise: next to any other job they
    would get the cores last, while the local executor computes at the caller's niceness. An
    error of the task's function reaches the caller as itself (the CLI prints its one line),
    not as Ray's wrapper whose message is the worker's traceback."""
    from intunlearn.executors import RayExecutor

    with RayExecutor(num_cpus=2, cpus_per_task=1) as executor:
        seen = dict(executor.map_unordered(niceness, [0, 1]))
        with pytest.raises(ValueError) as raised:
            dict(executor.map_unordered(refuse_odd, [1]))
    assert seen == {0: os.nice(0), 1: os.nice(0)}
    assert type(raised.value) is ValueError and str(raised.value) == "task 1 is odd"


def _closed_port() -> int:
    import socket
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_unreachable_ray_address_is_refused_at_once():
    import time
    start = time.monotonic()
    address = f"127.0.0.1:{_closed_port()}"
    with pytest.raises(ValueError, match=f"no Ray cluster answers at --ray-address {address}"):
        make_executor("ray", address=address)
    assert time.monotonic() - start < 10  # ray.init alone retries for ~20 s
    assert not ray.is_initialized()


@pytest.mark.parametrize("address", ["localhost", "host:port", ":6379", "ray://", "10.0.0.1:0",
                                     "10.0.0.1:70000"])
def test_a_malformed_ray_address_is_named(address):
    with pytest.raises(ValueError, match="must be 'auto', HOST:PORT or ray://HOST:PORT"):
        make_executor("ray", address=address)


def test_without_ray_the_ray_executor_says_how_to_install_it(monkeypatch, capsys, tmp_path):
    from intunlearn import cli

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    with pytest.raises(ImportError, match=r'pip install "intunlearn\[distributed\]"'):
        make_executor("ray")
    code = cli.main(["run", "--dataset", "digits", "--seeds", "1", "--pipelines", "integer", "--executor", "ray",
                     "--out", str(tmp_path / "out")])
    assert code == 2
    assert 'pip install "intunlearn[distributed]"' in capsys.readouterr().err
    assert not (tmp_path / "out" / "units").exists()  # refused before any work


@pytest.mark.parametrize("kwargs, message", [
    (dict(name="dask"), "executor must be one of"),
    (dict(name="local", address="auto"), "--ray-address needs --executor ray"),
    (dict(name="local", cpus_per_task=0), "threads must be a positive int"),
])
def test_bad_executor_options_are_named(kwargs, message):
    name = kwargs.pop("name")
    with pytest.raises(ValueError, match=message):
        make_executor(name, **kwargs)
