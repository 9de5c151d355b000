"""Paths given to normlab: expanded as a shell would, and checked before any work starts.

Every path option of every command is read with :func:`expand` and every output
location is checked with :func:`check_output_directory` or :func:`check_output_file`
before anything trains, times or renders, so that a path that cannot be used is
refused in the first second, not after hours of work. The checks change nothing on
disk that stays: a directory that does not exist yet is not created.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path


class PathError(ValueError):
    """A path cannot be used for what it was given for; the message says why and what to do."""


def expand(text: str | os.PathLike) -> Path:
    """``text`` as a path, ``~`` and ``~user`` expanded as the shell would have (quoted or not)."""
    return Path(text).expanduser()


def _first_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _can_create_in(directory: Path) -> OSError | None:
    """Why no directory can be made in ``directory`` (None: one can), found by making one
    and removing it:
    permission bits do not tell (root passes them everywhere, yet cannot create files in
    /proc or /sys, nor on a read-only mount)."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".normlab-probe-", dir=directory))
    except OSError as error:
        return error
    return None


def check_writable_directory(path: str | os.PathLike) -> None:
    """Fail unless ``path`` is a directory that can be written, or can be created as one.

    Raises:
        PathError: ``path`` is a file, lies under a file, or its nearest existing
            directory cannot be written (permissions, a read-only or virtual file system).
    """
    path = Path(path)
    existing = _first_existing(path.absolute())
    if not existing.is_dir():
        where = "is a file" if existing == path.absolute() else f"lies under the file {existing}"
        raise PathError(f"{path} {where}; the output must be a directory. Use another path.")
    if not os.access(existing, os.W_OK | os.X_OK):
        reason: str | None = "permission denied"
    else:
        error = _can_create_in(existing)
        reason = None if error is None else error.strerror or str(error)
    if reason is not None:
        raise PathError(
            f"cannot write to {existing} ({reason}), so {path} cannot hold the output; "
            "use another directory."
        )


def check_output_directory(
    directory: str | os.PathLike, *, files: Iterable[str] = (), directories: Iterable[str] = ()
) -> None:
    """Fail unless ``directory`` can be written and the named outputs in it have the right
    type: ``files`` (names inside it) must not be directories, ``directories`` not files.

    Raises:
        PathError: see :func:`check_writable_directory`, or an output of the wrong type.
    """
    path = Path(directory)
    check_writable_directory(path)
    for name in files:
        if (path / name).is_dir():
            raise PathError(
                f"{path / name} is a directory, but normlab writes a file there; move it away."
            )
    for name in directories:
        if (path / name).exists() and not (path / name).is_dir():
            raise PathError(
                f"{path / name} is not a directory, but normlab writes files into it; move it away."
            )


def check_output_file(path: str | os.PathLike) -> None:
    """Fail unless a file can be written at ``path`` (its directory created if needed).

    Raises:
        PathError: ``path`` is a directory, or its directory cannot be created or written.
    """
    path = Path(path)
    if path.is_dir():
        raise PathError(f"{path} is a directory; name a file to write.")
    check_writable_directory(path.parent)


def check_input_directory(path: str | os.PathLike, what: str) -> None:
    """Fail unless ``path`` is an existing directory; ``what`` says what it should hold.

    Raises:
        PathError: ``path`` does not exist or is not a directory.
    """
    path = Path(path)
    if not path.exists():
        raise PathError(f"{path} does not exist; pass {what}.")
    if not path.is_dir():
        raise PathError(f"{path} is not a directory; pass {what}.")


def write_atomically(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file beside it and a rename, so that
    ``path`` holds either its old contents or all of ``data``, whenever the process dies."""
    path = Path(path)
    descriptor, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(descriptor)
    temporary = Path(name)
    try:
        temporary.write_bytes(data)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
