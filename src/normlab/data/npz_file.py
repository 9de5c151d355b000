"""The user's own data as arrays in one .npz file: ``--dataset npz:PATH``.

The file holds four arrays, as Keras' ``mnist.npz`` does:

- ``x_train``, ``x_test``: images, (N, H, W, C) or (N, C, H, W) with C in 1..4
  channels, (N, H, W) grayscale, or flat (N, D) features (read as (N, 1, 1, D),
  for the mlp). Integer pixels must be 0..255 and are scaled to [0, 1]; float
  values are used as they are and must be finite.
- ``y_train``, ``y_test``: integer class labels 0..K-1, shape (N,) or (N, 1);
  K is one more than the largest training label.

The file is read with ``allow_pickle=False``: an array of Python objects is
refused, never unpickled. ``x_test``/``y_test`` are the validation split.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from normlab.data.dataset import DataError, Dataset, labels_to_long
from normlab.data.npz_archive import read_arrays

KEYS = ("x_train", "y_train", "x_test", "y_test")
MAX_CHANNELS = 4


def _fail(path: Path, problem: str) -> DataError:
    return DataError(f"{path}: {problem}")


def _channels_last(shape: tuple[int, ...]) -> bool | None:
    """True for (N, H, W, C), False for (N, C, H, W), None when the shape does not tell.

    The channels are the dim of 1..4; where both dims qualify (N, 4, 4, 1), the one
    holding 1 or 3 channels decides.
    """
    first, last = shape[1] <= MAX_CHANNELS, shape[3] <= MAX_CHANNELS
    if first and last:
        first, last = shape[1] in (1, 3), shape[3] in (1, 3)
    return None if first == last else last


def _as_nchw(images: np.ndarray, path: Path, key: str) -> np.ndarray:
    """(N, C, H, W) view of ``images`` in any of the accepted layouts."""
    if images.ndim == 2:
        return images[:, None, None, :]
    if images.ndim == 3:
        return images[:, None]
    if images.ndim == 4:
        channels_last = _channels_last(images.shape)
        if channels_last is not None:
            return images.transpose(0, 3, 1, 2) if channels_last else images
        some = min(images.shape[1], images.shape[3]) <= MAX_CHANNELS
        where = (
            "both dim 1 and dim 3 could hold the channels"
            if some
            else f"neither dim 1 nor dim 3 holds 1..{MAX_CHANNELS} channels"
        )
        raise _fail(
            path,
            f"{key} has shape {images.shape}, where {where}; store images as (N, H, W, C) "
            "or (N, C, H, W) with C of 1 to 4 channels.",
        )
    raise _fail(
        path,
        f"{key} has shape {images.shape} ({images.ndim}-D); images must be (N, H, W, C), "
        "(N, C, H, W), (N, H, W) or flat (N, D).",
    )


def _images(images: np.ndarray, path: Path, key: str) -> torch.Tensor:
    if images.ndim == 0 or len(images) == 0:
        raise _fail(path, f"{key} holds no samples.")
    if 0 in images.shape[1:]:
        raise _fail(
            path,
            f"{key}'s images hold no values (shape {images.shape}); each image needs at "
            "least one pixel or feature.",
        )
    if images.dtype == np.bool_ or not (
        np.issubdtype(images.dtype, np.integer) or np.issubdtype(images.dtype, np.floating)
    ):
        raise _fail(path, f"{key} has dtype {images.dtype}; images must be integers or floats.")
    nchw = np.ascontiguousarray(_as_nchw(images, path, key))
    if np.issubdtype(nchw.dtype, np.integer):
        if nchw.min() < 0 or nchw.max() > 255:
            raise _fail(
                path,
                f"{key} holds integer pixels outside 0..255 (from {nchw.min()} to "
                f"{nchw.max()}); store 0..255 integers or floats scaled as you want them.",
            )
        return torch.from_numpy(nchw.astype(np.float32)).div_(255)
    as_float = torch.from_numpy(nchw.astype(np.float32))
    if not torch.isfinite(as_float).all():
        raise _fail(path, f"{key} holds NaN or infinite values.")
    return as_float


def _labels(labels: np.ndarray, path: Path, key: str, count: int) -> np.ndarray:
    """``labels`` as (count,) non-negative integers (a view or the array itself)."""
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.dtype == np.bool_ or not np.issubdtype(labels.dtype, np.integer):
        raise _fail(
            path,
            f"{key} has dtype {labels.dtype}; labels must be integer class numbers 0..K-1 "
            "(one-hot or float labels: store labels.argmax(1) or labels.astype(int)).",
        )
    if labels.shape != (count,):
        raise _fail(
            path,
            f"{key} has shape {labels.shape}; it needs one label per image, shape ({count},).",
        )
    if labels.min() < 0:
        raise _fail(path, f"{key} holds negative labels ({labels.min()}); classes are 0..K-1.")
    return labels


def load_npz(path: str | os.PathLike) -> Dataset:
    """The data set in the .npz file ``path`` (see the module docstring for its arrays).

    Raises:
        DataError: the file is missing, not an .npz, truncated or corrupt, lacks an array,
            holds pickled objects, or an array has the wrong shape, dtype or values, or the
            labels show fewer than two classes; the message names the file, the array and
            the fix.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(
            f"{path}: no such file; `data` npz:PATH needs an .npz with the arrays "
            f"{', '.join(KEYS)} (numpy.savez)."
        )
    arrays = read_arrays(path, KEYS)
    train_x = _images(arrays["x_train"], path, "x_train")
    val_x = _images(arrays["x_test"], path, "x_test")
    if train_x.shape[1:] != val_x.shape[1:]:
        raise _fail(
            path,
            f"x_train's images are {tuple(train_x.shape[1:])} (C, H, W) but x_test's are "
            f"{tuple(val_x.shape[1:])}; both splits need one image shape.",
        )
    train_y = _labels(arrays["y_train"], path, "y_train", len(train_x))
    val_y = _labels(arrays["y_test"], path, "y_test", len(val_x))
    # Checked as numpy integers, before the conversion to int64 could wrap a uint64 label.
    largest = int(train_y.max())
    if largest >= len(train_y):
        raise _fail(
            path,
            f"y_train's largest label is {largest} but there are only {len(train_y)} "
            "training samples; number the classes 0..K-1.",
        )
    if int(val_y.max()) > largest:
        raise _fail(
            path,
            f"y_test has label {int(val_y.max())}, a class that y_train (labels "
            f"0..{largest}) never shows; the model could not learn it.",
        )
    shown = np.unique(train_y)
    if len(shown) < 2:
        raise _fail(
            path,
            f"y_train holds one class only ({int(shown[0])}); a classifier needs at least two "
            "classes: add samples of another class (or check that the labels were saved, "
            "not zeros).",
        )
    return Dataset(
        name=f"npz:{path.resolve()}",
        train_x=train_x,
        train_y=labels_to_long(train_y),
        val_x=val_x,
        val_y=labels_to_long(val_y),
        num_classes=largest + 1,
        source=str(path.resolve()),
    )
