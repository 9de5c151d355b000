"""``normlab norms``' table: every registered kind applied to one batch."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from rich import box
from rich.table import Table

from normlab.registry import make_norm, registered_kinds


def norms_table(batch_shape: Sequence[int] = (16, 8, 4, 4), seed: int = 0) -> Table:
    """Apply every registered kind to one batch (mean 3, std 2) and tabulate the outputs.

    The running-stats column is the registry's: per "channel", one "scalar" or
    none. Each module runs one training step, then eval mode, on the same batch;
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
    table.add_column("running stats")
    for column in ("params", "train mean/std", "eval mean/std", "max |train-eval|"):
        table.add_column(column, justify="right")
    for kind in registered_kinds():
        module = make_norm(kind.name, batch_shape[1])
        row = [kind.name, ", ".join(kind.aliases), module._get_name(), kind.running_stats or ""]
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
