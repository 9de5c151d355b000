"""Runs trained data-parallel over several processes, with torch.distributed.

``train_distributed`` spawns ``config.nproc`` processes on this machine
(``normlab compare --nproc N``), joined in a gloo process group. Every
process builds the same seeded model, wraps it in DistributedDataParallel
and trains its share of each global batch (see ``Partition``); batch norm is
per process, as DDP leaves it, or synchronized with ``config.sync_bn``. Rank
0's record comes back; only the parent writes results.

``run_under_torchrun`` is the same for a lab started by ``torchrun`` (one
machine or several): torchrun's processes train every run together and rank
0 writes. The lab trains on the CPU, so the group is gloo.
"""

from __future__ import annotations

import datetime
import multiprocessing
import os
import queue
import socket
import traceback
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from normlab.data import load_dataset
from normlab.experiment.config import RunConfig
from normlab.experiment.train import EpochMetrics, Partition, save_model, train_model, warm_up

TIMEOUT = datetime.timedelta(minutes=10)  # a hung collective fails the run instead of hanging


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _rank_main(
    rank: int,
    config_data: dict[str, Any],
    data_dir: str | None,
    threads: int,
    port: int,
    models_dir: str | None,
    results: Any,
) -> None:
    """One process of the run: train its shares, rank 0 reports epochs and the record."""
    try:
        torch.set_num_threads(threads)
        config = RunConfig.from_dict(config_data)
        dist.init_process_group(
            "gloo",
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=config.nproc,
            timeout=TIMEOUT,
        )
        data = load_dataset(config.dataset, data_dir)
        warm_up(config.optimizer)

        def report(metrics: EpochMetrics) -> None:
            if rank == 0:
                results.put(("epoch", metrics))

        model, record = train_model(
            config, data, on_epoch=report, partition=Partition(rank, config.nproc)
        )
        if rank == 0:
            if models_dir is not None:
                save_model(model, config, models_dir, record)
            results.put(("record", record))
    except Exception as error:  # reported to the parent, which stops the other processes
        results.put(("error", f"rank {rank}: {traceback.format_exception_only(error)[-1].strip()}"))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def train_distributed(
    config: RunConfig,
    data_dir: str | None,
    *,
    threads: int = 1,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
    models_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Train ``config`` over ``config.nproc`` processes of this machine; rank 0's record.

    Raises:
        RuntimeError: a process failed (its error is in the message) or died.
    """
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    port = _free_port()
    arguments = (config.to_dict(), data_dir, threads, port, _path(models_dir), results)
    processes = [
        context.Process(target=_rank_main, args=(rank, *arguments), daemon=True)
        for rank in range(config.nproc)
    ]
    for process in processes:
        process.start()
    try:
        while True:
            try:
                kind, payload = results.get(timeout=0.5)
            except queue.Empty:
                dead = [p for p in processes if p.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(
                        f"a process of the {config.nproc}-process run died "
                        f"(exit code {dead[0].exitcode})"
                    ) from None
                continue
            if kind == "epoch" and on_epoch is not None:
                on_epoch(payload)
            elif kind == "error":
                raise RuntimeError(payload)
            elif kind == "record":
                return payload
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()


def _path(directory: str | os.PathLike | None) -> str | None:
    return None if directory is None else str(directory)


def torchrun_rank() -> tuple[int, int]:
    """(rank, world size) of this process under ``torchrun``; (0, 1) otherwise."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def run_under_torchrun(
    runs: list[RunConfig],
    store: Any,
    data_dir: str | None,
    listener: Any,
    outcome: Any,
    models_dir: str | os.PathLike | None,
) -> None:
    """Train ``runs`` with every process of a ``torchrun`` launch, one run at a time.

    Each process trains its share of every run (``Partition(rank, world)``);
    rank 0 decides which runs are pending (the other machines may not see its
    files), reports progress and writes the records and models.
    """
    from normlab.experiment.sweep import _finish  # the sweep module imports this one

    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=TIMEOUT)  # the lab trains on the CPU
    rank, world = dist.get_rank(), dist.get_world_size()
    finished = [sorted(store.finished_ids())] if rank == 0 else [None]
    dist.broadcast_object_list(finished, src=0)
    pending = [config for config in runs if config.run_id not in set(finished[0])]
    outcome.skipped = len(runs) - len(pending)
    data = load_dataset(pending[0].dataset, data_dir) if pending else None
    for config in pending:
        if rank == 0:
            listener.run_started(config)
        model, record = train_model(
            config,
            data,
            on_epoch=(lambda metrics, c=config: listener.epoch_done(c, metrics))
            if rank == 0
            else None,
            partition=Partition(rank, world),
        )
        if rank == 0:
            if models_dir is not None:
                save_model(model, config, models_dir, record)
            _finish(config, record, store, listener, outcome)
