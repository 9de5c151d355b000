"""Writers of small dataset files in the published formats (IDX, Keras npz, CIFAR-10 binary
and pickled), built byte by byte with struct, numpy and pickle: the tests' independent oracle
for normlab.data, and small data sets for end-to-end runs of the lab."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np

IDX_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
CIFAR_BATCHES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5")


def idx_bytes(array: np.ndarray, type_code: int = 0x08, stored: str = "u1") -> bytes:
    """The IDX encoding of ``array``: 00 00 <type> <ndim>, big-endian dims, big-endian values."""
    header = struct.pack(">BBBB", 0, 0, type_code, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(stored).tobytes(order="C")


def write_file(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path``, gzip-compressed when the name ends in .gz."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def mnist_arrays(seed: int, n_train: int = 5, n_val: int = 3) -> dict[str, np.ndarray]:
    """Random uint8 images (with 0 and 255 present) and labels 0..9, keyed as in Keras' npz."""
    rng = np.random.default_rng(seed)
    arrays = {
        "x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "y_train": rng.integers(0, 10, n_train, dtype=np.uint8),
        "x_test": rng.integers(0, 256, (n_val, 28, 28), dtype=np.uint8),
        "y_test": rng.integers(0, 10, n_val, dtype=np.uint8),
    }
    arrays["x_train"][0, 0, :2] = (0, 255)
    arrays["y_train"][:2] = (0, 9)
    return arrays


def write_mnist_idx(directory: Path, arrays: dict[str, np.ndarray], gz: bool = False) -> None:
    suffix = ".gz" if gz else ""
    for name, key in zip(IDX_NAMES, ("x_train", "y_train", "x_test", "y_test"), strict=True):
        write_file(directory / f"{name}{suffix}", idx_bytes(arrays[key]))


def write_mnist_npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def cifar_arrays(seed: int, n: int = 3) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Six batches of n random (3, 32, 32) uint8 images and labels 0..9."""
    rng = np.random.default_rng(seed)
    return {
        name: (
            rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8),
            rng.integers(0, 10, n, dtype=np.uint8),
        )
        for name in (*CIFAR_BATCHES, "test_batch")
    }


def cifar_record(label: int, image: np.ndarray) -> bytes:
    """One binary record: the label byte, then 1024 R, 1024 G, 1024 B bytes, rows in order."""
    planes = b"".join(
        bytes(int(image[channel, row, col]) for col in range(32))
        for channel in range(3)
        for row in range(32)
    )
    return struct.pack("B", label) + planes


def write_cifar_bin(parent: Path, batches: dict, folder: str = "cifar-10-batches-bin") -> Path:
    directory = parent / folder
    for name, (images, labels) in batches.items():
        records = b"".join(cifar_record(int(y), x) for x, y in zip(images, labels, strict=True))
        write_file(directory / f"{name}.bin", records)
    return directory


def write_cifar_py(parent: Path, batches: dict, folder: str = "cifar-10-batches-py") -> Path:
    directory = parent / folder
    for name, (images, labels) in batches.items():
        batch = {
            b"batch_label": name.encode(),
            b"data": images.reshape(len(images), 3072),
            b"labels": [int(y) for y in labels],
            b"filenames": [f"{i}.png".encode() for i in range(len(labels))],
        }
        write_file(directory / name, pickle.dumps(batch, protocol=2))
    return directory
