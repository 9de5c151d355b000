"""Parameters, buffers and the step count shared by the layers that keep running statistics."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def step_momentum(
    momentum: float | None, num_batches_tracked: torch.Tensor | None, training: bool
) -> float:
    """Count a training step in ``num_batches_tracked`` and return its momentum.

    As torch's ``_BatchNorm``: ``momentum=None`` means the cumulative average,
    1 / (batches seen including this one). Outside training, or with no
    counter (running statistics not tracked), nothing is counted.
    """
    if not training or num_batches_tracked is None:
        return 0.0 if momentum is None else momentum
    num_batches_tracked.add_(1)
    if momentum is None:
        return 1.0 / float(num_batches_tracked)
    return momentum


def register_affine(
    module: nn.Module, num_features: int, affine: bool, factory: dict[str, Any]
) -> None:
    """Give ``module`` a (C,) ``weight`` of ones and ``bias`` of zeros, or None for both."""
    if affine:
        module.weight = nn.Parameter(torch.ones(num_features, **factory))
        module.bias = nn.Parameter(torch.zeros(num_features, **factory))
    else:
        module.register_parameter("weight", None)
        module.register_parameter("bias", None)


def register_running_stats(
    module: nn.Module, shape: tuple[int, ...] | None, factory: dict[str, Any]
) -> None:
    """Give ``module`` torch's ``running_mean`` (0), ``running_var`` (1) of ``shape`` and
    ``num_batches_tracked``; all None when ``shape`` is None (statistics not tracked)."""
    if shape is None:
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            module.register_buffer(name, None)
        return
    module.register_buffer("running_mean", torch.zeros(shape, **factory))
    module.register_buffer("running_var", torch.ones(shape, **factory))
    module.register_buffer(
        "num_batches_tracked", torch.tensor(0, dtype=torch.long, device=factory.get("device"))
    )
