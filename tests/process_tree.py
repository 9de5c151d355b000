"""Which processes a test's sweep started are still there, read from Linux's /proc (tests that
kill a sweep, a worker or a rank check that none outlives what should end it)."""

from __future__ import annotations

import os
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


def spawned_children(*, running: bool = False) -> list[int]:
    """This process's children started by multiprocessing's spawn (pool workers, ranks),
    sorted; with ``running``, only those not yet exited (zombies left out)."""
    me = os.getpid()
    found = []
    for pid in Path(f"/proc/{me}/task/{me}/children").read_text().split():
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, IndexError):
            continue
        if b"spawn_main" in command and not (running and state == "Z"):
            found.append(int(pid))
    return sorted(found)
