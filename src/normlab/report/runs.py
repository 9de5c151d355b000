"""Run records read into typed runs, and the sweep they make up.

A results record (see ``normlab.experiment.store``) becomes a :class:`Run`;
a list of them becomes a :class:`Sweep`, which knows which configuration
fields vary and so how runs group:

- a *group* is the runs whose configuration is equal except for ``seed``;
- a *series* is a norm plus every varying field other than norm, batch size
  and seed (label ``bn`` or ``bn (lr=0.01)``);
- an *experiment* is one combination of those other varying fields (label
  ``lr=0.01``, or ``""`` when nothing else varies).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from normlab.experiment.config import OMITTED_DEFAULTS
from normlab.experiment.store import ResultsError, numbered_records, results_path
from normlab.norm_spec import format_norm

SCHEMA = 1
"""The results-record schema this report reads."""

AXES = ("norm", "batch_size", "seed")
"""Configuration fields that are the sweep's axes rather than part of an experiment."""


class RecordError(ValueError):
    """A results record lacks a field the report needs, or holds a value it cannot use.

    ``problem`` says what is wrong with the record (``has no field 'final'``),
    ``run_id`` names its run and ``fix`` says what to do; without one, the fix is to
    retrain the run (see :meth:`advice`).
    """

    def __init__(self, problem: str, run_id: Any = "?", fix: str | None = None) -> None:
        self.problem = problem
        self.run_id = run_id
        self.fix = fix
        super().__init__(f"results record {run_id!r} {problem}. {self.advice('normlab compare')}")

    def advice(self, command: str) -> str:
        """What to do about it, for records written by ``command`` (``normlab compare``)."""
        return self.fix or _retrain(command)


def _retrain(command: str) -> str:
    return (
        f"{command} counts that run as finished: delete its line from results.jsonl, then run "
        f"{command} again with the same --out to retrain it."
    )


@dataclass(frozen=True)
class Run:
    """One training run, as the report needs it. Accuracies are fractions in [0, 1].

    ``config`` is the record's configuration with ``model_options`` flattened
    into it (``hidden`` beside ``lr``), so that every field can vary on its own.
    """

    run_id: str
    config: Mapping[str, Any]
    status: str
    val_acc: float
    train_acc: float
    seconds: float
    epochs: tuple[int, ...]
    epoch_train_acc: tuple[float, ...]
    epoch_val_acc: tuple[float, ...]
    diverged_epoch: int | None
    agreement: float | None = None  # eval_parity.prediction_agreement; None without batch norm
    data: Mapping[str, Any] = field(default_factory=dict)
    versions: Mapping[str, Any] = field(default_factory=dict)
    threads: int | None = None
    started: str | None = None
    series: str = ""
    experiment: str = ""

    @property
    def norm(self) -> str:
        return str(self.config["norm"])

    @property
    def batch_size(self) -> int:
        return int(self.config["batch_size"])

    @property
    def seed(self) -> int:
        return int(self.config["seed"])

    @property
    def diverged(self) -> bool:
        return self.status == "diverged"

    @property
    def gap(self) -> float:
        """Generalization gap: final train accuracy (eval mode) minus final val accuracy."""
        return self.train_acc - self.val_acc


def _fail(record: Mapping[str, Any], problem: str) -> RecordError:
    return RecordError(problem, record.get("run_id", "?"))


def _accuracy(record: Mapping[str, Any], where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _fail(record, f"has {where} = {value!r}, not a number")
    if not 0.0 <= value <= 1.0:
        raise _fail(record, f"has {where} = {value!r}, outside [0, 1] (accuracies are fractions)")
    return float(value)


def _epoch(record: Mapping[str, Any], value: Any) -> int:
    whole = isinstance(value, int | float) and not isinstance(value, bool)
    if not whole or not math.isfinite(value) or value != int(value) or value < 0:
        raise _fail(record, f"has history.epoch = {value!r}, not an epoch number")
    return int(value)


def flatten_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` with ``model_options``' keys lifted beside the other fields, and
    ``norm_options`` folded into the norm's label (``gn(groups=8)``, see normlab.norm_spec),
    so that a kind with options is a norm of its own in every table, plot and verdict.

    A model option whose name clashes with a top-level field keeps the prefix
    ``model_options.``.
    """
    flat = {
        key: value for key, value in config.items() if key not in ("model_options", "norm_options")
    }
    if config.get("norm_options") and "norm" in flat:
        flat["norm"] = format_norm(str(flat["norm"]), config["norm_options"])
    for key, value in (config.get("model_options") or {}).items():
        flat[f"model_options.{key}" if key in flat else key] = value
    return flat


def run_from_record(record: Mapping[str, Any]) -> Run:
    """The :class:`Run` in one results record.

    Raises:
        RecordError: the record is of another schema or lacks a needed field.
    """
    schema = record.get("schema", SCHEMA)
    if schema != SCHEMA:
        raise RecordError(
            f"has schema {schema!r}; this normlab reads schema {SCHEMA}",
            record.get("run_id", "?"),
            fix="Render it with the normlab version that wrote it.",
        )
    run_id = record.get("run_id")
    if not isinstance(run_id, str) or not run_id:
        raise _fail(record, "has no run_id (a non-empty string)")
    try:
        config = flatten_config(record["config"])
        missing = [name for name in AXES if name not in config]
        if missing:
            raise _fail(record, f"has no config.{missing[0]}")
        final = record["final"]
        history = record.get("history") or []
        status = str(record.get("status", "finished"))
        return Run(
            run_id=str(record["run_id"]),
            config=config,
            status=status,
            val_acc=_accuracy(record, "final.val_acc", final["val_acc"]),
            train_acc=_accuracy(record, "final.train_acc", final["train_acc"]),
            seconds=float(record.get("seconds") or 0.0),
            epochs=tuple(_epoch(record, row["epoch"]) for row in history),
            epoch_train_acc=tuple(
                _accuracy(record, "history.train_acc", row["train_acc"]) for row in history
            ),
            epoch_val_acc=tuple(
                _accuracy(record, "history.val_acc", row["val_acc"]) for row in history
            ),
            diverged_epoch=final.get("diverged_epoch"),
            agreement=(record.get("eval_parity") or {}).get("prediction_agreement"),
            data=dict(record.get("data") or {}),
            versions=dict(record.get("versions") or {}),
            threads=record.get("threads"),
            started=record.get("started"),
        )
    except RecordError:
        raise
    except KeyError as error:
        raise _fail(record, f"has no field {error.args[0]!r}") from None
    except (TypeError, ValueError, AttributeError):
        raise _fail(record, "is not shaped like a schema-1 run record") from None


def check_records(
    directory: str | os.PathLike, command: str = "normlab compare"
) -> list[dict[str, Any]]:
    """Every record of ``directory/results.jsonl``, each checked to be one the report (and
    the claims study) can read: the one check of a results file before anything is drawn.

    ``command`` is what wrote the records (``normlab study claims``); the fix of a bad
    record says to run it again.

    Raises:
        normlab.experiment.store.ResultsError: a line is not a run record, a run is on two
            lines, or a record lacks a field the report needs or holds a value it cannot
            use; the message names the file and line and the fix.
    """
    path = results_path(directory)
    records = []
    for number, record in numbered_records(path):
        try:
            run_from_record(record)
        except RecordError as error:
            raise ResultsError(
                f"{path} line {number}: results record {error.run_id!r} {error.problem}. "
                f"{error.advice(command)}"
            ) from None
        records.append(record)
    return records


def canonical(value: Any) -> str:
    """A hashable, order-independent key for a configuration value (lists, dicts included)."""
    return json.dumps(value, sort_keys=True, default=str)


def format_value(value: Any) -> str:
    """A configuration value as people write it: ``0.01``, ``[128, 64]``, ``adam``."""
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple):
        return "[" + ", ".join(format_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {format_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def _first_appearance(values: Iterable[Any]) -> list[Any]:
    seen: dict[str, Any] = {}
    for value in values:
        seen.setdefault(canonical(value), value)
    return list(seen.values())


@dataclass(frozen=True)
class Sweep:
    """Every run of a results file, with the fields that vary and the labels they imply.

    Norms and experiments keep the order they first appear in; batch sizes
    are sorted. No records make an empty sweep (no verdicts, no table rows).
    """

    runs: tuple[Run, ...]
    varying: tuple[str, ...]
    common: Mapping[str, Any]
    norms: tuple[str, ...]
    batch_sizes: tuple[int, ...]
    series: tuple[str, ...]
    experiments: tuple[str, ...]
    experiment_fields: tuple[str, ...] = field(default=())

    @classmethod
    def from_records(cls, records: Sequence[Mapping[str, Any]]) -> Sweep:
        """Read every record into a :class:`Run` and label its series and experiment.

        Raises:
            RecordError: a record the report cannot read, or two records of one run.
        """
        by_id: dict[str, Run] = {}
        for record in records:
            run = run_from_record(record)
            if run.run_id in by_id:
                raise RecordError(
                    "is there twice; normlab records each run once, so keep the record that "
                    "holds the run and drop the other",
                    run.run_id,
                )
            by_id[run.run_id] = run
        names = _first_appearance(name for run in by_id.values() for name in run.config)
        # A field that older runs (or runs at its default) leave out has its default there.
        defaults = {name: OMITTED_DEFAULTS[name] for name in names if name in OMITTED_DEFAULTS}
        runs = [replace(run, config={**defaults, **run.config}) for run in by_id.values()]
        varying = tuple(
            name
            for name in names
            if len({canonical(run.config.get(name)) for run in runs}) > 1 or name in AXES
        )
        common = {name: runs[0].config.get(name) for name in names if name not in varying}
        experiment_fields = tuple(name for name in varying if name not in AXES)
        labelled = [
            replace(run, series=series_label(run, experiment_fields),
                    experiment=experiment_label(run, experiment_fields))
            for run in runs
        ]  # fmt: skip
        return cls(
            runs=tuple(labelled),
            varying=varying,
            common=common,
            norms=tuple(_first_appearance(run.norm for run in labelled)),
            batch_sizes=tuple(sorted({run.batch_size for run in labelled})),
            series=tuple(_first_appearance(run.series for run in labelled)),
            experiments=tuple(_first_appearance(run.experiment for run in labelled)),
            experiment_fields=experiment_fields,
        )

    def values(self) -> dict[str, list[str]]:
        """Each varying field's values in order of first appearance, as text."""
        result = {}
        for name in self.varying:
            values = _first_appearance(run.config.get(name) for run in self.runs)
            if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
                values = sorted(values)
            result[name] = [format_value(value) for value in values]
        return result

    def group(self, experiment: str, norm: str, batch_size: int) -> list[Run]:
        """The runs (one per seed) of ``norm`` at ``batch_size`` in ``experiment``."""
        return [
            run
            for run in self.runs
            if run.experiment == experiment and run.norm == norm and run.batch_size == batch_size
        ]

    def series_group(self, series: str, batch_size: int) -> list[Run]:
        """The runs (one per seed) of ``series`` at ``batch_size``."""
        return [run for run in self.runs if run.series == series and run.batch_size == batch_size]

    def batch_sizes_of(self, experiment: str, norm: str) -> list[int]:
        """The batch sizes ``norm`` was run at in ``experiment``, ascending."""
        return sorted(
            {
                run.batch_size
                for run in self.runs
                if run.experiment == experiment and run.norm == norm
            }
        )

    def title(self) -> str:
        """``digits · mlp``: the dataset(s) and model(s) the runs trained."""
        if not self.runs:
            return "no runs"
        parts = []
        for name in ("dataset", "model"):
            values = _first_appearance(run.config.get(name, "?") for run in self.runs)
            parts.append(", ".join(format_value(value) for value in values))
        return " · ".join(parts)


def _settings(run: Run, fields: Sequence[str]) -> str:
    return ", ".join(f"{name}={format_value(run.config.get(name))}" for name in fields)


def series_label(run: Run, experiment_fields: Sequence[str]) -> str:
    """``bn``, or ``bn (lr=0.01)`` when other fields vary across the sweep."""
    if not experiment_fields:
        return run.norm
    return f"{run.norm} ({_settings(run, experiment_fields)})"


def experiment_label(run: Run, experiment_fields: Sequence[str]) -> str:
    """``lr=0.01, optimizer=sgd``; ``""`` when nothing but norm, batch size and seed varies."""
    return _settings(run, experiment_fields)
