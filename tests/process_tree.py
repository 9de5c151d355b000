"""Which processes of a session are still running, read from Linux's /proc (tests that kill
a sweep check that none of its workers or ranks outlive it)."""

from __future__ import annotations

from pathlib import Path


def alive_in_session(session: int) -> list[int]:
    """Processes of ``session`` still running (not zombies): a sweep started in a session of
    its own passes it to its workers, ranks and multiprocessing's helpers."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == session and fields[0] != "Z":
            found.append(int(entry.name))
    return found
