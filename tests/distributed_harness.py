"""Run a function in W gloo processes on this machine and collect what each one saved.

Used by tests that need a real ``torch.distributed`` process group (CPU, gloo):

    results = run_in_process_group(work, world_size=2, args=(...,), tmp_dir=tmp_path)

``work(rank, world_size, *args)`` runs in every process inside an initialized
process group and returns a dict (nested dicts, lists and tuples of tensors,
numbers and strings: what ``torch.load(weights_only=True)`` reads back). It must
be defined at module level so that the spawned processes can import it.

A failure in any process, or a hang, fails the caller within ``timeout``
seconds with the failing processes' tracebacks instead of stalling the run.
"""

from __future__ import annotations

import datetime
import multiprocessing
import os
import pathlib
import socket
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

#: seconds before a run of processes counts as hung and is killed
DEFAULT_TIMEOUT = 120.0
#: seconds a collective may wait inside the group before it raises
COLLECTIVE_TIMEOUT = datetime.timedelta(seconds=60)
#: seconds the other processes get to finish once one has failed, before they are killed
FAILURE_GRACE = 3.0


class DistributedRunError(AssertionError):
    """A process of the group failed, exited without a result, or the run timed out."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _entry(
    rank: int,
    world_size: int,
    port: int,
    out_dir: str,
    work: Callable[..., dict[str, Any]],
    args: tuple[Any, ...],
) -> None:
    """Body of one spawned process: init the group, run ``work``, save its result or traceback."""
    out = pathlib.Path(out_dir)
    try:
        torch.set_num_threads(1)
        dist.init_process_group(
            "gloo",
            rank=rank,
            world_size=world_size,
            init_method=f"tcp://127.0.0.1:{port}",
            timeout=COLLECTIVE_TIMEOUT,  # a stuck collective raises instead of hanging
        )
        try:
            result = work(rank, world_size, *args)
            # write then rename, so the parent never reads half a file
            torch.save(result, out / f"result-{rank}.pt.tmp")
            os.replace(out / f"result-{rank}.pt.tmp", out / f"result-{rank}.pt")
        finally:
            dist.destroy_process_group()
    except BaseException:
        (out / f"traceback-{rank}.txt").write_text(traceback.format_exc())
        raise SystemExit(1) from None


def _tracebacks(out: pathlib.Path, world_size: int) -> str:
    texts = []
    for rank in range(world_size):
        path = out / f"traceback-{rank}.txt"
        if path.exists():
            texts.append(f"--- rank {rank} ---\n{path.read_text()}")
    return "\n".join(texts)


def _stop(processes: list[multiprocessing.process.BaseProcess]) -> None:
    for process in processes:
        if process.is_alive():
            process.kill()
    for process in processes:
        process.join(timeout=10)


def run_in_process_group(
    work: Callable[..., dict[str, Any]],
    world_size: int,
    args: tuple[Any, ...],
    tmp_dir: pathlib.Path,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    attempts: int = 3,
) -> list[dict[str, Any]]:
    """Run ``work(rank, world_size, *args)`` in ``world_size`` gloo processes; their results.

    Raises DistributedRunError with every failing process's traceback as soon as one
    process fails (the others are killed: they would wait on it in a collective), when
    a process exits without a result, or when the run takes more than ``timeout``
    seconds. A port taken between choosing and binding it is retried with a new one.
    """
    for attempt in range(attempts):
        out = pathlib.Path(tmp_dir) / f"run-{attempt}"
        out.mkdir(parents=True)
        try:
            return _run_once(work, world_size, args, out, timeout)
        except DistributedRunError as error:
            port_taken = "address already in use" in str(error).lower()
            if not port_taken or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def _run_once(
    work: Callable[..., dict[str, Any]],
    world_size: int,
    args: tuple[Any, ...],
    out: pathlib.Path,
    timeout: float,
) -> list[dict[str, Any]]:
    context = multiprocessing.get_context("spawn")
    port = free_port()
    processes = [
        context.Process(
            target=_entry,
            args=(rank, world_size, port, str(out), work, args),
            name=f"{getattr(work, '__name__', 'work')}-rank{rank}",
            daemon=True,
        )
        for rank in range(world_size)
    ]
    for process in processes:
        process.start()
    deadline = time.monotonic() + timeout
    try:
        while True:
            codes = [process.exitcode for process in processes]
            failed = [rank for rank, code in enumerate(codes) if code not in (None, 0)]
            if failed:
                # The others usually fail too within moments (a peer's connection closes);
                # give them a little time so that every traceback can be reported.
                grace = time.monotonic() + FAILURE_GRACE
                while time.monotonic() < grace and any(p.is_alive() for p in processes):
                    time.sleep(0.02)
                codes = [process.exitcode for process in processes]
                failed = [rank for rank, code in enumerate(codes) if code not in (None, 0)]
                raise DistributedRunError(
                    f"{world_size} gloo processes: rank(s) {failed} exited with code(s) "
                    f"{[codes[rank] for rank in failed]}.\n{_tracebacks(out, world_size)}"
                )
            if all(code == 0 for code in codes):
                break
            if time.monotonic() > deadline:
                running = [rank for rank, code in enumerate(codes) if code is None]
                raise DistributedRunError(
                    f"{world_size} gloo processes did not finish within {timeout:.0f} s "
                    f"(rank(s) {running} still running, killed): a collective probably "
                    f"hangs.\n{_tracebacks(out, world_size)}"
                )
            time.sleep(0.02)
    finally:
        _stop(processes)
    results = []
    for rank in range(world_size):
        path = out / f"result-{rank}.pt"
        if not path.exists():
            raise DistributedRunError(f"rank {rank} exited with code 0 but saved no result.")
        results.append(torch.load(path, weights_only=True))
    return results
