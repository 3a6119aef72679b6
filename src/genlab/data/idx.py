"""Reading IDX files, the format MNIST and Fashion-MNIST are distributed in.

An IDX file is a big-endian header: two zero bytes, a type byte (0x08: unsigned byte), the number of
dimensions, then one uint32 size per dimension; the values follow in C order. genlab reads the two kinds its
data sets use: labels (magic 0x00000801, shape [N]) and images (magic 0x00000803, shape [N, rows, cols]).
A file may be gzip-compressed; that is recognised by the gzip magic bytes, not by the file name.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

from genlab.errors import GenlabError

GZIP_MAGIC = b"\x1f\x8b"
KINDS = {0x00000801: "labels", 0x00000803: "images"}  # magic number -> contents; its last byte is the ndim


class DataError(GenlabError):
    """A data file or data set that cannot be used: missing, truncated, corrupt or inconsistent."""


def _header(head: bytes, path: Path) -> tuple[int, ...]:
    """The shape declared by the header at the start of ``head``."""
    if len(head) < 4:
        raise DataError(f"{path}: too short for an IDX header ({len(head)} bytes)")
    magic = int.from_bytes(head[:4], "big")
    if magic not in KINDS:
        raise DataError(f"{path}: not an IDX file of images or labels (magic number 0x{magic:08x}, expected "
                        f"0x00000803 for images or 0x00000801 for labels)")
    ndim = head[3]
    if len(head) < 4 + 4 * ndim:
        raise DataError(f"{path}: truncated inside the IDX header")
    return tuple(int(d) for d in np.frombuffer(head, ">u4", count=ndim, offset=4))


def read_idx(path: str | Path) -> np.ndarray:
    """Read a whole IDX file (raw or gzipped) into a writable uint8 array: images [N, 28, 28] or labels [N].

    Raises ``DataError`` naming the file when the magic number is wrong, the gzip stream is corrupt, or the
    data is shorter or longer than the header's dimensions say.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    if raw[:2] == GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path}: corrupt gzip data ({e}); delete the file and fetch it again") from None
    dims = _header(raw, path)
    offset = 4 + 4 * len(dims)
    size, found = math.prod(dims), len(raw) - offset
    if found < size:
        raise DataError(f"{path}: truncated: the header declares shape {dims} ({size} bytes of data), "
                        f"but only {found} bytes follow")
    if found > size:
        raise DataError(f"{path}: {found - size} unexpected bytes after the {size} bytes of data of shape {dims}")
    # One copy makes the array writable (frombuffer over bytes is read-only), which torch.from_numpy wants.
    return np.frombuffer(raw, np.uint8, count=size, offset=offset).reshape(dims).copy()


def idx_shape(path: str | Path) -> tuple[int, ...]:
    """The shape an IDX file declares, read from its header alone (cheap: the data is not read or checked)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            gzipped = f.read(2) == GZIP_MAGIC
            f.seek(0)
            head = (gzip.GzipFile(fileobj=f) if gzipped else f).read(4 + 4 * 3)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read the IDX header ({e})") from None
    return _header(head, path)
