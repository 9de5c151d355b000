"""What the claims study reads off one run record: accuracies, diagnostics and the
after-training evaluations.

Each function takes a results record (see normlab.experiment.store) and returns a
number, or None when the record lacks what it needs (a run without diagnostics, an
accuracy never reached). Accuracies are in percent.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping
from typing import Any

Record = Mapping[str, Any]
Measure = Callable[[Record], float | None]

CHANCE = 10.0
"""Chance accuracy (%) on MNIST's ten balanced classes."""
CHANCE_MARGIN = 5.0
"""A run that ends below chance + this many points has not trained: it counts as diverged
beside the runs whose loss became NaN."""


def val_acc(record: Record) -> float:
    """Final validation accuracy, %."""
    return 100.0 * record["final"]["val_acc"]


def collapsed(record: Record) -> bool:
    """Whether the run finished (not NaN) within CHANCE_MARGIN points of chance."""
    final = record.get("final") or {}
    value = final.get("val_acc")
    return (
        record.get("status") != "diverged"
        and isinstance(value, int | float)
        and math.isfinite(value)
        and 100.0 * value < CHANCE + CHANCE_MARGIN
    )


def first_epoch_acc(record: Record) -> float:
    """Validation accuracy after the first epoch, %."""
    return 100.0 * record["history"][0]["val_acc"]


def train_acc(record: Record) -> float:
    """Final training accuracy (eval mode), %."""
    return 100.0 * record["final"]["train_acc"]


def gap(record: Record) -> float:
    """Generalization gap: final training accuracy (eval mode) minus validation, pp."""
    return 100.0 * (record["final"]["train_acc"] - record["final"]["val_acc"])


def _diagnostics(record: Record) -> Mapping[str, Any] | None:
    return record.get("diagnostics")


def _probes(record: Record, training: bool | None = None) -> list[Mapping[str, Any]]:
    """The probes at initialization (``training=False``), after each epoch (True), or all
    of them (None)."""
    diagnostics = _diagnostics(record) or {}
    probes = diagnostics.get("probes") or []
    return [p for p in probes if training is None or (p["epoch"] >= 1) == training]


def _mean(values: list[float | None]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.fmean(finite) if finite and len(finite) == len(values) else None


def ics(record: Record) -> float | None:
    """Santurkar et al.'s internal covariate shift ||G - G'||, averaged over the layers
    that have layers before them and over every probe, the one at step 0 included."""
    return _mean([_mean(p["ics"][1:]) for p in _probes(record)])


def ics_cosine(record: Record) -> float | None:
    """cos(G, G'), averaged like :func:`ics` (1 means no shift)."""
    return _mean([_mean(p["ics_cosine"][1:]) for p in _probes(record)])


def relative_ics(record: Record) -> float | None:
    """||G - G'|| / ||G|| per layer, averaged like :func:`ics`: the shift as a fraction of
    the gradient, so that a network with smaller gradients is not credited with less
    shift for that alone."""
    values = []
    for probe in _probes(record):
        norms = probe["grad_norms"][1:]
        shifts = probe["ics"][1:]
        values.append(_mean([s / n if n > 0 else None for s, n in zip(shifts, norms, strict=True)]))
    return _mean(values)


def landscape(name: str) -> Measure:
    """A landscape summary (``loss_variation``, ``gradient_predictiveness``,
    ``beta_smoothness``) averaged over every probe, the one at step 0 included."""

    def measure(record: Record) -> float | None:
        return _mean([p["landscape"][name] for p in _probes(record)])

    measure.__name__ = name
    return measure


def signed_grad_ratio(record: Record, at_init: bool = True) -> float | None:
    """log10 of the first layer's gradient norm over the last layer's: 0 when they are
    equal, below 0 when the gradients vanish towards the input, above 0 when they explode.
    At initialization, or averaged over the probes during training."""
    probes = _probes(record, training=not at_init)
    if at_init:
        probes = probes[:1]
    ratios = [p["grad_ratio"] for p in probes]
    return _mean([math.log10(r) if r is not None and r > 0 else None for r in ratios])


def grad_ratio(record: Record, at_init: bool = True) -> float | None:
    """|signed_grad_ratio|: decades between the first and the last layer's gradient norms,
    whichever way."""
    value = signed_grad_ratio(record, at_init)
    return None if value is None else abs(value)


def log10(measure: Measure) -> Measure:
    """``measure`` on a log10 scale (None for values that are not positive)."""

    def logged(record: Record) -> float | None:
        value = measure(record)
        return math.log10(value) if value is not None and value > 0 else None

    logged.__name__ = f"log10_{getattr(measure, '__name__', 'measure')}"
    return logged


def _evaluations(record: Record) -> Mapping[str, Any]:
    return record.get("evaluations") or {}


def shift_drop(record: Record) -> float | None:
    """Clean validation accuracy minus the mean accuracy under the input shifts of
    normlab.experiment.evaluations, pp: how much the shifts cost the model."""
    shifted = _evaluations(record).get("shifted_val_acc")
    if not shifted:
        return None
    return val_acc(record) - 100.0 * statistics.fmean(shifted.values())


def shifted_acc(name: str) -> Measure:
    """Validation accuracy under the input shift ``name``, %."""

    def measure(record: Record) -> float | None:
        value = (_evaluations(record).get("shifted_val_acc") or {}).get(name)
        return None if value is None else 100.0 * value

    measure.__name__ = f"shifted_acc {name}"
    return measure


def batch1_acc(record: Record) -> float | None:
    """Eval-mode validation accuracy with the images fed one at a time, %."""
    value = _evaluations(record).get("batch1_val_acc")
    return None if value is None else 100.0 * value


def batch_stats_acc(size: int) -> Measure:
    """Validation accuracy with the batch norms normalizing by each batch of ``size``'s own
    statistics, %."""

    def measure(record: Record) -> float | None:
        value = (_evaluations(record).get("batch_stats_val_acc") or {}).get(str(size))
        return None if value is None else 100.0 * value

    measure.__name__ = f"batch_stats_acc {size}"
    return measure


def batch_sensitivity(record: Record) -> float | None:
    """Mean |accuracy with batch statistics at batch b - at the training batch| over the
    other batch sizes evaluated, pp: how much the batch a model sees moves its accuracy."""
    by_size = dict(_evaluations(record).get("batch_stats_val_acc") or {})
    trained = by_size.pop(str(record["config"]["batch_size"]), None)
    others = [value for value in by_size.values() if value is not None]
    if trained is None or not others:
        return None
    return statistics.fmean(100.0 * abs(value - trained) for value in others)
