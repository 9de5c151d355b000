"""Running a sweep's runs as Ray tasks: on this machine, or across a cluster of machines.

``normlab compare --executor ray`` trains each run as one Ray task that
holds ``--threads`` CPUs (times ``--nproc``), so a cluster trains as many runs
at once as its CPUs allow; the same thread count gives the same numbers as
``--jobs``. As with the process pool, each record is appended to the
results store by this process (the driver) as soon as its run finishes, a
run that raises is reported and the sweep goes on, and Ctrl-C cancels the
runs in flight (the next start of the same sweep redoes them).

Ray is optional: ``pip install 'normlab[ray]'`` (or ``pip install ray``).

Without ``--address``, Ray starts a private cluster on this machine (all its
cores, no dashboard) and stops it when the sweep ends. To use several
machines, start a cluster once and point the sweep at it::

    # on the head machine
    ray start --head
    # on every other machine (HEAD is the head's host name or IP address)
    ray start --address=HEAD:6379
    # then, on any machine of the cluster
    normlab compare --executor ray --address auto ...
    # or from a machine outside the cluster, through Ray Client
    # (needs pip install 'ray[client]' there and on the head)
    normlab compare --executor ray --address ray://HEAD:10001 ...

Every machine of the cluster needs the same Python with normlab (and the same
torch) installed, since the tasks import it there. Each task loads its data
set from ``--data-dir`` on the machine it runs on, so on a multi-machine
cluster the files must be at the same absolute path on every machine (a
shared file system, or a copy at the same place); the built-in ``digits``
needs no files. Trained models (``models/<run_id>.pt``) are sent back and
saved by the driver, so they need no shared file system. ``ray stop`` on each
machine ends the cluster; a sweep only disconnects from a cluster it did not
start. From Python, ``RayExecutor`` uses the cluster this process already
joined with ``ray.init`` if there is one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from normlab.data import Dataset
from normlab.experiment.config import RunConfig
from normlab.experiment.executors.contract import (
    Executor,
    RunSink,
    available_cores,
    check_positive,
    error_text,
)
from normlab.experiment.executors.training import cached_dataset, train_one
from normlab.experiment.train import EpochMetrics, save_model_bytes, warm_up

POLL_SECONDS = 0.1

INSTALL_MESSAGE = "`executor` ray needs Ray: pip install 'normlab[ray]' (or pip install ray)"


class RayNotInstalledError(ImportError, ValueError):
    """Ray is not installed. Also a ValueError, so the CLI reports it as a usage error."""


def require_ray() -> ModuleType:
    """The ``ray`` module.

    Raises:
        RayNotInstalledError: Ray is not installed; the message says how to install it.
    """
    try:
        import ray
    except ImportError:
        raise RayNotInstalledError(INSTALL_MESSAGE) from None
    return ray


class RayExecutor(Executor):
    """Train each run as a Ray task; the driver (this process) appends each record as it
    finishes.

    Records are appended in the order runs finish; a run that raises, or whose worker dies,
    is failed and the sweep goes on (a dead worker's run is not retried: a retry would
    announce its start twice; running the sweep again redoes it); the sink hears each run's
    start and epochs (start first) before its end.

    Args:
        threads: torch threads per run; a run's task holds ``threads`` CPUs
            (``threads * nproc`` for a run over ``nproc`` processes).
        address: the Ray cluster to use ("auto", "HOST:6379" or "ray://HOST:10001");
            None uses the one this process is already connected to, or else starts a
            private one on this machine for the sweep (``RAY_ADDRESS`` is not consulted).
            A cluster the executor started is shut down when ``run`` returns or raises;
            any other is left running.
        data_dir: where the dataset's files are on the machine each task runs on (made
            absolute here); None searches the usual caches there.
        models_dir: where this process saves each trained model as ``<run_id>.pt``; None
            saves nothing.

    Raises:
        RayNotInstalledError: Ray is not installed.
    """

    def __init__(
        self,
        *,
        threads: int = 1,
        address: str | None = None,
        data_dir: str | None = None,
        models_dir: str | os.PathLike | None = None,
    ) -> None:
        self.ray = require_ray()
        self.threads = check_positive("threads", threads)
        self.address = address
        self.data_dir = data_dir
        self.models_dir = models_dir

    def run(self, todo: list[RunConfig], sink: RunSink, data: Dataset | None = None) -> None:
        """Train ``todo`` on the cluster. Each Ray worker process loads the dataset from
        ``data_dir`` (once), since the cluster's machines do not share this one's memory;
        ``data`` goes unused.

        Raises:
            ValueError: no node of the cluster has the CPUs a run needs, or the cluster at
                ``address`` cannot be reached.
            KeyboardInterrupt: on Ctrl-C, after cancelling the runs in flight.
        """
        ray = self.ray
        cpus = {config.run_id: self.threads * config.nproc for config in todo}
        connected_here = not ray.is_initialized()
        events = None
        waiting: dict[Any, RunConfig] = {}
        completed = False
        try:
            if connected_here:
                _start_ray(ray, self.address, max(cpus.values()))
            _check_cpus_fit(ray, max(cpus.values()))
            from ray.util.queue import Queue

            events = Queue(actor_options={"num_cpus": 0})
            train = ray.remote(max_retries=0)(_train_on_worker)
            data_dir = self.data_dir
            remote_dir = None if data_dir is None else os.path.abspath(os.path.expanduser(data_dir))
            keep_models = self.models_dir is not None
            for config in todo:
                ref = train.options(num_cpus=cpus[config.run_id]).remote(
                    config.to_dict(), remote_dir, self.threads, events, keep_models
                )
                waiting[ref] = config
            by_id = {config.run_id: config for config in todo}
            while waiting:
                ready, _ = ray.wait(list(waiting), num_returns=1, timeout=POLL_SECONDS)
                _pass_queued_events(events, by_id, sink)  # a run's start and epochs come first
                for ref in ready:
                    config = waiting.pop(ref)
                    try:
                        record, model_bytes = ray.get(ref)
                    except ray.exceptions.RayTaskError as error:
                        sink.failed(config, _task_error_text(error))
                        continue
                    except ray.exceptions.RayError as error:
                        sink.failed(config, _lost_worker_text(error))
                        continue
                    if model_bytes is not None and self.models_dir is not None:
                        save_model_bytes(model_bytes, config, self.models_dir, record)
                    sink.finished(config, record)
            completed = True
        finally:
            # Clean-up must not hide the error (or Ctrl-C) that brought us here, nor be cut
            # short by a second Ctrl-C (Ray can deliver one Ctrl-C as two KeyboardInterrupts).
            with _ctrl_c_held(reraise=completed):
                if not completed:
                    for ref in waiting:
                        with contextlib.suppress(Exception):
                            ray.cancel(ref, force=True)
                if events is not None:
                    with contextlib.suppress(Exception):
                        events.shutdown(force=True)
                if connected_here:
                    ray.shutdown()


def _start_ray(ray: ModuleType, address: str | None, cpus: int) -> None:
    """Start a private Ray cluster on this machine (``address`` None) or connect to ``address``;
    ``cpus`` is the most a run needs."""
    quiet = {"log_to_driver": False, "configure_logging": False}
    if address is None:
        cores = available_cores()
        if cpus > cores:
            raise ValueError(
                f"a run needs {cpus} CPUs (`threads`, times `nproc`) but this machine has "
                f"{cores} cores; lower `threads` (or `nproc`), or use a cluster (`address`)."
            )
        with _ray_warnings_hidden():  # e.g. "token authentication is enabled": Ray's business
            ray.init(address="local", num_cpus=cores, include_dashboard=False, **quiet)
        return
    try:
        ray.init(address=address, **quiet)
    except ConnectionError as error:
        raise ValueError(
            f"cannot reach a Ray cluster at `address` {address}: {error} Start one with "
            "`ray start --head` (see normlab.experiment.executors.ray_tasks), or leave out "
            "`address` to run on this machine."
        ) from None


@contextlib.contextmanager
def _ctrl_c_held(reraise: bool) -> Iterator[None]:
    """Hold off Ctrl-C (SIGINT) inside the block; afterwards raise KeyboardInterrupt for one
    that came, if ``reraise`` (otherwise one is on its way up already). Only the main thread
    receives signals; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    came: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: came.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if came and reraise:
        raise KeyboardInterrupt


@contextlib.contextmanager
def _ray_warnings_hidden() -> Iterator[None]:
    """Hide the warnings Ray logs while it starts a private cluster (configure_logging=False
    leaves them to Python's last-resort handler, which writes them over the progress bars)."""
    ray_logger = logging.getLogger("ray")
    level = ray_logger.level
    ray_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        ray_logger.setLevel(level)


def _check_cpus_fit(ray: ModuleType, cpus: int) -> None:
    """Fail, instead of waiting forever, when no node of the cluster has ``cpus`` CPUs."""
    largest = max(
        (node["Resources"].get("CPU", 0) for node in ray.nodes() if node["Alive"]), default=0
    )
    if cpus > largest:
        raise ValueError(
            f"a run needs {cpus} CPUs (`threads`, times `nproc`) but the largest node of the "
            f"Ray cluster has {largest:g}; lower `threads` (or `nproc`), or add a larger node."
        )


def _train_on_worker(
    config_data: dict[str, Any],
    data_dir: str | None,
    threads: int,
    events: Any,
    keep_model: bool,
) -> tuple[dict[str, Any], bytes | None]:
    """The Ray task: train one run; return its record and, if asked, its saved state_dict.

    Progress goes to ``events`` (a ray.util.queue.Queue) as ("started" | "epoch",
    run_id, metrics); each put returns only once queued, so they arrive in order
    and before the task's result.
    """
    torch.set_num_threads(threads)
    config = RunConfig.from_dict(config_data)
    data = cached_dataset(config.dataset, data_dir)  # once per worker process
    warm_up(config.optimizer)
    events.put(("started", config.run_id, None))

    def on_epoch(metrics: EpochMetrics) -> None:
        events.put(("epoch", config.run_id, metrics))

    if not keep_model:
        return train_one(config, data, on_epoch, None, data_dir, threads), None
    with tempfile.TemporaryDirectory(prefix="normlab-model-") as scratch:
        record = train_one(config, data, on_epoch, scratch, data_dir, threads)
        return record, (Path(scratch) / f"{config.run_id}.pt").read_bytes()


def _pass_queued_events(events: Any, by_id: dict[str, RunConfig], sink: RunSink) -> None:
    """Pass every task event already queued to the sink, without waiting for more."""
    count = events.qsize()
    if not count:
        return
    for kind, run_id, metrics in events.get_nowait_batch(count):  # only this process takes
        if kind == "started":
            sink.started(by_id[run_id])
        else:
            sink.epoch(by_id[run_id], metrics)


def _task_error_text(error: BaseException) -> str:
    """The exception a task raised, as ``Type: message`` on one line."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException):
        return error_text(cause)
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _lost_worker_text(error: BaseException) -> str:
    """A run whose worker (or node) died, or that was cancelled: what happened, on one line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    detail = f": {lines[0]}" if lines else ""
    return (
        f"the Ray worker training it died or was stopped ({type(error).__name__}{detail}); "
        "run the sweep again to redo this run"
    )
