"""The results store: ``results.jsonl``, one JSON object per finished run.

Each record is appended with a single ``write`` on a file opened with
O_APPEND and then fsync'ed, so a record is either wholly there or, if the
process died mid-write, a partial last line without its newline. Such a tail
was never a finished run; ``ResultsStore.repair`` cuts it off (and says so)
before anything new is appended. A malformed line anywhere else is an error:
it is somebody's finished result and is never dropped silently.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

RESULTS_FILE = "results.jsonl"


class ResultsError(ValueError):
    """results.jsonl holds a line that is not a run record."""


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (strict JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def results_path(directory: str | os.PathLike) -> Path:
    """``directory/results.jsonl``; a path that already names the file is returned as is."""
    path = Path(directory)
    return path if path.suffix == ".jsonl" else path / RESULTS_FILE


def read_results(directory: str | os.PathLike) -> list[dict[str, Any]]:
    """Every record in ``directory/results.jsonl``, in the order they were written.

    A partial last line (an interrupted write) is skipped. A missing file
    gives an empty list.

    Raises:
        ResultsError: a complete line that is not a JSON object with a run_id;
            the message names the file and line.
    """
    path = results_path(directory)
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines[:-1], start=1):  # lines[-1] is "" or a partial tail
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ResultsError(
                f"{path} line {number} is not valid JSON ({error.msg}); "
                "fix or delete that line, then run again."
            ) from None
        if not isinstance(record, dict) or "run_id" not in record or "config" not in record:
            raise ResultsError(
                f"{path} line {number} is not a run record (no run_id/config); "
                "fix or delete that line, then run again."
            )
        records.append(record)
    return records


class ResultsStore:
    """Append-only run records in ``directory/results.jsonl``."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self.path = self.directory / RESULTS_FILE

    def records(self) -> list[dict[str, Any]]:
        return read_results(self.directory)

    def finished_ids(self) -> set[str]:
        return {record["run_id"] for record in self.records()}

    def repair(self) -> str | None:
        """Cut off a partial last line left by an interrupted write.

        Returns:
            The text that was removed, or None when the file was whole.
        """
        if not self.path.exists():
            return None
        data = self.path.read_bytes()
        if not data or data.endswith(b"\n"):
            return None
        keep = data.rfind(b"\n") + 1
        with open(self.path, "r+b") as file:
            file.truncate(keep)
            file.flush()
            os.fsync(file.fileno())
        return data[keep:].decode("utf-8", errors="replace")

    def append(self, record: dict[str, Any]) -> None:
        """Write ``record`` as one line, atomically with respect to other records."""
        line = json.dumps(_finite(record), allow_nan=False, separators=(",", ":")) + "\n"
        self.directory.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(descriptor, line.encode("utf-8"))
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
