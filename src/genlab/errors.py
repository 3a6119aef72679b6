"""The one exception type genlab raises for bad input, and the wrapper that turns every expected failure into
one line on stderr and exit status 2.

Expected failures are a GenlabError, an OSError (a path the user gave that is missing, unreadable or
unwritable, a full disk) and running out of memory. Anything else is a bug in genlab: its traceback is shown,
followed by one line asking for a report, and the exit status is 70 (EX_SOFTWARE), so a script can tell the two
apart. Work stopped by Ctrl-C, SIGTERM or SIGHUP at a clean point (``Stopped``) prints its one line, which says how to
go on, and exits 128 + the signal's number, as a shell reports a process ended by that signal.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager

BUG_STATUS = 70


class GenlabError(Exception):
    """A problem the user can fix: the message names what was wrong and what to do."""


class Stopped(Exception):
    """Ctrl-C, SIGTERM or SIGHUP stopped the work at a clean point; the message says what was kept and how to go on."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


_hold = threading.local()  # per thread: how deep in signals_held, and the signal held back


@contextmanager
def signals_held() -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP, which genlab's handlers turn into exceptions (``Stopped``), wait until the
    block ends and are delivered then: a file is never left half-written, or written and not yet recorded for
    its command's cleanup. A handler asks ``held`` first."""
    depth = getattr(_hold, "depth", 0)
    _hold.depth = depth + 1
    try:
        yield
    finally:
        _hold.depth = depth
        pending = getattr(_hold, "pending", None) if depth == 0 else None
        if pending is not None:
            _hold.pending = None
            signal.raise_signal(pending)  # its handler runs again, outside the block


def held(signum: int) -> bool:
    """For a signal handler: whether this thread is inside ``signals_held`` (then ``signum`` is kept for the
    block's end, and the handler returns)."""
    if getattr(_hold, "depth", 0):
        _hold.pending = signum
        return True
    return False


def printable(text: str) -> str:
    """``text`` with its control characters escaped ("\\x1b" for ESC), its spacing kept: a file name from an
    unpacked archive could otherwise set a terminal's title or clear its screen when genlab names it."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(text))


def one_line(text: str) -> str:
    """``text`` on one line (a message that quotes another error may hold newlines), ``printable``."""
    return printable(" ".join(str(text).split()))


def first_line(e: BaseException, most: int = 200) -> str:
    """The first line of an exception's message (PyTorch's often run to dozens), at most ``most`` characters; its
    type's name where it says nothing."""
    text = str(e).strip()
    return text.splitlines()[0][:most] if text else type(e).__name__


DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # no space, a quota, a file-size limit


def what_to_do(e: BaseException) -> str:
    """What a user can do about a failed write: make room for a full disk, make a refused place writable."""
    if getattr(e, "errno", None) in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "make the run folder and its files writable"
    return "free space"


def _shortened(path: str, most: int = 200) -> str:
    """A path for a line of text: its start and end where it is longer than ``most`` characters."""
    return path if len(path) <= most else f"{path[:most // 2]}...{path[-most // 4:]} ({len(path)} characters)"


def describe_os_error(e: OSError) -> str:
    """An OSError as one line naming the path(s) and what to do about a full disk."""
    where = ", ".join(_shortened(str(f)) for f in (e.filename, e.filename2) if f is not None)
    why = e.strerror or str(e)
    text = f"{where}: {why}" if where else why
    if e.errno in DISK_FULL:
        text += "; free space (or raise the limit) and try again"
    elif e.errno == errno.EROFS:  # only a write meets it
        text += "; give the command a place it can write (its --out, or --figures)"
    elif e.errno in (errno.EACCES, errno.EPERM) and where:
        text += "; check that path's permissions, or give the command another path"
    elif e.errno == errno.EEXIST and e.filename is not None and not os.path.isdir(e.filename):
        text += " and is not a folder; give a folder (new or existing) for the output"
    elif why.startswith("No usable temporary directory"):  # Python's tempfile could write a test file nowhere
        text += ("; no file could be written there: free space (or raise the file-size limit), or set TMPDIR to "
                 "a writable folder")
    return one_line(text)


def one_line_errors(main: Callable[[], int], prog: str = "genlab") -> int:
    """Run ``main``; an expected failure becomes one line on stderr and exit status 2, a stop by a signal one
    line and 128 + its number (Ctrl-C: 130), and a bug its traceback plus one line asking for a report (status
    ``BUG_STATUS``)."""
    try:
        return main()
    except GenlabError as e:
        print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
        return 2
    except Stopped as e:
        print(f"{prog}: {one_line(e)}", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of our output has gone (genlab ... | head): stop quietly, as cat does
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the flush at exit writes there
        except (OSError, ValueError):  # io.UnsupportedOperation is a ValueError: no file behind sys.stdout
            pass
        return 128 + 13
    except OSError as e:
        print(f"{prog}: error: {describe_os_error(e)}", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"{prog}: error: {OUT_OF_MEMORY}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - the last resort: a bug, said as such
        trouble = _device_trouble(e)
        if trouble:
            print(f"{prog}: error: {trouble}", file=sys.stderr)
            return 2
        traceback.print_exc()
        from genlab import __version__
        print(f"{prog}: internal error: this is a bug in genlab {__version__}; please report it with the "
              "command and the traceback above", file=sys.stderr)
        return BUG_STATUS


OUT_OF_MEMORY = ("out of memory; ask for less: a smaller --batch-size, -n, --limit, --eval-limit or --image-size, "
                 "or a smaller model (--latent-dim, --hidden, --ngf, --ndf)")


def _device_trouble(e: Exception) -> str | None:
    """The line for a GPU that cannot take the work (full memory, or held by another process in its exclusive
    compute mode), from PyTorch's or CUDA's own error; None for anything else."""
    text = one_line(e)
    if type(e).__name__ == "OutOfMemoryError" or "CUDA error: out of memory" in text:  # without importing torch
        return f"out of device memory ({text.split('. ')[0]}); lower --batch-size"
    if "DefaultCPUAllocator: can't allocate memory" in text or "DefaultCPUAllocator: not enough memory" in text:
        wanted = re.search(r"allocate (\d+) bytes", text)
        size = f" (PyTorch asked for {int(wanted.group(1)) / 2**30:.1f} GiB at once)" if wanted else ""
        return OUT_OF_MEMORY.replace("out of memory", f"out of memory{size}", 1)
    if "busy or unavailable" in text:  # cudaErrorDevicesUnavailable
        return ("the GPU is taken: it admits one process at a time (its exclusive compute mode) and another "
                "process holds it; wait for that one, use --device cpu, or give genlab reproduce --jobs 1")
    return None
