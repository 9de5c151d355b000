"""Which of the study's planned runs a group holds: the study's records looked up through
its plan (:class:`Runs`), the fields a group's runs share (``where`` of a test's arm, see
normlab.report.claims), and the records of those runs for the tables and figures."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from normlab.experiment.config import OMITTED_DEFAULTS, RunConfig
from normlab.study.plan import TUTORIAL_HIDDEN, Budget


class Runs:
    """The study's records, looked up through the plan: ``get("batch", norm="bn")``; and
    measurements that are not training runs (the cost microbenchmarks), by experiment name,
    each a record whose ``config`` holds the fields an arm selects it by."""

    def __init__(
        self,
        experiments: Mapping[str, Sequence[RunConfig]],
        records: Sequence[Mapping[str, Any]],
        measured: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    ) -> None:
        self.experiments = experiments
        self.by_id = {record["run_id"]: record for record in records}
        self.measured = dict(measured or {})

    def planned(self, experiment: str) -> bool:
        return experiment in self.experiments

    def configs(self, experiment: str, **match: Any) -> list[RunConfig]:
        return [c for c in self.experiments.get(experiment, ()) if _matches(c, match)]

    def get(self, experiment: str, **match: Any) -> list[Mapping[str, Any]]:
        """The finished records of ``experiment``'s runs whose fields equal ``match``
        (model options such as ``hidden`` or ``dropout`` included)."""
        return [
            self.by_id[c.run_id]
            for c in self.configs(experiment, **match)
            if c.run_id in self.by_id
        ]

    def select(self, where: Mapping[str, Any]) -> list[Mapping[str, Any]]:
        """The finished records of the runs ``where`` describes: its ``experiment`` (or the
        first of several that plans such runs) and the fields they share."""
        match = dict(where)
        experiments = match.pop("experiment")
        if isinstance(experiments, str) and experiments in self.measured:
            return [
                sample
                for sample in self.measured[experiments]
                if all(sample["config"].get(k) == v for k, v in match.items())
            ]
        for experiment in (experiments,) if isinstance(experiments, str) else experiments:
            if self.configs(experiment, **match):
                return self.get(experiment, **match)
        return []


def _matches(config: RunConfig, match: Mapping[str, Any]) -> bool:
    for name, value in match.items():
        if hasattr(config, name):
            actual = getattr(config, name)
        else:
            actual = config.model_options.get(name, OMITTED_DEFAULTS.get(name))
        if isinstance(actual, tuple):
            actual = list(actual)
        if actual != value:
            return False
    return True


GN = "gn(groups=8)"
"""Group norm with 8 groups, as the group-norm experiment runs it."""


def batch_cell(norm: str, size: int) -> dict[str, Any]:
    """The tutorial MLP's runs of ``norm`` at batch ``size``: every seed of the replication
    where it has the norm at that batch (batch 32), otherwise the batch experiment's."""
    return {"experiment": ("replication", "batch"), "norm": norm, "batch_size": size}


def depth_cell(b: Budget, norm: str, depth: int, he: bool) -> dict[str, Any]:
    """The depth experiment's MLP of ``depth`` hidden layers, He-initialized or not."""
    return {
        "experiment": "depth",
        "norm": norm,
        "hidden": [b.depth_width] * depth,
        "init": "he" if he else "default",
    }


def init_cell(norm: str, scale: float) -> dict[str, Any]:
    return {"experiment": "init", "norm": norm, "init_scale": scale}


def dropout_cell(norm: str, p: float) -> dict[str, Any]:
    return {"experiment": "dropout", "norm": norm, "dropout": p}


def ics_cell(b: Budget, norm: str, optimizer: str, deep: bool) -> dict[str, Any]:
    """The ICS experiment's tutorial MLP, or its deep MLP, trained with ``optimizer``."""
    hidden = [TUTORIAL_HIDDEN[0]] * b.ics_depth if deep else list(TUTORIAL_HIDDEN)
    return {"experiment": "ics", "norm": norm, "optimizer": optimizer, "hidden": hidden}


def gn_cell(norm: str, size: int) -> dict[str, Any]:
    """The group-norm experiment's CNN with ``norm`` (:data:`GN` or a kind) at ``size``."""
    kind, options = ("gn", {"groups": 8}) if norm == GN else (norm, {})
    return {"experiment": "group-norm", "norm": kind, "norm_options": options, "batch_size": size}


def after_cell(norm: str) -> dict[str, Any]:
    """The after-training experiment's tutorial MLP with ``norm``."""
    return {"experiment": "after-training", "norm": norm}


def batch_records(runs: Runs, norm: str, size: int) -> list[Any]:
    return runs.select(batch_cell(norm, size))


def depth_records(runs: Runs, b: Budget, norm: str, depth: int, he: bool) -> list[Any]:
    return runs.select(depth_cell(b, norm, depth, he))


def init_records(runs: Runs, norm: str, scale: float) -> list[Any]:
    return runs.select(init_cell(norm, scale))


def dropout_records(runs: Runs, norm: str, p: float) -> list[Any]:
    return runs.select(dropout_cell(norm, p))


def ics_records(runs: Runs, b: Budget, norm: str, optimizer: str, deep: bool) -> list[Any]:
    return runs.select(ics_cell(b, norm, optimizer, deep))


def gn_records(runs: Runs, norm: str, size: int) -> list[Any]:
    return runs.select(gn_cell(norm, size))


def after_records(runs: Runs, norm: str) -> list[Any]:
    return runs.select(after_cell(norm))
