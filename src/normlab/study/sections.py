"""Building blocks of the claims study's sections: the Section record, markdown tables,
and the groups and tests built from the study's runs."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from normlab.study import measures as m
from normlab.study.findings import Adequacy, Check, Group, Runs, adequacy, compute
from normlab.study.plan import FIT_THRESHOLD, THRESHOLDS, Budget

T1 = "the first tutorial (batch norm vs layer norm with the Keras MLP on MNIST)"
T2 = "the second tutorial (batch normalization in TensorFlow)"
T3 = "the third tutorial (batch norm '1s' vs '2s')"


@dataclass(frozen=True)
class Section:
    """One claim in the report: its tests, its figure and the tables behind the numbers."""

    key: str
    title: str
    tests: tuple[Check, ...]
    figure: str
    tables: tuple[str, ...] = field(default=())


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def mean_std(values: Sequence[float], digits: int = 2) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def values_of(records: Sequence[Any], measure: m.Measure) -> list[float]:
    return [v for v in (measure(r) for r in records) if v is not None]


def make_test(
    spec: dict[str, Any],
    groups: Sequence[Group],
    available: bool = True,
    trained: Adequacy | None = None,
) -> Check:
    """The test ``spec`` describes on ``groups``, computed; ``trained`` is its experiment's
    adequacy (a test of an undertrained experiment gets no verdict)."""
    return compute(Check(**spec, groups=tuple(groups), available=available, adequacy=trained))


def trained(runs: Runs, experiment: str, fit: bool = False) -> Adequacy:
    """Whether ``experiment``'s best configuration reached its model's validation threshold
    or, with ``fit``, fit its training set (FIT_THRESHOLD training accuracy)."""
    if fit:
        return adequacy(runs, experiment, FIT_THRESHOLD, m.train_acc)
    configs = runs.configs(experiment)
    model = configs[0].model if configs else "mlp"
    return adequacy(runs, experiment, THRESHOLDS.get(model, 0.0), m.val_acc)


ACC = "final validation accuracy, pp"


def experiment_text(b: Budget, what: str, epochs: int | None = None) -> str:
    """``what``, then the epochs and the training set of ``b``."""
    data = "the 60,000 training images" if b.subset is None else f"a {b.subset}-image subset"
    return f"{what}; {epochs or b.epochs} epochs on {data}, validated on the 10,000 test images"
