"""The torchrun executor: this process is one of a ``torchrun`` launch, and every process of
the launch trains its share of every run (``Partition(rank, world)``), one run at a time.

Rank 0 decides which runs are pending (the other machines may not see its files), reports
progress and writes the records and models. The group is gloo: the lab trains on the CPU.

Failures: a run that raises on every rank at the same point (a configuration that cannot
train) is reported failed and the launch goes on to the next run. A rank that fails
alone, or dies, leaves its peers inside a collective that can never complete: the failing
rank closes its connections so that its peers' collectives fail at once instead of
waiting for the group's timeout, and every process of the launch exits. torchrun then
restarts the launch if ``--max-restarts`` allows: before each run rank 0 writes which run
it starts to ``OUT/.normlab-torchrun.json``, so the restarted launch reports that run
failed, does not train it again, and goes on with the rest. Without a restart left the
launch ends; the runs finished before are on disk, and the same command resumes (and
retries the run, as a rerun retries every failed run).

A process of the launch dies with its torchrun agent, however the agent dies (SIGKILL
included, which gives it no chance to stop them): orphaned, it would train on for minutes,
writing into the results directory and holding its lock.
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from normlab.data import Dataset, load_dataset
from normlab.experiment.config import RunConfig
from normlab.experiment.ddp import same_failure_everywhere
from normlab.experiment.executors.contract import Executor, RunSink, check_positive, error_text
from normlab.experiment.executors.lifetime import die_with_parent
from normlab.experiment.store import ResultsStore
from normlab.experiment.train import Partition, save_model, train_model

TIMEOUT = datetime.timedelta(minutes=10)  # the longest a rank may wait for its peers' step
LAUNCH_FILE = ".normlab-torchrun.json"  # rank 0's account of this launch's runs


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
        if "TORCHELASTIC_RUN_ID" in os.environ:  # started by a torchrun agent, our parent
            die_with_parent(os.getppid())
        self.data_dir = data_dir
        self.models_dir = models_dir
        self._launch: LaunchAccount | None = None  # rank 0's, once pending() has run
        self._failed_before: dict[str, str] = {}  # run id -> why, from earlier attempts
        self._owns_group = False  # whether this executor started the process group

    def _join(self) -> tuple[int, int]:
        if not dist.is_initialized():
            _init_group()
            self._owns_group = True
        return dist.get_rank(), dist.get_world_size()

    def pending(self, runs: list[RunConfig], store: ResultsStore) -> list[RunConfig]:
        rank, _ = self._join()
        shared: list[Any] = [None]
        if rank == 0:
            finished = store.finished_ids()
            self._launch = LaunchAccount(store.directory / LAUNCH_FILE)
            shared = [(sorted(finished), self._launch.failed_runs(finished))]
        dist.broadcast_object_list(shared, src=0)
        done, self._failed_before = set(shared[0][0]), shared[0][1]
        return [config for config in runs if config.run_id not in done]

    def run(self, todo: list[RunConfig], sink: RunSink, data: Dataset | None = None) -> None:
        rank, world = self._join()
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        if data is None:  # each rank's own copy
            data = load_dataset(todo[0].dataset, self.data_dir)
        for config in todo:
            if config.run_id in self._failed_before:  # in an earlier attempt of this launch
                if rank == 0:
                    sink.failed(config, self._failed_before[config.run_id])
                continue
            if rank == 0:
                assert self._launch is not None
                self._launch.starting(config.run_id)
                sink.started(config)
            record, error = self._train(config, data, sink, rank, world)
            errors: list[Any] = [None] * world
            dist.all_gather_object(errors, error)  # every rank reaches this only if all did
            failed = [text for text in errors if text is not None]
            if rank != 0:
                continue
            if failed:
                assert self._launch is not None
                self._launch.failed(config.run_id, failed[0])
                sink.failed(config, failed[0])
            else:
                sink.finished(config, record)
        if self._owns_group:
            dist.barrier()  # no process leaves while a peer still talks to it
            dist.destroy_process_group()

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
            if not same_failure_everywhere(error):
                if rank == 0:
                    assert self._launch is not None
                    self._launch.lost(f"rank 0: {error_text(error)}")
                dist.destroy_process_group()  # the peers' collectives fail now, not at TIMEOUT
                raise
            return None, f"rank {rank}: {error_text(error)}"
        return record, None


def _init_group() -> None:
    """Join the launch's gloo group (the lab trains on the CPU).

    Under a torchrun agent the group meets in the agent's store under a prefix for each
    restart of the launch: the previous attempt's addresses stay in that store, and a
    restarted group would otherwise try to reach its dead processes.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        dist.init_process_group("gloo", timeout=TIMEOUT)
        return
    world = int(os.environ["WORLD_SIZE"])
    agent_store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        world,
        is_master=False,
        timeout=TIMEOUT,
    )
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    store = dist.PrefixStore(f"normlab/attempt_{restart}", agent_store)
    rank = int(os.environ["RANK"])
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=TIMEOUT)


class LaunchAccount:
    """Rank 0's record, in ``path``, of the runs of this torchrun launch that failed and
    of the run it is training, kept across torchrun's restarts of the launch
    (``TORCHELASTIC_RUN_ID`` names the launch, ``TORCHELASTIC_RESTART_COUNT`` counts its
    restarts).

    A restarted attempt does not train again a run that failed in an earlier attempt,
    whether it raised on every rank or a process died while training it (the run that
    was current when the attempt ended). A new launch (a new command) starts a new
    account, so a rerun retries them, as it retries every failed run.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.launch = os.environ.get("TORCHELASTIC_RUN_ID", "")
        self.restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
        self.state: dict[str, Any] = {"launch": self.launch, "failed": {}, "current": None}
        if self.restart > 0 and self.launch:
            earlier = self._read()
            if earlier.get("launch") == self.launch:
                self.state = earlier

    def _read(self) -> dict[str, Any]:
        try:
            state = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return state if isinstance(state, dict) else {}

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.state))
        temporary.replace(self.path)  # whole or absent, whenever the process dies

    def failed_runs(self, finished: set[str]) -> dict[str, str]:
        """Run id -> why, for each run that failed in an earlier attempt of this launch."""
        current = self.state.get("current")
        if current is not None and current not in finished:
            seen = self.state.get("lost")
            self.failed(
                current,
                "a process of the torchrun launch died while training this run"
                + (f" ({seen})" if seen else "")
                + f"; torchrun restarted the launch (restart {self.restart}) without it",
            )
        return dict(self.state["failed"])

    def starting(self, run_id: str) -> None:
        self.state.update(current=run_id, lost=None)
        self._write()

    def lost(self, why: str) -> None:
        """What rank 0 saw of the failure that ends this attempt (a peer's closed
        connection, its own fault)."""
        self.state["lost"] = why
        self._write()

    def failed(self, run_id: str, why: str) -> None:
        self.state["failed"][run_id] = why
        self.state.update(current=None, lost=None)
        self._write()
