"""CIFAR-10 from its local binary or python batches; never downloads.

Train is data_batch_1..5 (50000 images), validation is test_batch (10000),
(N, 3, 32, 32) images with labels 0..9. Each image is 3072 bytes: 1024 red,
1024 green, then 1024 blue, each a row-major 32x32 plane.

The python batches are pickles. They are read only through
:class:`NumpyArrayUnpickler`, which can build numpy arrays and nothing else,
so a tampered file cannot run code.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from normlab.data.dataset import (
    DataError,
    Dataset,
    check_labels,
    labels_to_long,
    pixels_to_float,
)
from normlab.data.locations import keras_datasets_dir, torchvision_roots

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct

BINARY_DIR = "cifar-10-batches-bin"
PYTHON_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
VAL_BATCH = "test_batch"
IMAGE_BYTES = 3 * 32 * 32
RECORD_BYTES = 1 + IMAGE_BYTES  # binary format: 1 label byte, then the image
NUM_CLASSES = 10
_REPLACE = "Download or copy the file again."


def load_cifar10(data_dir: str | os.PathLike | None = None) -> Dataset:
    """Load CIFAR-10 from local batch files.

    Args:
        data_dir: the batches directory itself (``cifar-10-batches-bin``
            holding data_batch_1.bin..data_batch_5.bin and test_batch.bin, or
            ``cifar-10-batches-py`` holding data_batch_1..data_batch_5 and
            test_batch), or its parent. Where both formats are present the
            binary one is read (no unpickling needed). None searches, in order:
            ``~/.keras/datasets/cifar-10-batches-py`` (older Keras),
            ``~/.keras/datasets/cifar-10-batches-py-target/cifar-10-batches-py``
            (Keras 3; ``~/.keras`` is ``$KERAS_HOME`` when set), then the
            torchvision roots ``./data`` and ``~/data`` (binary, then python).

    Returns:
        Dataset with train (50000, 3, 32, 32) and val (10000, 3, 32, 32)
        float32 images in [0, 1] (pixels / 255), int64 labels 0..9.

    Raises:
        DataError: no complete set of batches was found (the message says
            what to put where), or a batch is truncated, corrupt, or holds
            anything but numpy arrays and labels.
    """
    places = _cache_places() if data_dir is None else _places_in(Path(data_dir).expanduser())
    partial: list[str] = []
    for directory, binary in places:
        names = _batch_names(binary)
        present = [(directory / name).is_file() for name in names]
        if all(present):
            return _load_batches(directory, binary)
        if any(present):
            missing = [name for name, found in zip(names, present, strict=True) if not found]
            partial.append(f"{directory} has some of the batches but lacks {', '.join(missing)}")
    raise DataError(_not_found_message(places, partial, data_dir))


def _batch_names(binary: bool) -> list[str]:
    suffix = ".bin" if binary else ""
    return [f"{name}{suffix}" for name in (*TRAIN_BATCHES, VAL_BATCH)]


def _cache_places() -> list[tuple[Path, bool]]:
    """(directory, is_binary) where Keras and torchvision tutorials leave CIFAR-10, in order."""
    keras = keras_datasets_dir()
    places = [(keras / PYTHON_DIR, False), (keras / f"{PYTHON_DIR}-target" / PYTHON_DIR, False)]
    for root in torchvision_roots():
        places += [(root / BINARY_DIR, True), (root / PYTHON_DIR, False)]
    return places


def _places_in(data_dir: Path) -> list[tuple[Path, bool]]:
    """(directory, is_binary) that ``data_dir`` may mean: itself or its batches subdirectory."""
    if not data_dir.is_dir():
        problem = "is a file, not a directory" if data_dir.exists() else "does not exist"
        raise DataError(
            f"data directory {data_dir} {problem}. Pass the CIFAR-10 batches directory "
            f"({BINARY_DIR} or {PYTHON_DIR}) or the directory that contains it."
        )
    return [
        (data_dir, True),
        (data_dir, False),
        (data_dir / BINARY_DIR, True),
        (data_dir / PYTHON_DIR, False),
    ]


def _load_batches(directory: Path, binary: bool) -> Dataset:
    read = _read_binary_batch if binary else _read_python_batch
    names = _batch_names(binary)
    train = [read(directory / name) for name in names[:-1]]
    val_images, val_labels = read(directory / names[-1])
    return Dataset(
        name="cifar10",
        train_x=pixels_to_float(np.concatenate([images for images, _ in train])),
        train_y=labels_to_long(np.concatenate([labels for _, labels in train])),
        val_x=pixels_to_float(val_images),
        val_y=labels_to_long(val_labels),
        num_classes=NUM_CLASSES,
        source=str(directory.resolve()),
    )


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise DataError(f"cannot read {path}: {error}.") from error


def _read_binary_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A binary batch -> (n, 3, 32, 32) uint8 images, (n,) uint8 labels (read-only views).

    Raises:
        DataError: the file is empty, not a whole number of 3073-byte
            records, or has a label outside 0..9.
    """
    data = _read_bytes(path)
    if not data or len(data) % RECORD_BYTES:
        raise DataError(
            f"{path} is truncated: {len(data)} bytes is not a whole, nonzero number of "
            f"{RECORD_BYTES}-byte records (1 label byte + {IMAGE_BYTES} pixel bytes); "
            f"{len(data) % RECORD_BYTES} bytes are left over. {_REPLACE}"
        )
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, RECORD_BYTES)
    labels = records[:, 0]
    check_labels(labels_to_long(labels), NUM_CLASSES, str(path), _REPLACE)
    return records[:, 1:].reshape(-1, 3, 32, 32), labels


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """What a Python 3 protocol-2 pickle calls to rebuild bytes: _codecs.encode(text, 'latin1')."""
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"bytes encoded as {encoding!r}, expected 'latin1'")
    return text.encode("latin1")


def _empty_bytes(*args: Any) -> bytes:
    """What a protocol-2 pickle calls for ``b""`` (an empty array's data): bytes()."""
    if args:
        raise pickle.UnpicklingError(f"bytes{args!r} called in a pickle; only bytes() is allowed")
    return b""


def _array_from_buffer(
    buffer: Any, dtype: Any, shape: Any, order: Any, axis_order: Any = None
) -> np.ndarray:
    """What a protocol-5 pickle of a numpy array calls (numpy's ``_frombuffer``), with its
    arguments checked to be what numpy writes: a bytes-like buffer, a dtype without Python
    objects, a shape of non-negative ints, an order of C, F or K, and for K a permutation
    of the axes."""
    if not isinstance(buffer, bytes | bytearray | pickle.PickleBuffer):
        raise pickle.UnpicklingError(f"array buffer is a {type(buffer).__name__}, not bytes")
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise pickle.UnpicklingError(f"array dtype {dtype!r} is not a plain numeric dtype")
    if not isinstance(shape, tuple) or not all(
        isinstance(size, int) and size >= 0 for size in shape
    ):
        raise pickle.UnpicklingError(f"array shape {shape!r} is not a tuple of sizes")
    if order not in ("C", "F", "K"):
        raise pickle.UnpicklingError(f"array order {order!r} is not C, F or K")
    if axis_order is not None and sorted(axis_order) != list(range(len(shape))):
        raise pickle.UnpicklingError(
            f"array axis order {axis_order!r} is not a permutation of the {len(shape)} axes"
        )
    array = np.frombuffer(buffer, dtype=dtype)
    if order == "K" and axis_order is not None:
        return array.reshape(shape, order="C").transpose(axis_order)
    return array.reshape(shape, order=order)


# Exactly the globals a pickled numpy array needs, numpy 1 and numpy 2 spellings:
# _reconstruct for protocols 0-4, _frombuffer for protocol 5, plus the latin1 bytes
# constructor of Python 3 protocol-2 pickles and its empty-bytes case.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _array_from_buffer,
    ("numpy._core.numeric", "_frombuffer"): _array_from_buffer,
    ("_codecs", "encode"): _latin1_encode,
    ("__builtin__", "bytes"): _empty_bytes,
    ("builtins", "bytes"): _empty_bytes,
}


class NumpyArrayUnpickler(pickle.Unpickler):
    """Unpickler that builds numpy arrays, lists, dicts and scalars, and refuses other globals.

    Strings pickled by Python 2 come back as bytes (``encoding="bytes"``), as
    the CIFAR-10 python batches need.

    Raises:
        DataError: on load, when the pickle references any other global
            (``os.system``, ``builtins.eval``, ...); nothing is called first.
    """

    def __init__(self, file: BinaryIO, path: str | os.PathLike) -> None:
        super().__init__(file, encoding="bytes")
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        allowed = _ALLOWED_GLOBALS.get((module, name))
        if allowed is None:
            raise DataError(
                f"refusing to load '{module}.{name}' from {self.path}: only numpy arrays are "
                "allowed in a CIFAR-10 python batch. The file is corrupt or was tampered "
                "with; download it again from the official CIFAR-10 page."
            )
        return allowed


def _read_python_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A python batch -> (n, 3, 32, 32) uint8 images, (n,) int64 labels.

    Raises:
        DataError: the pickle is corrupt or truncated, references a global
            other than numpy's array constructors, or is not a dict with
            b"data" (n x 3072 uint8) and b"labels" (n ints in 0..9).
    """
    try:
        with path.open("rb") as file:
            batch = NumpyArrayUnpickler(file, path).load()
    except DataError:
        raise
    except OSError as error:
        raise DataError(f"cannot read {path}: {error}.") from error
    except Exception as error:  # any failure to unpickle means a damaged file
        raise DataError(
            f"{path} is not a readable CIFAR-10 python batch: unpickling failed with "
            f"{type(error).__name__}: {error}. It is corrupt or truncated. {_REPLACE}"
        ) from error
    shape_fix = (
        f"A CIFAR-10 python batch is a dict with b'data' (N x {IMAGE_BYTES} uint8) and "
        f"b'labels' (N ints). {_REPLACE}"
    )
    if not isinstance(batch, dict):
        raise DataError(f"{path} holds a {type(batch).__name__}, not a dict. {shape_fix}")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        described = (
            f"{data.dtype} array of shape {data.shape}"
            if isinstance(data, np.ndarray)
            else type(data).__name__
        )
        raise DataError(f"{path} has {described} under b'data'. {shape_fix}")
    if data.shape[1] != IMAGE_BYTES:
        raise DataError(f"{path} has data of shape {data.shape}. {shape_fix}")
    if data.shape[0] == 0:
        raise DataError(f"{path} holds no images (data of shape {data.shape}). {_REPLACE}")
    try:
        label_array = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as error:
        raise DataError(f"{path} has unreadable b'labels' ({error}). {shape_fix}") from error
    if label_array.shape != (data.shape[0],):
        raise DataError(
            f"{path} has {data.shape[0]} images but b'labels' of shape {label_array.shape}; "
            f"each image needs one label. {_REPLACE}"
        )
    check_labels(labels_to_long(label_array), NUM_CLASSES, str(path), _REPLACE)
    return data.reshape(-1, 3, 32, 32), label_array


def _not_found_message(
    places: list[tuple[Path, bool]], partial: list[str], data_dir: str | os.PathLike | None
) -> str:
    where = "in the usual caches" if data_dir is None else f"in data directory {data_dir}"
    looked = "\n".join(
        f"  {directory}/ ({'binary' if binary else 'python'} batches)"
        for directory, binary in places
    )
    notes = "".join(f"\n  ({note})" for note in partial)
    return (
        f"CIFAR-10 batches not found {where}. Looked in:\n{looked}{notes}\n"
        f"To fix it, unpack the binary version (directory {BINARY_DIR} with "
        f"{', '.join(_batch_names(True))}) or the python version (directory {PYTHON_DIR} "
        f"with {', '.join(_batch_names(False))}) from the CIFAR-10 page, then pass that "
        "directory or its parent: `normlab compare --dataset cifar10 --data-dir DIR`, or "
        "load_dataset('cifar10', data_dir=DIR). Nothing is downloaded."
    )
