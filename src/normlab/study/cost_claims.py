"""The claims about cost, declared on the isolated measurements of normlab.study.cost:
batch norm's overhead in a training step, scalar ("1s") against per-channel ("2s")
statistics through matched implementations, and the wall time training takes to reach an
accuracy."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from normlab.report import catalogue as c
from normlab.report.claims import Arm, ClaimTest
from normlab.study.cost import LAYER_SHAPES, ROUNDS, TARGET_ACCURACY, TIME_SEEDS
from normlab.study.sections import DeclaredSection, StudyTest

EXPERIMENT = "cost"


def log10_seconds(sample: Any) -> float | None:
    seconds = sample.get("seconds")
    return math.log10(seconds) if isinstance(seconds, int | float) and seconds > 0 else None


def _text(what: str) -> str:
    return (
        f"{what}; torch.utils.benchmark at one thread on an otherwise idle machine, "
        f"{ROUNDS} interleaved rounds (a round is the pairing unit), the median time of a "
        "call in each"
    )


def _step(norm: str, weight: int) -> Arm:
    return Arm(
        f"step with {norm}", weight, {"experiment": EXPERIMENT, "measure": "step", "norm": norm}
    )


def _layer(stats: str, weight: int, shape: tuple[int, ...], implementation: str) -> Arm:
    where = {
        "experiment": EXPERIMENT,
        "measure": "layer",
        "implementation": implementation,
        "stats": stats,
        "shape": list(shape),
    }
    return Arm(f"{stats} ({implementation}) at {shape}", weight, where)


def overhead() -> DeclaredSection:
    claim = c.BN_OVERHEAD
    primary = ClaimTest(
        id=claim.id,
        claim=claim,
        hypothesis="a training step of the tutorials' MLP takes longer with bn than with ln: "
        "the ratio of step times bn / ln > 1",
        experiment=_text(
            "one training step (forward, cross-entropy, backward, Adam update) of the "
            "tutorials' MLP at batch 32, with none, bn and ln"
        ),
        measure="ratio of step times, bn / ln",
        side="greater",
        scale="log10",
        arms=(_step("bn", 1), _step("ln", -1)),
        value=log10_seconds,
    )
    over_none = replace(
        primary,
        id="bn-overhead (bn / none)",
        primary=False,
        hypothesis="bn adds to the step time of the same MLP without a norm: ratio > 1",
        measure="ratio of step times, bn / none",
        arms=(_step("bn", 1), _step("none", -1)),
    )
    ln_over_none = replace(
        over_none,
        id="bn-overhead (ln / none)",
        hypothesis="ln adds to the step time of the same MLP without a norm: ratio > 1",
        measure="ratio of step times, ln / none",
        arms=(_step("ln", 1), _step("none", -1)),
    )
    return DeclaredSection(
        claim.id,
        claim.statement,
        tuple(StudyTest(t) for t in (primary, over_none, ln_over_none)),
        "",
        ("cost",),
    )


def scalar_cheaper() -> DeclaredSection:
    claim = c.SCALAR_CHEAPER
    mlp_shape, cnn_shape = LAYER_SHAPES
    primary = ClaimTest(
        id=claim.id,
        claim=claim,
        hypothesis="through matched implementations (torch's fused batch-norm kernel on a view "
        "that makes it compute one mean and variance, or one per channel, then the same "
        f"affine), 1s takes less time than 2s at the MLP's {mlp_shape}, forward and backward: "
        "ratio 1s / 2s < 1",
        experiment=_text("forward and backward in training mode of the normalization alone"),
        measure="ratio of times, 1s / 2s",
        side="less",
        scale="log10",
        arms=(_layer("1s", 1, mlp_shape, "matched"), _layer("2s", -1, mlp_shape, "matched")),
        value=log10_seconds,
    )
    conv = replace(
        primary,
        id=f"scalar-cheaper (CNN {cnn_shape})",
        primary=False,
        hypothesis=f"the same at the CNN's {cnn_shape}",
        arms=(_layer("1s", 1, cnn_shape, "matched"), _layer("2s", -1, cnn_shape, "matched")),
    )
    shipped = replace(
        primary,
        id="scalar-cheaper (normlab's bn-scalar / bn)",
        primary=False,
        hypothesis=f"normlab's bn-scalar takes less time than its bn at {mlp_shape}: ratio < 1 "
        "(this implementation, not the algorithm)",
        arms=(_layer("1s", 1, mlp_shape, "normlab"), _layer("2s", -1, mlp_shape, "normlab")),
    )
    return DeclaredSection(
        claim.id,
        claim.statement,
        tuple(StudyTest(t) for t in (primary, conv, shipped)),
        "",
        ("cost",),
    )


def faster_wall() -> DeclaredSection:
    claim = c.BN_FASTER_WALL
    target = f"{100 * TARGET_ACCURACY:g}%"
    arms = tuple(
        Arm(
            f"{norm} to {target}",
            weight,
            {"experiment": EXPERIMENT, "measure": "time-to-accuracy", "norm": norm},
        )
        for norm, weight in (("none", 1), ("bn", -1))
    )
    test = ClaimTest(
        id=claim.id,
        claim=claim,
        hypothesis=f"the tutorials' MLP reaches {target} validation accuracy in less wall time "
        "with bn than without a norm: the ratio of times none / bn > 1 (fewer steps must repay "
        "bn's cost per step)",
        experiment=f"the tutorials' MLP, Adam 1e-3, batch 32, on the 60,000 training images at "
        f"one thread on an otherwise idle machine, {TIME_SEEDS} seeds per norm (a seed's "
        "initialization shared across norms); the seconds of training steps until the "
        f"validation accuracy, checked every 100 steps outside the clock, first reaches {target}",
        measure="ratio of wall times to accuracy, none / bn",
        side="greater",
        scale="log10",
        arms=arms,
        value=log10_seconds,
    )
    return DeclaredSection(claim.id, claim.statement, (StudyTest(test),), "", ("cost",))
