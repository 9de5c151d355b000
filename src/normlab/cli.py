"""normlab's command line: a thin layer over the Python API."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch
from rich import box
from rich.console import Console
from rich.table import Table

from normlab.registry import KINDS, make_norm


def norms_table(batch_shape: Sequence[int] = (16, 8, 4, 4), seed: int = 0) -> Table:
    """Apply every registered kind to one batch (mean 3, std 2) and tabulate the outputs.

    Each module runs one training step, then eval mode, on the same batch;
    the last column is the largest difference between those two outputs. A
    kind that cannot take the batch (instance norm on (N, C)) gets a row
    saying why.
    """
    generator = torch.Generator().manual_seed(seed)
    x = 3.0 + 2.0 * torch.randn(tuple(batch_shape), generator=generator)
    table = Table(
        title=f"Each kind on a batch of shape {tuple(batch_shape)} (mean 3, std 2)",
        box=box.SIMPLE_HEAD,
    )
    notes = []
    table.add_column("kind")
    table.add_column("aliases")
    table.add_column("module")
    for column in ("params", "train mean/std", "eval mean/std", "max |train-eval|"):
        table.add_column(column, justify="right")
    for kind in KINDS:
        module = make_norm(kind.name, batch_shape[1])
        row = [kind.name, ", ".join(kind.aliases), type(module).__name__]
        row.append(str(sum(p.numel() for p in module.parameters())))
        try:
            with torch.no_grad():
                train_out = module.train()(x)
                eval_out = module.eval()(x)
        except ValueError as error:
            notes.append(f"{kind.name}: {error}")
            table.add_row(*row, "n/a", "n/a", "n/a")
            continue
        table.add_row(
            *row,
            f"{train_out.mean():.2f}/{train_out.std():.2f}",
            f"{eval_out.mean():.2f}/{eval_out.std():.2f}",
            f"{(train_out - eval_out).abs().max():.3g}",
        )
    if notes:
        table.caption = "\n".join(notes)
    return table


def _batch_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) < 2 or min(shape) < 1:
        raise argparse.ArgumentTypeError(
            f"expected a batch shape N,C[,spatial...] of positive integers, e.g. 16,8,4,4; "
            f"got {text!r}"
        )
    return shape


def _console() -> Console:
    """A console for tables: the terminal's width, or 120 columns when piped to a file."""
    console = Console()
    if not console.is_terminal:
        console.width = 120
    return console


def _norms(args: argparse.Namespace) -> int:
    _console().print(norms_table(args.shape, args.seed))
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
        "--shape",
        type=_batch_shape,
        default=(16, 8, 4, 4),
        help="batch shape N,C[,spatial...] (default 16,8,4,4)",
    )
    norms.add_argument("--seed", type=int, default=0, help="seed of the random batch")
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
