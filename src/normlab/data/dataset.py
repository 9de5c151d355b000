"""The Dataset every loader returns, the DataError they raise, and the conversions they share."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


class DataError(ValueError):
    """A data file is missing, corrupt or truncated; the message names the file and the fix."""


@dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """Images and class labels, split into a training and a validation set.

    Attributes:
        name: canonical data set name, one of ``normlab.data.DATASETS``.
        train_x: (N, C, H, W) float32 images, values in [0, 1].
        train_y: (N,) int64 class labels in [0, num_classes).
        val_x: (M, C, H, W) float32 images, values in [0, 1].
        val_y: (M,) int64 class labels in [0, num_classes).
        num_classes: number of classes.
        source: where the data came from: "scikit-learn (bundled)" or the
            resolved path of the file or directory that was read.

    Raises:
        ValueError: the tensors do not have the shapes and dtypes above, or a
            split has no images.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    num_classes: int
    source: str

    def __post_init__(self) -> None:
        for split in ("train", "val"):
            images, labels = getattr(self, f"{split}_x"), getattr(self, f"{split}_y")
            if images.ndim != 4 or images.dtype != torch.float32:
                raise ValueError(
                    f"Dataset.{split}_x must be a (N, C, H, W) float32 tensor; got shape "
                    f"{tuple(images.shape)} and dtype {images.dtype}."
                )
            if images.shape[0] == 0:
                raise ValueError(
                    f"Dataset.{split}_x has no images; a run can neither train nor validate "
                    "on an empty split."
                )
            if labels.shape != images.shape[:1] or labels.dtype != torch.int64:
                raise ValueError(
                    f"Dataset.{split}_y must be an int64 tensor of shape ({images.shape[0]},), "
                    f"one label per image; got shape {tuple(labels.shape)} and dtype "
                    f"{labels.dtype}."
                )
        if self.train_x.shape[1:] != self.val_x.shape[1:]:
            raise ValueError(
                f"Dataset train and validation images must have the same (C, H, W); got "
                f"{tuple(self.train_x.shape[1:])} and {tuple(self.val_x.shape[1:])}."
            )

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        channels, height, width = self.train_x.shape[1:]
        return (channels, height, width)

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, train={self.train_x.shape[0]}, "
            f"val={self.val_x.shape[0]}, input_shape={self.input_shape}, "
            f"num_classes={self.num_classes}, source={self.source!r})"
        )


def pixels_to_float(images: np.ndarray | torch.Tensor, max_value: int = 255) -> torch.Tensor:
    """Integer pixels 0..max_value, any shape, -> float32 tensor in [0, 1] of the same shape."""
    if isinstance(images, np.ndarray):  # astype copies, so read-only arrays are fine
        as_float = torch.from_numpy(images.astype(np.float32))
    else:
        as_float = images.to(torch.float32, copy=True)
    return as_float.div_(max_value)


def labels_to_long(labels: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(N,) integer labels -> (N,) int64 tensor (a copy)."""
    if isinstance(labels, np.ndarray):
        return torch.from_numpy(labels.astype(np.int64))
    return labels.to(torch.int64, copy=True)


def check_labels(labels: torch.Tensor, num_classes: int, source: str, fix: str) -> None:
    """Raise DataError unless every label is in 0..num_classes-1; ``source`` names the file."""
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)].unique()[:5].tolist()
        raise DataError(
            f"{source} has labels outside 0..{num_classes - 1} (found {bad}); "
            f"it is corrupt or not a label file. {fix}"
        )
