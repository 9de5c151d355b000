"""The contract between a sweep and the executors that train its runs.

A sweep hands an ``Executor`` its runs; the executor says which are pending
(``pending``), refuses runs it cannot train before any work (``check``), and
trains the rest (``run``), reporting each run's start, epochs and end to one
``RunSink``. An executor whose start takes time (the pool's workers import torch) begins it
in ``start``, which the sweep's caller calls before loading the data so that the two
overlap, and ends it in ``close`` (``with executor:`` does both); the loaded dataset goes to
``run``, so that no executor loads it again. The sink is the only thing that writes: it
appends a finished run's record to the results store before anyone else hears of it, and
tells the listener (progress bars) and the outcome.

One failure policy holds for every executor: a run that raises, and a run
whose worker process (or rank, or Ray worker) dies, is reported to
``RunSink.failed`` and the sweep goes on; Ctrl-C (or SIGTERM, see
``terminate_as_interrupt``) ends the runs in flight and raises
KeyboardInterrupt. An executor validates its options in its constructor, so
a Python caller and the command line get the same errors.
"""

from __future__ import annotations

import abc
import os
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from normlab.data import Dataset
from normlab.experiment.config import RunConfig
from normlab.experiment.store import ResultsStore
from normlab.experiment.train import EpochMetrics


def available_cores() -> int:
    """The CPU cores this process may use (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def error_text(error: BaseException) -> str:
    """An exception as ``Type: message`` on one line (a multi-line message is joined)."""
    text = "".join(traceback.format_exception_only(type(error), error))
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def check_positive(name: str, value: int) -> int:
    """``value`` if it is an int of at least 1; else a ValueError naming the option."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a whole number of at least 1; got {value!r}.")
    return value


class SweepListener:
    """What a sweep reports as it goes; this base ignores it all (the CLI's progress bars
    override each method)."""

    def run_started(self, config: RunConfig) -> None:
        pass

    def epoch_done(self, config: RunConfig, metrics: EpochMetrics) -> None:
        pass

    def run_done(self, config: RunConfig, record: dict[str, Any]) -> None:
        pass

    def run_failed(self, config: RunConfig, error: str) -> None:
        pass


@dataclass
class SweepOutcome:
    """What a call to run_sweep did: records written, runs skipped as already
    finished, runs that failed (config and error text, one line), and whether
    Ctrl-C or SIGTERM interrupted it."""

    records: list[dict[str, Any]] = field(default_factory=list)
    skipped: int = 0
    failed: list[tuple[RunConfig, str]] = field(default_factory=list)
    interrupted: bool = False


class RunSink:
    """Where an executor reports: owns the results store, the listener and the outcome."""

    def __init__(self, store: ResultsStore, listener: SweepListener, outcome: SweepOutcome) -> None:
        self.store = store
        self.listener = listener
        self.outcome = outcome

    def started(self, config: RunConfig) -> None:
        self.listener.run_started(config)

    def epoch(self, config: RunConfig, metrics: EpochMetrics) -> None:
        self.listener.epoch_done(config, metrics)

    def finished(self, config: RunConfig, record: dict[str, Any]) -> None:
        """The record goes to disk first (the resume guarantee), then to everyone else."""
        self.store.append(record)
        self.outcome.records.append(record)
        self.listener.run_done(config, record)

    def failed(self, config: RunConfig, error: str) -> None:
        self.outcome.failed.append((config, error))
        self.listener.run_failed(config, error)


def pending_runs(runs: Sequence[RunConfig], store: ResultsStore) -> list[RunConfig]:
    """The runs whose records are not in ``store`` yet."""
    finished = store.finished_ids()
    return [run for run in runs if run.run_id not in finished]


class Executor(abc.ABC):
    """Trains runs and reports them to a RunSink; see the module docstring for the policy."""

    #: whether the sweep locks the results directory while this executor trains
    locks_store: bool = True

    def check(self, runs: Sequence[RunConfig]) -> None:
        """Refuse, before any work, runs this executor cannot train (ValueError); this
        default accepts every run."""
        return None

    def pending(self, runs: Sequence[RunConfig], store: ResultsStore) -> list[RunConfig]:
        """The runs of ``runs`` still to train."""
        return pending_runs(runs, store)

    def start(self) -> None:
        """Begin what takes time before a run can train (the pool starts its workers), so
        that it overlaps with the caller's loading of the data; this default does nothing.
        ``run`` works whether or not this was called; ``close`` ends what it began."""
        return None

    def close(self) -> None:
        """End what ``start`` began and ``run`` did not (a caller that fails between the
        two); calling it again, or without ``start``, does nothing."""
        return None

    def __enter__(self) -> Executor:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @abc.abstractmethod
    def run(self, todo: list[RunConfig], sink: RunSink, data: Dataset | None = None) -> None:
        """Train every run of ``todo`` (all on one dataset), reporting each to ``sink``.

        ``data`` is that dataset, already loaded by the caller; None: the executor loads it
        (from the runs' ``dataset`` and its ``data_dir``).

        Raises:
            KeyboardInterrupt: on Ctrl-C or SIGTERM, after ending the runs in flight.
        """
