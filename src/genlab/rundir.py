"""A run directory has one owner and one history.

- One owner: a run holds an exclusive ``flock`` on ``RUN_DIR/.lock`` for its whole life, so a second
  ``genlab train`` on the same directory (a fresh run or a ``--resume``) is refused in one line instead of
  interleaving its files with the first's. The kernel drops the lock when the process dies, even by kill -9.
- One history: each epoch ends with one commit. The checkpoint is written first and carries the epoch's metrics
  record in its counters; the line in ``metrics.jsonl`` follows. On resume, lines past the checkpoint's epoch
  (from a run killed after logging) are dropped and a line the checkpoint has but the log lacks (a kill between
  the two writes) is restored, so no epoch is logged twice or lost.
- No debris: a checkpoint save killed half-way leaves a ``.checkpoint-XXXXXXXX.tmp``; the next owner removes it,
  and only the temporary files genlab itself names so (``is_stale``): a folder given to ``--out`` may hold a
  user's ``notes.json.tmp``.
- A lock that is not genlab's is not written: ``.lock`` is opened without following a symbolic link, and a
  file there holding anything but a process id is locked as it is, not replaced by one (a run folder from
  somebody else could have pointed ``.lock`` at a file of the user's).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import stat
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from genlab import config as cfgmod
from genlab.checkpoint import CONFIG, TMP_PREFIX, TMP_SUFFIX
from genlab.errors import GenlabError, what_to_do

LOCK = ".lock"
METRICS = "metrics.jsonl"
_claimed: dict[str, tuple[int, int]] = {}  # run folder (as claimed) -> (device, inode) of the folder claimed


@contextmanager
def claim(run_dir: Path, owner: bool = True) -> Iterator[None]:
    """Create ``run_dir`` if needed and hold its lock for the ``with`` block; ``owner=False`` (a DDP rank that
    writes nothing) claims nothing. A directory held by another process is a GenlabError. A run refused
    before it wrote anything (a bad flag, say) leaves no empty directory behind: the folders made here for it
    are removed again."""
    if not owner:
        yield
        return
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise GenlabError(f"{run_dir} is a file, not a run directory; choose another --out")
    made = [folder for folder in (run_dir, *run_dir.parents) if not folder.exists()]  # innermost first
    made_lock = not os.path.lexists(run_dir / LOCK)
    before = set(os.listdir(run_dir)) if run_dir.is_dir() else set()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.EISDIR):
            kind = "a symbolic link" if e.errno == errno.ELOOP else "a folder"
            raise GenlabError(f"{run_dir / LOCK} is {kind}, not genlab's lock file; remove it (genlab makes its own) "
                              "or train into another folder (--out)") from None
        if os.path.islink(run_dir) and not run_dir.exists():
            raise GenlabError(f"{run_dir} is a symbolic link to {os.readlink(run_dir)}, which does not exist; make "
                              "that folder, or remove the link, or train into another folder (--out)") from None
        raise GenlabError(f"cannot use {run_dir} as a run directory ({e.strerror or e}); make it writable (a new run "
                          "can also go into another folder, with --out)") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO or a device named .lock
        os.close(fd)
        raise GenlabError(f"{run_dir / LOCK} is not a regular file, not genlab's lock file; remove it or train into "
                          "another folder (--out)")
    try:
        _lock(fd, run_dir)
        try:  # the pid only makes the refusal above more helpful; a full disk must not stop the run here
            if _holds_a_pid_or_nothing(fd):
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass
        remove_stale_temporaries(run_dir)
        folder = os.stat(run_dir)
        _claimed[str(run_dir)] = (folder.st_dev, folder.st_ino)
        try:
            yield
        except BaseException:
            if made_lock:
                _remove_if_unused(run_dir, made, before)
            raise
    finally:
        _claimed.pop(str(run_dir), None)
        os.close(fd)  # releases the lock


def _lock(fd: int, run_dir: Path, patience_s: float = 0.2) -> None:
    """Take the run's lock, or say who holds it. A lock held for a moment (``refuse_if_in_use`` looking) is
    waited for, briefly."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise GenlabError(_in_use(run_dir, fd)) from None
            time.sleep(0.01)


def _in_use(run_dir: Path, fd: int) -> str:
    holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
    who = f" (pid {holder})" if holder.isdigit() else ""
    return f"{run_dir} is in use by another genlab process{who}; wait for it to finish or choose another --out"


def refuse_if_in_use(run_dir: Path) -> None:
    """The refusal ``claim`` would give, said before anything reads the folder: a run being started there has
    no config.json yet, and its absence was said as "is this a genlab run directory?"."""
    try:
        fd = os.open(Path(run_dir) / LOCK, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return  # no lock file (or none genlab can use): claim says what is wrong, if anything
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                raise GenlabError(_in_use(Path(run_dir), fd)) from None
    finally:
        os.close(fd)  # a shared lock taken here goes with it


def check_still_claimed(run_dir: Path) -> None:
    """A GenlabError unless ``run_dir`` is still the folder this process claimed: a run folder removed (or
    renamed, and another made in its place) while training went on took the checkpoints of the rest of the
    run into a folder without its config, and the run reported success."""
    claimed = _claimed.get(str(run_dir))
    if claimed is None:
        return  # not claimed here (a process of a data-parallel run that writes nothing)
    try:
        folder = os.stat(run_dir)
        same = (folder.st_dev, folder.st_ino) == claimed and os.path.isfile(run_dir / CONFIG)
    except OSError:
        same = False
    if not same:
        raise GenlabError(f"the run folder {run_dir} was removed, renamed or replaced while the run trained, so its "
                          "checkpoint has nowhere to go; start the run again (or resume it from where its folder "
                          "went, if it was renamed)")


def _remove_if_unused(run_dir: Path, made: list[Path], before: set[str]) -> None:
    """Remove the lock file ``claim`` made and the folders it made (``made``, innermost first) when the run
    added nothing to what the folder held ``before`` (called while the lock is held)."""
    try:
        if set(os.listdir(run_dir)) - {LOCK} != before:
            return
        (run_dir / LOCK).unlink()
        for folder in made:
            folder.rmdir()  # an OSError (not empty: somebody else's file) ends the walk up
    except OSError:
        pass


def _holds_a_pid_or_nothing(fd: int) -> bool:
    """Whether the lock file open at ``fd`` is one genlab wrote (a process id) or an empty one."""
    return re.fullmatch(rb"\s*\d*\s*", os.pread(fd, 64, 0)) is not None


# The temporary files genlab writes in a run directory, by their exact names: tempfile's eight characters
# (``config.write_atomically``, ``checkpoint.save``), or a process id (``viz.figures.save_figure``).
_RANDOM = r"[a-z0-9_]{8}"
_STALE = re.compile(rf"{re.escape(TMP_PREFIX)}{_RANDOM}{re.escape(TMP_SUFFIX)}"
                    rf"|(config|evaluation|inpainting)\.json\.{_RANDOM}\.tmp"
                    rf"|\.{re.escape(METRICS)}\.tmp")
_STALE_FIGURE = re.compile(rf"\.[^/]+\.png\.{_RANDOM}\.tmp|\.[^/]+\.\d+\.tmp\.png")


def is_stale(name: str, in_figures: bool = False) -> bool:
    """Whether ``name`` (in the run directory, or in its ``figures/``) is a temporary file of genlab's."""
    return (_STALE_FIGURE if in_figures else _STALE).fullmatch(name) is not None


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Delete half-written checkpoints, JSON files and figures left by a killed run (call only while holding the
    lock); a file of another name is left alone, whatever it ends with."""
    run_dir = Path(run_dir)
    stale = [path for path in run_dir.glob("*.tmp") if is_stale(path.name)]
    if (run_dir / "figures").is_dir() and not (run_dir / "figures").is_symlink():
        stale += [path for path in (run_dir / "figures").glob(".*") if is_stale(path.name, in_figures=True)]
    for path in stale:
        if path.is_file() and not path.is_symlink():
            path.unlink(missing_ok=True)
    return stale


def _regular_or_absent(path: Path) -> None:
    """A GenlabError when ``path`` exists but is no regular file: reading or appending to a FIFO would wait
    for a writer or reader that never comes."""
    if path.exists() and not path.is_file():
        raise GenlabError(f"{path} is not a regular file; move it away (the checkpoint restores the metrics of "
                          "the epochs it holds) and try again")
    if path.exists() and path.stat().st_size > MAX_METRICS_BYTES:  # a line an epoch: a few hundred bytes each
        raise GenlabError(f"{path} is {path.stat().st_size / 1e6:.0f} MB, far more than a genlab run logs; move it "
                          "away (the checkpoint restores the metrics of the epochs it holds) and try again")


MAX_METRICS_BYTES = 256 << 20


def commit_metrics(run_dir: Path, record: dict) -> None:
    """Add the epoch's line to ``metrics.jsonl`` (after its checkpoint is on disk): the file is written anew
    beside it and renamed into place, as the checkpoint is, so a copy of the run made with hard links (``cp
    -al``, a snapshot backup) keeps its own log, and a kill leaves either the old file or the new one."""
    path = Path(run_dir) / METRICS
    check_still_claimed(run_dir)
    _regular_or_absent(path)
    try:
        logged = path.read_bytes() if path.exists() else b""
        _replace_metrics(path, logged + (b"\n" if logged and not logged.endswith(b"\n") else b"")
                         + (json.dumps(record) + "\n").encode())
    except OSError as e:
        check_still_claimed(run_dir)  # a folder gone since its checkpoint was written is said as such
        raise GenlabError(f"cannot write {path} ({e.strerror or e}); the checkpoint of epoch {record['epoch']} "
                          f"is saved and holds this line: {what_to_do(e)} and continue with --resume") from None


def read_metrics(path: Path) -> list[dict]:
    """The records of a ``metrics.jsonl``: JSON objects of numbers with a whole ``epoch``. A damaged line, or
    one a hand edit left with something other than a number, is one GenlabError naming it. The file is read
    line by line, not whole."""
    records = []
    _regular_or_absent(path)
    with open(path, errors="replace") as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except (ValueError, RecursionError):  # RecursionError: a hostile line nested 100,000 deep
                record = None
            if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
                raise GenlabError(f"{path} line {i + 1} is not a metrics record; the run directory is damaged")
            _numbers_only(record, path, i + 1)
            records.append(record)
    return records


def _numbers_only(record: dict, path: Path, line: int) -> None:
    for key, value in record.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise GenlabError(f"{path} line {line}: {key} is {json.dumps(value)[:40]}, not a number; restore the "
                              "file or remove that line")


def recover_metrics(run_dir: Path, counters: dict) -> int:
    """Make ``metrics.jsonl`` agree with a checkpoint's ``counters``: keep the lines of epochs 1..E, drop later
    ones and a last line cut short by a kill, restore line E from the checkpoint when missing. Returns how
    many lines were dropped."""
    path = Path(run_dir) / METRICS
    epoch = counters["epoch"]
    _regular_or_absent(path)
    try:
        lines = path.read_text().splitlines() if path.exists() else []
    except (OSError, UnicodeDecodeError) as e:
        raise GenlabError(f"cannot read {path} ({getattr(e, 'strerror', None) or e})") from None
    kept, dropped = [], 0
    for i, line in enumerate(lines):
        try:
            record = json.loads(line)
            line_epoch = record["epoch"]
            if not isinstance(line_epoch, int):
                raise TypeError
        except (ValueError, KeyError, TypeError, RecursionError):
            if i == len(lines) - 1:  # the append of a killed run: drop it, the checkpoint decides
                dropped += 1
                continue
            raise GenlabError(f"{path} line {i + 1} is damaged; restore the file or remove that line") from None
        if line_epoch <= epoch:
            _numbers_only(record, path, i + 1)
            kept.append(line)
        else:
            dropped += 1
    record = counters.get("record")
    if epoch > 0 and isinstance(record, dict) and record.get("epoch") == epoch and \
            not any(json.loads(line)["epoch"] == epoch for line in kept):
        kept.append(json.dumps(record))
    elif not dropped:
        return 0
    try:
        _replace_metrics(path, "".join(line + "\n" for line in kept).encode())
    except OSError as e:
        raise GenlabError(f"cannot rewrite {path} ({e.strerror or e}); {what_to_do(e)} and resume again") from None
    return dropped


def _replace_metrics(path: Path, data: bytes) -> None:
    """``data`` as the whole of ``metrics.jsonl``: written to disk beside it (``.metrics.jsonl.tmp``, a name
    ``is_stale`` knows) and renamed into place; an OSError leaves the file as it was and no temporary file."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    finally:
        cfgmod.discard(tmp)
