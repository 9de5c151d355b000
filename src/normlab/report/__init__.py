"""The report: plots, tables, claim verdicts and an HTML page, rendered from results.jsonl only;
and the one claims engine (claims declared as tests, evaluated into findings) it shares with
the claims study.

>>> from normlab.report import render_report
>>> files = render_report("runs/2026-11-23T12-00-00")  # doctest: +SKIP
"""

import normlab._lab_extra  # noqa: F401  (first: names the lab extra if it is missing)
from normlab.report.claims import Arm, Claim, ClaimTest
from normlab.report.compare_claims import CLAIMS, verdicts
from normlab.report.evaluation import Finding, Group, adjust, evaluate
from normlab.report.render import ReportFiles, render_report
from normlab.report.runs import RecordError, Sweep
from normlab.report.stats import Contrast, contrast
from normlab.report.tables import summary_table, verdicts_table

__all__ = [
    "CLAIMS",
    "Arm",
    "Claim",
    "ClaimTest",
    "Contrast",
    "Finding",
    "Group",
    "RecordError",
    "ReportFiles",
    "Sweep",
    "adjust",
    "contrast",
    "evaluate",
    "render_report",
    "summary_table",
    "verdicts",
    "verdicts_table",
]
