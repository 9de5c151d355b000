"""Data sets by name: the one place where "digits", "mnist", ... are defined."""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable

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


def _key(name: str) -> str:
    """Lookup key: case, spaces, '-' and '_' do not matter ("Fashion_MNIST" is "fashionmnist")."""
    return "".join(ch for ch in name.strip().lower() if ch not in " -_")


_BY_KEY: dict[str, str] = {_key(name): name for name in DATASETS}


def dataset_name(name: str) -> str:
    """The canonical name in DATASETS that ``name`` spells, ignoring case, '-' and '_'.

    Raises:
        ValueError: unknown name; the message names the closest data sets.
    """
    key = _key(name) if isinstance(name, str) else ""
    if key in _BY_KEY:
        return _BY_KEY[key]
    close = [_BY_KEY[k] for k in difflib.get_close_matches(key, _BY_KEY, n=3, cutoff=0.4)]
    hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
    raise ValueError(f"unknown data set {name!r}.{hint} Known data sets: {', '.join(DATASETS)}.")


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
