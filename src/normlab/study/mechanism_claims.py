"""The claims about mechanisms and alternatives, declared: internal covariate shift,
smoothness, per-channel statistics in wide layers, group norm at small batches, and the
claims this version does not test yet (see normlab.study.claims)."""

from __future__ import annotations

from dataclasses import replace

from normlab.report import catalogue as c
from normlab.report.claims import Arm, ClaimTest
from normlab.study import measures as m
from normlab.study.cells import GN, gn_cell, ics_cell
from normlab.study.plan import REFERENCE_BATCH, Budget
from normlab.study.sections import ACC, DeclaredSection, StudyTest, experiment_text


def _ics_text(b: Budget) -> str:
    return experiment_text(
        b,
        f"the tutorials' MLP and an MLP of {b.ics_depth} hidden layers of 128; none, bn, "
        f"bn-scalar, ln; Adam 1e-3 and SGD (momentum 0.9) 0.03; batch 32; {b.seeds} seeds; "
        "probes on 256 fixed training images at step 0 and after each epoch",
    )


def _ratio_test(
    b: Budget, test: ClaimTest, measure: m.Measure, optimizer: str, deep: bool, primary: bool
) -> StudyTest:
    """``test`` as the ratio bn / none of ``measure`` (a difference of log10 values) on the
    ICS experiment's MLP (deep or not) trained with ``optimizer``."""
    where = f"{optimizer}{', deep' if deep else ''}"
    return StudyTest(
        replace(
            test,
            id=test.id + ("" if primary else f" ({where})"),
            primary=primary,
            arms=tuple(
                Arm(f"{n} ({where})", w, ics_cell(b, n, optimizer, deep))
                for n, w in (("bn", 1), ("none", -1))
            ),
            value=m.log10(measure),
        ),
        "ics",
    )


def covariate_shift(b: Budget) -> DeclaredSection:
    claim = c.BN_REDUCES_ICS
    test = ClaimTest(
        id=claim.id,
        claim=claim,
        hypothesis="Santurkar et al. 2018's internal covariate shift relative to the gradient, "
        "‖G - G'‖ / ‖G‖ (a layer's gradient before and after the layers below it take their "
        "update, same batch), averaged over layers 2.. and every probe from step 0, is smaller "
        "with bn: the ratio bn / none < 1. Santurkar et al. found it similar or larger with bn",
        experiment=_ics_text(b),
        measure="ratio of relative ICS, bn / none",
        side="less",
        scale="log10",
    )
    tests = [
        _ratio_test(b, test, m.relative_ics, opt, deep, primary=(opt, deep) == ("adam", False))
        for opt in ("adam", "sgd")
        for deep in (False, True)
    ]
    absolute = replace(
        test,
        id="bn-reduces-ics (absolute ‖G - G'‖)",
        primary=False,
        hypothesis="the same with the absolute shift ‖G - G'‖, which also shrinks when the "
        "gradients themselves are smaller",
        measure="ratio of ICS, bn / none",
        arms=tuple(
            Arm(f"{n} (adam)", w, ics_cell(b, n, "adam", False))
            for n, w in (("bn", 1), ("none", -1))
        ),
        value=m.log10(m.ics),
    )
    return DeclaredSection(
        claim.id,
        claim.statement,
        (*tests, StudyTest(absolute, "ics")),
        "ics.png",
        ("ics",),
    )


def landscape(b: Budget) -> DeclaredSection:
    claim = c.BN_SMOOTH
    test = ClaimTest(
        id=claim.id,
        claim=claim,
        experiment=_ics_text(b) + "; at each probe, steps of 0.025 to 0.4 along the negative "
        "gradient",
        side="less",
        scale="log10",
    )
    smooth = _ratio_test(
        b,
        replace(
            test,
            hypothesis="the effective β-smoothness (the largest gradient change over the "
            "distance moved) is smaller with bn: ratio bn / none < 1",
            measure="ratio of effective β-smoothness, bn / none",
        ),
        m.landscape("beta_smoothness"),
        "adam",
        False,
        primary=True,
    )
    predictive = _ratio_test(
        b,
        replace(
            test,
            id="bn-gradient-predictive",
            hypothesis="the gradient predictiveness, the largest ‖∇L(W) - ∇L(W - η∇L)‖ over the "
            "steps, is smaller with bn: ratio bn / none < 1",
            measure="ratio of gradient change, bn / none",
        ),
        m.landscape("gradient_predictiveness"),
        "adam",
        False,
        primary=False,
    )
    return DeclaredSection("bn-landscape", claim.statement, (smooth, predictive), "landscape.png")


def width(b: Budget) -> DeclaredSection:
    narrow, wide = min(b.widths), max(b.widths)
    terms = [("bn", wide, 1), ("bn-scalar", wide, -1), ("bn", narrow, -1), ("bn-scalar", narrow, 1)]
    claim = c.CHANNEL_HELPS_WIDE
    test = ClaimTest(
        id=claim.id,
        claim=claim,
        hypothesis=f"(bn - bn-scalar) at width {wide} minus (bn - bn-scalar) at width "
        f"{narrow} is > 0",
        experiment=experiment_text(
            b,
            f"MLPs with two hidden layers of width {', '.join(map(str, b.widths))}; Adam "
            f"1e-3, batch 32, {b.seeds} seeds",
        ),
        measure="difference of differences of validation accuracy, pp",
        side="greater",
        arms=tuple(
            Arm(f"{n} at width {w}", s, {"experiment": "width", "norm": n, "hidden": [w, w]})
            for n, w, s in terms
        ),
        value=m.val_acc,
    )
    return DeclaredSection(
        claim.id, claim.statement, (StudyTest(test, "width"),), "width.png", ("width",)
    )


def group_norm(b: Budget) -> DeclaredSection:
    small = min(b.small_batches)
    claim = c.GN_SMALL_BATCH
    experiment = experiment_text(
        b,
        "the CNN (Conv 32, Conv 64, 3x3, each with the norm, ReLU and 2x2 pooling; Dense "
        f"64); gn with 8 groups, bn, brn and ln; Adam 1e-3 x sqrt(batch / 32); batch sizes "
        f"{', '.join(map(str, b.small_batches))}; {b.seeds} seeds",
        epochs=b.conv_epochs,
    )
    terms = [
        (GN, small, 1),
        ("bn", small, -1),
        (GN, REFERENCE_BATCH, -1),
        ("bn", REFERENCE_BATCH, 1),
    ]
    primary = ClaimTest(
        id=claim.id,
        claim=claim,
        hypothesis=f"(gn - bn) at batch {small} minus (gn - bn) at batch 32 is > 0: group "
        "norm keeps its accuracy where batch norm loses it (Wu & He's figure 1)",
        experiment=experiment,
        measure="difference of differences of validation accuracy, pp",
        side="greater",
        arms=tuple(Arm(f"{n} at batch {s}", w, gn_cell(n, s)) for n, s, w in terms),
        value=m.val_acc,
    )
    at_small = replace(
        primary,
        id=f"gn - bn at batch {small}",
        primary=False,
        hypothesis=f"at batch {small}, gn's validation accuracy minus bn's is > 0",
        measure=ACC,
        arms=tuple(
            Arm(f"{n} at batch {small}", w, gn_cell(n, small)) for n, w in ((GN, 1), ("bn", -1))
        ),
    )
    return DeclaredSection(
        claim.id,
        claim.statement,
        (StudyTest(primary, "group-norm"), StudyTest(at_small, "group-norm")),
        "group_norm.png",
        ("group-norm",),
    )


NOT_YET = (
    (
        c.LN_SEQUENCES,
        "needs Ba et al.'s LSTM with layer norm inside the cell, recurrent batch norm with "
        "per-time-step statistics (Cooijmans et al. 2017), and a transformer trained with "
        "warmup and a cosine schedule to 96.5%; the lab's row-LSTM normalizes the raw pixel "
        "rows before the cell, which tests neither",
    ),
    (c.BN_VARYING_LENGTH, "needs variable-length sequences with padding masks"),
)
"""The claims no experiment tests yet, each with what testing it needs."""


def not_yet_tested() -> DeclaredSection:
    tests = tuple(
        StudyTest(
            ClaimTest(
                id=claim.id,
                claim=claim,
                hypothesis="not yet tested",
                experiment="not planned in this version of the study",
                measure="—",
                side="greater",
                reason=reason,
            )
        )
        for claim, reason in NOT_YET
    )
    return DeclaredSection("not-yet-tested", "Claims not yet tested", tests, "")
