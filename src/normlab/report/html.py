"""report.html: one self-contained page (inline CSS, images as data: URIs, no scripts).

Every string that comes from a record goes through :func:`html.escape`; the
page loads nothing from anywhere, so it can be mailed or archived as is.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from html import escape

from normlab.report.catalogue import BN_REGULARIZES, LN_BATCH_INDEPENDENT
from normlab.report.claims import Claim
from normlab.report.evaluation import CONTRADICTED, INCONCLUSIVE, SUPPORTED, TOO_FEW, Finding
from normlab.report.runs import Run, Sweep, format_value
from normlab.report.tables import (
    SUMMARY_HEADERS,
    evidence,
    format_interval,
    outcome,
    prediction,
    summary_rows,
)

TIMES = "\u00d7"

OUTCOME_CLASSES = {
    SUPPORTED: "supported",
    CONTRADICTED: "contradicted",
    INCONCLUSIVE: "inconclusive",
    TOO_FEW: "needs-seeds",
}

STYLE = """
:root { color-scheme: light; --line: #d0d7de; --muted: #57606a; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
       sans-serif; margin: 0 auto; max-width: 1240px; padding: 1.5rem 2rem 3rem;
       color: #1f2328; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.25rem; margin-top: 2rem; border-bottom: 1px solid var(--line);
     padding-bottom: 0.2rem; }
.lead, .muted, figcaption, .source, .evidence { color: var(--muted); }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 0.9rem; margin: 0.5rem 0; }
th, td { border-bottom: 1px solid var(--line); padding: 0.3rem 0.6rem; text-align: left;
         vertical-align: top; }
th { background: #f6f8fa; white-space: nowrap; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.diverged td { background: #fff1f0; }
.config-grid { display: flex; flex-wrap: wrap; gap: 0.5rem 2.5rem; align-items: flex-start; }
table.config { max-width: 36rem; }
table.config caption { text-align: left; font-weight: 600; padding: 0.2rem 0; }
table.config th { background: none; font-weight: normal; color: var(--muted); }
table.config td { overflow-wrap: anywhere; }
.verdicts td.claim { min-width: 12rem; max-width: 18rem; }
.verdicts td.comparison { min-width: 10rem; }
.source, .evidence { font-size: 0.8rem; }
.verdicts td.evidence { min-width: 14rem; }
.badge { display: inline-block; padding: 0.05rem 0.5rem; border-radius: 0.8rem;
         font-weight: 600; white-space: nowrap; }
.supported { background: #dafbe1; color: #116329; }
.contradicted { background: #ffebe9; color: #a40e26; }
.inconclusive { background: #fff8c5; color: #7d4e00; }
.needs-seeds { background: #eaeef2; color: #424a53; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); }
details summary { cursor: pointer; font-weight: 600; margin: 0.5rem 0; }
"""

HOW_TO_READ = (
    "Each row compares groups of runs that differ only in their seed. The estimate is a "
    "difference of mean final validation accuracies in percentage points (pp); for "
    f"“{BN_REGULARIZES.statement}” it is a difference of generalization gaps (final train "
    "accuracy, measured in eval mode, minus validation accuracy). The 95% interval is Welch's "
    "t interval over seeds (unequal variances), so it covers seed-to-seed variation on this "
    "data set and model only. A directional claim is supported when the whole interval lies "
    "on the claimed side of 0, contradicted when it lies on the other side, and inconclusive "
    "otherwise; with a single seed in some group there is no interval. "
    f"“{LN_BATCH_INDEPENDENT.statement}” is an equivalence claim with a "
    f"±{LN_BATCH_INDEPENDENT.margin:g} pp margin. Epochs are held fixed "
    "across batch sizes, so smaller batches take more optimizer steps; the batch-size claim "
    "for batch norm subtracts a reference norm to remove that effect. Diverged runs count in "
    "every mean with the accuracy they reached: a divergence is a real failure."
)


def data_uri(png: bytes) -> str:
    """``data:image/png;base64,...`` for inlining a PNG."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _cell(text: object, css: str = "", tag: str = "td") -> str:
    attribute = f' class="{css}"' if css else ""
    return f"<{tag}{attribute}>{escape(str(text))}</{tag}>"


def _table(
    headers: Sequence[str], rows: Iterable[Sequence[object]], numeric: Sequence[int] = ()
) -> str:
    head = "".join(_cell(h, "num" if i in numeric else "", "th") for i, h in enumerate(headers))
    body = "".join(
        "<tr>" + "".join(_cell(v, "num" if i in numeric else "") for i, v in enumerate(row))
        + "</tr>"
        for row in rows
    )  # fmt: skip
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return f'<div class="scroll">{table}</div>'


def _unique(values: Iterable[object]) -> list[str]:
    return list(dict.fromkeys(format_value(value) for value in values if value is not None))


def _key_values(caption: str, rows: Sequence[tuple[str, str]]) -> str:
    body = "".join(f"<tr>{_cell(key, tag='th')}{_cell(value)}</tr>" for key, value in rows)
    return (
        f'<table class="config"><caption>{escape(caption)}</caption><tbody>{body}</tbody></table>'
    )


def _config_section(sweep: Sweep) -> str:
    """Fields that vary, fields common to every run, the runs, the data and the software."""
    runs = sweep.runs
    varies = [(name, ", ".join(values)) for name, values in sweep.values().items()]
    fixed = [(name, format_value(value)) for name, value in sweep.common.items()]
    diverged = sum(run.diverged for run in runs)
    total = sum(run.seconds for run in runs)
    about_runs = [
        ("runs", str(len(runs))),
        ("diverged", f"{diverged} of {len(runs)}"),
        ("training time", f"{total:.1f} s ({total / 60:.1f} min)"),
    ]
    threads = _unique(run.threads for run in runs)
    if threads:
        about_runs.append(("threads", ", ".join(threads)))
    started = sorted(run.started for run in runs if run.started)
    if started:
        about_runs += [("first started", started[0]), ("last started", started[-1])]
    data = [
        (key, "; ".join(_unique(run.data.get(key) for run in runs)))
        for key in dict.fromkeys(key for run in runs for key in run.data)
    ]
    software = [
        (key, "; ".join(_unique(run.versions.get(key) for run in runs)))
        for key in dict.fromkeys(key for run in runs for key in run.versions)
    ]
    tables = [
        _key_values("varies across runs", varies),
        _key_values("same in every run", fixed),
        _key_values("runs", about_runs),
    ]
    if data:
        tables.append(_key_values("data", data))
    if software:
        tables.append(_key_values("software", software))
    return f'<div class="config-grid">{"".join(tables)}</div>'


def _summary_section(sweep: Sweep) -> str:
    head = "".join(_cell(h, "num" if i else "", "th") for i, h in enumerate(SUMMARY_HEADERS))
    body = []
    for row in summary_rows(sweep):
        cells = "".join(_cell(v, "num" if i else "") for i, v in enumerate(row.cells))
        body.append(f'<tr class="diverged">{cells}</tr>' if row.diverged else f"<tr>{cells}</tr>")
    return (
        f'<div class="scroll"><table class="summary"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
        '<p class="muted">val acc: final validation accuracy (eval mode), mean ± std over '
        "seeds. train acc: the whole training set in eval mode after the last epoch. gap: "
        "train acc minus val acc in percentage points. train/eval agree: how often the "
        "prediction with batch statistics (training-mode batch norm, batches of the training "
        "batch size, up to 1024 validation samples) equals the eval-mode prediction; — for "
        "models without running statistics, which behave the same in both modes. Rows with "
        "diverged runs are shaded; their accuracy counts in the means.</p>"
    )


def _claim_lines(claim: Claim) -> str:
    """Who makes the claim, and in which words (its own, or paraphrased)."""
    lines = f'<div class="source">source: {escape(claim.source)}</div>'
    if claim.quote:
        words = f"says: “{claim.quote}”" if claim.verbatim else f"says, paraphrased: {claim.quote}"
        lines += f'<div class="source">{escape(words)}</div>'
    return lines


def _verdict_section(findings: Sequence[Finding]) -> str:
    if not findings:
        return (
            '<p class="muted">This sweep covers none of the claims (they compare none, bn, '
            "bn-scalar and ln, some across batch sizes).</p>"
        )
    headers = ("claim", "comparison", "estimate pp", "95% interval", "n", "verdict", "evidence")
    numeric = {2, 3, 4}
    head = "".join(_cell(h, "num" if i in numeric else "", "th") for i, h in enumerate(headers))
    groups: list[list[Finding]] = []
    for found in findings:
        same = groups and (groups[-1][0].test.id, groups[-1][0].test.experiment) == (
            found.test.id,
            found.test.experiment,
        )
        if same:
            groups[-1].append(found)
        else:
            groups.append([found])
    body = []
    for group in groups:
        test = group[0].test
        claim = escape(test.claim.statement)
        if test.experiment:
            claim += f" <em>[{escape(test.experiment)}]</em>"
        claim_cell = (
            f'<td class="claim" rowspan="{len(group)}">{claim}'
            + _claim_lines(test.claim)
            + f'<div class="source">predicts: estimate {escape(prediction(test, " pp"))}</div></td>'
        )
        for index, found in enumerate(group):
            css = OUTCOME_CLASSES.get(found.verdict, "")
            body.append(
                "<tr>"
                + (claim_cell if index == 0 else "")
                + _cell(found.test.comparison, "comparison")
                + _cell(f"{found.estimate:+.2f}", "num")
                + _cell(format_interval(found.low, found.high), "num")
                + _cell(", ".join(str(n) for n in found.n), "num")
                + f'<td><span class="badge {css}">{escape(outcome(found))}</span></td>'
                + _cell(evidence(found), "evidence")
                + "</tr>"
            )
    return (
        f"<p>{escape(HOW_TO_READ)}</p>"
        f'<div class="scroll"><table class="verdicts"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _runs_section(runs: Sequence[Run]) -> str:
    headers = ("run_id", "norm", "batch size", "seed", "status", "val acc %", "seconds")
    rows = [
        (
            run.run_id,
            run.series,
            run.batch_size,
            run.seed,
            run.status if not run.diverged else f"diverged (epoch {run.diverged_epoch})",
            f"{100 * run.val_acc:.2f}",
            f"{run.seconds:.1f}",
        )
        for run in sorted(runs, key=lambda r: (r.series, r.batch_size, r.seed))
    ]
    return (
        f"<details><summary>every run ({len(runs)})</summary>"
        f"{_table(headers, rows, numeric=(2, 3, 5, 6))}</details>"
    )


def _figure(png: bytes, alt: str, caption: str) -> str:
    return (
        f'<figure><img src="{data_uri(png)}" alt="{escape(alt)}">'
        f"<figcaption>{escape(caption)}</figcaption></figure>"
    )


def report_html(
    sweep: Sweep,
    findings: Sequence[Finding],
    curves_png: bytes,
    batch_size_png: bytes | None,
) -> str:
    """The whole report page as one HTML5 string."""
    title = f"normlab report: {sweep.title()}"
    diverged = sum(run.diverged for run in sweep.runs)
    lead = (
        f"{len(sweep.runs)} runs: {len(sweep.norms)} norms {TIMES} {len(sweep.batch_sizes)} "
        f"batch sizes {TIMES} {len({run.seed for run in sweep.runs})} seeds"
        + (f" {TIMES} {len(sweep.experiments)} experiments" if len(sweep.experiments) > 1 else "")
        + f"; {diverged} diverged."
    )
    parts = [
        "<!doctype html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title>",
        f"<style>{STYLE}</style>",
        "</head>",
        "<body>",
        f"<h1>{escape(title)}</h1>",
        f'<p class="lead">{escape(lead)}</p>',
        "<h2>Configuration</h2>",
        _config_section(sweep),
        "<h2>Summary</h2>",
        _summary_section(sweep),
        "<h2>Accuracy curves</h2>",
        _figure(
            curves_png,
            f"training and validation accuracy per norm, {sweep.title()}",
            "Training accuracy is the mean over each epoch's batches in training mode; "
            "validation accuracy is measured in eval mode after each epoch. Lines are means "
            "over seeds, bands span min to max; x marks where a diverged run stopped.",
        ),
    ]
    if batch_size_png is not None:
        parts += [
            "<h2>Accuracy against batch size</h2>",
            _figure(
                batch_size_png,
                f"final validation accuracy against batch size, {sweep.title()}",
                "Final validation accuracy, mean ± std over seeds; x marks diverged runs. "
                "Epochs are fixed, so smaller batches take more optimizer steps.",
            ),
        ]
    parts += [
        "<h2>Claims</h2>",
        _verdict_section(findings),
        "<h2>Runs</h2>",
        _runs_section(sweep.runs),
        "</body>",
        "</html>",
    ]
    return "\n".join(parts) + "\n"
