"""`--nproc N` keeps one process group for the whole sweep: the runs of a sweep are trained by
the same N processes (normlab.experiment.ddp.TrainingGroup), with the records a group of
their own gives; a run failing on every rank keeps the group, a rank that dies or fails
alone fails its run and a fresh group trains the rest; the processes end with the sweep,
on Ctrl-C, and when the sweep's process is killed."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch.distributed as dist

import normlab.experiment.ddp as ddp
from holding_model import holders, write_holding_model
from normlab.experiment import ResultsStore, RunConfig, plan_runs, run_sweep
from normlab.experiment.ddp import TrainingGroup, train_distributed
from normlab.experiment.executors.contract import SweepListener
from normlab.experiment.train import train_model
from process_tree import alive_in_session, spawned_children

pytestmark = [
    pytest.mark.skipif(
        not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed"
    ),
    pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds ranks in Linux /proc"),
]

FAILING_RANK = "NORMLAB_TEST_FAILING_RANK"  # read by _train_or_fail in the spawned ranks
FAILURE = "NORMLAB_TEST_FAILURE"


def _runs(norms: list[str], epochs: int = 1, **options) -> list[RunConfig]:
    return plan_runs(
        norms=norms,
        batch_sizes=[32],
        seeds=1,
        epochs=epochs,
        model_options={"hidden": [16]},
        nproc=2,
        **options,
    )


def _comparable(record: dict) -> dict:
    """A record without its timings."""
    kept = {key: value for key, value in record.items() if key not in ("seconds", "started")}
    kept["history"] = [
        {k: v for k, v in epoch.items() if k != "seconds"} for epoch in kept["history"]
    ]
    return kept


class _RankWatcher(SweepListener):
    """The ranks alive at each epoch of each run; the runs that finished and failed."""

    def __init__(self) -> None:
        self.ranks: dict[str, list[int]] = {}
        self.finished: list[str] = []
        self.failed: list[tuple[str, str]] = []

    def epoch_done(self, config, metrics):
        self.ranks[config.norm] = spawned_children(running=True)

    def run_done(self, config, record):
        self.finished.append(config.norm)

    def run_failed(self, config, error):
        self.failed.append((config.norm, error))


def test_runs_share_one_group_and_give_the_records_of_a_group_of_their_own():
    """The second run of a group (after a run with per-process batch norm, with batch norm
    synchronized) gives the record, timings aside, of the same run in a group started for
    it alone, as `--nproc` gave when it spawned a group per run."""
    first, second = _runs(["bn"]) + _runs(["bn"], sync_bn=True)
    epochs = []
    with TrainingGroup() as group:
        group.train(first)
        pids = group.pids
        shared = group.train(second, on_epoch=epochs.append)
        assert group.pids == pids and len(pids) == 2
        assert spawned_children(running=True) == sorted(pids)
    assert spawned_children(running=True) == []
    alone = train_distributed(second, None)
    assert shared["run_id"] == alone["run_id"] == second.run_id
    assert shared["final"] == alone["final"]
    assert _comparable(shared) == _comparable(alone)
    assert [metrics.epoch for metrics in epochs] == [1]


def test_the_runs_of_a_sweep_share_its_group_and_a_run_failing_on_every_rank_keeps_it(tmp_path):
    runs = _runs(["ln", "in", "bn"])  # instance norm cannot take an MLP's (N, C) features
    store = ResultsStore(tmp_path)
    watcher = _RankWatcher()
    outcome = run_sweep(runs, store, listener=watcher)
    [(norm, error)] = watcher.failed
    assert norm == "in" and error.startswith("RuntimeError: rank 0: ValueError: InstanceNorm")
    assert watcher.finished == ["ln", "bn"]
    assert len(watcher.ranks["ln"]) == 2 and watcher.ranks["bn"] == watcher.ranks["ln"]
    assert [record["run_id"] for record in store.records()] == [runs[0].run_id, runs[2].run_id]
    assert not outcome.interrupted
    assert spawned_children(running=True) == []  # the sweep's end ended the group


def _train_or_fail(config, data, **options):
    """train_model, except that in the run of norm ``ln`` the rank named by $FAILING_RANK fails
    alone after its first epoch, as $FAILURE says: ``exit`` (dies as a killed process does),
    or the name of the exception it raises. Runs in the spawned ranks (see the test below)."""
    rank = options["partition"].rank
    if config.norm == "ln" and rank == int(os.environ[FAILING_RANK]):
        report = options["on_epoch"]

        def fail(metrics):
            if report is not None:
                report(metrics)
            if os.environ[FAILURE] == "exit":
                os._exit(3)
            raise {"RuntimeError": RuntimeError, "ValueError": ValueError}[os.environ[FAILURE]](
                f"rank {rank} fails alone"
            )

        options["on_epoch"] = fail
    return train_model(config, data, **options)


@pytest.mark.parametrize(
    ("failure", "rank"),
    [
        ("exit", 1),
        ("ValueError", 0),  # the peer waits in a collective: ended after FAILURE_GRACE
        pytest.param("exit", 0, marks=pytest.mark.slow),
        pytest.param("RuntimeError", 1, marks=pytest.mark.slow),
    ],
)
def test_a_rank_that_dies_or_fails_alone_fails_its_run_and_a_fresh_group_trains_the_rest(
    tmp_path, monkeypatch, failure, rank
):
    monkeypatch.setattr(ddp, "train_model", _train_or_fail)  # the ranks get it at their start
    monkeypatch.setattr(ddp, "FAILURE_GRACE", 3.0)
    monkeypatch.setenv(FAILING_RANK, str(rank))
    monkeypatch.setenv(FAILURE, failure)
    runs = _runs(["bn"]) + _runs(["ln"], epochs=2) + _runs(["rms"])
    store = ResultsStore(tmp_path)
    watcher = _RankWatcher()
    outcome = run_sweep(runs, store, listener=watcher)
    [(norm, error)] = watcher.failed
    assert norm == "ln"
    if failure == "exit":
        assert f"a process of the 2-process run died (rank {rank}, exit code 3" in error
    else:
        assert f"rank {rank}: {failure}: rank {rank} fails alone" in error
    if failure == "ValueError":  # its peer was ended, not left to its collective's timeout
        assert error.endswith("(the other processes did not fail with it)")
    assert watcher.finished == ["bn", "rms"]
    assert len(watcher.ranks["rms"]) == 2
    assert not set(watcher.ranks["rms"]) & set(watcher.ranks["bn"])  # a fresh group
    assert [record["run_id"] for record in store.records()] == [runs[0].run_id, runs[2].run_id]
    assert not outcome.interrupted and spawned_children(running=True) == []


class _CtrlC(_RankWatcher):
    def epoch_done(self, config, metrics):
        super().epoch_done(config, metrics)
        raise KeyboardInterrupt


def test_ctrl_c_ends_the_groups_processes(tmp_path):
    store = ResultsStore(tmp_path)
    watcher = _CtrlC()
    outcome = run_sweep(_runs(["bn", "ln"], epochs=2), store, listener=watcher)
    assert outcome.interrupted and store.records() == []
    assert len(watcher.ranks["bn"]) == 2
    assert spawned_children(running=True) == []


def test_the_groups_processes_die_with_a_killed_sweep(tmp_path):
    """SIGKILL to the sweep's process alone once its group has trained a run and both ranks
    hold the next one (the holding model's ln run waits for a release that never comes): the
    ranks end too (the kernel ends them as their parent dies, see lifetime.die_with_parent)."""
    spec = write_holding_model(tmp_path)
    out = tmp_path / "sweep"
    argv = [sys.executable, "-m", "normlab.cli", "compare", "--model", spec]
    argv += ["--norms", "bn,ln", "--seeds", "1", "--epochs", "1", "--nproc", "2"]
    argv += ["--out", str(out)]
    stderr = tmp_path / "stderr"
    with stderr.open("wb") as sink:
        process = subprocess.Popen(
            argv,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=sink,
            env={**os.environ, "KERAS_BACKEND": "torch"},
            cwd=tmp_path,
        )
    try:
        deadline = time.monotonic() + 300  # only turns a hang into a failure
        while len(holders(tmp_path)) < 2:
            assert process.poll() is None, stderr.read_text()
            assert time.monotonic() < deadline, "the ranks never held the ln run"
            time.sleep(0.05)
        assert (out / "results.jsonl").read_text().count("\n") == 1  # the group trained bn
        # the two holders are the group's ranks, alive beside the sweep's process
        assert set(holders(tmp_path)) < set(alive_in_session(process.pid))
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        deadline = time.monotonic() + 30
        while alive_in_session(process.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert alive_in_session(process.pid) == [], "a rank outlived the sweep"
    finally:  # a failed test leaves no held rank behind
        for pid in alive_in_session(process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
