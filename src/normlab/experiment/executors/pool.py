"""The process-pool executor: ``jobs`` worker processes on this machine, each training one
run after another (with ``stack_seeds``, one configuration's seeds at a time, stacked).

The workers start once per sweep, in ``start``, which the caller calls before it loads the
data: each worker's start-up (importing torch and normlab, torch's lazy imports on a first
optimizer: about 2.5 s) then overlaps with that loading (``run`` starts them itself when
``start`` was not called). The dataset is loaded once, by the sweep's process (or handed to
``run``); its tensors move into shared memory and each worker receives handles to those
pages (torch.multiprocessing's reductions, through the worker's pipe), so the workers add
their own state only, not a copy of the data each.

Each worker is joined to the sweep's process by its own pipe: the sweep hands a worker
one task at a time (a run, or one configuration's seeds) and the worker reports each run's
start, epochs and end, so the sweep always knows which runs each worker holds. A worker that
dies (killed, out of memory) fails the runs it held that had not finished, a fresh worker
takes its place and the sweep goes on. Workers ignore
Ctrl-C (the sweep ends them) and die with the sweep's process, however it dies.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

import torch
import torch.multiprocessing  # registers the reductions that send tensors as shared memory

from normlab.data import Dataset
from normlab.experiment.config import RunConfig
from normlab.experiment.executors.contract import Executor, RunSink, check_positive
from normlab.experiment.executors.lifetime import die_with_parent, starting_worker
from normlab.experiment.executors.training import cached_dataset, train_task
from normlab.experiment.stacked import seed_groups
from normlab.experiment.train import EpochMetrics, warm_up
from normlab.models.registry import ModelInfo, adopt_models, check_shippable, user_models

STOP_SECONDS = 30


def worker_main(
    connection: Connection,
    parent_pid: int,
    threads: int,
    data_dir: str | None,
    models_dir: str | None,
    models: Sequence[ModelInfo] = (),
) -> None:
    """A pool worker: register ``models`` (the user's, which the sweep's process has
    registered), take the sweep's Dataset (its tensors in shared memory), then train each
    task the sweep sends (a list of RunConfigs as dicts: one run, or the seeds of one
    configuration to train stacked) until it sends None or goes away; report each run's
    ("started" | "epoch" | "finished" | "failed", run_id, payload)."""
    die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the sweep's to handle
    adopt_models(models)
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    warm_up("adam")  # torch's lazy imports, paid while the sweep loads its data
    data: Dataset | None = None
    while True:
        try:
            task = connection.recv()
        except EOFError:  # the sweep is gone
            return
        if task is None:
            return
        if isinstance(task, Dataset):
            data = task
            continue
        assert data is not None, "the sweep sends its Dataset before the first run"
        runs = [RunConfig.from_dict(config) for config in task]
        train_task(runs, data, _PipeReports(connection), models_dir, data_dir, threads)


@dataclass
class _PipeReports:
    """A worker's reports (see training.Reports), sent to the sweep by ``connection``."""

    connection: Connection

    def started(self, config: RunConfig) -> None:
        self.connection.send(("started", config.run_id, None))

    def epoch(self, config: RunConfig, metrics: EpochMetrics) -> None:
        self.connection.send(("epoch", config.run_id, metrics))

    def finished(self, config: RunConfig, record: dict[str, Any]) -> None:
        self.connection.send(("finished", config.run_id, record))

    def failed(self, config: RunConfig, error: str) -> None:
        self.connection.send(("failed", config.run_id, error))


@dataclass
class _Worker:
    process: BaseProcess
    connection: Connection
    runs: dict[str, RunConfig] = field(default_factory=dict)  # its task's unfinished runs
    has_data: bool = False


class ProcessPoolExecutor(Executor):
    """Train runs in ``jobs`` worker processes of this machine (``jobs`` >= 2; one job is
    the InProcessExecutor), ``threads`` torch threads each. ``start`` starts the workers
    ahead of ``run`` (see the module docstring); ``run`` moves the dataset's tensors into
    shared memory (``Tensor.share_memory_``: same values, other pages).

    Args:
        jobs: worker processes; fewer start when fewer runs are pending.
        threads: torch threads per worker.
        data_dir: where the dataset's files are (see normlab.data.load_dataset).
        models_dir: where workers save each trained model as ``<run_id>.pt``; None saves nothing.
        stack_seeds: hand a worker the pending seeds of each configuration at once, to train
            as one batched model (see normlab.experiment.stacked; ``stack_refusal``'s
            configurations train their seeds as separate runs).
    """

    def __init__(
        self,
        *,
        jobs: int,
        threads: int = 1,
        data_dir: str | None = None,
        models_dir: str | os.PathLike | None = None,
        stack_seeds: bool = False,
    ) -> None:
        self.jobs = check_positive("jobs", jobs)
        self.stack_seeds = stack_seeds
        self.threads = check_positive("threads", threads)
        self.data_dir = data_dir
        self.models_dir = None if models_dir is None else str(models_dir)
        self._context = torch.multiprocessing.get_context("spawn")  # fork after torch has
        # threads can deadlock
        self._workers: list[_Worker] = []  # started by start(), not yet given to run()

    def check(self, runs: list[RunConfig]) -> None:
        for model in {run.model for run in runs}:
            check_shippable(model)
        if self.jobs > 1 and any(run.nproc > 1 for run in runs):
            raise ValueError(
                "`jobs` and `nproc` both ask for several processes: with `nproc` each run uses "
                "that many processes and runs go one at a time; drop `jobs`."
            )

    def start(self) -> None:
        """Start the ``jobs`` workers now, unless they are started."""
        if not self._workers:
            self._workers = [self._start_worker() for _ in range(self.jobs)]

    def close(self) -> None:
        """End the workers ``start`` started that no ``run`` took (idle or still starting)."""
        workers, self._workers = self._workers, []
        _stop(workers, graceful=False)

    def run(self, todo: list[RunConfig], sink: RunSink, data: Dataset | None = None) -> None:
        workers, self._workers = self._workers, []
        tasks = seed_groups(todo) if self.stack_seeds else [[config] for config in todo]
        _stop(workers[len(tasks) :], graceful=False)  # more workers than tasks
        del workers[len(tasks) :]
        waiting = collections.deque(tasks)
        completed = False
        try:
            while len(workers) < min(self.jobs, len(tasks)):
                workers.append(self._start_worker())
            if data is None:  # loaded while the workers start
                data = cached_dataset(todo[0].dataset, self.data_dir)
            for tensor in (data.train_x, data.train_y, data.val_x, data.val_y):
                tensor.share_memory_()
            for worker in workers:
                _hand_out(worker, waiting, data)
            while any(worker.runs for worker in workers):
                busy = [worker for worker in workers if worker.runs]
                wait([w.connection for w in busy] + [w.process.sentinel for w in busy])
                for worker in busy:
                    if _pass_reports(worker, sink):
                        _hand_out(worker, waiting, data)
                for worker in [w for w in workers if not w.process.is_alive()]:
                    _pass_reports(worker, sink)  # what it sent before it died
                    if worker.runs:
                        error = _died(worker)
                        for config in worker.runs.values():
                            sink.failed(config, error)
                    workers.remove(worker)
                    worker.connection.close()
                    if waiting:  # a fresh worker takes its place
                        workers.append(self._start_worker())
                        _hand_out(workers[-1], waiting, data)
            completed = True
        finally:
            if not completed:  # interrupted: keep what finished, end the runs in flight now
                for worker in workers:
                    _pass_reports(worker, sink)
            _stop(workers, graceful=completed)

    def _start_worker(self) -> _Worker:
        ours, theirs = self._context.Pipe()
        arguments = (theirs, os.getpid(), self.threads, self.data_dir, self.models_dir)
        arguments += (user_models(),)  # the user's registered models, which it starts without
        process = self._context.Process(target=worker_main, args=arguments, daemon=True)
        with starting_worker():  # no Ctrl-C before it ignores them, no main script rerun
            process.start()
        theirs.close()
        return _Worker(process, ours)


def _hand_out(worker: _Worker, waiting: collections.deque[list[RunConfig]], data: Dataset) -> None:
    """Send ``worker`` the next waiting task, if any (and first ``data``, if not yet sent:
    handles to its shared memory, a few hundred bytes)."""
    if not waiting:
        return
    task = waiting.popleft()
    worker.runs = {config.run_id: config for config in task}
    with contextlib.suppress(OSError):  # a worker that has died fails its run as it dies
        if not worker.has_data:
            worker.connection.send(data)
            worker.has_data = True
        worker.connection.send([config.to_dict() for config in task])


def _pass_reports(worker: _Worker, sink: RunSink) -> bool:
    """Pass every report ``worker`` has sent on to ``sink``, without waiting for more; True
    when its task's last run ended (the worker is then free). A report cut short by the
    worker's death is dropped (its runs fail as a dead worker's)."""
    while worker.runs and _readable(worker.connection):
        try:
            kind, run_id, payload = worker.connection.recv()
        except (EOFError, OSError, ValueError, TypeError):
            return False
        config = worker.runs[run_id]
        if kind == "started":
            sink.started(config)
        elif kind == "epoch":
            sink.epoch(config, payload)
        else:
            del worker.runs[run_id]
            if kind == "finished":
                sink.finished(config, payload)
            else:
                sink.failed(config, payload)
            if not worker.runs:
                return True
    return False


def _died(worker: _Worker) -> str:
    worker.process.join()
    return (
        f"the worker process training it died (exit code {worker.process.exitcode}: killed, "
        "or out of memory); run the sweep again to redo this run"
    )


def _stop(workers: list[_Worker], graceful: bool) -> None:
    """Let idle workers exit (``graceful``) or end them now (runs in flight are redone when
    the sweep resumes)."""
    for worker in workers:
        if graceful:
            with contextlib.suppress(OSError):
                worker.connection.send(None)
        else:
            worker.process.terminate()
    for worker in workers:
        worker.process.join(STOP_SECONDS)
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join()
        worker.connection.close()


def _readable(connection: Connection) -> bool:
    try:
        return connection.poll(0)
    except (EOFError, OSError):
        return False
