"""Runs trained data-parallel over several processes, with torch.distributed.

A ``TrainingGroup`` is ``nproc`` spawned processes of this machine joined in one gloo
process group; it trains one run after another (``normlab compare --nproc N`` keeps one
for the whole sweep, so the processes start once). Every process builds the same seeded
model, wraps it in DistributedDataParallel and trains its share of each global batch (see
``Partition``); batch norm is per process, as DDP leaves it, or synchronized with
``config.sync_bn``. Rank 0 reports epochs and the record; only the sweep's process writes
results. ``train_distributed`` trains one run in a group of its own.

Failures: a run that raises on every rank at the same point (its model or options cannot
train: a ValueError or TypeError) is failed and the group trains the next run. A rank that
dies, fails alone, or raises anything else fails the run: a failing rank leaves the group
at once, so that its peers' collectives fail instead of waiting, the group's processes are
ended and the next run starts a fresh group. A rank never waits in a collective for a peer
that failed: one whose peers do not report within ``FAILURE_GRACE`` seconds of its failure
is ended with them. The processes ignore Ctrl-C (the sweep's process ends them) and die
with the sweep's process, however it dies. A lab started by ``torchrun`` trains through
normlab.experiment.executors.torchrun instead.
"""

from __future__ import annotations

import contextlib
import datetime
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from types import TracebackType
from typing import Any

import torch
import torch.distributed as dist

from normlab.data import Dataset, load_dataset
from normlab.experiment.config import RunConfig
from normlab.experiment.executors.contract import check_positive, error_text
from normlab.experiment.executors.lifetime import die_with_parent, starting_worker
from normlab.experiment.train import EpochMetrics, Partition, save_model, train_model, warm_up
from normlab.models.registry import ModelInfo, adopt_models, check_shippable, user_models

TIMEOUT = datetime.timedelta(minutes=10)  # a hung collective fails the run instead of hanging
FAILURE_GRACE = 20.0  # seconds the other ranks get to fail as one rank did, before all end
CAUSE_SECONDS = 1.0  # seconds the other ranks get to report once the group broke
STOP_SECONDS = 30  # seconds the processes get to leave the group at the end of a sweep
HOST = "127.0.0.1"


def same_failure_everywhere(error: Exception) -> bool:
    """Whether ``error`` is one every rank meets at the same point: the run's model or
    options cannot train (a ValueError or TypeError from building or the first step), as
    opposed to a lost peer (a RuntimeError from a collective) or a fault of this process."""
    return isinstance(error, ValueError | TypeError)


Train = Callable[..., tuple[torch.nn.Module, dict[str, Any]]]


def _rank_main(
    rank: int,
    world: int,
    store_port: int,
    threads: int,
    data_dir: str | None,
    models_dir: str | None,
    connection: Connection,
    parent_pid: int,
    train: Train,
    models: Sequence[ModelInfo],
) -> None:
    """One process of the group: train its share of each run the parent sends (a RunConfig
    as a dict) until it sends None or goes away. Rank 0 sends ("epoch", metrics) after each
    epoch; each run ends with ("finished", record) (rank 0's record; None from the others)
    or ("failed", text, whether the group is still whole, time.monotonic()). ``models``
    are the user's registered models, which it starts without."""
    die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent ends the group on Ctrl-C
    adopt_models(models)
    torch.set_num_threads(threads)
    try:
        store = dist.TCPStore(HOST, store_port, world, is_master=False, timeout=TIMEOUT)
        dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=TIMEOUT)
    except Exception as error:
        text = f"rank {rank}: cannot join the process group: {error_text(error)}"
        connection.send(("failed", text, False, time.monotonic()))
        return
    datasets: dict[str, Dataset] = {}
    try:
        while (task := _next_task(connection)) is not None:
            config = RunConfig.from_dict(task)
            try:
                if config.dataset not in datasets:
                    datasets[config.dataset] = load_dataset(config.dataset, data_dir)
                warm_up(config.optimizer)
                report = (
                    (lambda metrics: connection.send(("epoch", metrics))) if rank == 0 else None
                )
                model, record = train(
                    config,
                    datasets[config.dataset],
                    on_epoch=report,
                    partition=Partition(rank, world),
                )
                if rank == 0 and models_dir is not None:
                    save_model(model, config, models_dir, record)
            except Exception as error:
                whole = same_failure_everywhere(error)
                text = f"rank {rank}: {error_text(error)}"
                connection.send(("failed", text, whole, time.monotonic()))
                if not whole:
                    return  # leaving the group fails the peers' collectives now, not at TIMEOUT
                continue
            connection.send(("finished", record if rank == 0 else None))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _next_task(connection: Connection) -> dict[str, Any] | None:
    """The next run the parent sends; None when it says stop or is gone."""
    try:
        return connection.recv()
    except EOFError:
        return None


@dataclass
class _Rank:
    process: BaseProcess
    connection: Connection


@dataclass
class _End:
    """How one rank ended a run: rank 0's record, or its error (with whether the group is
    still whole, and when, by time.monotonic())."""

    record: dict[str, Any] | None = None
    error: str | None = None
    whole: bool = True
    when: float = 0.0


class TrainingGroup:
    """Processes of this machine in one gloo process group, training runs one after another.

    The group starts at the first ``train`` (``config.nproc`` processes of ``threads`` torch
    threads each), trains each later run with the same processes, and starts afresh after a
    run that broke it (see the module docstring) or for a run with another ``nproc``. Use it
    as a context manager, or call ``close``: the processes leave at the end, and are ended
    at once when the block ends by an exception (Ctrl-C included).

    Args:
        threads: torch threads per process.
        data_dir: where the dataset's files are (see normlab.data.load_dataset); each
            process loads the dataset once.
        models_dir: where rank 0 saves each trained model as ``<run_id>.pt``; None saves
            nothing.
    """

    def __init__(
        self,
        *,
        threads: int = 1,
        data_dir: str | None = None,
        models_dir: str | os.PathLike | None = None,
    ) -> None:
        self.threads = check_positive("threads", threads)
        self.data_dir = data_dir
        self.models_dir = None if models_dir is None else str(models_dir)
        self._ranks: list[_Rank] = []
        self._store: dist.TCPStore | None = None  # where the ranks meet; lives with them

    @property
    def pids(self) -> list[int]:
        """The process ids of the ranks, rank 0 first (empty before the first run)."""
        return [rank.process.pid for rank in self._ranks if rank.process.pid is not None]

    def train(
        self, config: RunConfig, *, on_epoch: Callable[[EpochMetrics], None] | None = None
    ) -> dict[str, Any]:
        """Train ``config`` over ``config.nproc`` processes; rank 0's record.

        Raises:
            ValueError: ``config.nproc`` is 1, or its model cannot be handed to the
                processes (see normlab.models.registry.check_shippable).
            RuntimeError: a process failed (its error is in the message) or died.
        """
        if config.nproc < 2:
            raise ValueError(f"run {config.label} trains in one process; use train_model.")
        check_shippable(config.model)
        alive = all(rank.process.is_alive() for rank in self._ranks)
        if len(self._ranks) != config.nproc or not alive:
            self._stop(graceful=alive)
            self._start(config.nproc)
        try:
            for rank in self._ranks:
                with contextlib.suppress(OSError):  # a rank that died fails the run below
                    rank.connection.send(config.to_dict())
            record, error, whole = self._outcome(on_epoch)
        except BaseException:  # Ctrl-C, or on_epoch raised: end the run in flight now
            self._stop(graceful=False)
            raise
        if not whole:
            self._stop(graceful=False)
        if error is not None:
            raise RuntimeError(error)
        assert record is not None
        return record

    def close(self) -> None:
        """Let the processes leave the group and exit (ending those that do not)."""
        self._stop(graceful=True)

    def __enter__(self) -> TrainingGroup:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._stop(graceful=kind is None)

    def _start(self, world: int) -> None:
        context = multiprocessing.get_context("spawn")  # fork after torch has threads can deadlock
        self._store = dist.TCPStore(
            HOST, 0, None, is_master=True, timeout=TIMEOUT, wait_for_workers=False
        )
        for rank in range(world):
            ours, theirs = context.Pipe()
            arguments = (rank, world, self._store.port, self.threads, self.data_dir)
            # The training function travels with the task, so that ranks run what this
            # module names (a test replaces it to make one rank fail or die).
            arguments += (self.models_dir, theirs, os.getpid(), train_model, user_models())
            process = context.Process(target=_rank_main, args=arguments, daemon=True)
            with starting_worker():  # no Ctrl-C before they ignore it, no main script rerun
                process.start()
            theirs.close()
            self._ranks.append(_Rank(process, ours))

    def _outcome(
        self, on_epoch: Callable[[EpochMetrics], None] | None
    ) -> tuple[dict[str, Any] | None, str | None, bool]:
        """Wait for every rank's end of the current run: (rank 0's record, the error that
        failed the run, whether the group is still whole)."""
        world = len(self._ranks)
        ended: dict[int, _End] = {}
        while len(ended) < world:
            failed = [end for end in ended.values() if end.error is not None]
            timeout = None
            if failed:  # every rank fails at once, or a peer waits in a collective
                timeout = max(
                    0.0, min(end.when for end in failed) + FAILURE_GRACE - time.monotonic()
                )
            waiting = [self._ranks[r].connection for r in range(world) if r not in ended]
            if not wait(waiting + [rank.process.sentinel for rank in self._ranks], timeout):
                first = min(failed, key=lambda end: end.when).error
                return None, f"{first} (the other processes did not fail with it)", False
            self._read(ended, on_epoch)
            if self._died(ended) or not all(end.whole for end in ended.values()):
                return None, self._cause(ended, on_epoch), False
        errors = [ended[r].error for r in range(world) if ended[r].error is not None]
        if errors:
            return None, errors[0], True
        return ended[0].record, None, True

    def _read(
        self, ended: dict[int, _End], on_epoch: Callable[[EpochMetrics], None] | None
    ) -> None:
        """Take in what the ranks that have not ended the run have sent, without waiting."""
        for number, rank in enumerate(self._ranks):
            while number not in ended and _readable(rank.connection):
                try:
                    kind, *payload = rank.connection.recv()
                except (EOFError, OSError):  # it died; its exit code tells
                    break
                if kind == "epoch":
                    if on_epoch is not None:
                        on_epoch(payload[0])
                elif kind == "finished":
                    ended[number] = _End(record=payload[0])
                else:
                    error, whole, when = payload
                    ended[number] = _End(error=error, whole=whole, when=when)

    def _cause(
        self, ended: dict[int, _End], on_epoch: Callable[[EpochMetrics], None] | None
    ) -> str:
        """Why the run failed once the group broke: a rank that died, else the first failure
        (a rank that fails alone leaves the group, and its peers' collectives fail after
        it). The others get ``CAUSE_SECONDS`` to report."""
        deadline = time.monotonic() + CAUSE_SECONDS
        while (died := self._died(ended)) is None and time.monotonic() < deadline:
            open_ranks = [self._ranks[r] for r in range(len(self._ranks)) if r not in ended]
            if not open_ranks:
                break
            handles = [rank.connection for rank in open_ranks]
            wait(
                handles + [rank.process.sentinel for rank in open_ranks],
                deadline - time.monotonic(),
            )
            self._read(ended, on_epoch)
        if died is not None:
            return died
        failed = [end for end in ended.values() if end.error is not None]
        return min(failed, key=lambda end: end.when).error

    def _died(self, ended: dict[int, _End]) -> str | None:
        """Why the run failed when a rank has died (ended, or exited before it reported the
        end of the run); else None. A rank that failed alone reports, then exits with 0."""
        for number, rank in enumerate(self._ranks):
            code = rank.process.exitcode
            if code not in (None, 0) or (code == 0 and number not in ended):
                return (
                    f"a process of the {len(self._ranks)}-process run died (rank {number}, "
                    f"exit code {rank.process.exitcode}: killed, or out of memory)"
                )
        return None

    def _stop(self, graceful: bool) -> None:
        """Let the processes leave (``graceful``) or end them now."""
        for rank in self._ranks:
            if graceful:
                with contextlib.suppress(OSError):
                    rank.connection.send(None)
            elif rank.process.is_alive():
                rank.process.terminate()
        for rank in self._ranks:
            rank.process.join(STOP_SECONDS if graceful else None)
            if rank.process.is_alive():
                rank.process.kill()
                rank.process.join()
            rank.connection.close()
        self._ranks = []
        self._store = None


def train_distributed(
    config: RunConfig,
    data_dir: str | None,
    *,
    threads: int = 1,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
    models_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Train ``config`` over ``config.nproc`` processes of a group of its own (see
    TrainingGroup, which keeps one for many runs); rank 0's record.

    Raises:
        RuntimeError: a process failed (its error is in the message) or died.
    """
    with TrainingGroup(threads=threads, data_dir=data_dir, models_dir=models_dir) as group:
        return group.train(config, on_epoch=on_epoch)


def _readable(connection: Connection) -> bool:
    try:
        return connection.poll(0)
    except (EOFError, OSError):
        return False


def torchrun_rank() -> tuple[int, int]:
    """(rank, world size) of this process under ``torchrun``; (0, 1) otherwise."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
