"""The Ray executor: the numbers of one process, streamed progress, failures, resuming, Ctrl-C.

Every test that starts Ray is slow (a local cluster takes about 5 s to start)
and is skipped when Ray is not installed (pip install 'normlab[ray]').
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import pytest
import torch

from normlab.experiment import ResultsStore, plan_runs, run_sweep
from normlab.experiment.executors.contract import (
    RunSink,
    SweepListener,
    SweepOutcome,
    available_cores,
    pending_runs,
)
from normlab.experiment.executors.ray_tasks import (
    INSTALL_MESSAGE,
    RayExecutor,
    RayNotInstalledError,
    require_ray,
)

SKIP_REASON = "Ray is not installed: pip install 'normlab[ray]'"


def _runs(**overrides):
    options = {
        "norms": ["none", "bn"],
        "batch_sizes": [64],
        "seeds": 2,
        "epochs": 1,
        "model_options": {"hidden": [16]},
    }
    return plan_runs(**{**options, **overrides})


class _Events(SweepListener):
    """Every event, in order, as (kind, run_id[, error])."""

    def __init__(self):
        self.events = []

    def run_started(self, config):
        self.events.append(("started", config.run_id))

    def epoch_done(self, config, metrics):
        self.events.append(("epoch", config.run_id))

    def run_done(self, config, record):
        self.events.append(("done", config.run_id))

    def run_failed(self, config, error):
        self.events.append(("failed", config.run_id, error))

    def kinds(self, run_id):
        return [event[0] for event in self.events if event[1] == run_id]


def _on_ray(runs, directory, *, threads=1, listener=None, models_dir=None):
    outcome = SweepOutcome()
    store = ResultsStore(directory)
    executor = RayExecutor(threads=threads, models_dir=models_dir)
    executor.run(runs, RunSink(store, listener or SweepListener(), outcome))
    return outcome, store


@pytest.fixture(scope="module")
def ray_cluster():
    """A 2-CPU local Ray cluster for the module (left alone if one is already running)."""
    ray = pytest.importorskip("ray", reason=SKIP_REASON)
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    if started:
        ray.shutdown()


# --- without Ray --------------------------------------------------------------


def test_without_ray_the_error_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(RayNotInstalledError) as info:
        require_ray()
    assert str(info.value) == INSTALL_MESSAGE
    assert "pip install 'normlab[ray]'" in INSTALL_MESSAGE
    assert isinstance(info.value, ImportError) and isinstance(info.value, ValueError)
    with pytest.raises(ValueError, match=r"`executor` ray needs Ray"):
        _on_ray(_runs(seeds=1), tmp_path)
    assert not (tmp_path / "results.jsonl").exists()


def test_runs_bigger_than_this_machine_are_refused_before_ray_starts(monkeypatch, tmp_path):
    calls = []
    fake_ray = types.SimpleNamespace(
        is_initialized=lambda: False,
        init=lambda **options: calls.append("init"),
        shutdown=lambda: calls.append("shutdown"),
    )
    monkeypatch.setitem(sys.modules, "ray", fake_ray)
    cores = available_cores()
    with pytest.raises(ValueError, match=rf"needs {cores + 1} CPUs.*has {cores} cores"):
        _on_ray(_runs(seeds=1), tmp_path, threads=cores + 1)
    assert "init" not in calls


# --- on a local cluster ----------------------------------------------------------


@pytest.mark.slow
def test_ray_gives_the_numbers_and_models_of_one_process(ray_cluster, tmp_path):
    runs = _runs()
    here = run_sweep(
        runs, ResultsStore(tmp_path / "here"), jobs=1, threads=1, models_dir=tmp_path / "here/m"
    )
    outcome, store = _on_ray(runs, tmp_path / "ray", models_dir=tmp_path / "ray/m")
    assert not outcome.failed and len(outcome.records) == len(runs)
    assert sorted(r["run_id"] for r in store.records()) == sorted(run.run_id for run in runs)
    by_id = {record["run_id"]: record for record in store.records()}
    for record in here.records:  # the same thread count gives bit-identical numbers
        other = by_id[record["run_id"]]
        assert other["final"] == record["final"] and other["threads"] == 1
        assert [e["val_loss"] for e in other["history"]] == [
            e["val_loss"] for e in record["history"]
        ]
        assert other["model_file"] == record["model_file"] == f"m/{record['run_id']}.pt"
        theirs = torch.load(tmp_path / "ray" / other["model_file"], weights_only=True)
        ours = torch.load(tmp_path / "here" / record["model_file"], weights_only=True)
        assert theirs.keys() == ours.keys()
        assert all(torch.equal(theirs[name], ours[name]) for name in ours)
    assert not list((tmp_path / "ray/m").glob("*.partial"))
    assert ray_cluster.is_initialized()  # a cluster it did not start is left running


@pytest.mark.slow
def test_the_listener_hears_start_epochs_and_end_of_every_run_in_order(ray_cluster, tmp_path):
    runs = _runs(epochs=2)
    listener = _Events()
    outcome, _ = _on_ray(runs, tmp_path, listener=listener)
    assert not outcome.failed
    for run in runs:
        assert listener.kinds(run.run_id) == ["started", "epoch", "epoch", "done"]


@pytest.mark.slow
def test_a_failing_run_is_reported_on_one_line_and_the_others_finish(ray_cluster, tmp_path):
    runs = _runs(norms=["in", "none"], seeds=1)  # instance norm cannot take (N, C) features
    listener = _Events()
    outcome, store = _on_ray(runs, tmp_path, listener=listener)
    [(config, error)] = outcome.failed
    assert config.norm == "in"
    assert error.startswith("ValueError: InstanceNorm") and "\n" not in error
    assert [r["config"]["norm"] for r in store.records()] == ["none"]
    assert listener.kinds(runs[0].run_id) == ["started", "failed"]
    assert listener.kinds(runs[1].run_id) == ["started", "epoch", "done"]


@pytest.mark.slow
def test_a_resumed_sweep_trains_only_the_runs_not_in_the_store(ray_cluster, tmp_path):
    runs = _runs()
    _, store = _on_ray(runs, tmp_path)
    assert pending_runs(runs, store) == []
    lines = store.path.read_text().splitlines(keepends=True)
    store.path.write_text("".join(lines[:2]))  # as if the last two runs had not finished
    todo = pending_runs(runs, store)
    assert len(todo) == 2
    listener = _Events()
    outcome, _ = _on_ray(todo, tmp_path, listener=listener)
    assert sorted(r["run_id"] for r in outcome.records) == sorted(run.run_id for run in todo)
    assert {event[1] for event in listener.events} == {run.run_id for run in todo}
    assert store.path.read_text().splitlines(keepends=True)[:2] == lines[:2]
    assert sorted(r["run_id"] for r in store.records()) == sorted(run.run_id for run in runs)


def _parent(pid: int) -> int:
    return int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])


def _training_workers() -> list[int]:
    """Ray worker processes of this test process's cluster that are training a run now
    (Ray titles a worker after the task it runs)."""
    me, found = os.getpid(), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().split(b"\0")[0]
            ancestors, pid = [], int(entry.name)
            while pid > 1:
                pid = _parent(pid)
                ancestors.append(pid)
        except (OSError, ValueError, IndexError):  # the process ended meanwhile
            continue
        if title == b"ray::_train_on_worker" and me in ancestors:
            found.append(int(entry.name))
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds workers through /proc")
def test_a_worker_that_dies_fails_its_run_and_the_sweep_goes_on(ray_cluster, tmp_path):
    long_run = _runs(batch_sizes=[1], epochs=30, seeds=1, norms=["none"])[0]  # about 10 s
    runs = [long_run, *_runs(seeds=1, norms=["ln"])]
    killed = []

    class Killer(_Events):
        def run_started(self, config):
            super().run_started(config)
            if config == long_run:  # 2 threads: the only run on the 2-CPU cluster
                for pid in _training_workers():
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)

    listener = Killer()
    outcome, store = _on_ray(runs, tmp_path, threads=2, listener=listener)
    assert len(killed) == 1
    [(config, error)] = outcome.failed
    assert config == long_run and "Ray worker" in error and "died" in error
    assert "run the sweep again" in error and "\n" not in error
    assert [r["run_id"] for r in store.records()] == [runs[1].run_id]


@pytest.mark.slow
def test_a_run_that_needs_more_cpus_than_any_node_is_an_error(ray_cluster, tmp_path):
    with pytest.raises(ValueError, match=r"needs 3 CPUs.*largest node.*has 2; lower --threads"):
        _on_ray(_runs(seeds=1), tmp_path, threads=3)


_INTERRUPTED_SWEEP = textwrap.dedent(
    """
    import sys
    import ray
    from normlab.experiment import ResultsStore, plan_runs
    from normlab.experiment.executors.contract import RunSink, SweepListener, SweepOutcome
    from normlab.experiment.executors.ray_tasks import RayExecutor

    class Say(SweepListener):
        def run_started(self, config):
            print("started", config.batch_size, flush=True)

        def run_done(self, config, record):
            print("done", config.run_id, flush=True)

    short = plan_runs(norms=["none"], batch_sizes=[64], seeds=1, epochs=1)
    long = plan_runs(norms=["bn"], batch_sizes=[1], seeds=1, epochs=50)  # about 20 s
    sink = RunSink(ResultsStore(sys.argv[1]), Say(), SweepOutcome())
    try:
        RayExecutor(threads=2).run(short + long, sink)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    print("ray still initialized:", ray.is_initialized(), flush=True)
    """
)


@pytest.mark.slow
def test_ctrl_c_cancels_the_runs_in_flight_and_stops_the_cluster_it_started(tmp_path):
    pytest.importorskip("ray", reason=SKIP_REASON)
    child = subprocess.Popen(
        [sys.executable, "-c", _INTERRUPTED_SWEEP, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = []
    try:
        for line in child.stdout:
            lines.append(line.strip())
            if line.strip() == "started 1":  # the long run is training
                interrupted_at = time.perf_counter()
                child.send_signal(signal.SIGINT)
                break
        rest, errors = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    assert "started 1" in lines, errors
    assert time.perf_counter() - interrupted_at < 15  # cancelled, not trained to its end
    assert child.returncode == 0, errors
    lines += rest.splitlines()
    assert lines[-2:] == ["interrupted", "ray still initialized: False"], errors
    done = [line.split()[1] for line in lines if line.startswith("done ")]
    assert [r["run_id"] for r in ResultsStore(tmp_path).records()] == done
