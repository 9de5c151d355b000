"""Running the runs of a sweep, in this process or in a pool of processes.

Finished runs (those whose run_id is in the results store) are skipped, so
the same sweep started again resumes. Each record is appended to the store
as soon as its run finishes, by this process only; an interrupted sweep
loses only the runs in flight, which the next start redoes.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import queue
import signal
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

import torch

from normlab.data import Dataset, load_dataset, stratified_subset
from normlab.experiment.config import RunConfig
from normlab.experiment.ddp import run_under_torchrun, train_distributed
from normlab.experiment.store import ResultsStore
from normlab.experiment.train import (
    EpochMetrics,
    build_run_model,
    save_model,
    train_model,
    warm_up,
)
from normlab.models import ModelFactoryError, check_logits

POLL_SECONDS = 0.1


def available_cores() -> int:
    """The CPU cores this process may use (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class SweepListener:
    """What a sweep reports as it goes; this base ignores it all (the CLI's progress bars
    override each method)."""

    def run_started(self, config: RunConfig) -> None:
        pass

    def epoch_done(self, config: RunConfig, metrics: EpochMetrics) -> None:
        pass

    def run_done(self, config: RunConfig, record: dict[str, Any]) -> None:
        pass

    def run_failed(self, config: RunConfig, error: str) -> None:
        pass


@dataclass
class SweepOutcome:
    """What a call to run_sweep did: records written, runs skipped as already
    finished, runs that raised (config and error text), whether Ctrl-C
    interrupted it, and why it stopped early otherwise (None if it did not)."""

    records: list[dict[str, Any]] = field(default_factory=list)
    skipped: int = 0
    failed: list[tuple[RunConfig, str]] = field(default_factory=list)
    interrupted: bool = False
    stopped: str | None = None


def pending_runs(runs: Sequence[RunConfig], store: ResultsStore) -> list[RunConfig]:
    """The runs whose records are not in ``store`` yet."""
    finished = store.finished_ids()
    return [run for run in runs if run.run_id not in finished]


def _error_text(error: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(error), error)).strip()


def run_sweep(
    runs: Sequence[RunConfig],
    store: ResultsStore,
    *,
    data_dir: str | None = None,
    jobs: int = 1,
    threads: int = 1,
    listener: SweepListener | None = None,
    models_dir: str | os.PathLike | None = None,
    executor: str = "processes",
    address: str | None = None,
) -> SweepOutcome:
    """Train every run of ``runs`` not yet in ``store`` and append each record.

    Args:
        runs: the sweep's runs (all on one dataset).
        store: where records go; already finished runs are skipped.
        data_dir: where the dataset's files are (see normlab.data.load_dataset).
        jobs: processes training at once; 1 trains in this process.
        threads: torch threads per run.
        listener: told about each run's start, epochs and end.
        models_dir: where to save each trained model's state_dict as
            ``<run_id>.pt`` (the record names it under ``model_file``); None
            saves nothing.
        executor: ``"processes"`` (this machine: ``jobs`` processes),
            ``"ray"`` (each run a Ray task, see normlab.experiment.ray_executor)
            or ``"torchrun"`` (this process is one of a torchrun launch that
            trains every run together, see normlab.experiment.ddp).
        address: with ``"ray"``, the cluster to use; None starts a local one.

    The store's directory is locked for the whole sweep (see ResultsStore.lock):
    a sweep on a directory that another sweep is writing to raises
    normlab.experiment.store.StoreBusyError before training anything.

    A run that raises is reported to the listener and in the outcome, and
    the sweep goes on. Ctrl-C stops the sweep: the outcome says it was
    interrupted and the store keeps every run finished before it. A worker
    process that dies (killed, out of memory) stops the sweep the same way,
    with ``outcome.stopped`` saying so.
    """
    listener = listener or SweepListener()
    if executor == "torchrun":  # every process must take part, whatever files it sees
        outcome = SweepOutcome()
        try:
            run_under_torchrun(list(runs), store, data_dir, listener, outcome, models_dir)
        except KeyboardInterrupt:
            outcome.interrupted = True
        return outcome
    with store.lock():  # one writer per directory: a second sweep is refused, not doubled
        todo = pending_runs(runs, store)
        outcome = SweepOutcome(skipped=len(runs) - len(todo))
        if not todo:
            return outcome
        datasets = {run.dataset for run in todo}
        if len(datasets) != 1:
            raise ValueError(f"a sweep runs on one dataset; got {sorted(datasets)}.")
        try:
            if executor == "ray":
                from normlab.experiment.ray_executor import run_on_ray  # Ray is optional

                run_on_ray(todo, store, data_dir, threads, listener, outcome, models_dir, address)
            elif jobs == 1:
                _run_here(todo, store, data_dir, threads, listener, outcome, models_dir)
            else:
                _run_in_pool(todo, store, data_dir, jobs, threads, listener, outcome, models_dir)
        except KeyboardInterrupt:
            outcome.interrupted = True
        return outcome


def _finish(
    config: RunConfig,
    record: dict[str, Any],
    store: ResultsStore,
    listener: SweepListener,
    outcome: SweepOutcome,
) -> None:
    store.append(record)
    outcome.records.append(record)
    listener.run_done(config, record)


def _fail(config: RunConfig, error: str, listener: SweepListener, outcome: SweepOutcome) -> None:
    outcome.failed.append((config, error))
    listener.run_failed(config, error)


def _train(
    config: RunConfig,
    data: Dataset,
    on_epoch: Callable[[EpochMetrics], None],
    models_dir: str | os.PathLike | None,
    data_dir: str | None,
) -> dict[str, Any]:
    """Train one run (over ``config.nproc`` processes when more than one); save its model's
    state_dict when ``models_dir`` is given."""
    if config.nproc > 1:
        return train_distributed(config, data_dir, on_epoch=on_epoch, models_dir=models_dir)
    model, record = train_model(config, data, on_epoch=on_epoch)
    if models_dir is not None:
        save_model(model, config, models_dir, record)
    return record


def _run_here(
    todo: list[RunConfig],
    store: ResultsStore,
    data_dir: str | None,
    threads: int,
    listener: SweepListener,
    outcome: SweepOutcome,
    models_dir: str | os.PathLike | None,
) -> None:
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        data = load_dataset(todo[0].dataset, data_dir)
        warm_up(todo[0].optimizer)
        for config in todo:
            listener.run_started(config)
            try:
                record = _train(
                    config,
                    data,
                    functools.partial(listener.epoch_done, config),
                    models_dir,
                    data_dir,
                )
            except Exception as error:  # one run's failure must not end the sweep
                _fail(config, _error_text(error), listener, outcome)
                continue
            _finish(config, record, store, listener, outcome)
    finally:
        torch.set_num_threads(previous_threads)


# --- worker processes -------------------------------------------------------

_events: Any = None


def _init_worker(events: Any, threads: int) -> None:
    """Pool initializer: one event queue to the parent, ``threads`` torch threads,
    and Ctrl-C left to the parent, which stops the pool."""
    global _events
    _events = events
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)


@functools.lru_cache(maxsize=2)
def _cached_dataset(name: str, data_dir: str | None) -> Dataset:
    return load_dataset(name, data_dir)


def _train_in_worker(
    config_data: dict[str, Any], data_dir: str | None, models_dir: str | None
) -> dict[str, Any]:
    config = RunConfig.from_dict(config_data)
    data = _cached_dataset(config.dataset, data_dir)
    warm_up(config.optimizer)
    _events.put(("started", config.run_id, None))
    return _train(
        config,
        data,
        lambda metrics: _events.put(("epoch", config.run_id, metrics)),
        models_dir,
        data_dir,
    )


def _run_in_pool(
    todo: list[RunConfig],
    store: ResultsStore,
    data_dir: str | None,
    jobs: int,
    threads: int,
    listener: SweepListener,
    outcome: SweepOutcome,
    models_dir: str | os.PathLike | None,
) -> None:
    context = multiprocessing.get_context("spawn")  # fork after torch has threads can deadlock
    events = context.Queue()
    by_id = {config.run_id: config for config in todo}
    executor = ProcessPoolExecutor(
        jobs, mp_context=context, initializer=_init_worker, initargs=(events, threads)
    )
    finished = False
    try:
        waiting = {
            executor.submit(
                _train_in_worker,
                config.to_dict(),
                data_dir,
                None if models_dir is None else str(models_dir),
            ): config
            for config in todo
        }
        while waiting:
            _drain(events, by_id, listener)
            for future in [future for future in waiting if future.done()]:
                config = waiting.pop(future)
                _drain(events, by_id, listener)  # the run's last epoch before its end
                try:
                    record = future.result()
                except BrokenProcessPool:
                    outcome.stopped = (
                        "a worker process died (killed, or out of memory) while training "
                        f"{config.label}; the sweep stopped"
                    )
                    return
                except Exception as error:
                    _fail(config, _error_text(error), listener, outcome)
                    continue
                _finish(config, record, store, listener, outcome)
        finished = True
    finally:
        if not finished:  # interrupted or broken: end the runs in flight now
            _terminate_workers(executor)
        executor.shutdown(wait=True, cancel_futures=True)


def _terminate_workers(executor: ProcessPoolExecutor) -> None:
    """Kill the pool's processes; their runs in flight are redone when the sweep resumes."""
    terminate = getattr(executor, "terminate_workers", None)  # Python 3.14+
    if terminate is not None:
        terminate()
        return
    for process in list((executor._processes or {}).values()):  # no public way before 3.14
        process.terminate()


def _drain(events: Any, by_id: dict[str, RunConfig], listener: SweepListener) -> None:
    """Pass queued worker events to the listener, waiting up to POLL_SECONDS for the first."""
    timeout = POLL_SECONDS
    while True:
        try:
            kind, run_id, metrics = events.get(timeout=timeout)
        except queue.Empty:
            return
        timeout = 0
        dispatch((kind, run_id, metrics), by_id, listener)


def dispatch(
    event: tuple[str, str, Any], by_id: dict[str, RunConfig], listener: SweepListener
) -> None:
    """Pass one worker event, ("started" | "epoch", run_id, metrics), to the listener."""
    kind, run_id, metrics = event
    if kind == "started":
        listener.run_started(by_id[run_id])
    else:
        listener.epoch_done(by_id[run_id], metrics)


def check_runs(runs: Sequence[RunConfig], data: Dataset) -> None:
    """Fail before training when a run's model cannot take its batches.

    Builds each distinct (model, norm, placement, options) once and runs one
    training-mode forward pass on a batch of the run's size (capped at 8), so
    a batch norm at batch size 1 or instance norm on an MLP's (N, C)
    features is reported up front, naming the run. A user's factory that
    cannot be imported, returns no module or returns anything but
    (N, num_classes) logits, and a ``train_subset`` the training split cannot
    fill, are refused here too.

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
                "no sample; use a batch size of at least --nproc."
            )
        key = (config.model, config.norm, config.placement, min(size, 8))
        key += (repr(sorted(config.model_options.items())),)
        if key in seen:
            continue
        seen.add(key)
        images = data.train_x[: min(size, 8)]
        try:
            model = build_run_model(config, data)
            with torch.no_grad():
                logits = model.train()(images)
        except ModelFactoryError:
            raise
        except (ValueError, TypeError) as error:
            where = f" ({size} per process; --sync-bn shares statistics)" if per_process else ""
            raise ValueError(
                f"norm {config.norm!r} in model {config.model!r} at batch size "
                f"{config.batch_size}{where} cannot train: {error}"
            ) from None
        check_logits(config.model, logits, len(images), data.num_classes)
