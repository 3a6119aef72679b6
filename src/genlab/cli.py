"""The ``genlab`` command. Each sub-command lives in ``genlab.commands``; bad input ends with one line on stderr
and exit status 2 (``genlab.errors``)."""

from __future__ import annotations

import argparse
import codecs
import contextlib
import difflib
import io
import os
import re
import signal
import sys
import threading

from genlab import __version__
from genlab.errors import BUG_STATUS, Stopped, held, one_line, one_line_errors


def _thread_count_problem() -> str | None:
    """OMP_NUM_THREADS holding something other than a thread count (0, "abc"): OpenMP prints its own warning
    when PyTorch loads and ignores the value. Taken out of the environment before PyTorch loads, so that
    ``main`` says the one line itself."""
    value = os.environ.get("OMP_NUM_THREADS")
    count = r"\s*\+?0*[1-9][0-9]*\s*"  # what OpenMP reads: a list of positive counts
    if value is None or (re.fullmatch(rf"{count}(,{count})*", value)
                         and all(int(c) <= MAX_THREADS for c in value.split(","))):
        return None
    del os.environ["OMP_NUM_THREADS"]
    return (f"OMP_NUM_THREADS={value!r} is not a number of threads; set it to a whole number from 1 to "
            f"{MAX_THREADS} or unset it")


MAX_THREADS = 65_536  # more overflowed OpenMP's own reading (its two-line warning), and no machine has as many


def _file_name_errors(error: UnicodeEncodeError):
    """How genlab's output carries what its stream's encoding cannot: a file name's bytes that are not UTF-8
    (which Python holds as lone surrogates) go out as those bytes, so the name printed opens the file; any
    other character as a backslash escape. Without it such a name ended the command in a traceback."""
    unencodable = error.object[error.start:error.end]
    if all(0xDC80 <= ord(c) <= 0xDCFF for c in unencodable):
        return codecs.lookup_error("surrogateescape")(error)
    return codecs.lookup_error("backslashreplace")(error)


codecs.register_error("genlab-file-names", _file_name_errors)


def build_parser():
    """The parser of every command. Importing the commands loads PyTorch (a second or more), which is why it
    happens here and not when this module is imported: see ``main``."""
    from genlab.commands import data, denoise, energy, evaluate, inpaint, report, serve, train
    from genlab.commands.flags import Parser

    parser = Parser(prog="genlab", description="Train, evaluate and visualise the classic deep generative "
                    "models as energy-based models.")
    parser.add_argument("--version", action="version", version=f"genlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for command in (train, data, evaluate, energy, denoise, inpaint, report, serve):  # in the order --help lists
        command.add(sub)
    return parser


class _Descriptor(io.RawIOBase):
    """A file descriptor (1 or 2) as the raw stream under Python's ``sys.stdout`` or ``sys.stderr``; the
    subclass says what a failed write does."""

    def __init__(self, fd: int):
        self._fd = fd

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def isatty(self) -> bool:
        return os.isatty(self._fd)


class _StandardOutput(_Descriptor):
    """File descriptor 1 under ``sys.stdout``, whose failed writes name it: a full disk behind ``> FILE`` (or
    ``> /dev/full``) ended the command with "No space left on device" and no word of which file."""

    def __init__(self, fd: int):
        super().__init__(fd)
        self.failure: OSError | None = None  # the first failed write, said by ``_flush_output``

    def write(self, data) -> int:
        if self.failure is not None:  # said once, as the command's error; the rest is dropped, not said at exit
            return len(data)
        try:
            return os.write(self._fd, data)
        except BrokenPipeError:  # the reader has gone: said by nothing (genlab.errors)
            raise
        except OSError as e:
            self.failure = OSError(e.errno, e.strerror, "standard output")
            raise self.failure from None


_output: _StandardOutput | None = None  # under sys.stdout, once ``main`` has put it there


def _flush_output() -> None:
    """Send what is still buffered, and raise a failed write to standard output, also one that was caught on
    the way (argparse's --help and --version print and ignore failures)."""
    sys.stdout.flush()
    if _output is not None and _output.failure is not None:
        raise _output.failure


class _StandardError(_Descriptor):
    """File descriptor 2 under ``sys.stderr``, whose failed writes are dropped: standard error is where genlab
    says what went wrong, so a failure there (a full disk behind ``2>>train.log``, a hung-up terminal) has
    nowhere to be said. A training run went on losing only its progress lines; it ended at its first one, with
    no checkpoint. The exit status still tells what happened."""

    def write(self, data) -> int:
        left = memoryview(data)
        try:
            while left:
                left = left[os.write(self._fd, left):]
        except OSError:
            pass
        return len(data)


def _standard_files_open() -> None:
    """Give file descriptors 0, 1 and 2 the null device where the command was started with them closed
    (``<&-``, ``>&-``, ``2>&-``): otherwise the next file genlab opens takes the number, and whatever writes to
    standard error (PyTorch's C++ warnings, a progress bar) writes into that file, a checkpoint or a lock.
    Python has made ``sys.stdout`` or ``sys.stderr`` None for a closed one: a closed output is refused by
    ``_main``; a closed standard error becomes the null device, as ``2>/dev/null`` would."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)  # the lowest free number: this one
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    if sys.stderr is None:
        sys.stderr = open(2, "w", buffering=1, closefd=False, errors="backslashreplace")  # noqa: SIM115


def _own_descriptor(stream, original) -> int | None:
    """The file descriptor under ``stream`` (flushed) when it is Python's own ``original`` text stream; None for
    a stand-in (a test's capture) or a stream with no descriptor, which are left as they are."""
    if stream is not original or not isinstance(stream, io.TextIOWrapper):
        return None
    try:
        fd = stream.fileno()
        stream.flush()
    except (OSError, ValueError):
        return None
    return fd


def _named_standard_error() -> None:
    """Put ``_StandardError`` under Python's own standard error, keeping its encoding, and write it a line at a
    time, also under ``python -u`` (PYTHONUNBUFFERED): ``print`` writes a line and its end separately, and the
    error lines of two processes of one run, each written in two parts, came out glued together."""
    fd = _own_descriptor(sys.stderr, sys.__stderr__)
    if fd is None:
        return
    sys.stderr = io.TextIOWrapper(io.BufferedWriter(_StandardError(fd)), encoding=sys.stderr.encoding,
                                  errors=sys.stderr.errors, line_buffering=True)


def _named_standard_output() -> None:
    """Put ``_StandardOutput`` under Python's own standard output, keeping its encoding and buffering."""
    fd = _own_descriptor(sys.stdout, sys.__stdout__)
    if fd is None:
        return
    global _output
    raw = _output = _StandardOutput(fd)
    unbuffered = isinstance(sys.stdout.buffer, io.RawIOBase)  # python -u, PYTHONUNBUFFERED
    sys.stdout = io.TextIOWrapper(raw if unbuffered else io.BufferedWriter(raw), encoding=sys.stdout.encoding,
                                  errors=sys.stdout.errors, line_buffering=sys.stdout.line_buffering,
                                  write_through=sys.stdout.write_through)


def main(argv: list[str] | None = None) -> int:
    status = BUG_STATUS
    try:
        status = _main(argv)
        return status
    except SystemExit as e:
        if e.code in (0, None):  # --help, --version: what they printed is flushed where a failure is one line
            status = one_line_errors(lambda: _flush_output() or 0)
            if status:
                raise SystemExit(status) from None
        status = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
        raise
    finally:
        if argv is None:  # the genlab command's own process, not a caller's
            _signals_end_the_exit(status)
            distributed = sys.modules.get("genlab.distributed")  # loaded only by a command that meets peers
            if distributed is not None and distributed.threads_left_in_cpp():
                _flush_and_exit(status)


def _flush_and_exit(status: int) -> None:
    """End the process at once with ``status``, what it printed flushed first (where it can be)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, RuntimeError):  # closed, full, or caught inside its own write
            pass
    os._exit(status)


def _signals_end_the_exit(status: int) -> None:
    """Once the command has said its last line, Ctrl-C or SIGTERM ends the process at once, with the status that
    line goes with: a second Ctrl-C right after the first was a KeyboardInterrupt inside the interpreter's exit,
    shown as PyTorch's traceback, and a SIGTERM just after "interrupted by SIGINT" ended it with SIGTERM's 143."""
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(signum) is not signal.SIG_IGN:
                signal.signal(signum, lambda _signum, _frame: _flush_and_exit(status))


def _main(argv: list[str] | None) -> int:
    if argv is None:  # the genlab command's own process: its standard files are its own
        _standard_files_open()
        _named_standard_error()
    if sys.stdout is None:  # started with it closed (>&-): said before any work, not after hours of it
        print("genlab: error: standard output is closed, so what this command prints would be lost; run it with its "
              "output going to a terminal, a file or a pipe", file=sys.stderr)
        return 2
    try:
        os.getcwd()
    except OSError:  # PyTorch's libraries then failed to load, in words about a library file
        print("genlab: error: the working folder no longer exists (it was removed after the shell entered it); cd "
              "to an existing folder and run the command again", file=sys.stderr)
        return 2
    _named_standard_output()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError):  # not a text stream of Python's (a test's stand-in)
            stream.reconfigure(errors="genlab-file-names")
    thread_count_problem = _thread_count_problem()  # before PyTorch loads (build_parser), which reads it
    # The command draws into files through matplotlib's Agg and opens no window: a backend named for pyplot
    # (MPLBACKEND) is not its business, and one matplotlib does not know ended training in a traceback.
    os.environ.pop("MPLBACKEND", None)
    # PyTorch's C++ warnings (c10d's, each with a stack trace, when a process of a group goes away) came before
    # genlab's own line about the same thing; its errors still show. Read as PyTorch loads; a user's setting wins.
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    # Ctrl-C or SIGTERM while PyTorch and the rest load is held until they have loaded, then ends the command
    # with its one line: raised in the middle of an import it gave a traceback, or an abort from inside C++.
    caught: list[int] = []
    note = lambda signum, frame: caught.append(signum)  # noqa: E731
    try:
        with _handlers({signal.SIGINT: note, signal.SIGTERM: note, signal.SIGHUP: note}):
            parser = build_parser()
    except (ImportError, OSError, MemoryError) as e:
        trouble = _load_trouble(e)
        if trouble is None:
            raise
        print(f"genlab: error: {trouble}", file=sys.stderr)
        return 2
    if caught:  # then said as a stop during the command is
        return one_line_errors(lambda: _stop(caught[0], None))
    from genlab.models import MODELS

    _refuse_new_run_flags_on_resume(parser, sys.argv[1:] if argv is None else list(argv))
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        unrecognized(parser, args, unknown)
    empty = _empty_argument(parser, args)
    if empty:
        # A script's unset variable (--images "$DIR") read as "." scored the whole working folder, and an empty
        # --out quietly meant the default: an empty argument is a mistake, whatever it names.
        _command_parser(parser, args).error(empty)
    if args.command == "train" and args.model is None and not args.resume:
        parser.error(f"train needs a MODEL ({', '.join(MODELS)}) or --resume RUN_DIR")
    from genlab import ENVIRONMENT_PROBLEMS

    if thread_count_problem or ENVIRONMENT_PROBLEMS:
        print(f"genlab: error: {thread_count_problem or ENVIRONMENT_PROBLEMS[0]}", file=sys.stderr)
        return 2
    if args.command != "train" and os.environ.get("WORLD_SIZE", "1").strip() not in ("", "0", "1"):
        # Each process would do the whole job and write the same files (reproduce's training processes even
        # joined each other's process groups).
        print(f"genlab: error: genlab {args.command} runs as one process; start it without torchrun (only genlab "
              "train is data-parallel)", file=sys.stderr)
        return 2
    # SIGTERM (``kill``, ``timeout``, a scheduler, torchrun stopping its other workers) and SIGHUP (a closed
    # terminal) end any command as Ctrl-C does: one line, status 128 + the signal's number. Training and the
    # reproduction put their own handler in place while they train (they checkpoint first, then say how to go on).
    with _handlers({signal.SIGTERM: _stop, signal.SIGHUP: _stop}):
        return one_line_errors(lambda: _run(args))


def _load_trouble(e: BaseException) -> str | None:
    """The line for a library that would not load because of the machine, not of genlab: too little memory
    for its code (``ulimit -v``: "failed to map segment from shared object"), or a package missing from the
    environment; None for anything else (a bug: its traceback is shown)."""
    text = one_line(e)
    if isinstance(e, MemoryError) or "failed to map segment" in text or "annot allocate memory" in text:
        return (f"too little memory to load PyTorch and genlab's other libraries ({text}); raise the process's "
                "memory limit (ulimit -v) or free memory, and try again")
    missing = getattr(e, "name", None) if isinstance(e, ModuleNotFoundError) else None
    if missing and missing.split(".")[0] != "genlab":
        return (f"the package {missing.split('.')[0]!r}, which genlab needs, is not installed in this environment; "
                "install genlab with its dependencies (pip install -e . in its folder)")
    return None


def _run(args) -> int:
    status = args.func(args)
    _flush_output()  # here, where a failure is one line, not at exit
    return status


@contextlib.contextmanager
def _handlers(handlers: dict):
    """``handlers`` (signal -> function) in place inside the block, the old ones after it. A signal the caller
    ignores (Ctrl-C in a background job) stays ignored; off the main thread, where Python sets none, nothing
    changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {signum: signal.signal(signum, handler) for signum, handler in handlers.items()
           if signal.getsignal(signum) is not signal.SIG_IGN}
    try:
        yield
    finally:
        for signum, handler in old.items():
            signal.signal(signum, handler)


def _stop(signum, frame):
    if held(signum):  # a file being written (genlab.errors.signals_held): raised as the write ends
        return
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Stopped(f"stopped by {signal.Signals(signum).name}", signum)


def _command_parser(parser, args) -> argparse.ArgumentParser:
    """The parser of the command given (of ``train MODEL``, for a model's flags)."""
    names = [args.command] + ([args.model] if args.command == "train" and args.model else [])
    for name in names:
        parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
    return parser


def _empty_argument(parser, args) -> str | None:
    """What to say of the first argument given as an empty string (by its flag, or its name for a positional
    one), or None."""
    for action in _command_parser(parser, args)._actions:
        value = getattr(args, action.dest, None)
        if action.default == "" or getattr(action, "empty_is_default", False):  # empty is its default: --classes
            continue
        if value == "" or (isinstance(value, list) and "" in value):
            name = "/".join(action.option_strings) or action.metavar or action.dest
            optional = action.option_strings and not action.required
            return f"{name} is empty; give a value" + (", or leave the flag out" if optional else "")
    return None


def _refuse_new_run_flags_on_resume(parser, words: list[str]) -> None:
    """``genlab train --resume RUN --lr 0.1``: a model's flag after --resume, refused in words that say why.
    argparse, which knows such flags only after a MODEL, took 0.1 for the MODEL ("invalid choice: '0.1'")."""
    flags = words[:words.index("--")] if "--" in words else words  # after "--" every word is a value
    # argparse takes --resume's unambiguous abbreviations too (--res RUN)
    resumes = sum(len(w.split("=")[0]) > 2 and "--resume".startswith(w.split("=")[0]) for w in flags)
    if words[:1] != ["train"] or not resumes:
        return
    from genlab.commands.train import RESUME_FLAGS

    train_parser = _command_parser(parser, argparse.Namespace(command="train", model=None))
    if resumes > 1:  # argparse keeps the last, and the others were passed over without a word
        train_parser.error("--resume is given more than once; name the one run to go on with")
    models = next(a for a in train_parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    if any(w in models for w in words[1:]):
        return  # a model too: the command says "not vae too"
    new_run_flags = {f for m in models.values() for f in m._option_string_actions} - set(
        train_parser._option_string_actions)
    flag = next((w.split("=")[0] for w in words[1:] if w.split("=")[0] in new_run_flags), None)
    if flag:
        train_parser.error(f"{flag} is a setting of a new run; --resume goes on with the run's own settings and "
                           f"takes only {RESUME_FLAGS}")


def unrecognized(parser, args, unknown: list[str]) -> None:
    """The one-line error for flags the command does not have, from the command's own parser, so it points
    at that command's help and suggests the nearest flag it does have."""
    parser = _command_parser(parser, args)
    message = f"unrecognized arguments: {' '.join(unknown)}"
    flag = next((word.split("=")[0] for word in unknown if word.startswith("--")), None)
    flags = [f for f in parser._option_string_actions if f.startswith("--") and f != "--help"]
    near = difflib.get_close_matches(flag, flags, n=1, cutoff=0.75) if flag else []
    parser.error(message + (f"; did you mean {near[0]}?" if near else ""))


if __name__ == "__main__":
    sys.exit(main())
