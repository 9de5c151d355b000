"""The tutorials' claims about normalization, each checked against a sweep's runs.

Every claim lives in :data:`CLAIMS`: its text, where it comes from, which
runs it compares (its design), which side of 0 it predicts (its rule) and
the metric. :func:`verdicts` evaluates each claim the sweep covers,
separately per experiment, as a Welch interval over seeds
(:func:`normlab.report.stats.contrast`) in percentage points.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from normlab.report.runs import Run, Sweep
from normlab.report.stats import Contrast, contrast, equivalence_p_value

SUPPORTED = "supported"
CONTRADICTED = "contradicted"
INCONCLUSIVE = "inconclusive"
NEEDS_SEEDS = "needs ≥ 2 seeds"
OUTCOMES = (SUPPORTED, CONTRADICTED, INCONCLUSIVE, NEEDS_SEEDS)

LEVEL = 0.95
"""Confidence level of every verdict's interval."""

Metric = Literal["val_acc", "gap"]
Side = Literal["greater", "less", "within"]

RULES: Mapping[Side, str] = {
    "greater": "supported when the 95% interval lies entirely above 0, contradicted when "
    "entirely below 0, inconclusive otherwise",
    "less": "supported when the 95% interval lies entirely below 0, contradicted when "
    "entirely above 0, inconclusive otherwise",
    "within": "supported when the equivalence test (TOST) rejects a difference of ±{margin:g} "
    "pp or more at 5%, i.e. the 90% interval lies within ±{margin:g} pp; contradicted when "
    "the 95% interval lies wholly outside ±{margin:g} pp; inconclusive otherwise",
}

MINUS = "\u2212"
# The minus sign that comparisons are written with: "ln − none at batch 32".

STEPS_NOTE = (
    "epochs are fixed, so smaller batches also take more optimizer steps; a reference norm "
    "run at both batch sizes removes that effect"
)


@dataclass(frozen=True)
class EachBatchSize:
    """``first − second`` at every batch size both were run at."""

    first: str
    second: str


@dataclass(frozen=True)
class AtBatchSize:
    """``first − second`` at the smallest or largest batch size both were run at."""

    first: str
    second: str
    where: Literal["smallest", "largest"]


@dataclass(frozen=True)
class AcrossBatchSizes:
    """``norm`` at its smallest minus its largest batch size (needs two batch sizes).

    With a reference (the first of ``references`` run at both), the contrast is
    [norm − ref](smallest) − [norm − ref](largest).
    """

    norm: str
    references: tuple[str, ...] = ()


Design = EachBatchSize | AtBatchSize | AcrossBatchSizes


@dataclass(frozen=True)
class Claim:
    """One claim: what it says, where it comes from, and how a sweep tests it."""

    key: str
    text: str
    source: str
    design: Design
    side: Side
    metric: Metric = "val_acc"
    margin: float | None = None
    """Equivalence margin in percentage points, for side == "within"."""
    stability: bool = False
    """Evidence always gives each group's diverged count (beside its std over seeds)."""

    @property
    def rule(self) -> str:
        """When the claim is supported, contradicted or inconclusive."""
        return RULES[self.side].format(margin=self.margin or 0.0)

    @property
    def prediction(self) -> str:
        """What the claim predicts of the estimate: ``> 0``, ``< 0`` or ``within ±1 pp``."""
        if self.side == "within":
            return f"within ±{self.margin or 0.0:g} pp"
        return "> 0" if self.side == "greater" else "< 0"


CLAIMS: tuple[Claim, ...] = (
    Claim(
        key="ln-beats-none",
        text="Layer norm improves validation accuracy over no normalization",
        source="the tutorials: 97.38% → 97.76% on MNIST, MLP, 5 epochs",
        design=EachBatchSize("ln", "none"),
        side="greater",
    ),
    Claim(
        key="bn-beats-none",
        text="Batch norm improves validation accuracy over no normalization",
        source="the tutorials; Ioffe & Szegedy 2015",
        design=EachBatchSize("bn", "none"),
        side="greater",
    ),
    Claim(
        key="bn-small-batch",
        text="Batch norm degrades at small batch sizes",
        source="Wu & He 2018 (Group Normalization)",
        design=AcrossBatchSizes("bn", references=("ln", "none")),
        side="less",
    ),
    Claim(
        key="ln-batch-independent",
        text="Layer norm does not depend on batch size",
        source="Ba, Kiros & Hinton 2016 (Layer Normalization)",
        design=AcrossBatchSizes("ln"),
        side="within",
        margin=1.0,
    ),
    Claim(
        key="scalar-stable",
        text="Scalar-statistics batch norm ('1s', bn-scalar) is more stable at small batches "
        "than per-channel ('2s', bn)",
        source="the tutorials' 1s vs 2s comparison (their '2s', per-channel, is Ioffe & "
        "Szegedy's original algorithm; '1s' is a simplification)",
        design=AtBatchSize("bn-scalar", "bn", where="smallest"),
        side="greater",
        stability=True,
    ),
    Claim(
        key="channel-generalizes",
        text="Per-channel batch norm ('2s') generalizes better than scalar ('1s')",
        source="the tutorials' 1s vs 2s comparison",
        design=AtBatchSize("bn", "bn-scalar", where="largest"),
        side="greater",
    ),
    Claim(
        key="bn-regularizes",
        text="Batch norm regularizes",
        source="Ioffe & Szegedy 2015, section 3.4",
        design=EachBatchSize("none", "bn"),
        side="greater",
        metric="gap",
    ),
)


@dataclass(frozen=True)
class Verdict:
    """One claim checked at one comparison. Estimate and interval in percentage points.

    ``n`` is the number of runs (seeds) in each compared group, in the order
    of the comparison; ``low``/``high`` are None when some group has one run.
    """

    claim: str
    key: str
    source: str
    prediction: str
    rule: str
    experiment: str
    comparison: str
    metric: Metric
    estimate: float
    low: float | None
    high: float | None
    n: tuple[int, ...]
    outcome: str
    evidence: str


@dataclass(frozen=True)
class _Term:
    norm: str
    batch_size: int
    weight: float


def judge(result: Contrast, side: Side, margin: float | None = None) -> str:
    """The outcome of a claim predicting ``side`` given its contrast's interval."""
    low, high = result.low, result.high
    if low is None or high is None:
        return NEEDS_SEEDS
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


def _value(run: Run, metric: Metric) -> float:
    return 100.0 * (run.gap if metric == "gap" else run.val_acc)


def _describe(
    runs: Sequence[Run], norm: str, batch_size: int, metric: Metric, stability: bool
) -> str:
    """``bn at batch 4: 91.20% (std 0.80 pp, 3 seeds, 1 of 3 diverged)``."""
    values = [_value(run, metric) for run in runs]
    what = f"gap({norm})" if metric == "gap" else norm
    unit = " pp" if metric == "gap" else "%"
    details = [f"std {statistics.stdev(values):.2f} pp"] if len(values) > 1 else []
    details.append(f"{len(runs)} seed" + ("s" if len(runs) != 1 else ""))
    diverged = sum(run.diverged for run in runs)
    if diverged or stability:
        details.append(f"{diverged} of {len(runs)} diverged")
    return (
        f"{what} at batch {batch_size}: {statistics.fmean(values):.2f}{unit} ({', '.join(details)})"
    )


def _verdict(
    claim: Claim,
    sweep: Sweep,
    experiment: str,
    terms: Sequence[_Term],
    comparison: str,
    notes: Sequence[str] = (),
) -> Verdict:
    groups = [sweep.group(experiment, term.norm, term.batch_size) for term in terms]
    result = contrast(
        [[_value(run, claim.metric) for run in group] for group in groups],
        [term.weight for term in terms],
        level=LEVEL,
    )
    described = [
        _describe(group, term.norm, term.batch_size, claim.metric, claim.stability)
        for term, group in zip(terms, groups, strict=True)
    ]
    return Verdict(
        claim=claim.text,
        key=claim.key,
        source=claim.source,
        prediction=claim.prediction,
        rule=claim.rule,
        experiment=experiment,
        comparison=comparison,
        metric=claim.metric,
        estimate=result.estimate,
        low=result.low,
        high=result.high,
        n=tuple(len(group) for group in groups),
        outcome=judge(result, claim.side, claim.margin),
        evidence="; ".join([*described, *notes]) + ".",
    )


def _common_batch_sizes(sweep: Sweep, experiment: str, norms: Sequence[str]) -> list[int]:
    sizes = [set(sweep.batch_sizes_of(experiment, norm)) for norm in norms]
    return sorted(set.intersection(*sizes))


def _each_batch_size(claim: Claim, design: EachBatchSize, sweep: Sweep, experiment: str):
    prefix = "gap: " if claim.metric == "gap" else ""
    for size in _common_batch_sizes(sweep, experiment, (design.first, design.second)):
        terms = (_Term(design.first, size, 1.0), _Term(design.second, size, -1.0))
        comparison = f"{prefix}{design.first} {MINUS} {design.second} at batch {size}"
        yield _verdict(claim, sweep, experiment, terms, comparison)


def _at_batch_size(claim: Claim, design: AtBatchSize, sweep: Sweep, experiment: str):
    sizes = _common_batch_sizes(sweep, experiment, (design.first, design.second))
    if not sizes:
        return
    size = sizes[0] if design.where == "smallest" else sizes[-1]
    terms = (_Term(design.first, size, 1.0), _Term(design.second, size, -1.0))
    comparison = f"{design.first} {MINUS} {design.second} at batch {size} ({design.where})"
    yield _verdict(claim, sweep, experiment, terms, comparison)


def _across_batch_sizes(claim: Claim, design: AcrossBatchSizes, sweep: Sweep, experiment: str):
    sizes = sweep.batch_sizes_of(experiment, design.norm)
    if len(sizes) < 2:
        return
    small, large = sizes[0], sizes[-1]
    norm = design.norm
    available = [
        ref
        for ref in design.references
        if {small, large} <= set(sweep.batch_sizes_of(experiment, ref))
    ]
    notes = []
    if available:
        ref = available[0]
        terms = (
            _Term(norm, small, 1.0),
            _Term(ref, small, -1.0),
            _Term(norm, large, -1.0),
            _Term(ref, large, 1.0),
        )
        difference = f"({norm} {MINUS} {ref})"
        comparison = f"{difference} at batch {small} {MINUS} {difference} at batch {large}"
        skipped = design.references[: design.references.index(ref)]
        why = f"{ref} was run at both batch {small} and {large}"
        if skipped:
            why += f" ({', '.join(skipped)} was not)"
        notes.append(f"reference {ref}: {why}; {STEPS_NOTE}")
    else:
        terms = (_Term(norm, small, 1.0), _Term(norm, large, -1.0))
        comparison = f"{norm} at batch {small} {MINUS} {norm} at batch {large}"
        if design.references:
            names = " nor ".join(design.references)
            notes.append(
                f"no reference: neither {names} was run at both batch {small} and {large}, so "
                "the estimate also includes the effect of taking more steps at small batches"
            )
    if claim.side == "within":
        notes.append(
            f"equivalence margin ±{claim.margin:g} pp: supported only if the whole interval "
            "lies within it"
        )
    yield _verdict(claim, sweep, experiment, terms, comparison, notes)


def evaluate(claim: Claim, sweep: Sweep, experiment: str) -> list[Verdict]:
    """``claim``'s verdicts in one experiment; empty when the sweep does not cover it."""
    design = claim.design
    if isinstance(design, EachBatchSize):
        return list(_each_batch_size(claim, design, sweep, experiment))
    if isinstance(design, AtBatchSize):
        return list(_at_batch_size(claim, design, sweep, experiment))
    return list(_across_batch_sizes(claim, design, sweep, experiment))


def verdicts(records: Sequence[Mapping[str, Any]] | Sweep) -> list[Verdict]:
    """Every claim in :data:`CLAIMS` the runs cover, per experiment, in that order.

    Args:
        records: results records (``normlab.experiment.store.read_results``),
            or a :class:`Sweep` already built from them.
    """
    sweep = records if isinstance(records, Sweep) else Sweep.from_records(records)
    return [
        verdict
        for experiment in sweep.experiments
        for claim in CLAIMS
        for verdict in evaluate(claim, sweep, experiment)
    ]
