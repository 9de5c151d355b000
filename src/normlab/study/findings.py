"""Statistics of the claims study: one headline test per claim, Holm-adjusted across all.

A :class:`Check` is a linear contrast of group means (Welch, normlab.report.stats) over
the runs of one experiment. Every test has a two-sided p-value (for an equivalence claim,
the TOST p-value of |contrast| >= margin); Holm's method adjusts them across the whole
family of tests, and the verdict reads the adjusted value:

- a directional claim is *supported* when its adjusted p < 0.05 and the estimate lies on
  the predicted side, *contradicted* when the adjusted p < 0.05 and it lies on the other
  side, *inconclusive* otherwise;
- an equivalence claim is *supported* when its adjusted TOST p < 0.05, *contradicted*
  when the two-sided test of "no difference", Bonferroni-adjusted over the family,
  has p < 0.05, *inconclusive* otherwise.

The unadjusted verdict (the 95% interval rule of normlab.report.claims) is kept beside it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from normlab.experiment.config import RunConfig
from normlab.report.claims import CONTRADICTED, INCONCLUSIVE, SUPPORTED, judge
from normlab.report.stats import contrast, equivalence_p_value, holm, p_value
from normlab.study.measures import Measure

ALPHA = 0.05
NOT_RUN = "not run"
TOO_FEW = "too few runs"

Side = Literal["greater", "less", "within"]
Scale = Literal["pp", "log10", "log10-abs"]


@dataclass(frozen=True)
class Group:
    """One group of runs in a contrast: a label, its weight and its runs' values."""

    label: str
    weight: float
    values: tuple[float, ...]
    runs: int
    diverged: int = 0


@dataclass(frozen=True)
class Check:
    """One claim's headline test and, once computed, its statistics and verdicts."""

    key: str
    title: str
    quote: str
    source: str
    hypothesis: str
    experiment: str
    measure: str
    side: Side
    scale: Scale = "pp"
    margin: float | None = None
    verbatim: bool = False
    """``quote`` is the source's words; otherwise it is this study's paraphrase."""
    groups: tuple[Group, ...] = ()
    available: bool = True
    estimate: float | None = None
    low: float | None = None
    high: float | None = None
    p: float | None = None
    p_difference: float | None = None
    p_adjusted: float | None = None
    raw_verdict: str = NOT_RUN
    verdict: str = NOT_RUN
    notes: tuple[str, ...] = field(default=())

    @property
    def prediction(self) -> str:
        if self.side == "within":
            return f"within ±{self.margin:g}"
        return "> 0" if self.side == "greater" else "< 0"


class Runs:
    """The study's records, looked up through the plan: ``get("batch", norm="bn")``."""

    def __init__(
        self, experiments: Mapping[str, Sequence[RunConfig]], records: Sequence[Mapping[str, Any]]
    ) -> None:
        self.experiments = experiments
        self.by_id = {record["run_id"]: record for record in records}

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


def _matches(config: RunConfig, match: Mapping[str, Any]) -> bool:
    for name, value in match.items():
        if hasattr(config, name):
            actual = getattr(config, name)
        else:
            actual = config.model_options.get(name, 0.0 if name == "dropout" else None)
        if isinstance(actual, tuple):
            actual = list(actual)
        if actual != value:
            return False
    return True


def group(
    label: str, weight: float, records: Sequence[Mapping[str, Any]], measure: Measure
) -> Group:
    """The group of ``records``' values of ``measure`` (runs without a value are left out)."""
    values = [measure(record) for record in records]
    kept = tuple(v for v in values if v is not None and math.isfinite(v))
    diverged = sum(record.get("status") == "diverged" for record in records)
    return Group(label, weight, kept, len(records), diverged)


def difference(
    runs: Runs,
    experiment: str,
    first: str,
    second: str,
    measure: Measure,
    label: str = "",
    **where: Any,
) -> list[Group]:
    """The groups of ``first`` minus ``second`` (two norms) in ``experiment``'s runs that
    match ``where``, labelled ``"<norm><label>"``."""
    return [
        group(f"{norm}{label}", weight, runs.get(experiment, norm=norm, **where), measure)
        for norm, weight in ((first, 1), (second, -1))
    ]


def compute(test: Check) -> Check:
    """``test`` with its estimate, interval, p-values and unadjusted verdict filled in."""
    empty = dict(estimate=None, low=None, high=None, p=None, p_difference=None, p_adjusted=None)
    if not test.available or not test.groups:
        return replace(test, **empty, available=False, raw_verdict=NOT_RUN, verdict=NOT_RUN)
    if any(len(g.values) < 2 for g in test.groups):
        return replace(test, **empty, raw_verdict=TOO_FEW, verdict=TOO_FEW)
    result = contrast([list(g.values) for g in test.groups], [g.weight for g in test.groups])
    difference = p_value(result)
    p = equivalence_p_value(result, test.margin or 0.0) if test.side == "within" else difference
    return replace(
        test,
        estimate=result.estimate,
        low=result.low,
        high=result.high,
        p=p,
        p_difference=difference,
        raw_verdict=judge(result, test.side, test.margin),
    )


def adjust(tests: Sequence[Check]) -> list[Check]:
    """Holm-adjust the p-values of every computed test and give each its verdict."""
    adjusted = holm([t.p if t.estimate is not None else None for t in tests])
    family = sum(value is not None for value in adjusted)
    out = []
    for test, p_adj in zip(tests, adjusted, strict=True):
        if p_adj is None or test.estimate is None:
            out.append(test)
            continue
        out.append(replace(test, p_adjusted=p_adj, verdict=_verdict(test, p_adj, family)))
    return out


def _verdict(test: Check, p_adjusted: float, family: int) -> str:
    assert test.estimate is not None
    if test.side == "within":
        if p_adjusted < ALPHA:
            return SUPPORTED
        bonferroni = min(1.0, (test.p_difference or 1.0) * family)
        return CONTRADICTED if bonferroni < ALPHA else INCONCLUSIVE
    if p_adjusted >= ALPHA:
        return INCONCLUSIVE
    predicted = test.estimate > 0 if test.side == "greater" else test.estimate < 0
    return SUPPORTED if predicted else CONTRADICTED


def describe(g: Group, scale: Scale) -> str:
    """``bn at batch 4: 91.20 (std 0.80, 5 runs, 1 diverged)``."""
    if not g.values:
        return f"{g.label}: no values ({g.runs} runs)"
    mean = statistics.fmean(g.values)
    shown = f"{10**mean:.3g} (geometric mean)" if scale == "log10" else f"{mean:.3g}"
    parts = [f"std {statistics.stdev(g.values):.2g}"] if len(g.values) > 1 else []
    parts.append(f"{len(g.values)} runs")
    if g.diverged:
        parts.append(f"{g.diverged} diverged")
    return f"{g.label}: {shown} ({', '.join(parts)})"


def format_estimate(test: Check) -> str:
    """The estimate and its 95% interval in the test's unit."""
    if test.estimate is None:
        return "—"
    if test.scale == "log10":
        interval = "" if test.low is None else f" [{10**test.low:.3g}, {10**test.high:.3g}]"
        return f"{10**test.estimate:.3g}x{interval}"
    unit = " pp" if test.scale == "pp" else ""
    interval = "" if test.low is None else f" [{test.low:+.3g}, {test.high:+.3g}]"
    return f"{test.estimate:+.3g}{unit}{interval}"


def format_p(value: float | None) -> str:
    if value is None:
        return "—"
    return "< 0.0001" if value < 1e-4 else f"{value:.4f}" if value < 0.01 else f"{value:.3f}"
