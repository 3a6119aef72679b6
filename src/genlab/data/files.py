"""Data sets from your own files: ``folder:PATH`` (PNG, JPEG or BMP images) and ``npz:FILE`` (numpy arrays).

Images are uint8, [N, H, W] when grey and [N, C, H, W] (C = 3, RGB) when in colour, the layout genlab uses
everywhere (the built-in data sets are [N, 28, 28] grey).

``folder:PATH``
    Every PNG/JPEG/BMP file below PATH (hidden files and other files are skipped), ordered by file name
    (then class). One sub-folder per class gives labels: the sorted sub-folder names are classes 0..K-1
    (``Dataset.classes`` keeps the names);
    images directly in PATH have no class (label 0). When PATH holds ``train/`` and ``test/`` they are the
    splits, else a seeded tenth of the images (at least one) is the test split.
``npz:FILE``
    ``images`` [N, H, W] or [N, H, W, C] uint8 and optionally ``labels`` [N] (split as a folder is), or
    ``x_train``/``x_test`` with optional ``y_train``/``y_test`` (Keras' layout).

All images of a data set must have one size unless ``image_size`` (``--image-size N``) resizes each to
N x N (OpenCV's INTER_AREA; the aspect ratio is not kept). The data set is grey when every image is (a colour
file whose three channels are equal counts as grey), else RGB; ``grey`` (``--grey``) converts colour to grey.

Decoded images are cached as one uint8 array in the user cache (``cache_dir()/images/``), keyed by a hash of
the files' names, sizes and modification times and the options, so a second load reads one file; the entries
used longest ago go once the cache holds more than ``IMAGE_CACHE_BYTES``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import os
import re
import tempfile
import threading
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from genlab.config import FILE_PREFIXES
from genlab.data.idx import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
TEST_SHARE, SPLIT_SEED = 0.1, 0
# 2: photographs turned upright by their EXIF orientation; 3: with a digest; 4: animated PNGs refused
CACHE_VERSION = "genlab-images-4"
MAX_FILE_BYTES = 1 << 30  # the largest image file read (a 134-megapixel PNG is well below it)
MAX_LABEL = 65_535  # class labels of npz: data sets run from 0 to this
IMAGE_CACHE_BYTES = 2 << 30  # the decoded-image cache keeps its most recently used entries within this


def is_file_dataset(name: str) -> bool:
    return isinstance(name, str) and name.startswith(FILE_PREFIXES)


def expand_home(raw, what: str) -> Path:
    """``raw`` as a path with a leading ``~`` or ``~user`` expanded; one line where it cannot be (no such user,
    or no home folder known), instead of Python's RuntimeError."""
    try:
        return Path(raw).expanduser()
    except RuntimeError:
        user = str(raw)[1:].split("/", 1)[0]
        who = f"no user {user!r} is known here" if user else "no home folder is known here (HOME is unset)"
        raise DataError(f"{what} {raw}: {who}, so '~' cannot be expanded; give the full path") from None


def resolve_spec(name: str) -> str:
    """``folder:PATH`` / ``npz:FILE`` with PATH made absolute (so a run finds its data from any folder), after
    checking that the path exists and is of the right kind."""
    kind, _, raw = name.partition(":")
    if not raw:
        raise DataError(f"--dataset {name}: give a path after '{kind}:', e.g. --dataset {kind}:"
                        f"{'my_images/' if kind == 'folder' else 'images.npz'}")
    path = expand_home(raw, f"--dataset {kind}:").absolute()
    if not path.exists():
        raise DataError(f"--dataset {name}: {path} does not exist; check the path")
    if kind == "folder" and not path.is_dir():
        raise DataError(f"--dataset {name}: {path} is a file; use npz:{raw} for a numpy file or give a folder")
    if kind == "npz" and path.is_dir():
        raise DataError(f"--dataset {name}: {path} is a folder; use folder:{raw} for a folder of images")
    if kind == "npz" and not path.is_file():
        raise DataError(f"--dataset {name}: {path} is not a regular file (a FIFO or a device?); give a .npz file")
    return f"{kind}:{path}"


# -- decoding ---------------------------------------------------------------------------------------------------
def scan_images(root: str | Path, ordered: bool = True) -> list[tuple[str, int, int]]:
    """(path, size, modification time in ns) of the image files below ``root``, by name within each folder
    (in no particular order unless ``ordered``), hidden files and folders skipped. Plain strings and
    ``os.scandir``: listing 70,000 files takes a fraction of a second."""
    found: list[tuple[str, int, int]] = []
    # (device, inode) -> path of each folder listed. A link back to a folder above is a loop, listed once; a
    # link to a folder listed elsewhere is refused: its images would be read twice, and in a data set a class
    # folder reached through another class's link lost its own label (whichever path came first won).
    seen: dict[tuple[int, int], str] = {}

    def walk(folder: str, above: frozenset) -> None:
        try:
            info = os.stat(folder)
            key = (info.st_dev, info.st_ino)
            if key in above:
                return
            if key in seen:
                raise DataError(f"{folder} and {seen[key]} are the same folder (one is a link to the other), so "
                                "its images would be read twice; remove the link")
            seen[key] = folder
            entries = list(os.scandir(folder))
            if ordered:
                entries.sort(key=lambda e: e.name)
        except OSError as e:
            raise DataError(f"{folder} cannot be listed ({e.strerror}); check the path and its permissions") from None
        for entry in entries:
            name = entry.name
            if name.startswith("."):
                continue
            if name.lower().endswith(IMAGE_SUFFIXES) and entry.is_file():
                info = entry.stat()
                found.append((entry.path, info.st_size, info.st_mtime_ns))
                if entry.is_symlink():
                    linked.append(entry.path)
            elif entry.is_dir():
                walk(entry.path, above | {key})
            elif name.lower().endswith(IMAGE_SUFFIXES):  # named as an image, read as none: said, not skipped
                if entry.is_symlink() and not os.path.exists(entry.path):
                    raise DataError(f"{entry.path} is a symbolic link that leads nowhere; restore the image it "
                                    "named, or remove the link")
                raise DataError(f"{entry.path} is not a regular file (a FIFO, a device?); remove it or replace it "
                                "with the image")

    linked: list[str] = []  # image files reached through a link: one to an image listed too is read twice
    walk(str(root), frozenset())
    if linked:
        links = set(linked)
        listed = {os.path.realpath(path): path for path, _, _ in found if path not in links}
        twice = next(((path, listed[target]) for path in linked
                      if (target := os.path.realpath(path)) in listed), None)
        if twice:
            raise DataError(f"{twice[0]} is a link to {twice[1]}, so that image would be read twice (in a data set, "
                            "under two classes); remove the link")
    return found


def list_images(root: str | Path) -> list[Path]:
    """The image files below ``root``, by name, hidden files and folders skipped."""
    return [Path(path) for path, _, _ in scan_images(root)]


def read_image(path: str | Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """One file as uint8 [H, W] (grey) or [H, W, 3] (RGB), upright as its EXIF orientation says (a phone's
    photograph); ``size`` (height, width) resizes it at once, so a folder of large photographs is never held
    at full size. An unreadable file is a DataError naming it.

    The bytes are read here and decoded from memory: OpenCV's own reading of a file whose name is not valid
    UTF-8 crashed the process."""
    import cv2

    try:
        size_bytes = os.stat(path).st_size
        if size_bytes > MAX_FILE_BYTES:
            raise DataError(f"{path} is {size_bytes / 1e9:.1f} GB, more than the {MAX_FILE_BYTES >> 30} GB "
                            "genlab reads from one image file; shrink it or remove it")
        data = np.fromfile(path, np.uint8)
    except OSError as e:
        raise DataError(f"{path} cannot be read ({e.strerror or e}); fix or remove that file") from None
    frames = _png_frames(data)
    if frames > 1:  # OpenCV decodes the first frame alone, as if it were the picture (a GIF is refused)
        raise DataError(f"{path} is an animated PNG ({frames} frames), and genlab reads one picture a file; save "
                        "the frame to use as a PNG of its own")
    declared = _png_decoded_bytes(data)
    if declared > MAX_DECODED_BYTES:  # OpenCV's cap counts pixels: 16-bit RGBA is 8 bytes each, and copies follow
        raise DataError(f"{path} would decode to {declared / 2**30:.1f} GiB (its header's size, channels and depth), "
                        f"more than {MAX_DECODED_BYTES >> 20} MiB, the most genlab decodes from one image; shrink it first")
    try:
        # Any colour and depth as stored (grey stays grey, 16 bits stay 16), with the EXIF orientation applied;
        # an alpha channel is dropped, as normalise_image would.
        with _codec_messages() as said:
            image = cv2.imdecode(data, cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH) if len(data) else None
    except cv2.error as e:
        if "CV_IO_MAX_IMAGE_PIXELS" in str(e.err):
            raise DataError(f"{path} has more than {int(os.environ.get('OPENCV_IO_MAX_IMAGE_PIXELS', 1 << 30)):,} "
                            "pixels, the most genlab decodes; shrink it first") from None
        raise DataError(f"{path} cannot be decoded ({' '.join(str(e.err).split())}); fix or remove that file") from None
    # A JPEG cut short: this OpenCV decodes nothing, others decode what is there, grey below. Its end marker is
    # looked for in the whole file: a Motion Photo carries a video after it, a photograph a thumbnail's before.
    if data[:3].tobytes() == b"\xff\xd8\xff" and b"\xff\xd9" not in data[-65536:].tobytes() and \
            (image is None or b"\xff\xd9" not in data.tobytes()):
        raise DataError(f"{path} is a JPEG cut short (no end marker); fix or remove that file")
    damage = next((line for line in said.lines if any(words in line for words in JPEG_DAMAGE)), None)
    if damage:  # libjpeg decodes what it can of a damaged file and only says so
        raise DataError(f"{path} is a damaged JPEG ({damage.strip()}); fix or remove that file")
    if image is None:
        why = f" ({said.lines[-1].strip()})" if said.lines else ""
        raise DataError(f"{path} is not a readable PNG, JPEG or BMP image{why}; fix or remove that file")
    said.pass_on()
    image = normalise_image(image, str(path))
    if size is not None and image.shape[:2] != size:
        image = cv2.resize(image, size[::-1], interpolation=cv2.INTER_AREA)
    return image


MAX_DECODED_BYTES = 512 << 20  # a 134-megapixel 8-bit colour photograph is 402 MiB


def _png_decoded_bytes(data: np.ndarray) -> int:
    """The bytes a PNG's pixels take once decoded, from its header (0 for anything else): a 940 kB file of
    11000 x 11000 16-bit RGBA zeros decoded to 2 GB in 17 s."""
    head = data[:26].tobytes()
    if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return 0
    width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    depth, colour = head[24], head[25]
    channels = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}.get(colour, 4)  # a palette decodes to colour
    return width * height * channels * (2 if depth == 16 and colour != 3 else 1)


def _png_frames(data: np.ndarray, most_chunks: int = 10_000) -> int:
    """The frames an animated PNG declares (its acTL chunk, which comes before the first IDAT); 1 for a still
    PNG, 0 for anything else. Looks at the first ``most_chunks`` chunks at most."""
    if data[:8].tobytes() != b"\x89PNG\r\n\x1a\n":
        return 0
    at = 8
    for _ in range(most_chunks):
        head = data[at:at + 12].tobytes()
        if len(head) < 8 or head[4:8] == b"IDAT":
            break
        if head[4:8] == b"acTL" and len(head) == 12:
            return int.from_bytes(head[8:12], "big")
        at += 12 + int.from_bytes(head[:4], "big")  # length, type, data, CRC
    return 1


_CODEC_LOCK = threading.Lock()
_codec_log: list = []  # one temporary file, made on first use, that takes the codecs' messages


@dataclasses.dataclass
class _Said:
    """What the codecs printed inside ``_codec_messages``: its lines (OpenCV's prefix dropped) and raw bytes."""
    lines: list[str] = dataclasses.field(default_factory=list)
    raw: bytes = b""

    def pass_on(self) -> None:
        """Print what was said after all (a file read well: a codec's note, or another thread's line)."""
        if self.raw:
            try:
                os.write(2, self.raw)
            except OSError:
                pass


@contextlib.contextmanager
def _codec_messages() -> Iterator[_Said]:
    """What OpenCV and its codecs (libjpeg, libpng) print on the process's standard error inside the block,
    held back: for a damaged file genlab's one line gives their reason instead of their own lines before it,
    and a damaged JPEG that libjpeg decoded anyway is noticed only there. The caller passes it on when the file
    was read well. One block at a time; nothing is held where there is no standard error to redirect."""
    import sys
    said = _Said()
    with _CODEC_LOCK:
        try:
            saved = os.dup(2)
        except OSError:  # standard error closed (2>&-)
            yield said
            return
        if not _codec_log:
            _codec_log.append(tempfile.TemporaryFile())
        log = _codec_log[0]  # empty, and at its start, between blocks
        if sys.stderr is not None:
            sys.stderr.flush()
        os.dup2(log.fileno(), 2)
        try:
            yield said
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            if os.fstat(log.fileno()).st_size:
                log.seek(0)
                said.raw = log.read(1 << 20)
                log.seek(0)
                log.truncate()
            # OpenCV's own prefix ("[ WARN:0@0.315] global ") says nothing to a user
            said.lines += [re.sub(r"^\[\s*\w+:\d+@[\d.]+\]\s*(global\s+)?", "", line)
                           for line in said.raw.decode("utf-8", "replace").splitlines() if line.strip()]


# libjpeg's notes that pixels were lost or made up ("extraneous bytes before marker", also seen where padding
# was added to a whole image, is not among them)
JPEG_DAMAGE = ("premature end of data segment", "Premature end of JPEG file", "bad Huffman code",
               "Huffman code size table overflow")


def normalise_image(image: np.ndarray, where: str) -> np.ndarray:
    """An image as OpenCV or a user gives it -> uint8 [H, W] or [H, W, 3] RGB (16-bit scaled, alpha dropped)."""
    import cv2

    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    if image.dtype != np.uint8:
        raise DataError(f"{where}: pixels are {image.dtype}, expected 8-bit (uint8) images")
    if image.ndim == 3 and image.shape[2] in (1, 2):  # grey, or grey and alpha
        image = image[:, :, 0]
    if image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB) if where != "array" else image[:, :, :3]
    elif image.ndim == 3 and image.shape[2] == 3 and where != "array":
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise DataError(f"{where}: expected a grey or colour image, found shape {image.shape}")
    if not image.size:
        raise DataError(f"{where}: an image of {image.shape[1]} x {image.shape[0]} pixels has none to read")
    return np.ascontiguousarray(image)


def _is_grey(image: np.ndarray) -> bool:
    return image.ndim == 2 or (np.array_equal(image[..., 0], image[..., 1])
                               and np.array_equal(image[..., 1], image[..., 2]))


def stack_images(images: Sequence[np.ndarray], names: Sequence[str], image_size: int = 0, grey: bool = False,
                 shape: tuple[int, int, int] | None = None) -> np.ndarray:
    """Decoded images -> one uint8 array [N, H, W] (grey) or [N, 3, H, W].

    ``shape`` (C, H, W) forces a layout (resize to H x W, grey or colour as C says): how new images are fitted
    to a trained model. Otherwise ``image_size`` resizes to N x N, ``grey`` converts, and images of different
    sizes are an error naming two of them.
    """
    import cv2

    if not len(images):
        raise DataError("no images to stack")
    if shape is not None:
        channels, height, width = shape
    else:
        channels = 1 if grey or all(_is_grey(im) for im in images) else 3
        if image_size:
            height = width = image_size
        else:
            height, width = images[0].shape[:2]
            for im, name in zip(images, names):
                if im.shape[:2] != (height, width):
                    raise DataError(f"{name} is {im.shape[1]} x {im.shape[0]} pixels but {names[0]} is {width} x "
                                    f"{height}; pass --image-size N to resize every image to N x N")
    _check_room(len(images), height, width, channels)
    out = np.empty((len(images), height, width, channels) if channels > 1 else (len(images), height, width), np.uint8)
    for i, im in enumerate(images):
        if im.shape[:2] != (height, width):
            im = cv2.resize(im, (width, height), interpolation=cv2.INTER_AREA)
        if channels == 1 and im.ndim == 3:
            im = cv2.cvtColor(im, cv2.COLOR_RGB2GRAY)
        elif channels == 3 and im.ndim == 2:
            im = np.repeat(im[:, :, None], 3, axis=2)
        out[i] = im
    return out if channels == 1 else np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def _decode_all(paths: list[str], image_size: int = 0, grey: bool = False,
                shape: tuple[int, int, int] | None = None) -> np.ndarray:
    """``paths`` read (``read_image``) and stacked (``stack_images``): each image resized to ``shape`` or to
    ``image_size`` as it is decoded, after checking that room for all of them at that size is there."""
    size = tuple(shape[1:]) if shape is not None else (image_size, image_size) if image_size else None
    if size is not None:
        _check_room(len(paths), *size)
    return stack_images([read_image(p, size) for p in paths], paths, image_size, grey, shape)


def _check_room(n: int, height: int, width: int, channels: int = 1) -> None:
    """Refuse ``n`` images of that size when they would take more than ``MAX_ARRAY_BYTES`` (resized up, a few MB
    of small images asked for tens of GB); called before decoding too, with one channel (the least)."""
    needed = n * height * width * channels
    if needed > MAX_ARRAY_BYTES:
        raise DataError(f"{n} images of {height} x {width} x {channels} would take {needed / 2**30:.1f} GiB, more "
                        f"than the {MAX_ARRAY_BYTES >> 30} GiB genlab holds; choose a smaller --image-size (or fewer "
                        "images)")


def _stat(paths: Iterable[str | Path]) -> list[tuple[str, int, int]]:
    found = []
    for path in paths:
        try:
            info = os.stat(path)
        except OSError as e:
            raise DataError(f"{path} cannot be read ({e.strerror}); fix or remove that file") from None
        found.append((str(path), info.st_size, info.st_mtime_ns))
    return found


def _fingerprint(files: Iterable[tuple[str, int, int]], *options) -> str:
    """A hash of the files' names, sizes and modification times (``scan_images``' triples) and of ``options``."""
    h = hashlib.sha256(repr((CACHE_VERSION, options)).encode())
    # os.fsencode: a file name need not be valid UTF-8 (it comes back from the disk as it was written)
    h.update(b"\n".join(os.fsencode(p) + f"\0{size}\0{mtime}".encode() for p, size, mtime in files))
    return h.hexdigest()[:32]


def _cache_path(key: str) -> Path:
    from genlab.data.datasets import cache_dir
    return cache_dir() / "images" / f"{key}.npz"


def _read_cache(key: str) -> dict | None:
    """The arrays cached under ``key``, or None: a missing entry, or one whose arrays no longer match the digest
    written with them (a damaged or hand-edited file is decoded afresh, never trusted)."""
    import zipfile
    try:
        with np.load(_cache_path(key), allow_pickle=False) as saved:
            arrays = {k: saved[k] for k in saved.files}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    digest = arrays.pop("digest", None)
    if digest is None or digest.shape != () or str(digest) != _digest(arrays):
        return None
    with contextlib.suppress(OSError):
        os.utime(_cache_path(key))  # used now: the last entry to be pruned
    return arrays


def _write_cache(key: str, **arrays) -> None:
    from genlab.data.datasets import write_cache_file
    write_cache_file(_cache_path(key), lambda f: np.savez(f, **arrays, digest=np.array(_digest(arrays))))
    _prune_cache(keep=_cache_path(key))


def _prune_cache(keep: Path) -> None:
    """Remove the entries of the image cache used longest ago while it holds more than ``IMAGE_CACHE_BYTES``
    (never ``keep``, the entry just written): each data set or batch of scored files tried once stayed for ever."""
    entries = []
    for path in keep.parent.glob("*.npz"):
        with contextlib.suppress(OSError):
            info = path.stat()
            entries.append((info.st_mtime_ns, info.st_size, path))
    total = sum(size for _, size, _ in entries)
    for _, size, path in sorted(entries):
        if total <= IMAGE_CACHE_BYTES:
            break
        if path != keep:
            with contextlib.suppress(OSError):
                path.unlink()
                total -= size


def _digest(arrays: dict) -> str:
    """A hash of the arrays' names, types, shapes and contents."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}\0{a.dtype.str}\0{a.shape}\0".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def decode_files(paths: Sequence[Path], shape: tuple[int, int, int] | None = None, image_size: int = 0,
                 grey: bool = False) -> np.ndarray:
    """``paths`` decoded and stacked (``stack_images``), through the cache."""
    key = _fingerprint(_stat(paths), "files", shape, image_size, grey)
    cached = _read_cache(key)
    if cached is not None and len(cached.get("images", ())) == len(paths):
        return cached["images"]
    images = _decode_all([str(p) for p in paths], image_size, grey, shape)
    _write_cache(key, images=images)
    return images


def image_paths(inputs: Sequence[str | Path]) -> list[str]:
    """Files and folders (searched recursively) -> image files, in the order given; nothing found is an error."""
    found: list[str] = []
    for item in inputs:
        if not str(item):  # Path("") is ".": an unset variable would have meant every image below here
            raise DataError("an image path given is empty; name image files or folders of them")
        path = Path(item)
        if path.is_dir():
            listed = [p for p, _, _ in scan_images(path)]
            if not listed:
                raise DataError(f"{path} holds no PNG, JPEG or BMP images; put image files there")
            found += listed
        elif path.is_file():
            if not path.name.lower().endswith(IMAGE_SUFFIXES):  # a folder's listing leaves such files out too
                raise DataError(f"{path} is not named as a PNG, JPEG or BMP image (.png, .jpg, .jpeg, .bmp), the "
                                "images genlab reads; convert it to one")
            found.append(str(path))
        elif path.exists():  # a FIFO, a device: reading it could wait for ever or never end
            raise DataError(f"{path} is not a regular file or a folder; give image files or folders of them")
        elif path.is_symlink():
            raise DataError(f"{path} is a symbolic link that leads nowhere (to a missing file, or round in a loop); "
                            "give image files or folders of them")
        else:
            raise DataError(f"{path} does not exist; give image files or folders of them")
    return found


# -- data sets --------------------------------------------------------------------------------------------------
def _seeded_split(n: int) -> np.ndarray:
    """bool [n]: which examples are test examples (a seeded tenth, at least one)."""
    if n < 2:
        raise DataError(f"a data set needs at least 2 images (one to train, one to test), found {n}")
    n_test = max(1, int(round(TEST_SHARE * n)))
    is_test = np.zeros(n, bool)
    is_test[np.random.default_rng(SPLIT_SEED).permutation(n)[:n_test]] = True
    return is_test


def _folder_listing(root: Path) -> tuple[list[tuple[str, int, int]], np.ndarray, np.ndarray, list[str]]:
    """(files as ``scan_images``' triples, labels [N], is_test [N], class names) of a folder data set.

    Files are ordered by their name below the class folder, then by class: files named by their index keep
    the original order across class folders (a written-out data set reads back in its own order).
    """
    entries = _listing(root)
    split_roots = _split_roots(root, entries)
    has_splits = split_roots is not None
    _check_split_layout(root, entries, split_roots)
    bases = split_roots if has_splits else [root]
    listed = []  # per split: (files, [(class folder, separator, name below it)])
    for base in bases:
        files = scan_images(base, ordered=False)  # ordered below, all at once
        if not files:
            raise DataError(f"{base} holds no PNG, JPEG or BMP images; put image files there (one sub-folder per "
                            "class)")
        cut = len(str(base)) + 1
        rel = [f[0][cut:].partition(os.sep) for f in files]  # (class folder, sep, name below it)
        listed.append((files, rel))
    nested = [any(sep for _, sep, _ in rel) for _, rel in listed]
    if any(nested) and not all(all(sep for _, sep, _ in rel) for _, rel in listed):
        loose = next(f[0] for files, rel in listed for f, (_, sep, _) in zip(files, rel) if not sep)
        raise DataError(f"{loose} lies beside the class sub-folders of {os.path.dirname(loose)}; move it into a "
                        "class sub-folder or remove it")
    classes = sorted({head for _, rel in listed for head, _, _ in rel}) if any(nested) else []
    # A class folder without an image of a kind genlab reads (GIFs, say) was dropped, the classes renumbered.
    for base in bases if classes else []:
        empty = [name for name in _listing(base) if name not in classes and name != "__MACOSX" and (base / name).is_dir()]
        if empty:
            raise DataError(f"{base / empty[0]} holds no PNG, JPEG or BMP images, so it would be no class: put its "
                            f"images there as PNG, JPEG or BMP files, or move the folder out of {base}")
    index = {c: i for i, c in enumerate(classes)}
    all_files, labels = [], []
    for files, rel in listed:
        if classes:
            names = np.array([rest for _, _, rest in rel])
            cls = np.array([index[head] for head, _, _ in rel], np.int64)
        else:
            names, cls = np.array([head for head, _, _ in rel]), np.zeros(len(rel), np.int64)
        order = np.lexsort((cls, names))  # by name, then class
        all_files += [files[i] for i in order.tolist()]
        labels.append(cls[order])
    labels_all = np.concatenate(labels)
    if has_splits:  # train, then test
        split = np.concatenate([np.full(len(part), i == 1) for i, part in enumerate(labels)])
    else:
        split = _seeded_split(len(all_files))
    return all_files, labels_all, split, classes


VALIDATION_NAMES = ("val", "valid", "validation")


def _listing(root: Path) -> list[str]:
    """The names in ``root`` but hidden ones, sorted."""
    try:
        return sorted(e.name for e in os.scandir(root) if not e.name.startswith("."))
    except OSError as e:
        raise DataError(f"{root} cannot be listed ({e.strerror}); check the path and its permissions") from None


def _split_roots(root: Path, entries: list[str]) -> list[Path] | None:
    """``root``'s train and test folders, in any case (Train/ and Test/ as often as train/ and test/), or None
    where it lacks either. Train/ beside train/ is refused: which one is the split?"""
    roots = []
    for split in ("train", "test"):
        spelt = [name for name in entries if name.lower() == split and (root / name).is_dir()]
        if len(spelt) > 1:
            raise DataError(f"{root} holds {' and '.join(f'{name}/' for name in spelt)}: genlab reads one {split} "
                            "split; merge them into one folder")
        if not spelt:
            return None
        roots.append(root / spelt[0])
    return roots


def _check_split_layout(root: Path, entries: list[str], split_roots: list[Path] | None) -> None:
    """Refuse folder layouts that would be misread: beside train/ and test/ (the splits) anything else was
    ignored; train/ beside val/ without test/ made "train" and "val" two classes of one data set."""
    if split_roots is not None:
        # Images beside the splits, loose or in another folder, would be left out; other files (a README, a
        # licence, a zip tool's __MACOSX/ of hidden files) are no images and are left alone, as elsewhere.
        train, test = (p.name for p in split_roots)
        others = [name for name in entries if name not in (train, test)
                  and ((root / name).is_file() and name.lower().endswith(IMAGE_SUFFIXES)
                       or (root / name).is_dir() and scan_images(root / name, ordered=False))]
        if others:
            raise DataError(f"{root} holds {train}/ and {test}/, read as the two splits, and also "
                            f"{', '.join(others[:3])}{' ...' if len(others) > 3 else ''}, which genlab would leave "
                            f"out; move {'it' if len(others) == 1 else 'them'} elsewhere (or into a split)")
        return
    folders = [name for name in entries if (root / name).is_dir()]
    train = next((name for name in folders if name.lower() == "train"), None)
    test = next((name for name in folders if name.lower() == "test"), None)
    val = next((name for name in folders if name.lower() in VALIDATION_NAMES), None)
    if train and val:
        raise DataError(f"{root} holds {train}/ and {val}/: genlab reads the splits from train/ and test/ (else each "
                        f"sub-folder is a class); rename {val}/ to test/, or point --dataset at {root / train}")
    if train or test:  # one split alone was read as one class named after it (its test images trained on)
        alone = train or test
        raise DataError(f"{root} holds {alone}/ without {'test' if train else 'train'}/: genlab reads the splits from "
                        f"train/ and test/ together (else each sub-folder is a class); add the other split, or point "
                        f"--dataset at {root / alone} (a seeded tenth is then the test split)")


def _load_npz(path: Path, image_size: int, grey: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    import zipfile
    fix = "write it with numpy.savez(path, images=..., labels=...)"
    try:
        if not zipfile.is_zipfile(path):  # a .npy or a pickle: np.load would return an array or refuse a pickle
            raise DataError(f"{path} is not a .npz file (a zip archive of numpy arrays); {fix}")
        with np.load(path, allow_pickle=False) as saved:
            members = set(saved.files)
            both = sorted(members & {"x_train", "x_test"})
            if "images" in members and both:  # which ones are the data? x_train and x_test went unread
                raise DataError(f"{path} holds 'images' and {' and '.join(map(repr, both))}: genlab reads one or the "
                                "other; write the arrays you mean into a file of their own")
            if "images" in members:
                parts = [("images", "labels")]
            elif "x_train" in members and "x_test" in members:
                parts = [("x_train", "y_train"), ("x_test", "y_test")]
            else:
                raise DataError(f"{path} holds {sorted(members)}; expected 'images' (and optionally 'labels'), or "
                                "'x_train' and 'x_test' (and optionally 'y_train', 'y_test')")
            # Only the arrays used are read, each after its header's size is checked: a small file can hold a
            # member that inflates to gigabytes.
            arrays = {}
            for key in (k for part in parts for k in part if k in members):
                _check_npy_size(saved.zip, key, path)
                arrays[key] = saved[key]
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{path} is not a readable .npz file ({e}); {fix}") from None
    if len(parts) == 2 and ("y_train" in arrays) != ("y_test" in arrays):  # the other split's labels were all 0
        given, missing = ("y_train", "y_test") if "y_train" in arrays else ("y_test", "y_train")
        raise DataError(f"{path} holds {given} but no {missing}; give the labels of both splits, or of neither")
    broken = [k for k, v in arrays.items() if not isinstance(v, np.ndarray)]  # members that are not .npy
    if broken:
        raise DataError(f"{path}: {broken[0]!r} is not a numpy array; {fix}")
    images, labels, is_test = [], [], []
    for i, (xk, yk) in enumerate(parts):
        x = arrays[xk]
        if x.dtype != np.uint8 or x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[3] not in (1, 3, 4)):
            raise DataError(f"{path}: '{xk}' is {x.dtype} of shape {list(x.shape)}; expected uint8 [N, H, W] or "
                            "[N, H, W, C] with C = 1, 3 or 4")
        y = arrays.get(yk)
        if y is None:
            y = np.zeros(len(x), np.int64)
        elif y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer) or (len(y) and y.min() < 0):
            raise DataError(f"{path}: '{yk}' must be [N] whole numbers >= 0, one per image of '{xk}' "
                            f"({len(x)}), found {y.dtype} of shape {list(y.shape)}")
        elif len(y) and int(y.max()) > MAX_LABEL:  # a class name per label up to the largest: a typo's worth of memory
            raise DataError(f"{path}: '{yk}' goes up to {int(y.max())}; class labels run from 0 to {MAX_LABEL} "
                            "(number the classes from 0)")
        names = [f"{path}:{xk}[{j}]" for j in range(len(x))]
        images.append(stack_images([normalise_image(im, "array") for im in x], names, image_size, grey)
                      if (image_size or grey or x.ndim == 4) else x)
        labels.append(y.astype(np.int64))
        is_test.append(np.full(len(x), i == 1))
    if len(parts) == 2 and images[0].shape[1:] != images[1].shape[1:]:
        same_size = images[0].shape[-2:] == images[1].shape[-2:]  # [N, H, W] or [N, C, H, W]: only colour differs
        fix = "--grey to make both grey" if same_size else \
            "--image-size N to resize both (and --grey where one is colour)"
        raise DataError(f"{path}: x_train images are {list(images[0].shape[1:])} but x_test images are "
                        f"{list(images[1].shape[1:])}; pass {fix}")
    all_images, all_labels = np.concatenate(images), np.concatenate(labels)
    split = np.concatenate(is_test) if len(parts) == 2 else _seeded_split(len(all_images))
    if not split.any() or split.all():
        raise DataError(f"{path}: both splits need at least one image")
    n_classes = int(all_labels.max()) + 1 if len(all_labels) else 0
    return all_images, all_labels, split, [str(c) for c in range(n_classes)] if "labels" in arrays or \
        "y_train" in arrays else []


MAX_ARRAY_BYTES = 1 << 32  # the largest array read from an npz (MNIST's images are 47 MB)


def _check_npy_size(archive, key: str, path: Path) -> None:
    """Refuse member ``key`` of an npz whose header declares more than ``MAX_ARRAY_BYTES``, before reading it."""
    name = key if key in archive.namelist() else f"{key}.npy"
    with archive.open(name) as f:
        try:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(f)
            header = f.tell()
        except ValueError:
            raise DataError(f"{path}: {key!r} is not a numpy array; write it with numpy.savez(path, images=..., "
                            "labels=...)") from None
    size = int(np.prod(shape, dtype=object)) * dtype.itemsize
    stored = archive.getinfo(name).file_size - header
    if stored > size and not dtype.hasobject:  # numpy reads what the header declares and leaves the rest unread
        raise DataError(f"{path}: {key!r} holds {stored - size:,} bytes past the {list(shape)} {dtype} array its "
                        "header declares; the file is damaged or was altered")
    if size > MAX_ARRAY_BYTES:
        raise DataError(f"{path}: {key!r} declares shape {list(shape)} ({size:,} bytes), more than genlab reads "
                        f"from one array ({MAX_ARRAY_BYTES:,}); the file is damaged or too large")


@functools.lru_cache(maxsize=4)
def load_files(spec: str, image_size: int = 0, grey: bool = False) -> dict:
    """A ``folder:``/``npz:`` data set, both splits: {"images", "labels", "is_test", "classes", "source"}.

    ``spec`` must be resolved (``resolve_spec``). Cached on disk, keyed by the files' names, sizes and times,
    and in the process like the built-in data sets (``genlab.data.clear_cache`` forgets it).
    """
    kind, _, raw = spec.partition(":")
    path = Path(raw)
    if kind == "folder":
        files, labels, is_test, classes = _folder_listing(path)
        key = _fingerprint(files, "folder", str(path), image_size, grey)
    else:
        key = _fingerprint(_stat([path]), "npz", image_size, grey)
    cached = _read_cache(key)
    if cached is not None and {"images", "labels", "is_test", "classes"} <= set(cached):
        return {"images": cached["images"], "labels": cached["labels"], "is_test": cached["is_test"],
                "classes": [str(c) for c in cached["classes"]], "source": str(_cache_path(key))}
    if kind == "folder":
        images = _decode_all([f[0] for f in files], image_size, grey)
    else:
        images, labels, is_test, classes = _load_npz(path, image_size, grey)
    if is_test.all() or not is_test.any():
        raise DataError(f"{spec}: both splits need at least one image")
    _write_cache(key, images=images, labels=labels, is_test=is_test, classes=np.array(classes, dtype=str))
    return {"images": images, "labels": labels, "is_test": is_test, "classes": classes, "source": str(path)}


def image_shape(images) -> tuple[int, int, int]:
    """(channels, height, width) of uint8 images [N, H, W] or [N, C, H, W]."""
    shape = tuple(images.shape)
    return (1, *shape[1:3]) if len(shape) == 3 else shape[1:4]


def encode_png(image: np.ndarray) -> bytes:
    """uint8 [H, W] or [3, H, W] (genlab's layout) -> PNG bytes."""
    import cv2
    if image.ndim == 3:
        image = cv2.cvtColor(np.ascontiguousarray(image.transpose(1, 2, 0)), cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise DataError("could not encode a PNG")
    return buf.tobytes()
