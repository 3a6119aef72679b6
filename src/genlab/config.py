"""Typed configs: one dataclass per model plus one for training, turned into CLI flags and saved as JSON.

Every field has a default and a help line (``opt(default, "help")``); the CLI derives ``--kebab-case`` flags
from the fields, and a run's ``config.json`` holds enough to rebuild its model exactly.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genlab.errors import GenlabError


def opt(default: Any, help: str, choices: tuple | None = None) -> Any:
    """A config field with its default, a one-line help text and, optionally, the allowed values."""
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class TrainConfig:
    dataset: str = opt("auto", "data set: auto (mnist when found on disk, else mnist-5k), mnist, fashion-mnist, mnist-5k")
    data_dir: str = opt("", "data directory (default: $GENLAB_DATA_DIR, else the per-user cache)")
    epochs: int = opt(20, "passes over the training split")
    batch_size: int = opt(256, "global batch size (split across DDP processes)")
    lr: float = opt(1e-3, "learning rate")
    optimizer: str = opt("adam", "optimiser", choices=("adam", "sgd"))
    seed: int = opt(0, "random seed (weights, shuffling, noise)")
    device: str = opt("auto", "auto (CUDA when present, else CPU), cpu, cuda or cuda:N")
    precision: str = opt("fp32", "fp32, or bf16: matrix products in bfloat16 under autocast (faster on GPUs at "
                         "large batches and on CPUs with bf16 instructions)", choices=("fp32", "bf16"))
    deterministic: bool = opt(False, "deterministic algorithms only, so a GPU run repeats (and resumes) bit for bit; "
                              "somewhat slower on a GPU")
    out: str = opt("", "run directory (default: runs/<model>-<time>)")
    limit: int = opt(0, "use only the first N training examples (0: all); for quick checks")
    eval_limit: int = opt(0, "use only the first N test examples for the per-epoch test loss (0: all)")
    figures: bool = opt(True, "write figures at the end of training")
    progress: bool = opt(True, "show progress bars (only on a terminal)")
    tensorboard: bool = opt(False, "also log scalars, image grids and energy histograms to RUN_DIR/tensorboard")


def fields_of(cls: type) -> list[dataclasses.Field]:
    return list(dataclasses.fields(cls))


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser, cls: type, title: str, defaults: Any = None) -> None:
    """Add one ``--kebab-case`` flag per field of the dataclass ``cls``; ``defaults`` (an instance) sets the
    defaults shown in the help, where they differ from the dataclass's own (a model's training defaults)."""
    group = parser.add_argument_group(title)
    hints = typing.get_type_hints(cls)
    for f in fields_of(cls):
        kind = hints[f.name]
        shown = getattr(defaults, f.name) if defaults is not None else f.default
        help_text = f"{f.metadata.get('help', '')} (default: {shown})"
        if kind is bool:
            group.add_argument(_flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=help_text)
        else:
            group.add_argument(_flag(f.name), dest=f.name, type=kind, default=argparse.SUPPRESS,
                               choices=f.metadata.get("choices"), help=help_text, metavar=f.name.upper())


def from_namespace(cls: type, ns: argparse.Namespace, base: Any = None) -> Any:
    """Build ``cls`` from parsed flags; fields not given on the command line keep ``base``'s or the default."""
    given = {f.name: getattr(ns, f.name) for f in fields_of(cls) if hasattr(ns, f.name)}
    obj = base if base is not None else cls()
    obj = dataclasses.replace(obj, **given)
    validate(obj)
    return obj


def from_dict(cls: type, data: dict) -> Any:
    """Rebuild ``cls`` from a saved dict, refusing unknown keys so a stale config is noticed."""
    names = {f.name for f in fields_of(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise GenlabError(f"config for {cls.__name__} has unknown keys {unknown}; was it written by a newer genlab?")
    obj = cls(**data)
    validate(obj)
    return obj


def validate(obj: Any) -> None:
    """Check choices and simple ranges so a bad value fails before any work starts."""
    for f in fields_of(type(obj)):
        value = getattr(obj, f.name)
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            raise GenlabError(f"--{f.name.replace('_', '-')} must be one of {', '.join(map(str, choices))}, got {value!r}")
    if hasattr(obj, "check"):
        obj.check()


def to_dict(obj: Any) -> dict:
    return dataclasses.asdict(obj)


def write_json(path: Path, data: dict) -> None:
    """Write JSON atomically: a temporary file beside the target, then a rename."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def read_json(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise GenlabError(f"{path} not found; is this a genlab run directory?")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise GenlabError(f"{path} is not valid JSON ({e}); the run directory is damaged") from None
