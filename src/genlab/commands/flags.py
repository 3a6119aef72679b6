"""Flags from configs: one ``--kebab-case`` flag per dataclass field, whole-number flags with ranges, and the
parser whose errors are one line."""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
import typing
from typing import Any

from genlab.config import MAX_SEED, fields_of, optional_of, validate
from genlab.errors import one_line

DEVICE_HELP = "auto (CUDA when present, else CPU), cpu, cuda or cuda:N"


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (what was wrong, where to look) and exit status 2."""

    def parse_known_args(self, args=None, namespace=None):
        self._words = list(sys.argv[1:] if args is None else args)  # for error(): the words this parser read
        return super().parse_known_args(args, namespace)

    def error(self, message):
        # A value thousands of characters long (a 5,000-digit number) is shown by its ends and its length.
        message = re.sub(r"\S{80,}", lambda m: f"{m.group()[:30]}...{m.group()[-10:]} ({len(m.group())} characters)",
                         message)
        # A run folder named -x (train --out=-x makes one) was read as a flag: "RUN_DIR is required".
        read_as_flag = ("arguments are required", "unrecognized arguments", "expected one argument")
        dashed = next((w for w in getattr(self, "_words", []) if w.startswith("-") and len(w) > 1 and
                       w not in self._option_string_actions and os.path.lexists(w)), None) \
            if any(words in message for words in read_as_flag) else None
        if dashed:
            message += f"; {dashed} is read as a flag, though a file of that name is here: write ./{dashed}"
        sys.stderr.write(f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")
        raise SystemExit(2)


def _whole_number(text: str) -> int:
    """An int flag of a config: ASCII digits only (int() took "٣" as 3 and "1_0" as 10)."""
    if not re.fullmatch(r"\s*[+-]?[0-9]+\s*", text):
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    return int(text)


def bounded_int(low: int, high: int | None = None) -> typing.Callable[[str], int]:
    """An argparse ``type`` for a whole-number flag in [low, high]: a bad value is argparse's one-line error."""
    def parse(text: str) -> int:
        value = _whole_number(text)
        if value < low or (high is not None and value > high):
            span = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"must be {span}, got {value}")
        return value
    parse.__name__ = "whole number"
    return parse


def _decimal(text: str) -> float:
    """A float flag of a config: a decimal number in ASCII (float() took other scripts' digits and "1_0");
    nan and inf pass here for the config's own check to refuse in its words."""
    if not re.fullmatch(r"\s*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\s*|\s*[+-]?(nan|inf|infinity)\s*",
                        text, flags=re.IGNORECASE):
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}")
    return float(text)


_whole_number.__name__, _decimal.__name__ = "whole number", "number"
_PARSERS = {int: _whole_number, float: _decimal}
number_flag = _decimal  # the ``type`` of a command's own number flag

seed_flag = bounded_int(0, MAX_SEED)  # the ``type`` of a --seed flag: the range TrainConfig.seed declares


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser, cls: type, title: str, defaults: Any = None) -> None:
    """Add one ``--kebab-case`` flag per field of the dataclass ``cls``; ``defaults`` (an instance) sets the
    defaults shown in the help, where they differ from the dataclass's own (a model's training defaults)."""
    group = parser.add_argument_group(title)
    hints = typing.get_type_hints(cls)
    for f in fields_of(cls):
        if not f.metadata.get("cli", True) or _flag(f.name) in parser._option_string_actions:
            continue  # set by genlab itself, or already a flag (dcgan's --image-size also sizes the data)
        kind = optional_of(hints[f.name]) or hints[f.name]
        shown = getattr(defaults, f.name) if defaults is not None else f.default
        help_text = _help_text(f.metadata, shown)
        if kind is bool:
            group.add_argument(_flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=help_text)
        else:
            choices = f.metadata.get("choices")  # shown as {a,b,c} in the usage and the help
            action = group.add_argument(_flag(f.name), dest=f.name, type=_PARSERS.get(kind, kind),
                                        default=argparse.SUPPRESS,
                                        choices=choices, help=help_text, metavar=None if choices else f.name.upper())
            # "--classes ''" means all classes, as leaving it out does; "--out ''" (a script's unset variable) is
            # refused as the other commands' empty arguments are, not read as the default folder
            action.empty_is_default = shown == "" and f.name != "out"


def _help_text(meta: dict, shown: Any) -> str:
    """A field's help, then its default (unless the help says it) and the range it declares."""
    text, notes = meta.get("help", ""), []
    if "(default:" not in text and shown not in ("", None):
        notes.append(f"default: {shown}")
    bounds = [f"{word} {_number(meta[key])}" for key, word in
              (("min", "at least"), ("above", "above"), ("max", "at most"), ("below", "below"))
              if meta.get(key) is not None]
    if meta.get("min") is not None and meta.get("max") is not None:
        bounds = [f"{_number(meta['min'])} to {_number(meta['max'])}"]
    notes += [", ".join(bounds)] if bounds else []
    return f"{text} ({'; '.join(notes)})" if notes else text


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e16 else f"{value:g}"


def from_namespace(cls: type, ns: argparse.Namespace, base: Any = None) -> Any:
    """Build ``cls`` from parsed flags; fields not given on the command line keep ``base``'s or the default."""
    given = {f.name: getattr(ns, f.name) for f in fields_of(cls) if hasattr(ns, f.name)}
    obj = base if base is not None else cls()
    obj = dataclasses.replace(obj, **given)
    validate(obj)
    return obj


