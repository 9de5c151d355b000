"""Sweeps of training runs: configuration, train loop, execution and the results store."""

import normlab._lab_extra  # noqa: F401  (first: names the lab extra if it is missing)
from normlab.experiment.config import RunConfig, plan_runs
from normlab.experiment.store import ResultsStore, read_results
from normlab.experiment.sweep import SweepOutcome, check_runs, run_sweep
from normlab.experiment.train import EpochMetrics, train_run

__all__ = [
    "EpochMetrics",
    "ResultsStore",
    "RunConfig",
    "SweepOutcome",
    "check_runs",
    "plan_runs",
    "read_results",
    "run_sweep",
    "train_run",
]
