"""The user's own images in class folders: ``--dataset folder:PATH``.

The layout is torchvision's ``ImageFolder``, one tree per split::

    PATH/train/<class>/*.png|*.jpg|*.jpeg
    PATH/test/<class>/...

Classes are the folder names, numbered in sorted order; ``train`` and ``test``
must have the same classes, at least two, and every class folder at least one
image. A folder whose name starts with '.' is refused rather than skipped (it
is hidden, yet torchvision would read it as a class), as are symbolic links that
loop or point to nothing. Every image must have the same height and width
(resize them beforehand). Images that are all grayscale give (N, 1, H, W)
tensors, otherwise every image is converted to RGB, (N, 3, H, W). Pixels are
scaled to [0, 1] by the range of their type, as torchvision's
``to_dtype(..., scale=True)`` does: 8-bit pixels are divided by 255, 16-bit
ones (a 16-bit grayscale PNG) by 65535, so that a white pixel is 1.0 at either
depth; Pillow's ``convert("L")`` would instead clip 16-bit values above 255.

Decoding is paid once: the decoded arrays are cached as an .npz (read back
with ``allow_pickle=False``) in :func:`cache_dir`, under a key made of every
image's path, size and modification time, so the runs of a sweep, its worker
processes and later sweeps read the cache, and any change to the tree decodes
it again. Pillow (a dependency of matplotlib) decodes the images.
"""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from normlab.data.dataset import DataError, Dataset, labels_to_long, pixels_to_float
from normlab.data.npz_archive import read_arrays
from normlab_extras import require_lab_extra

SPLITS = ("train", "test")
EXTENSIONS = (".png", ".jpg", ".jpeg")
CACHE_VERSION = 2
CACHE_KEYS = ("classes", "x_train", "y_train", "x_test", "y_test")
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # "I": 32-bit, as older Pillow read
GRAYSCALE_MODES = ("1", "L", "LA", *SIXTEEN_BIT_MODES)
SIXTEEN_BIT_MAX = 65535


def cache_dir() -> Path:
    """Where decoded image folders are cached: ``$NORMLAB_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/normlab``, else ``~/.cache/normlab``."""
    explicit = os.environ.get("NORMLAB_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "normlab"


def _link_problem(path: Path) -> str | None:
    """What is wrong with ``path`` when it is a symbolic link that cannot be followed; None
    when it is no link or one that can."""
    if not path.is_symlink():
        return None
    try:
        path.stat()
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "loops"
        if error.errno == errno.ENOENT:
            return "points to nothing"
        return f"cannot be followed ({error.strerror or error})"
    return None


def _entries(folder: Path) -> list[Path]:
    try:
        return sorted(folder.iterdir())
    except OSError as error:
        raise DataError(f"{folder}: cannot be read ({error.strerror or error}).") from None


def _class_folders(folder: Path) -> list[Path]:
    """The class folders in ``folder``; files beside them are not classes."""
    classes = []
    for entry in _entries(folder):
        problem = _link_problem(entry)
        if problem:
            raise DataError(
                f"{entry}: a symbolic link that {problem}; remove it, or point it at a class "
                "folder."
            )
        if not entry.is_dir():
            continue
        if entry.name.startswith("."):
            raise DataError(
                f"{entry}: a class folder whose name starts with '.', which file browsers hide "
                f"(as .ipynb_checkpoints); rename it if it is a class, else move it out of "
                f"{folder}."
            )
        classes.append(entry)
    return classes


def _images(directory: Path) -> list[Path]:
    """The image files in the class folder ``directory``, sorted; other files are not images."""
    images = []
    for entry in _entries(directory):
        if entry.suffix.lower() not in EXTENSIONS:
            continue
        problem = _link_problem(entry)
        if problem:
            raise DataError(
                f"{entry}: a symbolic link that {problem}; remove it, or point it at an image."
            )
        if not entry.is_file():
            raise DataError(
                f"{entry}: named as an image but not a regular file (a folder, a pipe or a "
                "device); remove or rename it."
            )
        images.append(entry)
    return images


def _class_files(root: Path, split: str) -> dict[str, list[Path]]:
    """{class: its image files, sorted} of ``root/split``."""
    folder = root / split
    if not folder.is_dir():
        raise DataError(
            f"{folder}: no such folder; `data` folder:PATH needs PATH/train/<class>/*.png "
            "and PATH/test/<class>/*.png (or .jpg)."
        )
    classes = _class_folders(folder)
    if not classes:
        raise DataError(
            f"{folder} has no class folders; put each class's images in {folder}/<class>/."
        )
    files = {}
    for directory in classes:
        images = _images(directory)
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
    if len(train) < 2:
        raise DataError(
            f"{root / 'train'} has one class folder only ({', '.join(train)}); a classifier "
            "needs at least two classes: add a folder of images for another class."
        )
    return tree


def _key(root: Path, tree: dict[str, dict[str, list[Path]]]) -> str:
    # os.fsencode: a name that is not UTF-8 is kept as the bytes the file system holds.
    digest = hashlib.sha256(os.fsencode(f"{CACHE_VERSION}\n{root.resolve()}\n"))
    for split, classes in tree.items():
        for name, files in classes.items():
            for file in files:
                stat = file.stat()
                digest.update(
                    os.fsencode(f"{split}/{name}/{file.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n")
                )
    return digest.hexdigest()[:24]


def _pixels(image, file: Path, mode: str) -> np.ndarray:
    """(H, W, C) pixels of ``image`` in ``mode`` ("L" or "RGB"): uint16 for a 16-bit image,
    else uint8."""
    if image.mode in SIXTEEN_BIT_MODES:
        values = np.asarray(image)
        low, high = int(values.min()), int(values.max())
        if low < 0 or high > SIXTEEN_BIT_MAX:
            raise DataError(
                f"{file}: 32-bit integer pixels from {low} to {high}, beyond the 0..65535 of "
                "16-bit images; store 8-bit or 16-bit images."
            )
        gray = values.astype(np.uint16)[..., None]
        return gray if mode == "L" else np.repeat(gray, 3, axis=-1)
    pixels = np.asarray(image.convert(mode), dtype=np.uint8)
    return pixels[..., None] if mode == "L" else pixels


def _open_image(file: Path):
    require_lab_extra("reading images from a folder", ["PIL"])
    from PIL import Image, UnidentifiedImageError  # only this data format needs Pillow

    try:
        with Image.open(file) as image:
            image.load()
            return image.copy()
    except Image.DecompressionBombError as error:
        raise DataError(
            f"{file}: too large to decode safely ({error}); resize the images first (they "
            "all need one size, and small ones train faster)."
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DataError(f"{file}: cannot be decoded as an image ({error}).") from None


def _decode(tree: dict[str, dict[str, list[Path]]]) -> dict[str, np.ndarray]:
    """Every image as (N, H, W, C) per split, uint16 when any image is 16-bit (8-bit ones
    then times 257, the same fraction of the range), else uint8; labels per split; the
    class names."""
    classes = sorted(tree["train"])
    decoded = {
        split: [
            (_open_image(file), label, file)
            for label, name in enumerate(classes)
            for file in tree[split][name]
        ]
        for split in SPLITS
    }
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
    deep = any(image.mode in SIXTEEN_BIT_MODES for image, _, _ in everything)
    arrays: dict[str, np.ndarray] = {"classes": np.array(classes, dtype=np.str_)}
    for split in SPLITS:
        pixels = [_pixels(image, file, mode) for image, _, file in decoded[split]]
        if deep:
            pixels = [p if p.dtype == np.uint16 else p.astype(np.uint16) * 257 for p in pixels]
        arrays[f"x_{split}"] = np.stack(pixels)
        arrays[f"y_{split}"] = np.array([label for _, label, _ in decoded[split]], dtype=np.int64)
    return arrays


def _read_cache(path: Path) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None when there is no cache or it cannot be read."""
    if not path.is_file():
        return None
    try:
        arrays = read_arrays(path, CACHE_KEYS)
    except DataError:
        return None
    pixels_ok = all(arrays[f"x_{split}"].dtype in (np.uint8, np.uint16) for split in SPLITS)
    return arrays if pixels_ok else None


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
        DataError: a missing split folder, a class folder without images, a hidden class
            folder, a symbolic link that loops or points to nothing, train and test with
            different classes or only one, an image that does not decode, is too large to
            decode safely or has another size; the message names the folder or file.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(
            f"{root}: no such folder; `data` folder:PATH needs PATH/train/<class>/*.png "
            "and PATH/test/<class>/*.png (or .jpg)."
        )
    tree = _tree(root)
    cache = cache_dir() / f"folder-{_key(root, tree)}.npz"
    arrays = _read_cache(cache)
    if arrays is None:
        arrays = _decode(tree)
        _write_cache(cache, arrays)

    def images(split: str) -> torch.Tensor:
        pixels = arrays[f"x_{split}"]
        top = SIXTEEN_BIT_MAX if pixels.dtype == np.uint16 else 255
        return pixels_to_float(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)), top)

    return Dataset(
        name=f"folder:{root.resolve()}",
        train_x=images("train"),
        train_y=labels_to_long(arrays["y_train"]),
        val_x=images("test"),
        val_y=labels_to_long(arrays["y_test"]),
        num_classes=len(arrays["classes"]),
        source=str(root.resolve()),
    )
