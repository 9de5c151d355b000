"""The in-process executor: the sweep's own process trains one run after another."""

from __future__ import annotations

import functools
import os

import torch

from normlab.experiment.config import RunConfig
from normlab.experiment.executors.contract import Executor, RunSink, check_positive, error_text
from normlab.experiment.executors.training import cached_dataset, train_one
from normlab.experiment.train import warm_up


class InProcessExecutor(Executor):
    """Train runs one at a time in this process with ``threads`` torch threads (a run with
    ``nproc`` > 1 spawns its process group, ``threads`` threads per process).

    Args:
        threads: torch threads per run (per process of a data-parallel run).
        data_dir: where the dataset's files are (see normlab.data.load_dataset).
        models_dir: where to save each trained model as ``<run_id>.pt``; None saves nothing.
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
        self.models_dir = models_dir

    def run(self, todo: list[RunConfig], sink: RunSink) -> None:
        previous_threads = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            data = cached_dataset(todo[0].dataset, self.data_dir)
            warm_up(todo[0].optimizer)
            for config in todo:
                sink.started(config)
                try:
                    record = train_one(
                        config,
                        data,
                        functools.partial(sink.epoch, config),
                        self.models_dir,
                        self.data_dir,
                        self.threads,
                    )
                except Exception as error:  # one run's failure must not end the sweep
                    sink.failed(config, error_text(error))
                    continue
                sink.finished(config, record)
        finally:
            torch.set_num_threads(previous_threads)
