"""The user's own data: ``--dataset npz:PATH`` and ``--dataset folder:PATH``, read into the
tensors the lab trains on, cached once, and every refusal naming the file and the fix."""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import zipfile
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

import normlab.data.image_folder as image_folder
from normlab.data import DataError, dataset_name, load_dataset
from normlab.experiment import RunConfig
from normlab.lab import compare

# --- npz ----------------------------------------------------------------------------------


def _arrays(seed: int = 0, n_train: int = 12, n_test: int = 6, shape=(5, 6, 3), classes: int = 3):
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
        "y_train": np.arange(n_train) % classes,
        "x_test": rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
        "y_test": np.arange(n_test) % classes,
    }


def _save(tmp_path, arrays, name="data.npz"):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    ("layout", "to_nchw"),
    [
        ("nhwc", lambda x: x.transpose(0, 3, 1, 2)),
        ("nchw", lambda x: x),
        ("nhw", lambda x: x[:, None]),
        ("flat", lambda x: x[:, None, None, :]),
    ],
)
def test_npz_images_in_every_layout_become_nchw_floats_in_0_1(tmp_path, layout, to_nchw):
    shapes = {"nhwc": (5, 6, 3), "nchw": (3, 5, 6), "nhw": (5, 6), "flat": (30,)}
    arrays = _arrays(shape=shapes[layout])
    data = load_dataset(f"npz:{_save(tmp_path, arrays)}")
    expected = torch.from_numpy(to_nchw(arrays["x_train"]).astype(np.float64) / 255)
    torch.testing.assert_close(data.train_x.double(), expected)
    assert data.train_x.dtype == torch.float32 and data.val_x.shape[1:] == data.train_x.shape[1:]
    assert torch.equal(data.train_y, torch.from_numpy(arrays["y_train"]).long())
    assert torch.equal(data.val_y, torch.from_numpy(arrays["y_test"]).long())
    assert data.num_classes == 3


def test_npz_float_images_are_kept_as_they_are_and_column_labels_accepted(tmp_path):
    arrays = _arrays(shape=(4, 4, 1))
    arrays["x_train"] = np.random.default_rng(1).normal(size=(12, 4, 4, 1)).astype(np.float64)
    arrays["x_test"] = arrays["x_test"].astype(np.float32) / 7
    arrays["y_train"] = arrays["y_train"][:, None].astype(np.uint8)
    data = load_dataset(f"npz:{_save(tmp_path, arrays)}")
    expected = torch.from_numpy(arrays["x_train"].transpose(0, 3, 1, 2)).float()
    assert torch.equal(data.train_x, expected)
    assert data.train_y.tolist() == arrays["y_train"][:, 0].tolist()


def _refused(tmp_path, change, message):
    arrays = _arrays()
    change(arrays)
    path = _save(tmp_path, arrays)
    with pytest.raises(DataError, match=message) as error:
        load_dataset(f"npz:{path}")
    assert str(path) in str(error.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a.pop("y_test"), "has no array y_test"),
        (lambda a: a.update(x_train=np.zeros((12, 2, 2, 2, 2), np.uint8)), "5-D"),
        (lambda a: a.update(x_train=np.zeros((12, 3, 5, 3), np.uint8)), "both dim 1 and dim 3"),
        (lambda a: a.update(x_train=np.zeros((12, 9, 5, 8), np.uint8)), "neither dim 1 nor dim 3"),
        (lambda a: a.update(x_test=np.zeros((6, 5, 7, 3), np.uint8)), "both splits need one"),
        (lambda a: a.update(y_train=np.arange(11) % 3), r"one label per image, shape \(12,\)"),
        (lambda a: a.update(y_train=(np.arange(12) % 3).astype(np.float32)), "must be integer"),
        (lambda a: a.update(y_train=np.arange(12) % 3 == 0), "must be integer"),
        (lambda a: a.update(y_train=np.arange(12) % 3 - 1), "negative labels"),
        (lambda a: a.update(y_test=np.arange(6) % 4), "y_test has label 3, a class that y_train"),
        (lambda a: a.update(y_train=np.full(12, 99)), "only 12 training samples"),
        (lambda a: a.update(x_test=np.zeros((0, 5, 6, 3), np.uint8)), "x_test holds no samples"),
        (lambda a: a.update(x_train=np.full((12, 5, 6, 3), 300, np.int32)), "outside 0..255"),
        (lambda a: a.update(x_train=np.full((12, 5, 6, 3), np.nan)), "NaN or infinite"),
        (lambda a: a.update(x_train=np.array(["a"] * 12)), "integers or floats"),
    ],
)
def test_npz_with_a_wrong_array_is_refused_naming_the_file_and_the_array(tmp_path, change, message):
    _refused(tmp_path, change, message)


def test_npz_holding_pickled_objects_is_refused_without_unpickling(tmp_path):
    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled')",))

    arrays = _arrays()
    arrays["y_train"] = np.array([Boom()] * 12, dtype=object)
    path = _save(tmp_path, arrays)
    assert pickle.dumps(Boom())  # the payload would run if it were unpickled
    with pytest.raises(DataError, match="without unpickling objects"):
        load_dataset(f"npz:{path}")


def test_npz_that_is_missing_or_not_an_npz_is_refused(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_dataset(f"npz:{tmp_path / 'absent.npz'}")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip at all")
    with pytest.raises(DataError, match=r"bad\.npz"):
        load_dataset(f"npz:{bad}")


def _npz_member(path, arrays, replace):
    """Write ``arrays`` as an .npz (stored, uncompressed) whose members named in ``replace``
    hold the given raw bytes instead of the array."""
    with zipfile.ZipFile(path, "w") as archive:
        for key, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asarray(array), allow_pickle=False)
            archive.writestr(f"{key}.npy", replace.get(key, buffer.getvalue()))
    return path


def _npy_bytes(array) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _huge_declared_shape() -> bytes:
    """An .npy header declaring (4e9, 8, 8) uint8 (256 GB), followed by 64 bytes of data."""
    buffer = io.BytesIO()
    header = {"descr": "|u1", "fortran_order": False, "shape": (4_000_000_000, 8, 8)}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue() + bytes(64)


def _npz_case(tmp_path, case):
    """The file for one bad-npz case, as written by the user's tool or a broken copy."""
    path = tmp_path / "data.npz"
    arrays = _arrays()
    if case == "missing y_test":
        del arrays["y_test"]
        return _save(tmp_path, arrays)
    if case == "not a zip":
        path.write_bytes(b"hello")
        return path
    if case == "an .npy":
        np.save(path.with_suffix(".npy"), arrays["x_train"])
        return path.with_suffix(".npy").rename(path)
    if case == "truncated member":
        return _npz_member(path, arrays, {"x_train": _npy_bytes(arrays["x_train"])[:-10]})
    if case == "corrupt member":
        good = _npz_member(path, arrays, {})
        data = bytearray(good.read_bytes())
        start = data.index(b"x_train.npy") + len("x_train.npy") + 200  # inside its pixels
        data[start] ^= 0xFF  # the zip's CRC no longer matches
        path.write_bytes(bytes(data))
        return path
    if case == "huge declared shape":
        return _npz_member(path, arrays, {"x_train": _huge_declared_shape()})
    if case == "object member":
        objects = np.array([{"a": 1}] * 12, dtype=object)
        buffer = io.BytesIO()
        np.lib.format.write_array(buffer, objects, allow_pickle=True)
        return _npz_member(path, arrays, {"y_train": buffer.getvalue()})
    changes = {
        "label 2**64-1 in y_train": lambda a: a.update(
            y_train=np.array([*(np.arange(11) % 3), 2**64 - 1], np.uint64)
        ),
        "label 2**64-1 in y_test": lambda a: a.update(
            y_test=np.array([*(np.arange(5) % 3), 2**64 - 1], np.uint64)
        ),
        "images of no values": lambda a: a.update(
            x_train=np.zeros((12, 0), np.float32), x_test=np.zeros((6, 0), np.float32)
        ),
        "one class": lambda a: a.update(y_train=np.zeros(12, int), y_test=np.zeros(6, int)),
    }
    changes[case](arrays)
    return _save(tmp_path, arrays)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing y_test", r"has no array y_test \(it holds x_train, y_train, x_test\)"),
        ("not a zip", r"is not an \.npz file: it does not start as a zip archive does"),
        ("an .npy", r"holds one array \(\.npy\), not an \.npz"),
        ("truncated member", r"x_train is truncated: its header declares shape \(12, 5, 6, 3\)"),
        ("corrupt member", r"x_train cannot be read \(.*CRC.*\); the file is corrupt"),
        ("huge declared shape", r"x_train is truncated: its header declares shape \(4000000000, "),
        ("object member", r"y_train holds Python objects \(dtype object\)"),
        ("label 2**64-1 in y_train", r"y_train's largest label is 18446744073709551615 but"),
        ("label 2**64-1 in y_test", r"y_test has label 18446744073709551615, a class that"),
        ("images of no values", r"x_train's images hold no values \(shape \(12, 0\)\)"),
        ("one class", r"y_train holds one class only \(0\); a classifier needs at least two"),
    ],
)
def test_each_bad_npz_gets_its_own_message_naming_the_file_and_the_array(tmp_path, case, message):
    path = _npz_case(tmp_path, case)
    with pytest.raises(DataError, match=message) as error:
        load_dataset(f"npz:{path}")
    text = str(error.value)
    assert text.startswith(f"{path}: ")
    if case != "object member":
        assert "unpickling" not in text


def test_compare_refuses_npz_data_of_one_class_before_any_run(tmp_path):
    path = _npz_case(tmp_path, "one class")
    out = tmp_path / "sweep"
    with pytest.raises(DataError, match="one class only"):
        compare(data=f"npz:{path}", norms=["bn"], seeds=1, epochs=1, hidden=[8],
                batch_sizes=[4], jobs=1, out=out, progress=False)  # fmt: skip
    assert not (out / "results.jsonl").exists()


def test_a_user_data_set_is_named_by_its_absolute_path(tmp_path, monkeypatch):
    path = _save(tmp_path, _arrays())
    monkeypatch.chdir(tmp_path)
    assert dataset_name("npz:data.npz") == f"npz:{path.resolve()}"
    assert RunConfig(dataset="NPZ:data.npz").dataset == f"npz:{path.resolve()}"
    assert RunConfig(dataset="npz:data.npz").run_id == RunConfig(dataset=f"npz:{path}").run_id
    with pytest.raises(ValueError, match="names no path"):
        dataset_name("folder:")


def test_compare_trains_on_an_npz_and_refuses_a_data_dir_beside_it(tmp_path):
    path = _save(tmp_path, _arrays(n_train=40, n_test=10))
    out = tmp_path / "sweep"
    call = {"data": f"npz:{path}", "norms": ["bn", "ln"], "seeds": 1, "epochs": 1}
    call |= {"hidden": [8], "batch_sizes": [8], "jobs": 1, "out": out, "progress": False}
    result = compare(**call)
    assert result.complete and result.failed == []
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["config"]["dataset"] for r in records] == [f"npz:{path.resolve()}"] * 2
    assert records[0]["data"]["input_shape"] == [3, 5, 6] and records[0]["data"]["num_classes"] == 3
    with pytest.raises(ValueError, match="names its own path; drop `data_dir`"):
        compare(**call, data_dir=tmp_path)


# --- image folders --------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("NORMLAB_CACHE_DIR", str(cache))
    return cache


def _write_tree(
    root, classes=("cat", "dog", "emu"), per_class=(3, 2), size=(7, 5), mode="L", seed=0
):
    """root/{train,test}/<class>/<i>.png with random pixels; returns {split: [(pixels, label)]}."""
    rng = np.random.default_rng(seed)
    written = {}
    for split, count in zip(("train", "test"), per_class, strict=True):
        written[split] = []
        for label, name in enumerate(sorted(classes)):
            folder = root / split / name
            folder.mkdir(parents=True)
            for index in range(count):
                shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
                pixels = rng.integers(0, 256, shape, dtype=np.uint8)
                Image.fromarray(pixels, mode).save(folder / f"{index}.png")
                written[split].append((pixels, label))
    return written


def test_a_folder_of_pngs_becomes_the_tensors_of_its_pixels(tmp_path):
    written = _write_tree(tmp_path / "data")
    data = load_dataset(f"folder:{tmp_path / 'data'}")
    for split, images, labels in (
        ("train", data.train_x, data.train_y),
        ("test", data.val_x, data.val_y),
    ):
        expected = np.stack([pixels for pixels, _ in written[split]])[:, None] / 255
        torch.testing.assert_close(images.double(), torch.from_numpy(expected))
        assert labels.tolist() == [label for _, label in written[split]]
    assert data.num_classes == 3 and data.input_shape == (1, 5, 7)
    assert data.name == f"folder:{(tmp_path / 'data').resolve()}"


def test_color_and_mixed_folders_give_three_channels(tmp_path):
    written = _write_tree(tmp_path / "rgb", mode="RGB")
    data = load_dataset(f"folder:{tmp_path / 'rgb'}")
    expected = np.stack([pixels for pixels, _ in written["train"]]).transpose(0, 3, 1, 2) / 255
    torch.testing.assert_close(data.train_x.double(), torch.from_numpy(expected))
    gray = np.full((5, 7), 200, np.uint8)
    Image.fromarray(gray, "L").save(tmp_path / "rgb" / "test" / "cat" / "gray.png")
    mixed = load_dataset(f"folder:{tmp_path / 'rgb'}")
    assert mixed.val_x.shape[1] == 3  # the gray image is converted to RGB: equal channels
    index = [i for i, (_, label) in enumerate(written["test"]) if label == 0][-1] + 1
    assert torch.allclose(mixed.val_x[index], torch.full((3, 5, 7), 200 / 255))


def test_jpegs_are_read_too(tmp_path):
    folder = tmp_path / "data"
    for split in ("train", "test"):
        for name in ("a", "b"):
            (folder / split / name).mkdir(parents=True)
            Image.new("RGB", (8, 8), (250, 10, 10)).save(folder / split / name / "x.JPG")
    data = load_dataset(f"folder:{folder}")
    assert data.train_x.shape == (2, 3, 8, 8)
    assert torch.allclose(data.train_x[:, 0], torch.full((2, 8, 8), 250 / 255), atol=0.03)


def test_a_folder_is_decoded_once_and_decoded_again_when_it_changes(tmp_path, _cache, monkeypatch):
    _write_tree(tmp_path / "data")
    first = load_dataset(f"folder:{tmp_path / 'data'}")
    assert len(list(_cache.glob("folder-*.npz"))) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again although the cache is current")

    monkeypatch.setattr(Image, "open", no_decoding)
    again = load_dataset(f"folder:{tmp_path / 'data'}")
    assert torch.equal(again.train_x, first.train_x) and torch.equal(again.val_y, first.val_y)
    monkeypatch.undo()
    monkeypatch.setenv("NORMLAB_CACHE_DIR", str(_cache))
    Image.fromarray(np.zeros((5, 7), np.uint8), "L").save(
        tmp_path / "data" / "train" / "dog" / "new.png"
    )
    changed = load_dataset(f"folder:{tmp_path / 'data'}")
    assert len(changed.train_x) == len(first.train_x) + 1


def test_a_corrupt_cache_is_decoded_again(tmp_path, _cache):
    _write_tree(tmp_path / "data")
    first = load_dataset(f"folder:{tmp_path / 'data'}")
    (cache_file,) = _cache.glob("folder-*.npz")
    cache_file.write_bytes(b"garbage")
    assert torch.equal(load_dataset(f"folder:{tmp_path / 'data'}").train_x, first.train_x)


def test_an_empty_class_folder_is_refused_naming_it(tmp_path):
    _write_tree(tmp_path / "data")
    for image in (tmp_path / "data" / "test" / "emu").iterdir():
        image.unlink()
    (tmp_path / "data" / "test" / "emu" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"test/emu holds no \.png or \.jpg images"):
        load_dataset(f"folder:{tmp_path / 'data'}")


def test_train_and_test_with_different_classes_are_refused(tmp_path):
    _write_tree(tmp_path / "data")
    (tmp_path / "data" / "test" / "emu").rename(tmp_path / "data" / "test" / "owl")
    with pytest.raises(DataError, match="only in train: emu; only in test: owl"):
        load_dataset(f"folder:{tmp_path / 'data'}")


def test_a_corrupt_image_is_refused_naming_the_file(tmp_path):
    _write_tree(tmp_path / "data")
    broken = tmp_path / "data" / "train" / "dog" / "1.png"
    broken.write_bytes(broken.read_bytes()[:40])
    with pytest.raises(DataError, match=rf"{broken}: cannot be decoded as an image"):
        load_dataset(f"folder:{tmp_path / 'data'}")
    (tmp_path / "data" / "train" / "dog" / "text.png").write_text("not an image")
    broken.unlink()
    with pytest.raises(DataError, match=r"text\.png: cannot be decoded"):
        load_dataset(f"folder:{tmp_path / 'data'}")


def test_images_of_another_size_are_refused_naming_the_file(tmp_path):
    _write_tree(tmp_path / "data")
    odd = tmp_path / "data" / "test" / "cat" / "odd.png"
    Image.new("L", (9, 9)).save(odd)
    with pytest.raises(DataError, match=rf"{odd} is 9x9 but .* is 7x5; every image"):
        load_dataset(f"folder:{tmp_path / 'data'}")


def test_a_missing_split_or_folder_is_refused(tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        load_dataset(f"folder:{tmp_path / 'absent'}")
    (tmp_path / "data" / "train" / "a").mkdir(parents=True)
    Image.new("L", (4, 4)).save(tmp_path / "data" / "train" / "a" / "0.png")
    with pytest.raises(DataError, match=r"data/test: no such folder"):
        load_dataset(f"folder:{tmp_path / 'data'}")


def test_compare_trains_on_a_folder_and_its_workers_read_the_cache(tmp_path, _cache):
    _write_tree(tmp_path / "data", per_class=(6, 2), size=(8, 8))
    out = tmp_path / "sweep"
    decodes = []
    original = image_folder._decode

    def counting(tree):
        decodes.append(1)
        return original(tree)

    image_folder._decode = counting
    try:
        result = compare(data=f"folder:{tmp_path / 'data'}", model="cnn",
                         norms=["bn", "gn(groups=2)"], seeds=1, epochs=1, hidden=[4],
                         batch_sizes=[4], jobs=1, out=out, progress=False)  # fmt: skip
    finally:
        image_folder._decode = original
    assert result.complete and result.failed == []
    assert decodes == [1]  # two runs, one decode
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(records) == 2 and records[0]["data"]["input_shape"] == [1, 8, 8]


def _png_declaring(path, width: int, height: int) -> None:
    """A 1x1 grayscale PNG whose header is rewritten to declare width x height."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    start = data.index(b"IHDR")  # then 13 bytes (width, height, ...) and the CRC of all 17
    data[start + 4 : start + 12] = struct.pack(">II", width, height)
    data[start + 17 : start + 21] = struct.pack(">I", zlib.crc32(bytes(data[start : start + 17])))
    path.write_bytes(bytes(data))


def test_an_image_too_large_to_decode_safely_is_refused_naming_it(tmp_path):
    _write_tree(tmp_path / "data")
    bomb = tmp_path / "data" / "train" / "cat" / "huge.png"
    _png_declaring(bomb, 20_000, 20_000)
    with pytest.raises(DataError, match=rf"{bomb}: too large to decode safely .*400000000 pix"):
        load_dataset(f"folder:{tmp_path / 'data'}")


def test_a_hidden_class_folder_is_refused_naming_it(tmp_path):
    _write_tree(tmp_path / "data", classes=("a", "b", "c", "d", "..a"))
    with pytest.raises(DataError, match=r"train/\.\.a: a class folder whose name starts with"):
        load_dataset(f"folder:{tmp_path / 'data'}")


@pytest.mark.parametrize("where", ["class folder", "image"])
@pytest.mark.parametrize("link", ["loop", "broken"])
def test_a_symlink_loop_or_a_broken_link_is_refused_naming_it(tmp_path, where, link):
    _write_tree(tmp_path / "data")
    folder = tmp_path / "data" / "train"
    path = folder / "owl" if where == "class folder" else folder / "cat" / "extra.png"
    path.symlink_to(path.name if link == "loop" else tmp_path / "absent")
    what = "loops" if link == "loop" else "points to nothing"
    with pytest.raises(DataError, match=rf"{path}: a symbolic link that {what}"):
        load_dataset(f"folder:{tmp_path / 'data'}")


def test_a_class_folder_whose_name_is_not_utf8_is_a_class_like_any_other(tmp_path):
    root = tmp_path / "data"
    _write_tree(root, classes=("a",))
    try:
        for split in ("train", "test"):
            odd = os.path.join(os.fsencode(root / split), b"caf\xe9")
            os.mkdir(odd)
            Image.new("L", (7, 5), 9).save(os.path.join(odd, b"0.png"))
    except (OSError, UnicodeError):
        pytest.skip("this file system does not take names that are not UTF-8")
    data = load_dataset(f"folder:{root}")
    assert data.num_classes == 2 and len(data.train_x) == 4
    assert torch.allclose(data.train_x[data.train_y == 1], torch.tensor(9 / 255))


def test_a_folder_of_one_class_is_refused(tmp_path):
    _write_tree(tmp_path / "data", classes=("cat",))
    with pytest.raises(DataError, match=r"data/train has one class folder only \(cat\)"):
        load_dataset(f"folder:{tmp_path / 'data'}")


def test_16_bit_images_are_scaled_by_their_range_as_8_bit_ones_are(tmp_path):
    root = tmp_path / "data"
    _write_tree(root, classes=("a", "b"))
    deep = np.array([[0, 126, 10059, 65535, 300, 7, 65534]] * 5, np.uint16)
    image = Image.fromarray(deep)
    assert image.mode == "I;16"
    image.save(root / "test" / "a" / "deep.png")
    data = load_dataset(f"folder:{root}")
    expected = torch.from_numpy(deep.astype(np.float64) / 65535)
    torch.testing.assert_close(data.val_x[2, 0].double(), expected, rtol=0, atol=1e-7)
    eight_bit = np.asarray(Image.open(root / "train" / "a" / "0.png"), np.float64) / 255
    torch.testing.assert_close(data.train_x[0, 0].double(), torch.from_numpy(eight_bit))
    Image.new("RGB", (7, 5), (255, 0, 51)).save(root / "train" / "b" / "color.png")
    mixed = load_dataset(f"folder:{root}")
    assert mixed.val_x.shape[1] == 3  # the 16-bit gray image is RGB with equal channels
    for channel in range(3):
        torch.testing.assert_close(mixed.val_x[2, channel].double(), expected, rtol=0, atol=1e-7)
    assert mixed.train_x[-1, :, 0, 0].tolist() == pytest.approx([1.0, 0.0, 0.2])


def test_32_bit_integer_images_are_read_as_16_bit_or_refused_beyond_it(tmp_path, monkeypatch):
    """Older Pillow reads a 16-bit PNG as mode "I" (32-bit integers): values up to 65535 are
    scaled as 16-bit pixels; larger ones have no known range and are refused."""
    root = tmp_path / "data"
    _write_tree(root, classes=("a", "b"))
    target = root / "test" / "b" / "1.png"
    original = image_folder._open_image

    def as_mode_i(top):
        def open_image(file):
            if file != target:
                return original(file)
            return Image.fromarray(np.full((5, 7), top, np.int32))

        return open_image

    monkeypatch.setattr(image_folder, "_open_image", as_mode_i(65535))
    assert torch.equal(load_dataset(f"folder:{root}").val_x[-1], torch.ones(1, 5, 7))
    monkeypatch.setattr(image_folder, "_open_image", as_mode_i(70000))
    monkeypatch.setenv("NORMLAB_CACHE_DIR", str(tmp_path / "other-cache"))
    with pytest.raises(DataError, match=rf"{target}: 32-bit integer pixels from 70000 to 70000"):
        load_dataset(f"folder:{root}")
