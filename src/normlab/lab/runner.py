"""The one path from planned runs to records, which ``compare`` and the claims study share:
how many runs train at once and on how many threads, the results folder repaired and its
records checked, a small sweep kept in this process, progress shown, every unfinished run
trained (normlab.experiment.sweep.run_sweep_locked).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Console

from normlab.data import Dataset
from normlab.experiment import ResultsStore
from normlab.experiment.config import RunConfig
from normlab.experiment.executors.choose import in_process_if_small
from normlab.experiment.executors.contract import Executor, SweepOutcome, available_cores
from normlab.experiment.progress import SweepProgress
from normlab.experiment.stacked import seed_groups
from normlab.experiment.sweep import run_sweep_locked
from normlab.experiment.train import batch_slices, planned_steps
from normlab.models import is_model, model_info


@dataclass(frozen=True)
class Workers:
    """How a sweep's runs share this machine: ``jobs`` trained at once (None: the executor
    decides), ``threads`` torch threads each."""

    jobs: int | None
    threads: int | None


def share_cores(
    pending: Sequence[RunConfig],
    *,
    executor: str,
    jobs: int | None,
    threads: int | None,
    nproc: int = 1,
    stack_seeds: bool = False,
) -> Workers:
    """``jobs`` and ``threads`` as given, else this machine's cores shared between the tasks
    trained at once (runs, or one configuration's stacked seeds; and between the processes
    of each run). Under torchrun the launch decides; on Ray the cluster decides the jobs."""
    if executor == "torchrun":
        return Workers(jobs, threads)
    cores = available_cores()
    tasks = len(seed_groups(pending)) if stack_seeds else len(pending)
    at_once = max(1, min(jobs or (cores if nproc == 1 else 1), tasks))
    return Workers(
        jobs=at_once if jobs is None and executor != "ray" else jobs,
        threads=threads or max(1, cores // (at_once * nproc)),
    )


def planned_step_counts(runs: Sequence[RunConfig], data: Dataset) -> dict[str, int]:
    """Each run's optimizer steps, by run id.

    Raises:
        ValueError: a run's ``steps`` that its ``epochs`` cannot hold.
    """
    return {
        run.run_id: planned_steps(
            run, len(batch_slices(run.train_subset or len(data.train_x), run.batch_size))
        )
        for run in runs
    }


def mlp_steps(runs: Sequence[RunConfig], steps: Mapping[str, int]) -> float:
    """The time ``runs`` take, in optimizer steps of ``mlp``: each run's ``steps`` (by run
    id) weighted by its model's cost (normlab.models.ModelInfo.cost). A ``MODULE:FACTORY``
    model states no cost and counts as ``mlp``."""
    return sum(
        steps[run.run_id] * (model_info(run.model).cost if is_model(run.model) else 1.0)
        for run in runs
    )


def train_runs(
    runs: Sequence[RunConfig],
    store: ResultsStore,
    data: Dataset,
    executor: Executor,
    *,
    console: Console,
    writes: bool = True,
    known: Iterable[Mapping[str, Any]] = (),
    keep_small_in_process: bool = False,
    threads: int | None = None,
    describe: str | None = None,
) -> SweepOutcome:
    """Train every run of ``runs`` that ``store`` does not hold finished, with ``executor``
    (started or not), on ``data``; the caller holds ``store``'s lock.

    Args:
        writes: whether this process writes ``store`` (under torchrun only rank 0 does): it
            then removes a record cut off mid-line at the end of the file (its run is redone)
            and checks every record before any run trains.
        known: records finished elsewhere (e.g. committed beside a report): those of
            ``runs`` that ``store`` lacks are appended first and not trained again.
        keep_small_in_process: train in this process instead when the unfinished runs take
            too few optimizer steps to repay the pool's worker processes, each model's steps
            weighted by its cost (:func:`mlp_steps`;
            normlab.experiment.executors.choose.in_process_if_small), ``threads`` threads.
        describe: a line printed before training (the sweep's description).
    """
    from normlab.report.runs import check_records  # loads scipy

    steps = planned_step_counts(runs, data)
    if writes:
        dropped = store.repair()
        if dropped is not None:
            console.print(
                f"removed an unfinished record at the end of {store.path} "
                f"(a write interrupted mid-line, {len(dropped)} characters); its run is redone"
            )
        check_records(store.directory)  # a record the report cannot read fails now
    finished = store.finished_ids()
    for record in known if writes else ():
        if record["run_id"] in steps and record["run_id"] not in finished:
            store.append(dict(record))
            finished.add(record["run_id"])
    already = sum(run.run_id in finished for run in runs)
    todo = [run for run in runs if run.run_id not in finished]
    if keep_small_in_process:
        weighted = mlp_steps(todo, steps)
        alone = in_process_if_small(executor, round(weighted), threads or available_cores())
        if alone is not None:
            executor = alone
            total = sum(steps[run.run_id] for run in todo)
            console.print(
                f"{total} training steps in all"
                + (f" (as long as about {weighted:.0f} of mlp's)" if weighted != total else "")
                + ": too few to repay starting worker processes; training in this process "
                "(`jobs` of 2 or more starts workers anyway)"
            )
    if describe:
        console.print(describe)
    console.print(
        f"results: {store.path}"
        + (f" ({already} runs already finished, skipped)" if already else "")
    )
    with SweepProgress(console, total=len(runs), already_done=already) as progress:
        return run_sweep_locked(runs, store, executor, listener=progress, data=data)
