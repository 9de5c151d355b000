"""The training-step count shared by the layers that keep running statistics."""

from __future__ import annotations

import torch


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
