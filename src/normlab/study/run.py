"""``normlab study claims``: plan every experiment, train what is not finished yet on the
lab's executors, keep the records beside the report, and write the markdown report, its
JSON and its figures.

The runs' records go to ``OUT/results.jsonl`` (resumable like ``normlab compare``). After
every invocation the planned runs' records are also written, compressed and without the
machine's paths, to ``REPORT/records.jsonl.gz``: that file is committed with the report,
a later invocation on another machine or ``OUT`` starts from it, and
:func:`render_from_records` regenerates the report from it alone, identically. The
report's files are written all at once and never over a file normlab did not write there
(normlab.report.publish). ``OUT/study.json`` accumulates the wall time of every invocation
that trained. Both folders, every record and study.json are checked before any data
loads or any run trains.
"""

from __future__ import annotations

import gzip
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rich.console import Console

from normlab.data import load_dataset
from normlab.experiment import ResultsStore, check_runs
from normlab.experiment.executors.choose import executor_for
from normlab.experiment.executors.contract import SweepOutcome
from normlab.experiment.store import check_output_directory
from normlab.lab.runner import share_cores, train_runs
from normlab.paths import check_input_directory, write_atomically
from normlab.report.evaluation import adjust
from normlab.report.publish import check_replaceable, publish
from normlab.report.runs import check_records
from normlab.study import figures
from normlab.study.claims import sections
from normlab.study.cost import COST_FILE, read_cost
from normlab.study.findings import Runs
from normlab.study.plan import BUDGETS, Budget, all_runs, plan
from normlab.study.report import render, write_json

REPORT_FILE = "claims.md"
JSON_FILE = "claims.json"
RECORDS_FILE = "records.jsonl.gz"
STATE_FILE = "study.json"
COMMAND = "normlab study claims"
REPORT_FILES = (REPORT_FILE, JSON_FILE, RECORDS_FILE, COST_FILE, *figures.FILES)


@dataclass(frozen=True)
class StudyResult:
    """What one invocation did: the report's path, the runs planned and finished, and the
    sweep's outcome (failures, interruption)."""

    report: Path | None
    planned: int
    finished: int
    outcome: SweepOutcome


def _wall_so_far(out: Path) -> float:
    """The study's accumulated wall time in ``out/study.json`` (0 when there is none).

    Raises:
        ValueError: the file cannot be read as the study's state; the message names it
            and says what to do.
    """
    path = out / STATE_FILE
    if not path.exists():
        return 0.0
    try:
        seconds = json.loads(path.read_text(encoding="utf-8"))["wall_seconds"]
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise TypeError(f"wall_seconds is {seconds!r}, not a number of seconds")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"{path} cannot be read as the study's state ({error}). It holds only the wall "
            "time of earlier invocations: delete it (the wall time then counts from this "
            "run) and run again."
        ) from None
    return float(seconds)


def _wall(out: Path, seconds: float) -> float:
    """Add ``seconds`` to the study's accumulated wall time and return the total; the file
    is replaced whole, so a kill leaves the old total or the new one."""
    total = _wall_so_far(out) + seconds
    write_atomically(out / STATE_FILE, json.dumps({"wall_seconds": total}, indent=1).encode())
    return total


def check_study_paths(
    data_dir: str | os.PathLike, out: str | os.PathLike, report_dir: str | os.PathLike
) -> None:
    """Fail unless the study can write its records into ``out`` and its report into
    ``report_dir``, every record and the state already in ``out`` can be read, and
    ``data_dir`` is a directory. Changes nothing on disk.

    Raises:
        ValueError: naming the path (and line) and what to do.
    """
    out, report_dir = Path(out), Path(report_dir)
    check_output_directory(out, files=(STATE_FILE,))
    check_replaceable(report_dir, REPORT_FILES)
    _wall_so_far(out)
    check_records(out, COMMAND)
    check_input_directory(data_dir, "the directory holding the MNIST IDX files (`data_dir`)")


def portable(record: Mapping[str, Any]) -> dict[str, Any]:
    """``record`` without the machine it ran on: the data's source path becomes its name."""
    data = dict(record.get("data") or {})
    source = data.get("source")
    if isinstance(source, str) and os.path.isabs(source.split(" ")[-1].strip("()")):
        data["source"] = "mnist (IDX files)"
    return {**record, "data": data}


def read_committed(report_dir: Path) -> list[dict[str, Any]]:
    """The records committed beside the report, in order; none when there is no file."""
    path = report_dir / RECORDS_FILE
    if not path.is_file():
        return []
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def write_committed(report_dir: Path, records: Sequence[Mapping[str, Any]]) -> Path:
    """Write ``records`` (portable, one JSON line each, sorted by run id so that the file
    changes only where records do) to ``report_dir``'s records file, published like the
    report's other files."""
    ordered = sorted((portable(r) for r in records), key=lambda r: r["run_id"])
    text = "".join(json.dumps(r, sort_keys=True, separators=(",", ":")) + "\n" for r in ordered)

    def draw(staging: Path) -> None:
        with gzip.GzipFile(staging / RECORDS_FILE, mode="wb", mtime=0) as out:
            out.write(text.encode("utf-8"))

    publish(report_dir, draw)
    return report_dir / RECORDS_FILE


def run_study(
    data_dir: str,
    out: Path,
    report_dir: Path,
    *,
    budget: Budget | str = "full",
    jobs: int | None = None,
    threads: int | None = None,
    executor: str = "processes",
    address: str | None = None,
    command: str = "",
    console: Console | None = None,
) -> StudyResult:
    """Train every run the claims study needs that neither ``out`` nor the records committed
    in ``report_dir`` hold yet, in the plan's order (the primary experiments first), seeds
    stacked; keep the records in ``report_dir``; once every run has finished, write the
    report. The same call again resumes.

    Raises:
        ValueError: ``out`` or ``report_dir`` cannot be used, or a record or the state in
            ``out`` cannot be read (see :func:`check_study_paths`), before any work.
    """
    clock = time.perf_counter()
    console = console or Console()
    budget = BUDGETS[budget] if isinstance(budget, str) else budget
    out, report_dir = Path(out), Path(report_dir)
    check_study_paths(data_dir, out, report_dir)
    experiments = plan(budget)
    runs = all_runs(experiments)
    planned = {run.run_id for run in runs}
    data = load_dataset("mnist", data_dir)
    check_runs(runs, data)
    store = ResultsStore(out)
    workers = share_cores(
        [run for run in runs if run.run_id not in store.finished_ids()],
        executor=executor, jobs=jobs, threads=threads, stack_seeds=executor == "processes",
    )  # fmt: skip
    chosen = executor_for(
        executor,
        jobs=workers.jobs,
        threads=workers.threads,
        address=address,
        data_dir=data_dir,
        stack_seeds=executor == "processes",
    )
    with store.lock():  # one writer per directory: a second study on this --out is refused
        console.print(
            f"claims study, budget {budget.name}: {len(runs)} runs in "
            f"{len(experiments)} experiments"
        )
        outcome = train_runs(
            runs, store, data, chosen, console=console, known=read_committed(report_dir)
        )
        records = [r for r in check_records(out, COMMAND) if r["run_id"] in planned]
        write_committed(report_dir, records)
    _wall(out, time.perf_counter() - clock)
    finished = len({r["run_id"] for r in records})
    if outcome.interrupted or finished < len(runs):
        return StudyResult(None, len(runs), finished, outcome)
    path = render_from_records(report_dir, budget, command)
    return StudyResult(path, len(runs), finished, outcome)


def render_from_records(report_dir: Path, budget: Budget | str, command: str) -> Path:
    """Write ``claims.md``, ``claims.json`` and the figures into ``report_dir`` from the
    records committed there alone (the same records always give the same files). Runs the
    plan has that the records lack are reported as missing, never guessed."""
    budget = BUDGETS[budget] if isinstance(budget, str) else budget
    experiments = plan(budget)
    planned = {run.run_id for run in all_runs(experiments)}
    records = [r for r in read_committed(report_dir) if r["run_id"] in planned]
    lookup = Runs(experiments, records, {"cost": read_cost(report_dir)})
    tested = adjust_sections(sections(lookup, budget))
    text = render(tested, budget, command, lookup, len(planned))

    def draw(staging: Path) -> None:
        figures.write_all(lookup, budget, staging)
        (staging / REPORT_FILE).write_text(text, encoding="utf-8")
        write_json(staging / JSON_FILE, tested, budget, records)

    publish(report_dir, draw)
    return report_dir / REPORT_FILE


def adjust_sections(found: Sequence) -> list:
    """Every section with its tests Holm-adjusted across the whole study's primary tests."""
    tests = adjust([t for s in found for t in s.tests])
    out, i = [], 0
    for section in found:
        n = len(section.tests)
        out.append(replace(section, tests=tuple(tests[i : i + n])))
        i += n
    return out
