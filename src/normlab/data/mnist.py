"""MNIST and Fashion-MNIST from local IDX files or a Keras-style .npz; never downloads.

Both are (N, 1, 28, 28) images with labels 0..9: 60000 training images (the
train set) and 10000 validation images (the t10k test set, which is what the
tutorials validate on).
"""

from __future__ import annotations

import os
import pickle
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from normlab.data.dataset import (
    DataError,
    Dataset,
    check_labels,
    labels_to_long,
    pixels_to_float,
)
from normlab.data.idx import read_idx
from normlab.data.locations import keras_datasets_dir, torchvision_roots

# train images, train labels, validation (t10k) images, validation labels
IDX_FILES: tuple[str, str, str, str] = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
# the same four arrays in a Keras-style .npz
NPZ_KEYS: tuple[str, str, str, str] = ("x_train", "y_train", "x_test", "y_test")
NUM_CLASSES = 10
IMAGE_SIZE = 28


@dataclass(frozen=True)
class _Layout:
    """Where one of the two data sets lives, by the conventions of each library."""

    name: str  # canonical name, as in DATASETS
    title: str  # for messages
    torchvision_folder: str  # torchvision keeps the files in <root>/<folder>/raw
    npz_name: str  # Keras' mnist.npz; fashion-mnist has no npz in Keras, same keys accepted
    keras_cache: str  # path under Keras' datasets dir: the npz or the IDX folder


_LAYOUTS = {
    "mnist": _Layout("mnist", "MNIST", "MNIST", "mnist.npz", "mnist.npz"),
    "fashion-mnist": _Layout(
        "fashion-mnist", "Fashion-MNIST", "FashionMNIST", "fashion-mnist.npz", "fashion-mnist"
    ),
}


def load_mnist(name: str = "mnist", data_dir: str | os.PathLike | None = None) -> Dataset:
    """Load MNIST or Fashion-MNIST from local files.

    Args:
        name: "mnist" or "fashion-mnist".
        data_dir: a directory holding the four IDX files (each raw or .gz), a
            Keras-style .npz file, or a directory holding one (mnist.npz,
            fashion-mnist.npz), or a torchvision root (files in
            ``<data_dir>/MNIST/raw`` or ``<data_dir>/FashionMNIST/raw``), or,
            for fashion-mnist, Keras' datasets directory (files in
            ``<data_dir>/fashion-mnist``). In a directory the IDX files win
            over an .npz. None searches the usual caches, in this order:
            mnist: ``~/.keras/datasets/mnist.npz``, ``./data/MNIST/raw``,
            ``~/data/MNIST/raw``; fashion-mnist: ``~/.keras/datasets/fashion-mnist``,
            ``./data/FashionMNIST/raw``, ``~/data/FashionMNIST/raw``
            (``~/.keras`` is ``$KERAS_HOME`` when that is set).

    Returns:
        Dataset with train (60000, 1, 28, 28) and val (10000, 1, 28, 28)
        float32 images in [0, 1] (pixels / 255), int64 labels 0..9.

    Raises:
        DataError: no complete set of files was found (the message lists the
            places searched and what to put where), or a file is corrupt,
            truncated, or does not match its partner file.
    """
    if name not in _LAYOUTS:
        raise ValueError(f"load_mnist reads 'mnist' or 'fashion-mnist'; got {name!r}.")
    layout = _LAYOUTS[name]
    if data_dir is None:
        places = _cache_places(layout)
    else:
        places = _places_in(layout, Path(data_dir).expanduser())
    partial: list[str] = []
    for place in places:
        if place.suffix == ".npz":
            if place.is_file():
                return _load_npz(layout, place)
            continue
        files = _idx_files_in(place)
        complete = [path for path in files if path is not None]
        if len(complete) == len(IDX_FILES):
            return _load_idx(layout, place, complete)
        if any(files):
            missing = [file for file, path in zip(IDX_FILES, files, strict=True) if path is None]
            partial.append(f"{place} has some of the IDX files but lacks {', '.join(missing)}")
    raise DataError(_not_found_message(layout, places, partial, data_dir))


def _cache_places(layout: _Layout) -> list[Path]:
    """Where Keras and the torchvision tutorials leave the files, in search order."""
    cwd_root, home_root = torchvision_roots()
    return [
        keras_datasets_dir() / layout.keras_cache,
        cwd_root / layout.torchvision_folder / "raw",
        home_root / layout.torchvision_folder / "raw",
    ]


def _places_in(layout: _Layout, data_dir: Path) -> list[Path]:
    """The IDX directories and .npz files that ``data_dir`` may mean, in search order."""
    if data_dir.is_file():
        if data_dir.suffix == ".npz":
            return [data_dir]
        raise DataError(
            f"{data_dir} is a file, not a directory or an .npz file. Pass the directory "
            f"that holds the four {layout.title} IDX files ({', '.join(IDX_FILES)}), or "
            f"a Keras-style {layout.npz_name}."
        )
    if not data_dir.is_dir():
        raise DataError(
            f"data directory {data_dir} does not exist. Pass the directory that holds the "
            f"four {layout.title} IDX files ({', '.join(IDX_FILES)}, each may be .gz) or "
            f"a Keras-style {layout.npz_name}."
        )
    places = [
        data_dir,
        data_dir / layout.npz_name,
        data_dir / layout.torchvision_folder / "raw",
    ]
    if layout.keras_cache != layout.npz_name:  # Keras keeps fashion-mnist as an IDX folder
        places.append(data_dir / layout.keras_cache)
    return places


def _idx_files_in(directory: Path) -> list[Path | None]:
    """Each of IDX_FILES in ``directory``, uncompressed or .gz (uncompressed first), or None."""
    found: list[Path | None] = []
    for name in IDX_FILES:
        candidates = (directory / name, directory / f"{name}.gz")
        found.append(next((path for path in candidates if path.is_file()), None))
    return found


def _load_idx(layout: _Layout, directory: Path, files: list[Path]) -> Dataset:
    """Read the four IDX ``files`` (in IDX_FILES order) found in ``directory``."""
    train_images, train_labels, val_images, val_labels = files
    train_x, train_y = _checked_split(
        layout, read_idx(train_images), read_idx(train_labels), train_images, train_labels
    )
    val_x, val_y = _checked_split(
        layout, read_idx(val_images), read_idx(val_labels), val_images, val_labels
    )
    return Dataset(
        layout.name, train_x, train_y, val_x, val_y, NUM_CLASSES, str(directory.resolve())
    )


def _load_npz(layout: _Layout, path: Path) -> Dataset:
    arrays = _read_npz(layout, path)
    tensors = {key: _npz_tensor(array, f"{path}[{key}]") for key, array in arrays.items()}
    train_x, train_y = _checked_split(
        layout, tensors["x_train"], tensors["y_train"], f"{path}[x_train]", f"{path}[y_train]"
    )
    val_x, val_y = _checked_split(
        layout, tensors["x_test"], tensors["y_test"], f"{path}[x_test]", f"{path}[y_test]"
    )
    return Dataset(layout.name, train_x, train_y, val_x, val_y, NUM_CLASSES, str(path.resolve()))


def _read_npz(layout: _Layout, path: Path) -> dict[str, np.ndarray]:
    """The NPZ_KEYS arrays of the .npz at ``path``, read without allowing pickles."""
    fix = f"Download or copy {path.name} again, or use the four IDX files instead."
    unreadable = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, pickle.PickleError)
    # The file is opened here, not by np.load, so that it is closed even when it is no zip.
    with path.open("rb") as file:
        try:
            archive = np.load(file, allow_pickle=False)
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise DataError(f"{path} holds a single array, not an .npz archive. {fix}")
            missing = [key for key in NPZ_KEYS if key not in archive.files]
            if missing:
                raise DataError(
                    f"{path} lacks the arrays {missing} (it has {archive.files}); a "
                    f"{layout.title} .npz needs {', '.join(NPZ_KEYS)}, as in Keras' mnist.npz."
                )
            return {key: archive[key] for key in NPZ_KEYS}
        except DataError:  # a ValueError, but already says what is wrong
            raise
        except unreadable as error:
            raise DataError(f"{path} is not a readable .npz archive ({error}). {fix}") from error


def _npz_tensor(array: np.ndarray, source: str) -> torch.Tensor:
    """A uint8 array read from an .npz as a tensor (copied only if it is read-only)."""
    if array.dtype != np.uint8:
        raise DataError(
            f"{source} holds {array.dtype} values; MNIST-style .npz arrays are uint8 "
            "(pixels 0..255, labels 0..9), as in Keras' mnist.npz."
        )
    return torch.from_numpy(np.require(array, requirements=["C", "W"]))


def _checked_split(
    layout: _Layout,
    images: torch.Tensor,
    labels: torch.Tensor,
    images_source: str | os.PathLike,
    labels_source: str | os.PathLike,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 28, 28) uint8 images and (N,) labels -> (N, 1, 28, 28) float32 in [0, 1], (N,) int64.

    Raises:
        DataError: wrong shape or dtype, no images, image and label counts differ,
            or a label is outside 0..9; the message names both sources.
    """
    expected = f"{layout.title} images are (N, {IMAGE_SIZE}, {IMAGE_SIZE}) uint8"
    if images.dtype != torch.uint8 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(
            f"{images_source} holds {images.dtype} values of shape {tuple(images.shape)}; "
            f"{expected}. Is it the right file (images, not labels)?"
        )
    if labels.dtype != torch.uint8 or labels.ndim != 1:
        raise DataError(
            f"{labels_source} holds {labels.dtype} values of shape {tuple(labels.shape)}; "
            f"{layout.title} labels are (N,) uint8. Is it the right file (labels, not images)?"
        )
    if images.shape[0] == 0:
        raise DataError(
            f"{images_source} holds no images (its header says 0); no run can train or "
            "validate on an empty split. Download or copy it again."
        )
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{images_source} holds {images.shape[0]} images but {labels_source} holds "
            f"{labels.shape[0]} labels; the two must be the images and labels of the same "
            "split (train-* with train-*, t10k-* with t10k-*) from the same release."
        )
    check_labels(labels, NUM_CLASSES, str(labels_source), "Download or copy it again.")
    return pixels_to_float(images.unsqueeze(1)), labels_to_long(labels)


def _not_found_message(
    layout: _Layout, places: list[Path], partial: list[str], data_dir: str | os.PathLike | None
) -> str:
    where = "in the usual caches" if data_dir is None else f"in data directory {data_dir}"
    looked = "\n".join(
        f"  {place}" if place.suffix == ".npz" else f"  {place}/ (IDX files)" for place in places
    )
    notes = "".join(f"\n  ({note})" for note in partial)
    return (
        f"{layout.title} files not found {where}. Looked in:\n{looked}{notes}\n"
        f"To fix it, put the four IDX files\n  {'  '.join(IDX_FILES)}\n"
        "(each uncompressed or gzipped with a .gz suffix) in one directory, or a Keras-style "
        f"{layout.npz_name} (arrays {', '.join(NPZ_KEYS)}), then pass that directory: "
        f"`normlab compare --dataset {layout.name} --data-dir DIR`, or "
        f"load_dataset({layout.name!r}, data_dir=DIR). Nothing is downloaded."
    )
