"""Checkpoints are data, not code: one safetensors file, written atomically, never unpickled.

The file holds the model's tensors (``model/...``), each optimiser's tensors (``optim/<player>/<param>/<key>``)
and the random-number states (``rng/<rank>`` for the CPU, ``cuda_rng/<rank>`` for the GPU of a run trained on
one); everything else (counters, optimiser hyper-parameters, running
sums of the current epoch) is JSON in the file's metadata. ``config.json`` beside it rebuilds the model.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from genlab import config as cfgmod
from genlab.errors import GenlabError

CHECKPOINT = "checkpoint.safetensors"
CONFIG = "config.json"
RNG_PREFIXES = {"cpu": "rng", "cuda": "cuda_rng"}  # generator kind -> tensor name prefix, one tensor per rank


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


def _optimizer_from_flat(name: str, meta: dict, tensors: dict) -> dict:
    state: dict[int, dict] = {}
    prefix = f"optim/{name}/"
    for key, value in tensors.items():
        if key.startswith(prefix):
            pid, field = key[len(prefix):].split("/", 1)
            state.setdefault(int(pid), {})[field] = value
    for key, value in meta["scalars"].items():
        pid, field = key.split("/", 1)
        state.setdefault(int(pid), {})[field] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save(path: Path, model: torch.nn.Module, optimizers: dict[str, torch.optim.Optimizer],
         rng_states: dict[str, list[torch.Tensor]], counters: dict) -> None:
    """Write the checkpoint to a temporary file in the same folder, fsync it, then rename it into place.

    ``rng_states``: {"cpu": [state per rank]} and, for a run on CUDA, "cuda": [state per rank].
    """
    path = Path(path)
    tensors = {f"model/{k}": v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    optim_meta = {name: _optimizer_to_flat(name, opt, tensors) for name, opt in optimizers.items()}
    for kind, prefix in RNG_PREFIXES.items():
        for rank, state in enumerate(rng_states.get(kind, ())):
            tensors[f"{prefix}/{rank}"] = state.cpu().contiguous()
    meta = {"counters": json.dumps(counters), "optimizers": json.dumps(optim_meta), "format": "genlab-1"}
    fd, tmp = tempfile.mkstemp(prefix=".checkpoint-", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@dataclass
class Checkpoint:
    model_state: dict[str, torch.Tensor]
    optimizer_states: dict[str, dict]
    rng_states: list[torch.Tensor]  # CPU generator state per rank
    counters: dict
    cuda_rng_states: list[torch.Tensor] = field(default_factory=list)  # per rank, for a run trained on CUDA


def load(path: Path) -> Checkpoint:
    """Read a checkpoint written by ``save``; a missing or damaged file is a GenlabError."""
    path = Path(path)
    if not path.is_file():
        raise GenlabError(f"no checkpoint at {path}; train first, or point at a genlab run directory")
    try:
        tensors = load_file(str(path))
        from safetensors import safe_open
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        counters = json.loads(meta["counters"])
        optim_meta = json.loads(meta["optimizers"])
    except (SafetensorError, OSError, KeyError, ValueError) as e:
        raise GenlabError(f"checkpoint {path} is damaged or not a genlab checkpoint ({e}); "
                          "retrain, or restore the file") from None
    model_state = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    optimizers = {name: _optimizer_from_flat(name, m, tensors) for name, m in optim_meta.items()}
    states = {kind: [tensors[key] for key in sorted((k for k in tensors if k.startswith(prefix + "/")),
                                                      key=lambda k: int(k.split("/")[1]))]
              for kind, prefix in RNG_PREFIXES.items()}
    return Checkpoint(model_state, optimizers, states["cpu"], counters, states["cuda"])


@dataclass
class Run:
    """A trained run: its directory, configs and model (weights loaded, in eval mode)."""
    dir: Path
    model_name: str
    model: Any
    model_cfg: Any
    train_cfg: Any
    counters: dict


def read_configs(run_dir: Path):
    """(model name, model config, train config) from ``run_dir/config.json``."""
    from genlab.models import MODELS
    from genlab.config import TrainConfig

    data = cfgmod.read_json(Path(run_dir) / CONFIG)
    name = data.get("model")
    if name not in MODELS:
        raise GenlabError(f"{run_dir}/{CONFIG} names model {name!r}, which this genlab does not know "
                          f"(known: {', '.join(MODELS)})")
    model_cfg = cfgmod.from_dict(MODELS[name].Config, data["model_config"])
    train_cfg = cfgmod.from_dict(TrainConfig, data["train_config"])
    return name, model_cfg, train_cfg


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> Run:
    """Rebuild the model of a run directory from its config and load its last checkpoint onto ``device``
    ("auto": CUDA when present). Checkpoints hold CPU tensors, so a run trained on a GPU loads anywhere."""
    from genlab.distributed import resolve_device
    from genlab.models import build

    device = resolve_device(device) if isinstance(device, str) else device
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise GenlabError(f"run directory {run_dir} does not exist")
    name, model_cfg, train_cfg = read_configs(run_dir)
    ckpt = load(run_dir / CHECKPOINT)
    model = build(name, model_cfg)
    try:
        model.load_state_dict(ckpt.model_state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise GenlabError(f"checkpoint in {run_dir} does not fit its config.json ({first})") from None
    return Run(run_dir, name, model.to(device).eval(), model_cfg, train_cfg, ckpt.counters)
