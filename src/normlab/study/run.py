"""``normlab study claims``: plan every experiment, train what is not finished yet on the
lab's executors, and write the markdown report with its figures.

The runs' records go to ``OUT/results.jsonl`` (resumable like ``normlab compare``); the
report (``claims.md``, the PNG figures) to the report directory, all files at once and
never over a file normlab did not write there (normlab.report.publish). ``OUT/study.json``
accumulates the wall time of every invocation that trained or rendered. Both folders,
every record and study.json are checked before any data loads or any run trains.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console

import normlab
from normlab.data import load_dataset
from normlab.experiment import ResultsStore, check_runs, run_sweep
from normlab.experiment.config import RunConfig
from normlab.experiment.executors.contract import SweepOutcome, available_cores
from normlab.experiment.progress import SweepProgress
from normlab.experiment.store import check_output_directory
from normlab.models import MODELS, build_model
from normlab.paths import check_input_directory, write_atomically
from normlab.report.publish import check_replaceable, publish
from normlab.report.runs import check_records
from normlab.study import figures
from normlab.study.claims import sections
from normlab.study.findings import Runs, adjust
from normlab.study.plan import BUDGETS, Budget, all_runs, plan
from normlab.study.report import render

REPORT_FILE = "claims.md"
STATE_FILE = "study.json"
COMMAND = "normlab study claims"
OPTIONAL_MODELS = ("transformer", "resnet20")


@dataclass(frozen=True)
class StudyResult:
    """What one invocation did: the report's path, the runs planned and finished, and the
    sweep's outcome (failures, interruption)."""

    report: Path | None
    planned: int
    finished: int
    outcome: SweepOutcome


def _cost(run: RunConfig) -> float:
    """A rough relative cost, so that the longest runs start first and the pool ends even."""
    samples = run.train_subset or 60000
    steps = run.steps or run.epochs * math.ceil(samples / run.batch_size)
    factor = {"mlp": 1.0, "rnn": 4.0, "cnn": 4.0, "transformer": 8.0, "resnet20": 30.0}
    width = len(run.model_options.get("hidden", (0, 0)))
    return steps * factor.get(run.model, 4.0) * max(1.0, width / 2)


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
            "time of earlier invocations: delete it (the report's wall time then counts from "
            "this run) and run again."
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
    check_replaceable(report_dir, (REPORT_FILE, *figures.FILES))
    _wall_so_far(out)
    check_records(out, COMMAND)
    check_input_directory(data_dir, "the directory holding the MNIST IDX files (--data-dir)")


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
    """Train every run the claims study needs that ``out`` does not hold yet, then write
    the report into ``report_dir``. Interrupted or failed runs leave the report unwritten;
    the same call again resumes.

    Raises:
        ValueError: ``out`` or ``report_dir`` cannot be used, or a record or the state in
            ``out`` cannot be read (see :func:`check_study_paths`), before any work.
    """
    clock = time.perf_counter()
    console = console or Console()
    budget = BUDGETS[budget] if isinstance(budget, str) else budget
    out, report_dir = Path(out), Path(report_dir)
    check_study_paths(data_dir, out, report_dir)
    available = [model for model in OPTIONAL_MODELS if model in MODELS]
    dropout = "dropout" in inspect.signature(build_model).parameters
    experiments = plan(budget, models=("mlp", "cnn", "rnn", *available), dropout=dropout)
    runs = sorted(all_runs(experiments), key=_cost, reverse=True)
    data = load_dataset("mnist", data_dir)
    check_runs(runs, data)
    store = ResultsStore(out)
    with store.lock():  # one writer per directory: a second study on this --out is refused
        store.repair()
        done = store.finished_ids()
        already = sum(run.run_id in done for run in runs)
        console.print(
            f"claims study, budget {budget.name}: {len(runs)} runs in {len(experiments)} "
            f"experiments ({already} already in {store.path})"
        )
        if executor == "processes":
            jobs = max(1, min(jobs or available_cores(), max(1, len(runs) - already)))
            threads = threads or max(1, available_cores() // jobs)
        with SweepProgress(console, total=len(runs), already_done=already) as progress:
            outcome = run_sweep(
                runs,
                store,
                data_dir=data_dir,
                jobs=jobs,
                threads=threads or 1,
                listener=progress,
                executor=executor,
                address=address,
            )
    finished = len(store.finished_ids() & {run.run_id for run in runs})
    if outcome.interrupted or finished < len(runs):
        _wall(out, time.perf_counter() - clock)
        return StudyResult(None, len(runs), finished, outcome)
    records = check_records(out, COMMAND)
    lookup = Runs(experiments, records)
    tested = adjust_sections(sections(lookup, budget))
    batch_ids = {run.run_id for run in experiments["batch"]}
    planned_ids = {run.run_id for run in runs}
    wall = _wall(out, time.perf_counter() - clock)
    text = render(
        tested,
        budget,
        command,
        [r for r in records if r["run_id"] in planned_ids],
        [r for r in records if r["run_id"] in batch_ids],
        wall,
        [f"the {model} model" for model in OPTIONAL_MODELS if model not in MODELS]
        + ([] if dropout else ["the models' dropout option"]),
        {
            "torch": torch.__version__,
            "normlab": normlab.__version__,
            "cores": str(available_cores()),
        },
    )

    def draw(staging: Path) -> None:
        figures.write_all(lookup, budget, staging)
        (staging / REPORT_FILE).write_text(text, encoding="utf-8")

    publish(report_dir, draw)
    return StudyResult(report_dir / REPORT_FILE, len(runs), finished, outcome)


def adjust_sections(found: Sequence) -> list:
    """Every section with its tests Holm-adjusted across the whole study."""
    from dataclasses import replace

    tests = adjust([t for s in found for t in s.tests])
    out, i = [], 0
    for section in found:
        n = len(section.tests)
        out.append(replace(section, tests=tuple(tests[i : i + n])))
        i += n
    return out
