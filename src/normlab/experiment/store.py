"""The results store: ``results.jsonl``, one JSON object per finished run.

Each record is appended with a single ``write`` on a file opened with
O_APPEND and then fsync'ed, so a record is either wholly there or, if the
process died mid-write, a partial last line. A last line that parses as a
whole record lost only its newline: it is a finished run, kept, and the
newline is restored before anything is appended. Any other tail was never a
finished run; ``ResultsStore.repair`` cuts it off (and says so). A malformed
line anywhere else is an error naming the file and line: it is somebody's
finished result and is never dropped silently. normlab writes each run once,
so a run_id on two lines (a line copied in by hand, or two files joined) is
an error naming the file and both lines too: which record is the run is the
user's choice, never the reader's.

One process writes to a directory at a time: ``ResultsStore.lock`` takes an
exclusive ``flock`` on ``directory/.normlab.lock`` and writes who holds it
there (pid, host, start time), so a second sweep on the same directory is
refused before it trains anything. A sweep takes it once, at its entry
(normlab.lab's compare, the claims study, or run_sweep for its own callers),
and the layers below run under it: asking again while it is held, on any
store object, is refused like a second sweep.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import socket
import warnings
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from normlab import paths

RESULTS_FILE = "results.jsonl"
LOCK_FILE = ".normlab.lock"


class ResultsError(ValueError):
    """results.jsonl holds a line that is not a run record, or its directory cannot be used."""


class StoreBusyError(ResultsError):
    """Another process (or another store object in this one) is writing to the directory."""


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


def _problem(line: bytes) -> str | None:
    """Why ``line`` (without its newline) is not a run record, or None when it is one."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as error:
        return f"is not UTF-8 text (byte 0x{line[error.start]:02x} at column {error.start + 1})"
    try:
        record = json.loads(text)
    except json.JSONDecodeError as error:
        return f"is not valid JSON ({error.msg})"
    if not isinstance(record, dict) or "run_id" not in record or "config" not in record:
        return "is not a run record (no run_id/config)"
    return None


def _field_problem(record: dict[str, Any]) -> str | None:
    """Why a parsed record's run_id or config cannot identify a run, or None."""
    if not isinstance(record["run_id"], str) or not record["run_id"]:
        return f"has run_id {record['run_id']!r}; a run_id is a non-empty string"
    if not isinstance(record["config"], dict):
        return f"has config {record['config']!r}; a config is an object of fields"
    return None


def _refuse_duplicates(path: Path, records: list[tuple[int, dict[str, Any]]]) -> None:
    """Raise naming every run_id that is on more than one line, with those lines."""
    lines: dict[str, list[int]] = {}
    for number, record in records:
        lines.setdefault(record["run_id"], []).append(number)
    repeated = [(run_id, numbers) for run_id, numbers in lines.items() if len(numbers) > 1]
    if not repeated:
        return
    shown = "; ".join(
        f"lines {', '.join(map(str, numbers[:-1]))} and {numbers[-1]} hold run {run_id!r}"
        for run_id, numbers in repeated[:5]
    )
    more = f" (and {len(repeated) - 5} more runs)" if len(repeated) > 5 else ""
    raise ResultsError(
        f"{path} {shown}{more}. normlab records each run once, so all but one of those "
        "lines were added by hand or joined from another file, and which one holds the run is "
        "not normlab's to guess: delete the lines you do not mean to keep, then run again."
    )


def _whole_record(tail: bytes) -> bool:
    """Whether ``tail`` (a last line without its newline) is a complete run record."""
    return bool(tail.strip()) and _problem(tail) is None


def numbered_records(directory: str | os.PathLike) -> list[tuple[int, dict[str, Any]]]:
    """Every record in ``directory/results.jsonl`` with its line number (from 1), in order.

    A last line without its newline is a record when it parses as one (a
    write that lost only its newline) and is skipped otherwise (an
    interrupted write). A missing file gives an empty list.

    Raises:
        ResultsError: a complete line that is not UTF-8, not JSON, or not an
            object with a string run_id and an object config, or a run_id on two
            lines; the message names the file and the lines.
    """
    path = results_path(directory)
    if not path.exists():
        return []
    if not path.is_file():
        raise ResultsError(f"{path} is not a file; move it away, then run again.")
    lines = path.read_bytes().split(b"\n")
    tail = lines.pop()  # b"" after a final newline
    if _whole_record(tail):
        lines.append(tail)
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        problem = _problem(line)
        if problem is None:
            problem = _field_problem(json.loads(line))
        if problem is not None:
            raise ResultsError(
                f"{path} line {number} {problem}; it is not a finished run's record. Fix or "
                "delete that line, then run again."
            )
        records.append((number, json.loads(line)))
    _refuse_duplicates(path, records)
    return records


def read_results(directory: str | os.PathLike) -> list[dict[str, Any]]:
    """Every record in ``directory/results.jsonl``, in the order they were written
    (see :func:`numbered_records`)."""
    return [record for _, record in numbered_records(directory)]


def check_output_file(path: str | os.PathLike) -> None:
    """Fail unless a file can be written at ``path`` (see normlab.paths.check_output_file).

    Raises:
        ResultsError: ``path`` is a directory, or its directory cannot be created or written.
    """
    try:
        paths.check_output_file(path)
    except paths.PathError as error:
        raise ResultsError(str(error)) from None


def check_output_directory(
    directory: str | os.PathLike, *, files: Iterable[str] = (), directories: Iterable[str] = ()
) -> None:
    """Fail unless ``directory`` can hold a results store and the named outputs in it.

    Changes nothing on disk: call it before any work starts. ``files`` and
    ``directories`` are names inside ``directory`` that will be written
    (``results.jsonl`` is always checked); see normlab.paths.check_output_directory.

    Raises:
        ResultsError: ``directory`` names a ``.jsonl`` file, is a file, lies
            under a file, cannot be written, or one of the outputs in it has
            the wrong type (a directory where a file goes, or the reverse).
    """
    path = Path(directory)
    if path.suffix == ".jsonl":
        raise ResultsError(
            f"{path} names a .jsonl file, but the results store is a directory: pass the "
            f"directory ({path.with_suffix('')}); its results go to DIRECTORY/{RESULTS_FILE}."
        )
    try:
        paths.check_output_directory(path, files=(RESULTS_FILE, *files), directories=directories)
    except paths.PathError as error:
        raise ResultsError(str(error)) from None


def _holder_text(data: bytes) -> str:
    """Who holds a lock, from its file's contents: 'pid P on host H, started T'."""
    try:
        holder = json.loads(data.decode("utf-8"))
        return f"pid {holder['pid']} on host {holder['host']}, started {holder['started']}"
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
        return "another process"


class ResultsStore:
    """Append-only run records in ``directory/results.jsonl``.

    Raises:
        ResultsError: ``directory`` names a ``.jsonl`` file instead of a directory.
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        if self.directory.suffix == ".jsonl":
            check_output_directory(self.directory)  # raises, saying what to pass instead
        self.path = self.directory / RESULTS_FILE
        self.lock_path = self.directory / LOCK_FILE
        self._lock_descriptor: int | None = None

    def records(self) -> list[dict[str, Any]]:
        return read_results(self.directory)

    def finished_ids(self) -> set[str]:
        return {record["run_id"] for record in self.records()}

    @property
    def holds_lock(self) -> bool:
        """Whether this store object holds the directory's lock now (see :meth:`lock`)."""
        return self._lock_descriptor is not None

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the directory for writing: create it if needed and take an exclusive lock.

        Taken once per sweep: asking for it while it is held, by another process,
        another store object or this one, is refused. The lock file records who
        holds it; the lock ends with the block (or the process).

        Raises:
            StoreBusyError: another writer holds the directory; the message says who.
            ResultsError: the directory cannot be created or written.
        """
        check_output_directory(self.directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise ResultsError(
                f"cannot write to {self.directory} ({error.strerror}); use another directory."
            ) from None
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder_text(os.pread(descriptor, 4096, 0))
            os.close(descriptor)
            raise StoreBusyError(
                f"{self.directory} is in use by another sweep ({holder}); wait for it to "
                "finish, or stop it, or use another output directory."
            ) from None
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, json.dumps(holder).encode("utf-8") + b"\n", 0)
        self._lock_descriptor = descriptor
        try:
            yield
        finally:
            self._lock_descriptor = None
            os.ftruncate(descriptor, 0)  # nobody holds it now
            os.close(descriptor)  # releases the flock

    def repair(self) -> str | None:
        """Make the file end with a newline after its last whole record.

        A last line that is a whole record gets its newline back; any other
        tail (a write interrupted mid-line) is cut off.

        Returns:
            The text that was removed, or None when nothing was.
        """
        if not self.path.is_file():
            return None
        with self._opened() as descriptor:
            return self._mend_tail(descriptor)

    def append(self, record: dict[str, Any]) -> None:
        """Write ``record`` as one line, atomically with respect to other records.

        A whole last record without its newline gets it back first; a partial
        tail is cut off with a warning (see :meth:`repair`).
        """
        line = json.dumps(_finite(record), allow_nan=False, separators=(",", ":")) + "\n"
        self.directory.mkdir(parents=True, exist_ok=True)
        with self._opened() as descriptor:
            dropped = self._mend_tail(descriptor)
            os.write(descriptor, line.encode("utf-8"))
            os.fsync(descriptor)
        if dropped is not None:
            warnings.warn(
                f"removed an unfinished record at the end of {self.path} (a write interrupted "
                f"mid-line, {len(dropped)} characters) before appending",
                stacklevel=2,
            )

    @contextlib.contextmanager
    def _opened(self) -> Iterator[int]:
        """results.jsonl opened for appending, under an exclusive flock of its own, so
        appenders never see each other's half-written lines."""
        descriptor = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            yield descriptor
        finally:
            os.close(descriptor)

    def _mend_tail(self, descriptor: int) -> str | None:
        """Restore a whole last record's newline or cut a partial tail; the cut text or None."""
        size = os.fstat(descriptor).st_size
        if size == 0 or os.pread(descriptor, 1, size - 1) == b"\n":
            return None
        data = os.pread(descriptor, size, 0)
        keep = data.rfind(b"\n") + 1
        if _whole_record(data[keep:]):
            os.write(descriptor, b"\n")
            os.fsync(descriptor)
            return None
        os.ftruncate(descriptor, keep)
        os.fsync(descriptor)
        return data[keep:].decode("utf-8", errors="replace")
