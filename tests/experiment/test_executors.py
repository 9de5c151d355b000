"""The executors' one contract: the sweep runs with any executor, a finished run is on disk
before anyone hears of it, options an executor would ignore are refused by its constructor,
and under every executor a failing run and a dead worker (or rank) are failed runs while
the sweep goes on."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import torch

from normlab.data import DataError, Dataset
from normlab.experiment import ResultsStore, RunConfig, plan_runs, run_sweep
from normlab.experiment.executors.choose import SMALL_SWEEP_STEPS, executor_for, in_process_if_small
from normlab.experiment.executors.contract import Executor, RunSink, SweepListener
from normlab.experiment.executors.in_process import InProcessExecutor
from normlab.experiment.executors.pool import ProcessPoolExecutor
from process_tree import spawned_children

LINUX_PROC = pytest.mark.skipif(
    not Path("/proc/self/task").exists(), reason="finds worker processes through Linux /proc"
)


def _runs(**overrides) -> list[RunConfig]:
    options = {
        "norms": ["none", "bn"],
        "batch_sizes": [128],
        "seeds": 2,
        "epochs": 1,
        "model_options": {"hidden": [16]},
    }
    return plan_runs(**{**options, **overrides})


class _FakeExecutor(Executor):
    """Trains nothing: reports every run as the contract says, failing those of norm ``in``
    and raising KeyboardInterrupt (Ctrl-C) before run number ``interrupt_at``."""

    def __init__(self, interrupt_at: int | None = None) -> None:
        self.interrupt_at = interrupt_at
        self.given: list[list[RunConfig]] = []

    def run(self, todo: list[RunConfig], sink: RunSink, data=None) -> None:
        self.given.append(todo)
        for number, config in enumerate(todo):
            if number == self.interrupt_at:
                raise KeyboardInterrupt
            sink.started(config)
            if config.norm == "in":
                sink.failed(config, "ValueError: cannot train")
                continue
            sink.finished(config, {"run_id": config.run_id, "config": config.to_dict()})


class _StoreWatcher(SweepListener):
    """Every event in order; checks that a finished run's record is on disk when it is told."""

    def __init__(self, store: ResultsStore) -> None:
        self.store = store
        self.events: list[tuple[str, str]] = []

    def run_started(self, config):
        self.events.append(("started", config.run_id))

    def epoch_done(self, config, metrics):
        self.events.append(("epoch", config.run_id))

    def run_done(self, config, record):
        assert config.run_id in self.store.finished_ids()
        self.events.append(("done", config.run_id))

    def run_failed(self, config, error):
        self.events.append(("failed", config.run_id))


def test_the_sweep_runs_with_any_executor_and_writes_each_record_before_telling(tmp_path):
    runs = _runs(norms=["none", "in", "ln"], seeds=1)
    store = ResultsStore(tmp_path)
    listener = _StoreWatcher(store)
    fake = _FakeExecutor()
    outcome = run_sweep(runs, store, executor=fake, listener=listener)
    assert fake.given == [runs]
    assert [config.norm for config, _ in outcome.failed] == ["in"]
    assert [record["run_id"] for record in store.records()] == [runs[0].run_id, runs[2].run_id]
    assert outcome.records == store.records() and outcome.skipped == 0
    kinds = [kind for kind, _ in listener.events]
    assert kinds == ["started", "done", "started", "failed", "started", "done"]
    again = run_sweep(runs, store, executor=fake)
    assert fake.given[-1] == [runs[1]]  # only the failed run is pending
    assert again.skipped == 2


def test_ctrl_c_inside_an_executor_is_an_interrupted_outcome_keeping_what_finished(tmp_path):
    runs = _runs()
    store = ResultsStore(tmp_path)
    outcome = run_sweep(runs, store, executor=_FakeExecutor(interrupt_at=1))
    assert outcome.interrupted
    assert [record["run_id"] for record in store.records()] == [runs[0].run_id]


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: executor_for("processes", address="auto"), "`address` names a Ray cluster"),
        (lambda: executor_for("processes", jobs=4, address="auto"), "add `executor` ray"),
        (lambda: executor_for("ray", jobs=2), "with `executor` ray the cluster's CPUs"),
        (lambda: executor_for("torchrun", jobs=2), "under torchrun"),
        (lambda: executor_for("torchrun", address="auto"), "`address` names a Ray cluster"),
        (lambda: executor_for("threads"), "unknown executor 'threads'"),
        (lambda: ProcessPoolExecutor(jobs=0), "jobs must be a whole number of at least 1"),
        (lambda: InProcessExecutor(threads=0), "threads must be a whole number of at least 1"),
        (lambda: executor_for("processes", jobs=2, threads=-1), "threads must be"),
    ],
)
def test_an_option_the_executor_would_ignore_or_cannot_take_is_refused(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_python_callers_get_the_command_lines_errors_before_any_work(tmp_path):
    store = ResultsStore(tmp_path)
    with pytest.raises(ValueError, match="`jobs` and `nproc` both"):
        run_sweep(_runs(nproc=2), store, jobs=2)
    with pytest.raises(ValueError, match="`address` names a Ray cluster"):
        run_sweep(_runs(), store, address="auto")
    with pytest.raises(ValueError, match="jobs: give these to the executor's constructor"):
        run_sweep(_runs(), store, executor=_FakeExecutor(), jobs=2)
    assert not store.path.exists()


class _Killer(_StoreWatcher):
    """Kills this process's spawned children (SIGKILL, as the out-of-memory killer would)
    when ``target`` starts (``on="started"``) or ends its first epoch (``on="epoch"``)."""

    def __init__(self, store, target, on):
        super().__init__(store)
        self.target, self.on, self.killed = target, on, []

    def _kill(self, config, kind):
        if config == self.target and kind == self.on and not self.killed:
            for pid in spawned_children():
                os.kill(pid, signal.SIGKILL)
                self.killed.append(pid)

    def run_started(self, config):
        super().run_started(config)
        self._kill(config, "started")

    def epoch_done(self, config, metrics):
        super().epoch_done(config, metrics)
        self._kill(config, "epoch")


def _assert_each_run_once(runs, outcome, store):
    finished = [record["run_id"] for record in store.records()]
    failed = [config.run_id for config, _ in outcome.failed]
    assert sorted(finished + failed) == sorted(run.run_id for run in runs)


@LINUX_PROC
def test_a_dead_pool_worker_fails_its_run_and_fresh_workers_train_the_rest(tmp_path):
    runs = _runs(norms=["none", "bn", "ln"])  # 6 runs, 2 workers
    store = ResultsStore(tmp_path)
    listener = _Killer(store, runs[0], on="started")
    outcome = run_sweep(runs, store, jobs=2, threads=1, listener=listener)
    assert listener.killed, "no worker was running"
    _assert_each_run_once(runs, outcome, store)
    assert runs[0] in [config for config, _ in outcome.failed]
    assert 1 <= len(outcome.failed) <= 2  # the runs the two killed workers held
    for _, error in outcome.failed:
        assert "worker process training it died (exit code -9" in error
        assert "run the sweep again" in error
    assert len(store.records()) >= len(runs) - 2 and not outcome.interrupted
    assert spawned_children() == []  # the pool's workers are gone


@LINUX_PROC
def test_a_dead_pool_worker_fails_the_unfinished_seeds_it_held_stacked(tmp_path):
    runs = _runs(norms=["none", "bn", "ln"])  # 3 configurations of 2 seeds, 2 workers
    store = ResultsStore(tmp_path)
    listener = _Killer(store, runs[0], on="started")
    executor = ProcessPoolExecutor(jobs=2, threads=1, stack_seeds=True)
    outcome = run_sweep(runs, store, executor=executor, listener=listener)
    assert listener.killed, "no worker was running"
    _assert_each_run_once(runs, outcome, store)
    failed = {config.run_id for config, _ in outcome.failed}
    assert runs[0].run_id in failed
    for config in runs:  # a group fails whole: its seeds die together
        seeds = {run.run_id for run in runs if run.norm == config.norm}
        assert seeds <= failed or not seeds & failed
    for _, error in outcome.failed:
        assert "worker process training it died (exit code -9" in error
    assert len(store.records()) >= 2 and not outcome.interrupted  # a fresh worker's group
    assert spawned_children() == []


@LINUX_PROC
def test_a_dead_rank_fails_its_run_and_the_in_process_sweep_goes_on(tmp_path):
    runs = [*_runs(norms=["bn"], seeds=1, epochs=3, nproc=2), *_runs(norms=["ln"], seeds=1)]
    store = ResultsStore(tmp_path)
    listener = _Killer(store, runs[0], on="epoch")  # both ranks are training the next epoch
    outcome = run_sweep(runs, store, listener=listener)
    assert listener.killed
    [(config, error)] = outcome.failed
    assert config == runs[0] and "process of the 2-process run died" in error
    assert [record["run_id"] for record in store.records()] == [runs[1].run_id]
    assert spawned_children() == []  # the other rank was ended, not left in a collective


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_failing_run_is_a_failed_run_in_process_and_in_the_pool(tmp_path, jobs):
    runs = _runs(norms=["in", "none"], seeds=1)  # instance norm cannot take (N, C) features
    store = ResultsStore(tmp_path)
    listener = _StoreWatcher(store)
    outcome = run_sweep(runs, store, jobs=jobs, listener=listener)
    [(config, error)] = outcome.failed
    assert config == runs[0] and error.startswith("ValueError: InstanceNorm") and "\n" not in error
    assert [record["run_id"] for record in store.records()] == [runs[1].run_id]
    assert ("failed", runs[0].run_id) in listener.events


def _unloadable_mnist() -> tuple[list[RunConfig], Dataset]:
    """Two runs on "mnist" from a directory with no files (loading it fails), and a small
    random MNIST-shaped Dataset standing in for what the caller loaded."""
    generator = torch.Generator().manual_seed(0)

    def split(count: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(count) % 10
        return torch.rand(count, 1, 28, 28, generator=generator), labels

    (train_x, train_y), (val_x, val_y) = split(64), split(20)
    data = Dataset("mnist", train_x, train_y, val_x, val_y, 10, "this test")
    return _runs(dataset="mnist"), data


@LINUX_PROC
def test_pool_workers_train_on_the_callers_dataset_in_shared_memory_without_loading_it(
    tmp_path,
):
    runs, data = _unloadable_mnist()
    pool = ProcessPoolExecutor(jobs=2, data_dir=str(tmp_path / "empty"))
    outcome = run_sweep(runs[:2], ResultsStore(tmp_path / "out"), executor=pool, data=data)
    assert outcome.failed == [] and len(outcome.records) == 2  # no worker tried to load it
    for tensor in (data.train_x, data.train_y, data.val_x, data.val_y):
        assert tensor.is_shared()  # the workers were sent handles to its pages, not copies
    assert spawned_children() == []
    with pytest.raises(DataError, match="mnist"):  # without data the sweep's process loads it
        run_sweep(runs[2:], ResultsStore(tmp_path / "alone"), executor=pool)
    assert spawned_children() == []


def _children_once_executed(count: int) -> set[int]:
    """This process's ``count`` spawned children, once each has replaced the forked copy of
    this process (a started child's command line says spawn_main from then on)."""
    deadline = time.monotonic() + 30
    while len(children := set(spawned_children())) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(children) == count
    return children


class _ChildrenAtStart(SweepListener):
    def __init__(self) -> None:
        self.seen: list[set[int]] = []

    def run_started(self, config):
        self.seen.append(set(spawned_children()))


@LINUX_PROC
def test_workers_started_before_the_data_loads_train_every_run_and_close_ends_unused_ones(
    tmp_path,
):
    pool = ProcessPoolExecutor(jobs=2, threads=1)
    with pool:
        started = _children_once_executed(2)
        listener = _ChildrenAtStart()
        outcome = run_sweep(_runs(), ResultsStore(tmp_path), executor=pool, listener=listener)
    assert len(outcome.records) == 4 and outcome.failed == []
    assert all(seen == started for seen in listener.seen)  # no worker started per run
    with pool:  # started, then the caller fails before run(): close ends them
        _children_once_executed(2)
    assert spawned_children() == []


def test_a_sweep_too_small_to_repay_starting_workers_gets_an_in_process_executor(tmp_path):
    pool = ProcessPoolExecutor(jobs=2, data_dir=str(tmp_path), models_dir=tmp_path / "m")
    alone = in_process_if_small(pool, SMALL_SWEEP_STEPS - 1, threads=3)
    assert isinstance(alone, InProcessExecutor) and alone.threads == 3
    assert (alone.data_dir, alone.models_dir) == (pool.data_dir, pool.models_dir)
    assert in_process_if_small(pool, SMALL_SWEEP_STEPS, threads=3) is None
    assert in_process_if_small(InProcessExecutor(), 1, threads=3) is None
