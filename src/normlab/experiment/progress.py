"""rich progress bars for a sweep: one for the sweep, one per run in flight."""

from __future__ import annotations

from types import TracebackType
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from normlab.experiment.config import RunConfig
from normlab.experiment.executors.contract import SweepListener
from normlab.experiment.train import EpochMetrics


class SweepProgress(SweepListener):
    """Draws the sweep's bar and each running run's epoch bar.

    Each finished run also prints one line (norm, batch size, seed, final
    validation accuracy, seconds), so a log or a terminal that is not
    interactive still shows the sweep's course.
    """

    def __init__(self, console: Console, total: int, already_done: int = 0) -> None:
        self.console = console
        self.total = total
        self.done = already_done
        self.progress = Progress(
            TextColumn("{task.description:<28}"),
            BarColumn(bar_width=30),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]:<16}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
        )
        self.sweep = self.progress.add_task("sweep (runs)", total=total, status="")
        self.progress.update(self.sweep, completed=already_done)
        self.runs: dict[str, TaskID] = {}

    def __enter__(self) -> SweepProgress:
        self.progress.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.progress.stop()

    def run_started(self, config: RunConfig) -> None:
        self.runs[config.run_id] = self.progress.add_task(
            f"  {config.label}", total=config.epochs, status=""
        )

    def epoch_done(self, config: RunConfig, metrics: EpochMetrics) -> None:
        task = self.runs.get(config.run_id)
        if task is not None:
            self.progress.update(
                task, completed=metrics.epoch, status=f"val acc {metrics.val_acc:6.2%}"
            )

    def _end(self, config: RunConfig, line: str) -> None:
        task = self.runs.pop(config.run_id, None)
        if task is not None:
            self.progress.remove_task(task)
        self.done += 1
        self.progress.update(self.sweep, completed=self.done)
        self.progress.console.print(f"[{self.done}/{self.total}] {config.label}: {line}")

    def run_done(self, config: RunConfig, record: dict[str, Any]) -> None:
        final = record["final"]
        status = (
            ""
            if record["status"] == "finished"
            else (f" [red]diverged at epoch {final['diverged_epoch']}[/red]")
        )
        self._end(config, f"val acc {final['val_acc']:.2%} in {record['seconds']:.1f} s{status}")

    def run_failed(self, config: RunConfig, error: str) -> None:
        self._end(config, f"[red]failed: {escape(error)}[/red]")
