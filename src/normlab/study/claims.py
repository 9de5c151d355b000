"""The claims the study checks, declared as data: each claim's precise testable form, its
one pre-registered primary test and the secondary tests beside it (normlab.report.claims),
with the figure and tables behind them; and :func:`sections`, which evaluates them on the
study's records (normlab.study.findings).

The primary test sits at the tutorial's own setting where the tutorial has one (the
tutorials' MLP at batch 32, Adam 1e-3, 5 epochs on the full training set); how the
effect changes with the batch size is reported beside it, never averaged away.
"""

from __future__ import annotations

from dataclasses import replace

from normlab.report import catalogue as c
from normlab.report.claims import Arm, Claim, ClaimTest
from normlab.study import measures as m
from normlab.study.after_training_claims import batch_fluctuation, input_shift, online_inference
from normlab.study.cells import batch_cell
from normlab.study.cost_claims import faster_wall, overhead, scalar_cheaper
from normlab.study.findings import Runs, evaluate_section
from normlab.study.mechanism_claims import (
    covariate_shift,
    group_norm,
    landscape,
    not_yet_tested,
    width,
)
from normlab.study.plan import REFERENCE_BATCH, Budget
from normlab.study.sections import ACC, DeclaredSection, Section, StudyTest, experiment_text
from normlab.study.training_claims import (
    deep_networks,
    dropout,
    higher_learning_rates,
    initialization,
    regularizes,
)


def declared(budget: Budget) -> list[DeclaredSection]:
    """Every claim's section at ``budget``, in the report's order."""
    return [
        _replication(budget),
        _beats_none(budget, c.BN_BEATS_NONE, "bn"),
        _beats_none(budget, c.LN_BEATS_NONE, "ln"),
        _small_batch(budget),
        _ln_batch_independent(budget),
        _scalar_stable(budget),
        _channel_generalizes(budget),
        _converges_faster(budget),
        _ln_large_batch(budget),
        higher_learning_rates(budget),
        deep_networks(budget),
        initialization(budget),
        regularizes(budget),
        dropout(budget),
        covariate_shift(budget),
        landscape(budget),
        width(budget),
        group_norm(budget),
        input_shift(budget),
        online_inference(budget),
        batch_fluctuation(budget),
        overhead(),
        scalar_cheaper(),
        faster_wall(),
        not_yet_tested(),
    ]


def sections(runs: Runs, budget: Budget) -> list[Section]:
    """Every claim's section, its tests evaluated (not yet Holm-adjusted)."""
    return [evaluate_section(section, runs) for section in declared(budget)]


def _batch_text(b: Budget) -> str:
    return experiment_text(
        b,
        "the tutorials' MLP (784-128-64-10, norm before ReLU), Adam at 1e-3 x sqrt(batch / 32) "
        f"(1e-3 at batch 32), batch sizes {', '.join(map(str, b.batch_sizes))}, {b.seeds} seeds "
        f"({b.replication_seeds} at batch 32: the replication's runs)",
    )


def _pair(first: str, second: str, size: int) -> tuple[Arm, ...]:
    return tuple(
        Arm(f"{norm} at batch {size}", weight, batch_cell(norm, size))
        for norm, weight in ((first, 1), (second, -1))
    )


def _by_batch(b: Budget, test: ClaimTest, first: str, second: str) -> tuple[StudyTest, ...]:
    """``test`` (``first - second``) at every batch size but the tutorials', as secondary
    tests."""
    return tuple(
        StudyTest(
            replace(
                test,
                id=f"{test.id} @ batch {size}",
                primary=False,
                arms=_pair(first, second, size),
            ),
            "batch",
        )
        for size in b.batch_sizes
        if size != REFERENCE_BATCH
    )


# --- the tutorial's own experiment -------------------------------------------------------


def _replication(b: Budget) -> DeclaredSection:
    test = ClaimTest(
        id="replication: ln - none",
        claim=c.REPLICATION,
        hypothesis="rerun exactly as the tutorial ran it, ln's validation accuracy minus "
        "none's is > 0; the tutorial's own gap is +0.38 pp from one run each",
        experiment=experiment_text(
            b,
            "784-128-64-10 MLP, the norm before each ReLU, Adam 1e-3, batch 32, "
            f"none, bn, bn-scalar and ln, {b.replication_seeds} seeds each",
        ),
        measure=ACC,
        side="greater",
        primary=False,
        arms=tuple(
            Arm(norm, weight, {"experiment": "replication", "norm": norm})
            for norm, weight in (("ln", 1), ("none", -1))
        ),
        value=m.val_acc,
    )
    return DeclaredSection(
        "replication",
        c.REPLICATION.statement,
        (StudyTest(test, "replication"),),
        "replication.png",
        ("replication", "replication-verdict"),
    )


# --- claims on the tutorials' MLP --------------------------------------------------------


def _beats_none(b: Budget, claim: Claim, norm: str) -> DeclaredSection:
    test = ClaimTest(
        id=claim.id,
        claim=claim,
        hypothesis=f"at the tutorial's setting (batch 32), {norm}'s validation accuracy minus "
        f"none's is > 0; the same contrast at the other batch sizes is reported beside it",
        experiment=_batch_text(b),
        measure=ACC,
        side="greater",
        arms=_pair(norm, "none", REFERENCE_BATCH),
        value=m.val_acc,
    )
    tests = (StudyTest(test, "replication"), *_by_batch(b, test, norm, "none"))
    return DeclaredSection(claim.id, claim.statement, tests, "batch_size.png", ("batch",))


def _small_batch(b: Budget) -> DeclaredSection:
    small = min(b.batch_sizes)
    terms = [
        ("bn", small, 1),
        ("ln", small, -1),
        ("bn", REFERENCE_BATCH, -1),
        ("ln", REFERENCE_BATCH, 1),
    ]
    primary = ClaimTest(
        id="bn-small-batch",
        claim=c.BN_SMALL_BATCH,
        hypothesis=f"(bn - ln) at batch {small} minus (bn - ln) at batch 32 is < 0: bn loses "
        "more than ln at the small batch. Layer norm has no batch statistics, so the "
        "difference of differences removes what the batch size does to both (the number of "
        "updates, the gradient noise); Adam's rate is scaled with sqrt(batch)",
        experiment=_batch_text(b),
        measure="difference of differences of validation accuracy, pp",
        side="less",
        arms=tuple(Arm(f"{n} at batch {s}", w, batch_cell(n, s)) for n, s, w in terms),
        value=m.val_acc,
    )
    renorm = replace(
        primary,
        id=f"mechanism: brn - bn at batch {small}",
        primary=False,
        hypothesis=f"batch renormalization, which corrects the batch statistics towards "
        f"the population's, recovers accuracy at batch {small}: brn - bn > 0",
        measure=ACC,
        side="greater",
        arms=_pair("brn", "bn", small),
    )
    return DeclaredSection(
        primary.id,
        c.BN_SMALL_BATCH.statement,
        (StudyTest(primary, "batch"), StudyTest(renorm, "batch")),
        "batch_size.png",
        ("batch",),
    )


def _ln_batch_independent(b: Budget) -> DeclaredSection:
    small = min(b.batch_sizes)
    claim = c.LN_BATCH_INDEPENDENT
    test = ClaimTest(
        id=claim.id,
        claim=claim,
        hypothesis=f"ln's validation accuracy at batch {small} minus at batch 32 lies within "
        f"±{claim.margin:g} pp (an equivalence test, the margin of normlab's own report): "
        "'does not depend' read as 'changes by less than a point' over the tested range, with "
        "Adam's rate scaled with sqrt(batch)",
        experiment=_batch_text(b),
        measure="validation accuracy difference, pp",
        side="within",
        arms=(
            Arm(f"ln at batch {small}", 1, batch_cell("ln", small)),
            Arm("ln at batch 32", -1, batch_cell("ln", REFERENCE_BATCH)),
        ),
        value=m.val_acc,
    )
    return DeclaredSection(claim.id, claim.statement, (StudyTest(test, "batch"),), "batch_size.png")


def _scalar_stable(b: Budget) -> DeclaredSection:
    small = min(b.batch_sizes)
    claim = c.SCALAR_STABLE
    test = ClaimTest(
        id=claim.id,
        claim=claim,
        hypothesis=f"at the smallest batch ({small}) bn-scalar's validation accuracy minus "
        "bn's is > 0 (stability read as accuracy; divergences are counted)",
        experiment=_batch_text(b),
        measure=ACC,
        side="greater",
        arms=_pair("bn-scalar", "bn", small),
        value=m.val_acc,
    )
    return DeclaredSection(claim.id, claim.statement, (StudyTest(test, "batch"),), "batch_size.png")


def _channel_generalizes(b: Budget) -> DeclaredSection:
    claim = c.CHANNEL_GENERALIZES
    primary = ClaimTest(
        id=claim.id,
        claim=claim,
        hypothesis="at the tutorial's setting (batch 32), bn's validation accuracy minus "
        "bn-scalar's is > 0; other batch sizes beside it",
        experiment=_batch_text(b),
        measure=ACC,
        side="greater",
        arms=_pair("bn", "bn-scalar", REFERENCE_BATCH),
        value=m.val_acc,
    )
    tests = (StudyTest(primary, "replication"), *_by_batch(b, primary, "bn", "bn-scalar"))
    return DeclaredSection(claim.id, claim.statement, tests, "batch_size.png")


def _converges_faster(b: Budget) -> DeclaredSection:
    claim = c.BN_CONVERGES_FASTER
    test = ClaimTest(
        id=claim.id,
        claim=claim,
        hypothesis="validation accuracy after the first epoch, bn minus none, at batch 32 is "
        "> 0: 'converges quicker' read as 'is further after the same amount of training'",
        experiment=_batch_text(b),
        measure="first-epoch validation accuracy, pp",
        side="greater",
        arms=_pair("bn", "none", REFERENCE_BATCH),
        value=m.first_epoch_acc,
    )
    return DeclaredSection(
        claim.id,
        claim.statement,
        (StudyTest(test, "replication"),),
        "convergence.png",
        ("convergence",),
    )


def _ln_large_batch(b: Budget) -> DeclaredSection:
    large = max(b.batch_sizes)
    claim = c.LN_SLOWER_LARGE_BATCH
    test = ClaimTest(
        id=claim.id,
        claim=claim,
        hypothesis=f"at the largest batch ({large}), first-epoch validation accuracy of ln "
        "minus bn is < 0",
        experiment=_batch_text(b),
        measure="first-epoch validation accuracy, pp",
        side="less",
        arms=_pair("ln", "bn", large),
        value=m.first_epoch_acc,
    )
    return DeclaredSection(
        claim.id, claim.statement, (StudyTest(test, "batch"),), "convergence.png"
    )
