"""Which executor a comparison trains with: a sweep too small to repay worker processes in
this process (its steps weighed by each model's cost), the pool, stacked seeds and
data-parallel runs, as ``normlab.lab.compare`` chooses them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch.distributed as dist

import normlab.lab.runner
from console_capture import printed, recording_console
from normlab.data import load_dataset
from normlab.experiment import ResultsStore, plan_runs
from normlab.experiment.executors.choose import SMALL_SWEEP_STEPS
from normlab.experiment.executors.contract import SweepOutcome
from normlab.experiment.executors.in_process import InProcessExecutor
from normlab.experiment.executors.pool import ProcessPoolExecutor
from normlab.lab import compare
from normlab.lab.runner import train_runs
from normlab.models import model_info
from process_tree import spawned_children


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _chosen_executor(model, steps, out, digits, monkeypatch):
    """The executor train_runs hands the sweep of two ``model`` runs of ``steps`` optimizer
    steps each, given a pool of two workers with the default's leave to keep a small sweep
    in this process (the sweep itself is not trained)."""
    chosen = []

    def sweep(runs, store, executor, **_):
        chosen.append(executor)
        return SweepOutcome()

    monkeypatch.setattr(normlab.lab.runner, "run_sweep_locked", sweep)
    runs = plan_runs(norms=["none", "ln"], batch_sizes=[32], seeds=1, model=model,
                     epochs=steps, steps=steps)  # fmt: skip
    store, console = ResultsStore(out), recording_console()
    with store.lock():
        train_runs(runs, store, digits, ProcessPoolExecutor(jobs=2, threads=1), console=console,
                   keep_small_in_process=True)  # fmt: skip
    (executor,) = chosen
    return executor, printed(console)


def test_the_small_sweep_fallback_weighs_each_models_steps_by_its_cost(
    tmp_path, digits, monkeypatch
):
    """resnet20's step costs 30 of mlp's: the same few steps that keep an mlp sweep in this
    process are too long a sweep for it, which goes to the pool's workers."""
    cost = model_info("resnet20").cost
    assert cost > 1 and model_info("mlp").cost == 1
    steps = math.ceil(SMALL_SWEEP_STEPS / (2 * cost))  # two runs: just enough of resnet20's
    assert 2 * steps < SMALL_SWEEP_STEPS
    cheap, said = _chosen_executor("mlp", steps, tmp_path / "mlp", digits, monkeypatch)
    assert isinstance(cheap, InProcessExecutor)
    assert f"{2 * steps} training steps in all: too few to repay" in said
    costly, said = _chosen_executor("resnet20", steps, tmp_path / "resnet20", digits, monkeypatch)
    assert isinstance(costly, ProcessPoolExecutor) and costly.jobs == 2
    assert "too few to repay" not in said
    fewer = math.floor((SMALL_SWEEP_STEPS - 1) / (2 * cost))  # just short of 5000 mlp steps
    alone, said = _chosen_executor("resnet20", fewer, tmp_path / "fewer", digits, monkeypatch)
    assert isinstance(alone, InProcessExecutor)
    weighted = f"{2 * fewer} training steps in all (as long as about {2 * fewer * cost:.0f} of"
    assert weighted in said


LINUX_PROC = pytest.mark.skipif(
    not Path("/proc/self/task").exists(), reason="finds worker processes through Linux /proc"
)


@LINUX_PROC
def test_compares_default_jobs_trains_a_small_sweep_in_its_own_process_and_says_so(
    tmp_path, monkeypatch
):
    monkeypatch.setattr("normlab.lab.runner.available_cores", lambda: 4)  # the default: 4 workers
    console = recording_console()
    result = compare(norms=["none", "bn"], seeds=1, epochs=1, hidden=[16], out=tmp_path,
                     report=False, console=console)  # fmt: skip
    assert result.complete and result.failed == []
    said = printed(console)
    assert "too few to repay starting worker processes; training in this process" in said
    assert len(ResultsStore(tmp_path).records()) == 2 and spawned_children() == []


@pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed gloo"
)
def test_compare_with_nproc_writes_the_usual_results(tmp_path):
    out, console = tmp_path / "sweep", recording_console()
    call = {"norms": ["bn"], "seeds": 1, "epochs": 1, "hidden": [16], "nproc": 2, "out": out}
    result = compare(sync_bn=True, console=console, **call)
    assert "2 processes per run with batch norm synchronized" in printed(console)
    (record,) = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert record["config"]["nproc"] == 2 and record["status"] == "finished"
    assert result.records == [record] and (out / "report.html").exists()
    with pytest.raises(ValueError, match="drop `jobs`"):
        compare(jobs=2, progress=False, **call)


@pytest.mark.slow  # three comparisons, one of them with worker processes
def test_compare_stack_seeds_writes_every_seed_and_says_what_it_cannot_stack(tmp_path):
    call = {"norms": ["bn"], "stack_seeds": True, "dropout": [0, 0.2], "epochs": 1}
    call |= {"hidden": [16], "train_subset": 200, "seeds": 2, "report": False}
    console = recording_console()
    compare(out=tmp_path / "stacked", console=console, **call)
    said = printed(console)
    assert said.count("trains its seeds as separate runs") == 1
    assert "mlp bn b=32 trains its seeds as separate runs: dropout" in said
    records = ResultsStore(tmp_path / "stacked").records()
    assert sorted(r["config"]["seed"] for r in records) == [0, 0, 1, 1]
    compare(jobs=2, out=tmp_path / "jobs", progress=False, **call)
    records = ResultsStore(tmp_path / "jobs").records()
    assert sorted(r["config"]["seed"] for r in records) == [0, 0, 1, 1]
    with pytest.raises(ValueError, match=r"`stack_seeds` .* does not combine with `executor`"):
        compare(executor="torchrun", out=tmp_path / "t", progress=False, **call)
