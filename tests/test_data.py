"""Data sets on real data: the IDX reader, mnist-5k, downloads from a local server, the offline message."""

import contextlib
import functools
import gzip
import hashlib
import http.server
import os
import re
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from genlab.data import (DATASETS, DataError, clear_cache, describe_datasets, idx_shape, load_dataset, read_idx,
                         resolve_data_dir, resolve_dataset_name)
from genlab.data.datasets import SYSTEM_DIRS
from genlab.data.download import CHECKSUMS, download_files

# CI sets GENLAB_DATA_DIR (to ../shared/data); otherwise look beside the repository.
DATA_DIR = Path(os.environ.get("GENLAB_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data")
MNIST = DATA_DIR / "mnist"
STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def mnist_file(stem: str) -> Path | None:
    return next((p for p in (MNIST / stem, MNIST / f"{stem}.gz") if p.is_file()), None)


needs_mnist = pytest.mark.skipif(
    not all(mnist_file(s) for s in STEMS),
    reason=f"real MNIST not found in {MNIST}; set GENLAB_DATA_DIR to the directory holding mnist/")
FASHION = SYSTEM_DIRS["fashion-mnist"][0]
needs_fashion = pytest.mark.skipif(not (FASHION / "t10k-images-idx3-ubyte.gz").is_file(),
                                   reason=f"Fashion-MNIST not installed at {FASHION} (Debian: dataset-fashion-mnist)")


def raw_bytes(stem: str) -> bytes:
    data = mnist_file(stem).read_bytes()
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, session_cache):
    for var in ("GENLAB_DATA_DIR", "GENLAB_OFFLINE", "GENLAB_MIRROR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(session_cache))  # keep the user's cache out of the tests


# -- IDX reader -----------------------------------------------------------------------------------------------
@needs_mnist
def test_reader_accepts_real_mnist():
    train, labels = read_idx(mnist_file(STEMS[0])), read_idx(mnist_file(STEMS[1]))
    assert train.shape == (60000, 28, 28) and train.dtype == np.uint8 and train.flags.writeable
    assert labels.shape == (60000,)
    assert labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert np.bincount(labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert read_idx(mnist_file(STEMS[2])).shape == (10000, 28, 28)
    assert read_idx(mnist_file(STEMS[3]))[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert idx_shape(mnist_file(STEMS[0])) == (60000, 28, 28)


@needs_mnist
def test_reader_detects_gzip_by_content_not_name(tmp_path):
    raw = raw_bytes(STEMS[3])
    (tmp_path / "plain.gz").write_bytes(raw)  # a .gz name on raw bytes
    (tmp_path / "packed").write_bytes(gzip.compress(raw))  # gzip bytes without the name
    assert np.array_equal(read_idx(tmp_path / "plain.gz"), read_idx(tmp_path / "packed"))
    assert idx_shape(tmp_path / "packed") == idx_shape(tmp_path / "plain.gz") == (10000,)


def _write(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    return path


@needs_mnist
@pytest.mark.parametrize("damage, message", [
    (lambda b: b"\x00\x00\x08\x02" + b[4:], "magic number 0x00000802"),
    (lambda b: b"PK\x03\x04" + b[4:], "not an IDX file"),
    (lambda b: b[:2], "too short"),
    (lambda b: b[:-100], "truncated"),
    (lambda b: b + b"\x00" * 3, "unexpected bytes after"),
    (lambda b: b[:4] + (10**9).to_bytes(4, "big") + b[8:], "more than genlab reads from one file"),
    (lambda b: gzip.compress(b)[:-200], "corrupt gzip"),
    (lambda b: (lambda g: g[:500] + bytes([g[500] ^ 0xFF]) + g[501:])(gzip.compress(b)), "corrupt gzip"),
])
def test_reader_refuses_damaged_files(tmp_path, damage, message):
    sound = np.array([0x803, 50, 28, 28], ">u4").tobytes() + raw_bytes(STEMS[2])[16:16 + 784 * 50]
    assert read_idx(_write(tmp_path, "sound", sound)).shape == (50, 28, 28)
    path = _write(tmp_path, "t10k-images-idx3-ubyte", damage(sound))
    with pytest.raises(DataError, match=message) as err:
        read_idx(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_a_small_file_that_inflates_to_gigabytes_costs_no_memory(tmp_path):
    # Ten labels, then 256 MB of zeros, gzipped to about 250 KB: the reader decompresses what the header
    # declares and one byte more (it once inflated the whole stream first, 13 GB for a 6 MB file).
    import tracemalloc
    import zlib

    squeeze = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [squeeze.compress(np.array([0x801, 10], ">u4").tobytes() + bytes(range(10)))]
    parts += [squeeze.compress(bytes(1 << 24)) for _ in range(16)]
    bomb = _write(tmp_path, "train-labels-idx1-ubyte", b"".join(parts) + squeeze.flush())
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="unexpected bytes after the 10 bytes"):
            read_idx(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, peak


@needs_mnist
def test_count_mismatch_between_images_and_labels(tmp_path):
    images, labels = raw_bytes(STEMS[2]), raw_bytes(STEMS[3])
    n = 100  # 100 real test images, but only 99 labels
    small_images = np.array([0x803, n, 28, 28], ">u4").tobytes() + images[16:16 + 784 * n]
    short_labels = np.array([0x801, n - 1], ">u4").tobytes() + labels[8:8 + n - 1]
    root = tmp_path / "mnist"
    root.mkdir()
    for stem, data in zip(STEMS, (small_images, short_labels, small_images, short_labels)):
        _write(root, stem, data)
    assert read_idx(root / STEMS[2]).shape == (100, 28, 28)  # each file is sound on its own
    with pytest.raises(DataError, match="100 images .* but 99 labels"):
        load_dataset("mnist", "test", data_dir=tmp_path, download=False)
    entry = next(d for d in describe_datasets(tmp_path) if d["name"] == "mnist")
    assert not entry["available"] and "99 labels" in entry["why"]


# -- data sets ------------------------------------------------------------------------------------------------
@needs_mnist
def test_load_real_mnist_cached_and_described():
    train = load_dataset("mnist", "train", data_dir=DATA_DIR, download=False)
    assert train.images.shape == (60000, 28, 28) and train.images.dtype == torch.uint8
    assert train.labels.dtype == torch.int64 and train.labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert load_dataset("mnist", "train", data_dir=DATA_DIR) is train  # in-process cache
    assert len(load_dataset("mnist", "test", data_dir=DATA_DIR)) == 10000
    entry = next(d for d in describe_datasets(DATA_DIR) if d["name"] == "mnist")
    assert entry["available"] and entry["sizes"] == {"train": 60000, "test": 10000}
    assert resolve_dataset_name("auto", DATA_DIR) == "mnist"


def test_names_and_data_dir_resolution(tmp_path, monkeypatch):
    assert resolve_dataset_name("auto", tmp_path) == "mnist-5k"  # no MNIST files there
    with pytest.raises(DataError, match="choose one of: auto, mnist, fashion-mnist, mnist-5k"):
        load_dataset("cifar10")
    with pytest.raises(DataError, match="split"):
        load_dataset("mnist-5k", "validation")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_data_dir() == tmp_path / "xdg" / "genlab"
    monkeypatch.setenv("GENLAB_DATA_DIR", str(tmp_path / "env"))
    assert resolve_data_dir() == tmp_path / "env"
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    entry = {d["name"]: d for d in describe_datasets()}["mnist"]
    assert not entry["available"] and str(tmp_path / "env" / "mnist") in entry["why"]
    assert [d["name"] for d in describe_datasets()] == list(DATASETS)


@pytest.mark.slow
def test_mnist5k_split():
    train, test = load_dataset("mnist-5k", "train"), load_dataset("mnist-5k", "test")
    assert (len(train), len(test)) == (4500, 500)
    assert torch.bincount(train.labels).tolist() == [450] * 10 and torch.bincount(test.labels).tolist() == [50] * 10
    assert train.labels[:20].tolist() == list(range(10)) * 2  # interleaved by class
    assert train.images.dtype == torch.uint8 and train.images.max() == 255 and train.images.min() == 0
    both = torch.cat([train.images, test.images]).reshape(5000, -1).numpy()
    assert len({row.tobytes() for row in both}) == 5000  # train and test are disjoint


@pytest.mark.slow
@needs_mnist
def test_mnist5k_digits_are_genuine_mnist():
    # Every digit is a real MNIST training digit, with the same label.
    train, test = load_dataset("mnist-5k", "train"), load_dataset("mnist-5k", "test")
    real = load_dataset("mnist", "train", data_dir=DATA_DIR, download=False)
    where = {row.tobytes(): i for i, row in enumerate(real.images.reshape(60000, -1).numpy())}
    for ds in (train, test):
        rows = [where.get(img.tobytes(), -1) for img in ds.images.reshape(len(ds), -1).numpy()]
        assert min(rows) >= 0
        assert torch.equal(real.labels[rows], ds.labels)


def test_mnist5k_npz_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    clear_cache()
    first = load_dataset("mnist-5k", "test")
    cache = tmp_path / "genlab" / "mnist-5k.npz"
    assert cache.is_file() and not list(cache.parent.glob("*.tmp"))
    clear_cache()
    again = load_dataset("mnist-5k", "test")
    assert again.source == str(cache) and torch.equal(again.images, first.images)
    assert torch.equal(again.labels, first.labels)
    cache.write_bytes(b"not a zip file")  # a damaged cache is rebuilt, not trusted
    clear_cache()
    assert torch.equal(load_dataset("mnist-5k", "test").images, first.images)
    assert np.load(cache, allow_pickle=False)["images"].shape == (5000, 28, 28)
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))  # not a directory: caching is skipped
    clear_cache()
    assert len(load_dataset("mnist-5k", "train")) == 4500
    clear_cache()


@needs_fashion
def test_fashion_mnist_found_at_debian_location(tmp_path):
    test = load_dataset("fashion-mnist", "test", data_dir=tmp_path, download=False)
    assert test.source == str(FASHION) and test.images.shape == (10000, 28, 28)
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    entry = {d["name"]: d for d in describe_datasets(tmp_path)}["fashion-mnist"]
    assert entry["available"] and entry["sizes"] == {"train": 60000, "test": 10000}


# -- downloads ------------------------------------------------------------------------------------------------
class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def serve():
    """serve(directory) -> base URL of a threaded HTTP server on 127.0.0.1 serving that directory."""
    servers = []

    def start(directory: Path) -> str:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                                 functools.partial(_QuietHandler, directory=str(directory)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def closed_port_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"  # nothing listens there now: connections are refused


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@needs_mnist
def test_download_checks_md5_and_falls_back_to_next_mirror(tmp_path, serve, closed_port_url):
    served = tmp_path / "served"
    served.mkdir()
    good = gzip.compress(raw_bytes(STEMS[3]))
    (served / "labels.gz").write_bytes(good)
    target = tmp_path / "target"
    [path] = download_files(["labels.gz"], target, [closed_port_url, serve(served)], {"labels.gz": _md5(good)},
                            timeout=5, progress=False)
    assert path == target / "labels.gz" and path.read_bytes() == good
    assert read_idx(path)[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert sorted(p.name for p in target.iterdir()) == ["labels.gz"]  # no temporary file left


def test_a_mirrors_file_compressed_again_is_taken_by_its_decompressed_md5(tmp_path, serve):
    # A mirror of Debian's Fashion-MNIST (the authors' bytes, gzipped again without the file name) was refused:
    # only the .gz file's MD5 was checked, where a file on disk is checked by its decompressed bytes.
    payload = b"the bytes of an IDX file" * 100
    published, again = gzip.compress(payload, mtime=1), gzip.compress(payload, compresslevel=1, mtime=2)
    assert _md5(published) != _md5(again)
    served = tmp_path / "served"
    served.mkdir()
    (served / "f.gz").write_bytes(again)
    [path] = download_files(["f.gz"], tmp_path / "got", [serve(served)], {"f.gz": _md5(published)}, timeout=5,
                            progress=False, contents={"f.gz": _md5(payload)})
    assert path.read_bytes() == again
    with pytest.raises(DataError, match="failed its MD5 check"):  # other bytes inside: still refused
        download_files(["f.gz"], tmp_path / "other", [serve(served)], {"f.gz": _md5(published)}, timeout=5,
                       progress=False, contents={"f.gz": _md5(payload + b"!")})
    assert not (tmp_path / "other").exists()


def test_download_md5_mismatch_leaves_nothing(tmp_path, serve):
    served = tmp_path / "served"
    served.mkdir()
    (served / "labels.gz").write_bytes(gzip.compress(b"some bytes that are not the published file"))
    target = tmp_path / "data" / "target"
    wrong = "0" * 32
    with pytest.raises(DataError, match=f"labels.gz: sent a file that failed its MD5 check .expected {wrong}, "
                                        f"got [0-9a-f]{{32}}; it was deleted"):
        download_files(["labels.gz"], target, [serve(served)], {"labels.gz": wrong}, timeout=5, progress=False)
    assert not (tmp_path / "data").exists()  # nor the folders made for it (an empty mnist/ was left behind)
    target.mkdir(parents=True)
    with pytest.raises(DataError, match="failed its MD5 check"):
        download_files(["labels.gz"], target, [serve(served)], {"labels.gz": wrong}, timeout=5, progress=False)
    assert list(target.iterdir()) == []  # a folder that was there stays


class _DripHandler(http.server.BaseHTTPRequestHandler):
    """Announces a file, then sends it a byte every 0.2 s (a broken or hostile mirror); /huge announces 1 GB."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(1 << 30 if self.path.endswith("huge") else 100_000))
        self.end_headers()
        with contextlib.suppress(OSError):
            for _ in range(200):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.2)

    def log_message(self, *args):
        pass


class _HostileHandler(http.server.BaseHTTPRequestHandler):
    """What a broken or hostile mirror answers, by path: /drip drips its headers, /continue sends interim answers
    without end, /short closes half-way through the body it announced, /status answers 404 with escape
    sequences in its reason phrase, /good the file the test put in ``good``."""
    good = b""

    def do_GET(self):
        with contextlib.suppress(OSError):
            if self.path.endswith("drip"):
                self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                for _ in range(100):
                    self.wfile.write(b"a")
                    self.wfile.flush()
                    time.sleep(0.1)
            elif self.path.endswith("continue"):
                for _ in range(10 ** 6):
                    self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n" * 100)
            elif self.path.endswith("short"):
                self.send_response(200)
                self.send_header("Content-Length", str(len(self.good)))
                self.end_headers()
                self.wfile.write(self.good[:len(self.good) // 2])
            elif self.path.endswith("status"):
                self.wfile.write(b"HTTP/1.1 404 Gone\x1b]0;owned\x07\x1b[2J\r\nContent-Length: 0\r\n\r\n")
            else:
                self.send_response(200)
                self.send_header("Content-Length", str(len(self.good)))
                self.end_headers()
                self.wfile.write(self.good)

    def log_message(self, *args):
        pass


def test_a_mirror_that_never_finishes_answering_or_says_too_little_is_one_line(tmp_path, monkeypatch):
    # Headers dripped a byte at a time, or interim "100 Continue" answers without end, held a download for
    # ever with nothing said (the time and size limits began with the body); a body cut short was called a
    # failed MD5 check; a 404 was said by its reason phrase alone, escape sequences and all.
    import genlab.data.download as download

    _HostileHandler.good = gzip.compress(b"the file")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HostileHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    monkeypatch.setattr(download, "ANSWER_SECONDS", 1.0)
    md5 = {name: _md5(_HostileHandler.good) for name in ("drip", "continue", "short", "status", "good")}
    try:
        for name, words in (("drip", "drip: had not answered in 1 s"), ("continue", "continue: had not answered"),
                            ("short", "short: sent 14 of the 28 bytes it announced (the connection ended early)"),
                            ("status", r"status: HTTP 404 Gone\x1b]0;owned\x07\x1b[2J")):
            began = time.monotonic()
            with pytest.raises(DataError) as info:
                download_files([name], tmp_path, [base], md5, timeout=5, progress=False)
            assert words in str(info.value) and "\x1b" not in str(info.value), str(info.value)
            assert time.monotonic() - began < 5
        # A mirror that fails the MD5 check is one mirror's failure: the next one is tried.
        (tmp_path / "served").mkdir()
        (tmp_path / "served" / "good").write_bytes(b"another file")
        fallback = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(
            _QuietHandler, directory=str(tmp_path / "served")))
        threading.Thread(target=fallback.serve_forever, daemon=True).start()
        wrong_first = f"http://127.0.0.1:{fallback.server_address[1]}/"
        [path] = download_files(["good"], tmp_path / "got", [wrong_first, base], md5, timeout=5, progress=False)
        assert path.read_bytes() == _HostileHandler.good
        fallback.shutdown()
        fallback.server_close()
    finally:
        server.shutdown()
        server.server_close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["got", "served"]  # no temporary file left


def test_what_a_killed_download_left_is_removed_by_the_next(tmp_path, serve):
    # A download killed outright (SIGKILL) left its hidden .part file for good.
    (tmp_path / "served").mkdir()
    (tmp_path / "served" / "f.gz").write_bytes(b"x" * 1000)
    target = tmp_path / "target"
    target.mkdir()
    stale, live = target / ".f.gz.abc123.part", target / ".f.gz.def456.part"
    for part in (stale, live):
        part.write_bytes(b"x" * 10)
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    download_files(["f.gz"], target, [serve(tmp_path / "served")], {"f.gz": _md5(b"x" * 1000)}, timeout=5,
                   progress=False)
    assert sorted(p.name for p in target.iterdir()) == [live.name, "f.gz"]  # another download's may be live


def test_a_full_disk_while_downloading_is_said_as_such(tmp_path, monkeypatch, serve):
    # ENOSPC was said as the mirror's failure, with advice to put the files into the full folder (and the
    # next mirror sent the whole file again).
    import genlab.data.download as download

    (tmp_path / "served").mkdir()
    (tmp_path / "served" / "f.gz").write_bytes(b"x" * 1000)
    real = os.fdopen
    monkeypatch.setattr(download.os, "fdopen", lambda fd, *a, **k: (os.close(fd), real(
        os.open("/dev/full", os.O_WRONLY), *a, **k))[1])
    with pytest.raises(DataError, match=r"cannot write f.gz into .*: No space left on device; free space"):
        download_files(["f.gz"], tmp_path / "target", [serve(tmp_path / "served")], {"f.gz": "0" * 32},
                       timeout=5, progress=False)
    assert not (tmp_path / "target").exists()  # made for the download, removed with it


def test_a_mirror_that_crawls_or_sends_too_much_is_given_up_on(tmp_path, monkeypatch):
    # A mirror sending a byte every few seconds held the download for ever (each read had its own timeout),
    # and nothing bounded what a mirror could send before the MD5 check at the end.
    import genlab.data.download as download

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _DripHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    monkeypatch.setattr(download, "GRACE_SECONDS", 1.0)
    try:
        began = time.monotonic()
        with pytest.raises(DataError, match="under 1,024 bytes a second"):
            download_files(["labels.gz"], tmp_path, [base], {"labels.gz": "0" * 32}, timeout=5, progress=False)
        assert time.monotonic() - began < 10
        with pytest.raises(DataError, match="announces 1,073,741,824 bytes"):
            download_files(["huge"], tmp_path, [base], {"huge": "0" * 32}, timeout=5, progress=False)
    finally:
        server.shutdown()
        server.server_close()
    assert list(tmp_path.iterdir()) == []  # no temporary file left


@pytest.mark.parametrize("mirror", ["mirror.example.com/mnist", "not a url", "http://[::1", "ftp://example.org/",
                                    "http://:80/"])
def test_a_mirror_that_is_not_an_http_url_is_one_line(tmp_path, monkeypatch, mirror):
    # It was a 41-line traceback (urllib's "unknown url type"), exit 70.
    monkeypatch.setenv("GENLAB_MIRROR", mirror)
    with pytest.raises(DataError, match=r"GENLAB_MIRROR=.* is not an http\(s\) URL"):
        load_dataset("mnist", "test", data_dir=tmp_path)


@pytest.mark.parametrize("mirror,words", [
    ("http://user:s3cret@127.0.0.1:9/", "GENLAB_MIRROR holds a user name (and password), which genlab does not send"),
    ("http://127.0.0.1:9/?token=abc", "has a query or a fragment"),  # the file's name went after the query
    ("http://127.0.0.1:9/mnist/#part", "has a query or a fragment"),
    ("http://a..b/", "'a..b' is not a host name"),
])
def test_a_mirror_url_genlab_cannot_use_as_given_is_one_line(tmp_path, monkeypatch, mirror, words):
    monkeypatch.setenv("GENLAB_MIRROR", mirror)
    with pytest.raises(DataError, match=re.escape(words)) as info:
        load_dataset("mnist", "test", data_dir=tmp_path)
    assert "s3cret" not in str(info.value)


def test_a_mirror_named_in_another_script_is_asked_for_in_ascii(monkeypatch):
    # "http://☃.net/" failed with "ordinal not in range(256)" (the Host header is ASCII).
    from genlab.data.download import mirrors_for
    monkeypatch.setenv("GENLAB_MIRROR", "http://☃.net:8080/mnist/")
    assert mirrors_for("mnist") == ("http://xn--n3h.net:8080/mnist/",)


@pytest.mark.parametrize("value,on", [("1", True), ("yes", True), ("0", False), ("false", False), ("No", False),
                                      ("off", False), (" ", False), ("", False)])
def test_on_off_variables_read_false_as_off(monkeypatch, value, on):
    # GENLAB_OFFLINE=false meant offline: anything but "" and "0" was on.
    from genlab.data.datasets import switched_on

    monkeypatch.setenv("GENLAB_OFFLINE", value)
    assert switched_on("GENLAB_OFFLINE") is on


def test_offline_message_names_files_and_directory(tmp_path, monkeypatch, closed_port_url):
    monkeypatch.setenv("GENLAB_MIRROR", closed_port_url)
    with pytest.raises(DataError) as err:
        load_dataset("mnist", "test", data_dir=tmp_path)
    message = str(err.value)
    assert message.startswith("could not download mnist") and "\n" not in message
    assert all(f"{stem}.gz" in message for stem in STEMS)
    assert f"into {tmp_path / 'mnist'}" in message and "GENLAB_DATA_DIR" in message and "--data-dir" in message
    assert closed_port_url in message  # says which mirror failed
    assert not (tmp_path / "mnist").exists()  # no empty folder left behind


def test_a_folder_where_a_data_file_belongs_is_named_before_any_download(tmp_path, monkeypatch, closed_port_url):
    monkeypatch.setenv("GENLAB_MIRROR", closed_port_url)
    (tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz").mkdir(parents=True)
    with pytest.raises(DataError) as err:
        load_dataset("mnist", "test", data_dir=tmp_path)
    assert str(err.value).startswith(f"{tmp_path / 'mnist' / 't10k-images-idx3-ubyte.gz'} is a directory")
    assert closed_port_url not in str(err.value)  # nothing was downloaded


@needs_mnist
def test_download_real_mnist_from_local_mirror(tmp_path, monkeypatch, serve):
    # The real .gz files served locally pass the published MD5s, then load like any MNIST directory.
    monkeypatch.setenv("GENLAB_MIRROR", serve(MNIST))
    monkeypatch.setenv("GENLAB_OFFLINE", "1")
    with pytest.raises(DataError, match="GENLAB_OFFLINE"):
        load_dataset("mnist", "test", data_dir=tmp_path)
    assert not (tmp_path / "mnist").exists()  # nothing was fetched
    monkeypatch.delenv("GENLAB_OFFLINE")
    if any(not (MNIST / f"{stem}.gz").is_file() for stem in STEMS):
        pytest.skip("the local mirror needs the .gz files")
    test = load_dataset("mnist", "test", data_dir=tmp_path)
    assert test.source == str(tmp_path / "mnist") and len(test) == 10000
    for stem in STEMS:
        got = _md5((tmp_path / "mnist" / f"{stem}.gz").read_bytes())
        assert got == CHECKSUMS["mnist"][f"{stem}.gz"]


def test_a_link_loop_where_a_data_file_belongs_is_named(tmp_path, monkeypatch, closed_port_url):
    # It was reported as a missing file, to be put there or downloaded, though a file (a link) was there.
    monkeypatch.setenv("GENLAB_MIRROR", closed_port_url)
    (tmp_path / "mnist").mkdir()
    loop = tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz"
    loop.symlink_to(loop.name)
    with pytest.raises(DataError) as err:
        load_dataset("mnist", "test", data_dir=tmp_path)
    assert str(err.value).startswith(f"{loop} is a symbolic link that leads nowhere")


def test_a_file_where_a_data_sets_folder_belongs_is_named(tmp_path, monkeypatch, closed_port_url):
    # The line said to put the files into DATA_DIR/mnist, a file (following it failed), or blamed the mirrors.
    monkeypatch.setenv("GENLAB_MIRROR", closed_port_url)
    (tmp_path / "mnist").write_text("x")
    (tmp_path / "fashion-mnist").symlink_to("nowhere")
    for name, what in (("mnist", "is a file, not a folder; move it away"),
                       ("fashion-mnist", "is a symbolic link that leads nowhere; remove it")):
        with pytest.raises(DataError) as err:
            load_dataset(name, "test", data_dir=tmp_path)
        assert str(err.value).startswith(f"{name} not found: {tmp_path / name} {what}, then put the files into the "
                                         f"folder {tmp_path / name}"), err.value
        assert closed_port_url not in str(err.value)  # no download was tried
        described = next(d for d in describe_datasets(tmp_path) if d["name"] == name)
        assert described["why"].startswith(f"{tmp_path / name} {what}")


def test_a_home_that_cannot_be_found_is_one_line_or_a_cache_of_the_users_own(tmp_path, monkeypatch):
    # '~nouser/x' in --data-dir, GENLAB_DATA_DIR or a folder: data set, and a user with no home folder at all
    # (HOME unset, no password entry), each ended in RuntimeError("Could not determine home directory").
    from genlab.data import datasets, resolve_data_dir

    for where, call in [("--data-dir", lambda: resolve_data_dir("~genlab-no-such-user/x")),
                        ("--dataset folder:", lambda: load_dataset("folder:~genlab-no-such-user/x"))]:
        with pytest.raises(DataError, match=f"{where} ~genlab-no-such-user/x: no user 'genlab-no-such-user'"):
            call()
    monkeypatch.setenv("GENLAB_DATA_DIR", "~genlab-no-such-user")
    with pytest.raises(DataError, match="GENLAB_DATA_DIR ~genlab-no-such-user: no user"):
        resolve_data_dir()

    def no_home():
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setattr(datasets.Path, "home", staticmethod(no_home))
    monkeypatch.setattr(datasets.tempfile, "tempdir", str(tmp_path))
    assert datasets.cache_dir() == tmp_path / f"genlab-cache-{os.getuid()}"
