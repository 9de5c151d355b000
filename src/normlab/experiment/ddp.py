"""Runs trained data-parallel over several processes, with torch.distributed.

``train_distributed`` spawns ``config.nproc`` processes on this machine
(``normlab compare --nproc N``), joined in a gloo process group. Every
process builds the same seeded model, wraps it in DistributedDataParallel
and trains its share of each global batch (see ``Partition``); batch norm is
per process, as DDP leaves it, or synchronized with ``config.sync_bn``. Rank
0's record comes back; only the parent writes results.

A process that fails or dies fails the run at once: the others are ended,
never left waiting in a collective. A lab started by ``torchrun`` trains
through normlab.experiment.executors.torchrun instead.
"""

from __future__ import annotations

import datetime
import multiprocessing
import os
import queue
import signal
import socket
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from normlab.data import load_dataset
from normlab.experiment.config import RunConfig
from normlab.experiment.executors.contract import error_text
from normlab.experiment.executors.lifetime import ctrl_c_blocked, die_with_parent
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
    parent_pid: int,
) -> None:
    """One process of the run: train its shares, rank 0 reports epochs and the record."""
    die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent ends the run on Ctrl-C
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
        results.put(("error", f"rank {rank}: {error_text(error)}"))
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
    arguments = (config.to_dict(), data_dir, threads, port, _path(models_dir), results, os.getpid())
    processes = [
        context.Process(target=_rank_main, args=(rank, *arguments), daemon=True)
        for rank in range(config.nproc)
    ]
    with ctrl_c_blocked():  # a Ctrl-C must not reach them before they ignore it
        for process in processes:
            process.start()
    returned = False
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
                returned = True
                return payload
    finally:
        # After a failure the others may wait in a collective for the failed one: end them now.
        for process in processes:
            if returned:
                process.join(timeout=30)
            if process.is_alive():
                process.terminate()
            process.join()


def _path(directory: str | os.PathLike | None) -> str | None:
    return None if directory is None else str(directory)


def torchrun_rank() -> tuple[int, int]:
    """(rank, world size) of this process under ``torchrun``; (0, 1) otherwise."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
