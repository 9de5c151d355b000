"""The claims a ``normlab compare`` sweep can test, and their findings on its runs.

Each entry of :data:`CLAIMS` names a claim of normlab.report.catalogue, the design that
picks its groups from whatever norms and batch sizes the sweep ran, the metric and the
side of 0 it predicts. :func:`verdicts` resolves every design against the sweep, per
experiment, into tests (normlab.report.claims) and evaluates them with
normlab.report.evaluation: Welch intervals over seeds in percentage points, the interval
rule's verdicts, no multiplicity adjustment.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

from normlab.report import catalogue as c
from normlab.report.claims import Arm, Claim, ClaimTest, Side
from normlab.report.evaluation import Finding, Group, evaluate
from normlab.report.runs import Run, Sweep

Metric = Literal["val_acc", "gap"]

MINUS = "\u2212"
# The minus sign that comparisons are written with: "ln − none at batch 32".

STEPS_NOTE = (
    "epochs are fixed, so smaller batches also take more optimizer steps; a reference norm "
    "run at both batch sizes removes that effect"
)
MEASURES: Mapping[Metric, str] = {
    "val_acc": "final validation accuracy, pp",
    "gap": "generalization gap (final train accuracy in eval mode minus validation), pp",
}
UNITS: Mapping[Metric, str] = {"val_acc": "%", "gap": " pp"}


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
class SweepClaim:
    """A claim as a sweep tests it: its design, the side of 0 it predicts, the metric."""

    claim: Claim
    design: Design
    side: Side
    metric: Metric = "val_acc"


CLAIMS: tuple[SweepClaim, ...] = (
    SweepClaim(c.LN_BEATS_NONE, EachBatchSize("ln", "none"), "greater"),
    SweepClaim(c.BN_BEATS_NONE, EachBatchSize("bn", "none"), "greater"),
    SweepClaim(c.BN_SMALL_BATCH, AcrossBatchSizes("bn", references=("ln", "none")), "less"),
    SweepClaim(c.LN_BATCH_INDEPENDENT, AcrossBatchSizes("ln"), "within"),
    SweepClaim(c.SCALAR_STABLE, AtBatchSize("bn-scalar", "bn", where="smallest"), "greater"),
    SweepClaim(c.CHANNEL_GENERALIZES, AtBatchSize("bn", "bn-scalar", where="largest"), "greater"),
    SweepClaim(c.BN_REGULARIZES, EachBatchSize("none", "bn"), "greater", metric="gap"),
)


def _value(run: Run, metric: Metric) -> float:
    return 100.0 * (run.gap if metric == "gap" else run.val_acc)


def _test(
    entry: SweepClaim,
    experiment: str,
    terms: Sequence[tuple[str, int, float]],
    comparison: str,
    notes: Sequence[str] = (),
) -> ClaimTest:
    """The test of ``entry`` on the groups (norm, batch size, weight) of ``terms``."""
    what = "gap({})" if entry.metric == "gap" else "{}"
    return ClaimTest(
        id=entry.claim.id,
        claim=entry.claim,
        side=entry.side,
        arms=tuple(
            Arm(
                f"{what.format(norm)} at batch {size}",
                weight,
                {"experiment": experiment, "norm": norm, "batch_size": size},
            )
            for norm, size, weight in terms
        ),
        value=partial(_value, metric=entry.metric),
        measure=MEASURES[entry.metric],
        experiment=experiment,
        comparison=comparison,
        paired=False,
        notes=tuple(notes),
    )


def _common_batch_sizes(sweep: Sweep, experiment: str, norms: Sequence[str]) -> list[int]:
    sizes = [set(sweep.batch_sizes_of(experiment, norm)) for norm in norms]
    return sorted(set.intersection(*sizes))


def _each_batch_size(
    entry: SweepClaim, design: EachBatchSize, sweep: Sweep, experiment: str
) -> Iterator[ClaimTest]:
    prefix = "gap: " if entry.metric == "gap" else ""
    for size in _common_batch_sizes(sweep, experiment, (design.first, design.second)):
        terms = ((design.first, size, 1.0), (design.second, size, -1.0))
        comparison = f"{prefix}{design.first} {MINUS} {design.second} at batch {size}"
        yield _test(entry, experiment, terms, comparison)


def _at_batch_size(
    entry: SweepClaim, design: AtBatchSize, sweep: Sweep, experiment: str
) -> Iterator[ClaimTest]:
    sizes = _common_batch_sizes(sweep, experiment, (design.first, design.second))
    if not sizes:
        return
    size = sizes[0] if design.where == "smallest" else sizes[-1]
    terms = ((design.first, size, 1.0), (design.second, size, -1.0))
    comparison = f"{design.first} {MINUS} {design.second} at batch {size} ({design.where})"
    yield _test(entry, experiment, terms, comparison)


def _across_batch_sizes(
    entry: SweepClaim, design: AcrossBatchSizes, sweep: Sweep, experiment: str
) -> Iterator[ClaimTest]:
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
        terms: tuple[tuple[str, int, float], ...] = (
            (norm, small, 1.0),
            (ref, small, -1.0),
            (norm, large, -1.0),
            (ref, large, 1.0),
        )
        difference = f"({norm} {MINUS} {ref})"
        comparison = f"{difference} at batch {small} {MINUS} {difference} at batch {large}"
        skipped = design.references[: design.references.index(ref)]
        why = f"{ref} was run at both batch {small} and {large}"
        if skipped:
            why += f" ({', '.join(skipped)} was not)"
        notes.append(f"reference {ref}: {why}; {STEPS_NOTE}")
    else:
        terms = ((norm, small, 1.0), (norm, large, -1.0))
        comparison = f"{norm} at batch {small} {MINUS} {norm} at batch {large}"
        if design.references:
            names = " nor ".join(design.references)
            notes.append(
                f"no reference: neither {names} was run at both batch {small} and {large}, so "
                "the estimate also includes the effect of taking more steps at small batches"
            )
    if entry.side == "within":
        notes.append(
            f"equivalence margin ±{entry.claim.margin:g} pp: supported only if the whole "
            "interval lies within it"
        )
    yield _test(entry, experiment, terms, comparison, notes)


def tests(entry: SweepClaim, sweep: Sweep, experiment: str) -> list[ClaimTest]:
    """``entry``'s tests in one experiment; none when the sweep does not cover it."""
    design = entry.design
    if isinstance(design, EachBatchSize):
        return list(_each_batch_size(entry, design, sweep, experiment))
    if isinstance(design, AtBatchSize):
        return list(_at_batch_size(entry, design, sweep, experiment))
    return list(_across_batch_sizes(entry, design, sweep, experiment))


def group(sweep: Sweep, arm: Arm, test: ClaimTest, unit: str) -> Group:
    """``arm``'s runs in ``sweep`` as a group of ``test``'s values; a diverged run counts
    with the accuracy it reached."""
    runs = sweep.group(arm.where["experiment"], arm.where["norm"], arm.where["batch_size"])
    assert test.value is not None
    values = [test.value(run) for run in runs]
    return Group(
        arm.label,
        arm.weight,
        tuple(value for value in values if value is not None),
        len(runs),
        sum(run.diverged for run in runs),
        tuple(run.seed for run, value in zip(runs, values, strict=True) if value is not None),
        unit=unit,
    )


def verdicts(records: Sequence[Mapping[str, Any]] | Sweep) -> list[Finding]:
    """The findings of every claim in :data:`CLAIMS` the runs cover, per experiment, in
    that order.

    Args:
        records: results records (``normlab.experiment.store.read_results``),
            or a :class:`Sweep` already built from them.
    """
    sweep = records if isinstance(records, Sweep) else Sweep.from_records(records)
    return [
        evaluate(test, [group(sweep, arm, test, UNITS[entry.metric]) for arm in test.arms])
        for experiment in sweep.experiments
        for entry in CLAIMS
        for test in tests(entry, sweep, experiment)
    ]
