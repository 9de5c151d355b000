"""normlab's command line: one module per command, each turning its flags into a call of
the Python API and printing the result."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from normlab.cli.arguments import as_flags
from normlab.cli.bench import add_bench
from normlab.cli.compare import add_compare
from normlab.cli.inspect import add_inspect
from normlab.cli.models import add_models
from normlab.cli.norms import add_norms
from normlab.cli.report import add_report
from normlab.cli.study import add_study
from normlab.data import DataError
from normlab.experiment.executors.lifetime import is_interrupt, terminate_as_interrupt


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="normlab", description="Normalization layers and a lab to compare them."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    add_norms(commands)
    add_models(commands)
    add_compare(commands)
    add_report(commands)
    add_inspect(commands)
    add_bench(commands)
    add_study(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with terminate_as_interrupt():  # `timeout`, `kill` and container stops: as Ctrl-C
            return args.run(args)
    except (KeyboardInterrupt, RuntimeError) as error:
        if not is_interrupt(error):
            raise
        print(f"normlab {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, DataError) as error:  # a usage error; anything else is a bug: traceback
        message = as_flags(str(error), list(vars(args)))
        print(f"normlab {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
