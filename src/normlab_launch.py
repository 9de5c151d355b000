"""The ``normlab`` command's entry point, kept outside the normlab package on purpose.

Importing normlab (and torch with it) takes a second or more; a Ctrl-C in that
window would end in a KeyboardInterrupt traceback, before normlab's own handler
exists. This module imports nothing heavy itself, so it can catch that interrupt
and end as every other Ctrl-C of normlab does: exit status 130 and a line that
says what happened and what to do.
"""

from __future__ import annotations

import sys

INTERRUPTED_WHILE_STARTING = (
    "normlab: interrupted while starting, before anything was run or written; "
    "run the same command again."
)


def main() -> int:
    """Import the command line and run it; a Ctrl-C during the import exits 130."""
    try:
        from normlab.cli import main as run_command_line
    except KeyboardInterrupt:
        print(INTERRUPTED_WHILE_STARTING, file=sys.stderr)
        return 130
    return run_command_line()


if __name__ == "__main__":
    sys.exit(main())
