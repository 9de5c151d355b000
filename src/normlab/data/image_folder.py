"""The user's own images in class folders: ``--dataset folder:PATH``.

The layout is torchvision's ``ImageFolder``, one tree per split::

    PATH/train/<class>/*.png|*.jpg|*.jpeg
    PATH/test/<class>/...

Classes are the folder names, numbered in sorted order; ``train`` and ``test``
must have the same classes, and every class folder at least one image. Every
image must have the same height and width (resize them beforehand). Images
that are all grayscale give (N, 1, H, W) tensors, otherwise every image is
converted to RGB, (N, 3, H, W); pixels are scaled to [0, 1].

Decoding is paid once: the decoded arrays are cached as an .npz (read back
with ``allow_pickle=False``) in :func:`cache_dir`, under a key made of every
image's path, size and modification time, so the runs of a sweep, its worker
processes and later sweeps read the cache, and any change to the tree decodes
it again. Pillow (a dependency of matplotlib) decodes the images.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch

from normlab.data.dataset import DataError, Dataset, labels_to_long, pixels_to_float

SPLITS = ("train", "test")
EXTENSIONS = (".png", ".jpg", ".jpeg")
CACHE_VERSION = 1
GRAYSCALE_MODES = ("1", "L", "LA", "I", "I;16", "F")


def cache_dir() -> Path:
    """Where decoded image folders are cached: ``$NORMLAB_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/normlab``, else ``~/.cache/normlab``."""
    explicit = os.environ.get("NORMLAB_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "normlab"


def _class_files(root: Path, split: str) -> dict[str, list[Path]]:
    """{class: its image files, sorted} of ``root/split``."""
    folder = root / split
    if not folder.is_dir():
        raise DataError(
            f"{folder}: no such folder; --dataset folder:PATH needs PATH/train/<class>/*.png "
            "and PATH/test/<class>/*.png (or .jpg)."
        )
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(
            f"{folder} has no class folders; put each class's images in {folder}/<class>/."
        )
    files = {}
    for directory in classes:
        images = sorted(
            p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS
        )
        if not images:
            raise DataError(
                f"{directory} holds no .png or .jpg images; every class folder needs at least "
                "one (remove the folder if the class is not wanted)."
            )
        files[directory.name] = images
    return files


def _tree(root: Path) -> dict[str, dict[str, list[Path]]]:
    tree = {split: _class_files(root, split) for split in SPLITS}
    train, test = set(tree["train"]), set(tree["test"])
    if train != test:
        only = [
            f"only in {split}: {', '.join(sorted(names))}"
            for split, names in (("train", train - test), ("test", test - train))
            if names
        ]
        raise DataError(
            f"{root}: train and test have different classes ({'; '.join(only)}); both need "
            "the same class folders."
        )
    return tree


def _key(root: Path, tree: dict[str, dict[str, list[Path]]]) -> str:
    digest = hashlib.sha256(f"{CACHE_VERSION}\n{root.resolve()}\n".encode())
    for split, classes in tree.items():
        for name, files in classes.items():
            for file in files:
                stat = file.stat()
                digest.update(
                    f"{split}/{name}/{file.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode()
                )
    return digest.hexdigest()[:24]


def _decode(tree: dict[str, dict[str, list[Path]]]) -> dict[str, np.ndarray]:
    """Every image as uint8 (N, H, W, C) per split, labels per split, and the class names."""
    from PIL import Image, UnidentifiedImageError  # only this data format needs Pillow

    classes = sorted(tree["train"])
    decoded: dict[str, list[tuple[Image.Image, int, Path]]] = {split: [] for split in SPLITS}
    for split, by_class in tree.items():
        for label, name in enumerate(classes):
            for file in by_class[name]:
                try:
                    with Image.open(file) as image:
                        image.load()
                        decoded[split].append((image.copy(), label, file))
                except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
                    raise DataError(f"{file}: cannot be decoded as an image ({error}).") from None
    everything = [entry for split in SPLITS for entry in decoded[split]]
    first_image, _, first_file = everything[0]
    size = first_image.size
    for image, _, file in everything:
        if image.size != size:
            raise DataError(
                f"{file} is {image.size[0]}x{image.size[1]} but {first_file} is "
                f"{size[0]}x{size[1]}; every image needs the same size (resize them first)."
            )
    mode = "L" if all(image.mode in GRAYSCALE_MODES for image, _, _ in everything) else "RGB"
    arrays: dict[str, np.ndarray] = {"classes": np.array(classes, dtype=np.str_)}
    for split in SPLITS:
        pixels = [np.asarray(image.convert(mode), dtype=np.uint8) for image, _, _ in decoded[split]]
        stacked = np.stack(pixels)
        arrays[f"x_{split}"] = stacked[..., None] if mode == "L" else stacked
        arrays[f"y_{split}"] = np.array([label for _, label, _ in decoded[split]], dtype=np.int64)
    return arrays


def _read_cache(path: Path) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None when there is no cache or it cannot be read."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError):
        return None


def _write_cache(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` whole or not at all (a cache is an optimization: failures are ignored)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".partial", delete=False) as file:
            np.savez(file, **arrays)
        Path(file.name).replace(path)
    except OSError:
        pass


def load_image_folder(root: str | os.PathLike) -> Dataset:
    """The data set in the class folders under ``root`` (see the module docstring).

    Raises:
        DataError: a missing split folder, a class folder without images, train and test
            with different classes, an image that does not decode or has another size;
            the message names the folder or file.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(
            f"{root}: no such folder; --dataset folder:PATH needs PATH/train/<class>/*.png "
            "and PATH/test/<class>/*.png (or .jpg)."
        )
    tree = _tree(root)
    cache = cache_dir() / f"folder-{_key(root, tree)}.npz"
    arrays = _read_cache(cache)
    if arrays is None or set(arrays) != {"classes", "x_train", "y_train", "x_test", "y_test"}:
        arrays = _decode(tree)
        _write_cache(cache, arrays)

    def images(split: str) -> torch.Tensor:
        return pixels_to_float(np.ascontiguousarray(arrays[f"x_{split}"].transpose(0, 3, 1, 2)))

    return Dataset(
        name=f"folder:{root.resolve()}",
        train_x=images("train"),
        train_y=labels_to_long(arrays["y_train"]),
        val_x=images("test"),
        val_y=labels_to_long(arrays["y_test"]),
        num_classes=len(arrays["classes"]),
        source=str(root.resolve()),
    )
