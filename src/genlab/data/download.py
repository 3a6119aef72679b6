"""Downloading the gzipped IDX files of MNIST and Fashion-MNIST from public mirrors, checked by MD5.

Each file is streamed into a temporary file in the target directory, checked against its published MD5 and
only then renamed into place, so an interrupted or corrupt download never leaves a file that looks complete.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Iterable, Sequence

from tqdm import tqdm

from genlab.data.idx import DataError

# Tried in order; the environment variable GENLAB_MIRROR replaces the list by one base URL.
MIRRORS = {
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
}

# MD5 of each .gz file as distributed by the data sets' authors.
CHECKSUMS = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    # As published by zalandoresearch/fashion-mnist. Debian's dataset-fashion-mnist package recompressed the
    # files without the stored file name, so its .gz files have other MD5s, while the decompressed IDX bytes
    # are the same (train images f4a8712d7a061bf5bd6d2ca38dc4d50a, train labels 9018921c3c673c538a1fc5bad174d6f9,
    # test images 8181f5470baa50b63fa0f6fddb340f0a, test labels 15d484375f8d13e6eb1aabb0c3f46965).
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
}

# MD5 of each decompressed IDX file: what genlab checks on first use, whatever the compression (or none) on disk.
# Fashion-MNIST's are the authors' (see above); MNIST's were computed from the files whose .gz MD5s are above and
# agree with the SHA-256 of the uncompressed files listed beside the shared copy of the data.
IDX_CHECKSUMS = {
    "mnist": {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
}


class DownloadFailed(DataError):
    """No mirror delivered a file: offline, blocked, or the file is gone. The message lists each attempt."""


# The largest file genlab downloads is Fashion-MNIST's training images, 26 MB; a mirror sending more, or too
# slowly, is given up on (one sending a byte every few seconds held a download for ever).
MAX_DOWNLOAD_BYTES = 64 << 20
DOWNLOAD_SECONDS = 600.0      # a whole file, from the request to its last byte
SLOWEST_BYTES_PER_S = 1024    # held to once a download has run for GRACE_SECONDS
GRACE_SECONDS = 60.0


def mirrors_for(name: str) -> tuple[str, ...]:
    """The base URLs to try for data set ``name``: $GENLAB_MIRROR alone when set, else ``MIRRORS[name]``."""
    override = os.environ.get("GENLAB_MIRROR")
    if not override:
        return MIRRORS[name]
    try:
        parts = urllib.parse.urlsplit(override.strip())
        parts.port  # noqa: B018 - reading it checks the port
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        raise DataError(f"GENLAB_MIRROR={override!r} is not an http(s) URL; give a base URL like "
                        "https://example.org/mnist/, or unset it for the data sets' own mirrors")
    return (override.strip(),)


def download_files(filenames: Iterable[str], directory: str | Path, mirrors: Sequence[str],
                   checksums: dict[str, str], timeout: float = 30.0, progress: bool | None = None) -> list[Path]:
    """Download each of ``filenames`` into ``directory``, trying ``mirrors`` in order, and check its MD5.

    ``checksums`` maps each file name to its hex MD5. ``progress``: True/False forces the progress bar on/off,
    None shows it on a terminal only. Raises ``DownloadFailed`` when every mirror fails for a file and
    ``DataError`` on an MD5 mismatch (the bad download is deleted).
    """
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create {directory} ({e.strerror}); choose a writable directory with GENLAB_DATA_DIR "
                        "(or --data-dir of train, reproduce and datasets)") from None
    return [_download_one(name, directory, mirrors, checksums[name], timeout, progress) for name in filenames]


def _download_one(filename: str, directory: Path, mirrors: Sequence[str], md5: str, timeout: float,
                  progress: bool | None) -> Path:
    attempts = []
    for base in mirrors:
        url = base.rstrip("/") + "/" + filename
        try:
            return _fetch(url, directory / filename, md5, timeout, progress)
        except (OSError, http.client.HTTPException, ValueError) as e:  # URLError, HTTPError, timeouts: OSErrors;
            attempts.append(f"{url}: {getattr(e, 'reason', None) or e}")  # a malformed URL or _check_pace's: ValueError
    raise DownloadFailed("; ".join(attempts) or f"no mirror given for {filename}")


def _check_pace(received: int, seconds: float) -> None:
    """Give up on a download that has sent too much, taken too long, or crawls (each a ValueError, said as one
    mirror's failure)."""
    if received > MAX_DOWNLOAD_BYTES:
        raise ValueError(f"sent more than {MAX_DOWNLOAD_BYTES:,} bytes, more than any data file genlab downloads")
    if seconds > DOWNLOAD_SECONDS:
        raise ValueError(f"took more than {DOWNLOAD_SECONDS:.0f} s")
    if seconds > GRACE_SECONDS and received < SLOWEST_BYTES_PER_S * seconds:
        raise ValueError(f"sent {received:,} bytes in {seconds:.0f} s, under {SLOWEST_BYTES_PER_S:,} bytes a second")


def _fetch(url: str, target: Path, md5: str, timeout: float, progress: bool | None) -> Path:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        digest, began, received = hashlib.md5(usedforsecurity=False), time.monotonic(), 0
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            if total and total > MAX_DOWNLOAD_BYTES:
                raise ValueError(f"announces {total:,} bytes, more than any data file genlab downloads")
            with tqdm(total=total, unit="B", unit_scale=True, desc=target.name,
                      disable=None if progress is None else not progress) as bar:
                while chunk := response.read1(1 << 16):  # what has come, not a full 64 KiB: the clock is read
                    received += len(chunk)
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
                    _check_pace(received, time.monotonic() - began)
        got = digest.hexdigest()
        if got != md5:
            raise DataError(f"{target.name} from {url} failed its MD5 check (expected {md5}, got {got}); "
                            f"the download was deleted")
        os.chmod(tmp, 0o644)  # mkstemp makes it private; data files are for everyone who shares the directory
        os.replace(tmp, target)
        return target
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
