"""Spot check of each kind's training speed as a ratio to torch's native layer.

For each kind, times forward + backward in training mode with
torch.utils.benchmark and divides by the time of torch's own module doing
the same job on the same tensor, measured in the same run (ratios, never
absolute times: these machines are shared and noisy). "bn" runs torch's
own kernel, so its ratio shows the run's noise.

    python benchmarks/layer_speed.py
"""

from __future__ import annotations

import torch
from rich.console import Console
from rich.table import Table
from torch import nn
from torch.utils import benchmark

import normlab as nl


def _forward_backward(module: nn.Module, x: torch.Tensor) -> None:
    x.grad = None
    module(x).sum().backward()


def seconds(module: nn.Module, x: torch.Tensor) -> float:
    timer = benchmark.Timer(
        "step(module, x)", globals={"step": _forward_backward, "module": module, "x": x}
    )
    return timer.blocked_autorange(min_run_time=1.0).median


def cases(shape: tuple[int, ...]) -> list[tuple[str, dict, nn.Module]]:
    """(kind, options, torch's module for the same job) for a batch of ``shape``."""
    channels = shape[1]
    bn = nn.BatchNorm2d(channels) if len(shape) == 4 else nn.BatchNorm1d(channels)
    rows = [
        ("bn", {}, bn),
        ("bn", {"convention": "keras"}, bn),
        ("bn-scalar", {}, bn),
        ("brn", {}, bn),
        ("switch", {}, bn),
        ("gn", {}, nn.GroupNorm(32, channels)),
    ]
    if len(shape) == 4:
        return [*rows, ("in", {}, nn.InstanceNorm2d(channels, affine=True))]
    return [*rows, ("ln", {}, nn.LayerNorm(channels)), ("rms", {}, nn.RMSNorm(channels))]


def main() -> None:
    torch.manual_seed(0)
    table = Table(title="Training forward + backward, ratio to torch's native layer (median)")
    for column in ("shape", "kind", "options", "baseline", "ratio"):
        table.add_column(column, justify="right" if column == "ratio" else "left")
    for shape in [(256, 1024), (32, 64, 56, 56)]:
        x = torch.randn(shape, requires_grad=True)
        for kind, options, native in cases(shape):
            ratio = seconds(nl.make_norm(kind, shape[1], **options), x) / seconds(native, x)
            label = ", ".join(f"{key}={value}" for key, value in options.items())
            table.add_row(str(shape), kind, label, type(native).__name__, f"{ratio:.2f}")
    Console().print(table)


if __name__ == "__main__":
    main()
