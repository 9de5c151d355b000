"""``normlab inspect``: the normalization layers of a saved model and their statistics."""

from __future__ import annotations

import argparse

from normlab.cli.arguments import console
from normlab.paths import expand


def _inspect(args: argparse.Namespace) -> int:
    from normlab.checkpoints import describe

    out = console()
    header, table = describe(args.checkpoint)
    out.print(header)
    out.print(table)
    return 0


def add_inspect(commands: argparse._SubParsersAction) -> None:
    inspect = commands.add_parser(
        "inspect",
        help="print the normalization layers of a saved model and their statistics",
        description="Print the normalization layers of a checkpoint saved with torch.save "
        "(a state_dict, a dict holding one, or a whole module made of torch.nn and normlab "
        "layers) and their running statistics. Files are loaded with weights_only=True: "
        "nothing in them runs.",
    )
    inspect.add_argument("checkpoint", type=expand, help="a .pt file, e.g. OUT/models/<run_id>.pt")
    inspect.set_defaults(run=_inspect)
