"""Downloading the gzipped IDX files of MNIST and Fashion-MNIST from public mirrors, checked by MD5.

Each file is streamed into a temporary file in the target directory, checked against its published MD5 and
only then renamed into place, so an interrupted or corrupt download never leaves a file that looks complete.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from pathlib import Path
from typing import Iterable, Sequence

from tqdm import tqdm

from genlab.data.idx import DataError
from genlab.errors import describe_os_error

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
ANSWER_SECONDS = 60.0         # from the request to the end of the answer's headers (a server dripping them, or
#                               sending interim answers without end, held a download for ever before a byte of data)


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
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise DataError(f"GENLAB_MIRROR={override!r} is not an http(s) URL; give a base URL like "
                        "https://example.org/mnist/, or unset it for the data sets' own mirrors")
    if parts.username is not None or parts.password is not None:  # not said back: it may hold a password
        raise DataError("GENLAB_MIRROR holds a user name (and password), which genlab does not send; give a mirror "
                        "that needs none, or unset it for the data sets' own mirrors")
    if parts.query or parts.fragment:  # each file's name would go after them, into the query or the fragment
        raise DataError(f"GENLAB_MIRROR={override!r} has a query or a fragment; give the folder's URL alone, like "
                        "https://example.org/mnist/")
    try:  # the host as the Host header carries it (a name in other scripts is spelt in ASCII)
        host = parts.hostname.encode("idna").decode("ascii")
    except UnicodeError:
        raise DataError(f"GENLAB_MIRROR={override!r}: {parts.hostname!r} is not a host name; give a base URL like "
                        "https://example.org/mnist/") from None
    netloc = f"[{host}]" if ":" in host else host
    netloc += f":{parts.port}" if parts.port is not None else ""
    return (urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", "")),)


def download_files(filenames: Iterable[str], directory: str | Path, mirrors: Sequence[str],
                   checksums: dict[str, str], timeout: float = 30.0, progress: bool | None = None,
                   contents: dict[str, str] | None = None) -> list[Path]:
    """Download each of ``filenames`` into ``directory``, trying ``mirrors`` in order, and check its MD5.

    ``checksums`` maps each file name to its hex MD5; ``contents``, where given, a gzipped file's name to the
    MD5 of its decompressed bytes, which a file of another MD5 may match instead (the same data compressed
    again, as Debian's Fashion-MNIST is). ``progress``: True/False forces the progress bar on/off, None shows
    it on a terminal only. Raises ``DownloadFailed`` when every mirror fails for a file (a file that matches
    neither MD5 is deleted).
    """
    directory = Path(directory)
    made = [folder for folder in (directory, *directory.parents) if not folder.exists()]  # innermost first
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create {directory} ({e.strerror}); choose a writable directory with GENLAB_DATA_DIR "
                        "(or --data-dir of train, reproduce and datasets)") from None
    names = list(filenames)
    _remove_stale_parts(directory, names)
    try:
        return [_download_one(name, directory, mirrors, (checksums[name], (contents or {}).get(name)), timeout,
                              progress) for name in names]
    except BaseException:
        for folder in made:  # a failed first download leaves no empty folders behind
            try:
                folder.rmdir()
            except OSError:
                break  # not empty (a file it did fetch, or somebody else's)
        raise


def _remove_stale_parts(directory: Path, names: Sequence[str]) -> None:
    """Remove what downloads killed outright left (``.NAME.*.part``): a live download writes to its file at
    least once a second past its first minute and ends within ``DOWNLOAD_SECONDS``, so one untouched for longer
    is no one's."""
    now = time.time()
    for name in names:
        for part in directory.glob(f".{name}.*.part"):
            try:
                if now - part.stat().st_mtime > DOWNLOAD_SECONDS + GRACE_SECONDS:
                    part.unlink()
            except OSError:
                pass  # gone meanwhile, or not ours to remove: it never looks like a data file


def _download_one(filename: str, directory: Path, mirrors: Sequence[str], md5: tuple[str, str | None],
                  timeout: float, progress: bool | None) -> Path:
    attempts = []
    for base in mirrors:
        url = base.rstrip("/") + "/" + filename
        try:
            return _fetch(url, directory / filename, md5, timeout, progress)
        except (OSError, http.client.HTTPException, ValueError) as e:  # URLError, HTTPError, timeouts: OSErrors;
            attempts.append(f"{url}: {_reason(e)}")  # a malformed URL, a short or wrong file: ValueError
    raise DownloadFailed("; ".join(attempts) or f"no mirror given for {filename}")


def _reason(e: BaseException) -> str:
    """Why a mirror failed, in words a terminal shows as they are: what a server sends (its status line, its
    reason phrase) may hold any bytes, escape sequences included, so those are written as escapes, and shortened."""
    if isinstance(e, urllib.error.HTTPError):
        text = f"HTTP {e.code} {e.reason or ''}".strip()
    else:
        text = str(getattr(e, "reason", None) or e) or type(e).__name__
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    if isinstance(e, http.client.BadStatusLine) and not isinstance(e, http.client.RemoteDisconnected):
        return f"answered with something that is not HTTP (it began {shown[:40]})"  # its file, say, headers none
    return shown if len(shown) <= 200 else shown[:200] + "..."


class _Watchdog:
    """Ends the connections of one download when its server has not finished answering (status line and
    headers) within ``seconds``: each read has its own timeout, which a byte every few seconds, or one interim
    answer after another, never lets run out. ``opener`` opens URLs whose connections it watches."""

    def __init__(self, seconds: float):
        self.sockets: list[socket.socket] = []
        self.fired = False
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        watchdog = self

        def watched(connection_class):
            class Watched(connection_class):
                def connect(self):
                    super().connect()
                    watchdog.sockets.append(self.sock)
            return Watched

        class HTTP(urllib.request.HTTPHandler):
            def do_open(self, http_class, req, **kwargs):
                return super().do_open(watched(http_class), req, **kwargs)

        class HTTPS(urllib.request.HTTPSHandler):
            def do_open(self, http_class, req, **kwargs):
                return super().do_open(watched(http_class), req, **kwargs)

        self.opener = urllib.request.build_opener(HTTP, HTTPS)

    def _fire(self) -> None:
        self.fired = True
        for sock in self.sockets:
            try:  # the plain socket's shutdown (an SSL socket's own would drop its state under the reader)
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass

    def __enter__(self):
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()


def _check_pace(received: int, seconds: float) -> None:
    """Give up on a download that has sent too much, taken too long, or crawls (each a ValueError, said as one
    mirror's failure)."""
    if received > MAX_DOWNLOAD_BYTES:
        raise ValueError(f"sent more than {MAX_DOWNLOAD_BYTES:,} bytes, more than any data file genlab downloads")
    if seconds > DOWNLOAD_SECONDS:
        raise ValueError(f"took more than {DOWNLOAD_SECONDS:.0f} s")
    if seconds > GRACE_SECONDS and received < SLOWEST_BYTES_PER_S * seconds:
        raise ValueError(f"sent {received:,} bytes in {seconds:.0f} s, under {SLOWEST_BYTES_PER_S:,} bytes a second")


def _fetch(url: str, target: Path, md5: tuple[str, str | None], timeout: float, progress: bool | None) -> Path:
    """``url`` into ``target`` through a hidden temporary file beside it, renamed into place once its MD5 is
    right (``md5``: the file's, and its decompressed bytes' or None; see ``download_files``). The mirror's
    failures are ValueErrors and OSErrors (the next mirror is tried); a failure to write here (a full disk, a
    read-only folder) is a DataError: no mirror can help with it."""
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
        out = os.fdopen(fd, "wb", buffering=0)  # unbuffered: a full disk is met by the write that meets it
    except OSError as e:
        raise DataError(f"cannot write into {target.parent}: {describe_os_error(e)}") from None
    try:
        digest, began, received = hashlib.md5(usedforsecurity=False), time.monotonic(), 0
        response = None
        with _Watchdog(ANSWER_SECONDS) as watchdog:
            try:
                response = watchdog.opener.open(url, timeout=timeout)
            except (OSError, http.client.HTTPException):
                if not watchdog.fired:
                    raise
        if watchdog.fired:  # what came before the connection was ended may even parse as an answer
            if response is not None:
                response.close()
            raise ValueError(f"had not answered in {ANSWER_SECONDS:.0f} s")
        with out, response:
            total = int(response.headers.get("Content-Length") or 0) or None
            if total and total > MAX_DOWNLOAD_BYTES:
                raise ValueError(f"announces {total:,} bytes, more than any data file genlab downloads")
            with tqdm(total=total, unit="B", unit_scale=True, desc=target.name,
                      disable=None if progress is None else not progress) as bar:
                while chunk := response.read1(1 << 16):  # what has come, not a full 64 KiB: the clock is read
                    received += len(chunk)
                    _write(out, chunk, target)
                    digest.update(chunk)
                    bar.update(len(chunk))
                    _check_pace(received, time.monotonic() - began)
        if total is not None and received != total:
            raise ValueError(f"sent {received:,} of the {total:,} bytes it announced (the connection ended early)")
        got, (wanted, content) = digest.hexdigest(), md5
        if got != wanted and (content is None or _gunzipped_md5(Path(tmp)) != content):
            raise ValueError(f"sent a file that failed its MD5 check (expected {wanted}, got {got}; it was deleted)")
        os.chmod(tmp, 0o644)  # mkstemp makes it private; data files are for everyone who shares the directory
        os.replace(tmp, target)
        return target
    except BaseException:
        out.close()
        Path(tmp).unlink(missing_ok=True)
        raise


def _gunzipped_md5(path: Path) -> str | None:
    """The MD5 of the gzipped file ``path`` decompressed, or None where it is no gzip file or inflates past
    ``MAX_DOWNLOAD_BYTES`` four times over (more than any IDX file of the data sets)."""
    digest, size = hashlib.md5(usedforsecurity=False), 0
    try:
        with gzip.open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                size += len(chunk)
                if size > 4 * MAX_DOWNLOAD_BYTES:
                    return None
                digest.update(chunk)
    except (OSError, EOFError, zlib.error):  # gzip.BadGzipFile is an OSError
        return None
    return digest.hexdigest()


def _write(out, chunk: bytes, target: Path) -> None:
    view = memoryview(chunk)
    try:
        while view:  # an unbuffered write may take part of what it is given
            view = view[out.write(view):]
    except OSError as e:
        raise DataError(f"cannot write {target.name} into {target.parent}: {describe_os_error(e)}") from None
