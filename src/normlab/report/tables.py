"""The summary and verdict tables, as formatted rows and as rich tables, and the words of a
compare sweep's findings (outcome, prediction, evidence).

The rows are plain strings so that the terminal (rich) and the HTML page
show exactly the same numbers; rich gets them as Text, never as markup, so
a value from a record cannot restyle the table.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rich.table import Table
from rich.text import Text

from normlab.report.claims import ClaimTest
from normlab.report.evaluation import (
    CONTRADICTED,
    INCONCLUSIVE,
    SUPPORTED,
    TOO_FEW,
    Finding,
    Group,
)
from normlab.report.runs import Sweep

SUMMARY_HEADERS = (
    "norm",
    "batch",
    "val acc % (mean ± std)",
    "seeds",
    "train acc % (eval)",
    "gap pp",
    "train/eval agree %",
    "diverged",
    "s / run",
)
VERDICT_HEADERS = ("claim", "comparison", "estimate pp", "95% interval", "n", "verdict")

NEEDS_SEEDS = "needs ≥ 2 seeds"
"""A compare sweep's words for too few runs: every run of a sweep has a value, so a group
of fewer than two runs is a configuration run with one seed."""

OUTCOME_STYLES = {
    SUPPORTED: "green",
    CONTRADICTED: "red",
    INCONCLUSIVE: "yellow",
    TOO_FEW: "dim",
}


@dataclass(frozen=True)
class SummaryRow:
    """One series at one batch size, formatted; ``diverged`` counts its diverged runs."""

    cells: tuple[str, ...]
    diverged: int


def _mean_std(values: Sequence[float]) -> str:
    mean = statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {statistics.stdev(values):.2f}"


def _mean_or_dash(values: Sequence[float | None]) -> str:
    known = [100 * value for value in values if value is not None]
    return f"{statistics.fmean(known):.1f}" if known else "—"


def summary_rows(sweep: Sweep) -> list[SummaryRow]:
    """Rows series × batch size: val acc mean ± std over seeds, n, final train acc
    (eval mode), generalization gap, how often predictions with batch statistics agree
    with eval mode's at the training batch size ("—" without batch norm), diverged
    count and mean seconds per run."""
    rows = []
    for series in sweep.series:
        for batch_size in sweep.batch_sizes:
            runs = sweep.series_group(series, batch_size)
            if not runs:
                continue
            diverged = sum(run.diverged for run in runs)
            cells = (
                series,
                str(batch_size),
                _mean_std([100 * run.val_acc for run in runs]),
                str(len(runs)),
                f"{statistics.fmean(100 * run.train_acc for run in runs):.2f}",
                f"{statistics.fmean(100 * run.gap for run in runs):+.2f}",
                _mean_or_dash([run.agreement for run in runs]),
                f"{diverged} of {len(runs)}" if diverged else "—",
                f"{statistics.fmean(run.seconds for run in runs):.1f}",
            )
            rows.append(SummaryRow(cells, diverged))
    return rows


def format_interval(low: float | None, high: float | None) -> str:
    """``[-0.12, +0.88]``, or ``—`` when there is no interval."""
    if low is None or high is None:
        return "—"
    return f"[{low:+.2f}, {high:+.2f}]"


def outcome(found: Finding) -> str:
    """The finding's verdict in a compare report's words."""
    return NEEDS_SEEDS if found.verdict == TOO_FEW else found.verdict


def prediction(test: ClaimTest, unit: str = "") -> str:
    """What the claim predicts of the estimate: ``> 0``, ``< 0`` or ``within ±1`` and
    ``unit``."""
    if test.side == "within":
        return f"within ±{test.margin or 0.0:g}{unit}"
    return "> 0" if test.side == "greater" else "< 0"


def _describe(g: Group, stability: bool) -> str:
    """``bn at batch 4: 91.20% (std 0.80 pp, 3 seeds, 1 of 3 diverged)``."""
    details = [f"std {statistics.stdev(g.values):.2f} pp"] if len(g.values) > 1 else []
    details.append(f"{g.runs} seed" + ("s" if g.runs != 1 else ""))
    if g.diverged or stability:
        details.append(f"{g.diverged} of {g.runs} diverged")
    return f"{g.label}: {statistics.fmean(g.values):.2f}{g.unit} ({', '.join(details)})"


def evidence(found: Finding) -> str:
    """Each group's mean, spread, seeds and divergences, then the test's notes."""
    described = [_describe(g, found.test.claim.stability) for g in found.groups]
    return "; ".join([*described, *found.test.notes]) + "."


def verdict_rows(findings: Sequence[Finding]) -> list[tuple[str, ...]]:
    """One row per finding; a claim's statement is written once above its comparisons.

    With several experiments the statement names the experiment.
    """
    rows = []
    previous = None
    for found in findings:
        test = found.test
        claim = test.claim.statement
        if test.experiment:
            claim = f"{claim} [{test.experiment}]"
        rows.append(
            (
                claim if claim != previous else "",
                test.comparison,
                f"{found.estimate:+.2f}",
                format_interval(found.low, found.high),
                ", ".join(str(n) for n in found.n),
                outcome(found),
            )
        )
        previous = claim
    return rows


def summary_table(records: Sequence[Mapping[str, Any]] | Sweep) -> Table:
    """A rich table with one row per norm (series) and batch size.

    Columns: validation accuracy mean ± std over seeds, the number of seeds,
    final train accuracy in eval mode, the generalization gap (train − val, in
    percentage points), how many runs diverged, and mean seconds per run.
    """
    sweep = records if isinstance(records, Sweep) else Sweep.from_records(records)
    table = Table(title=Text(f"{sweep.title()}: final accuracy per norm and batch size"))
    for index, header in enumerate(SUMMARY_HEADERS):
        # The series label (``gn(groups=8) (lr=0.01)``) wraps rather than being cut short.
        table.add_column(header, justify="left" if index == 0 else "right", overflow="fold")
    previous = None
    for row in summary_rows(sweep):
        series = row.cells[0]
        if previous is not None and series != previous:
            table.add_section()
        previous = series
        table.add_row(*(Text(cell) for cell in row.cells), style="red" if row.diverged else None)
    return table


def verdicts_table(findings: Sequence[Finding]) -> Table:
    """A rich table of findings: claim, comparison, estimate, 95% interval, n, verdict."""
    table = Table(title="claims checked (estimates in percentage points, Welch 95% intervals)")
    for header in VERDICT_HEADERS:
        justify = "right" if header in ("estimate pp", "95% interval", "n") else "left"
        table.add_column(header, justify=justify, overflow="fold")
    for found, row in zip(findings, verdict_rows(findings), strict=True):
        if row[0]:
            table.add_section()
        verdict = Text(row[-1], style=OUTCOME_STYLES.get(found.verdict, ""))
        table.add_row(*(Text(cell) for cell in row[:-1]), verdict)
    return table
