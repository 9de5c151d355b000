"""The IDX file format of MNIST and Fashion-MNIST, gzipped or not.

An IDX file is a 4-byte magic number ``00 00 <type> <ndim>``, then ``ndim``
big-endian uint32 dimensions, then the values in row-major order, big-endian.
MNIST images are type 0x08 (uint8) with dims (N, 28, 28); labels are uint8
with dims (N,).
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from normlab.data.dataset import DataError

GZIP_MAGIC = b"\x1f\x8b"

# IDX type code -> (numpy dtype of the stored big-endian values, name for messages)
IDX_TYPES: dict[int, tuple[str, str]] = {
    0x08: ("u1", "uint8"),
    0x09: ("i1", "int8"),
    0x0B: (">i2", "int16"),
    0x0C: (">i4", "int32"),
    0x0D: (">f4", "float32"),
    0x0E: (">f8", "float64"),
}

_REPLACE = "Download or copy the file again."


def read_maybe_gzipped(path: Path) -> bytes:
    """The bytes of ``path``, decompressed if it is gzip (a .gz suffix or gzip's magic bytes).

    Raises:
        DataError: the file is missing or unreadable, or its gzip stream is
            corrupt or truncated.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path} does not exist.") from None
    except OSError as error:
        raise DataError(f"cannot read {path}: {error}.") from error
    if path.suffix != ".gz" and not raw.startswith(GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except EOFError as error:
        raise DataError(
            f"{path} is a truncated gzip file: the compressed data ends before the end of "
            f"the stream ({error}). {_REPLACE}"
        ) from error
    except (OSError, zlib.error) as error:  # gzip.BadGzipFile is an OSError
        raise DataError(
            f"{path} is a corrupt gzip file ({error}). {_REPLACE} "
            "An uncompressed file (without the .gz suffix) works too."
        ) from error


def parse_idx(data: bytes, source: str | os.PathLike) -> torch.Tensor:
    """Decode the IDX bytes ``data``; ``source`` names the file in error messages.

    Returns:
        A tensor with the header's dims as its shape, in native byte order:
        uint8 for type 0x08, else int8, int16, int32, float32 or float64.

    Raises:
        DataError: bad magic number, unknown type code, or a data size that is
            not exactly what the header promises.
    """
    if len(data) < 4:
        raise DataError(
            f"{source} is truncated: it has {len(data)} bytes, fewer than the 4 of an "
            f"IDX magic number. {_REPLACE}"
        )
    zero_a, zero_b, type_code, ndim = data[:4]
    if zero_a != 0 or zero_b != 0:
        raise DataError(
            f"{source} is not an IDX file: it starts with {data[:4].hex(' ')}, where an IDX "
            "file starts with 00 00 <type> <ndim> (MNIST images: 00 00 08 03, labels: "
            f"00 00 08 01). Is it the right file? {_REPLACE}"
        )
    if type_code not in IDX_TYPES:
        known = ", ".join(f"0x{code:02X} ({name})" for code, (_, name) in IDX_TYPES.items())
        raise DataError(
            f"{source} has unknown IDX type code 0x{type_code:02X} in its magic number "
            f"{data[:4].hex(' ')}; known codes: {known}. The file is corrupt. {_REPLACE}"
        )
    if ndim == 0:
        raise DataError(f"{source} declares 0 dimensions in its IDX header. {_REPLACE}")
    header_bytes = 4 + 4 * ndim
    if len(data) < header_bytes:
        raise DataError(
            f"{source} is truncated: its header declares {ndim} dimensions "
            f"({header_bytes} header bytes), file has {len(data)} bytes. {_REPLACE}"
        )
    dims = struct.unpack(f">{ndim}I", data[4:header_bytes])
    stored = np.dtype(IDX_TYPES[type_code][0])
    promised = math.prod(dims) * stored.itemsize
    present = len(data) - header_bytes
    if present != promised:
        problem = "is truncated" if present < promised else "has extra bytes"
        raise DataError(
            f"{source} {problem}: header promises {promised} bytes of data (shape "
            f"{dims}, {IDX_TYPES[type_code][1]}), file has {present}. {_REPLACE}"
        )
    values = np.frombuffer(data, dtype=stored, count=math.prod(dims), offset=header_bytes)
    # astype copies into a writable array in native byte order, which torch needs.
    return torch.from_numpy(values.reshape(dims).astype(stored.newbyteorder("=")))


def read_idx(path: str | os.PathLike) -> torch.Tensor:
    """Read an IDX file, gzipped (by .gz suffix or content) or not, into a tensor.

    Returns:
        A tensor of the shape the header gives, e.g. (N, 28, 28) uint8 for
        MNIST images and (N,) uint8 for labels.

    Raises:
        DataError: the file is missing, its gzip stream is corrupt or
            truncated, its magic number is wrong, or it holds a different
            number of bytes than its header promises.
    """
    path = Path(path)
    return parse_idx(read_maybe_gzipped(path), path)
