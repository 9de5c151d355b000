"""Reading named arrays from an .npz file without unpickling and without trusting its headers.

``numpy.load`` reports a missing array, a file that is not a zip archive, a truncated member
and a pickled member alike as a ValueError, and allocates whatever shape a member's header
declares before reading a byte of it. Here each member's header is read first: an object
dtype is refused (never unpickled), and a declared size larger than the member can hold is
refused before anything is allocated. Every error is a DataError naming the file, the array
and the fix.
"""

from __future__ import annotations

import math
import zipfile
import zlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from normlab.data.dataset import DataError

ZIP_STARTS = (b"PK\x03\x04", b"PK\x05\x06")  # a local file header; an empty archive
NPY_MAGIC = b"\x93NUMPY"
DEFLATE_MAX_RATIO = 1032  # deflate expands a byte to at most 1032 bytes
_SAVE = "save the arrays again with numpy.savez (or numpy.savez_compressed)"
_READ_ERRORS = (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error)


def _fail(path: Path, problem: str) -> DataError:
    return DataError(f"{path}: {problem}")


def _unreadable(path: Path, key: str, error: BaseException) -> DataError:
    return _fail(path, f"{key} cannot be read ({error}); the file is corrupt: {_SAVE}.")


def _open(path: Path) -> zipfile.ZipFile:
    try:
        with path.open("rb") as file:
            start = file.read(8)
    except OSError as error:
        raise _fail(path, f"cannot be read ({error.strerror or error}).") from None
    if start.startswith(NPY_MAGIC):
        raise _fail(
            path,
            "holds one array (.npy), not an .npz of named arrays; "
            "save them with numpy.savez(PATH, x_train=..., y_train=..., x_test=..., y_test=...).",
        )
    if not start.startswith(ZIP_STARTS):
        what = "it is empty (0 bytes)" if not start else f"it starts with {start!r}"
        raise _fail(
            path,
            f"is not an .npz file: it does not start as a zip archive does ({what}); {_SAVE}.",
        )
    try:
        return zipfile.ZipFile(path)
    except _READ_ERRORS as error:
        raise _fail(
            path, f"is a damaged zip archive ({error}); it is truncated or corrupt: {_SAVE}."
        ) from None


def _capacity(info: zipfile.ZipInfo) -> int:
    """The most bytes the member can hold: its declared size, bounded by its compressed size
    where the compression method cannot expand data beyond a known ratio."""
    if info.compress_type == zipfile.ZIP_STORED:
        return min(info.file_size, info.compress_size)
    if info.compress_type == zipfile.ZIP_DEFLATED:
        return min(info.file_size, info.compress_size * DEFLATE_MAX_RATIO)
    return info.file_size


def _check_header(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path, key: str) -> None:
    """Fail unless the member's .npy header declares a non-object array that fits in it."""
    with archive.open(info) as file:
        try:
            version = np.lib.format.read_magic(file)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(file)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(file)
            else:  # 3.0 only ever holds record dtypes with non-Latin-1 field names
                raise ValueError(f".npy format version {version[0]}.{version[1]}")
        except ValueError as error:
            raise _fail(
                path,
                f"{key} is not an .npy array ({error}); the file was not written by "
                f"numpy.savez: {_SAVE}.",
            ) from None
        except _READ_ERRORS as error:
            raise _unreadable(path, key, error) from None
        data_start = file.tell()
    if dtype.hasobject:
        raise _fail(
            path,
            f"{key} holds Python objects (dtype {dtype}), which cannot be read without "
            "unpickling objects, and normlab never unpickles data; store it as a numeric "
            "array (numpy.asarray(..., dtype=...)).",
        )
    needed = math.prod(shape) * dtype.itemsize
    available = _capacity(info) - data_start
    if needed > available:
        raise _fail(
            path,
            f"{key} is truncated: its header declares shape {shape} of {dtype}, "
            f"{needed:,} bytes, but its member holds at most {max(available, 0):,}; "
            f"the file is truncated or corrupt: {_SAVE}.",
        )


def read_arrays(path: Path, keys: Iterable[str]) -> dict[str, np.ndarray]:
    """The arrays named ``keys`` in the .npz file ``path``, read with ``allow_pickle=False``.

    Raises:
        DataError: the file is not a zip archive (or is a single .npy), is damaged, lacks
            one of ``keys``, or one of them is not an .npy array, holds Python objects,
            declares more data than it holds, or cannot be read; the message names the
            file and the array.
    """
    keys = list(keys)
    with _open(path) as archive:
        members = {info.filename.removesuffix(".npy"): info for info in archive.infolist()}
        missing = [key for key in keys if key not in members]
        if missing:
            raise _fail(
                path,
                f"has no array {', '.join(missing)} (it holds "
                f"{', '.join(members) or 'no arrays'}); save {', '.join(keys)} with "
                "numpy.savez.",
            )
        arrays = {}
        for key in keys:
            _check_header(archive, members[key], path, key)
            try:
                with archive.open(members[key]) as file:
                    arrays[key] = np.lib.format.read_array(file, allow_pickle=False)
            except MemoryError:
                raise _fail(
                    path, f"{key} is too large to fit in memory; store a smaller data set."
                ) from None
            except _READ_ERRORS as error:
                raise _unreadable(path, key, error) from None
    return arrays
