"""render_report: results.jsonl in, curves.png, batch_size.png and report.html out.

The report never trains: everything here is computed from the records that
``normlab compare`` wrote.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from normlab.experiment.store import results_path
from normlab.paths import check_output_directory, write_atomically
from normlab.report.compare_claims import verdicts
from normlab.report.html import report_html
from normlab.report.plots import batch_size_png, curves_png
from normlab.report.runs import Sweep, check_records

HTML_FILE = "report.html"
CURVES_FILE = "curves.png"
BATCH_SIZE_FILE = "batch_size.png"


@dataclass(frozen=True)
class ReportFiles:
    """The files render_report wrote; ``batch_size`` is None when it was not drawn."""

    html: Path
    curves: Path
    batch_size: Path | None


def render_report(directory: str | os.PathLike) -> ReportFiles:
    """Render the report of the runs in ``directory/results.jsonl`` into ``directory``.

    Writes curves.png, batch_size.png (only with two or more batch sizes; a
    stale one from an earlier render is removed otherwise) and report.html,
    which inlines both images.

    Raises:
        ValueError: there are no records (no file, or an empty one).
        normlab.experiment.store.ResultsError: a line is not a run record, or a
            record lacks a field the report needs (see check_records).
        normlab.paths.PathError: ``directory`` cannot be written, or an output there is a
            directory.
    """
    path = results_path(directory)
    out = path.parent
    records = check_records(path)
    if not records:
        raise ValueError(f"no finished runs in {path}; run normlab compare --out {out} first.")
    check_output_directory(out, files=(HTML_FILE, CURVES_FILE, BATCH_SIZE_FILE))
    sweep = Sweep.from_records(records)
    curves = curves_png(sweep)
    batch_size = batch_size_png(sweep)
    page = report_html(sweep, verdicts(sweep), curves, batch_size)

    files = ReportFiles(
        html=out / HTML_FILE,
        curves=out / CURVES_FILE,
        batch_size=out / BATCH_SIZE_FILE if batch_size is not None else None,
    )
    write_atomically(files.curves, curves)
    if batch_size is not None:
        write_atomically(out / BATCH_SIZE_FILE, batch_size)
    else:
        (out / BATCH_SIZE_FILE).unlink(missing_ok=True)
    write_atomically(files.html, page.encode("utf-8"))
    return files
