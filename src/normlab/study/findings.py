"""Statistics of the claims study: one pre-registered primary test per claim, Holm-adjusted
across the primary tests only; secondary tests are reported unadjusted beside them.

A :class:`Check` is a linear contrast of group means over the runs of one experiment.
When every group holds one run per seed and the groups share their seeds (the same
initialization and data order), the contrast is *paired*: it is computed within each
seed and its interval is a one-sample t interval over seeds; otherwise it is Welch's
(normlab.report.stats). Every test has a two-sided p-value (for an equivalence claim,
the TOST p-value of |contrast| >= margin) and a minimum detectable effect (80% power at
α = 0.05). The verdict:

- a directional claim is *supported* when its p (Holm-adjusted for a primary test)
  is < 0.05 and the estimate lies on the predicted side, *contradicted* when it is < 0.05
  and the estimate lies on the other side, *inconclusive* otherwise;
- an equivalence claim is *supported* when its TOST p (adjusted likewise) is < 0.05, that
  is the 90% interval lies within ±margin; *contradicted* when the 95% interval lies
  wholly outside ±margin (for a primary test, the p-value of that, Bonferroni-adjusted
  over the family, is < 0.05); *inconclusive* otherwise;
- a claim whose experiment did not train its best configuration to the experiment's
  adequacy threshold is *not tested (undertrained)*, whatever its numbers, and leaves
  the Holm family.

The unadjusted verdict (the interval rules of normlab.report.claims) is kept beside it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from scipy import stats as scipy_stats

from normlab.experiment.config import OMITTED_DEFAULTS, RunConfig
from normlab.report.claims import CONTRADICTED, INCONCLUSIVE, SUPPORTED, judge
from normlab.report.stats import (
    Contrast,
    contrast,
    equivalence_p_value,
    holm,
    minimum_detectable_effect,
    p_value,
    paired_contrast,
)
from normlab.study.measures import CHANCE_MARGIN, Measure, collapsed

ALPHA = 0.05
NOT_RUN = "not run"
TOO_FEW = "too few runs"
UNDERTRAINED = "not tested (undertrained)"
FULL_TRAIN = 60000
"""MNIST's training images: the training-set size of a run without a subset."""

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
    """Runs whose loss became NaN or infinite (they have no value)."""
    seeds: tuple[int, ...] = ()
    """The seed of each value, in order; empty when unknown (no pairing)."""
    collapsed: int = 0
    """Runs that finished within a few points of chance accuracy (counted as diverged)."""


@dataclass(frozen=True)
class Adequacy:
    """Whether an experiment trained its models: the accuracy its best configuration must
    reach, and the best configuration's mean final validation accuracy (%)."""

    threshold: float
    best: float | None
    best_label: str = ""
    facts: Mapping[str, Any] = field(default_factory=dict)
    """The experiment: its name, model, training-set size, epochs, seeds and batch sizes."""

    @property
    def met(self) -> bool:
        return self.best is not None and self.best >= self.threshold


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
    primary: bool = True
    """The claim's pre-registered test (Holm-adjusted with the others); secondary tests
    are reported unadjusted."""
    adequacy: Adequacy | None = None
    groups: tuple[Group, ...] = ()
    available: bool = True
    reason: str = ""
    """Why a test that is not run has no experiment yet."""
    paired: bool = False
    estimate: float | None = None
    low: float | None = None
    high: float | None = None
    mde: float | None = None
    """Minimum detectable effect of this test: 80% power at alpha = 0.05, in its unit."""
    p: float | None = None
    p_outside: float | None = None
    """Equivalence tests: the p-value of 'the contrast lies outside ±margin'."""
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
            actual = config.model_options.get(name, OMITTED_DEFAULTS.get(name))
        if isinstance(actual, tuple):
            actual = list(actual)
        if actual != value:
            return False
    return True


def group(
    label: str, weight: float, records: Sequence[Mapping[str, Any]], measure: Measure
) -> Group:
    """The group of ``records``' values of ``measure`` (runs without a value are left out),
    each with its run's seed."""
    pairs = [(measure(record), record.get("config", {}).get("seed")) for record in records]
    kept = [(v, seed) for v, seed in pairs if v is not None and math.isfinite(v)]
    diverged = sum(record.get("status") == "diverged" for record in records)
    seeds = tuple(seed for _, seed in kept)
    return Group(
        label,
        weight,
        tuple(v for v, _ in kept),
        len(records),
        diverged,
        seeds if all(isinstance(seed, int) for seed in seeds) else (),
        sum(collapsed(record) for record in records),
    )


def adequacy(runs: Runs, experiment: str, threshold: float, measure: Measure) -> Adequacy:
    """The best configuration of ``experiment`` (its runs grouped by everything but the
    seed) by mean ``measure``, against ``threshold``."""
    configs = runs.configs(experiment)
    facts = {
        "name": experiment,
        "models": sorted({c.model for c in configs}),
        "train_size": sorted({c.train_subset or FULL_TRAIN for c in configs}),
        "epochs": sorted({c.epochs for c in configs}),
        "seeds": len({c.seed for c in configs}),
        "batch_sizes": sorted({c.batch_size for c in configs}),
    }
    by_config: dict[str, list[float]] = {}
    labels: dict[str, str] = {}
    for config in configs:
        record = runs.by_id.get(config.run_id)
        value = measure(record) if record is not None else None
        if value is None or not math.isfinite(value):
            continue
        key = _without_seed(config)
        by_config.setdefault(key, []).append(value)
        labels[key] = _config_label(config)
    if not by_config:
        return Adequacy(threshold, None, facts=facts)
    key = max(by_config, key=lambda k: statistics.fmean(by_config[k]))
    return Adequacy(threshold, statistics.fmean(by_config[key]), labels[key], facts)


def _without_seed(config: RunConfig) -> str:
    return replace(config, seed=0).run_id


def _config_label(config: RunConfig) -> str:
    options = ", ".join(f"{k} {v}" for k, v in sorted(config.model_options.items()))
    optimizer = f"{config.optimizer} lr {config.effective_lr:g}"
    return (
        f"{config.model} ({options}), {config.norm_label}, batch {config.batch_size}, {optimizer}"
    )


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


def paired_units(groups: Sequence[Group]) -> list[float] | None:
    """The contrast computed within each seed, when every group holds one value per seed
    for the same two or more seeds; None otherwise (the contrast is then Welch's)."""
    if not groups or any(not g.seeds or len(set(g.seeds)) != len(g.seeds) for g in groups):
        return None
    shared = set(groups[0].seeds)
    if len(shared) < 2 or any(set(g.seeds) != shared for g in groups):
        return None
    by_seed = [dict(zip(g.seeds, g.values, strict=True)) for g in groups]
    return [
        math.fsum(g.weight * values[seed] for g, values in zip(groups, by_seed, strict=True))
        for seed in sorted(shared)
    ]


def _outside_p(result: Contrast, margin: float) -> float | None:
    """Two-sided p-value of 'the contrast lies outside ±margin': below 0.05 exactly when
    the 95% interval lies wholly above +margin or wholly below −margin."""
    if result.se is None or result.df is None:
        return None
    if result.se == 0.0:
        return 0.0 if abs(result.estimate) > margin else 1.0
    t = (abs(result.estimate) - margin) / result.se
    return float(min(1.0, 2.0 * scipy_stats.t.sf(t, result.df)))


def compute(test: Check) -> Check:
    """``test`` with its estimate, interval, p-values, minimum detectable effect and
    unadjusted verdict filled in (not tested when its experiment was undertrained)."""
    empty = dict(estimate=None, low=None, high=None, p=None, p_outside=None, p_adjusted=None)
    if not test.available or not test.groups:
        return replace(test, **empty, available=False, raw_verdict=NOT_RUN, verdict=NOT_RUN)
    if all(g.runs == 0 for g in test.groups):
        waiting = test.reason or "its runs have not finished yet"
        return replace(test, **empty, raw_verdict=NOT_RUN, verdict=NOT_RUN, reason=waiting)
    if any(len(g.values) < 2 for g in test.groups):
        return replace(test, **empty, raw_verdict=TOO_FEW, verdict=TOO_FEW)
    units = paired_units(test.groups)
    if units is not None:
        result = paired_contrast(units)
    else:
        result = contrast([list(g.values) for g in test.groups], [g.weight for g in test.groups])
    margin = test.margin or 0.0
    within = test.side == "within"
    raw = judge(result, test.side, test.margin)
    if test.adequacy is not None and not test.adequacy.met:
        raw = UNDERTRAINED
    return replace(
        test,
        paired=units is not None,
        estimate=result.estimate,
        low=result.low,
        high=result.high,
        mde=minimum_detectable_effect(result, ALPHA),
        p=equivalence_p_value(result, margin) if within else p_value(result),
        p_outside=_outside_p(result, margin) if within else None,
        raw_verdict=raw,
        verdict=UNDERTRAINED if raw == UNDERTRAINED else test.verdict,
    )


def tested(test: Check) -> bool:
    """Whether ``test`` has a p-value and a trained experiment (it enters the verdicts)."""
    return test.estimate is not None and test.p is not None and test.raw_verdict != UNDERTRAINED


def adjust(tests: Sequence[Check]) -> list[Check]:
    """Holm-adjust the p-values of the primary tests, and give every test its verdict:
    primary tests from their adjusted p, secondary ones from their own."""
    adjusted = holm([t.p if t.primary and tested(t) else None for t in tests])
    family = sum(value is not None for value in adjusted)
    out = []
    for test, p_adj in zip(tests, adjusted, strict=True):
        if not tested(test):
            out.append(test)
        elif test.primary:
            assert p_adj is not None
            out.append(replace(test, p_adjusted=p_adj, verdict=_verdict(test, p_adj, family)))
        else:
            assert test.p is not None
            out.append(replace(test, verdict=_verdict(test, test.p, 1)))
    return out


def _verdict(test: Check, p: float, family: int) -> str:
    """The verdict from ``p`` (adjusted, for a primary test in a family of ``family``)."""
    assert test.estimate is not None
    if test.side == "within":
        if p < ALPHA:
            return SUPPORTED
        outside = min(1.0, (test.p_outside if test.p_outside is not None else 1.0) * family)
        return CONTRADICTED if outside < ALPHA else INCONCLUSIVE
    if p >= ALPHA:
        return INCONCLUSIVE
    predicted = test.estimate > 0 if test.side == "greater" else test.estimate < 0
    return SUPPORTED if predicted else CONTRADICTED


def describe(g: Group, scale: Scale) -> str:
    """``bn at batch 4: 91.20 (std 0.80, 5 runs, 1 diverged)``: diverged counts runs whose
    loss became NaN and runs that ended within a few points of chance."""
    if not g.values:
        return f"{g.label}: no values ({g.runs} runs)"
    mean = statistics.fmean(g.values)
    shown = f"{10**mean:.3g} (geometric mean)" if scale == "log10" else f"{mean:.3g}"
    parts = [f"std {statistics.stdev(g.values):.2g}"] if len(g.values) > 1 else []
    parts.append(f"{len(g.values)} runs")
    if g.diverged or g.collapsed:
        kinds = [f"{g.diverged} NaN"] * bool(g.diverged) + [
            f"{g.collapsed} at chance (+{CHANCE_MARGIN:g} pp)"
        ] * bool(g.collapsed)
        parts.append(f"{g.diverged + g.collapsed} diverged: {', '.join(kinds)}")
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


def format_mde(test: Check) -> str:
    """The minimum detectable effect in the test's unit (a factor on a log10 scale)."""
    if test.mde is None:
        return "—"
    if test.scale == "log10":
        return f"{10**test.mde:.3g}x"
    return f"{test.mde:.2g}{' pp' if test.scale == 'pp' else ''}"


def format_p(value: float | None) -> str:
    if value is None:
        return "—"
    return "< 0.0001" if value < 1e-4 else f"{value:.4f}" if value < 0.01 else f"{value:.3f}"
