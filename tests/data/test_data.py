"""normlab.data: every loader against files written here by an independent writer.

The fixture writers (tests/data_fixtures.py) build IDX, .npz and CIFAR-10 files byte by byte from
the published formats (struct, numpy, pickle), so the oracle for each loaded
tensor is the array that was written, scaled. Nothing here downloads.
"""

from __future__ import annotations

import gzip
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from data_fixtures import (
    CIFAR_BATCHES,
    IDX_NAMES,
    cifar_arrays,
    idx_bytes,
    mnist_arrays,
    write_cifar_bin,
    write_cifar_py,
    write_file,
    write_mnist_idx,
    write_mnist_npz,
)
from normlab.data import DATASETS, DataError, Dataset, dataset_name, load_dataset, read_idx

REAL_MNIST = Path(__file__).resolve().parents[3] / "shared" / "data" / "mnist"


def scaled(images: np.ndarray, max_value: float = 255.0) -> torch.Tensor:
    """uint8 images as the loaders must return them: float32 in [0, 1]; (N, H, W) gains C=1."""
    if images.ndim == 3:
        images = images[:, None]
    return torch.from_numpy(images.astype(np.float32) / np.float32(max_value))


def assert_matches_mnist(dataset: Dataset, arrays: dict[str, np.ndarray], name: str) -> None:
    assert dataset.name == name
    assert dataset.num_classes == 10
    assert dataset.input_shape == (1, 28, 28)
    assert torch.equal(dataset.train_x, scaled(arrays["x_train"]))
    assert torch.equal(dataset.val_x, scaled(arrays["x_test"]))
    assert torch.equal(dataset.train_y, torch.from_numpy(arrays["y_train"].astype(np.int64)))
    assert torch.equal(dataset.val_y, torch.from_numpy(arrays["y_test"].astype(np.int64)))


def assert_matches_cifar(dataset: Dataset, batches: dict) -> None:
    train_images = np.concatenate([batches[name][0] for name in CIFAR_BATCHES])
    train_labels = np.concatenate([batches[name][1] for name in CIFAR_BATCHES])
    assert dataset.name == "cifar10"
    assert dataset.num_classes == 10
    assert dataset.input_shape == (3, 32, 32)
    assert dataset.train_x.shape == (15, 3, 32, 32)
    assert dataset.val_x.shape == (3, 3, 32, 32)
    assert torch.equal(dataset.train_x, scaled(train_images))
    assert torch.equal(dataset.train_y, torch.from_numpy(train_labels.astype(np.int64)))
    assert torch.equal(dataset.val_x, scaled(batches["test_batch"][0]))
    assert torch.equal(dataset.val_y, torch.from_numpy(batches["test_batch"][1].astype(np.int64)))


@pytest.fixture
def empty_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HOME and the current directory point at fresh empty folders; KERAS_HOME is unset."""
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("KERAS_HOME", raising=False)
    monkeypatch.chdir(cwd)
    assert Path.home() == home
    return home


# --- names -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spelling", "canonical"),
    [
        ("digits", "digits"),
        ("DIGITS", "digits"),
        ("MNIST", "mnist"),
        ("Fashion_MNIST", "fashion-mnist"),
        ("fashion mnist", "fashion-mnist"),
        ("FashionMNIST", "fashion-mnist"),
        ("CIFAR-10", "cifar10"),
        ("cifar_10", "cifar10"),
    ],
)
def test_names_ignore_case_dashes_and_underscores(spelling: str, canonical: str) -> None:
    assert dataset_name(spelling) == canonical


def test_datasets_lists_the_four_names() -> None:
    assert DATASETS == ("digits", "mnist", "fashion-mnist", "cifar10")


def test_unknown_name_suggests_the_closest_and_lists_all() -> None:
    with pytest.raises(ValueError, match="'mnist'") as info:
        load_dataset("mnsit")
    assert "mnsit" in str(info.value)
    for name in DATASETS:
        assert name in str(info.value)


def test_non_string_name_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown data set"):
        load_dataset(42)  # type: ignore[arg-type]


def test_data_error_is_a_value_error() -> None:
    assert issubclass(DataError, ValueError)


# --- digits ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits")


def test_digits_shapes_dtypes_and_range(digits: Dataset) -> None:
    assert digits.train_x.shape == (1437, 1, 8, 8)
    assert digits.val_x.shape == (360, 1, 8, 8)
    assert digits.train_y.shape == (1437,)
    assert digits.val_y.shape == (360,)
    assert digits.train_x.dtype == digits.val_x.dtype == torch.float32
    assert digits.train_y.dtype == digits.val_y.dtype == torch.int64
    for images in (digits.train_x, digits.val_x):
        assert images.min() >= 0 and images.max() <= 1
    assert digits.train_x.max() == 1  # 16 / 16
    assert digits.num_classes == 10
    assert digits.input_shape == (1, 8, 8)
    assert digits.source == "scikit-learn (bundled)"
    assert set(digits.train_y.tolist()) == set(range(10))


def test_digits_split_is_sklearns_stratified_split(digits: Dataset) -> None:
    images, labels = load_digits(return_X_y=True)
    assert len(digits.train_y) + len(digits.val_y) == len(labels) == 1797
    train_x, val_x, train_y, val_y = train_test_split(
        images, labels, test_size=0.2, stratify=labels, random_state=0
    )
    assert torch.equal(digits.train_x, scaled(train_x.reshape(-1, 1, 8, 8), 16.0))
    assert torch.equal(digits.val_x, scaled(val_x.reshape(-1, 1, 8, 8), 16.0))
    assert torch.equal(digits.train_y, torch.from_numpy(train_y.astype(np.int64)))
    assert torch.equal(digits.val_y, torch.from_numpy(val_y.astype(np.int64)))


def test_digits_validation_holds_a_fifth_of_each_class(digits: Dataset) -> None:
    total = torch.bincount(torch.cat([digits.train_y, digits.val_y]), minlength=10)
    in_val = torch.bincount(digits.val_y, minlength=10)
    assert ((in_val - 0.2 * total).abs() <= 1).all(), (in_val, total)


def test_digits_are_the_same_on_every_call(digits: Dataset, tmp_path: Path) -> None:
    again = load_dataset("Digits", data_dir=tmp_path)  # data_dir is ignored for digits
    for field in ("train_x", "train_y", "val_x", "val_y"):
        assert torch.equal(getattr(again, field), getattr(digits, field))


def test_dataset_repr_is_short(digits: Dataset) -> None:
    text = repr(digits)
    assert "train=1437" in text and "val=360" in text and len(text) < 200


def test_dataset_rejects_tensors_of_the_wrong_kind() -> None:
    images, labels = torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.int64)
    with pytest.raises(ValueError, match="float32"):
        Dataset("x", images.double(), labels, images, labels, 10, "test")
    with pytest.raises(ValueError, match="one label per image"):
        Dataset("x", images, labels[:3], images, labels, 10, "test")
    with pytest.raises(ValueError, match="same"):
        Dataset("x", images, labels, torch.zeros(4, 1, 9, 9), labels, 10, "test")


# --- IDX -------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
def test_read_idx_round_trips_uint8(tmp_path: Path, gz: bool) -> None:
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    path = write_file(tmp_path / ("images.gz" if gz else "images"), idx_bytes(images))
    loaded = read_idx(path)
    assert loaded.dtype == torch.uint8
    assert torch.equal(loaded, torch.from_numpy(images))


def test_read_idx_detects_gzip_by_content(tmp_path: Path) -> None:
    labels = np.arange(10, dtype=np.uint8)
    path = tmp_path / "labels-without-suffix"
    path.write_bytes(gzip.compress(idx_bytes(labels)))
    assert torch.equal(read_idx(path), torch.from_numpy(labels))


@pytest.mark.parametrize(
    ("type_code", "stored", "dtype"),
    [
        (0x09, "i1", np.int8),
        (0x0B, ">i2", np.int16),
        (0x0C, ">i4", np.int32),
        (0x0D, ">f4", np.float32),
        (0x0E, ">f8", np.float64),
    ],
)
def test_read_idx_decodes_big_endian_types(
    tmp_path: Path, type_code: int, stored: str, dtype: type
) -> None:
    values = (np.arange(24).reshape(2, 3, 4) - 7).astype(dtype) * 3
    path = write_file(tmp_path / "values", idx_bytes(values, type_code, stored))
    assert torch.equal(read_idx(path), torch.from_numpy(values))


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
def test_mnist_idx_directory_round_trips(tmp_path: Path, gz: bool) -> None:
    arrays = mnist_arrays(seed=1)
    write_mnist_idx(tmp_path, arrays, gz=gz)
    dataset = load_dataset("mnist", data_dir=tmp_path)
    assert_matches_mnist(dataset, arrays, "mnist")
    assert dataset.source == str(tmp_path.resolve())
    assert dataset.train_x.min() == 0 and dataset.train_x.max() == 1


def test_mnist_data_dir_accepts_a_str(tmp_path: Path) -> None:
    arrays = mnist_arrays(seed=1)
    write_mnist_idx(tmp_path, arrays)
    assert_matches_mnist(load_dataset("mnist", data_dir=str(tmp_path)), arrays, "mnist")


def test_fashion_mnist_reads_the_same_format(tmp_path: Path) -> None:
    arrays = mnist_arrays(seed=2)
    write_mnist_idx(tmp_path, arrays, gz=True)
    assert_matches_mnist(load_dataset("Fashion_MNIST", tmp_path), arrays, "fashion-mnist")


def test_mnist_npz_in_a_directory_or_as_the_path(tmp_path: Path) -> None:
    arrays = mnist_arrays(seed=3)
    npz = write_mnist_npz(tmp_path / "mnist.npz", arrays)
    assert_matches_mnist(load_dataset("mnist", tmp_path), arrays, "mnist")
    from_file = load_dataset("mnist", npz)
    assert_matches_mnist(from_file, arrays, "mnist")
    assert from_file.source == str(npz.resolve())


@pytest.mark.parametrize(
    ("name", "folder"), [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")]
)
def test_torchvision_root_layout(tmp_path: Path, name: str, folder: str) -> None:
    arrays = mnist_arrays(seed=4)
    write_mnist_idx(tmp_path / folder / "raw", arrays)
    dataset = load_dataset(name, tmp_path)
    assert_matches_mnist(dataset, arrays, name)
    assert dataset.source == str((tmp_path / folder / "raw").resolve())


def test_fashion_mnist_in_keras_datasets_dir_given_as_data_dir(tmp_path: Path) -> None:
    arrays = mnist_arrays(seed=5)
    write_mnist_idx(tmp_path / "fashion-mnist", arrays, gz=True)
    assert_matches_mnist(load_dataset("fashion-mnist", tmp_path), arrays, "fashion-mnist")


# --- cache discovery -------------------------------------------------------------------


def test_mnist_found_in_keras_cache_under_home(empty_home: Path) -> None:
    arrays = mnist_arrays(seed=6)
    npz = write_mnist_npz(empty_home / ".keras" / "datasets" / "mnist.npz", arrays)
    dataset = load_dataset("mnist")
    assert_matches_mnist(dataset, arrays, "mnist")
    assert dataset.source == str(npz.resolve())


def test_keras_home_variable_moves_the_keras_cache(
    empty_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    arrays = mnist_arrays(seed=7)
    write_mnist_npz(tmp_path / "keras-home" / "datasets" / "mnist.npz", arrays)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    assert_matches_mnist(load_dataset("mnist"), arrays, "mnist")


def test_fashion_mnist_found_in_keras_cache(empty_home: Path) -> None:
    arrays = mnist_arrays(seed=8)
    write_mnist_idx(empty_home / ".keras" / "datasets" / "fashion-mnist", arrays, gz=True)
    assert_matches_mnist(load_dataset("fashion-mnist"), arrays, "fashion-mnist")


def test_mnist_found_in_torchvision_data_under_cwd_then_home(empty_home: Path) -> None:
    in_home, in_cwd = mnist_arrays(seed=9), mnist_arrays(seed=10)
    write_mnist_idx(empty_home / "data" / "MNIST" / "raw", in_home)
    assert_matches_mnist(load_dataset("mnist"), in_home, "mnist")
    write_mnist_idx(Path.cwd() / "data" / "MNIST" / "raw", in_cwd)
    assert_matches_mnist(load_dataset("mnist"), in_cwd, "mnist")  # ./data comes first


def test_keras_cache_comes_before_torchvision_data(empty_home: Path) -> None:
    in_keras, in_cwd = mnist_arrays(seed=11), mnist_arrays(seed=12)
    write_mnist_idx(Path.cwd() / "data" / "MNIST" / "raw", in_cwd)
    write_mnist_npz(empty_home / ".keras" / "datasets" / "mnist.npz", in_keras)
    assert_matches_mnist(load_dataset("mnist"), in_keras, "mnist")


def test_fashion_mnist_never_takes_mnist_files(empty_home: Path) -> None:
    write_mnist_idx(Path.cwd() / "data" / "MNIST" / "raw", mnist_arrays(seed=13))
    write_mnist_npz(empty_home / ".keras" / "datasets" / "mnist.npz", mnist_arrays(seed=14))
    with pytest.raises(DataError, match="Fashion-MNIST files not found"):
        load_dataset("fashion-mnist")


# --- MNIST errors ----------------------------------------------------------------------


def test_missing_mnist_says_what_to_put_where(empty_home: Path) -> None:
    with pytest.raises(DataError) as info:
        load_dataset("mnist")
    message = str(info.value)
    for name in IDX_NAMES:
        assert name in message
    assert "mnist.npz" in message and ".gz" in message and "--data-dir" in message
    assert str(empty_home / ".keras" / "datasets" / "mnist.npz") in message
    assert str(Path.cwd() / "data" / "MNIST" / "raw") in message
    assert str(empty_home / "data" / "MNIST" / "raw") in message


def test_empty_data_dir_names_it_and_the_files(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_dataset("mnist", tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message and "--data-dir" in message and "mnist.npz" in message
    for name in IDX_NAMES:
        assert name in message


def test_data_dir_that_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("mnist", tmp_path / "nowhere")


def test_data_dir_that_is_an_ordinary_file(tmp_path: Path) -> None:
    path = write_file(tmp_path / "notes.txt", b"hello")
    with pytest.raises(DataError, match="is a file"):
        load_dataset("mnist", path)


def test_partial_idx_set_names_the_missing_file(tmp_path: Path) -> None:
    write_mnist_idx(tmp_path, mnist_arrays(seed=15))
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="lacks t10k-labels-idx1-ubyte") as info:
        load_dataset("mnist", tmp_path)
    assert str(tmp_path) in str(info.value)


def test_bad_magic_names_the_file(tmp_path: Path) -> None:
    path = write_file(tmp_path / "bad", b"\x12\x34\x08\x01" + b"\x00" * 8)
    with pytest.raises(DataError, match="not an IDX file") as info:
        read_idx(path)
    assert str(path) in str(info.value) and "12 34 08 01" in str(info.value)


def test_unknown_type_code_names_the_file(tmp_path: Path) -> None:
    path = write_file(tmp_path / "bad", b"\x00\x00\x07\x01\x00\x00\x00\x01\x05")
    with pytest.raises(DataError, match="unknown IDX type code 0x07") as info:
        read_idx(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
def test_truncated_idx_says_how_many_bytes(tmp_path: Path, gz: bool) -> None:
    images = np.zeros((5, 28, 28), dtype=np.uint8)
    path = write_file(tmp_path / ("images.gz" if gz else "images"), idx_bytes(images)[:-784])
    expected = re.escape(f"{path} is truncated: header promises 3920 bytes of data")
    expected += r" .* file has 3136"
    with pytest.raises(DataError, match=expected):
        read_idx(path)


def test_truncated_header_names_the_file(tmp_path: Path) -> None:
    path = write_file(tmp_path / "images", idx_bytes(np.zeros((5, 28, 28), np.uint8))[:9])
    with pytest.raises(DataError, match="is truncated") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_extra_bytes_after_the_data(tmp_path: Path) -> None:
    path = write_file(tmp_path / "labels", idx_bytes(np.zeros(5, np.uint8)) + b"\x00\x00")
    with pytest.raises(DataError, match=r"has extra bytes: header promises 5 bytes .* has 7"):
        read_idx(path)


def test_corrupt_gzip_checksum_names_the_file(tmp_path: Path) -> None:
    compressed = bytearray(gzip.compress(idx_bytes(np.arange(200, dtype=np.uint8))))
    compressed[-8] ^= 0xFF  # the CRC-32 of the uncompressed data
    path = write_file(tmp_path / "labels.gz", b"")
    path.write_bytes(bytes(compressed))
    with pytest.raises(DataError, match="corrupt gzip") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_damaged_gzip_stream_names_the_file(tmp_path: Path) -> None:
    data = idx_bytes(np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8))
    compressed = bytearray(gzip.compress(data))
    for i in range(20, len(compressed) - 20, 97):
        compressed[i] ^= 0x5A
    path = tmp_path / "images.gz"
    path.write_bytes(bytes(compressed))
    with pytest.raises(DataError, match="gzip") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_truncated_gzip_names_the_file(tmp_path: Path) -> None:
    compressed = gzip.compress(idx_bytes(np.zeros((5, 28, 28), dtype=np.uint8)))
    path = tmp_path / "images.gz"
    path.write_bytes(compressed[: len(compressed) // 2])
    with pytest.raises(DataError, match="truncated gzip") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_gz_name_without_gzip_content(tmp_path: Path) -> None:
    path = tmp_path / "labels.gz"
    path.write_bytes(idx_bytes(np.zeros(5, np.uint8)))
    with pytest.raises(DataError, match="corrupt gzip") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_image_and_label_counts_must_match(tmp_path: Path) -> None:
    arrays = mnist_arrays(seed=16)
    arrays["y_train"] = arrays["y_train"][:4]
    write_mnist_idx(tmp_path, arrays)
    with pytest.raises(DataError, match=r"holds 5 images but .* holds 4 labels") as info:
        load_dataset("mnist", tmp_path)
    assert str(tmp_path / "train-images-idx3-ubyte") in str(info.value)
    assert str(tmp_path / "train-labels-idx1-ubyte") in str(info.value)


def test_labels_out_of_range_name_the_file(tmp_path: Path) -> None:
    arrays = mnist_arrays(seed=17)
    arrays["y_test"][1] = 10
    write_mnist_idx(tmp_path, arrays, gz=True)
    with pytest.raises(DataError, match=r"outside 0\.\.9 \(found \[10\]\)") as info:
        load_dataset("mnist", tmp_path)
    assert str(tmp_path / "t10k-labels-idx1-ubyte.gz") in str(info.value)


def test_images_of_the_wrong_size_name_the_file(tmp_path: Path) -> None:
    arrays = mnist_arrays(seed=18)
    arrays["x_test"] = arrays["x_test"][:, :27, :27]
    write_mnist_idx(tmp_path, arrays)
    with pytest.raises(DataError, match=r"shape \(3, 27, 27\).*\(N, 28, 28\)") as info:
        load_dataset("mnist", tmp_path)
    assert str(tmp_path / "t10k-images-idx3-ubyte") in str(info.value)


def test_labels_file_in_place_of_images(tmp_path: Path) -> None:
    write_mnist_idx(tmp_path, mnist_arrays(seed=19))
    labels = (tmp_path / "train-labels-idx1-ubyte").read_bytes()
    (tmp_path / "train-images-idx3-ubyte").write_bytes(labels)
    with pytest.raises(DataError, match="right file"):
        load_dataset("mnist", tmp_path)


def test_npz_without_the_keras_keys(tmp_path: Path) -> None:
    arrays = mnist_arrays(seed=20)
    del arrays["y_test"]
    path = write_mnist_npz(tmp_path / "mnist.npz", arrays)
    with pytest.raises(DataError, match=r"lacks the arrays \['y_test'\]") as info:
        load_dataset("mnist", path)
    assert str(path) in str(info.value)


def test_npz_that_is_not_a_zip(tmp_path: Path) -> None:
    path = write_file(tmp_path / "mnist.npz", b"PK\x03\x04 but then garbage" * 10)
    with pytest.raises(DataError, match=r"not a readable \.npz") as info:
        load_dataset("mnist", tmp_path)
    assert str(path) in str(info.value)


def test_npy_named_like_an_npz(tmp_path: Path) -> None:
    path = tmp_path / "mnist.npz"
    with path.open("wb") as file:
        np.save(file, np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(DataError, match=r"single array, not an \.npz archive") as info:
        load_dataset("mnist", path)
    assert str(path) in str(info.value)


def test_npz_with_float_images(tmp_path: Path) -> None:
    arrays = mnist_arrays(seed=21)
    arrays["x_train"] = arrays["x_train"].astype(np.float32)
    path = write_mnist_npz(tmp_path / "mnist.npz", arrays)
    with pytest.raises(DataError, match=r"x_train\] holds float32 values") as info:
        load_dataset("mnist", path)
    assert str(path) in str(info.value)


def test_npz_with_pickled_objects_is_refused(tmp_path: Path) -> None:
    arrays: dict[str, np.ndarray] = dict(mnist_arrays(seed=22))
    arrays["x_train"] = np.array([object()], dtype=object)
    path = tmp_path / "mnist.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=r"not a readable \.npz") as info:
        load_dataset("mnist", path)
    assert str(path) in str(info.value)


# --- CIFAR-10 --------------------------------------------------------------------------


@pytest.mark.parametrize("writer", [write_cifar_bin, write_cifar_py], ids=["binary", "python"])
def test_cifar_round_trips_from_the_batches_dir_and_its_parent(tmp_path: Path, writer) -> None:
    batches = cifar_arrays(seed=30)
    directory = writer(tmp_path, batches)
    for data_dir in (directory, tmp_path):
        dataset = load_dataset("CIFAR-10", data_dir)
        assert_matches_cifar(dataset, batches)
        assert dataset.source == str(directory.resolve())


def _planes_image() -> bytes:
    """An image whose R plane counts 0, 1, 2, ... in row-major order, G is 100, B is 200."""
    return bytes(i % 256 for i in range(1024)) + bytes([100] * 1024) + bytes([200] * 1024)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "python"])
def test_cifar_channel_order_is_planes_of_rows(tmp_path: Path, binary: bool) -> None:
    directory = tmp_path / ("cifar-10-batches-bin" if binary else "cifar-10-batches-py")
    for name in (*CIFAR_BATCHES, "test_batch"):
        if binary:
            write_file(directory / f"{name}.bin", b"\x07" + _planes_image())
        else:
            data = np.frombuffer(_planes_image(), dtype=np.uint8).reshape(1, 3072)
            batch = pickle.dumps({b"data": data, b"labels": [7]}, protocol=2)
            write_file(directory / name, batch)
    image = load_dataset("cifar10", tmp_path).val_x[0]
    rows, cols = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    assert torch.equal(image[0] * 255, ((rows * 32 + cols) % 256).float())
    assert torch.equal(image[1], torch.full((32, 32), 100 / 255))
    assert torch.equal(image[2], torch.full((32, 32), 200 / 255))


@pytest.mark.parametrize("together", [False, True], ids=["sibling-dirs", "one-dir"])
def test_cifar_prefers_binary_when_both_are_present(tmp_path: Path, together: bool) -> None:
    in_binary, in_python = cifar_arrays(seed=31), cifar_arrays(seed=32)
    folders = {"folder": "batches"} if together else {}
    write_cifar_py(tmp_path, in_python, **folders)
    directory = write_cifar_bin(tmp_path, in_binary, **folders)
    dataset = load_dataset("cifar10", directory if together else tmp_path)
    assert_matches_cifar(dataset, in_binary)
    assert dataset.source == str(directory.resolve())


def _python2_style_batch(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch as Python 2 + numpy 1 pickled it: str keys (bytes) and numpy.core names."""
    array = pickle.dumps(data, protocol=2)[2:-1]  # without PROTO and STOP
    array = array.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    label_list = b"](" + b"".join(b"K" + bytes([label]) for label in labels) + b"e"
    return b"\x80\x02}(U\x04data" + array + b"U\x06labels" + label_list + b"u."


def test_cifar_python_batches_in_the_numpy_1_spelling(tmp_path: Path) -> None:
    batches = cifar_arrays(seed=33)
    directory = tmp_path / "cifar-10-batches-py"
    for name, (images, labels) in batches.items():
        pickled = _python2_style_batch(images.reshape(-1, 3072), [int(y) for y in labels])
        assert b"numpy.core.multiarray" in pickled
        write_file(directory / name, pickled)
    assert_matches_cifar(load_dataset("cifar10", directory), batches)


@pytest.mark.parametrize(
    "place",
    [".keras/datasets", ".keras/datasets/cifar-10-batches-py-target", "data"],
    ids=["keras", "keras3", "home-data"],
)
def test_cifar_found_in_caches_under_home(empty_home: Path, place: str) -> None:
    batches = cifar_arrays(seed=34)
    write_cifar_py(empty_home / place, batches)
    assert_matches_cifar(load_dataset("cifar10"), batches)


def test_cifar_found_in_torchvision_data_under_cwd(empty_home: Path) -> None:
    batches = cifar_arrays(seed=35)
    write_cifar_bin(Path.cwd() / "data", batches)
    assert_matches_cifar(load_dataset("cifar10"), batches)


def test_missing_cifar_says_what_to_put_where(empty_home: Path) -> None:
    with pytest.raises(DataError) as info:
        load_dataset("cifar10")
    message = str(info.value)
    for text in ("cifar-10-batches-bin", "cifar-10-batches-py", "data_batch_5.bin", "test_batch"):
        assert text in message
    assert "--data-dir" in message
    assert str(empty_home / ".keras" / "datasets" / "cifar-10-batches-py") in message


def test_cifar_data_dir_without_batches(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="CIFAR-10 batches not found") as info:
        load_dataset("cifar10", tmp_path)
    assert str(tmp_path) in str(info.value) and "--data-dir" in str(info.value)


def test_cifar_partial_batches_name_the_missing_one(tmp_path: Path) -> None:
    directory = write_cifar_bin(tmp_path, cifar_arrays(seed=36))
    (directory / "data_batch_4.bin").unlink()
    with pytest.raises(DataError, match=r"lacks data_batch_4\.bin"):
        load_dataset("cifar10", tmp_path)


def test_truncated_cifar_binary_names_the_file(tmp_path: Path) -> None:
    directory = write_cifar_bin(tmp_path, cifar_arrays(seed=37))
    path = directory / "data_batch_2.bin"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(DataError, match=r"is truncated: 9218 bytes .* 3073-byte records") as info:
        load_dataset("cifar10", directory)
    assert str(path) in str(info.value)


def test_cifar_binary_label_out_of_range(tmp_path: Path) -> None:
    directory = write_cifar_bin(tmp_path, cifar_arrays(seed=38))
    path = directory / "test_batch.bin"
    data = bytearray(path.read_bytes())
    data[3073] = 12  # label of the second record
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"outside 0\.\.9 \(found \[12\]\)") as info:
        load_dataset("cifar10", directory)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("module", "name"), [("os", "system"), ("builtins", "eval"), ("subprocess", "call")]
)
def test_cifar_pickle_with_a_forbidden_global_is_refused_before_running(
    tmp_path: Path, module: str, name: str
) -> None:
    marker = tmp_path / "ran"
    command = f"touch {marker}" if module != "builtins" else f"open({str(marker)!r}, 'w')"
    # protocol 0 by hand: GLOBAL module.name, MARK, STRING command, TUPLE, REDUCE, STOP
    gadget = f"c{module}\n{name}\n(S{command!r}\ntR.".encode()
    directory = write_cifar_py(tmp_path, cifar_arrays(seed=39))
    path = write_file(directory / "data_batch_3", gadget)
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", directory)
    assert f"refusing to load '{module}.{name}' from {path}" in str(info.value)
    assert "only numpy arrays are allowed" in str(info.value)
    assert not marker.exists()


def test_cifar_pickle_with_a_nested_forbidden_global_is_refused(tmp_path: Path) -> None:
    directory = write_cifar_py(tmp_path, cifar_arrays(seed=40))
    inner = b"cposix\nsystem\n(S'true'\ntR"
    gadget = b"(dS'data'\n" + inner + b"\nS'labels'\n(lp0\ns."
    path = write_file(directory / "test_batch", gadget)
    with pytest.raises(DataError, match=r"refusing to load 'posix\.system'") as info:
        load_dataset("cifar10", directory)
    assert str(path) in str(info.value)


def test_cifar_pickle_bytes_must_be_latin1(tmp_path: Path) -> None:
    directory = write_cifar_py(tmp_path, cifar_arrays(seed=41))
    # _codecs.encode('abc', 'rot13'): an allowed global called with another codec
    gadget = b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x05\x00\x00\x00rot13\x86R."
    path = write_file(directory / "test_batch", gadget)
    with pytest.raises(DataError, match="not a readable CIFAR-10 python batch") as info:
        load_dataset("cifar10", directory)
    assert str(path) in str(info.value) and "rot13" in str(info.value)


def test_truncated_cifar_pickle_names_the_file(tmp_path: Path) -> None:
    directory = write_cifar_py(tmp_path, cifar_arrays(seed=42))
    path = directory / "data_batch_1"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DataError, match="not a readable CIFAR-10 python batch") as info:
        load_dataset("cifar10", directory)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ([1, 2, 3], "holds a list, not a dict"),
        ({b"labels": [1]}, "NoneType under b'data'"),
        ({b"data": np.zeros((2, 3071), np.uint8), b"labels": [1, 2]}, r"shape \(2, 3071\)"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1]}, "has 2 images but"),
        ({b"data": np.zeros((2, 3072), np.float32), b"labels": [1, 2]}, "float32 array"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, -1]}, "outside 0..9"),
    ],
)
def test_cifar_python_batch_with_the_wrong_content(tmp_path: Path, content, problem: str) -> None:
    directory = write_cifar_py(tmp_path, cifar_arrays(seed=43))
    path = write_file(directory / "data_batch_5", pickle.dumps(content, protocol=2))
    with pytest.raises(DataError, match=problem) as info:
        load_dataset("cifar10", directory)
    assert str(path) in str(info.value)


# --- real MNIST ------------------------------------------------------------------------


@pytest.mark.skipif(not REAL_MNIST.is_dir(), reason=f"real MNIST not at {REAL_MNIST}")
def test_real_mnist() -> None:
    mnist = load_dataset("mnist", REAL_MNIST)
    assert mnist.train_x.shape == (60000, 1, 28, 28)
    assert mnist.val_x.shape == (10000, 1, 28, 28)
    assert mnist.train_x.dtype == torch.float32 and mnist.train_y.dtype == torch.int64
    for images, labels in ((mnist.train_x, mnist.train_y), (mnist.val_x, mnist.val_y)):
        assert images.min() == 0 and images.max() == 1
        assert labels.min() == 0 and labels.max() == 9
    assert (torch.bincount(mnist.train_y, minlength=10) > 5000).all()
    # the usual normalization constants, published with the data set
    assert abs(mnist.train_x.mean().item() - 0.1307) < 1e-3
    assert abs(mnist.train_x.std().item() - 0.3081) < 1e-3
