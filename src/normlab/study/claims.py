"""The claims the study checks: each one's quote and source, its precise testable form, its
one pre-registered primary test and the secondary tests beside it (see
normlab.study.findings), with the tables behind them.

The primary test sits at the tutorial's own setting where the tutorial has one (the
tutorials' MLP at batch 32, Adam 1e-3, 5 epochs on the full training set); how the
effect changes with the batch size is reported beside it, never averaged away.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from normlab.study import measures as m
from normlab.study.findings import Check, Group, Runs, difference, group
from normlab.study.mechanism_claims import (
    covariate_shift,
    group_norm,
    landscape,
    not_yet_tested,
    width,
)
from normlab.study.plan import REFERENCE_BATCH, Budget
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
from normlab.study.training_claims import (
    deep_networks,
    dropout,
    higher_learning_rates,
    initialization,
    regularizes,
)

TUTORIAL_ACCURACY = {"none": 97.38, "ln": 97.76}
"""The first tutorial's reported validation accuracies (%), MNIST MLP, 5 epochs."""


def sections(runs: Runs, budget: Budget) -> list[Section]:
    """Every claim's section, its tests computed (not yet Holm-adjusted)."""
    return [
        _replication(runs, budget),
        _beats_none(runs, budget, "bn", "bn-beats-none", "Batch norm improves accuracy"),
        _beats_none(runs, budget, "ln", "ln-beats-none", "Layer norm improves accuracy"),
        _small_batch(runs, budget),
        _ln_batch_independent(runs, budget),
        _scalar_stable(runs, budget),
        _channel_generalizes(runs, budget),
        _converges_faster(runs, budget),
        _ln_large_batch(runs, budget),
        higher_learning_rates(runs, budget),
        deep_networks(runs, budget),
        initialization(runs, budget),
        regularizes(runs, budget),
        dropout(runs, budget),
        covariate_shift(runs, budget),
        landscape(runs, budget),
        width(runs, budget),
        group_norm(runs, budget),
        not_yet_tested(),
    ]


def _batch_text(b: Budget) -> str:
    return experiment_text(
        b,
        "the tutorials' MLP (784-128-64-10, norm before ReLU), Adam at 1e-3 x sqrt(batch / 32) "
        f"(1e-3 at batch 32), batch sizes {', '.join(map(str, b.batch_sizes))}, {b.seeds} seeds "
        f"({b.replication_seeds} at batch 32: the replication's runs)",
    )


def batch_records(runs: Runs, norm: str, size: int) -> list[Any]:
    """The tutorial MLP's runs of ``norm`` at batch ``size``: every seed of the replication
    where it has the norm at that batch (batch 32), otherwise the batch experiment's."""
    replicated = runs.configs("replication", norm=norm, batch_size=size)
    experiment = "replication" if replicated else "batch"
    return runs.get(experiment, norm=norm, batch_size=size)


def _pair(runs: Runs, first: str, second: str, size: int, measure: m.Measure) -> list[Group]:
    return [
        group(f"{norm} at batch {size}", weight, batch_records(runs, norm, size), measure)
        for norm, weight in ((first, 1), (second, -1))
    ]


def _by_batch(
    runs: Runs,
    b: Budget,
    spec: dict[str, Any],
    first: str,
    second: str,
    measure: m.Measure = m.val_acc,
) -> tuple[Check, ...]:
    """``first - second`` at every batch size but the tutorials' as secondary tests."""
    return tuple(
        make_test(
            dict(spec, key=f"{spec['key']} @ batch {size}", primary=False),
            _pair(runs, first, second, size, measure),
            trained=trained(runs, "batch"),
        )
        for size in b.batch_sizes
        if size != REFERENCE_BATCH
    )


def _batch_table(runs: Runs, b: Budget, norms: Sequence[str], measure: m.Measure) -> str:
    rows = []
    for norm in norms:
        cells = [
            mean_std(values_of(batch_records(runs, norm, size), measure)) for size in b.batch_sizes
        ]
        rows.append([norm, *cells])
    return markdown_table(["norm", *(f"batch {s}" for s in b.batch_sizes)], rows)


# --- the tutorial's own experiment -------------------------------------------------------


def _replication(runs: Runs, b: Budget) -> Section:
    spec = dict(
        key="replication: ln - none",
        title="Replication of the first tutorial's experiment",
        quote="97.38% validation accuracy without normalization, 97.76% with layer "
        "normalization (the MLP on MNIST, 5 epochs)",
        source=T1,
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
    )
    test = make_test(
        spec,
        difference(runs, "replication", "ln", "none", m.val_acc),
        trained=trained(runs, "replication"),
    )
    rows = []
    for norm in ("none", "bn", "bn-scalar", "ln"):
        values = values_of(runs.get("replication", norm=norm), m.val_acc)
        tutorial = TUTORIAL_ACCURACY.get(norm)
        rows.append(
            [
                norm,
                mean_std(values),
                f"{min(values):.2f} to {max(values):.2f}" if values else "—",
                len(values),
                "—" if tutorial is None else f"{tutorial:.2f}",
            ]
        )
    table = markdown_table(
        ["norm", "val acc % (mean ± std)", "range over seeds", "seeds", "the tutorial's"], rows
    )
    verdict = _replicates(test)
    return Section("replication", spec["title"], (test,), "replication.png", (table, verdict))


def _replicates(test: Check) -> str:
    """Whether the tutorial's +0.38 pp lies in the replication's interval."""
    if test.low is None or test.high is None:
        return "The replication has too few finished runs to say whether the gap replicates."
    gap = TUTORIAL_ACCURACY["ln"] - TUTORIAL_ACCURACY["none"]
    inside = test.low <= gap <= test.high
    return (
        f"The tutorial's gap of {gap:+.2f} pp (one run each) "
        + ("lies inside" if inside else "lies outside")
        + f" the replication's 95% interval [{test.low:+.2f}, {test.high:+.2f}] pp: "
        + (
            "the tutorial's numbers are consistent with this replication"
            if inside
            else "the tutorial's gap does not replicate"
        )
        + "."
    )


# --- claims on the tutorials' MLP --------------------------------------------------------


def _beats_none(runs: Runs, b: Budget, norm: str, key: str, title: str) -> Section:
    quotes = {
        "bn": ("batch normalization improves the accuracy", f"{T1}; {T2}"),
        "ln": ("97.38% → 97.76% with layer normalization", T1),
    }
    quote, source = quotes[norm]
    spec = dict(
        key=key,
        title=title,
        quote=quote,
        source=source,
        verbatim=norm == "bn",
        hypothesis=f"at the tutorial's setting (batch 32), {norm}'s validation accuracy minus "
        f"none's is > 0; the same contrast at the other batch sizes is reported beside it",
        experiment=_batch_text(b),
        measure=ACC,
        side="greater",
    )
    primary = make_test(
        spec,
        _pair(runs, norm, "none", REFERENCE_BATCH, m.val_acc),
        trained=trained(runs, "replication"),
    )
    tests = (primary, *_by_batch(runs, b, spec, norm, "none"))
    table = _batch_table(runs, b, ("none", "bn", "bn-scalar", "ln", "brn"), m.val_acc)
    return Section(key, title, tests, "batch_size.png", (table,))


def _small_batch(runs: Runs, b: Budget) -> Section:
    small = min(b.batch_sizes)
    terms = [
        ("bn", small, 1),
        ("ln", small, -1),
        ("bn", REFERENCE_BATCH, -1),
        ("ln", REFERENCE_BATCH, 1),
    ]
    spec = dict(
        key="bn-small-batch",
        title="Batch norm degrades at small batch sizes",
        quote="BN's error increases rapidly when the batch size becomes smaller",
        verbatim=True,
        source="Wu & He 2018 (Group Normalization), repeated by " + T1,
        hypothesis=f"(bn - ln) at batch {small} minus (bn - ln) at batch 32 is < 0: bn loses "
        "more than ln at the small batch. Layer norm has no batch statistics, so the "
        "difference of differences removes what the batch size does to both (the number of "
        "updates, the gradient noise); Adam's rate is scaled with sqrt(batch)",
        experiment=_batch_text(b),
        measure="difference of differences of validation accuracy, pp",
        side="less",
    )
    primary = make_test(
        spec,
        [group(f"{n} at batch {s}", w, batch_records(runs, n, s), m.val_acc) for n, s, w in terms],
        trained=trained(runs, "batch"),
    )
    renorm = make_test(
        dict(
            spec,
            key=f"mechanism: brn - bn at batch {small}",
            primary=False,
            hypothesis=f"batch renormalization, which corrects the batch statistics towards "
            f"the population's, recovers accuracy at batch {small}: brn - bn > 0",
            measure=ACC,
            side="greater",
        ),
        _pair(runs, "brn", "bn", small, m.val_acc),
        trained=trained(runs, "batch"),
    )
    table = _batch_table(runs, b, ("none", "bn", "bn-scalar", "ln", "brn"), m.val_acc)
    return Section(spec["key"], spec["title"], (primary, renorm), "batch_size.png", (table,))


def _ln_batch_independent(runs: Runs, b: Budget) -> Section:
    small = min(b.batch_sizes)
    spec = dict(
        key="ln-batch-independent",
        title="Layer norm does not depend on the batch size",
        quote="layer normalization ... does not depend on the batch size",
        source="Ba, Kiros & Hinton 2016; " + T1,
        hypothesis=f"ln's validation accuracy at batch {small} minus at batch 32 lies within "
        "±1 pp (an equivalence test, the margin of normlab's own report): 'does not depend' "
        "read as 'changes by less than a point' over the tested range, with Adam's rate "
        "scaled with sqrt(batch)",
        experiment=_batch_text(b),
        measure="validation accuracy difference, pp",
        side="within",
        margin=1.0,
    )
    test = make_test(
        spec,
        [
            group(f"ln at batch {small}", 1, batch_records(runs, "ln", small), m.val_acc),
            group("ln at batch 32", -1, batch_records(runs, "ln", REFERENCE_BATCH), m.val_acc),
        ],
        trained=trained(runs, "batch"),
    )
    return Section(test.key, test.title, (test,), "batch_size.png", ())


def _scalar_stable(runs: Runs, b: Budget) -> Section:
    small = min(b.batch_sizes)
    spec = dict(
        key="scalar-stable",
        title="Scalar statistics ('1s') are more stable at small batches",
        quote="the single-statistic ('1s') version is more stable with small batches",
        source=T3,
        hypothesis=f"at the smallest batch ({small}) bn-scalar's validation accuracy minus "
        "bn's is > 0 (stability read as accuracy; divergences are counted)",
        experiment=_batch_text(b),
        measure=ACC,
        side="greater",
    )
    test = make_test(
        spec, _pair(runs, "bn-scalar", "bn", small, m.val_acc), trained=trained(runs, "batch")
    )
    return Section(test.key, test.title, (test,), "batch_size.png", ())


def _channel_generalizes(runs: Runs, b: Budget) -> Section:
    spec = dict(
        key="channel-generalizes",
        title="Per-channel statistics ('2s') generalize better",
        quote="per-feature ('2s') statistics generalize better",
        source=T3,
        hypothesis="at the tutorial's setting (batch 32), bn's validation accuracy minus "
        "bn-scalar's is > 0; other batch sizes beside it",
        experiment=_batch_text(b),
        measure=ACC,
        side="greater",
    )
    primary = make_test(
        spec,
        _pair(runs, "bn", "bn-scalar", REFERENCE_BATCH, m.val_acc),
        trained=trained(runs, "replication"),
    )
    return Section(
        spec["key"],
        spec["title"],
        (primary, *_by_batch(runs, b, spec, "bn", "bn-scalar")),
        "batch_size.png",
        (),
    )


def _converges_faster(runs: Runs, b: Budget) -> Section:
    spec = dict(
        key="bn-converges-faster",
        title="Batch norm converges faster",
        quote="the model with batch normalization seems to converge quicker",
        source=T1,
        verbatim=True,
        hypothesis="validation accuracy after the first epoch, bn minus none, at batch 32 is "
        "> 0: 'converges quicker' read as 'is further after the same amount of training'",
        experiment=_batch_text(b),
        measure="first-epoch validation accuracy, pp",
        side="greater",
    )
    test = make_test(
        spec,
        _pair(runs, "bn", "none", REFERENCE_BATCH, m.first_epoch_acc),
        trained=trained(runs, "replication"),
    )
    rows = []
    for norm in ("none", "bn", "bn-scalar", "ln"):
        records = batch_records(runs, norm, REFERENCE_BATCH)
        epochs = records[0]["config"]["epochs"] if records else 0
        rows.append(
            [norm]
            + [
                mean_std(values_of(records, lambda r, e=e: 100.0 * r["history"][e]["val_acc"]))
                for e in range(epochs)
            ]
        )
    header = ["norm (batch 32)", *(f"epoch {e + 1}" for e in range(b.epochs))]
    return Section(
        test.key, test.title, (test,), "convergence.png", (markdown_table(header, rows),)
    )


def _ln_large_batch(runs: Runs, b: Budget) -> Section:
    large = max(b.batch_sizes)
    spec = dict(
        key="ln-slower-large-batch",
        title="Layer norm converges more slowly than batch norm at large batches",
        quote="layer normalization may converge more slowly than batch normalization with "
        "large batch sizes in simple networks",
        source=T1,
        verbatim=True,
        hypothesis=f"at the largest batch ({large}), first-epoch validation accuracy of ln "
        "minus bn is < 0",
        experiment=_batch_text(b),
        measure="first-epoch validation accuracy, pp",
        side="less",
    )
    test = make_test(
        spec, _pair(runs, "ln", "bn", large, m.first_epoch_acc), trained=trained(runs, "batch")
    )
    return Section(test.key, test.title, (test,), "convergence.png", ())
