"""Training one run wherever an executor puts it: in the sweep's process, a pool worker, a
Ray worker."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, Protocol

import torch

from normlab.data import Dataset, load_dataset
from normlab.experiment.config import RunConfig
from normlab.experiment.ddp import TrainingGroup, train_distributed
from normlab.experiment.executors.contract import error_text
from normlab.experiment.stacked import train_stacked
from normlab.experiment.train import EpochMetrics, save_model, train_model, warm_up


class Reports(Protocol):
    """Where a run's start, epochs and end go (a RunSink, or a pool worker's pipe)."""

    def started(self, config: RunConfig) -> None: ...

    def epoch(self, config: RunConfig, metrics: EpochMetrics) -> None: ...

    def finished(self, config: RunConfig, record: dict[str, Any]) -> None: ...

    def failed(self, config: RunConfig, error: str) -> None: ...


@functools.lru_cache(maxsize=2)
def cached_dataset(name: str, data_dir: str | None) -> Dataset:
    """``load_dataset(name, data_dir)``, loaded once per process."""
    return load_dataset(name, data_dir)


def train_one(
    config: RunConfig,
    data: Dataset,
    on_epoch: Callable[[EpochMetrics], None],
    models_dir: str | os.PathLike | None,
    data_dir: str | None,
    threads: int,
    group: TrainingGroup | None = None,
) -> dict[str, Any]:
    """Train one run (over ``config.nproc`` processes of ``threads`` torch threads each when
    more than one: in ``group``, or else in a group of its own); save its model's state_dict
    when ``models_dir`` is given."""
    if config.nproc > 1 and group is not None:
        return group.train(config, on_epoch=on_epoch)
    if config.nproc > 1:
        return train_distributed(
            config, data_dir, threads=threads, on_epoch=on_epoch, models_dir=models_dir
        )
    model, record = train_model(config, data, on_epoch=on_epoch)
    if models_dir is not None:
        save_model(model, config, models_dir, record)
    return record


def train_task(
    task: list[RunConfig],
    data: Dataset,
    reports: Reports,
    models_dir: str | os.PathLike | None,
    data_dir: str | None,
    threads: int,
    group: TrainingGroup | None = None,
) -> None:
    """Train ``task``, one run (as train_one) or one configuration's seeds (as train_seeds),
    each run reported to ``reports``; a run's failure is reported, never raised."""
    if len(task) > 1:
        train_seeds(task, data, reports, models_dir)
        return
    config = task[0]
    reports.started(config)
    try:
        warm_up(config.optimizer)  # torch's lazy imports, outside the run's own seconds
        on_epoch = functools.partial(reports.epoch, config)
        record = train_one(config, data, on_epoch, models_dir, data_dir, threads, group)
    except Exception as error:  # one run's failure must not end the sweep
        reports.failed(config, error_text(error))
        return
    reports.finished(config, record)


def train_seeds(
    group: list[RunConfig], data: Dataset, reports: Reports, models_dir: str | os.PathLike | None
) -> None:
    """Train the seeds ``group`` of one configuration together (normlab.experiment.stacked);
    each reports as a run of its own, finished as soon as its record is final (its model
    saved first when ``models_dir`` is given), and a failure of the group fails the seeds it
    had not finished."""
    done: set[str] = set()

    def finished(config: RunConfig, model: torch.nn.Module, record: dict[str, Any]) -> None:
        if models_dir is not None:
            save_model(model, config, models_dir, record)
        done.add(config.run_id)
        reports.finished(config, record)

    for config in group:
        reports.started(config)
    try:
        warm_up(group[0].optimizer)
        train_stacked(group, data, on_epoch=reports.epoch, on_done=finished)
    except Exception as error:  # the group's failure must not end the sweep
        for config in group:
            if config.run_id not in done:
                reports.failed(config, error_text(error))
