"""The ``normlab`` command's entry point, kept outside the normlab package on purpose.

Importing normlab (and torch with it) takes a second or more; a Ctrl-C in that
window would end in a KeyboardInterrupt traceback, before normlab's own handler
exists. This module imports nothing heavy itself, so it can catch that interrupt
and end as every other Ctrl-C of normlab does: exit status 130 and a line that
says what happened and what to do.

The command is the lab: without the lab extra's packages (``pip install
normlab`` alone) it exits 1 with one line that names the extra, before
importing anything of normlab's.
"""

from __future__ import annotations

import re
import sys

from normlab_extras import lab_extra_message, missing_lab_packages

INTERRUPTED_WHILE_STARTING = (
    "normlab: interrupted while starting, before anything was run or written; "
    "run the same command again."
)


def main() -> int:
    """Import the command line and run it; a Ctrl-C during the import exits 130, a missing
    lab extra exits 1."""
    try:
        missing = missing_lab_packages()
        if missing:
            print(lab_extra_message(_command(sys.argv[1:]), missing), file=sys.stderr)
            return 1
        from normlab.cli import main as run_command_line
    except KeyboardInterrupt:
        print(INTERRUPTED_WHILE_STARTING, file=sys.stderr)
        return 130
    return run_command_line()


def _command(args: list[str]) -> str:
    """``normlab compare`` for ``compare --seeds 3``; ``normlab`` for ``--help`` or nothing."""
    if args and re.fullmatch(r"[a-z][a-z-]*", args[0]):
        return f"normlab {args[0]}"
    return "normlab"


if __name__ == "__main__":
    sys.exit(main())
