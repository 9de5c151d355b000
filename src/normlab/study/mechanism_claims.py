"""The claims about mechanisms and alternatives: internal covariate shift, smoothness,
per-channel statistics in wide layers, group norm at small batches, and the claims this
version does not test yet (see normlab.study.claims)."""

from __future__ import annotations

import statistics
from typing import Any

from normlab.study import measures as m
from normlab.study.findings import Check, Runs, group
from normlab.study.plan import REFERENCE_BATCH, TUTORIAL_HIDDEN, Budget
from normlab.study.sections import (
    ACC,
    T1,
    T2,
    T3,
    Section,
    experiment_text,
    make_test,
    markdown_table,
    mean_std,
    trained,
    values_of,
)


def ics_records(runs: Runs, b: Budget, norm: str, optimizer: str, deep: bool) -> list[Any]:
    hidden = [TUTORIAL_HIDDEN[0]] * b.ics_depth if deep else list(TUTORIAL_HIDDEN)
    return runs.get("ics", norm=norm, optimizer=optimizer, hidden=hidden)


def _ics_text(b: Budget) -> str:
    return experiment_text(
        b,
        f"the tutorials' MLP and an MLP of {b.ics_depth} hidden layers of 128; none, bn, "
        f"bn-scalar, ln; Adam 1e-3 and SGD (momentum 0.9) 0.03; batch 32; {b.seeds} seeds; "
        "probes on 256 fixed training images at step 0 and after each epoch",
    )


def _ratio_test(
    runs: Runs,
    b: Budget,
    spec: dict[str, Any],
    measure: m.Measure,
    optimizer: str,
    deep: bool,
    primary: bool,
) -> Check:
    where = f"{optimizer}{', deep' if deep else ''}"
    return make_test(
        dict(spec, key=spec["key"] + ("" if primary else f" ({where})"), primary=primary),
        [
            group(f"{n} ({where})", w, ics_records(runs, b, n, optimizer, deep), m.log10(measure))
            for n, w in (("bn", 1), ("none", -1))
        ],
        trained=trained(runs, "ics"),
    )


def covariate_shift(runs: Runs, b: Budget) -> Section:
    spec = dict(
        key="bn-reduces-ics",
        title="Batch norm reduces internal covariate shift",
        quote="batch normalization reduces internal covariate shift",
        source=f"{T1}; {T2}; Ioffe & Szegedy 2015",
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
        _ratio_test(
            runs, b, spec, m.relative_ics, opt, deep, primary=(opt, deep) == ("adam", False)
        )
        for opt in ("adam", "sgd")
        for deep in (False, True)
    ]
    absolute = make_test(
        dict(
            spec,
            key="bn-reduces-ics (absolute ‖G - G'‖)",
            primary=False,
            hypothesis="the same with the absolute shift ‖G - G'‖, which also shrinks when the "
            "gradients themselves are smaller",
            measure="ratio of ICS, bn / none",
        ),
        [
            group(f"{n} (adam)", w, ics_records(runs, b, n, "adam", False), m.log10(m.ics))
            for n, w in (("bn", 1), ("none", -1))
        ],
        trained=trained(runs, "ics"),
    )
    rows = []
    for opt in ("adam", "sgd"):
        for deep in (False, True):
            for norm in ("none", "bn", "bn-scalar", "ln"):
                records = ics_records(runs, b, norm, opt, deep)
                rows.append(
                    [
                        f"{norm}, {opt}, {'deep' if deep else 'tutorial'}",
                        mean_std(values_of(records, m.relative_ics), 3),
                        mean_std(values_of(records, m.ics_cosine), 3),
                        mean_std(values_of(records, m.ics), 4),
                        mean_std(values_of(records, m.val_acc)),
                    ]
                )
    header = ["model", "relative ICS", "cos(G, G')", "ICS ‖G - G'‖", "val acc %"]
    return Section(
        spec["key"], spec["title"], (*tests, absolute), "ics.png", (markdown_table(header, rows),)
    )


def landscape(runs: Runs, b: Budget) -> Section:
    spec = dict(
        source="Santurkar et al. 2018 (abstract), repeated by " + T2,
        quote="it makes the optimization landscape significantly smoother",
        verbatim=True,
        title="Batch norm smooths the loss landscape",
        experiment=_ics_text(b) + "; at each probe, steps of 0.025 to 0.4 along the negative "
        "gradient",
        side="less",
        scale="log10",
    )
    smooth = _ratio_test(
        runs,
        b,
        dict(
            spec,
            key="bn-smooth",
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
        runs,
        b,
        dict(
            spec,
            key="bn-gradient-predictive",
            hypothesis="the gradient predictiveness, the largest ‖∇L(W) - ∇L(W - η∇L)‖ over the "
            "steps, is smaller with bn: ratio bn / none < 1",
            measure="ratio of gradient change, bn / none",
        ),
        m.landscape("gradient_predictiveness"),
        "adam",
        False,
        primary=False,
    )
    return Section("bn-landscape", spec["title"], (smooth, predictive), "landscape.png", ())


def width(runs: Runs, b: Budget) -> Section:
    narrow, wide = min(b.widths), max(b.widths)
    terms = [("bn", wide, 1), ("bn-scalar", wide, -1), ("bn", narrow, -1), ("bn-scalar", narrow, 1)]
    test = make_test(
        dict(
            key="channel-helps-wide",
            title="Per-channel statistics help more in wide layers",
            quote="per-feature ('2s') statistics matter more in high-dimensional feature spaces",
            source=T3,
            hypothesis=f"(bn - bn-scalar) at width {wide} minus (bn - bn-scalar) at width "
            f"{narrow} is > 0",
            experiment=experiment_text(
                b,
                f"MLPs with two hidden layers of width {', '.join(map(str, b.widths))}; Adam "
                f"1e-3, batch 32, {b.seeds} seeds",
            ),
            measure="difference of differences of validation accuracy, pp",
            side="greater",
        ),
        [
            group(f"{n} at width {w}", s, runs.get("width", norm=n, hidden=[w, w]), m.val_acc)
            for n, w, s in terms
        ],
        trained=trained(runs, "width"),
    )
    rows = []
    for width in b.widths:
        bn = values_of(runs.get("width", norm="bn", hidden=[width, width]), m.val_acc)
        scalar = values_of(runs.get("width", norm="bn-scalar", hidden=[width, width]), m.val_acc)
        diff = f"{statistics.fmean(bn) - statistics.fmean(scalar):+.2f}" if bn and scalar else "—"
        rows.append([width, mean_std(bn), mean_std(scalar), diff])
    table = markdown_table(["width", "bn %", "bn-scalar %", "bn - bn-scalar pp"], rows)
    return Section(test.key, test.title, (test,), "width.png", (table,))


GN = "gn(groups=8)"


def gn_records(runs: Runs, norm: str, size: int) -> list[Any]:
    kind, options = ("gn", {"groups": 8}) if norm == GN else (norm, {})
    return runs.get("group-norm", norm=kind, norm_options=options, batch_size=size)


def group_norm(runs: Runs, b: Budget) -> Section:
    small = min(b.small_batches)
    spec = dict(
        title="Group norm is a good choice at small batch sizes",
        quote="group normalization ... a good choice for small batch sizes",
        source=f"{T1} (future directions); Wu & He 2018",
        experiment=experiment_text(
            b,
            "the CNN (Conv 32, Conv 64, 3x3, each with the norm, ReLU and 2x2 pooling; Dense "
            f"64); gn with 8 groups, bn, brn and ln; Adam 1e-3 x sqrt(batch / 32); batch sizes "
            f"{', '.join(map(str, b.small_batches))}; {b.seeds} seeds",
            epochs=b.conv_epochs,
        ),
    )
    adequacy = trained(runs, "group-norm")
    terms = [
        (GN, small, 1),
        ("bn", small, -1),
        (GN, REFERENCE_BATCH, -1),
        ("bn", REFERENCE_BATCH, 1),
    ]
    primary = make_test(
        dict(
            spec,
            key="gn-small-batch",
            hypothesis=f"(gn - bn) at batch {small} minus (gn - bn) at batch 32 is > 0: group "
            "norm keeps its accuracy where batch norm loses it (Wu & He's figure 1)",
            measure="difference of differences of validation accuracy, pp",
            side="greater",
        ),
        [group(f"{n} at batch {s}", w, gn_records(runs, n, s), m.val_acc) for n, s, w in terms],
        trained=adequacy,
    )
    at_small = make_test(
        dict(
            spec,
            key=f"gn - bn at batch {small}",
            primary=False,
            hypothesis=f"at batch {small}, gn's validation accuracy minus bn's is > 0",
            measure=ACC,
            side="greater",
        ),
        [
            group(f"{n} at batch {small}", w, gn_records(runs, n, small), m.val_acc)
            for n, w in ((GN, 1), ("bn", -1))
        ],
        trained=adequacy,
    )
    rows = [
        [
            norm,
            *(mean_std(values_of(gn_records(runs, norm, s), m.val_acc)) for s in b.small_batches),
        ]
        for norm in (GN, "bn", "brn", "ln")
    ]
    table = markdown_table(["norm", *(f"batch {s}" for s in b.small_batches)], rows)
    return Section("gn-small-batch", spec["title"], (primary, at_small), "group_norm.png", (table,))


NOT_YET = (
    (
        "ln-sequences",
        "Layer norm suits recurrent networks and transformers better than batch norm",
        "layer normalization is better suited to recurrent neural networks and transformers",
        T1,
        "needs Ba et al.'s LSTM with layer norm inside the cell, recurrent batch norm with "
        "per-time-step statistics (Cooijmans et al. 2017), and a transformer trained with "
        "warmup and a cosine schedule to 96.5%; the lab's row-LSTM normalizes the raw pixel "
        "rows before the cell, which tests neither",
    ),
    (
        "bn-varying-length",
        "Batch norm is less suited to sequences of varying length",
        "batch normalization is less suited to sequences of varying length",
        T1,
        "needs variable-length sequences with padding masks",
    ),
    (
        "bn-input-shift",
        "Batch norm degrades under highly variable input distributions; layer norm is robust",
        "batch normalization's performance degrades with highly variable input distributions",
        T1,
        "needs evaluation under shifted brightness, contrast and noise",
    ),
    (
        "ln-online",
        "Layer norm suits online, real-time inference",
        "layer normalization is suited to online and real-time inference (batch size 1)",
        T1,
        "needs accuracy and latency per sample at batch 1 in eval mode, bn as trained and folded",
    ),
    (
        "bn-overhead",
        "Batch norm adds computational overhead; layer norm adds less",
        "batch normalization adds computational overhead ... layer normalization adds less",
        T1,
        "needs isolated microbenchmarks (one thread, nothing else running); step times taken "
        "inside runs on a shared machine measure the machine's load",
    ),
    (
        "scalar-cheaper",
        "Scalar statistics ('1s') are cheaper than per-channel ('2s')",
        "the '1s' version is computationally cheaper",
        T3,
        "needs microbenchmarks of 1s and 2s through matched implementations (both torch's "
        "fused kernel), so the verdict separates the algorithm from this implementation",
    ),
    (
        "bn-faster-wall",
        "Batch norm makes training time shorter",
        "batch normalization makes training faster",
        T2,
        "needs time to a fixed accuracy in wall seconds, measured on an idle machine",
    ),
    (
        "channel-batch-fluctuation",
        "Per-channel statistics ('2s') are less sensitive to batch-size fluctuations",
        "the '2s' version is less sensitive to fluctuations in batch size",
        T3,
        "needs training at one batch size and evaluation in training mode at others",
    ),
)


def not_yet_tested() -> Section:
    tests = tuple(
        make_test(
            dict(
                key=key,
                title=title,
                quote=quote,
                source=source,
                hypothesis="not yet tested",
                experiment="not planned in this version of the study",
                measure="—",
                side="greater",
                reason=reason,
            ),
            [],
            available=False,
        )
        for key, title, quote, source, reason in NOT_YET
    )
    return Section("not-yet-tested", "Claims not yet tested", tests, "", ())
