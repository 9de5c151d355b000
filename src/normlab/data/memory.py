"""The user's own tensors as a Dataset, named by their content (``memory:<12 hex digits>``),
so the same tensors give the same run ids and a resumed comparison finds its runs."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch

from normlab.data.dataset import Dataset, labels_to_long, pixels_to_float

PREFIX = "memory"
SOURCE = "tensors given in memory"


def _images(name: str, images: torch.Tensor | np.ndarray) -> torch.Tensor:
    tensor = torch.as_tensor(images)
    if tensor.ndim != 4:
        raise ValueError(
            f"{name} must be (N, C, H, W) images; got shape {tuple(tensor.shape)}"
            + (" (add the channel dimension: images.unsqueeze(1))." if tensor.ndim == 3 else ".")
        )
    if tensor.dtype == torch.uint8:
        return pixels_to_float(tensor)
    if not tensor.is_floating_point():
        raise ValueError(
            f"{name} must hold float images (or uint8 pixels 0..255); got {tensor.dtype}."
        )
    return tensor.detach().to(torch.float32, copy=True).contiguous()


def _labels(name: str, labels: torch.Tensor | np.ndarray, count: int) -> torch.Tensor:
    tensor = torch.as_tensor(labels)
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer class labels; got {tensor.dtype}.")
    if tensor.shape != (count,):
        raise ValueError(
            f"{name} must be ({count},), one label per image; got shape {tuple(tensor.shape)}."
        )
    long = labels_to_long(tensor)
    if count and int(long.min()) < 0:
        raise ValueError(f"{name} has negative labels; class labels count from 0.")
    return long


def dataset_from_tensors(
    splits: Sequence[torch.Tensor | np.ndarray], num_classes: int | None = None
) -> Dataset:
    """``(train_images, train_labels, val_images, val_labels)`` as a Dataset.

    Images are (N, C, H, W): float (copied as float32) or uint8 pixels (scaled to [0, 1]);
    labels are (N,) integers in [0, num_classes). ``num_classes`` defaults to the largest
    label + 1. The name is ``memory:`` and 12 hex digits of a hash of the tensors.

    Raises:
        ValueError: not four arrays, or one of the wrong rank, dtype or length.
    """
    if isinstance(splits, torch.Tensor | np.ndarray) or len(splits) != 4:
        raise ValueError(
            "data given as tensors must be four: (train_images, train_labels, val_images, "
            "val_labels)."
        )
    train_x, val_x = _images("train images", splits[0]), _images("validation images", splits[2])
    train_y = _labels("train labels", splits[1], len(train_x))
    val_y = _labels("validation labels", splits[3], len(val_x))
    classes = int(max(train_y.max(), val_y.max())) + 1 if num_classes is None else num_classes
    digest = hashlib.sha1()
    for tensor in (train_x, train_y, val_x, val_y):
        digest.update(str((tuple(tensor.shape), tensor.dtype)).encode())
        digest.update(tensor.numpy().tobytes())
    digest.update(str(classes).encode())
    return Dataset(
        name=f"{PREFIX}:{digest.hexdigest()[:12]}",
        train_x=train_x,
        train_y=train_y,
        val_x=val_x,
        val_y=val_y,
        num_classes=classes,
        source=SOURCE,
    )
