"""The one evaluation of a claim's test: groups of values in, a :class:`Finding` out.

:func:`evaluate` computes a test's contrast (normlab.report.stats). When the test pairs by
seed and every group holds one value per seed for the same two or more seeds, the
contrast is computed within each seed and its interval is a one-sample t interval over
seeds; otherwise it is Welch's over independent groups. Every tested finding has its
estimate, 95% interval, two-sided p-value (for an equivalence, the TOST p-value of
|contrast| >= margin) and minimum detectable effect (80% power at α = 0.05), and the
verdict of the interval rule:

- a directional claim is *supported* when the 95% interval lies wholly on the predicted
  side of 0, *contradicted* when wholly on the other side, *inconclusive* otherwise;
- an equivalence claim is *supported* when the TOST rejects at 5%, that is the 90%
  interval lies within ±margin; *contradicted* when the 95% interval lies wholly outside
  ±margin; *inconclusive* otherwise;
- a test without two values in every group is *too few runs*; one whose runs have not
  finished, or that has no experiment yet, *not run*; one whose experiment did not train
  its best configuration to the experiment's adequacy threshold is *not tested
  (undertrained)*, whatever its numbers.

:func:`adjust` (Holm, when asked) reads the verdicts from p-values instead: a primary
test's Holm-adjusted over the primary tests only (an undertrained one leaves the family),
a secondary test's unadjusted. The interval rule's verdict stays beside it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from normlab.report.claims import ClaimTest, Side
from normlab.report.stats import (
    Contrast,
    contrast,
    equivalence_p_value,
    holm,
    minimum_detectable_effect,
    outside_margin_p_value,
    p_value,
    paired_contrast,
)

SUPPORTED = "supported"
CONTRADICTED = "contradicted"
INCONCLUSIVE = "inconclusive"
TOO_FEW = "too few runs"
NOT_RUN = "not run"
UNDERTRAINED = "not tested (undertrained)"

LEVEL = 0.95
"""Confidence level of every interval."""
ALPHA = 0.05
"""Significance level of every p-value verdict, and of the minimum detectable effect."""


@dataclass(frozen=True)
class Group:
    """One group of runs in a contrast: a label, its weight and its runs' values."""

    label: str
    weight: float
    values: tuple[float, ...]
    runs: int
    diverged: int = 0
    """Runs whose loss became NaN or infinite."""
    seeds: tuple[int, ...] = ()
    """The seed of each value, in order; empty when unknown (no pairing)."""
    collapsed: int = 0
    """Runs that finished within a few points of chance accuracy (counted as diverged)."""
    unit: str = ""
    """The values' unit as written after a number: ``%`` or `` pp``."""


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
class Finding:
    """A test evaluated on its groups: estimate and interval in the test's unit."""

    test: ClaimTest
    groups: tuple[Group, ...] = ()
    adequacy: Adequacy | None = None
    paired: bool = False
    estimate: float | None = None
    """Σ wᵢ·meanᵢ when every group has a value (with or without an interval)."""
    low: float | None = None
    high: float | None = None
    mde: float | None = None
    """Minimum detectable effect: 80% power at alpha = 0.05, in the test's unit."""
    p: float | None = None
    p_outside: float | None = None
    """Equivalence tests: the p-value of 'the contrast lies outside ±margin'."""
    p_adjusted: float | None = None
    unadjusted: str = NOT_RUN
    """The interval rule's verdict (or why the test was not tested)."""
    verdict: str = NOT_RUN
    """The verdict: the interval rule's, or the p-value rule's after :func:`adjust`."""
    reason: str = ""
    """Why a test that is not run has no verdict."""

    @property
    def n(self) -> tuple[int, ...]:
        """The number of runs in each group, in the contrast's order."""
        return tuple(g.runs for g in self.groups)

    @property
    def tested(self) -> bool:
        """Whether the finding has a p-value and a trained experiment (it gets a verdict)."""
        return self.p is not None and self.unadjusted != UNDERTRAINED


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


def judge(result: Contrast, side: Side, margin: float | None = None) -> str:
    """The interval rule's verdict on a contrast for a claim predicting ``side``."""
    low, high = result.low, result.high
    if low is None or high is None:
        return TOO_FEW
    if side == "within":
        bound = margin or 0.0
        tost = equivalence_p_value(result, bound)
        if tost is not None and tost < 1.0 - result.level:
            return SUPPORTED
        return CONTRADICTED if low > bound or high < -bound else INCONCLUSIVE
    above, below = low > 0, high < 0
    claimed, other = (above, below) if side == "greater" else (below, above)
    if claimed:
        return SUPPORTED
    return CONTRADICTED if other else INCONCLUSIVE


def evaluate(test: ClaimTest, groups: Sequence[Group], adequacy: Adequacy | None = None) -> Finding:
    """``test`` on ``groups`` (one per arm, in order): its statistics and the interval
    rule's verdict; ``adequacy`` is its experiment's (an undertrained one gets none)."""
    groups = tuple(groups)
    found = Finding(test, groups, adequacy, reason=test.reason)
    if not groups:
        return found
    if all(g.runs == 0 for g in groups):
        return replace(found, reason=test.reason or "its runs have not finished yet")
    estimate = None
    if all(g.values for g in groups):
        estimate = math.fsum(g.weight * statistics.fmean(g.values) for g in groups)
    if any(len(g.values) < 2 for g in groups):
        return replace(found, estimate=estimate, unadjusted=TOO_FEW, verdict=TOO_FEW)
    units = paired_units(groups) if test.paired else None
    if units is not None:
        result = paired_contrast(units, LEVEL)
    else:
        result = contrast([list(g.values) for g in groups], [g.weight for g in groups], LEVEL)
    margin = test.margin or 0.0
    within = test.side == "within"
    verdict = judge(result, test.side, test.margin)
    if adequacy is not None and not adequacy.met:
        verdict = UNDERTRAINED
    return replace(
        found,
        paired=units is not None,
        estimate=result.estimate,
        low=result.low,
        high=result.high,
        mde=minimum_detectable_effect(result, ALPHA),
        p=equivalence_p_value(result, margin) if within else p_value(result),
        p_outside=outside_margin_p_value(result, margin) if within else None,
        unadjusted=verdict,
        verdict=verdict,
    )


def adjust(findings: Sequence[Finding]) -> list[Finding]:
    """Holm-adjust the p-values of the tested primary findings, and give every tested
    finding its p-value verdict: primary ones from their adjusted p, secondary ones from
    their own. Findings that were not tested keep their outcome."""
    adjusted = holm([f.p if f.test.primary and f.tested else None for f in findings])
    family = sum(value is not None for value in adjusted)
    out = []
    for found, p_adj in zip(findings, adjusted, strict=True):
        if not found.tested:
            out.append(found)
        elif found.test.primary:
            assert p_adj is not None
            out.append(replace(found, p_adjusted=p_adj, verdict=_verdict(found, p_adj, family)))
        else:
            assert found.p is not None
            out.append(replace(found, verdict=_verdict(found, found.p, 1)))
    return out


def _verdict(found: Finding, p: float, family: int) -> str:
    """The verdict from ``p`` (adjusted, for a primary test in a family of ``family``)."""
    assert found.estimate is not None
    if found.test.side == "within":
        if p < ALPHA:
            return SUPPORTED
        outside = min(1.0, (found.p_outside if found.p_outside is not None else 1.0) * family)
        return CONTRADICTED if outside < ALPHA else INCONCLUSIVE
    if p >= ALPHA:
        return INCONCLUSIVE
    predicted = found.estimate > 0 if found.test.side == "greater" else found.estimate < 0
    return SUPPORTED if predicted else CONTRADICTED
