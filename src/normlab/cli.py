"""normlab's command line: a thin layer over the Python API."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch
from rich.console import Console
from rich.table import Table

from normlab.registry import KINDS, make_norm


def norms_table(batch_shape: tuple[int, ...] = (16, 8, 4, 4), seed: int = 0) -> Table:
    """Apply every registered kind to one batch (mean 3, std 2) and tabulate the outputs.

    "train vs eval" is the largest difference between the train-mode and the
    eval-mode output on the same batch, after one training step.
    """
    generator = torch.Generator().manual_seed(seed)
    x = 3.0 + 2.0 * torch.randn(batch_shape, generator=generator)
    table = Table(
        title=f"Every registered kind on one batch of shape {tuple(batch_shape)}, mean 3, std 2"
    )
    for column in (
        "kind",
        "aliases",
        "module",
        "params",
        "train out mean ± std",
        "eval out mean ± std",
        "max |train - eval|",
    ):
        table.add_column(
            column, justify="left" if column in ("kind", "aliases", "module") else "right"
        )
    for kind in KINDS:
        module = make_norm(kind.name, batch_shape[1])
        with torch.no_grad():
            train_out = module.train()(x)
            eval_out = module.eval()(x)
        table.add_row(
            kind.name,
            ", ".join(kind.aliases),
            type(module).__name__,
            str(sum(p.numel() for p in module.parameters())),
            f"{train_out.mean():.3f} ± {train_out.std():.3f}",
            f"{eval_out.mean():.3f} ± {eval_out.std():.3f}",
            f"{(train_out - eval_out).abs().max():.3g}",
        )
    return table


def _norms(args: argparse.Namespace) -> int:
    shape = tuple(int(n) for n in args.shape.split(","))
    Console().print(norms_table(shape, args.seed))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="normlab", description="Normalization layers and a lab to compare them."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    norms = commands.add_parser(
        "norms", help="list every registered normalization kind, applied to one batch"
    )
    norms.add_argument(
        "--shape", default="16,8,4,4", help="batch shape N,C[,spatial...] (default 16,8,4,4)"
    )
    norms.add_argument("--seed", type=int, default=0)
    norms.set_defaults(run=_norms)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, TypeError) as error:
        print(f"normlab {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
