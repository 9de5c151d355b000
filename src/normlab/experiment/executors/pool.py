"""The process-pool executor: ``jobs`` worker processes on this machine, each training one
run after another.

The workers start once per sweep, in ``start``, which the caller calls before it loads the
data: each worker's start-up (importing torch and normlab, torch's lazy imports on a first
optimizer: about 2.5 s) then overlaps with that loading (``run`` starts them itself when
``start`` was not called). The dataset is loaded once, by the sweep's process (or handed to
``run``); its tensors move into shared memory and each worker receives handles to those
pages (torch.multiprocessing's reductions, through the worker's pipe), so the workers add
their own state only, not a copy of the data each.

Each worker is joined to the sweep's process by its own pipe: the sweep hands a worker
one run at a time and the worker reports that run's start, epochs and end, so the sweep
always knows which run each worker holds. A worker that dies (killed, out of memory)
fails the run it held, a fresh worker takes its place and the sweep goes on. Workers ignore
Ctrl-C (the sweep ends them) and die with the sweep's process, however it dies.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess

import torch
import torch.multiprocessing  # registers the reductions that send tensors as shared memory

from normlab.data import Dataset
from normlab.experiment.config import RunConfig
from normlab.experiment.executors.contract import Executor, RunSink, check_positive, error_text
from normlab.experiment.executors.lifetime import ctrl_c_blocked, die_with_parent
from normlab.experiment.executors.training import cached_dataset, train_one
from normlab.experiment.train import warm_up

STOP_SECONDS = 30


def worker_main(
    connection: Connection,
    parent_pid: int,
    threads: int,
    data_dir: str | None,
    models_dir: str | None,
) -> None:
    """A pool worker: take the sweep's Dataset (its tensors in shared memory), then train
    each run the sweep sends (a RunConfig as a dict) until it sends None or goes away; report
    ("started" | "epoch" | "finished" | "failed", run_id, payload)."""
    die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the sweep's to handle
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
        config = RunConfig.from_dict(task)
        connection.send(("started", config.run_id, None))
        try:
            warm_up(config.optimizer)
            record = train_one(
                config,
                data,
                lambda metrics, run_id=config.run_id: connection.send(("epoch", run_id, metrics)),
                models_dir,
                data_dir,
                threads,
            )
        except Exception as error:  # one run's failure must not end the worker
            connection.send(("failed", config.run_id, error_text(error)))
            continue
        connection.send(("finished", config.run_id, record))


@dataclass
class _Worker:
    process: BaseProcess
    connection: Connection
    run: RunConfig | None = None
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
    """

    def __init__(
        self,
        *,
        jobs: int,
        threads: int = 1,
        data_dir: str | None = None,
        models_dir: str | os.PathLike | None = None,
    ) -> None:
        self.jobs = check_positive("jobs", jobs)
        self.threads = check_positive("threads", threads)
        self.data_dir = data_dir
        self.models_dir = None if models_dir is None else str(models_dir)
        self._context = torch.multiprocessing.get_context("spawn")  # fork after torch has
        # threads can deadlock
        self._workers: list[_Worker] = []  # started by start(), not yet given to run()

    def check(self, runs: list[RunConfig]) -> None:
        if self.jobs > 1 and any(run.nproc > 1 for run in runs):
            raise ValueError(
                "--jobs and --nproc both ask for several processes: with --nproc each run uses "
                "that many processes and runs go one at a time; drop --jobs."
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
        _stop(workers[len(todo) :], graceful=False)  # more workers than runs
        del workers[len(todo) :]
        waiting = collections.deque(todo)
        completed = False
        try:
            while len(workers) < min(self.jobs, len(todo)):
                workers.append(self._start_worker())
            if data is None:  # loaded while the workers start
                data = cached_dataset(todo[0].dataset, self.data_dir)
            for tensor in (data.train_x, data.train_y, data.val_x, data.val_y):
                tensor.share_memory_()
            for worker in workers:
                _hand_out(worker, waiting, data)
            while any(worker.run is not None for worker in workers):
                busy = [worker for worker in workers if worker.run is not None]
                wait([w.connection for w in busy] + [w.process.sentinel for w in busy])
                for worker in busy:
                    if _pass_reports(worker, sink):
                        _hand_out(worker, waiting, data)
                for worker in [w for w in workers if not w.process.is_alive()]:
                    _pass_reports(worker, sink)  # what it sent before it died
                    if worker.run is not None:
                        sink.failed(worker.run, _died(worker))
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
        process = self._context.Process(target=worker_main, args=arguments, daemon=True)
        with ctrl_c_blocked():  # a Ctrl-C now must not hit the worker before it ignores them
            process.start()
        theirs.close()
        return _Worker(process, ours)


def _hand_out(worker: _Worker, waiting: collections.deque[RunConfig], data: Dataset) -> None:
    """Send ``worker`` the next waiting run, if any (and first ``data``, if not yet sent:
    handles to its shared memory, a few hundred bytes)."""
    if not waiting:
        return
    worker.run = waiting.popleft()
    with contextlib.suppress(OSError):  # a worker that has died fails its run as it dies
        if not worker.has_data:
            worker.connection.send(data)
            worker.has_data = True
        worker.connection.send(worker.run.to_dict())


def _pass_reports(worker: _Worker, sink: RunSink) -> bool:
    """Pass every report ``worker`` has sent on to ``sink``, without waiting for more; True
    when its run ended (the worker is then free). A report cut short by the worker's death is
    dropped (its run fails as a dead worker's)."""
    while worker.run is not None and _readable(worker.connection):
        try:
            kind, _, payload = worker.connection.recv()
        except (EOFError, OSError, ValueError, TypeError):
            return False
        config = worker.run
        if kind == "started":
            sink.started(config)
        elif kind == "epoch":
            sink.epoch(config, payload)
        else:
            worker.run = None
            if kind == "finished":
                sink.finished(config, payload)
            else:
                sink.failed(config, payload)
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
