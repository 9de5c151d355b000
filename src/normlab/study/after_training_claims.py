"""The claims read off models evaluated after training (normlab.experiment.evaluations):
robustness to shifted inputs, inference at batch 1, and the sensitivity of per-channel and
scalar statistics to the batch a model sees."""

from __future__ import annotations

from dataclasses import replace

from normlab.experiment.evaluations import BATCH_SIZES, SHIFTS
from normlab.report import catalogue as c
from normlab.report.claims import Arm, ClaimTest
from normlab.study import measures as m
from normlab.study.cells import after_cell
from normlab.study.plan import REFERENCE_BATCH, Budget
from normlab.study.sections import DeclaredSection, StudyTest, experiment_text

EXPERIMENT = "after-training"


def _experiment(b: Budget, after: str) -> str:
    return experiment_text(
        b, f"the tutorials' MLP; none, bn, bn-scalar, ln; Adam 1e-3, batch 32, {b.seeds} seeds; "
        f"after training, {after}",
    )  # fmt: skip


def _arms(*terms: tuple[str, int]) -> tuple[Arm, ...]:
    return tuple(Arm(norm, weight, after_cell(norm)) for norm, weight in terms)


def input_shift(b: Budget) -> DeclaredSection:
    claim = c.BN_INPUT_SHIFT
    shifts = ", ".join(SHIFTS)
    primary = ClaimTest(
        id=claim.id,
        claim=claim,
        hypothesis="the accuracy the input shifts cost bn (clean minus shifted validation "
        "accuracy, averaged over the shifts) minus what they cost ln is > 0. Every model is "
        "trained on clean images and evaluated in eval mode, as it would be deployed",
        experiment=_experiment(b, f"the validation images under {shifts}"),
        measure="difference of accuracy drops, pp",
        side="greater",
        arms=_arms(("bn", 1), ("ln", -1)),
        value=m.shift_drop,
    )
    against_none = replace(
        primary,
        id="bn-input-shift (bn - none)",
        primary=False,
        hypothesis="the accuracy the shifts cost bn minus what they cost none is > 0",
        arms=_arms(("bn", 1), ("none", -1)),
    )
    return DeclaredSection(
        claim.id,
        claim.statement,
        (StudyTest(primary, EXPERIMENT), StudyTest(against_none, EXPERIMENT)),
        "after_training.png",
        ("input-shift",),
    )


def online_inference(b: Budget) -> DeclaredSection:
    claim = c.LN_ONLINE
    test = ClaimTest(
        id=claim.id,
        claim=claim,
        hypothesis="at batch 1 in eval mode (one image at a time, as online inference sees "
        "them), ln's validation accuracy minus bn's is > 0. bn normalizes with its running "
        "statistics in eval mode, so one image needs nothing from a batch; whether a "
        "training-mode forward (online learning) runs at batch 1 is tabulated beside it. "
        "Latency per sample is a cost claim, left to isolated microbenchmarks",
        experiment=_experiment(b, "the first 2,000 validation images fed one at a time"),
        measure="validation accuracy at batch 1, pp",
        side="greater",
        arms=_arms(("ln", 1), ("bn", -1)),
        value=m.batch1_acc,
    )
    return DeclaredSection(
        claim.id,
        claim.statement,
        (StudyTest(test, EXPERIMENT),),
        "after_training.png",
        ("batch-1",),
    )


def batch_fluctuation(b: Budget) -> DeclaredSection:
    claim = c.CHANNEL_BATCH_FLUCTUATION
    others = ", ".join(str(s) for s in BATCH_SIZES if s != REFERENCE_BATCH)
    primary = ClaimTest(
        id=claim.id,
        claim=claim,
        hypothesis="with the batch norms normalizing by each batch's own statistics (training "
        "mode), the mean |accuracy at batch b - accuracy at the training batch 32| over b = "
        f"{others} is larger for bn-scalar than for bn: bn-scalar minus bn > 0",
        experiment=_experiment(
            b, "the validation set in batches of " + ", ".join(map(str, BATCH_SIZES))
        ),
        measure="difference of mean |accuracy change|, pp",
        side="greater",
        arms=_arms(("bn-scalar", 1), ("bn", -1)),
        value=m.batch_sensitivity,
    )
    smallest = min(BATCH_SIZES)
    at_smallest = replace(
        primary,
        id=f"{claim.id} (batch {smallest})",
        primary=False,
        hypothesis=f"with batch statistics at batch {smallest}, bn's accuracy minus "
        "bn-scalar's is > 0",
        measure=f"validation accuracy with batch statistics at batch {smallest}, pp",
        arms=_arms(("bn", 1), ("bn-scalar", -1)),
        value=m.batch_stats_acc(smallest),
    )
    return DeclaredSection(
        claim.id,
        claim.statement,
        (StudyTest(primary, EXPERIMENT), StudyTest(at_smallest, EXPERIMENT)),
        "after_training.png",
        ("batch-statistics",),
    )
