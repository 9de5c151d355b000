"""Writing a report's files into a folder the user named: all of them or none, and never
over a file normlab did not write.

The files are drawn into a staging folder inside the target first and moved in only
when every one is there, so that a failure while drawing leaves the previous report
whole. The folder keeps a list of the files normlab wrote there (:data:`MANIFEST`); a
file of the same name that is not on it is the user's, and is refused, not replaced.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from normlab import paths

MANIFEST = ".normlab-files.json"
"""The list of files normlab wrote into a report folder, kept in that folder."""


def written_by_normlab(directory: Path) -> set[str]:
    """The names of the files normlab wrote into ``directory`` (none without a manifest).

    Raises:
        normlab.paths.PathError: the manifest cannot be read; the message says what to do.
    """
    path = directory / MANIFEST
    if not path.is_file():
        return set()
    try:
        names = json.loads(path.read_text(encoding="utf-8"))["files"]
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            raise TypeError("files is not a list of names")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
        raise paths.PathError(
            f"{path} cannot be read ({error}): it lists the files normlab wrote into "
            f"{directory}. Delete it and move away the files you mean to keep, then run again."
        ) from None
    return set(names)


def check_replaceable(directory: str | os.PathLike, names: Iterable[str]) -> None:
    """Fail unless each of ``names`` can be written into ``directory``: the folder can be
    written, and every one of them that exists there was written by normlab.

    Raises:
        normlab.paths.PathError: the folder cannot hold the files, or holds a file of one
            of those names that normlab did not write (named, with what to do).
    """
    directory = Path(directory)
    names = list(names)
    paths.check_output_directory(directory, files=names)
    if not directory.is_dir():
        return
    ours = written_by_normlab(directory)
    theirs = [name for name in names if (directory / name).exists() and name not in ours]
    if theirs:
        listed = ", ".join(str(directory / name) for name in theirs)
        raise paths.PathError(
            f"{listed}: normlab would write over {'it' if len(theirs) == 1 else 'them'}, but "
            f"did not write {'it' if len(theirs) == 1 else 'them'} ({directory / MANIFEST} lists "
            "what it wrote there). Move them away, or name another report folder."
        )


def publish(directory: str | os.PathLike, draw: Callable[[Path], None]) -> list[Path]:
    """Call ``draw(staging)`` to write the report's files into an empty staging folder,
    then move every file it wrote into ``directory`` (created if needed) and list them in
    the manifest. If ``draw`` fails, ``directory`` is left as it was.

    Returns:
        The files written, in ``directory``.

    Raises:
        normlab.paths.PathError: see :func:`check_replaceable`, checked again once the
            files are drawn (the folder may have changed while they were).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".normlab-staging-", dir=directory))
    try:
        draw(staging)
        names = sorted(path.name for path in staging.iterdir())
        check_replaceable(directory, names)
        listed = sorted(written_by_normlab(directory) | set(names))
        # The list first: a kill between the moves leaves files normlab may replace.
        paths.write_atomically(
            directory / MANIFEST, (json.dumps({"files": listed}, indent=1) + "\n").encode()
        )
        for name in names:
            os.replace(staging / name, directory / name)
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(staging)
    return [directory / name for name in names]
