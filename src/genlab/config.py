"""Typed configs: one dataclass per model plus one for training, turned into CLI flags and saved as JSON.

Every field has a default and a help line (``opt(default, "help")``); the commands derive ``--kebab-case``
flags from the fields (genlab.commands.flags), and a run's ``config.json`` holds enough to rebuild its model.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
import re
import tempfile
import typing
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from genlab.errors import GenlabError, signals_held


def opt(default: Any, help: str, choices: tuple | None = None, min: float | None = None,
        max: float | None = None, above: float | None = None, below: float | None = None, cli: bool = True) -> Any:
    """A config field with its default, a one-line help text and what values it takes: ``choices``, or a range
    (``min``/``max`` inclusive, ``above``/``below`` exclusive). Float fields must also be finite.

    ``validate`` checks all of this however the config was built (flags, a run's JSON, Python), so the three
    give the same one-line error; the upper bounds keep a typo from asking for gigabytes. ``cli=False``: no
    flag (a value genlab sets itself, such as a model's image shape, taken from the data).
    """
    return field(default=default, metadata={"help": help, "choices": choices, "min": min, "max": max,
                                            "above": above, "below": below, "cli": cli})


MAX_SEED = 2**32 - 1  # what torch.manual_seed and numpy's generators take

@dataclass
class TrainConfig:
    dataset: str = opt("auto", "data set: auto (mnist when found on disk, else mnist-5k), mnist, fashion-mnist, "
                       "mnist-5k, folder:PATH (PNG/JPEG/BMP files, one sub-folder per class) or npz:FILE (arrays "
                       "'images' [N,H,W(,C)] uint8 and 'labels')")
    data_dir: str | None = opt(None, "data directory (default: $GENLAB_DATA_DIR, else the per-user cache)")
    image_size: int = opt(0, "folder:/npz: data sets: resize every image to N x N (0: keep the size, which must "
                          "then be the same for all)", min=0, max=1024)
    grey: bool = opt(False, "folder:/npz: data sets: convert colour images to grey")
    epochs: int = opt(20, "passes over the training split", min=1, max=1_000_000)
    batch_size: int = opt(256, "global batch size (split across DDP processes)", min=1, max=65536)
    lr: float = opt(1e-3, "learning rate (the initial one under --lr-schedule cosine)", above=0.0, max=10.0)
    lr_schedule: str = opt("constant", "constant: --lr throughout; cosine: from --lr down to --lr-final along half "
                           "a cosine over all the run's steps (epochs x batches per epoch)",
                           choices=("constant", "cosine"))
    lr_final: float = opt(0.0, "learning rate at the end of the cosine schedule", min=0.0, max=10.0)
    optimizer: str = opt("adam", "optimiser", choices=("adam", "sgd"))
    seed: int = opt(0, "random seed (weights, shuffling, noise)", min=0, max=MAX_SEED)
    device: str = opt("auto", "auto (CUDA when present, else CPU), cpu, cuda or cuda:N")
    precision: str = opt("fp32", "fp32, or bf16: matrix products in bfloat16 under autocast (faster on GPUs at "
                         "large batches and on CPUs with bf16 instructions)", choices=("fp32", "bf16"))
    cuda_graphs: bool = opt(True, "on one GPU in fp32, record the loss of the models that allow it (ae, dae, vae) "
                            "as CUDA graphs and replay it at every step: far fewer kernel launches")
    deterministic: bool = opt(False, "deterministic algorithms only, so a GPU run repeats (and resumes) bit for bit; "
                              "somewhat slower on a GPU")
    out: str = opt("", "run directory, new or empty (default: runs/<model>-<time>)")
    limit: int = opt(0, "use only the first N training examples (0: all); for quick checks", min=0)
    classes: str = opt("", "train only on these labels, comma-separated (e.g. 3 or 0,1,2; empty: all); the test "
                       "split keeps every class")
    eval_limit: int = opt(0, "use only the first N test examples for the per-epoch test loss (0: all)", min=0)
    figures: bool = opt(True, "write figures (at the end of training, and per epoch for the models that draw "
                              "some then)")
    progress: bool = opt(True, "show progress bars (only on a terminal)")
    tensorboard: bool = opt(False, "also log scalars, image grids and energy histograms to RUN_DIR/tensorboard")

    def __post_init__(self) -> None:
        if self.data_dir == "":  # how genlab 0.1 wrote "not given" in a run's config.json
            self.data_dir = None
        validate(self)  # the declared ranges hold however the config is built: flags, JSON or Python

    def check(self) -> None:
        check_device_name(self.device)
        self.class_list()
        check_dataset_name(self.dataset)

    def class_list(self) -> list[int]:
        """The labels of ``classes`` as sorted distinct ints in 0..999 (empty: every class); whether the data
        has them is checked when it is loaded."""
        if not self.classes:
            return []
        parts = [c.strip() for c in self.classes.split(",")]  # "3 5" is no label 35, and " " is no "every class"
        # ASCII digits only: int() reads other scripts' digits too
        if not all(re.fullmatch(r"[0-9]+", c) and int(c) <= 999 for c in parts):
            raise GenlabError(f"--classes must be comma-separated labels (0 to 999) like 3 or 0,1,2, "
                              f"got {self.classes!r}")
        return sorted({int(c) for c in parts})


BUILTIN_DATASETS = ("auto", "mnist", "fashion-mnist", "mnist-5k")
FILE_PREFIXES = ("folder:", "npz:")


def check_dataset_name(name: str) -> None:
    """A built-in data set's name, or folder:PATH / npz:FILE (whether the path exists is asked when loading)."""
    prefix = next((p for p in FILE_PREFIXES if name.startswith(p)), None)
    if name in BUILTIN_DATASETS or (prefix and len(name) > len(prefix)):
        return
    if prefix:
        raise GenlabError(f"--dataset {name}: give a path after '{prefix}', e.g. --dataset {prefix}my_images")
    raise GenlabError(f"--dataset must be one of {', '.join(BUILTIN_DATASETS)}, folder:PATH or npz:FILE, "
                      f"got {name!r}")


@dataclass
class ImageShape:
    """The image shape a model is built for; ``genlab train`` sets it from the data (no flags). The defaults,
    one grey channel of 28 x 28, are MNIST's, so configs saved before the fields existed still load."""
    channels: int = opt(1, "image channels: 1 grey, 3 RGB (set from the data)", min=1, max=4, cli=False)
    height: int = opt(28, "image height in pixels (set from the data)", min=1, max=4096, cli=False)
    width: int = opt(28, "image width in pixels (set from the data)", min=1, max=4096, cli=False)

    def __post_init__(self) -> None:  # every model's config: the declared ranges hold however it is built
        validate(self)  # (flags, JSON or Python)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)


DEVICE_NAME = re.compile(r"auto|cpu|cuda(:\d+)?")


def check_device_name(name: str) -> None:
    """A device the config may name (whether it is present is ``check_device``'s question, asked at run time:
    a run trained on a GPU must still load its config on a machine without one)."""
    if not DEVICE_NAME.fullmatch(name):
        raise GenlabError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}; available here: "
                          f"{', '.join(available_devices())}")


def available_devices() -> list[str]:
    import torch

    return ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0)]


def check_device(name: str) -> None:
    """Refuse, in one line naming the devices that are here, a device this machine does not have."""
    check_device_name(name)
    if name in ("auto", "cpu"):
        return
    present = available_devices()
    if name not in present and not (name == "cuda" and len(present) > 1):
        raise GenlabError(f"--device {name} is not available on this machine; available: "
                          f"{', '.join(present)} (or auto)")


def fields_of(cls: type) -> list[dataclasses.Field]:
    return list(dataclasses.fields(cls))


def from_dict(cls: type, data: dict) -> Any:
    """Rebuild ``cls`` from a saved dict, refusing unknown keys so a stale config is noticed."""
    if not isinstance(data, dict):
        raise GenlabError(f"config for {cls.__name__} must be a JSON object of field names to values, "
                          f"got {type(data).__name__}")
    names = {f.name for f in fields_of(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise GenlabError(f"config for {cls.__name__} has unknown keys {unknown}; was it written by a newer genlab?")
    obj = cls(**data)
    validate(obj)
    return obj


def _number(x: float) -> str:
    if isinstance(x, int):  # JSON ints are unbounded: 10**400 has no float
        if abs(x) < 10**15:
            return str(x)
        try:
            return f"a {len(str(abs(x)))}-digit number"
        except ValueError:  # past Python's limit on turning an int into digits (4,300)
            return f"a number of about {int(abs(x).bit_length() * math.log10(2))} digits"
    return str(int(x)) if x.is_integer() and abs(x) < 1e15 else f"{x:g}"


def _describe_range(meta: dict) -> str:
    bounds = (("above", ">"), ("min", ">="), ("below", "<"), ("max", "<="))
    return " and ".join(f"{sign} {_number(meta[key])}" for key, sign in bounds if meta.get(key) is not None)


def optional_of(kind: Any) -> type | None:
    """``X`` for a field typed ``X | None``, else None."""
    args = typing.get_args(kind)
    if type(None) in args and len(args) == 2:
        return next(a for a in args if a is not type(None))
    return None


def _check_type(name: str, kind: type, value: Any) -> Any:
    """``value`` as ``kind`` (an int is a float too; NumPy's scalars, as a sweep over ``numpy.arange`` gives
    them, are Python's), or a GenlabError: a JSON file can hold anything."""
    if optional_of(kind) is not None:
        return None if value is None else _check_type(name, optional_of(kind), value)
    if kind is bool:
        ok = isinstance(value, (bool, np.bool_))
        value = bool(value) if ok else value
    elif kind is int:
        ok = isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))
        value = int(value) if ok else value
    elif kind is float:
        ok = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
    else:
        ok = isinstance(value, kind)
    if not ok:
        words = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}
        raise GenlabError(f"--{name.replace('_', '-')} must be {words.get(kind, kind.__name__)}, got {value!r}")
    if kind is float:
        try:
            return float(value)
        except OverflowError:  # a JSON integer of hundreds of digits: no float holds it
            raise GenlabError(f"--{name.replace('_', '-')} must be a finite number, got {_number(value)}") from None
    return value


def validate(obj: Any) -> None:
    """Check types, choices and the ranges declared with ``opt`` so a bad value fails before any work starts."""
    hints = typing.get_type_hints(type(obj))
    for f in fields_of(type(obj)):
        flag = f"--{f.name.replace('_', '-')}"
        value = _check_type(f.name, hints[f.name], getattr(obj, f.name))
        object.__setattr__(obj, f.name, value)
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            raise GenlabError(f"{flag} must be one of {', '.join(map(str, choices))}, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise GenlabError(f"{flag} must be a finite number, got {value}")
        meta = f.metadata
        if isinstance(value, (int, float)) and not isinstance(value, bool) and (
                (meta.get("min") is not None and value < meta["min"])
                or (meta.get("max") is not None and value > meta["max"])
                or (meta.get("above") is not None and value <= meta["above"])
                or (meta.get("below") is not None and value >= meta["below"])):
            raise GenlabError(f"{flag} must be {_describe_range(meta)}, got {_number(value)}")
    if hasattr(obj, "check"):
        obj.check()


def to_dict(obj: Any) -> dict:
    return dataclasses.asdict(obj)


def write_json(path: Path, data: dict) -> None:
    """Write JSON atomically (``write_atomically``); a failure is one line."""
    path = Path(path)
    text = json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n"
    try:
        write_atomically(path, text.encode())
    except OSError as e:
        raise GenlabError(f"cannot write {path} ({e.strerror or e})") from None


def discard(path) -> None:
    """Remove the file ``path`` if it is there (a temporary file after a failed write). Not
    ``unlink(missing_ok=True)``: on a read-only file system that raises EROFS for a file that is not there,
    which then replaced the error being said."""
    if os.path.lexists(path):
        os.unlink(path)


def write_atomically(path: Path, data: bytes, hidden: bool = False) -> None:
    """``data`` into ``path`` through a temporary file of its own beside it (two writers never share one; named
    NAME.XXXX.tmp, or .NAME.XXXX.tmp when ``hidden``), renamed into place when whole. The file gets the usual
    permissions (the umask's), not a temporary file's private ones. An OSError (a full disk) leaves no
    temporary file behind, and whatever ``path`` held before; so does Ctrl-C, SIGTERM or SIGHUP, which waits
    until the file is whole or gone (a stop part-way left a .tmp file that its command's cleanup never knew of)."""
    try:
        with signals_held():
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{'.' if hidden else ''}{path.name}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as f:
                    os.fchmod(f.fileno(), usual_mode())
                    f.write(data)
                os.replace(tmp, path)
            finally:
                discard(tmp)
    except OSError as e:
        if e.filename is None:  # a write's error names no file: say which one it was
            e.filename = str(path)
        raise


@contextmanager
def output_folder(path) -> Iterator[Path]:
    """``path`` made (with its parents) for the block's output; if the block fails, the folders made here are
    removed again where they are still empty: a refused or failed command leaves no empty folder behind."""
    path = Path(path)
    made = [folder for folder in (path, *path.parents) if not os.path.lexists(folder)]  # innermost first
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    except BaseException:
        for folder in made:
            try:
                folder.rmdir()
            except OSError:  # not empty (something of the command's, or another's), or gone: stop there
                break
        raise


def check_output_folder(path, flag: str) -> None:
    """Refuse, before a command's work rather than after it, a folder its output cannot go into: ``path`` or
    its nearest existing parent not writable by this user, or a file where a folder is wanted. ``flag``: the
    option that chooses another place, for the message."""
    path = Path(path)
    existing = next((p for p in (path, *path.parents) if os.path.lexists(p)), Path("."))
    if not existing.is_dir():
        what = "a symbolic link that leads nowhere" if existing.is_symlink() else "a file, not a folder"
        raise GenlabError(f"cannot write into {path}: {existing} is {what}; pass {flag} to write elsewhere")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise GenlabError(f"cannot write into {path}: {existing} is not writable (permissions, or a read-only "
                          f"disk); pass {flag} to write elsewhere")


def write_output(path, data: bytes) -> None:
    """``data`` into the output file ``path`` the user named, whole or not at all: through a temporary file
    renamed into place (a full disk left the file that was there cut short), into the file a symbolic link
    names (as opening it did) if its name ends as the link's does. A folder or a special file (a pipe, a
    device) there is refused, not replaced or waited on."""
    named, path = Path(path), Path(os.path.realpath(path))
    if path.exists() and not path.is_file():
        kind = "a folder" if path.is_dir() else "not a regular file"
        raise GenlabError(f"--out {path} is {kind}; give the name of a file to write")
    if path.suffix.lower() != named.suffix.lower():
        # A link named scores.csv that leads to a run's checkpoint replaced the checkpoint with a table.
        raise GenlabError(f"--out {named} is a link to {path}, a file of another kind; give the name of a "
                          f"{named.suffix} file, or remove the link")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, data)


def usual_mode() -> int:
    """The permissions a new file gets from ``open``: 0o666 less the umask (mkstemp's files are 0o600). Read
    from /proc where it can be, since setting the umask to read it touches every thread's new files."""
    try:
        with open("/proc/self/status") as f:
            mask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


MAX_JSON_BYTES = 64 << 20  # the largest run file read as JSON (a config is a few kB, an evaluation less)


def read_json(path: Path) -> dict:
    """A run file's JSON object; a missing, unreadable or damaged file (or one holding no object) is one line."""
    path = Path(path)
    if not path.exists():
        raise GenlabError(f"{path} not found; is this a genlab run directory?")
    if not path.is_file():
        raise GenlabError(f"{path} is not a regular file (a FIFO, a device?); the run directory is damaged")
    if path.stat().st_size > MAX_JSON_BYTES:  # read whole, a 2 GB file took 4 GB of memory before its refusal
        raise GenlabError(f"{path} is {path.stat().st_size / 1e6:.0f} MB, far more than a genlab run file; the run "
                          "directory is damaged")
    try:
        data = json.loads(path.read_text(), parse_constant=_no_constant)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise GenlabError(f"{path} is not valid JSON ({e}); the run directory is damaged") from None
    except OSError as e:
        raise GenlabError(f"cannot read {path} ({e.strerror or e})") from None
    if not isinstance(data, dict):
        raise GenlabError(f"{path} must hold a JSON object, found {type(data).__name__}; the run directory is damaged")
    return data


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")
