"""Checkpoints are data, not code: one safetensors file, written atomically, never unpickled.

The file holds the model's tensors (``model/...``), each optimiser's tensors (``optim/<player>/<param>/<key>``)
and the random-number states (``rng/<rank>`` for the CPU, ``cuda_rng/<rank>`` for the GPU of a run trained on
one); everything else (counters, optimiser hyper-parameters, running
sums of the current epoch) is JSON in the file's metadata. ``config.json`` beside it rebuilds the model.
"""

from __future__ import annotations

import json
import math
import os
import stat
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes, save_file

from genlab import config as cfgmod
from genlab.data.files import is_file_dataset
from genlab.errors import GenlabError, what_to_do

CHECKPOINT = "checkpoint.safetensors"
CONFIG = "config.json"
RNG_PREFIXES = {"cpu": "rng", "cuda": "cuda_rng"}  # generator kind -> tensor name prefix, one tensor per rank
FORMAT = "genlab-1"  # the checkpoint layout this genlab writes and reads
TMP_PREFIX, TMP_SUFFIX = ".checkpoint-", ".tmp"  # a save in progress; stale ones are removed on the next claim


def _optimizer_to_flat(name: str, opt: torch.optim.Optimizer, tensors: dict) -> dict:
    state = opt.state_dict()
    scalars: dict[str, Any] = {}
    for pid, pstate in state["state"].items():
        for key, value in pstate.items():
            if torch.is_tensor(value):
                tensors[f"optim/{name}/{pid}/{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{pid}/{key}"] = value
    return {"param_groups": state["param_groups"], "scalars": scalars}


def _optimizer_from_flat(name: str, meta: Any, tensors: dict, where: Path) -> dict:
    """The ``state_dict`` of optimiser ``name``, from its tensors and its JSON; a malformed part is a GenlabError."""
    if not (isinstance(meta, dict) and isinstance(meta.get("param_groups"), list)
            and isinstance(meta.get("scalars"), dict)):
        raise GenlabError(f"checkpoint {where}: optimiser {name!r} has no param_groups/scalars; the file is damaged")
    state: dict[int, dict] = {}
    prefix = f"optim/{name}/"
    for key, value in tensors.items():
        if key.startswith(prefix):
            pid, state_key = _param_key(key[len(prefix):], key, where)
            state.setdefault(pid, {})[state_key] = value
    for key, value in meta["scalars"].items():
        pid, state_key = _param_key(key, f"optimiser {name} scalar {key}", where)
        state.setdefault(pid, {})[state_key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def _param_key(key: str, what: str, where: Path) -> tuple[int, str]:
    """"<param index>/<state key>" -> (index, key)."""
    pid, _, state_key = key.partition("/")
    if not (pid.isdigit() and state_key):
        raise GenlabError(f"checkpoint {where}: {what!r} is not <parameter index>/<state key>; the file is damaged")
    return int(pid), state_key


def save(path: Path, model: torch.nn.Module, optimizers: dict[str, torch.optim.Optimizer],
         rng_states: dict[str, list[torch.Tensor]], counters: dict, settings: str | None = None) -> None:
    """Write the checkpoint to a temporary file in the same folder, fsync it, then rename it into place.

    ``rng_states``: {"cpu": [state per rank]} and, for a run on CUDA, "cuda": [state per rank]. The metadata
    also names the model, so a ``config.json`` edited to name another model with the same tensors is caught,
    and holds the run's ``settings`` (``settings_of``), so one edited to train or score under others is too.
    """
    path = Path(path)
    tensors = {f"model/{k}": v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    optim_meta = {name: _optimizer_to_flat(name, opt, tensors) for name, opt in optimizers.items()}
    for kind, prefix in RNG_PREFIXES.items():
        for rank, state in enumerate(rng_states.get(kind, ())):
            tensors[f"{prefix}/{rank}"] = state.cpu().contiguous()
    meta = {"counters": json.dumps(counters), "optimizers": json.dumps(optim_meta), "format": FORMAT,
            "model": _model_name(model), "crc32": checksum(tensors)}
    if settings is not None:
        meta["settings"] = settings
    meta["crc32_meta"] = metadata_checksum(meta)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=TMP_SUFFIX, dir=path.parent)
        os.close(fd)
        save_file(tensors, tmp, metadata=meta)
        os.chmod(tmp, cfgmod.usual_mode())  # readable by whoever shares the run folder, as its other files
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, SafetensorError) as e:
        # A full disk (ENOSPC, or EFBIG past a file-size limit) lands here: the rename never happened, so the
        # previous checkpoint is whole; say so in one line.
        kept = (f"the last good checkpoint {path} is kept; {what_to_do(e)} and continue with --resume"
                if path.exists() else f"no checkpoint was written; {what_to_do(e)} and start the run again")
        raise GenlabError(f"cannot write the checkpoint {path} ({getattr(e, 'strerror', None) or e}); {kept}") from None
    finally:
        if tmp:
            cfgmod.discard(tmp)


@dataclass
class Checkpoint:
    model_state: dict[str, torch.Tensor]
    optimizer_states: dict[str, dict]
    rng_states: list[torch.Tensor]  # CPU generator state per rank
    counters: dict
    cuda_rng_states: list[torch.Tensor] = field(default_factory=list)  # per rank, for a run trained on CUDA
    model_name: str | None = None  # the model that wrote it (None: a checkpoint of an older genlab)
    settings: str | None = None  # ``settings_of`` the run that wrote it (None: a checkpoint of an older genlab)


def load(path: Path) -> Checkpoint:
    """Read a checkpoint written by ``save``; a missing, damaged or malformed file is a GenlabError.

    Only the file's own structure is checked here (tensor names, metadata types); ``check`` compares it with
    the model and optimisers it is meant for.
    """
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise GenlabError(f"checkpoint {path} is a symbolic link that leads nowhere (or round in a loop); restore "
                          "the file")
    if not path.exists():
        raise GenlabError(f"no checkpoint at {path}; train first, or point at a genlab run directory")
    try:
        # One read of the file, its tensors and metadata parsed from those bytes: opened by name twice, a
        # checkpoint replaced by a training run in between gave one file's counters with another's tensors,
        # or tensors read at shifted offsets (finite garbage).
        with _open_regular(path) as f:
            _check_extent(f, path)  # before the body is read: a 2 GB file of garbage took 2 GB of memory
            data = f.read(MAX_CHECKPOINT_BYTES + 1)
        if len(data) > MAX_CHECKPOINT_BYTES:
            raise GenlabError(f"checkpoint {path} is over {MAX_CHECKPOINT_BYTES >> 30} GB, far more than a genlab "
                              "model; retrain, or restore the file")
        tensors = load_bytes(data)
        meta = _metadata(data)
        if meta.get("format", FORMAT) != FORMAT:
            raise GenlabError(f"checkpoint {path} is of format {str(meta['format'])[:40]!r}, which this genlab "
                              f"({FORMAT}) does not read; use the genlab that wrote it, or retrain")
        # genlab writes these with json.dumps, which spells a diverged term NaN: accepted here, while the
        # optimiser's settings are checked to be finite numbers in ``check``.
        counters = json.loads(meta["counters"])
        optim_meta = json.loads(meta["optimizers"])
        model_name = meta.get("model")
        settings = _settings_in(meta)
        stored_crc = meta.get("crc32")  # absent in checkpoints of an older genlab
    except PermissionError as e:
        raise GenlabError(_unreadable(path, e)) from None
    except (SafetensorError, OSError, KeyError, ValueError, TypeError, RecursionError) as e:
        raise GenlabError(f"checkpoint {path} is damaged or not a genlab checkpoint ({e}); "
                          "retrain, or restore the file") from None
    if stored_crc is not None and stored_crc != checksum(tensors):
        raise GenlabError(f"checkpoint {path} is damaged: its tensors do not match the checksum written with them; "
                          "retrain, or restore the file")
    if not isinstance(counters, dict) or not isinstance(optim_meta, dict):
        raise GenlabError(f"checkpoint {path}: its counters and optimisers must be JSON objects; the file is damaged")
    rng: dict[str, dict[int, torch.Tensor]] = {"rng": {}, "cuda_rng": {}}
    for key, value in tensors.items():
        family, _, rest = key.partition("/")
        if family == "model" and rest:
            continue
        if family == "optim" and rest.partition("/")[0] in optim_meta:
            continue
        if family in ("rng", "cuda_rng") and rest.isdigit():
            if value.dtype != torch.uint8 or value.dim() != 1:
                raise GenlabError(f"checkpoint {path}: random state {key} must be a 1-D uint8 tensor, found "
                                  f"{_describe(value)}; the file is damaged")
            rng[family][int(rest)] = value
            continue
        raise GenlabError(f"checkpoint {path}: unexpected tensor {key!r}; not a genlab checkpoint")
    for family, states in rng.items():
        if sorted(states) != list(range(len(states))):
            raise GenlabError(f"checkpoint {path}: {family} states for ranks {sorted(states)}, expected "
                              f"0..{len(states) - 1}")
    if rng["cuda_rng"] and len(rng["cuda_rng"]) != len(rng["rng"]):
        raise GenlabError(f"checkpoint {path}: {len(rng['cuda_rng'])} CUDA random states for {len(rng['rng'])} "
                          "processes; the file is damaged")
    model_state = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    optimizers = {name: _optimizer_from_flat(name, m, tensors, path) for name, m in optim_meta.items()}
    return Checkpoint(model_state, optimizers, [rng["rng"][r] for r in range(len(rng["rng"]))], counters,
                      [rng["cuda_rng"][r] for r in range(len(rng["cuda_rng"]))], model_name, settings)


MAX_CHECKPOINT_BYTES = 2 << 30  # the largest checkpoint read (genlab's largest model's is tens of MB)


def _open_regular(path: Path):
    """``path`` opened for reading if it is a regular file, else one line. Non-blocking: a FIFO put in a
    checkpoint's place would otherwise wait for a writer for ever."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise GenlabError(f"checkpoint {path} is not a regular file (a folder, a FIFO, a device?); retrain, "
                          "or restore the file")
    return open(fd, "rb")


def _unreadable(path: Path, e: PermissionError) -> str:
    """The line for a checkpoint this user may not read: the file is likely sound (not "damaged")."""
    return f"cannot read checkpoint {path} ({e.strerror}); check its permissions (the file itself may be sound)"


def read_counters(path: Path) -> dict:
    """A checkpoint's counters (epoch, step, ...) from its header alone, no tensor read: for a caller that
    only asks where a run stands (genlab report)."""
    path = Path(path)
    counters = _from_header(path, lambda meta: json.loads(meta["counters"]))
    if not isinstance(counters, dict):
        raise GenlabError(f"checkpoint {path}: its counters must be a JSON object; the file is damaged")
    return counters


def _from_header(path: Path, read):
    """``read`` of a checkpoint's metadata, from its header alone (a file cut short holds its header whole);
    a file that is no genlab checkpoint, or whose metadata ``read`` cannot take, is one line."""
    try:
        with _open_regular(path) as f:
            return read(_meta_of(_check_extent(f, path)))
    except PermissionError as e:
        raise GenlabError(_unreadable(path, e)) from None
    except (OSError, KeyError, ValueError, TypeError, RecursionError) as e:
        raise GenlabError(f"checkpoint {path} is damaged or not a genlab checkpoint ({e}); retrain, or restore "
                          "the file") from None


MAX_JSON_HEADER = 100 << 20  # safetensors' own limit on a header


def _read_header(f) -> tuple[dict, int]:
    """The JSON header of the safetensors file open at ``f`` (at its start), and its length in bytes: 8 bytes
    of length, then the JSON. A ValueError where there is none."""
    head = f.read(8)
    length = int.from_bytes(head, "little")
    if len(head) < 8 or length > MAX_JSON_HEADER:
        raise ValueError("the header is cut short" if len(head) < 8 else f"a header of {length} bytes")
    raw = f.read(length)
    if len(raw) < length:
        raise ValueError("the header is cut short")
    header = json.loads(raw)
    if not isinstance(header, dict):
        raise ValueError("the header is no JSON object")
    return header, length


def _check_extent(f, path: Path) -> dict:
    """Read the header of the safetensors file open at ``f`` (then back to its start), check that its
    tensors end where the file does (a ValueError where they do not) and return the header."""
    header, length = _read_header(f)
    ends = [entry.get("data_offsets") if isinstance(entry, dict) else None
            for key, entry in header.items() if key != "__metadata__"]
    ends = [pair[1] if isinstance(pair, list) and len(pair) == 2 else None for pair in ends]
    size = os.fstat(f.fileno()).st_size
    if not all(isinstance(end, int) for end in ends) or 8 + length + max(ends, default=0) != size:
        raise ValueError(f"its tensors do not end where the file does ({size} bytes)")
    f.seek(0)
    return header


def _metadata(data: bytes) -> dict:
    """The ``__metadata__`` of a safetensors file's bytes: its header is 8 bytes of length, then JSON."""
    length = int.from_bytes(data[:8], "little")
    if len(data) < 8 or length > len(data) - 8:
        raise ValueError("the header is cut short")
    return _meta_of(json.loads(data[8:8 + length]))


def _meta_of(header) -> dict:
    """A safetensors header's ``__metadata__``, checked against its checksum where it has one (checkpoints of
    an older genlab have none); a ValueError where it has no metadata, an entry genlab never writes (a flipped
    bit in an entry's name), or entries that do not match their checksum."""
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict):
        raise ValueError("no metadata")
    unknown = sorted(set(meta) - METADATA_KEYS)
    if unknown:
        raise ValueError(f"an entry {unknown[0][:40]!r} in its metadata, which genlab never writes")
    if "crc32_meta" in meta and meta["crc32_meta"] != metadata_checksum(meta):
        raise ValueError("its counters and optimiser settings do not match the checksum written with them")
    return meta


METADATA_KEYS = {"counters", "optimizers", "format", "model", "settings", "crc32", "crc32_meta"}

# What a resumed run (``train(resume=...)``) may do differently: its length, where it runs, and how (neither
# changes what it computes beyond rounding); out: the run is where resume points.
RESUME_MAY_CHANGE = ("epochs", "device", "out", "cuda_graphs", "progress")
# Settings a run may change, or that change none of its numbers (where the data is, what else is written): left
# out of ``settings_of``.
FREE_SETTINGS = RESUME_MAY_CHANGE + ("data_dir", "figures", "tensorboard")
SETTINGS_PARTS = ("model_config", "train_config")  # what ``settings_of`` holds, as config.json names them


def settings_of(model_cfg, train_cfg) -> str:
    """The settings a run's numbers follow, as JSON: written into each checkpoint, so a config.json edited by
    hand (another data set, batch size, limit or classes) is refused rather than resumed or scored under. It
    went on in silence: --resume trained the next epoch on full MNIST, evaluate scored a mnist-5k run there.
    A folder or npz data set is kept by its kind alone: its files may move, and config.json say where."""
    train = {k: v for k, v in cfgmod.to_dict(train_cfg).items() if k not in FREE_SETTINGS}
    if is_file_dataset(train["dataset"]):
        train["dataset"] = train["dataset"].partition(":")[0] + ":"
    return json.dumps(dict(zip(SETTINGS_PARTS, (cfgmod.to_dict(model_cfg), train))), sort_keys=True)


def _settings_in(meta: dict) -> str | None:
    """A checkpoint's record of its settings, checked to be what ``settings_of`` writes (a ValueError where it
    is not); None in a checkpoint of an older genlab."""
    settings = meta.get("settings")
    if settings is not None:
        parts = json.loads(settings)
        if not (isinstance(parts, dict) and all(isinstance(parts.get(p), dict) for p in SETTINGS_PARTS)):
            raise ValueError(f"its settings are not {' and '.join(SETTINGS_PARTS)} as JSON objects")
    return settings


def _refuse_changed_settings(where, saved: str | None, now: str | None) -> None:
    changed = _settings_problem(saved, now) if saved and now else None
    if changed:
        raise GenlabError(f"{where} was not trained with the settings of its config.json, which says {changed}; "
                          "the file was edited: put back the run's own config.json (to train with other settings, "
                          "start a new run)")


def check_settings(run_dir: Path) -> None:
    """``check``'s comparison of a run's config.json with the settings its checkpoint was trained with, from the
    checkpoint's header alone: genlab report shows a run's evaluation.json without loading its weights, and
    showed an edited run's numbers under the edited settings."""
    _, model_cfg, train_cfg = read_configs(run_dir)
    path = Path(run_dir) / CHECKPOINT
    _refuse_changed_settings(path, _from_header(path, _settings_in), settings_of(model_cfg, train_cfg))


def _settings_problem(saved: str, now: str) -> str | None:
    """The settings a checkpoint was trained with that its config.json now gives otherwise, said as "KEY NOW
    (trained with THEN)" in JSON; or None. Settings genlab has gained since the checkpoint was written, or
    lost, are not compared."""
    saved, now = json.loads(saved), json.loads(now)  # both with SETTINGS_PARTS as objects (``load`` checks)
    changed = [f"{key} {json.dumps(now[part][key])[:40]} (trained with {json.dumps(value)[:40]})"
               for part in SETTINGS_PARTS for key, value in sorted(saved[part].items())
               if key in now[part] and now[part][key] != value]
    return ", ".join(changed) or None


def metadata_checksum(meta: dict) -> str:
    """CRC-32 of a checkpoint's metadata but its checksums, in name order: a flipped bit in the counters or an
    optimiser's settings is JSON that still parses (an epoch 1 read as 3, a learning rate 0.001 as 0.003),
    which only this notices."""
    body = json.dumps({k: v for k, v in meta.items() if k not in ("crc32", "crc32_meta")}, sort_keys=True)
    return f"{zlib.crc32(body.encode()):08x}"


def checksum(tensors: dict[str, torch.Tensor]) -> str:
    """CRC-32 of every tensor's bytes, in name order: a flipped bit in the data is noticed on loading (the
    metadata has its own, ``metadata_checksum``)."""
    crc = 0
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous().reshape(-1)
        crc = zlib.crc32(name.encode(), crc)
        crc = zlib.crc32(t.view(torch.uint8).numpy() if t.numel() else b"", crc)
    return f"{crc:08x}"


def _model_name(model: torch.nn.Module) -> str:
    """The registry name of ``model``'s class ("" for a class outside the registry)."""
    from genlab.models import MODELS

    return next((name for name, cls in MODELS.items() if type(model) is cls), "")


def _describe(t: torch.Tensor) -> str:
    return f"shape {list(t.shape)} {str(t.dtype).replace('torch.', '')}"


# The per-parameter state each optimiser keeps, all of it or none (a parameter not stepped yet); "step" is a
# count, every other entry has the parameter's shape and dtype. Adam adds max_exp_avg_sq with amsgrad.
OPTIMIZER_STATE = {"Adam": {"step", "exp_avg", "exp_avg_sq"}, "SGD": {"momentum_buffer"}}
COUNTERS = ("epoch", "batch", "step", "count")


def check(ckpt: Checkpoint, model: torch.nn.Module, optimizers: dict[str, torch.optim.Optimizer] | None = None,
          world: int | None = None, where: Path | str = "checkpoint", settings: str | None = None,
          epochs: int | None = None) -> None:
    """Check every tensor of ``ckpt`` (name, shape, dtype) against ``model`` and ``optimizers`` as built from the
    run's config, and its counters and random states, before anything is loaded; a mismatch is one line
    naming the tensor. (Loading unchecked optimiser state can crash a fused kernel outright.) Weights an older
    genlab named differently are renamed first (``upgrade_state``), so its runs still load. ``epochs``: the
    resume's --epochs, for the command a wrong number of processes is told to run."""
    if ckpt.model_name is not None and ckpt.model_name != _model_name(model):
        raise GenlabError(f"{where} holds model {ckpt.model_name or '(none)'!r}, but its config.json "
                          f"names {_model_name(model) or type(model).__name__!r}; restore config.json")
    _refuse_changed_settings(where, ckpt.settings, settings)
    if hasattr(model, "upgrade_state"):
        ckpt.model_state = model.upgrade_state(ckpt.model_state)
    _check_tensors(model.state_dict(), ckpt.model_state, "model/", where)
    bad = first_not_finite(ckpt.model_state)
    if bad is not None:
        raise GenlabError(f"{where}: tensor model/{bad} holds NaN or infinite values, so every number the model "
                          "gives would be too; the run diverged or the file is damaged: retrain it")
    if optimizers is not None:
        if set(optimizers) != set(ckpt.optimizer_states):
            raise GenlabError(f"{where}: optimisers {sorted(ckpt.optimizer_states)} do not match the model's "
                              f"players {sorted(optimizers)}; the checkpoint does not fit its config.json")
        for name, opt in optimizers.items():
            _check_optimizer(name, opt, ckpt.optimizer_states[name], where)
    _check_counters(ckpt.counters, where)  # evaluate and report show the epoch: a NaN there was shown too
    if world is not None:
        if not ckpt.rng_states:
            raise GenlabError(f"{where}: random state rng/0 is missing; the file is damaged")
        if len(ckpt.rng_states) != world:
            trained = len(ckpt.rng_states)
            command = (f"torchrun --nproc-per-node {trained} -m genlab.cli" if trained > 1 else "genlab")
            further = "" if epochs is None else f" --epochs {epochs}"
            raise GenlabError(f"{where} was trained on {trained} process(es); resume it with the same number (got "
                              f"{world}): {command} train --resume {Path(where).parent}{further}")
        size = torch.get_rng_state().numel()
        for rank, state in enumerate(ckpt.rng_states):
            if state.numel() != size:
                raise GenlabError(f"{where}: random state rng/{rank} has {state.numel()} bytes, expected {size}; "
                                  "the file is damaged")
            try:  # bytes of the right length may still be no generator's state ("Invalid mt19937 state")
                torch.Generator().set_state(state)
            except (RuntimeError, TypeError):
                raise GenlabError(f"{where}: random state rng/{rank} is not a valid generator state; the file is "
                                  "damaged: restore it or retrain") from None
        for rank, state in enumerate(ckpt.cuda_rng_states):
            # A CUDA generator's state is its seed and its offset into the stream, 8 bytes each; PyTorch refuses an
            # offset that is not a multiple of 4. Checked here, where a CPU can: only a GPU resume would set it.
            offset = int.from_bytes(state[8:].numpy().tobytes(), "little", signed=True) if state.numel() == 16 else -1
            if offset < 0 or offset % 4:
                raise GenlabError(f"{where}: random state cuda_rng/{rank} is not a valid CUDA generator state; the "
                                  "file is damaged: restore it or retrain")


def first_not_finite(state: dict[str, torch.Tensor]) -> str | None:
    """The name of the first floating-point tensor of ``state`` holding a NaN or an infinity, or None (one
    read of the device for all of them)."""
    floats = [(name, t) for name, t in state.items() if torch.is_tensor(t) and t.is_floating_point() and t.numel()]
    if not floats or bool(torch.stack([torch.isfinite(t).all() for _, t in floats]).all()):
        return None
    return next(name for name, t in floats if not torch.isfinite(t).all())


def _check_tensors(expected: dict[str, torch.Tensor], found: dict, prefix: str, where) -> None:
    for name in sorted(set(expected) | set(found)):
        if name not in found:
            raise GenlabError(f"{where}: tensor {prefix}{name} is missing; the checkpoint does not fit its config.json")
        if name not in expected:
            raise GenlabError(f"{where}: unexpected tensor {prefix}{name}; the checkpoint does not fit its config.json")
        want, got = expected[name], found[name]
        if not torch.is_tensor(got) or got.shape != want.shape or got.dtype != want.dtype:
            shown = _describe(got) if torch.is_tensor(got) else repr(got)
            raise GenlabError(f"{where}: tensor {prefix}{name} has {shown}, expected {_describe(want)}; "
                              "the checkpoint does not fit its config.json")


def _check_optimizer(name: str, opt: torch.optim.Optimizer, saved: dict, where) -> None:
    fresh = opt.state_dict()["param_groups"]
    groups = saved["param_groups"]
    if len(groups) != len(fresh):
        raise GenlabError(f"{where}: optimiser {name} has {len(groups)} parameter group(s), expected {len(fresh)}")
    for i, (got, want) in enumerate(zip(groups, fresh)):
        if not isinstance(got, dict) or set(got) != set(want):
            raise GenlabError(f"{where}: optimiser {name} group {i} has settings "
                              f"{sorted(got) if isinstance(got, dict) else got!r}, expected {sorted(want)}")
        for key, value in want.items():
            if (value is None or isinstance(value, bool)) and got[key] is not value:
                # amsgrad, fused, ... decide which state the step reads: they must be this config's own
                raise GenlabError(f"{where}: optimiser {name} group {i} setting {key} is {got[key]!r}, "
                                  f"expected {value!r}; the checkpoint does not fit its config.json")
            if not _same_kind(got[key], value) or (key == "params" and list(got[key]) != list(value)):
                raise GenlabError(f"{where}: optimiser {name} group {i} setting {key} is {got[key]!r}, "
                                  f"expected a value like {value!r}")
            fits = SETTING_RANGES.get(key)
            if fits is not None and not all(map(fits, got[key] if isinstance(got[key], (list, tuple)) else [got[key]])):
                # A negative learning rate trained uphill, exit 0.
                raise GenlabError(f"{where}: optimiser {name} group {i} setting {key} is {got[key]!r}, which no "
                                  "genlab run sets; the file is damaged: restore it or retrain")
    params = [(p, group) for group in opt.param_groups for p in group["params"]]
    for pid, entries in saved["state"].items():
        if pid >= len(params):
            raise GenlabError(f"{where}: optimiser {name} holds state for parameter {pid}, but it has only "
                              f"{len(params)} parameters")
        param, group = params[pid]
        required = OPTIMIZER_STATE.get(type(opt).__name__)
        if required is not None:
            required = required | ({"max_exp_avg_sq"} if group.get("amsgrad") else set())
            if set(entries) != required:
                odd = sorted(set(entries) ^ required)
                raise GenlabError(f"{where}: optimiser state optim/{name}/{pid}/{odd[0]} is "
                                  f"{'unexpected' if odd[0] in entries else 'missing'}; the checkpoint is damaged")
        for key, value in entries.items():
            label = f"optim/{name}/{pid}/{key}"
            if key == "step":
                ok = torch.is_tensor(value) and value.dim() == 0 and value.dtype == torch.float32 and \
                    bool(torch.isfinite(value)) and float(value) >= 0
                if not ok:
                    raise GenlabError(f"{where}: optimiser state {label} must be a non-negative step count, "
                                      f"found {_describe(value) if torch.is_tensor(value) else repr(value)}")
            elif not torch.is_tensor(value) or value.shape != param.shape or value.dtype != param.dtype:
                shown = _describe(value) if torch.is_tensor(value) else repr(value)
                raise GenlabError(f"{where}: tensor {label} has {shown}, expected {_describe(param)} like its "
                                  "parameter; the checkpoint does not fit its config.json")
    # The state itself: finite, and Adam's averages of squared gradients not negative (their square roots
    # divide the step). genlab never saves a diverged step, so anything else is a damaged file.
    state = {f"optim/{name}/{pid}/{key}": value for pid, entries in saved["state"].items()
             for key, value in entries.items() if key != "step"}
    bad = first_not_finite(state) or next((label for label, value in state.items() if label.endswith("exp_avg_sq")
                                           and value.numel() and float(value.min()) < 0), None)
    if bad is not None:
        raise GenlabError(f"{where}: optimiser state {bad} holds values no training step leaves (NaN, infinite or a "
                          "negative mean square); the file is damaged: restore it or retrain")


# The optimiser settings a run can hold; a betas pair is tested entry by entry.
SETTING_RANGES = {
    "lr": lambda x: 0 <= x <= 10, "eps": lambda x: 0 < x < 1, "betas": lambda x: 0 <= x < 1,
    "momentum": lambda x: 0 <= x < 1, "weight_decay": lambda x: 0 <= x < 1, "dampening": lambda x: 0 <= x <= 1,
}


def _same_kind(got: Any, want: Any) -> bool:
    """Whether a saved optimiser setting can stand in for the fresh one (JSON turns tuples into lists)."""
    if want is None or isinstance(want, bool):
        return got is None or isinstance(got, bool)
    if isinstance(want, (int, float)):
        return isinstance(got, (int, float)) and not isinstance(got, bool) and abs(got) < 1e300  # not inf, not NaN
    if isinstance(want, (list, tuple)):
        return isinstance(got, (list, tuple)) and len(got) == len(want) and all(map(_same_kind, got, want))
    return type(got) is type(want)


def _check_counters(counters: dict, where) -> None:
    for key in COUNTERS:
        value = counters.get(key)
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
            raise GenlabError(f"{where}: counter {key} must be a non-negative whole number, found {value!r}")
    if counters["epoch"] > cfgmod.TrainConfig.__dataclass_fields__["epochs"].metadata["max"]:
        raise GenlabError(f"{where} says it trained {counters['epoch']} epochs, more than any run can; the file is "
                          "damaged: restore it or retrain")
    seconds = counters.get("seconds")
    if not (isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and 0 <= seconds < math.inf):
        raise GenlabError(f"{where}: counter seconds must be a non-negative number, found {seconds!r}")
    sums = counters.get("sums")
    if not (isinstance(sums, dict) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                           and math.isfinite(v) for v in sums.values())):
        # A NaN here was logged as the epoch's train loss: no step that ends finite sums to one.
        raise GenlabError(f"{where}: counter sums must map loss terms to finite numbers, found {str(sums)[:80]}")
    checks = counters.get("checks", {})
    if not (isinstance(checks, dict) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                             for v in checks.values())):
        raise GenlabError(f"{where}: counter checks must map divergence checks to step counts, found {checks!r}")
    if "record" in counters and not isinstance(counters["record"], dict):
        raise GenlabError(f"{where}: counter record must be a JSON object, found {counters['record']!r}")


@dataclass
class Run:
    """A trained run: its directory, configs and model (weights loaded, in eval mode)."""
    dir: Path
    model_name: str
    model: Any
    model_cfg: Any
    train_cfg: Any
    counters: dict

    def dataset(self, split: str = "test", download: bool = True):
        """``split`` of the data set the run was trained on, with its options (data directory, image size, grey),
        checked to still have the model's image shape (``genlab.data.run_dataset``)."""
        from genlab.data import run_dataset

        return run_dataset(self.train_cfg, split, download=download, shape=self.model_cfg.shape)


def find_runs(paths, say=None) -> list[Path]:
    """Run directories named by ``paths``: each a run (it holds config.json) or a folder of runs (as
    ``genlab reproduce`` writes: one sub-folder per model). ``say``: where a note of a folder of runs' other
    sub-folders goes (a folder of runs one level further down is not searched)."""
    runs = []
    for raw in paths:
        if not str(raw).strip():
            raise GenlabError("a run directory given is empty (''); name the folder genlab train wrote")
        p = Path(raw)
        if os.path.lexists(p / CONFIG):  # not a regular file (a FIFO): a damaged run, which reading it will say
            runs.append(p)
        elif p.is_dir():
            inner = _runs_in(p)
            if not inner:
                raise GenlabError(f"{p} is neither a run directory (no {CONFIG}) nor a folder of runs; "
                                  "pass what genlab train or genlab reproduce wrote")
            runs.extend(inner)
            others = [] if say is None else sorted(d.name for d in p.iterdir() if d.is_dir() and d not in inner
                                                   and not d.name.startswith(".") and d.name != "figures")
            if others:
                said = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
                say(f"note: in {p}, {said} {'is' if len(others) == 1 else 'are'} not a run and left out (a folder "
                    "of runs inside it is named on its own)")
        elif p.exists():
            raise GenlabError(f"{p} is a file, not a run directory; pass the folder genlab train wrote")
        else:
            raise GenlabError(f"run directory {p} does not exist")
    seen: set[Path] = set()
    for run in runs:  # the same run twice (by another spelling, a link): loaded twice for nothing
        if run.resolve() in seen:
            raise GenlabError(f"the run {run.resolve()} is named twice; name each run once")
        seen.add(run.resolve())
    return runs


def _runs_in(folder: Path) -> list[Path]:
    """The run directories in ``folder`` (as ``genlab reproduce`` writes them: one sub-folder per model)."""
    return sorted(d for d in folder.iterdir() if d.is_dir() and os.path.lexists(d / CONFIG))


def trained_labels(run: Run) -> list[int]:
    """The class labels a run learned: those of ``--classes``, else its data set's (a folder of three classes:
    0 to 2), else the ten digits. A conditional model has ten class slots whatever it learned."""
    chosen = run.train_cfg.class_list()
    if chosen:
        return chosen
    try:
        names = cfgmod.read_json(Path(run.dir) / CONFIG).get("classes")
    except GenlabError:
        names = None
    return list(range(len(names))) if isinstance(names, list) and 0 < len(names) <= 10 else list(range(10))


def labels_said(labels: list[int]) -> str:
    """``labels`` in a few words: "0 to 9", "3", "0, 2 and 5"."""
    if len(labels) > 2 and labels == list(range(labels[0], labels[-1] + 1)):
        return f"{labels[0]} to {labels[-1]}"
    return " and ".join(filter(None, [", ".join(map(str, labels[:-1])), str(labels[-1])]))


# The training settings every genlab has written into config.json: one missing says the file was edited (a
# missing data set became "auto", and a run of mnist-5k was scored on full MNIST). Settings added since may be
# absent, in runs of an older genlab, and take their defaults.
ALWAYS_WRITTEN = ("dataset", "epochs", "batch_size", "lr", "optimizer", "seed", "limit", "eval_limit")


def read_configs(run_dir: Path):
    """(model name, model config, train config) from ``run_dir/config.json``."""
    from genlab.models import MODELS

    run_dir = Path(run_dir)
    if run_dir.is_file():  # --resume runs/ae/config.json: "runs/ae/config.json/config.json not found"
        raise GenlabError(f"{run_dir} is a file; name the run directory that holds it ({run_dir.parent})")
    path = run_dir / CONFIG
    if not path.exists() and run_dir.is_dir():
        runs = [str(d) for d in _runs_in(run_dir)]
        if runs:  # a folder of runs, as reproduce writes
            raise GenlabError(f"{run_dir} is not a run directory but holds runs: {', '.join(runs[:5])}"
                              f"{', ...' if len(runs) > 5 else ''}; name one of them")
    data = cfgmod.read_json(path)
    name = data.get("model")
    if not isinstance(name, str) or name not in MODELS:
        raise GenlabError(f"{path} names model {name!r}, which this genlab does not know "
                          f"(known: {', '.join(MODELS)})")
    for key in ("model_config", "train_config"):
        if key not in data:
            raise GenlabError(f"{path} lacks {key!r}; the run directory is damaged")
    try:
        model_cfg = cfgmod.from_dict(MODELS[name].Config, data["model_config"])
        train_cfg = cfgmod.from_dict(cfgmod.TrainConfig, data["train_config"])
    except GenlabError as e:
        raise GenlabError(f"{path}: {e}") from None
    missing = [key for key in ALWAYS_WRITTEN if key not in data["train_config"]]
    wrong = (f"'train_config' lacks {', '.join(map(repr, missing))}" if missing
             else _recorded_facts_problem(data, model_cfg))
    if wrong:
        raise GenlabError(f"{path}: {wrong}, which is not what genlab train wrote; the run directory is damaged "
                          "(train the run again, or put back its own config.json)")
    return name, model_cfg, train_cfg


def _recorded_facts_problem(data: dict, model_cfg) -> str | None:
    """What is wrong with the facts beside the configs that genlab train records in config.json (the image
    shape, the data set's class names, the number of processes), or None. Each is optional (runs of older
    genlab lack them), but one that is there must agree with the model's config and be of its kind: a copy
    that disagrees says the file was edited or mixed with another run's."""
    shape = data.get("image_shape")
    if shape is not None:
        wanted = {"channels": model_cfg.channels, "height": model_cfg.height, "width": model_cfg.width}
        if shape != wanted:
            said = ", ".join(f"{k} {v}" for k, v in wanted.items())
            return f"'image_shape' is {shape!r} while the model's config says {said}"
    classes = data.get("classes")
    if classes is not None and not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        return f"'classes' is {str(classes)[:80]!r}, not a list of class names"
    dataset = data["train_config"].get("dataset")  # a dict: read_configs has built the config from it
    if classes and isinstance(dataset, str) and not is_file_dataset(dataset):  # what a conditional run samples
        return f"'classes' is {str(classes)[:80]!r} while {dataset[:40]} names no classes (its labels are digits)"
    world = data.get("world_size")
    if world is not None and not (type(world) is int and 1 <= world <= 1 << 20):
        return f"'world_size' is {str(world)[:40]!r}, not a number of processes"
    return None


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> Run:
    """Rebuild the model of a run directory from its config and load its last checkpoint onto ``device``
    ("auto": CUDA when present). Checkpoints hold CPU tensors, so a run trained on a GPU loads anywhere."""
    from genlab.distributed import resolve_device
    from genlab.models import build

    device = resolve_device("cpu" if device is None else str(device))  # a torch.device too
    if not isinstance(run_dir, (str, os.PathLike)) or not str(run_dir):
        raise GenlabError(f"a run directory is a path to the folder genlab train wrote, got {run_dir!r}")
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise GenlabError(f"run directory {run_dir} " + (
            "is a file, not a directory" if run_dir.exists() else
            "is a symbolic link that leads nowhere (or round in a loop)" if run_dir.is_symlink() else "does not exist"))
    name, model_cfg, train_cfg = read_configs(run_dir)
    ckpt = load(run_dir / CHECKPOINT)
    with torch.random.fork_rng(devices=[]):  # the initial weights, replaced below, draw from the caller's stream
        model = build(name, model_cfg)
    check(ckpt, model, where=run_dir / CHECKPOINT, settings=settings_of(model_cfg, train_cfg))
    model.load_state_dict(ckpt.model_state)
    run = Run(run_dir, name, model.to(device).eval(), model_cfg, train_cfg, ckpt.counters)
    if model.conditional:  # a run of three classes has ten class slots, seven of them never trained
        model.learned_classes = trained_labels(run)
    return run
