"""Data files that load into something no run can use are refused when loading, naming the file;
a CIFAR-10 python batch pickled with any protocol numpy writes loads, and nothing more is allowed.
Oracles: the arrays the files were written from (numpy, pickle, struct)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from data_fixtures import (
    IDX_NAMES,
    cifar_arrays,
    idx_bytes,
    mnist_arrays,
    write_cifar_py,
    write_file,
    write_mnist_idx,
    write_mnist_npz,
)
from normlab.data import DataError, Dataset, load_dataset


def assert_matches_cifar(dataset, batches) -> None:
    train = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    assert torch.equal(dataset.train_x, torch.from_numpy(train).float() / 255)
    assert torch.equal(dataset.val_x, torch.from_numpy(batches["test_batch"][0]).float() / 255)
    assert dataset.val_y.tolist() == batches["test_batch"][1].tolist()


# --- empty splits are refused when loading, naming the file --------------------


@pytest.mark.parametrize("split", ["train", "t10k"])
def test_idx_files_with_zero_images_are_refused_naming_the_file(tmp_path: Path, split) -> None:
    write_mnist_idx(tmp_path, mnist_arrays(seed=1))
    images, labels = (name for name in IDX_NAMES if name.startswith(split))
    write_file(tmp_path / images, idx_bytes(np.zeros((0, 28, 28), np.uint8)))
    write_file(tmp_path / labels, idx_bytes(np.zeros((0,), np.uint8)))
    with pytest.raises(DataError, match="no images") as info:
        load_dataset("mnist", tmp_path)
    assert str(tmp_path / images) in str(info.value)


def test_an_npz_with_an_empty_split_is_refused_naming_the_array(tmp_path: Path) -> None:
    arrays = mnist_arrays(seed=2)
    arrays["x_test"], arrays["y_test"] = arrays["x_test"][:0], arrays["y_test"][:0]
    path = write_mnist_npz(tmp_path / "mnist.npz", arrays)
    with pytest.raises(DataError, match="no images") as info:
        load_dataset("mnist", path)
    assert f"{path}[x_test]" in str(info.value)


def test_a_cifar_python_batch_with_zero_images_is_refused_naming_the_file(tmp_path) -> None:
    batches = cifar_arrays(seed=3)
    images, labels = batches["test_batch"]
    batches["test_batch"] = (images[:0], labels[:0])
    directory = write_cifar_py(tmp_path, batches)
    with pytest.raises(DataError, match="no images") as info:
        load_dataset("cifar10", directory)
    assert str(directory / "test_batch") in str(info.value)


@pytest.mark.parametrize("split", ["train", "val"])
def test_a_dataset_with_an_empty_split_is_refused(split) -> None:
    x, y = torch.zeros(4, 1, 2, 2), torch.zeros(4, dtype=torch.int64)
    parts = {"train_x": x, "train_y": y, "val_x": x, "val_y": y}
    parts[f"{split}_x"], parts[f"{split}_y"] = x[:0], y[:0]
    with pytest.raises(ValueError, match=f"Dataset.{split}_x has no images"):
        Dataset(name="digits", num_classes=10, source="test", **parts)


# --- every pickle protocol numpy writes, and nothing more ------------------------


def _repickle(directory: Path, protocol: int, layout=np.ascontiguousarray) -> None:
    """Load each batch as a user would and pickle it again with ``protocol``."""
    for path in directory.iterdir():
        with path.open("rb") as file:
            batch = pickle.load(file, encoding="bytes")
        batch[b"data"] = layout(batch[b"data"])
        path.write_bytes(pickle.dumps(batch, protocol=protocol))


@pytest.mark.parametrize("protocol", [3, 4, 5])
@pytest.mark.parametrize(
    "layout", [np.ascontiguousarray, np.asfortranarray], ids=["C-order", "F-order"]
)
def test_cifar_python_batches_repickled_with_any_protocol_load(tmp_path, protocol, layout):
    batches = cifar_arrays(seed=4)
    directory = write_cifar_py(tmp_path, batches)
    _repickle(directory, protocol, layout)
    if protocol == 5:
        assert b"_frombuffer" in (directory / "test_batch").read_bytes()
    assert_matches_cifar(load_dataset("cifar10", directory), batches)


def _frombuffer_pickle(*args) -> bytes:
    """A protocol-5 pickle of the dict CIFAR-10 needs whose b'data' is
    numpy._core.numeric._frombuffer(*args)."""

    class Call:
        def __reduce__(self):
            return (np._core.numeric._frombuffer, args)

    return pickle.dumps({b"data": Call(), b"labels": [1]}, protocol=5)


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        ((b"\0" * 8, np.dtype(object), (1,), "C"), "dtype"),
        ((b"\0" * 3072, np.dtype(np.uint8), (1, 3072), "C", (0, 1, 2)), "axis order"),
        (("not bytes", np.dtype(np.uint8), (1,), "C"), "buffer"),
        ((b"\0" * 8, np.dtype(np.uint8), (8,), "Q"), "order"),
    ],
)
def test_frombuffer_is_allowed_only_with_the_arguments_numpy_writes(tmp_path, args, problem):
    directory = write_cifar_py(tmp_path, cifar_arrays(seed=5))
    path = write_file(directory / "test_batch", _frombuffer_pickle(*args))
    with pytest.raises(DataError, match="not a readable CIFAR-10 python batch") as info:
        load_dataset("cifar10", directory)
    assert str(path) in str(info.value) and problem in str(info.value)


@pytest.mark.parametrize("name", ["fromstring", "frombuffer", "ones", "_frombuffer_evil"])
def test_other_names_beside_frombuffer_are_refused(tmp_path, name) -> None:
    directory = write_cifar_py(tmp_path, cifar_arrays(seed=6))
    gadget = f"cnumpy._core.numeric\n{name}\n(S'x'\ntR.".encode()
    write_file(directory / "data_batch_1", gadget)
    with pytest.raises(DataError, match=f"refusing to load 'numpy._core.numeric.{name}'"):
        load_dataset("cifar10", directory)


def test_bytes_is_allowed_only_empty(tmp_path) -> None:
    directory = write_cifar_py(tmp_path, cifar_arrays(seed=7))
    write_file(directory / "data_batch_2", b"\x80\x02c__builtin__\nbytes\nJ\x00\xe1\xf5\x05\x85R.")
    with pytest.raises(DataError, match=r"only bytes\(\) is allowed"):
        load_dataset("cifar10", directory)
