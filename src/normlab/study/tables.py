"""The tables behind the claims study's numbers, as markdown, drawn from the records only.

Each table is known by a name that a declared section lists (normlab.study.sections);
:data:`TABLES` draws it from the study's records, its budget and the evaluated section.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from normlab.experiment.evaluations import BATCH_SIZES, SHIFTS
from normlab.report.catalogue import TUTORIAL_ACCURACY
from normlab.study import measures as m
from normlab.study.cells import (
    GN,
    Runs,
    after_records,
    batch_records,
    depth_records,
    dropout_records,
    gn_records,
    ics_records,
    init_records,
)
from normlab.study.plan import REFERENCE_BATCH, Budget
from normlab.study.sections import Section


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def mean_std(values: Sequence[float], digits: int = 2) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def values_of(records: Sequence[Any], measure: m.Measure) -> list[float]:
    return [v for v in (measure(r) for r in records) if v is not None]


def replication(runs: Runs, b: Budget, section: Section) -> str:
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
    return markdown_table(
        ["norm", "val acc % (mean ± std)", "range over seeds", "seeds", "the tutorial's"], rows
    )


def replicates(runs: Runs, b: Budget, section: Section) -> str:
    """Whether the tutorial's +0.38 pp lies in the replication's interval."""
    test = section.tests[0]
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


def batch(runs: Runs, b: Budget, section: Section) -> str:
    rows = []
    for norm in ("none", "bn", "bn-scalar", "ln", "brn"):
        records = [batch_records(runs, norm, size) for size in b.batch_sizes]
        rows.append([norm, *(mean_std(values_of(r, m.val_acc)) for r in records)])
    return markdown_table(["norm", *(f"batch {s}" for s in b.batch_sizes)], rows)


def convergence(runs: Runs, b: Budget, section: Section) -> str:
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
    return markdown_table(header, rows)


def learning_rate(runs: Runs, b: Budget, section: Section) -> str:
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
    return markdown_table(header, rows)


def depth(runs: Runs, b: Budget, section: Section) -> str:
    rows = []
    for label, norm, he in (
        ("none (default init)", "none", False),
        ("none (He init)", "none", True),
        ("bn", "bn", False),
        ("ln", "ln", False),
    ):
        for d in b.depths:
            records = depth_records(runs, b, norm, d, he)
            rows.append(
                [
                    label,
                    d,
                    mean_std(values_of(records, m.val_acc)),
                    mean_std(values_of(records, m.signed_grad_ratio)),
                    mean_std(values_of(records, lambda r: m.signed_grad_ratio(r, at_init=False))),
                ]
            )
    header = ["model", "depth", "val acc %", "log10 ratio at init", "log10 ratio in training"]
    return markdown_table(header, rows)


def init(runs: Runs, b: Budget, section: Section) -> str:
    rows = [
        [
            norm,
            *(mean_std(values_of(init_records(runs, norm, s), m.val_acc)) for s in b.init_scales),
        ]
        for norm in ("none", "bn", "ln")
    ]
    return markdown_table(["norm", *(f"{s:g}x He" for s in b.init_scales)], rows)


def dropout(runs: Runs, b: Budget, section: Section) -> str:
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
    return markdown_table(["model", "train acc %", "val acc %", "gap pp"], rows)


def ics(runs: Runs, b: Budget, section: Section) -> str:
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
    return markdown_table(header, rows)


def width(runs: Runs, b: Budget, section: Section) -> str:
    rows = []
    for w in b.widths:
        bn = values_of(runs.get("width", norm="bn", hidden=[w, w]), m.val_acc)
        scalar = values_of(runs.get("width", norm="bn-scalar", hidden=[w, w]), m.val_acc)
        diff = f"{statistics.fmean(bn) - statistics.fmean(scalar):+.2f}" if bn and scalar else "—"
        rows.append([w, mean_std(bn), mean_std(scalar), diff])
    return markdown_table(["width", "bn %", "bn-scalar %", "bn - bn-scalar pp"], rows)


def group_norm(runs: Runs, b: Budget, section: Section) -> str:
    rows = [
        [
            norm,
            *(mean_std(values_of(gn_records(runs, norm, s), m.val_acc)) for s in b.small_batches),
        ]
        for norm in (GN, "bn", "brn", "ln")
    ]
    return markdown_table(["norm", *(f"batch {s}" for s in b.small_batches)], rows)


AFTER_NORMS = ("none", "bn", "bn-scalar", "ln")


def input_shift(runs: Runs, b: Budget, section: Section) -> str:
    measures = [m.val_acc, *(m.shifted_acc(name) for name in SHIFTS), m.shift_drop]
    rows = [
        [norm, *(mean_std(values_of(after_records(runs, norm), x)) for x in measures)]
        for norm in AFTER_NORMS
    ]
    return markdown_table(["norm", "clean %", *(f"{s} %" for s in SHIFTS), "mean drop pp"], rows)


def _training_forward(records: Sequence[Any]) -> str:
    """Whether a training-mode forward of one image ran, for every seed or for none."""
    failures = {(r.get("evaluations") or {}).get("batch1_train_mode") for r in records}
    if not records:
        return "—"
    if failures == {None}:
        return "runs"
    return "; ".join(sorted(f"fails: {f}" if f else "runs" for f in failures))


def batch_one(runs: Runs, b: Budget, section: Section) -> str:
    rows = [
        [
            norm,
            mean_std(values_of(after_records(runs, norm), m.val_acc)),
            mean_std(values_of(after_records(runs, norm), m.batch1_acc)),
            _training_forward(after_records(runs, norm)),
        ]
        for norm in AFTER_NORMS
    ]
    header = ["norm", "eval, batches of 1024 %", "eval, batch 1 %", "training-mode forward at 1"]
    return markdown_table(header, rows)


def batch_statistics(runs: Runs, b: Budget, section: Section) -> str:
    rows = [
        [norm]
        + [
            mean_std(values_of(after_records(runs, norm), m.batch_stats_acc(size)))
            for size in BATCH_SIZES
        ]
        + [mean_std(values_of(after_records(runs, norm), m.batch_sensitivity))]
        for norm in ("bn", "bn-scalar")
    ]
    header = ["norm (trained at 32)", *(f"batch {s} %" for s in BATCH_SIZES), "mean change pp"]
    return markdown_table(header, rows)


def cost(runs: Runs, b: Budget, section: Section) -> str:
    """Each cost measurement's median over its rounds (seeds for the time to accuracy)."""
    samples = runs.measured.get("cost") or []
    if not samples:
        return "Not measured yet: `normlab study claims --cost --report DIR` on an idle machine."
    by_variant: dict[str, list[float]] = {}
    for sample in samples:
        c = sample["config"]
        if c["measure"] == "step":
            label = f"training step of the tutorials' MLP with {c['norm']}"
        elif c["measure"] == "time-to-accuracy":
            label = f"training to the target accuracy with {c['norm']}"
        else:
            label = f"{c['stats']} ({c['implementation']}) at {tuple(c['shape'])}"
        if sample["seconds"] is not None:
            by_variant.setdefault(label, []).append(sample["seconds"])
    rows = [
        [label, _duration(statistics.median(times)), f"{_duration(min(times))} to "
         f"{_duration(max(times))}", len(times)]
        for label, times in by_variant.items()
    ]  # fmt: skip
    return markdown_table(["measurement", "median", "range", "samples"], rows)


def _duration(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds >= 0.1 else f"{1e6 * seconds:.1f} µs"


TABLES: Mapping[str, Callable[[Runs, Budget, Section], str]] = {
    "replication": replication,
    "replication-verdict": replicates,
    "batch": batch,
    "convergence": convergence,
    "learning-rate": learning_rate,
    "depth": depth,
    "init": init,
    "dropout": dropout,
    "ics": ics,
    "width": width,
    "group-norm": group_norm,
    "input-shift": input_shift,
    "batch-1": batch_one,
    "batch-statistics": batch_statistics,
    "cost": cost,
}
"""Every table a section can list, by name."""
