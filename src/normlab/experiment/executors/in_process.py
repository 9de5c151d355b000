"""The in-process executor: the sweep's own process trains one run after another, or with
``stack_seeds`` the seeds of each configuration together (normlab.experiment.stacked)."""

from __future__ import annotations

import os

import torch

from normlab.data import Dataset
from normlab.experiment.config import RunConfig
from normlab.experiment.ddp import TrainingGroup
from normlab.experiment.executors.contract import Executor, RunSink, check_positive
from normlab.experiment.executors.training import cached_dataset, train_task
from normlab.experiment.stacked import seed_groups


class InProcessExecutor(Executor):
    """Train runs one at a time in this process with ``threads`` torch threads (runs with
    ``nproc`` > 1 in one TrainingGroup, started at the first and kept for the sweep,
    ``threads`` threads per process).

    Args:
        threads: torch threads per run (per process of a data-parallel run).
        data_dir: where the dataset's files are (see normlab.data.load_dataset).
        models_dir: where to save each trained model as ``<run_id>.pt``; None saves nothing.
        stack_seeds: train the pending seeds of each configuration as one batched model
            (see normlab.experiment.stacked); configurations that
            ``normlab.experiment.stacked.stack_refusal`` refuses train their seeds
            separately (``stack_refusals`` lists them, for a message).
    """

    def __init__(
        self,
        *,
        threads: int = 1,
        data_dir: str | None = None,
        models_dir: str | os.PathLike | None = None,
        stack_seeds: bool = False,
    ) -> None:
        self.threads = check_positive("threads", threads)
        self.data_dir = data_dir
        self.models_dir = models_dir
        self.stack_seeds = stack_seeds

    def run(self, todo: list[RunConfig], sink: RunSink, data: Dataset | None = None) -> None:
        previous_threads = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            if data is None:
                data = cached_dataset(todo[0].dataset, self.data_dir)
            tasks = seed_groups(todo) if self.stack_seeds else [[config] for config in todo]
            places = {"data_dir": self.data_dir, "models_dir": self.models_dir}
            # The data-parallel runs' processes end with the sweep (at once on Ctrl-C).
            with TrainingGroup(threads=self.threads, **places) as processes:
                for task in tasks:
                    train_task(
                        task, data, sink, self.models_dir, self.data_dir, self.threads, processes
                    )
        finally:
            torch.set_num_threads(previous_threads)
