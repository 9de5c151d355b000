"""The claims about training, declared: learning rates, depth, initialization and
regularization, each with its primary test and the secondary tests beside it (see
normlab.study.claims)."""

from __future__ import annotations

from collections.abc import Sequence

from normlab.report import catalogue as c
from normlab.report.claims import Arm, ClaimTest
from normlab.study import measures as m
from normlab.study.cells import depth_cell, dropout_cell, init_cell
from normlab.study.plan import Budget
from normlab.study.sections import ACC, DeclaredSection, StudyTest, experiment_text


def high_rates(lrs: Sequence[float]) -> list[float]:
    """The upper half of the learning-rate grid (its larger half when odd)."""
    ordered = sorted(lrs)
    return ordered[len(ordered) // 2 :]


def higher_learning_rates(b: Budget) -> DeclaredSection:
    high = high_rates(b.lrs)
    claim = c.BN_HIGHER_LR
    test = ClaimTest(
        id=claim.id,
        claim=claim,
        hypothesis="with SGD (momentum 0.9), bn's validation accuracy minus none's, averaged "
        f"over the upper half of the grid ({', '.join(f'{x:g}' for x in high)}), is > 0. The "
        "largest rate at which every seed trains (no NaN, above chance + 5 pp) and each "
        "norm's best rate are tabulated",
        experiment=experiment_text(
            b,
            "the tutorials' MLP, SGD momentum 0.9, batch 64, learning rates "
            f"{', '.join(f'{x:g}' for x in b.lrs)} (about x√10 apart), {b.seeds} seeds",
        ),
        measure=ACC,
        side="greater",
        arms=tuple(
            Arm(
                f"{norm} at lr {lr:g}",
                (1 if norm == "bn" else -1) / len(high),
                {"experiment": "lr", "norm": norm, "lr": lr},
            )
            for norm in ("bn", "none")
            for lr in high
        ),
        value=m.val_acc,
    )
    return DeclaredSection(
        claim.id,
        claim.statement,
        (StudyTest(test, "lr"),),
        "learning_rate.png",
        ("learning-rate",),
    )


BN = ("bn", "bn", False, 1)
NONE_HE = ("none (He init)", "none", True, -1)
NONE_DEFAULT = ("none (default init)", "none", False, -1)
"""(label, norm, He init?, weight) of the depth experiment's models in a contrast."""


def _depth_arms(b: Budget, depth: int, *models: tuple[str, str, bool, int]) -> tuple[Arm, ...]:
    return tuple(
        Arm(f"{label}, depth {depth}", weight, depth_cell(b, norm, depth, he))
        for label, norm, he, weight in models
    )


def deep_networks(b: Budget) -> DeclaredSection:
    deepest = max(b.depths)
    experiment = experiment_text(
        b,
        f"MLPs of {', '.join(map(str, b.depths))} hidden layers of width {b.depth_width}; "
        "none with torch's default init and with He init, bn and ln (default init); "
        f"Adam 1e-3, batch 64, {b.seeds} seeds; gradient probes at step 0 and after "
        "each epoch",
    )
    primary = ClaimTest(
        id="bn-deep-trainable",
        claim=c.BN_DEEP_TRAINABLE,
        hypothesis=f"at the deepest MLP ({deepest} hidden layers), bn's validation "
        "accuracy minus that of the same network without normalization but He-initialized "
        "(the fair baseline: torch's default init is not meant for deep ReLU networks) is "
        "> 0",
        experiment=experiment,
        measure=ACC,
        side="greater",
        arms=_depth_arms(b, deepest, BN, NONE_HE),
        value=m.val_acc,
    )
    straw = ClaimTest(
        id="bn-deep-trainable vs default init",
        claim=c.BN_DEEP_TRAINABLE,
        primary=False,
        hypothesis=f"the same at depth {deepest} against none with torch's default init",
        experiment=experiment,
        measure=ACC,
        side="greater",
        arms=_depth_arms(b, deepest, BN, NONE_DEFAULT),
        value=m.val_acc,
    )
    gradients = ClaimTest(
        id="bn-gradient-ratio",
        claim=c.BN_GRADIENT_RATIO,
        hypothesis="at the deepest MLP, the first layer's gradient norm over the last "
        "layer's at initialization is nearer 1 with bn than without (He init): "
        "|log10 ratio| of none (He) minus that of bn is > 0. The signed ratios (vanishing "
        "below 0, exploding above) are tabulated",
        experiment=experiment,
        measure="|log10 gradient-norm ratio|, decades",
        scale="log10-abs",
        side="greater",
        arms=_depth_arms(b, deepest, (*NONE_HE[:3], 1), (*BN[:3], -1)),
        value=m.grad_ratio,
    )
    return DeclaredSection(
        "bn-deep",
        c.BN_DEEP_TRAINABLE.statement,
        tuple(StudyTest(test, "depth") for test in (primary, straw, gradients)),
        "depth.png",
        ("depth",),
    )


def initialization(b: Budget) -> DeclaredSection:
    extremes = [min(b.init_scales), max(b.init_scales)]
    weights = [("bn", s, 0.5) for s in extremes] + [("none", s, -0.5) for s in extremes]
    weights += [("bn", 1.0, -1.0), ("none", 1.0, 1.0)]
    claim = c.BN_INIT_ROBUST
    test = ClaimTest(
        id=claim.id,
        claim=claim,
        hypothesis="bn's advantage over none grows when the weights start far from He "
        f"init: the mean of (bn - none) at scales {extremes[0]:g} and {extremes[1]:g} x He "
        "minus (bn - none) at 1 x He is > 0",
        experiment=experiment_text(
            b,
            "the tutorials' MLP, He init times "
            f"{', '.join(f'{s:g}' for s in b.init_scales)}; none, bn, ln; Adam 1e-3, "
            f"batch 32, {b.seeds} seeds",
        ),
        measure="difference of differences of validation accuracy, pp",
        side="greater",
        arms=tuple(Arm(f"{n} at {s:g}x He", w, init_cell(n, s)) for n, s, w in weights),
        value=m.val_acc,
    )
    return DeclaredSection(
        claim.id, claim.statement, (StudyTest(test, "init"),), "init.png", ("init",)
    )


def _fit_text(b: Budget) -> str:
    return (
        f"the tutorials' MLP on a {b.fit_subset}-image subset trained for {b.fit_epochs} epochs "
        f"(until it fits it), dropout {', '.join(f'{p:g}' for p in b.dropouts)} after each "
        f"hidden block; none, bn, ln; Adam 1e-3, batch 32, {b.seeds} seeds; validated on the "
        "10,000 test images"
    )


def regularizes(b: Budget) -> DeclaredSection:
    tests = tuple(
        StudyTest(
            ClaimTest(
                id=claim.id,
                claim=claim,
                hypothesis=f"without dropout, with every model fitting its training "
                f"set (matched training accuracy), {norm}'s validation accuracy minus "
                "none's is > 0: a regularizer narrows the gap to the training accuracy",
                experiment=_fit_text(b),
                measure=ACC,
                side="greater",
                arms=(
                    Arm(f"{norm}, no dropout", 1, dropout_cell(norm, 0.0)),
                    Arm("none, no dropout", -1, dropout_cell("none", 0.0)),
                ),
                value=m.val_acc,
            ),
            "dropout",
            fit=True,
        )
        for norm, claim in (("bn", c.BN_REGULARIZES), ("ln", c.LN_REGULARIZES))
    )
    return DeclaredSection(
        "regularizes", "Normalization regularizes", tests, "dropout.png", ("dropout",)
    )


def dropout(b: Budget) -> DeclaredSection:
    positive = [p for p in b.dropouts if p > 0]
    middle = positive[len(positive) // 2]
    claim = c.BN_REPLACES_DROPOUT

    def interaction(p: float) -> tuple[Arm, ...]:
        cells = [("none", p, 1), ("none", 0.0, -1), ("bn", p, -1), ("bn", 0.0, 1)]
        return tuple(
            Arm(f"{n}{f' + dropout {d:g}' if d else ''}", w, dropout_cell(n, d))
            for n, d, w in cells
        )

    tests = [
        StudyTest(
            ClaimTest(
                id=claim.id if p == middle else f"{claim.id} @ p={p:g}",
                claim=claim,
                primary=p == middle,
                hypothesis=f"dropout {p:g} helps less with bn than without: [none+dropout - "
                "none] - [bn+dropout - bn] in validation accuracy is > 0 (Li et al. 2019 "
                "predict the two interfere through a variance shift)",
                experiment=_fit_text(b),
                measure="interaction in validation accuracy, pp",
                side="greater",
                arms=interaction(p),
                value=m.val_acc,
            ),
            "dropout",
            fit=True,
        )
        for p in positive
    ]
    tests.sort(key=lambda declared: not declared.test.primary)
    return DeclaredSection(claim.id, claim.statement, tuple(tests), "dropout.png")
