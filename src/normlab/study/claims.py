"""The claims the study checks: each one's quote, its precise testable form, and the
headline test that decides it (see normlab.study.findings), with the tables behind it.

The seven claims of normlab.report.claims come first (normlab.study.existing), then the
twelve of issue 14 in its order.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from normlab.study import measures as m
from normlab.study.existing import existing_sections
from normlab.study.findings import Group, Runs, difference, group
from normlab.study.plan import Budget
from normlab.study.sections import (
    T1,
    T2,
    Section,
    accuracy_table,
    each,
    make_test,
    markdown_table,
    mean_std,
    values_of,
)


def sections(runs: Runs, budget: Budget) -> list[Section]:
    """Every claim's section, its tests computed (not yet Holm-adjusted)."""
    return [
        *existing_sections(runs, budget),
        _converges_faster(runs, budget),
        _higher_learning_rates(runs, budget),
        _deep_networks(runs, budget),
        _dropout(runs, budget),
        _covariate_shift(runs),
        _landscape(runs),
        _sequence_models(runs),
        _ln_large_batch(runs, budget),
        _overhead(runs, budget),
        _scalar_cheaper(runs, budget),
        _width(runs, budget),
        _group_norm(runs, budget),
    ]


# --- the twelve claims of issue 14 -----------------------------------------------------


def _reach_table(runs: Runs, b: Budget) -> str:
    rows = []
    for norm in ("none", "bn", "bn-scalar", "ln"):
        row = [norm]
        for size in b.batch_sizes:
            records = runs.get("batch", norm=norm, batch_size=size)
            reached = [m.epochs_to_reach(r) for r in records]
            hits = [e for e in reached if e is not None]
            first = mean_std(values_of(records, m.first_epoch_acc))
            when = f"{statistics.fmean(hits):.1f}" if hits else "never"
            row.append(f"{first}; {m.REACH:g}% at epoch {when} ({len(hits)}/{len(records)})")
        rows.append(row)
    return markdown_table(["norm", *(f"batch {s}" for s in b.batch_sizes)], rows)


def _converges_faster(runs: Runs, b: Budget) -> Section:
    size = 32 if 32 in b.batch_sizes else sorted(b.batch_sizes)[len(b.batch_sizes) // 2]
    test = make_test(
        dict(
            key="bn-converges-faster",
            title="Batch norm converges faster",
            quote="the model with batch normalization seems to converge quicker",
            source=T1,
            verbatim=True,
            hypothesis=f"validation accuracy after the first epoch, bn minus none, at batch "
            f"{size} (the tutorials' Keras default), is > 0. 'Converges quicker' is read as "
            "'is further after the same amount of training'; the epoch at which "
            f"{m.REACH:g}% is first reached is tabulated for every batch size",
            experiment=f"the batch experiment (tutorials' MLP, {b.epochs} epochs, batch sizes "
            f"{', '.join(map(str, b.batch_sizes))})",
            measure="first-epoch validation accuracy, pp",
            side="greater",
        ),
        difference(
            runs,
            "batch",
            "bn",
            "none",
            m.first_epoch_acc,
            label=f" at batch {size}",
            batch_size=size,
        ),
    )
    table = "First-epoch validation accuracy (%) and when 95% was first reached:\n\n"
    return Section(
        test.key, test.title, (test,), "convergence.png", (table + _reach_table(runs, b),)
    )


def _rates(lrs: Sequence[float]) -> str:
    return ", ".join(f"{lr:g}" for lr in lrs)


def high_rates(lrs: Sequence[float]) -> list[float]:
    """The upper half of the learning-rate grid (its larger half when odd)."""
    ordered = sorted(lrs)
    return ordered[len(ordered) // 2 :]


def _higher_learning_rates(runs: Runs, b: Budget) -> Section:
    high = high_rates(b.lrs)
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
    test = make_test(
        dict(
            key="bn-higher-lr",
            title="Batch norm allows higher learning rates",
            quote="allowing for higher learning rates",
            source=f"{T1}; Ioffe & Szegedy 2015",
            verbatim=True,
            hypothesis="with SGD (momentum 0.9), bn's validation accuracy minus none's, "
            f"averaged over the upper half of the learning-rate grid ({_rates(high)}), "
            "is > 0. The largest rate at which every seed reaches 90% is tabulated",
            experiment=f"tutorials' MLP, SGD momentum 0.9, batch 64, {b.sweep_epochs} epochs, "
            f"learning rates {', '.join(f'{x:g}' for x in b.lrs)}, {b.sweep_seeds} seeds",
            measure="validation accuracy, pp",
            side="greater",
        ),
        groups,
    )
    rows, largest = [], {}
    for norm in ("none", "bn"):
        row = [norm]
        for lr in b.lrs:
            records = runs.get("lr", norm=norm, lr=lr)
            values = values_of(records, m.val_acc)
            diverged = sum(r.get("status") == "diverged" for r in records)
            row.append(mean_std(values, 1) + (f" ({diverged} diverged)" if diverged else ""))
            if values and min(values) >= 90.0:
                largest[norm] = lr
        rows.append([*row, f"{largest[norm]:g}" if norm in largest else "none"])
    header = ["norm", *(f"lr {lr:g}" for lr in b.lrs), "largest lr with every seed ≥ 90%"]
    return Section(
        test.key, test.title, (test,), "learning_rate.png", (markdown_table(header, rows),)
    )


def _deep_networks(runs: Runs, b: Budget) -> Section:
    deepest = max(b.depths)
    hidden = [b.depth_width] * deepest
    accuracy = make_test(
        dict(
            key="bn-deep-trainable",
            title="Batch norm makes deep networks trainable",
            quote="making it easier to train deep neural networks",
            source=T1,
            verbatim=True,
            hypothesis=f"at the deepest MLP ({deepest} hidden layers of {b.depth_width}), bn's "
            "validation accuracy minus none's is > 0",
            experiment=f"MLPs of {', '.join(map(str, b.depths))} hidden layers of width "
            f"{b.depth_width}; none, bn, ln; Adam 1e-3, batch 64, {b.sweep_epochs} epochs, "
            f"{b.sweep_seeds} seeds; diagnostics on",
            measure="validation accuracy, pp",
            side="greater",
        ),
        difference(
            runs, "depth", "bn", "none", m.val_acc, label=f", depth {deepest}", hidden=hidden
        ),
    )
    gradients = make_test(
        dict(
            key="bn-gradient-ratio",
            title="Batch norm mitigates vanishing or exploding gradients",
            quote="mitigating the vanishing or exploding gradient problem",
            source=T1,
            hypothesis="at the deepest MLP, |log10(first layer's / last layer's gradient norm)| "
            "at initialization is smaller with bn: none's minus bn's is > 0 (0 means equal "
            "gradient norms at both ends)",
            experiment="the depth experiment's probes at step 0 (256 fixed training images)",
            measure="|log10 gradient-norm ratio|, decades",
            side="greater",
            scale="log10-abs",
        ),
        difference(
            runs, "depth", "none", "bn", m.grad_ratio, label=f", depth {deepest}", hidden=hidden
        ),
    )
    rows = []
    for norm in ("none", "bn", "ln"):
        for depth in b.depths:
            records = runs.get("depth", norm=norm, hidden=[b.depth_width] * depth)
            rows.append(
                [
                    norm,
                    depth,
                    mean_std(values_of(records, m.val_acc)),
                    mean_std(values_of(records, m.grad_ratio)),
                    mean_std(values_of(records, lambda r: m.grad_ratio(r, at_init=False))),
                ]
            )
    header = ["norm", "depth", "val acc %", "|log10 ratio| at init", "|log10 ratio| in training"]
    return Section(
        "bn-deep",
        accuracy.title,
        (accuracy, gradients),
        "depth.png",
        (markdown_table(header, rows),),
    )


def _dropout(runs: Runs, b: Budget) -> Section:
    p = b.dropout
    cells = [("none", p, 1), ("none", 0.0, -1), ("bn", p, -1), ("bn", 0.0, 1)]
    test = make_test(
        dict(
            key="bn-replaces-dropout",
            title="Batch norm reduces the need for dropout",
            quote="reducing the need for other regularization techniques such as dropout",
            verbatim=True,
            source=T1,
            hypothesis=f"dropout ({p:g}) helps less with bn than without: "
            "[none+dropout - none] - [bn+dropout - bn] in validation accuracy is > 0",
            experiment=f"tutorials' MLP, dropout {p:g} after each hidden block or none, Adam 1e-3, "
            f"batch 32, {b.dropout_epochs} epochs on a {b.dropout_subset}-image subset (small, "
            f"so that it overfits), {b.seeds} seeds",
            measure="interaction in validation accuracy, pp",
            side="greater",
        ),
        [
            group(
                f"{norm}{' + dropout' if d else ''}",
                w,
                runs.get("dropout", norm=norm, dropout=d),
                m.val_acc,
            )
            for norm, d, w in cells
        ],
        available=runs.planned("dropout"),
    )
    rows = [
        [
            f"{norm}{' + dropout' if d else ''}",
            mean_std(values_of(runs.get("dropout", norm=norm, dropout=d), m.val_acc)),
            mean_std(values_of(runs.get("dropout", norm=norm, dropout=d), m.gap)),
        ]
        for norm in ("none", "bn")
        for d in (0.0, p)
    ]
    table = markdown_table(["model", "val acc %", "gap (train - val) pp"], rows)
    return Section(test.key, test.title, (test,), "dropout.png", (table,))


def _probe_table(runs: Runs, measures: Sequence[tuple[str, m.Measure]]) -> str:
    rows = []
    for norm in ("none", "bn", "bn-scalar", "ln"):
        records = runs.get("batch", norm=norm, batch_size=32)
        rows.append([norm, *(mean_std(values_of(records, f), 4) for _, f in measures)])
    return markdown_table(["norm (batch 32)", *(name for name, _ in measures)], rows)


def _covariate_shift(runs: Runs) -> Section:
    test = make_test(
        dict(
            key="bn-reduces-ics",
            title="Batch norm reduces internal covariate shift",
            quote="batch normalization reduces internal covariate shift",
            source="both tutorials; Ioffe & Szegedy 2015",
            hypothesis="Santurkar et al. 2018's ICS, ||G - G'|| (a layer's gradient before and "
            "after the layers below it take their update, same batch), averaged over layers "
            "2.. and the probes after each epoch, is smaller with bn: the ratio bn / none < 1",
            experiment="the batch experiment at batch 32, probes on 256 fixed training images",
            measure="ratio of ICS, bn / none",
            side="less",
            scale="log10",
        ),
        difference(
            runs, "batch", "bn", "none", m.log10(m.ics), label=" at batch 32", batch_size=32
        ),
    )
    table = _probe_table(
        runs,
        [
            ("ICS ‖G - G'‖", m.ics),
            ("relative ICS ‖G - G'‖/‖G‖", m.relative_ics),
            ("cos(G, G')", m.ics_cosine),
        ],
    )
    return Section(test.key, test.title, (test,), "ics.png", (table,))


def _landscape(runs: Runs) -> Section:
    common = dict(
        source="Santurkar et al. 2018 (abstract), repeated by the second tutorial",
        quote="it makes the optimization landscape significantly smoother",
        verbatim=True,
        experiment="the batch experiment at batch 32; at each probe, steps of 0.025 to 0.4 along "
        "the negative gradient of 256 fixed training images",
        side="less",
        scale="log10",
    )
    loss = make_test(
        dict(
            common,
            key="bn-smooth-loss",
            title="Batch norm smooths the loss landscape",
            hypothesis="the loss variation along the gradient direction (max - min of the loss "
            "over the steps) is smaller with bn: ratio bn / none < 1",
            measure="ratio of loss variation, bn / none",
        ),
        difference(
            runs,
            "batch",
            "bn",
            "none",
            m.log10(m.landscape("loss_variation")),
            label=" at batch 32",
            batch_size=32,
        ),
    )
    gradient = make_test(
        dict(
            common,
            key="bn-gradient-predictive",
            title="Batch norm makes gradients more predictive",
            hypothesis="the gradient predictiveness, the largest ||∇L(W) - ∇L(W - η∇L)|| over the "
            "steps, is smaller with bn: ratio bn / none < 1",
            measure="ratio of gradient change, bn / none",
        ),
        difference(
            runs,
            "batch",
            "bn",
            "none",
            m.log10(m.landscape("gradient_predictiveness")),
            label=" at batch 32",
            batch_size=32,
        ),
    )
    table = _probe_table(
        runs,
        [
            ("loss variation", m.landscape("loss_variation")),
            ("gradient predictiveness", m.landscape("gradient_predictiveness")),
            ("effective β-smoothness", m.landscape("beta_smoothness")),
        ],
    )
    return Section("bn-landscape", loss.title, (loss, gradient), "landscape.png", (table,))


def _sequence_models(runs: Runs) -> Section:
    common = dict(
        title="Layer norm suits recurrent networks and transformers better than batch norm",
        quote="layer normalization is better suited to recurrent neural networks and transformers",
        source=T1 + "; Ba et al. 2016",
        measure="validation accuracy, pp",
        side="greater",
    )
    rnn = make_test(
        dict(
            common,
            key="ln-rnn",
            hypothesis="in the row-by-row LSTM (one layer of 64, norm on "
            "each step's input), ln's validation accuracy minus bn's is > 0",
            experiment="rnn model (LSTM 64), none/bn/ln/rms, Adam 1e-3, batch 64",
        ),
        difference(runs, "rnn", "ln", "bn", m.val_acc, label=" (rnn)"),
    )
    transformer = make_test(
        dict(
            common,
            key="ln-transformer",
            hypothesis="in the small vision transformer, ln's "
            "validation accuracy minus bn's (bn over the tokens' features) is > 0",
            experiment="transformer model, ln/bn/rms, Adam 1e-3, batch 64",
        ),
        difference(runs, "transformer", "ln", "bn", m.val_acc, label=" (transformer)"),
        available=runs.planned("transformer"),
    )
    rows = [
        [model, norm, mean_std(values_of(runs.get(model, norm=norm), m.val_acc))]
        for model, norms in (
            ("rnn", ("none", "bn", "ln", "rms")),
            ("transformer", ("bn", "ln", "rms")),
        )
        if runs.planned(model)
        for norm in norms
    ]
    table = markdown_table(["model", "norm", "val acc %"], rows)
    return Section("ln-sequence", common["title"], (rnn, transformer), "sequence.png", (table,))


def _ln_large_batch(runs: Runs, b: Budget) -> Section:
    large = max(b.batch_sizes)
    test = make_test(
        dict(
            key="ln-slower-large-batch",
            title="Layer norm converges more slowly than batch norm at large batches",
            quote="layer normalization may converge more slowly than batch normalization "
            "with large batch sizes in simple networks",
            source=T1,
            hypothesis=f"at the largest batch ({large}), first-epoch validation accuracy of ln "
            "minus bn is < 0 (the measure of claim 'bn converges faster')",
            experiment="the batch experiment",
            measure="first-epoch validation accuracy, pp",
            side="less",
        ),
        difference(
            runs,
            "batch",
            "ln",
            "bn",
            m.first_epoch_acc,
            label=f" at batch {large}",
            batch_size=large,
        ),
    )
    return Section(test.key, test.title, (test,), "convergence.png", (_reach_table(runs, b),))


def _time_groups(runs: Runs, b: Budget, first: str, second: str) -> list[Group]:
    return each(
        runs,
        "batch",
        [first, second],
        list(b.batch_sizes),
        m.log10(m.step_seconds),
        lambda n: 1 if n == first else -1,
    )


def _time_table(runs: Runs, b: Budget) -> str:
    rows = []
    for norm in ("none", "bn", "bn-scalar", "ln"):
        row = [norm]
        for size in b.batch_sizes:
            values = values_of(runs.get("batch", norm=norm, batch_size=size), m.step_seconds)
            row.append(mean_std([1000 * v for v in values], 3))
        rows.append(row)
    return "Training time per step, ms:\n\n" + markdown_table(
        ["norm", *(f"batch {s}" for s in b.batch_sizes)], rows
    )


TIMING_NOTE = (
    "time per optimizer step, measured inside the batch experiment's runs (the training "
    "part of each epoch, probes and evaluation excluded), median over epochs; runs trained "
    "two at a time on a 2-core machine shared with other work, so the numbers carry that noise"
)


def _overhead(runs: Runs, b: Budget) -> Section:
    common = dict(
        source=T1,
        quote="batch normalization adds computational overhead ... layer normalization adds less",
        experiment=TIMING_NOTE,
        scale="log10",
    )
    bn = make_test(
        dict(
            common,
            key="bn-overhead",
            title="Batch norm adds computational overhead",
            hypothesis="time per step of bn over none, geometric mean over the batch sizes, is > 1",
            measure="ratio of time per step, bn / none",
            side="greater",
        ),
        _time_groups(runs, b, "bn", "none"),
    )
    ln = make_test(
        dict(
            common,
            key="ln-cheaper-than-bn",
            title="Layer norm adds less overhead than batch norm",
            hypothesis="time per step of ln over bn, geometric mean over the batch sizes, is < 1",
            measure="ratio of time per step, ln / bn",
            side="less",
        ),
        _time_groups(runs, b, "ln", "bn"),
    )
    return Section("overhead", bn.title, (bn, ln), "step_time.png", (_time_table(runs, b),))


def _scalar_cheaper(runs: Runs, b: Budget) -> Section:
    test = make_test(
        dict(
            key="scalar-cheaper",
            title="Scalar statistics ('1s') are cheaper than per-channel ('2s')",
            quote="the '1s' version is computationally cheaper",
            source=T2,
            hypothesis="time per step of bn-scalar over bn, geometric mean over the batch sizes, "
            "is < 1",
            experiment=TIMING_NOTE,
            measure="ratio of time per step, bn-scalar / bn",
            side="less",
            scale="log10",
        ),
        _time_groups(runs, b, "bn-scalar", "bn"),
    )
    return Section(test.key, test.title, (test,), "step_time.png", (_time_table(runs, b),))


def _width(runs: Runs, b: Budget) -> Section:
    narrow, wide = min(b.widths), max(b.widths)
    terms = [("bn", wide, 1), ("bn-scalar", wide, -1), ("bn", narrow, -1), ("bn-scalar", narrow, 1)]
    test = make_test(
        dict(
            key="channel-helps-wide",
            title="Per-channel statistics help more in wide layers",
            quote="per-feature ('2s') statistics matter more in high-dimensional feature spaces",
            source=T2,
            hypothesis=f"(bn - bn-scalar) at width {wide} minus (bn - bn-scalar) at width "
            f"{narrow} is > 0",
            experiment=f"MLPs with two hidden layers of width {', '.join(map(str, b.widths))}; "
            f"Adam 1e-3, batch 32, {b.sweep_epochs} epochs, {b.sweep_seeds} seeds",
            measure="difference of differences of validation accuracy, pp",
            side="greater",
        ),
        [
            group(f"{n} at width {w}", s, runs.get("width", norm=n, hidden=[w, w]), m.val_acc)
            for n, w, s in terms
        ],
    )
    rows = []
    for width in b.widths:
        bn = values_of(runs.get("width", norm="bn", hidden=[width, width]), m.val_acc)
        scalar = values_of(runs.get("width", norm="bn-scalar", hidden=[width, width]), m.val_acc)
        diff = f"{statistics.fmean(bn) - statistics.fmean(scalar):+.2f}" if bn and scalar else "—"
        rows.append([width, mean_std(bn), mean_std(scalar), diff])
    table = markdown_table(["width", "bn %", "bn-scalar %", "bn - bn-scalar pp"], rows)
    return Section(test.key, test.title, (test,), "width.png", (table,))


def _group_norm(runs: Runs, b: Budget) -> Section:
    small = min(b.small_batches)
    common = dict(
        title="Group norm is a good choice at small batch sizes",
        quote="group normalization ... a good choice for small batch sizes",
        source="the first tutorial's future directions; Wu & He 2018",
        measure="validation accuracy, pp",
        side="greater",
    )
    cnn = make_test(
        dict(
            common,
            key="gn-small-batch-cnn",
            hypothesis=f"at batch {small}, gn's validation "
            "accuracy minus bn's is > 0 in the tutorials' CNN (32 groups, lowered to the "
            "channel count: one channel per group in the 32-channel layer)",
            experiment=f"cnn (Conv 32 / Conv 64), batch {', '.join(map(str, b.small_batches))}, "
            f"{b.conv_epochs} epochs on a {b.conv_subset}-image subset, {b.sweep_seeds} seeds",
        ),
        difference(
            runs,
            "conv-small-batch",
            "gn",
            "bn",
            m.val_acc,
            label=f" at batch {small} (cnn)",
            batch_size=small,
        ),
    )
    resnet = make_test(
        dict(
            common,
            key="gn-small-batch-resnet20",
            hypothesis=f"at batch {small}, gn's validation accuracy minus bn's is > 0 in resnet20",
            experiment=f"resnet20, batch {', '.join(map(str, b.small_batches))}, "
            f"{b.conv_epochs} epochs on a {b.resnet_subset}-image subset",
        ),
        difference(
            runs,
            "resnet20-small-batch",
            "gn",
            "bn",
            m.val_acc,
            label=f" at batch {small} (resnet20)",
            batch_size=small,
        ),
        available=runs.planned("resnet20-small-batch"),
    )
    tables = ["cnn:\n\n" + accuracy_table(runs, "conv-small-batch", ["gn", "bn"], b.small_batches)]
    if runs.planned("resnet20-small-batch"):
        tables.append(
            "resnet20:\n\n"
            + accuracy_table(runs, "resnet20-small-batch", ["gn", "bn"], b.small_batches)
        )
    return Section(
        "gn-small-batch", common["title"], (cnn, resnet), "group_norm.png", tuple(tables)
    )
