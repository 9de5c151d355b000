"""Data sets by name: the one place where "digits", "mnist", ... are defined.

Besides the named data sets, ``npz:PATH`` names the user's arrays in an .npz
file (normlab.data.npz_file) and ``folder:PATH`` the user's images in class
folders (normlab.data.image_folder); their canonical name holds the absolute path.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

from normlab._checks import did_you_mean, name_key
from normlab.data import memory
from normlab.data.cifar import load_cifar10
from normlab.data.dataset import Dataset
from normlab.data.digits import load_digits
from normlab.data.image_folder import load_image_folder
from normlab.data.mnist import load_mnist
from normlab.data.npz_file import load_npz

DATASETS: tuple[str, ...] = ("digits", "mnist", "fashion-mnist", "cifar10")

_LOADERS: dict[str, Callable[[str | os.PathLike | None], Dataset]] = {
    "digits": lambda data_dir: load_digits(),  # bundled with scikit-learn: data_dir is ignored
    "mnist": lambda data_dir: load_mnist("mnist", data_dir),
    "fashion-mnist": lambda data_dir: load_mnist("fashion-mnist", data_dir),
    "cifar10": load_cifar10,
}


_BY_KEY: dict[str, str] = {name_key(name): name for name in DATASETS}

USER_FORMATS: dict[str, Callable[[str | os.PathLike], Dataset]] = {
    "npz": load_npz,
    "folder": load_image_folder,
}
"""``FORMAT:PATH`` data sets: the user's own data, read from PATH."""

IN_MEMORY = re.compile(rf"{memory.PREFIX}:[0-9a-f]{{12}}")
"""The name of tensors given in memory (normlab.data.memory)."""


def user_format(name: str) -> tuple[str, str] | None:
    """``("npz", PATH)`` for ``"npz:PATH"`` (likewise ``folder:``); None for a named data set."""
    if not isinstance(name, str):
        return None  # dataset_name refuses it as an unknown data set
    prefix, colon, path = name.partition(":")
    if colon and prefix.strip().lower() in USER_FORMATS:
        if not path.strip():
            raise ValueError(f"`data` {name!r} names no path; write {prefix}:PATH.")
        return prefix.strip().lower(), path.strip()
    return None


def dataset_name(name: str) -> str:
    """The canonical name in DATASETS that ``name`` spells, ignoring case, '-' and '_';
    for ``npz:PATH`` and ``folder:PATH``, the format and PATH made absolute.

    Raises:
        ValueError: unknown name; the message names the closest data sets.
    """
    user = user_format(name)
    if user is not None:
        return f"{user[0]}:{Path(user[1]).expanduser().resolve()}"
    if isinstance(name, str) and IN_MEMORY.fullmatch(name):
        return name
    key = name_key(name)
    if key in _BY_KEY:
        return _BY_KEY[key]
    raise ValueError(
        f"unknown data set {name!r}.{did_you_mean(name, _BY_KEY)} "
        f"Known data sets: {', '.join(DATASETS)}; or your own data as npz:PATH or folder:PATH."
    )


def load_dataset(name: str, data_dir: str | os.PathLike | None = None) -> Dataset:
    """Load a data set by name from local files; nothing is ever downloaded.

    Args:
        name: one of DATASETS ("digits", "mnist", "fashion-mnist", "cifar10"),
            in any case, with or without '-' and '_'; or ``npz:PATH`` (arrays
            x_train, y_train, x_test, y_test, see normlab.data.npz_file) or
            ``folder:PATH`` (PATH/train/<class>/*.png and PATH/test/..., see
            normlab.data.image_folder).
        data_dir: where the files are (see normlab.data.mnist.load_mnist and
            normlab.data.cifar.load_cifar10 for the layouts accepted), or None
            to search the usual caches (Keras' ``~/.keras/datasets``,
            torchvision's ``./data`` and ``~/data``). Ignored for "digits",
            which is bundled with scikit-learn, and for ``npz:`` and ``folder:``,
            whose path is in the name.

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
    user = user_format(name)
    if user is not None:
        return USER_FORMATS[user[0]](user[1])
    if isinstance(name, str) and IN_MEMORY.fullmatch(name):
        raise ValueError(
            f"{name} names tensors that were given in memory; they cannot be loaded by name. "
            "Give the tensors again (normlab.lab.compare(data=...))."
        )
    return _LOADERS[dataset_name(name)](data_dir)
