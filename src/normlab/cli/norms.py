"""``normlab norms``: every registered normalization kind, applied to one batch."""

from __future__ import annotations

import argparse

from normlab.cli.arguments import batch_shape, console


def _norms(args: argparse.Namespace) -> int:
    from normlab.norms_table import norms_table

    console().print(norms_table(args.shape, args.seed))
    return 0


def add_norms(commands: argparse._SubParsersAction) -> None:
    norms = commands.add_parser(
        "norms", help="list every registered normalization kind, applied to one batch"
    )
    norms.add_argument(
        "--shape",
        type=batch_shape,
        default=(16, 8, 4, 4),
        help="batch shape N,C[,spatial...] (default 16,8,4,4)",
    )
    norms.add_argument("--seed", type=int, default=0, help="seed of the random batch")
    norms.set_defaults(run=_norms)
