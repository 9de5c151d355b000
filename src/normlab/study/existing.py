"""The seven claims normlab's report already checks (normlab.report.claims), as headline
tests of the claims study, and "batch norm degrades at small batch" under three protocols."""

from __future__ import annotations

from normlab.study import measures as m
from normlab.study.findings import Group, Runs, difference, group
from normlab.study.plan import Budget
from normlab.study.sections import T1, T2, Section, accuracy_table, each, make_test

# --- the seven claims normlab's report already checks ----------------------------------


def existing_sections(runs: Runs, b: Budget) -> list[Section]:
    sizes = list(b.batch_sizes)
    small, large = min(sizes), max(sizes)
    norms = ["none", "bn", "bn-scalar", "ln"]
    acc_table = accuracy_table(runs, "batch", norms, sizes)
    experiment = (
        f"MNIST, the tutorials' MLP (784-128-64-10, norm before ReLU), Adam lr 1e-3, "
        f"{b.epochs} epochs on a stratified {b.subset}-image training subset, validated on "
        f"the 10,000 test images; batch sizes {', '.join(map(str, sizes))}; {b.seeds} seeds"
    )
    equal_weight_note = "the mean over the batch sizes, each weighted equally"
    ln_none = make_test(
        dict(
            key="ln-beats-none",
            title="Layer norm improves accuracy over no normalization",
            quote="validation accuracy 97.38% without normalization, 97.76% with layer "
            "normalization (MNIST MLP, 5 epochs)",
            source=T1,
            hypothesis=f"validation accuracy of ln minus none, {equal_weight_note}, is > 0",
            experiment=experiment,
            measure="final validation accuracy, pp",
            side="greater",
        ),
        each(runs, "batch", ["ln", "none"], sizes, m.val_acc, lambda n: 1 if n == "ln" else -1),
    )
    bn_none = make_test(
        dict(
            key="bn-beats-none",
            title="Batch norm improves accuracy over no normalization",
            quote="batch normalization improves the accuracy",
            source=f"{T1}; Ioffe & Szegedy 2015",
            hypothesis=f"validation accuracy of bn minus none, {equal_weight_note}, is > 0",
            experiment=experiment,
            measure="final validation accuracy, pp",
            side="greater",
        ),
        each(runs, "batch", ["bn", "none"], sizes, m.val_acc, lambda n: 1 if n == "bn" else -1),
    )
    small_batch = _bn_small_batch(runs, b)
    ln_independent = make_test(
        dict(
            key="ln-batch-independent",
            title="Layer norm does not depend on batch size",
            quote="layer normalization ... does not depend on the batch size",
            source="Ba, Kiros & Hinton 2016; " + T1,
            hypothesis=f"ln's validation accuracy at batch {small} minus at batch {large} lies "
            "within ±1 pp (an equivalence test, TOST): 'does not depend' read as 'changes by "
            "less than 1 pp' over the tested range",
            experiment=experiment + " (fixed epochs, so the smaller batch takes more steps)",
            measure="validation accuracy difference, pp",
            side="within",
            margin=1.0,
        ),
        [
            group(
                f"ln at batch {small}", 1, runs.get("batch", norm="ln", batch_size=small), m.val_acc
            ),
            group(
                f"ln at batch {large}",
                -1,
                runs.get("batch", norm="ln", batch_size=large),
                m.val_acc,
            ),
        ],
    )
    scalar_stable = make_test(
        dict(
            key="scalar-stable",
            title="Scalar statistics ('1s') are more stable at small batches",
            quote="the single-statistic ('1s') version is more stable with small batches",
            source=T2,
            hypothesis=f"at the smallest batch ({small}) bn-scalar's validation accuracy minus "
            "bn's is > 0 (stability read as accuracy; divergences are listed)",
            experiment=experiment,
            measure="validation accuracy, pp",
            side="greater",
        ),
        difference(
            runs,
            "batch",
            "bn-scalar",
            "bn",
            m.val_acc,
            label=f" at batch {small}",
            batch_size=small,
        ),
    )
    channel = make_test(
        dict(
            key="channel-generalizes",
            title="Per-channel statistics ('2s') generalize better",
            quote="per-feature ('2s') statistics generalize better",
            source=T2,
            hypothesis=f"at the largest batch ({large}) bn's validation accuracy minus "
            "bn-scalar's is > 0",
            experiment=experiment,
            measure="validation accuracy, pp",
            side="greater",
        ),
        difference(
            runs,
            "batch",
            "bn",
            "bn-scalar",
            m.val_acc,
            label=f" at batch {large}",
            batch_size=large,
        ),
    )
    regularizes = make_test(
        dict(
            key="bn-regularizes",
            title="Batch norm regularizes",
            quote="batch normalization regularizes the model",
            source="Ioffe & Szegedy 2015, §3.4",
            hypothesis="the generalization gap (train - validation accuracy) of none minus that "
            f"of bn, {equal_weight_note}, is > 0",
            experiment=experiment,
            measure="generalization gap difference, pp",
            side="greater",
        ),
        each(runs, "batch", ["none", "bn"], sizes, m.gap, lambda n: 1 if n == "none" else -1),
    )
    gap_table = accuracy_table(runs, "batch", norms, sizes, m.gap)
    return [
        Section("ln-beats-none", ln_none.title, (ln_none,), "batch_size.png", (acc_table,)),
        Section("bn-beats-none", bn_none.title, (bn_none,), "batch_size.png", (acc_table,)),
        small_batch,
        Section(
            "ln-batch-independent",
            ln_independent.title,
            (ln_independent,),
            "batch_size.png",
            (acc_table,),
        ),
        Section(
            "scalar-stable", scalar_stable.title, (scalar_stable,), "batch_size.png", (acc_table,)
        ),
        Section("channel-generalizes", channel.title, (channel,), "batch_size.png", (acc_table,)),
        Section("bn-regularizes", regularizes.title, (regularizes,), "gap.png", (gap_table,)),
    ]


def _diff_in_diff(runs: Runs, experiment: str, small: int, large: int) -> list[Group]:
    terms = [("bn", small, 1), ("ln", small, -1), ("bn", large, -1), ("ln", large, 1)]
    return [
        group(
            f"{norm} at batch {size}",
            w,
            runs.get(experiment, norm=norm, batch_size=size),
            m.val_acc,
        )
        for norm, size, w in terms
    ]


def _bn_small_batch(runs: Runs, b: Budget) -> Section:
    small, large = min(b.batch_sizes), max(b.batch_sizes)
    hypothesis = (
        f"(bn - ln) at batch {small} minus (bn - ln) at batch {large} is < 0: bn loses more "
        "than ln at the small batch. Layer norm is the reference because it has no batch "
        "statistics; the difference of differences removes everything the batch size does "
        "to both (number of updates, gradient noise)"
    )
    spec = dict(
        title="Batch norm degrades at small batch sizes",
        quote="BN's error increases rapidly when the batch size becomes smaller",
        verbatim=True,
        source="Wu & He 2018 (Group Normalization); " + T1,
        measure="difference of differences of validation accuracy, pp",
        side="less",
    )
    headline = make_test(
        dict(
            spec,
            key="bn-small-batch",
            hypothesis=hypothesis + f"; measured with an equal "
            f"number of updates ({b.equal_steps} steps) at both batch sizes",
            experiment=f"equal-steps mode: bn, ln and none, batch {small} and {large}, "
            f"{b.equal_steps} Adam steps (lr 1e-3) each, {b.subset}-image subset, {b.seeds} seeds",
        ),
        _diff_in_diff(runs, "equal-steps", small, large),
    )
    epochs = make_test(
        dict(
            spec,
            key="bn-small-batch (equal epochs)",
            hypothesis=hypothesis + "; equal epochs",
            experiment=f"the batch experiment: {b.epochs} epochs at each batch size",
        ),
        _diff_in_diff(runs, "batch", small, large),
    )
    linear = make_test(
        dict(
            spec,
            key="bn-small-batch (linear lr)",
            hypothesis=hypothesis + "; equal epochs, "
            "learning rate scaled linearly with the batch (Goyal et al. 2017)",
            experiment=f"--lr-scaling linear: lr 1e-3 * batch / 32, {b.epochs} epochs",
        ),
        _diff_in_diff(runs, "linear-lr", small, large),
    )
    sizes = [small, large]
    tables = (
        "Equal steps:\n\n" + accuracy_table(runs, "equal-steps", ["none", "bn", "ln"], sizes),
        "Equal epochs:\n\n" + accuracy_table(runs, "batch", ["none", "bn", "ln"], sizes),
        "Linear lr scaling:\n\n" + accuracy_table(runs, "linear-lr", ["bn", "ln"], sizes),
    )
    return Section(
        "bn-small-batch", headline.title, (headline, epochs, linear), "bn_small_batch.png", tables
    )
