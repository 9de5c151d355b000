"""Running the runs of a sweep with an executor (normlab.experiment.executors).

Finished runs (those whose run_id is in the results store) are skipped, so
the same sweep started again resumes. Each record is appended to the store
as soon as its run finishes, by this process only (the executors report to
one RunSink, which writes); an interrupted sweep loses only the runs in
flight, which the next start redoes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence

import torch

from normlab.data import Dataset, stratified_subset
from normlab.experiment.config import RunConfig
from normlab.experiment.executors.choose import executor_for
from normlab.experiment.executors.contract import (
    Executor,
    RunSink,
    SweepListener,
    SweepOutcome,
    pending_runs,
)
from normlab.experiment.store import ResultsStore
from normlab.experiment.train import build_run_model
from normlab.models import ModelFactoryError, check_logits
from normlab.models.factory import is_factory_spec, run_factory_model
from normlab.models.registry import check_shippable

__all__ = [
    "SweepListener",
    "SweepOutcome",
    "check_runs",
    "pending_runs",
    "run_sweep",
    "run_sweep_locked",
]


def run_sweep(
    runs: Sequence[RunConfig],
    store: ResultsStore,
    *,
    executor: Executor | str = "processes",
    listener: SweepListener | None = None,
    data_dir: str | None = None,
    jobs: int | None = None,
    threads: int | None = None,
    models_dir: str | os.PathLike | None = None,
    address: str | None = None,
    data: Dataset | None = None,
) -> SweepOutcome:
    """Train every run of ``runs`` not yet in ``store`` and append each record.

    Args:
        runs: the sweep's runs (all on one dataset); a run listed twice trains once.
        store: where records go; already finished runs are skipped.
        executor: an Executor (see normlab.experiment.executors), or the name of one
            (``"processes"``, ``"ray"``, ``"torchrun"``) built by ``executor_for`` from
            the options below, which are for a name only.
        listener: told about each run's start, epochs and end.
        data_dir: where the dataset's files are (see normlab.data.load_dataset).
        jobs: with ``"processes"``, runs trained at once (default 1: in this process).
        threads: torch threads per run (default 1).
        models_dir: where to save each trained model's state_dict as
            ``<run_id>.pt`` (the record names it under ``model_file``); None
            saves nothing.
        address: with ``"ray"``, the cluster to use; None starts a local one.
        data: the runs' dataset, already loaded (the command line loads it to check the
            runs); None: the executor loads it. The pool executor shares it with its
            workers; start the executor (``executor.start()``, or ``with executor:``)
            before loading it to overlap the workers' start-up with the loading.

    The store's directory is locked for the whole sweep (see ResultsStore.lock):
    a sweep on a directory that another sweep is writing to raises
    normlab.experiment.store.StoreBusyError before training anything. A caller
    that holds the lock already, to do work of its own under it, calls
    :func:`run_sweep_locked` instead.

    A run that fails, and a run whose worker process dies, is reported to the
    listener and in the outcome, and the sweep goes on. Ctrl-C stops the sweep:
    the outcome says it was interrupted and the store keeps every run finished
    before it.

    Raises:
        ValueError: an executor option that does not apply, or runs the executor
            cannot train (before any training).
    """
    options = {"jobs": jobs, "threads": threads, "address": address}
    options |= {"data_dir": data_dir, "models_dir": models_dir}
    if isinstance(executor, str):
        executor = executor_for(executor, **options)
    elif any(value is not None for value in options.values()):
        given = ", ".join(name for name, value in options.items() if value is not None)
        raise ValueError(f"{given}: give these to the executor's constructor, not to run_sweep.")
    runs = _once(runs)
    executor.check(runs)
    # One writer per directory: a second sweep is refused, not doubled.
    with store.lock() if executor.locks_store else contextlib.nullcontext():
        return _sweep(runs, store, executor, listener, data)


def run_sweep_locked(
    runs: Sequence[RunConfig],
    store: ResultsStore,
    executor: Executor,
    *,
    listener: SweepListener | None = None,
    data: Dataset | None = None,
) -> SweepOutcome:
    """:func:`run_sweep` with an Executor, for a caller that holds ``store.lock()`` already
    (normlab.lab's compare takes it before the data loads, the claims study before it adds
    the committed records): the lock has one owner per sweep, its entry.

    Raises:
        RuntimeError: ``executor`` writes under the lock (all but torchrun's, whose ranks
            share the store) and this process does not hold it: a bug in the caller.
        ValueError: runs the executor cannot train (before any training).
    """
    if executor.locks_store and not store.holds_lock:
        raise RuntimeError(
            f"run_sweep_locked trains into {store.directory} for a caller that holds "
            "store.lock(); take it around the call, or call run_sweep, which takes it."
        )
    runs = _once(runs)
    executor.check(runs)
    return _sweep(runs, store, executor, listener, data)


def _once(runs: Sequence[RunConfig]) -> list[RunConfig]:
    """``runs`` with each run id once: a run given twice trains once."""
    return list({run.run_id: run for run in runs}.values())


def _sweep(
    runs: list[RunConfig],
    store: ResultsStore,
    executor: Executor,
    listener: SweepListener | None,
    data: Dataset | None,
) -> SweepOutcome:
    """Train the runs ``store`` lacks, under the lock its caller took."""
    outcome = SweepOutcome()
    sink = RunSink(store, listener or SweepListener(), outcome)
    try:
        todo = executor.pending(runs, store)
        outcome.skipped = len(runs) - len(todo)
        datasets = {run.dataset for run in todo}
        if len(datasets) > 1:
            raise ValueError(f"a sweep runs on one dataset; got {sorted(datasets)}.")
        if todo:
            executor.run(todo, sink, data)
    except KeyboardInterrupt:
        outcome.interrupted = True
    return outcome


def check_runs(runs: Sequence[RunConfig], data: Dataset) -> None:
    """Fail before training when a run's model cannot take its batches.

    Builds each distinct (model, norm, placement, options) once and runs one
    training-mode forward pass on a batch of the run's size (capped at 8), so
    a batch norm at batch size 1 or instance norm on an MLP's (N, C)
    features is reported up front, naming the run. A user's factory that
    cannot be imported, raises anything (``SystemExit`` too) itself or in its
    model's first forward pass (a layer that cannot take the data's images is
    named, with what to change), returns no module or returns anything but
    (N, num_classes) logits, a ``train_subset`` the training split cannot
    fill, and a data-parallel run of a model registered in this process that its
    processes cannot be handed (see normlab.models.registry.check_shippable), are
    refused here too.

    Raises:
        ModelFactoryError: the factory's problem, as normlab.models.factory says it.
        ValueError: naming the norm, batch size and model, with the layer's message.
    """
    seen = set()
    for subset in {config.train_subset for config in runs} - {None}:
        stratified_subset(data.train_y, subset)  # raises when the split cannot fill it
    for config in runs:
        # Per-process batch norm sees one process's share of each batch.
        per_process = config.nproc > 1 and not config.sync_bn
        size = config.batch_size // config.nproc if per_process else config.batch_size
        if size < 1:
            raise ValueError(
                f"batch size {config.batch_size} gives some of the {config.nproc} processes "
                "no sample; use a batch size of at least `nproc`."
            )
        if config.nproc > 1:
            check_shippable(config.model)
        key = (config.model, config.norm_label, config.placement, min(size, 8))
        key += (repr(sorted(config.model_options.items())),)
        if key in seen:
            continue
        seen.add(key)
        images = data.train_x[: min(size, 8)]
        where = f" ({size} per process; `sync_bn` shares statistics)" if per_process else ""
        run = f"norm {config.norm_label!r} in model {config.model!r} at batch size "
        run += f"{config.batch_size}{where}"
        try:
            model = build_run_model(config, data)
            with torch.no_grad():
                if is_factory_spec(config.model):
                    first = f"{run} cannot train: the model's first forward pass"
                    logits = run_factory_model(model.train(), images, first)
                else:
                    logits = model.train()(images)
        except ModelFactoryError:
            raise
        except (ValueError, TypeError) as error:
            raise ValueError(f"{run} cannot train: {error}") from None
        check_logits(config.model, logits, len(images), data.num_classes)
