"""A rich Console that keeps what normlab.lab.compare prints, for the tests to read."""

from __future__ import annotations

import io

from rich.console import Console


def recording_console() -> Console:
    """A Console that prints into memory, its lines never wrapped: read it with printed()."""
    return Console(file=io.StringIO(), width=400, soft_wrap=True)


def printed(console: Console) -> str:
    """Everything ``console`` (a recording_console) has printed so far."""
    return console.file.getvalue()
