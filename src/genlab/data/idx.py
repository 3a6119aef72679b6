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


MAX_BYTES = 1 << 32  # the most data one IDX file may declare (MNIST's largest holds 47 MB)


def read_idx(path: str | Path) -> np.ndarray:
    """Read a whole IDX file (raw or gzipped) into a writable uint8 array: images [N, 28, 28] or labels [N].

    The header is read first and only the bytes it declares are decompressed (and one more, to find data
    that should not be there), so a small file that inflates to gigabytes costs no memory. Raises
    ``DataError`` naming the file when the magic number is wrong, the gzip stream is corrupt, or the data is
    shorter or longer than the header's dimensions say.
    """
    path, gzipped = Path(path), False
    try:
        with open(path, "rb") as raw:
            gzipped = raw.read(2) == GZIP_MAGIC
            raw.seek(0)
            f = gzip.GzipFile(fileobj=raw) if gzipped else raw
            head = f.read(4)
            dims = _header(head + f.read(4 * head[3]) if len(head) == 4 else head, path)
            size = math.prod(dims)
            if size > MAX_BYTES:
                raise DataError(f"{path}: the header declares shape {dims} ({size:,} bytes), more than genlab "
                                f"reads from one file ({MAX_BYTES:,}); the file is damaged or not a data set")
            data = np.empty(size, np.uint8)
            found = _read_into(f, memoryview(data))
            if found < size:
                raise DataError(f"{path}: truncated: the header declares shape {dims} ({size} bytes of data), "
                                f"but only {found} bytes follow")
            if f.read(1):
                raise DataError(f"{path}: unexpected bytes after the {size} bytes of data of shape {dims}")
    except OSError as e:
        what = "corrupt gzip data" if gzipped else "cannot read"
        raise DataError(f"{path}: {what} ({e.strerror or e}); delete the file and fetch it again") from None
    except (EOFError, zlib.error) as e:
        raise DataError(f"{path}: corrupt gzip data ({e}); delete the file and fetch it again") from None
    return data.reshape(dims)


def _read_into(f, view: memoryview) -> int:
    """Fill ``view`` from ``f`` as far as it goes; the number of bytes read."""
    done = 0
    while done < len(view):
        n = f.readinto(view[done:])
        if not n:
            break
        done += n
    return done


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
