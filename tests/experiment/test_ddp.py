"""Data-parallel runs in the lab: `--nproc N` trains each run with DistributedDataParallel over
N processes (gloo), batch norm per process or synchronized (`--sync-bn`)."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch.distributed as dist

from normlab.data import load_dataset
from normlab.experiment import RunConfig, check_runs, plan_runs
from normlab.experiment.ddp import train_distributed
from normlab.experiment.train import train_run
from normlab.lab import compare

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed gloo"
)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _config(**options) -> RunConfig:
    defaults = {"norm": "bn", "epochs": 2, "batch_size": 32, "model_options": {"hidden": [32]}}
    return RunConfig(**{**defaults, **options})


def test_synchronized_batch_norm_over_two_processes_trains_like_one_process(digits):
    """Same seed, same global batches: with sync-bn the two-process run follows the
    one-process run. Training losses agree to float32 rounding. Validation numbers agree
    less tightly: the Linear bias in front of batch norm gets a gradient that is zero up to
    rounding, which Adam turns into steps of size lr whose signs depend on the rounding,
    and the running mean lags behind that drift (about 1e-3 in validation loss after two
    epochs here)."""
    single = train_run(_config(), digits)
    epochs = []
    pair = train_distributed(_config(nproc=2, sync_bn=True), None, on_epoch=epochs.append)
    assert [m.epoch for m in epochs] == [1, 2]
    assert pair["config"]["nproc"] == 2 and pair["config"]["sync_bn"] is True
    for ours, reference in zip(pair["history"], single["history"], strict=True):
        assert math.isclose(ours["train_loss"], reference["train_loss"], rel_tol=1e-4)
        assert math.isclose(ours["val_loss"], reference["val_loss"], rel_tol=1e-2)
        assert abs(ours["val_acc"] - reference["val_acc"]) <= 3 / len(digits.val_x)
    json.dumps(pair, allow_nan=False)


def test_per_process_batch_norm_at_two_samples_per_process_costs_accuracy(digits):
    per_process = train_distributed(_config(nproc=2, batch_size=4), None)
    synchronized = train_distributed(_config(nproc=2, batch_size=4, sync_bn=True), None)
    assert per_process["status"] == synchronized["status"] == "finished"
    assert per_process["final"]["val_acc"] < synchronized["final"]["val_acc"]


def test_a_failing_process_is_reported_not_hung():
    with pytest.raises(RuntimeError, match=r"rank \d: .*InstanceNorm"):
        train_distributed(RunConfig(norm="in", epochs=1, nproc=2), None)


def test_run_ids_of_one_process_runs_do_not_change():
    assert "nproc" not in RunConfig().to_dict()
    assert RunConfig(nproc=2).run_id != RunConfig().run_id
    assert RunConfig(nproc=2, sync_bn=True).run_id != RunConfig(nproc=2).run_id
    with pytest.raises(ValueError, match="`sync_bn` synchronizes"):
        RunConfig(sync_bn=True)


def test_check_runs_sees_the_per_process_batch(digits):
    with pytest.raises(ValueError, match=r"batch size 2 \(1 per process"):
        check_runs(plan_runs(norms=["bn"], batch_sizes=[2], seeds=1, nproc=2), digits)
    check_runs(plan_runs(norms=["bn"], batch_sizes=[2], seeds=1, nproc=2, sync_bn=True), digits)
    with pytest.raises(ValueError, match="at least `nproc`"):
        check_runs(plan_runs(norms=["ln"], batch_sizes=[2], seeds=1, nproc=3), digits)


def test_a_torchrun_launch_of_the_lab_trains_the_same_runs_as_nproc(tmp_path):
    """`torchrun --nproc-per-node 2 normlab compare ...` trains each run over torchrun's two
    processes; only rank 0 writes, and the records equal those of `--nproc 2`."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    bin_dir = Path(sys.executable).parent
    argv = ["compare", "--norms", "bn", "--seeds", "1", "--epochs", "1", "--hidden", "16"]
    launched = tmp_path / "torchrun"
    torchrun = [str(bin_dir / "torchrun"), "--standalone", "--nproc-per-node", "2"]
    result = subprocess.run(
        [*torchrun, str(bin_dir / "normlab"), *argv, "--sync-bn", "--out", str(launched)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "KERAS_BACKEND": "torch"},
    )
    assert result.returncode == 0, _launch_failure(result)
    assert result.stdout.count("[1/1]") == 1  # rank 1 prints nothing
    spawned = tmp_path / "nproc"
    compare(norms=["bn"], seeds=1, epochs=1, hidden=[16], nproc=2, sync_bn=True, out=spawned,
            report=False, progress=False)  # fmt: skip
    (ours,) = [json.loads(line) for line in (launched / "results.jsonl").read_text().splitlines()]
    (theirs,) = [json.loads(line) for line in (spawned / "results.jsonl").read_text().splitlines()]
    assert ours["run_id"] == theirs["run_id"]
    assert ours["final"] == theirs["final"]


_TORCHRUN_SWEEP = """
import json, os, sys
from normlab.experiment import ResultsStore, plan_runs, run_sweep
runs = plan_runs(norms=["in", "ln"], batch_sizes=[32], seeds=1, epochs=1,
                 model_options={"hidden": [16]}, nproc=2)
outcome = run_sweep(runs, ResultsStore(sys.argv[1]), executor="torchrun")
failed = [[config.norm, error] for config, error in outcome.failed]
with open(sys.argv[1] + f"-rank-{os.environ['RANK']}.json", "w") as file:  # ranks print at once
    json.dump(failed, file)
"""


# Slow while it may be flaky: in one fresh-clone CI run (load 4 on 2 cores) a rank ended with
# SIGABRT, and torchrun reported a failed launch. Not reproduced since: 12 of 12 passed at load
# 7, with the launch's end-of-sweep barrier and group teardown and without them. Run it with
# make test-slow.
@pytest.mark.slow
def test_under_torchrun_a_run_failing_on_every_rank_is_failed_and_the_launch_goes_on(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "sweep.py"
    script.write_text(_TORCHRUN_SWEEP)
    torchrun = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc-per-node"]
    result = subprocess.run(
        [*torchrun, "2", str(script), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "KERAS_BACKEND": "torch"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rank_0, rank_1 = (json.loads((tmp_path / f"out-rank-{r}.json").read_text()) for r in (0, 1))
    assert rank_1 == []  # rank 0 reports
    [[norm, error]] = rank_0
    assert norm == "in" and error.startswith("rank 0: ValueError: InstanceNorm")
    (record,) = [
        json.loads(line) for line in (tmp_path / "out/results.jsonl").read_text().splitlines()
    ]
    assert record["config"]["norm"] == "ln" and record["status"] == "finished"


_TORCHRUN_SWEEP_WITH_A_DEATH = """
import json, os, sys
import normlab.experiment.executors.torchrun as torchrun_executor
from normlab.experiment import ResultsStore, plan_runs, run_sweep

dying_rank = int(sys.argv[2])
train = torchrun_executor.train_model

def train_or_die(config, data, **options):
    if config.norm == "ln" and int(os.environ["RANK"]) == dying_rank:
        os._exit(3)  # dies as a killed process does: no exception, no goodbye to its peers
    return train(config, data, **options)

torchrun_executor.train_model = train_or_die
runs = plan_runs(norms=["bn", "ln", "rms"], batch_sizes=[32], seeds=1, epochs=1,
                 model_options={"hidden": [16]}, nproc=2)
outcome = run_sweep(runs, ResultsStore(sys.argv[1]), executor="torchrun")
failed = [[config.norm, error] for config, error in outcome.failed]
with open(sys.argv[1] + f"-rank-{os.environ['RANK']}.json", "w") as file:  # ranks print at once
    json.dump(failed, file)
"""


@pytest.mark.parametrize("dying_rank", [0, 1])
def test_under_torchrun_a_rank_that_dies_fails_its_run_and_the_restarted_launch_goes_on(
    tmp_path, dying_rank
):
    """A process that dies mid-sweep ends the attempt; torchrun restarts the launch
    (--max-restarts), which reports the run that was training as failed, does not train it
    again, and trains the rest. Without the restart prefix the new group would try to reach
    the dead attempt's processes, and without the launch's account it would retrain the run
    and die again."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "sweep.py"
    script.write_text(_TORCHRUN_SWEEP_WITH_A_DEATH)
    torchrun = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--max-restarts"]
    result = subprocess.run(
        [
            *torchrun,
            "1",
            "--nproc-per-node",
            "2",
            str(script),
            str(tmp_path / "out"),
            str(dying_rank),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "KERAS_BACKEND": "torch"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # the restarted attempt's processes; rank 0 reports
    rank_0, rank_1 = (json.loads((tmp_path / f"out-rank-{r}.json").read_text()) for r in (0, 1))
    assert rank_1 == []
    [[norm, error]] = rank_0
    assert norm == "ln"
    assert error.startswith("a process of the torchrun launch died while training this run")
    assert "restarted the launch (restart 1)" in error
    records = [
        json.loads(line) for line in (tmp_path / "out/results.jsonl").read_text().splitlines()
    ]
    assert [(r["config"]["norm"], r["status"]) for r in records] == [
        ("bn", "finished"),
        ("rms", "finished"),
    ]


def test_a_restarted_launch_fails_what_an_earlier_attempt_failed_and_nothing_else(
    tmp_path, monkeypatch
):
    """The launch's account without torchrun: a restart of the same launch takes over the
    failed runs and the run that was training; a new launch, or a run that finished, is
    not failed."""
    from normlab.experiment.executors.torchrun import LAUNCH_FILE, LaunchAccount

    path = tmp_path / LAUNCH_FILE
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "launch-a")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    first = LaunchAccount(path)
    assert first.failed_runs(set()) == {}
    first.starting("raised")
    first.failed("raised", "ValueError: no")
    first.starting("finished")
    first.starting("died")
    first.lost("rank 0: RuntimeError: Connection closed by peer")

    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    restarted = LaunchAccount(path).failed_runs({"finished"})
    assert restarted["raised"] == "ValueError: no"
    assert restarted["died"].startswith(
        "a process of the torchrun launch died while training this run "
        "(rank 0: RuntimeError: Connection closed by peer); torchrun restarted the launch "
        "(restart 1)"
    )
    assert set(restarted) == {"raised", "died"}
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "2")
    assert LaunchAccount(path).failed_runs({"finished"}) == restarted  # nothing new died

    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "launch-b")
    assert LaunchAccount(path).failed_runs(set()) == {}  # a new command retries them all
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "launch-a")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    assert LaunchAccount(path).failed_runs(set()) == {}  # a first attempt starts afresh


def _lock_is_free(path) -> bool:
    import fcntl
    import os

    descriptor = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(descriptor)
    return True


def _children(pid: int) -> list[int]:
    from pathlib import Path

    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    from pathlib import Path

    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def _wait_for(condition, what: str, deadline_seconds: float) -> None:
    import time

    deadline = time.monotonic() + deadline_seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


@pytest.mark.slow  # a torchrun launch of the lab: about 15 s on a loaded machine
@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="finds ranks in Linux /proc")
def test_the_ranks_stop_when_their_torchrun_agent_is_killed(tmp_path):
    """SIGKILL to the torchrun agent gives its ranks no word; they must not train on as
    orphans, writing into --out and holding its lock."""
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from normlab.experiment.executors.torchrun import LAUNCH_FILE
    from normlab.experiment.store import LOCK_FILE

    bin_dir, out = Path(sys.executable).parent, tmp_path / "out"
    torchrun = [str(bin_dir / "torchrun"), "--standalone", "--nproc-per-node", "2"]
    argv = ["compare", "--norms", "bn,ln", "--epochs", "1000", "--hidden", "16", "--seeds", "1"]
    agent = subprocess.Popen(
        [*torchrun, str(bin_dir / "normlab"), *argv, "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "KERAS_BACKEND": "torch"},
    )
    ranks: list[int] = []
    try:
        # rank 0 names the run it starts once both ranks have joined the group, holding
        # the lock; 1000 epochs cannot end first
        _wait_for(lambda: (out / LAUNCH_FILE).exists(), "the launch never started", 300)
        assert not _lock_is_free(out / LOCK_FILE)
        ranks = _children(agent.pid)
        assert len(ranks) == 2
        os.kill(agent.pid, signal.SIGKILL)
        agent.wait()
        _wait_for(lambda: not any(map(_running, ranks)), "the ranks outlived their agent", 30)
        assert _lock_is_free(out / LOCK_FILE)
    finally:
        agent.kill()
        for pid in filter(_running, ranks):
            os.kill(pid, signal.SIGKILL)


def _launch_failure(result) -> str:
    """What a failed torchrun launch said: the lines of its ranks' own errors (a Python
    traceback's last lines, a C++ abort's `terminate called`, a fatal error), which torchrun's
    summary at the end of stderr leaves out, then that summary."""
    lines = result.stderr.splitlines()
    marks = ("Error", "error", "terminate called", "what()", "Fatal", "Traceback", "Abort")
    own = [line for line in lines if any(mark in line for mark in marks)]
    return "\n".join(
        [*own[:40], "--- stdout ---", result.stdout[-1500:], "--- end ---", result.stderr[-1500:]]
    )
