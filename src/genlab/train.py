"""The one training loop, for every model: one optimiser per player, a checkpoint every epoch, exact resume.

A run directory holds ``config.json`` (enough to rebuild the model), ``metrics.jsonl`` (one line per epoch),
``checkpoint.safetensors`` (weights, optimiser and random state, counters) and ``figures/``.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import torch
from tqdm import tqdm

from genlab import __version__, checkpoint, config as cfgmod, distributed
from genlab.config import TrainConfig
from genlab.data import load_dataset, resolve_dataset_name
from genlab.data.batching import Batches, to_pixels
from genlab.errors import GenlabError
from genlab.models import MODELS, build


class TrainingDiverged(GenlabError):
    """Training produced a non-finite loss or the model reported a failure; the last good checkpoint is kept."""


class Interrupted(Exception):
    """Ctrl-C or SIGTERM: the run was checkpointed where it stopped and can be resumed."""

    def __init__(self, run_dir: Path, signum: int):
        super().__init__(f"interrupted by {signal.Signals(signum).name}: checkpoint saved; "
                         f"continue with: genlab train --resume {run_dir}")
        self.signum = signum


def make_optimizer(cfg: TrainConfig, params: list, extra: dict) -> torch.optim.Optimizer:
    """Adam (or SGD with momentum 0.9) over ``params``, fused into one kernel where this PyTorch has one for
    the device: on a CPU that makes a small model's whole step about 1.7x faster than the per-tensor loop."""
    cls, options = (torch.optim.Adam, {}) if cfg.optimizer == "adam" else (torch.optim.SGD, {"momentum": 0.9})
    try:
        return cls(params, lr=cfg.lr, fused=True, **options, **extra)
    except (RuntimeError, TypeError, ValueError):  # no fused kernel for this device or PyTorch version
        return cls(params, lr=cfg.lr, foreach=True, **options, **extra)


def default_run_dir(model_name: str) -> Path:
    return Path("runs") / f"{model_name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


@torch.no_grad()
def evaluate_terms(model, images_u8: torch.Tensor, batch_size: int = 1000, seed: int = 1234,
                   labels: torch.Tensor | None = None) -> dict[str, float]:
    """Mean of each of ``model.eval_terms`` over ``images_u8``, with fixed noise so the numbers are repeatable.
    A conditional model also gets the ``labels`` (int64 [N]) of the images.

    Runs under a forked random state: evaluation neither depends on nor disturbs the training's random stream.
    """
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for i in range(0, len(images_u8), batch_size):
            x = to_pixels(images_u8[i:i + batch_size], model.pixel_range).to(model.device)
            cond = (labels[i:i + batch_size].to(model.device),) if model.conditional else ()
            for key, value in model.eval_terms(x, *cond).items():
                sums[key] = sums.get(key, 0.0) + value.double().sum().item()
    model.train(was_training)
    return {key: value / len(images_u8) for key, value in sums.items()}


class _SignalFlag:
    """Turns SIGINT/SIGTERM into a flag the loop checks after each step, so it stops at a clean point."""

    def __init__(self):
        self.signum = 0

    def __call__(self, signum, frame):
        self.signum = signum

    @contextmanager
    def installed(self):
        old = {s: signal.signal(s, self) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)


def train(model_name: str, model_cfg=None, train_cfg: TrainConfig | None = None,
          resume: str | Path | None = None) -> Path:
    """Train ``model_name`` (or continue the run in ``resume``) and return the run directory."""
    if resume is not None:
        run_dir = Path(resume)
        model_name, saved_model_cfg, saved_train_cfg = checkpoint.read_configs(run_dir)
        model_cfg = saved_model_cfg
        # Only the schedule length may change on resume; everything else must match the original run.
        train_cfg = saved_train_cfg if train_cfg is None else \
            cfgmod.from_dict(TrainConfig, {**cfgmod.to_dict(saved_train_cfg), "epochs": train_cfg.epochs})
    else:
        if model_name not in MODELS:
            raise GenlabError(f"unknown model {model_name!r}; choose one of: {', '.join(MODELS)}")
        model_cfg = model_cfg if model_cfg is not None else MODELS[model_name].Config()
        train_cfg = train_cfg if train_cfg is not None else default_train_config(model_name)
        run_dir = Path(train_cfg.out) if train_cfg.out else default_run_dir(model_name)

    ctx = distributed.setup(train_cfg.device)
    try:
        return _train(model_name, model_cfg, train_cfg, run_dir, resume is not None, ctx)
    finally:
        distributed.teardown(ctx)


def default_train_config(model_name: str) -> TrainConfig:
    """TrainConfig's defaults with the model's own (``train_defaults``) on top."""
    return cfgmod.from_dict(TrainConfig, {**cfgmod.to_dict(TrainConfig()), **MODELS[model_name].train_defaults})


def _train(model_name, model_cfg, cfg: TrainConfig, run_dir: Path, resuming: bool, ctx) -> Path:
    say = (lambda msg: tqdm.write(msg, file=sys.stderr)) if ctx.is_main else (lambda msg: None)
    dataset = resolve_dataset_name(cfg.dataset, cfg.data_dir or None)
    train_set = load_dataset(dataset, "train", cfg.data_dir or None)
    test_set = load_dataset(dataset, "test", cfg.data_dir or None)
    train_images = train_set.images[:cfg.limit] if cfg.limit else train_set.images
    test_images = test_set.images[:cfg.eval_limit] if cfg.eval_limit else test_set.images
    test_labels = test_set.labels[:len(test_images)]

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    model = build(model_name, model_cfg).to(ctx.device)
    distributed.broadcast_parameters(model, ctx)
    optimizers = {p: make_optimizer(cfg, model.player_parameters(p), model.optimizer_options(p))
                  for p in model.players}
    torch.manual_seed(cfg.seed * 1000 + 1 + ctx.rank)  # per-rank noise (corruption, sampling)

    counters = {"epoch": 0, "batch": 0, "step": 0, "sums": {}, "count": 0, "seconds": 0.0}
    if resuming:
        ckpt = checkpoint.load(run_dir / checkpoint.CHECKPOINT)
        model.load_state_dict(ckpt.model_state)
        for name, opt in optimizers.items():
            opt.load_state_dict(ckpt.optimizer_states[name])
        if len(ckpt.rng_states) != ctx.world:
            raise GenlabError(f"{run_dir} was trained on {len(ckpt.rng_states)} process(es); "
                              f"resume it with the same number (got {ctx.world})")
        torch.set_rng_state(ckpt.rng_states[ctx.rank])
        counters = ckpt.counters
        say(f"resuming {run_dir} at epoch {counters['epoch'] + 1}, batch {counters['batch']}")
    elif ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if (run_dir / checkpoint.CHECKPOINT).exists():
            raise GenlabError(f"{run_dir} already holds a run; choose another --out or continue it with --resume")
        cfgmod.write_json(run_dir / checkpoint.CONFIG, {
            "model": model_name, "model_config": cfgmod.to_dict(model_cfg),
            "train_config": {**cfgmod.to_dict(cfg), "dataset": dataset}, "genlab_version": __version__,
            "world_size": ctx.world})
        (run_dir / "metrics.jsonl").touch()
        say(f"training {model_name} on {dataset} ({len(train_images)} images) -> {run_dir}")
        from genlab.viz.figures import epoch_figures
        epoch_figures(model_name, model, 0, test_set, run_dir / "figures")  # the untrained model, "epoch 0"
    model.end_of_epoch(counters["epoch"] - 1)  # schedules are functions of the epoch: set them for this one

    batches = Batches(train_images, cfg.batch_size, seed=cfg.seed, rank=ctx.rank, world=ctx.world,
                      device=ctx.device, labels=train_set.labels[:len(train_images)] if model.conditional else None)
    params = {p: model.player_parameters(p) for p in model.players}

    def save_checkpoint():
        rng = distributed.gather_rng(ctx)
        if ctx.is_main:
            checkpoint.save(run_dir / checkpoint.CHECKPOINT, model, optimizers, rng, counters)

    tensorboard = None
    if cfg.tensorboard and ctx.is_main:
        from genlab.viz.tensorboard import TensorBoardLog
        tensorboard = TensorBoardLog(run_dir)

    flag = _SignalFlag()
    model.train()
    with flag.installed():
        for epoch in range(counters["epoch"], cfg.epochs):
            started = time.perf_counter()
            images_seen = 0
            bar = tqdm(total=len(batches), initial=counters["batch"], desc=f"epoch {epoch + 1}/{cfg.epochs}",
                       unit="batch", leave=False, disable=not (ctx.is_main and cfg.progress) or None,
                       file=sys.stderr)
            for shard, global_n, *labels in batches.epoch(epoch, counters["batch"]):
                x = to_pixels(shard, model.pixel_range)
                logs = _step(model, (x, *labels), global_n, optimizers, params, ctx, flag)
                stop = logs.pop("_stop", 0.0) > 0
                counters["step"] += 1
                counters["batch"] += 1
                counters["count"] += 1
                for key, value in logs.items():
                    counters["sums"][key] = counters["sums"].get(key, 0.0) + value
                images_seen += global_n
                bar.update(1)
                if counters["step"] % 10 == 0:
                    rate = images_seen / max(time.perf_counter() - started, 1e-9)
                    bar.set_postfix(loss=f"{logs.get('loss', next(iter(logs.values()))):.4f}", img_s=f"{rate:.0f}")
                problem = model.diverged(logs)
                if problem:
                    raise TrainingDiverged(f"training stopped at epoch {epoch + 1}, step {counters['step']}: "
                                           f"{problem}; the last good checkpoint in {run_dir} is kept")
                if stop:
                    counters["seconds"] += time.perf_counter() - started
                    save_checkpoint()
                    bar.close()
                    raise Interrupted(run_dir, flag.signum or signal.SIGTERM)
            bar.close()
            seconds = time.perf_counter() - started
            counters["seconds"] += seconds
            record = {"epoch": epoch + 1, "step": counters["step"],
                      **{f"train/{k}": v / max(counters["count"], 1) for k, v in counters["sums"].items()}}
            if ctx.is_main:
                test_terms = evaluate_terms(model, test_images, labels=test_labels)
                record.update({f"test/{k}": v for k, v in test_terms.items()})
                record.update({"seconds": counters["seconds"], "images_per_s": images_seen / max(seconds, 1e-9)})
                with open(run_dir / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(record) + "\n")
                say("  ".join(f"{k} {v:.5g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()))
                if tensorboard:
                    tensorboard.epoch(model, epoch + 1, record, test_images)
            model.end_of_epoch(epoch)
            counters.update(epoch=epoch + 1, batch=0, sums={}, count=0)
            save_checkpoint()
            if ctx.is_main:
                from genlab.viz.figures import epoch_figures
                epoch_figures(model_name, model, epoch + 1, test_set, run_dir / "figures")

    if tensorboard:
        tensorboard.close()
    if ctx.is_main and cfg.figures:
        from genlab.viz.figures import write_figures
        write_figures(model_name, model, test_set, run_dir)
    return run_dir


def _step(model, inputs, global_n, optimizers, params, ctx, flag) -> dict[str, float]:
    """One batch: each player in turn computes its loss, backpropagates, averages gradients, steps.
    ``inputs``: (images,) or, for a conditional model, (images, labels)."""
    logs: dict[str, float] = {}
    for player, terms in model.steps(*inputs):
        loss = terms["loss"].sum() / global_n  # this shard's share of the global-batch mean
        optimizers[player].zero_grad(set_to_none=True)
        model.zero_grad(set_to_none=True)
        loss.backward()
        # One all-reduce carries the gradients, the loss (to check it on every rank) and the stop flag.
        extra = torch.stack([loss.detach(), torch.tensor(float(flag.signum > 0))]).to(loss.device)
        total_loss, stop = distributed.sum_grads_and(params[player], extra, ctx).tolist()
        if not math.isfinite(total_loss):
            raise TrainingDiverged(f"the {player} loss became {total_loss} (not finite); lower --lr or check "
                                   "the data; the last good checkpoint is kept")
        optimizers[player].step()
        model.after_step(player)
        prefix = "" if player == "model" else f"{player}/"
        for key, value in terms.items():
            logs[prefix + key] = value.detach().float().mean().item()
        if stop > 0:
            logs["_stop"] = 1.0
    return logs
