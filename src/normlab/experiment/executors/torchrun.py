"""The torchrun executor: this process is one of a ``torchrun`` launch, and every process of
the launch trains its share of every run (``Partition(rank, world)``), one run at a time.

Rank 0 decides which runs are pending (the other machines may not see its files), reports
progress and writes the records and models. The group is gloo: the lab trains on the CPU.

Failures: a run that raises on every rank at the same point (a configuration that cannot
train) is recorded as failed and the launch goes on to the next run. A rank that fails
alone, or dies, leaves its peers inside a collective that can never complete: the failing
rank closes its connections so that its peers' collectives fail at once instead of
waiting for the group's timeout, and torchrun ends the launch; the runs finished before
are on disk and the same command resumes.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

import torch
import torch.distributed as dist

from normlab.data import load_dataset
from normlab.experiment.config import RunConfig
from normlab.experiment.executors.contract import Executor, RunSink, check_positive, error_text
from normlab.experiment.store import ResultsStore
from normlab.experiment.train import Partition, save_model, train_model

TIMEOUT = datetime.timedelta(minutes=10)  # the longest a rank may wait for its peers' step


class TorchrunExecutor(Executor):
    """Train runs with every process of the ``torchrun`` launch this process belongs to.

    Args:
        threads: torch threads per process; None keeps torchrun's setting (OMP_NUM_THREADS).
        data_dir: where the dataset's files are on each machine.
        models_dir: where rank 0 saves each trained model as ``<run_id>.pt``; None saves nothing.
    """

    # Every rank takes part in the sweep, and ranks on other machines see no files.
    locks_store = False

    def __init__(
        self,
        *,
        threads: int | None = None,
        data_dir: str | None = None,
        models_dir: str | os.PathLike | None = None,
    ) -> None:
        self.threads = None if threads is None else check_positive("threads", threads)
        self.data_dir = data_dir
        self.models_dir = models_dir

    def _join(self) -> tuple[int, int]:
        if not dist.is_initialized():
            dist.init_process_group("gloo", timeout=TIMEOUT)  # the lab trains on the CPU
        return dist.get_rank(), dist.get_world_size()

    def pending(self, runs: list[RunConfig], store: ResultsStore) -> list[RunConfig]:
        rank, _ = self._join()
        finished = [sorted(store.finished_ids())] if rank == 0 else [None]
        dist.broadcast_object_list(finished, src=0)
        done = set(finished[0])
        return [config for config in runs if config.run_id not in done]

    def run(self, todo: list[RunConfig], sink: RunSink) -> None:
        rank, world = self._join()
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        data = load_dataset(todo[0].dataset, self.data_dir)
        for config in todo:
            if rank == 0:
                sink.started(config)
            record, error = self._train(config, data, sink, rank, world)
            errors: list[Any] = [None] * world
            dist.all_gather_object(errors, error)  # every rank reaches this only if all did
            failed = [text for text in errors if text is not None]
            if rank != 0:
                continue
            if failed:
                sink.failed(config, failed[0])
            else:
                sink.finished(config, record)

    def _train(
        self, config: RunConfig, data: Any, sink: RunSink, rank: int, world: int
    ) -> tuple[dict[str, Any] | None, str | None]:
        try:
            model, record = train_model(
                config,
                data,
                on_epoch=(lambda metrics: sink.epoch(config, metrics)) if rank == 0 else None,
                partition=Partition(rank, world),
            )
            if rank == 0 and self.models_dir is not None:
                save_model(model, config, self.models_dir, record)
        except Exception as error:
            if not _same_failure_everywhere(error):
                dist.destroy_process_group()  # the peers' collectives fail now, not at TIMEOUT
                raise
            return None, f"rank {rank}: {error_text(error)}"
        return record, None


def _same_failure_everywhere(error: Exception) -> bool:
    """Whether ``error`` is one every rank meets at the same point: the run's model or
    options cannot train (a ValueError or TypeError from building or the first step), as
    opposed to a lost peer (a RuntimeError from a collective) or a fault of this process."""
    return isinstance(error, ValueError | TypeError)
