"""Channels first (torch) vs channels last (Keras): shapes, "same" padding, Flatten order."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from normlab.convert.common import ConversionError


def same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """(before, after) zeros Keras' padding="same" adds to a side of ``size``."""
    span = dilation * (kernel - 1) + 1
    total = max((math.ceil(size / stride) - 1) * stride + span - size, 0)
    return total // 2, total - total // 2


def flatten_order(height: int, width: int, channels: int) -> np.ndarray | None:
    """``order[j]``: the Keras (H, W, C) flat index of torch's (C, H, W) flat index j; None
    when they are the same (one channel, or 1x1 images)."""
    order = np.arange(height * width * channels).reshape(height, width, channels)
    order = order.transpose(2, 0, 1).reshape(-1)
    return None if (order == np.arange(order.size)).all() else order


def shape_to_torch(shape: Sequence[int]) -> tuple[int, ...]:
    """A per-sample Keras shape (H, W, C) -> torch's (C, H, W); (F,) stays."""
    shape = tuple(shape)
    return shape if len(shape) < 2 else (shape[-1], *shape[:-1])


def shape_to_keras(shape: Sequence[int]) -> tuple[int, ...]:
    """A per-sample torch shape (C, H, W) -> Keras' (H, W, C); (F,) stays."""
    shape = tuple(shape)
    return shape if len(shape) < 2 else (*shape[1:], shape[0])


def check_flatten_read(order: np.ndarray | None) -> None:
    if order is not None:
        raise ConversionError(
            "the model's output is flattened image features that no Dense/Linear reads; Keras "
            "orders them (H, W, C) and torch (C, H, W), so the outputs would differ by a "
            "permutation. End the model with a Dense/Linear layer, or without the Flatten."
        )
