"""The claims about training: learning rates, depth, initialization and regularization,
each with its primary test and the secondary tests beside it (see normlab.study.claims)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from normlab.study import measures as m
from normlab.study.findings import Group, Runs, group
from normlab.study.plan import Budget
from normlab.study.sections import (
    ACC,
    T1,
    T2,
    Section,
    experiment_text,
    make_test,
    markdown_table,
    mean_std,
    trained,
    values_of,
)


def high_rates(lrs: Sequence[float]) -> list[float]:
    """The upper half of the learning-rate grid (its larger half when odd)."""
    ordered = sorted(lrs)
    return ordered[len(ordered) // 2 :]


def higher_learning_rates(runs: Runs, b: Budget) -> Section:
    high = high_rates(b.lrs)
    spec = dict(
        key="bn-higher-lr",
        title="Batch norm allows higher learning rates",
        quote="allowing for higher learning rates",
        source=f"{T1}; Ioffe & Szegedy 2015",
        verbatim=True,
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
    )
    groups = [
        group(
            f"{norm} at lr {lr:g}",
            (1 if norm == "bn" else -1) / len(high),
            runs.get("lr", norm=norm, lr=lr),
            m.val_acc,
        )
        for norm in ("bn", "none")
        for lr in high
    ]
    test = make_test(spec, groups, trained=trained(runs, "lr"))
    rows = []
    for norm in ("none", "bn", "ln"):
        row, stable, best = [norm], None, (None, -1.0)
        for lr in b.lrs:
            records = runs.get("lr", norm=norm, lr=lr)
            values = values_of(records, m.val_acc)
            failed = sum(r.get("status") == "diverged" or m.collapsed(r) for r in records)
            row.append(mean_std(values, 1) + (f" ({failed} diverged)" if failed else ""))
            if records and not failed:
                stable = lr
            if values and statistics.fmean(values) > best[1]:
                best = (lr, statistics.fmean(values))
        edge = best[0] in (min(b.lrs), max(b.lrs))
        best_text = "—" if best[0] is None else f"{best[0]:g}" + (" (grid edge)" if edge else "")
        rows.append([*row, "none" if stable is None else f"{stable:g}", best_text])
    header = ["norm", *(f"lr {lr:g}" for lr in b.lrs), "largest stable lr", "best lr"]
    return Section(
        test.key, test.title, (test,), "learning_rate.png", (markdown_table(header, rows),)
    )


def depth_records(runs: Runs, b: Budget, norm: str, depth: int, he: bool) -> list[Any]:
    options: dict[str, Any] = {"hidden": [b.depth_width] * depth}
    records = runs.get("depth", norm=norm, **options)
    return [r for r in records if (r["config"]["model_options"].get("init") == "he") == he]


BN = ("bn", "bn", False, 1)
NONE_HE = ("none (He init)", "none", True, -1)
NONE_DEFAULT = ("none (default init)", "none", False, -1)
"""(label, norm, He init?, weight) of the depth experiment's models in a contrast."""


def _depth_groups(
    runs: Runs, b: Budget, depth: int, measure: m.Measure, *models: tuple[str, str, bool, int]
) -> list[Group]:
    return [
        group(f"{label}, depth {depth}", weight, depth_records(runs, b, norm, depth, he), measure)
        for label, norm, he, weight in models
    ]


def deep_networks(runs: Runs, b: Budget) -> Section:
    deepest = max(b.depths)
    base = dict(
        title="Batch norm makes deep networks trainable",
        quote="making it easier to train deep neural networks",
        source=T1,
        verbatim=True,
        experiment=experiment_text(
            b,
            f"MLPs of {', '.join(map(str, b.depths))} hidden layers of width {b.depth_width}; "
            "none with torch's default init and with He init, bn and ln (default init); "
            f"Adam 1e-3, batch 64, {b.seeds} seeds; gradient probes at step 0 and after "
            "each epoch",
        ),
        measure=ACC,
        side="greater",
    )
    adequacy = trained(runs, "depth")
    primary = make_test(
        dict(
            base,
            key="bn-deep-trainable",
            hypothesis=f"at the deepest MLP ({deepest} hidden layers), bn's validation "
            "accuracy minus that of the same network without normalization but He-initialized "
            "(the fair baseline: torch's default init is not meant for deep ReLU networks) is "
            "> 0",
        ),
        _depth_groups(runs, b, deepest, m.val_acc, BN, NONE_HE),
        trained=adequacy,
    )
    straw = make_test(
        dict(
            base,
            key="bn-deep-trainable vs default init",
            primary=False,
            hypothesis=f"the same at depth {deepest} against none with torch's default init",
        ),
        _depth_groups(runs, b, deepest, m.val_acc, BN, NONE_DEFAULT),
        trained=adequacy,
    )
    gradients = make_test(
        dict(
            base,
            key="bn-gradient-ratio",
            title="Batch norm mitigates vanishing or exploding gradients",
            quote="mitigating the vanishing or exploding gradient problem",
            verbatim=True,
            hypothesis="at the deepest MLP, the first layer's gradient norm over the last "
            "layer's at initialization is nearer 1 with bn than without (He init): "
            "|log10 ratio| of none (He) minus that of bn is > 0. The signed ratios (vanishing "
            "below 0, exploding above) are tabulated",
            measure="|log10 gradient-norm ratio|, decades",
            scale="log10-abs",
        ),
        _depth_groups(runs, b, deepest, m.grad_ratio, (*NONE_HE[:3], 1), (*BN[:3], -1)),
        trained=adequacy,
    )
    rows = []
    for label, norm, he in (
        ("none (default init)", "none", False),
        ("none (He init)", "none", True),
        ("bn", "bn", False),
        ("ln", "ln", False),
    ):
        for depth in b.depths:
            records = depth_records(runs, b, norm, depth, he)
            rows.append(
                [
                    label,
                    depth,
                    mean_std(values_of(records, m.val_acc)),
                    mean_std(values_of(records, m.signed_grad_ratio)),
                    mean_std(values_of(records, lambda r: m.signed_grad_ratio(r, at_init=False))),
                ]
            )
    header = [
        "model",
        "depth",
        "val acc %",
        "log10 ratio at init",
        "log10 ratio in training",
    ]
    return Section(
        "bn-deep",
        base["title"],
        (primary, straw, gradients),
        "depth.png",
        (markdown_table(header, rows),),
    )


def init_records(runs: Runs, norm: str, scale: float) -> list[Any]:
    return runs.get("init", norm=norm, init_scale=scale)


def initialization(runs: Runs, b: Budget) -> Section:
    extremes = [min(b.init_scales), max(b.init_scales)]
    weights = [("bn", s, 0.5) for s in extremes] + [("none", s, -0.5) for s in extremes]
    weights += [("bn", 1.0, -1.0), ("none", 1.0, 1.0)]
    test = make_test(
        dict(
            key="bn-init-robust",
            title="Batch norm reduces the reliance on careful initialization",
            quote="batch normalization reduces the dependence on careful weight initialization",
            source=f"{T2}; Ioffe & Szegedy 2015",
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
        ),
        [group(f"{n} at {s:g}x He", w, init_records(runs, n, s), m.val_acc) for n, s, w in weights],
        trained=trained(runs, "init"),
    )
    rows = [
        [
            norm,
            *(mean_std(values_of(init_records(runs, norm, s), m.val_acc)) for s in b.init_scales),
        ]
        for norm in ("none", "bn", "ln")
    ]
    table = markdown_table(["norm", *(f"{s:g}x He" for s in b.init_scales)], rows)
    return Section(test.key, test.title, (test,), "init.png", (table,))


def dropout_records(runs: Runs, norm: str, p: float) -> list[Any]:
    return runs.get("dropout", norm=norm, dropout=p)


def _fit_text(b: Budget) -> str:
    return (
        f"the tutorials' MLP on a {b.fit_subset}-image subset trained for {b.fit_epochs} epochs "
        f"(until it fits it), dropout {', '.join(f'{p:g}' for p in b.dropouts)} after each "
        f"hidden block; none, bn, ln; Adam 1e-3, batch 32, {b.seeds} seeds; validated on the "
        "10,000 test images"
    )


def regularizes(runs: Runs, b: Budget) -> Section:
    adequacy = trained(runs, "dropout", fit=True)
    tests = []
    for norm, key, quote, source in (
        (
            "bn",
            "bn-regularizes",
            "batch normalization regularizes the model",
            "Ioffe & Szegedy 2015, §3.4; " + T2,
        ),
        ("ln", "ln-regularizes", "layer normalization also has a regularizing effect", T1),
    ):
        tests.append(
            make_test(
                dict(
                    key=key,
                    title="Normalization regularizes",
                    quote=quote,
                    source=source,
                    hypothesis=f"without dropout, with every model fitting its training "
                    f"set (matched training accuracy), {norm}'s validation accuracy minus "
                    "none's is > 0: a regularizer narrows the gap to the training accuracy",
                    experiment=_fit_text(b),
                    measure=ACC,
                    side="greater",
                ),
                [
                    group(f"{norm}, no dropout", 1, dropout_records(runs, norm, 0.0), m.val_acc),
                    group("none, no dropout", -1, dropout_records(runs, "none", 0.0), m.val_acc),
                ],
                trained=adequacy,
            )
        )
    rows = [
        [
            f"{norm}, dropout {p:g}",
            mean_std(values_of(dropout_records(runs, norm, p), m.train_acc)),
            mean_std(values_of(dropout_records(runs, norm, p), m.val_acc)),
            mean_std(values_of(dropout_records(runs, norm, p), m.gap)),
        ]
        for norm in ("none", "bn", "ln")
        for p in b.dropouts
    ]
    table = markdown_table(["model", "train acc %", "val acc %", "gap pp"], rows)
    return Section(
        "regularizes", "Normalization regularizes", tuple(tests), "dropout.png", (table,)
    )


def dropout(runs: Runs, b: Budget) -> Section:
    positive = [p for p in b.dropouts if p > 0]
    middle = positive[len(positive) // 2]
    spec = dict(
        title="Batch norm reduces the need for dropout",
        quote="reducing the need for other regularization techniques such as dropout",
        verbatim=True,
        source=T1,
        experiment=_fit_text(b),
        measure="interaction in validation accuracy, pp",
        side="greater",
    )
    adequacy = trained(runs, "dropout", fit=True)

    def interaction(p: float) -> list[Group]:
        cells = [("none", p, 1), ("none", 0.0, -1), ("bn", p, -1), ("bn", 0.0, 1)]
        return [
            group(
                f"{n}{f' + dropout {d:g}' if d else ''}", w, dropout_records(runs, n, d), m.val_acc
            )
            for n, d, w in cells
        ]

    tests = [
        make_test(
            dict(
                spec,
                key="bn-replaces-dropout" if p == middle else f"bn-replaces-dropout @ p={p:g}",
                primary=p == middle,
                hypothesis=f"dropout {p:g} helps less with bn than without: [none+dropout - "
                "none] - [bn+dropout - bn] in validation accuracy is > 0 (Li et al. 2019 "
                "predict the two interfere through a variance shift)",
            ),
            interaction(p),
            trained=adequacy,
        )
        for p in positive
    ]
    tests.sort(key=lambda t: not t.primary)
    return Section("bn-replaces-dropout", spec["title"], tuple(tests), "dropout.png", ())
