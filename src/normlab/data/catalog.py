"""Data sets by name: the one place where "digits", "mnist", ... are defined."""

from __future__ import annotations

import os
from collections.abc import Callable

from normlab._checks import did_you_mean, name_key
from normlab.data.cifar import load_cifar10
from normlab.data.dataset import Dataset
from normlab.data.digits import load_digits
from normlab.data.mnist import load_mnist

DATASETS: tuple[str, ...] = ("digits", "mnist", "fashion-mnist", "cifar10")

_LOADERS: dict[str, Callable[[str | os.PathLike | None], Dataset]] = {
    "digits": lambda data_dir: load_digits(),  # bundled with scikit-learn: data_dir is ignored
    "mnist": lambda data_dir: load_mnist("mnist", data_dir),
    "fashion-mnist": lambda data_dir: load_mnist("fashion-mnist", data_dir),
    "cifar10": load_cifar10,
}


_BY_KEY: dict[str, str] = {name_key(name): name for name in DATASETS}


def dataset_name(name: str) -> str:
    """The canonical name in DATASETS that ``name`` spells, ignoring case, '-' and '_'.

    Raises:
        ValueError: unknown name; the message names the closest data sets.
    """
    key = name_key(name)
    if key in _BY_KEY:
        return _BY_KEY[key]
    raise ValueError(
        f"unknown data set {name!r}.{did_you_mean(name, _BY_KEY)} "
        f"Known data sets: {', '.join(DATASETS)}."
    )


def load_dataset(name: str, data_dir: str | os.PathLike | None = None) -> Dataset:
    """Load a data set by name from local files; nothing is ever downloaded.

    Args:
        name: one of DATASETS ("digits", "mnist", "fashion-mnist", "cifar10"),
            in any case, with or without '-' and '_'.
        data_dir: where the files are (see normlab.data.mnist.load_mnist and
            normlab.data.cifar.load_cifar10 for the layouts accepted), or None
            to search the usual caches (Keras' ``~/.keras/datasets``,
            torchvision's ``./data`` and ``~/data``). Ignored for "digits",
            which is bundled with scikit-learn.

    Returns:
        Dataset: (N, C, H, W) float32 images in [0, 1] and (N,) int64 labels,
        for a training and a validation split. digits: 1437/360 of (1, 8, 8);
        mnist, fashion-mnist: 60000/10000 of (1, 28, 28); cifar10:
        50000/10000 of (3, 32, 32); all with 10 classes.

    Raises:
        ValueError: unknown name (the message names the closest).
        DataError: files missing, corrupt or truncated (the message names
            the file and the fix).
    """
    return _LOADERS[dataset_name(name)](data_dir)
