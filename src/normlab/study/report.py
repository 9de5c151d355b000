"""The claims study's markdown report: a summary table, then one section per claim."""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from normlab.report.claims import ClaimTest, Scale
from normlab.report.evaluation import (
    ALPHA,
    INCONCLUSIVE,
    NOT_RUN,
    UNDERTRAINED,
    Adequacy,
    Finding,
    Group,
)
from normlab.report.tables import prediction
from normlab.study.cells import Runs
from normlab.study.measures import CHANCE_MARGIN, collapsed
from normlab.study.plan import Budget
from normlab.study.sections import Section
from normlab.study.tables import TABLES, markdown_table

ONE_S_TWO_S = (
    "**A correction to the tutorials.** The third tutorial presents the single-statistic "
    "variant ('1s': one mean and variance over the whole batch, normlab's `bn-scalar`) as "
    "Ioffe & Szegedy's batch normalization. It is not: Ioffe & Szegedy 2015 (Algorithm 1 and "
    "§3.2) normalize each activation, and in convolutional layers each feature map, with its "
    "own mean and variance: that is the per-channel '2s' variant, normlab's `bn` and torch's "
    "`BatchNorm`. The scalar variant is the tutorial's own simplification."
)


def describe(g: Group, scale: Scale) -> str:
    """``bn at batch 4: 91.20 (std 0.80, 5 runs, 1 diverged)``: diverged counts runs whose
    loss became NaN and runs that ended within a few points of chance."""
    if not g.values:
        return f"{g.label}: no values ({g.runs} runs)"
    mean = statistics.fmean(g.values)
    shown = f"{10**mean:.3g} (geometric mean)" if scale == "log10" else f"{mean:.3g}"
    parts = [f"std {statistics.stdev(g.values):.2g}"] if len(g.values) > 1 else []
    parts.append(f"{len(g.values)} runs")
    if g.diverged or g.collapsed:
        kinds = [f"{g.diverged} NaN"] * bool(g.diverged) + [
            f"{g.collapsed} at chance (+{CHANCE_MARGIN:g} pp)"
        ] * bool(g.collapsed)
        parts.append(f"{g.diverged + g.collapsed} diverged: {', '.join(kinds)}")
    return f"{g.label}: {shown} ({', '.join(parts)})"


def _estimate(found: Finding) -> float | None:
    """The estimate, which the study reports only with its interval."""
    return None if found.low is None else found.estimate


def format_estimate(found: Finding) -> str:
    """The estimate and its 95% interval in the test's unit."""
    estimate = _estimate(found)
    if estimate is None:
        return "—"
    if found.test.scale == "log10":
        interval = "" if found.low is None else f" [{10**found.low:.3g}, {10**found.high:.3g}]"
        return f"{10**estimate:.3g}x{interval}"
    unit = " pp" if found.test.scale == "pp" else ""
    interval = "" if found.low is None else f" [{found.low:+.3g}, {found.high:+.3g}]"
    return f"{estimate:+.3g}{unit}{interval}"


def format_mde(found: Finding) -> str:
    """The minimum detectable effect in the test's unit (a factor on a log10 scale)."""
    if found.mde is None:
        return "—"
    if found.test.scale == "log10":
        return f"{10**found.mde:.3g}x"
    return f"{found.mde:.2g}{' pp' if found.test.scale == 'pp' else ''}"


def format_p(value: float | None) -> str:
    if value is None:
        return "—"
    return "< 0.0001" if value < 1e-4 else f"{value:.4f}" if value < 0.01 else f"{value:.3f}"


def _test_row(number: str, found: Finding) -> list[str]:
    verdict = f"**{found.verdict}**"
    return [
        number,
        found.test.id,
        "primary" if found.test.primary else "secondary",
        prediction(found.test),
        format_estimate(found),
        format_mde(found),
        format_p(found.p),
        format_p(found.p_adjusted),
        verdict,
        found.unadjusted,
    ]


def summary(sections: Sequence[Section]) -> str:
    rows = []
    for i, section in enumerate(sections, start=1):
        for j, test in enumerate(section.tests):
            rows.append(
                _test_row(f"{i}" + (chr(ord("a") + j) if len(section.tests) > 1 else ""), test)
            )
    header = [
        "#",
        "test",
        "role",
        "claim predicts",
        "estimate [95% CI]",
        "MDE",
        "p",
        "Holm p",
        "verdict (Holm)",
        "unadjusted",
    ]
    return markdown_table(header, rows)


def _test_block(found: Finding) -> list[str]:
    test, claim = found.test, found.test.claim
    quote = (
        f'> "{claim.quote}" — {claim.source}'
        if claim.verbatim
        else f"> Claim (paraphrased): {claim.quote} — {claim.source}"
    )
    lines = [
        f"**{test.id}.**",
        "",
        quote,
        "",
        f"*Hypothesis.* {test.hypothesis}.",
        "",
        f"*Experiment.* {test.experiment}.",
        "",
    ]
    if found.adequacy is not None:
        a = found.adequacy
        best = "no finished run" if a.best is None else f"{a.best:.2f}% ({a.best_label})"
        lines += [
            f"*Trained?* The experiment's best configuration must reach {a.threshold:g}% "
            f"validation accuracy to count as trained: {best} → "
            f"{'trained' if a.met else '**undertrained**'}.",
            "",
        ]
    if _estimate(found) is None:
        why = found.reason or (
            "its runs have not finished yet"
            if found.verdict == NOT_RUN
            else "fewer than two finished runs in some group"
        )
        lines += [f"*Result.* {found.verdict}: {why}.", ""]
        return lines
    interval = "paired over seeds" if found.paired else "Welch, over seeds"
    adjusted = (
        f"Holm-adjusted p = {format_p(found.p_adjusted)}"
        if test.primary
        else "a secondary test, not adjusted"
    )
    detectable = ""
    if found.verdict in (INCONCLUSIVE, UNDERTRAINED) and found.mde is not None:
        detectable = (
            f" With these runs the test could detect an effect of {format_mde(found)} "
            "(80% power at alpha = 0.05)."
        )
    lines += [
        f"*Result.* {test.measure}: **{format_estimate(found)}** (95% interval, {interval}); "
        f"p = {format_p(found.p)}{_tost(test)}, {adjusted} → **{found.verdict}** "
        f"(unadjusted interval rule: {found.unadjusted}).{detectable}",
        "",
        "Groups (weight): "
        + "; ".join(f"{g.label} ({g.weight:+.3g}): " + _group_text(g, test) for g in found.groups)
        + ".",
        "",
    ]
    return lines


def _tost(test: ClaimTest) -> str:
    return f" (TOST, margin ±{test.margin:g})" if test.side == "within" else ""


def _group_text(g: Group, test: ClaimTest) -> str:
    return describe(g, test.scale).split(": ", 1)[1]


def _versions(records: Sequence[Mapping[str, Any]]) -> str:
    """The library versions the records were trained with (one line per distinct set)."""
    seen = {
        json.dumps(r.get("versions") or {}, sort_keys=True): r.get("versions") or {}
        for r in records
    }
    return "; ".join(
        ", ".join(f"{name} {version}" for name, version in sorted(v.items())) for v in seen.values()
    )


def render(
    sections: Sequence[Section],
    budget: Budget,
    command: str,
    runs: Runs,
    planned: int,
) -> str:
    """The whole report as markdown (figures referenced by file name, next to it), from
    ``runs``' records and measurements alone: the same ones always give the same text."""
    records = list(runs.by_id.values())
    diverged = sum(r.get("status") == "diverged" for r in records)
    at_chance = sum(collapsed(r) for r in records)
    tests = [t for s in sections for t in s.tests]
    family = sum(t.p_adjusted is not None for t in tests)
    counts = {
        v: sum(t.verdict == v for t in tests) for v in dict.fromkeys(t.verdict for t in tests)
    }
    label = (
        "the full study"
        if budget.name == "full"
        else (f"**a `--budget {budget.name}` run, not the full study**")
    )
    hours = sum(float(r.get("seconds") or 0.0) for r in records) / 3600
    complete = (
        "every planned run finished"
        if len(records) >= planned
        else f"**{planned - len(records)} planned runs have not finished yet**: the tests "
        "that need them say so, and the same command resumes the study"
    )
    lines = [
        "# The tutorials' claims about normalization, measured",
        "",
        f"This is {label}: every claim the normalization tutorials make, turned into a "
        "testable hypothesis, an experiment on real MNIST, an estimate with a 95% interval and "
        "a verdict. It is generated by one command, and regenerated from the records committed "
        "beside it (`records.jsonl.gz`) by the same command with `--report-only`:",
        "",
        f"```\n{command}\n```",
        "",
        f"- Runs: {len(records)} of the {planned} planned ({complete}); "
        f"{diverged + at_chance} diverged ({diverged} with a NaN or infinite loss, "
        f"{at_chance} ending below chance + {CHANCE_MARGIN:g} pp). All on MNIST (IDX files), "
        "validated on the 10,000 test images; training on the 60,000 training images or a "
        "fixed stratified subset (per experiment below). Seeds differ in initialization and "
        "data order; runs of one seed share both across norms.",
        f"- Training time: {hours:.1f} CPU-hours of runs (sum of the runs' own wall times, "
        "seeds trained together counted by their share), on 2-core machines. Versions: "
        f"{_versions(records)}.",
        f"- Verdicts: {', '.join(f'{n} {v}' for v, n in counts.items())}, over {len(tests)} "
        f"tests ({family} primary tests in the Holm family).",
        "",
        "**How to read it.** Each claim has one pre-registered *primary* test, at the "
        "tutorial's own setting where it has one; *secondary* tests (the same contrast at "
        "other batch sizes, interactions, mechanism checks) are reported beside it, "
        "unadjusted. Each test is a linear contrast of group means (weights listed with each "
        "result). When every group has one run per seed and the groups share their seeds "
        "(the same initialization and data order), the contrast is computed within each seed "
        "and its interval is a paired t interval; otherwise it is Welch-Satterthwaite's. The "
        "p-value is the two-sided t test of 'no difference'; for an equivalence claim, the "
        "two one-sided tests (TOST) of 'differs by at least the margin', which reject exactly "
        "when the 90% interval lies within the margin, and such a claim is contradicted only "
        "when the 95% interval lies wholly outside the margin. Holm's method adjusts the "
        f"{family} primary p-values so that the chance of any false primary verdict stays at "
        f"{ALPHA:g}: a claim is *supported* when its adjusted p < {ALPHA:g} and the estimate "
        "lies on the predicted side, *contradicted* when it is significant on the other side, "
        "*inconclusive* otherwise; beside an inconclusive verdict, MDE is the smallest effect "
        "the test would detect with 80% power. Every experiment states the accuracy its best "
        "configuration must reach; a claim whose experiment falls short is *not tested "
        "(undertrained)*, never a verdict. Ratios (timing, ICS, landscape) are contrasts of "
        "log10 values, shown as ratios of geometric means.",
        "",
        "## Summary",
        "",
        summary(sections),
        "",
        ONE_S_TWO_S,
        "",
    ]
    shown: dict[str, int] = {}  # a table or figure already shown -> its section's number
    for i, section in enumerate(sections, start=1):
        lines += [f"## {i}. {section.title}", ""]
        for test in section.tests:
            lines += _test_block(test)
        for name in section.tables:
            table = TABLES[name](runs, budget, section)
            if table in shown:
                lines += [f"(The table behind these numbers is in section {shown[table]}.)", ""]
            else:
                shown[table] = i
                lines += [table, ""]
        if not section.figure:
            continue
        if section.figure in shown:
            lines += [
                f"(Figure: `{section.figure}`, shown in section {shown[section.figure]}.)",
                "",
            ]
        else:
            shown[section.figure] = i
            lines += [f"![{section.title}]({section.figure})", ""]
    return "\n".join(lines)


def _group_json(g: Group) -> dict[str, Any]:
    return {
        "label": g.label,
        "weight": g.weight,
        "values": list(g.values),
        "seeds": list(g.seeds),
        "runs": g.runs,
        "diverged": g.diverged + g.collapsed,
    }


def _adequacy_json(a: Adequacy) -> dict[str, Any]:
    return {
        **a.facts,
        "threshold": a.threshold,
        "best_mean_val_acc": a.best,
        "best_configuration": a.best_label,
        "trained": a.met,
    }


def write_json(
    path: Path,
    sections: Sequence[Section],
    budget: Budget,
    records: Sequence[Mapping[str, Any]],
) -> None:
    """``claims.json``: every test, machine-readable."""
    tests = []
    for section in sections:
        for found in section.tests:
            test = found.test
            tests.append(
                {
                    "id": test.id,
                    "section": section.key,
                    "claim": test.claim.statement,
                    "quote": test.claim.quote,
                    "source": test.claim.source,
                    "primary": test.primary,
                    "hypothesis": test.hypothesis,
                    "prediction": prediction(test) if test.side != "within" or test.margin else "",
                    "measure": test.measure,
                    "estimate": _estimate(found),
                    "interval": None if found.low is None else [found.low, found.high],
                    "paired": found.paired,
                    "p": found.p,
                    "holm_p": found.p_adjusted,
                    "verdict": found.verdict,
                    "unadjusted_verdict": found.unadjusted,
                    "minimum_detectable_effect": found.mde,
                    "margin": test.margin,
                    "scale": test.scale,
                    "reason": found.reason or None,
                    "groups": [_group_json(g) for g in found.groups],
                    "experiment": {
                        "description": test.experiment,
                        **({} if found.adequacy is None else _adequacy_json(found.adequacy)),
                    },
                }
            )
    document = {"budget": budget.name, "runs": len(records), "tests": tests}
    path.write_text(json.dumps(document, indent=1, allow_nan=False) + "\n", encoding="utf-8")
