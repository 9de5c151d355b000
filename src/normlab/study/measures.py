"""What the claims study reads off one run record: accuracies, timing and diagnostics.

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
