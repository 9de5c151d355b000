"""``normlab report`` and the results every comparison ends with: the summary table, the
verdicts and the report's files."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path

from rich.console import Console

from normlab.cli.arguments import console
from normlab.paths import expand


def show_results(out: Console, directory: Path, files: Iterable[Path]) -> None:
    """Print the summary table and verdicts of ``directory``'s results, and ``files``."""
    # Imported here: matplotlib and scipy would otherwise load in every command and in
    # every worker process of a sweep (spawn re-imports the `normlab` script).
    from normlab.experiment import read_results
    from normlab.report import summary_table, verdicts, verdicts_table

    records = read_results(directory)
    out.print(summary_table(records))
    out.print(verdicts_table(verdicts(records)))
    for path in files:
        out.print(f"wrote {path}")


def _report(args: argparse.Namespace) -> int:
    from normlab.report import render_report

    if not args.directory.is_dir():
        raise ValueError(f"{args.directory} is not a directory; pass the --out of a compare run.")
    written = render_report(args.directory)  # raises a clear error when there are no records
    files = [p for p in (written.curves, written.batch_size, written.html) if p is not None]
    show_results(console(), args.directory, files)
    return 0


def add_report(commands: argparse._SubParsersAction) -> None:
    report = commands.add_parser(
        "report", help="re-render the table, plots and report.html of a compare run's results"
    )
    report.add_argument("directory", type=expand, help="the --out directory of a compare run")
    report.set_defaults(run=_report)
