"""The one training loop, for every model: one optimiser per player, a checkpoint every epoch, exact resume.

A run directory holds ``config.json`` (enough to rebuild the model), ``metrics.jsonl`` (one line per epoch),
``checkpoint.safetensors`` (weights, optimiser and random state, counters) and ``figures/``.

The loop draws nothing itself: figures and TensorBoard logs are callbacks (``genlab.viz.training_callbacks``),
called on the main process when a run starts, after every epoch and at the end.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm import tqdm

from genlab import __version__, checkpoint, config as cfgmod, distributed, graphs, rundir
from genlab.checkpoint import RESUME_MAY_CHANGE
from genlab.config import TrainConfig
from genlab.data import check_run_shape, image_shape, load_dataset, resolve_dataset_name
from genlab.data.batching import Batches, to_pixels
from genlab.data.files import is_file_dataset
from genlab.errors import GenlabError, Stopped, printable
from genlab.models import MODELS, build, check_config, model_class
from genlab.models.base import per_example


class TrainingDiverged(GenlabError):
    """Training produced a non-finite loss or the model reported a failure; the last good checkpoint is kept."""


def resume_command(run_dir: Path, world: int = 1) -> str:
    """The command that continues ``run_dir``, trained on ``world`` processes (a resume needs as many)."""
    launch = f"torchrun --nproc-per-node {world} -m genlab.cli" if world > 1 else "genlab"
    return f"{launch} train --resume {run_dir}"


class Interrupted(Stopped):
    """Ctrl-C, SIGTERM or SIGHUP: the run was checkpointed where it stopped and can be resumed."""

    def __init__(self, run_dir: Path, signum: int, world: int = 1):
        super().__init__(f"interrupted by {signal.Signals(signum).name}: checkpoint saved; "
                         f"continue with: {resume_command(run_dir, world)}", signum)
        self.run_dir, self.world = run_dir, world

    def __reduce__(self):  # rebuilt from its arguments, so it crosses a process boundary (reproduce's workers)
        return type(self), (self.run_dir, self.signum, self.world)


def make_optimizer(cfg: TrainConfig, params: list, extra: dict) -> torch.optim.Optimizer:
    """Adam (or SGD with momentum 0.9) over ``params``, fused into one kernel where this PyTorch has one for
    the device: on a CPU that makes a small model's whole step about 1.7x faster than the per-tensor loop.
    ``extra``: the model's own Adam settings (``optimizer_options``), which SGD has no use for."""
    cls, options = (torch.optim.Adam, extra) if cfg.optimizer == "adam" else (torch.optim.SGD, {"momentum": 0.9})
    try:
        return cls(params, lr=cfg.lr, fused=True, **options)
    except (RuntimeError, TypeError, ValueError):  # no fused kernel for this device or PyTorch version
        return cls(params, lr=cfg.lr, foreach=True, **options)


def learning_rate(cfg: TrainConfig, step: int, total_steps: int) -> float:
    """The learning rate of step ``step`` (counting from 0) of a run of ``total_steps``: a function of the
    counters alone, so a resumed run sets the same rates as an uninterrupted one."""
    if cfg.lr_schedule == "constant":
        return cfg.lr
    progress = min(step / max(total_steps, 1), 1.0)
    return cfg.lr_final + (cfg.lr - cfg.lr_final) * 0.5 * (1 + math.cos(math.pi * progress))


def default_run_dir(model_name: str) -> Path:
    return Path("runs") / f"{model_name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def evaluate_terms(model, images_u8: torch.Tensor, batch_size: int = 1000, seed: int = 1234,
                   labels: torch.Tensor | None = None) -> dict[str, float]:
    """Mean of each of ``model.eval_terms`` over ``images_u8``, with fixed noise so the numbers are repeatable
    (``genlab.models.per_example``). A conditional model also gets the ``labels`` (int64 [N]) of the images."""
    terms = per_example(model, images_u8, model.eval_terms, batch_size, seed,
                        labels if model.conditional else None)
    return {key: value.mean().item() for key, value in terms.items()}


@dataclass
class RunState:
    """What a callback sees: the run being trained."""
    model_name: str
    model: Any
    run_dir: Path
    test_set: Any  # genlab.data.Dataset, the test split


class Callback:
    """Hooks of the training loop, each a no-op here; called on the main process only."""

    def on_start(self, run: RunState, resuming: bool) -> None:
        """Before the first step (``resuming``: the run continues from a checkpoint)."""

    def on_epoch(self, run: RunState, epoch: int, record: dict) -> None:
        """After epoch ``epoch`` (1-based) was checkpointed; ``record`` is its line of metrics.jsonl."""

    def on_end(self, run: RunState) -> None:
        """After the last epoch."""


CALLBACK_METHODS = ("on_start", "on_epoch", "on_end")


class _SignalFlag:
    """Turns SIGINT, SIGTERM and SIGHUP (a closed terminal, a dropped ssh session) into a flag the loop checks
    after each step, so it stops at a clean point. SIGHUP that the caller ignores (``nohup``) stays ignored."""

    def __init__(self):
        self.signum = 0

    def __call__(self, signum, frame):
        self.signum = signum

    @contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
            yield self
            return
        hangup = [signal.SIGHUP] if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN else []
        old = {s: signal.signal(s, self) for s in (signal.SIGINT, signal.SIGTERM, *hangup)}
        try:
            yield self
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)


def train(model_name: str | None, model_cfg=None, train_cfg: TrainConfig | None = None,
          resume: str | Path | None = None, device: str | None = None,
          callbacks: Sequence[Callback] | None = None) -> Path:
    """Train ``model_name`` (or continue the run in ``resume``) and return the run directory.

    ``callbacks``: see ``Callback`` (None: none); the loop draws nothing itself, so the figures and TensorBoard
    logs that ``train_cfg.figures`` and ``train_cfg.tensorboard`` ask for come from passing
    ``genlab.viz.training_callbacks(train_cfg)`` here.

    ``device`` (a name or a ``torch.device``), when given, is where to train, in place of ``train_cfg.device``.
    On resume only the schedule length (``train_cfg.epochs``), the device (``device``, or
    ``train_cfg.device``: a run trained on a GPU can go on on a CPU, and back), ``cuda_graphs`` and
    ``progress`` may change (``RESUME_MAY_CHANGE``); a model, a model config or other training settings that
    differ from the run's own are refused.

    The caller's random state is left as it was: training draws from generators seeded by ``train_cfg.seed``.
    """
    if train_cfg is not None and not isinstance(train_cfg, TrainConfig):
        raise GenlabError(f"train_cfg is a genlab.config.TrainConfig, got {type(train_cfg).__name__}")
    callbacks = _checked_callbacks(callbacks)  # before the run folder is made
    if resume is not None:
        if not isinstance(resume, (str, os.PathLike)) or not str(resume):
            raise GenlabError(f"resume is the path of the run directory to continue, got {resume!r}")
        run_dir = Path(resume)
        rundir.refuse_if_in_use(run_dir)  # a run just started there has no config.json yet
        name, saved_model_cfg, saved = checkpoint.read_configs(run_dir)
        _check_resume(run_dir, name, saved_model_cfg, saved, model_name, model_cfg, train_cfg)
        model_name, model_cfg = name, saved_model_cfg
        changes = {k: getattr(train_cfg, k) for k in RESUME_MAY_CHANGE if k != "out"} if train_cfg is not None else {}
        changes.update({"device": str(device)} if device is not None else {})
        train_cfg = cfgmod.from_dict(TrainConfig, {**cfgmod.to_dict(saved), **changes})
    else:
        cls = model_class(model_name)  # an unknown name: one line, before anything reads it
        model_cfg = model_cfg if model_cfg is not None else cls.Config()
        check_config(model_name, model_cfg)
        train_cfg = train_cfg if train_cfg is not None else default_train_config(model_name)
        _refuse_settings_that_do_nothing(model_cfg, train_cfg)
        if device is not None:
            train_cfg = dataclasses.replace(train_cfg, device=str(device))
        run_dir = None
    # Fields may have been set after the configs were made: checked again, before anything is written.
    cfgmod.validate(model_cfg)
    cfgmod.validate(train_cfg)
    if run_dir is None:
        run_dir = Path(train_cfg.out) if train_cfg.out else default_run_dir(model_name)

    deterministic = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    workspace = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    ctx = distributed.setup(train_cfg.device, train_cfg.deterministic)  # a missing device is a GenlabError here
    finished = False
    try:
        # The processes of one run train one model the same way: torchrun gives them one command line, but
        # processes started by hand with different settings (epochs, learning rates) waited on each other for
        # ever, or stepped their copies of the model apart.
        settings = [model_name, cfgmod.to_dict(model_cfg), cfgmod.to_dict(train_cfg), str(run_dir)]
        distributed.check_same(ctx, json.dumps(settings, sort_keys=True, default=str), "settings",
                               "start every process of a run with one command (torchrun --nproc-per-node N -m "
                               "genlab.cli train ...)", show=False)
        # One owner per run directory (see genlab.rundir); a refusal reaches every rank.
        # Gradients on, whatever the caller's block (a notebook's torch.no_grad() gave "element 0 of tensors does
        # not require grad").
        with distributed.agreed(ctx, rundir.claim(run_dir, owner=ctx.is_main)), \
                torch.random.fork_rng(devices=[ctx.device] if ctx.device.type == "cuda" else []), \
                torch.inference_mode(False), torch.enable_grad():
            run_dir = _train(model_name, model_cfg, train_cfg, run_dir, resume is not None, ctx,
                             callbacks if ctx.is_main else ())
        finished = True
        return run_dir
    except RuntimeError as e:
        if ctx.world > 1 and distributed.is_peer_failure(e):
            # Another process died (killed, out of memory) or stopped on an error it has said itself.
            kept = (f"the last checkpoint in {run_dir} is kept: continue with {resume_command(run_dir, ctx.world)}"
                    if (Path(run_dir) / checkpoint.CHECKPOINT).exists() else
                    f"no epoch finished, so {run_dir} holds no checkpoint: start the run again")
            raise GenlabError(f"rank {ctx.rank}: another process of this run stopped or died; {kept}") from None
        raise
    finally:
        distributed.teardown(ctx, finished)
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
        if workspace is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)



def _check_resume(run_dir: Path, name: str, saved_model_cfg, saved: TrainConfig, model_name, model_cfg,
                  train_cfg) -> None:
    """Refuse a model, a model config or training settings given with ``resume`` that are not the run's own
    (they were silently ignored)."""
    if model_name is not None and model_name != name:
        raise GenlabError(f"{run_dir} holds a run of {name}; resume it with model_name None (or {name!r})")
    shape = {"channels": saved_model_cfg.channels, "height": saved_model_cfg.height, "width": saved_model_cfg.width}
    if model_cfg is not None and (type(model_cfg) is not type(saved_model_cfg)
                                  or dataclasses.replace(model_cfg, **shape) != saved_model_cfg):
        raise GenlabError(f"{run_dir}: a resumed run keeps its own model config; pass model_cfg=None")
    if train_cfg is not None:
        changed = [f.name for f in dataclasses.fields(TrainConfig)
                   if f.name not in RESUME_MAY_CHANGE and getattr(train_cfg, f.name) != getattr(saved, f.name)
                   and not (f.name == "dataset" and _same_dataset(train_cfg, saved.dataset))]
        if changed:
            raise GenlabError(f"{run_dir}: a resumed run keeps its own settings, and train_cfg changes "
                              f"{', '.join(changed)}; only {', '.join(RESUME_MAY_CHANGE)} may change: pass "
                              f"dataclasses.replace(genlab.checkpoint.read_configs(run_dir)[2], epochs=N)")


def _refuse_settings_that_do_nothing(model_cfg, train_cfg: TrainConfig) -> None:
    """A new run's settings that another one switches on, given without it: accepted, they did nothing. (Only
    for new runs: a run's own config.json is read as it was written.)"""
    def given(cfg, name: str) -> bool:
        return getattr(cfg, name) != type(cfg).__dataclass_fields__[name].default

    if given(train_cfg, "lr_final") and train_cfg.lr_schedule == "constant":
        raise GenlabError("--lr-final is where the cosine schedule ends; add --lr-schedule cosine, or leave "
                          "--lr-final out")
    iwae = [f"--{name.replace('_', '-')}" for name in ("iwae_k", "iwae_from")
            if hasattr(model_cfg, name) and given(model_cfg, name)]
    if iwae and getattr(model_cfg, "objective", None) != "iwae":
        raise GenlabError(f"{' and '.join(iwae)} set{'s' if len(iwae) == 1 else ''} the IWAE objective; add "
                          f"--objective iwae, or leave {'it' if len(iwae) == 1 else 'them'} out")
    if getattr(model_cfg, "objective", None) == "iwae" and model_cfg.iwae_from >= train_cfg.epochs:
        epochs = f"{train_cfg.epochs} epoch{'s' if train_cfg.epochs != 1 else ''}"
        raise GenlabError(f"--iwae-from {model_cfg.iwae_from} is past the run's {epochs}, so it would never train "
                          "on L_k; lower it (0: L_k throughout) or raise --epochs")


def _checked_callbacks(callbacks) -> tuple[Callback, ...]:
    """``callbacks`` as a tuple, each with Callback's methods (a mistaken argument is refused before any work)."""
    if callbacks is None:
        return ()
    try:
        callbacks = tuple(callbacks)
    except TypeError:
        raise GenlabError(f"callbacks is a list of genlab.train.Callback, got {type(callbacks).__name__}") from None
    for callback in callbacks:
        missing = [m for m in CALLBACK_METHODS if not callable(getattr(callback, m, None))]
        if missing:
            raise GenlabError(f"callback {type(callback).__name__} has no {missing[0]}(); subclass "
                              "genlab.train.Callback, whose methods do nothing until overridden")
    return tuple(callbacks)


def default_train_config(model_name: str) -> TrainConfig:
    """TrainConfig's defaults with the model's own (``train_defaults``) on top."""
    return cfgmod.from_dict(TrainConfig, {**cfgmod.to_dict(TrainConfig()), **model_class(model_name).train_defaults})


def _train(model_name, model_cfg, cfg: TrainConfig, run_dir: Path, resuming: bool, ctx, callbacks) -> Path:
    say = (lambda msg: tqdm.write(printable(msg), file=sys.stderr)) if ctx.is_main else (lambda msg: None)
    # Everything that can fail on bad input happens before the first collective, and every rank learns of
    # a failure on any rank (distributed.agree), so no rank waits on another that has already given up.
    model, optimizers, counters, settings, data = distributed.agree(
        ctx, lambda: _prepare(model_name, model_cfg, cfg, run_dir, resuming, ctx, say))
    train_images, train_labels, test_images, test_labels, test_set = data
    # "--dataset auto" and the data directory are resolved by each process: one without full MNIST would
    # train on mnist-5k while the others train on MNIST.
    distributed.check_same(ctx, f"{test_set.name}, {len(train_images)} training images of shape "
                                f"{list(train_images.shape[1:])}", "training data",
                           "give every process the same --dataset and data directory")
    distributed.broadcast_buffers(model, ctx)
    steps = distributed.player_steps(model, ctx)  # DDP puts rank 0's parameters on every rank here
    model.end_of_epoch(counters["epoch"] - 1)  # schedules are functions of the epoch: set them for this one

    batches = Batches(train_images, cfg.batch_size, seed=cfg.seed, rank=ctx.rank, world=ctx.world,
                      device=ctx.device, labels=train_labels if model.conditional else None)
    log = _Log(model, ctx, counters, run_dir)

    def save_checkpoint(epoch: int):
        """Save the run, in epoch ``epoch`` (0-based); weights that are no longer finite are never saved."""
        bad = checkpoint.first_not_finite(model.state_dict())
        # Batch-norm statistics are each process's own: every rank learns of a bad tensor on any rank.
        if ctx.world > 1 and distributed.sum_across(torch.tensor([float(bad is not None)]), ctx).item() > 0:
            bad = bad or "of another process"
        if bad is not None:
            raise TrainingDiverged(f"the weight {bad} became NaN or infinite in epoch {epoch + 1} (by step "
                                   f"{counters['step']}); lower --lr or check the data; {log.kept()}")
        counters["checks"] = model.check_state()  # the same on every rank: the checks read agreed means
        rng = distributed.gather_rng(ctx)
        if ctx.is_main:
            rundir.check_still_claimed(run_dir)
            try:
                checkpoint.save(run_dir / checkpoint.CHECKPOINT, model, optimizers, rng, counters, settings)
            except (OSError, GenlabError):  # a failed write, said by checkpoint.save as a full disk
                rundir.check_still_claimed(run_dir)  # a folder that went away in the meantime is said as such
                raise

    state = RunState(model_name, model, run_dir, test_set)
    for callback in callbacks:
        callback.on_start(state, resuming)

    flag = _SignalFlag()
    model.train()
    graphed = graphs.for_training(model, cfg, ctx, batches.images, say) if counters["epoch"] < cfg.epochs else None
    with flag.installed():
        for epoch in range(counters["epoch"], cfg.epochs):
            started = time.perf_counter()
            images_seen, next_postfix = 0, counters["step"] + POSTFIX_EVERY
            bar = tqdm(total=len(batches), initial=counters["batch"], desc=f"epoch {epoch + 1}/{cfg.epochs}",
                       unit="batch", leave=False, disable=not (ctx.is_main and cfg.progress) or None,
                       file=sys.stderr)
            for shard, global_n, *labels in batches.epoch(epoch, counters["batch"]):
                x = to_pixels(shard, model.pixel_range)
                if cfg.lr_schedule != "constant":
                    lr = learning_rate(cfg, counters["step"], cfg.epochs * len(batches))
                    for opt in optimizers.values():
                        for group in opt.param_groups:
                            group["lr"] = lr
                log.pending.append(_step(model, (x, *labels), global_n, optimizers, steps, ctx, cfg.precision,
                                         graphed))
                counters["step"] += 1
                counters["batch"] += 1
                images_seen += global_n
                bar.update(1)
                # One process checks the signal flag at every step; several agree on it when they sync.
                stop_here = ctx.world == 1 and flag.signum > 0
                if stop_here or len(log.pending) >= log.every:
                    stop = log.flush(epoch, stop=flag.signum > 0)
                    if counters["step"] >= next_postfix:  # not step % 50: reads every 50 steps from a resumed
                        next_postfix = counters["step"] + POSTFIX_EVERY  # step met no multiple of 50 again
                        rate = images_seen / max(time.perf_counter() - started, 1e-9)
                        bar.set_postfix(loss=f"{log.last_loss:.4f}", img_s=f"{rate:.0f}", refresh=False)
                    if stop:
                        counters["seconds"] += time.perf_counter() - started
                        save_checkpoint(epoch)
                        bar.close()
                        raise Interrupted(run_dir, flag.signum or signal.SIGTERM, ctx.world)
            log.flush(epoch, stop=False)
            bar.close()
            seconds = time.perf_counter() - started
            counters["seconds"] += seconds
            # lr: the rate of the epoch's last step (the schedule's, a function of the step counter)
            record = {"epoch": epoch + 1, "step": counters["step"],
                      "lr": learning_rate(cfg, max(counters["step"] - 1, 0), cfg.epochs * len(batches)),
                      **{f"train/{k}": v / max(counters["count"], 1) for k, v in counters["sums"].items()}}
            if ctx.is_main:
                test_terms = evaluate_terms(model, test_images, labels=test_labels)
                record.update({f"test/{k}": v for k, v in test_terms.items()})
                record.update({"seconds": counters["seconds"], "images_per_s": images_seen / max(seconds, 1e-9)})
            model.end_of_epoch(epoch)
            # One commit per epoch: the checkpoint (holding the record), then the log line (see genlab.rundir).
            counters.update(epoch=epoch + 1, batch=0, sums={}, count=0, record=record)
            save_checkpoint(epoch)
            if ctx.is_main:
                rundir.commit_metrics(run_dir, record)
                say("  ".join(f"{k} {v:.5g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()))
            for callback in callbacks:
                callback.on_epoch(state, epoch + 1, record)
            if graphed is not None and epoch + 1 < cfg.epochs:
                graphed.refresh()  # a schedule the loss reads may have moved on (after the commit: loses nothing)

    if model.conditional and cfg.class_list():  # the end's figures draw the classes it learned, as a loaded run does
        model.learned_classes = cfg.class_list()
    for callback in callbacks:
        callback.on_end(state)
    return run_dir


def _numbers_by_name(classes) -> bool:
    """Whether a folder data set's class folders are named by numbers that are not their labels (01, 02, ...
    for the labels 1, 2, ... are)."""
    return any(name.isdigit() for name in classes) and \
        any(not name.isdigit() or int(name) != i for i, name in enumerate(classes))


def _prepare(model_name, model_cfg, cfg: TrainConfig, run_dir: Path, resuming: bool, ctx, say):
    """Load the data, build the model and its optimisers, and either restore the checkpoint or start the run
    directory. Returns (model, optimizers, counters, settings, (train images, train labels, test images, test
    labels, test set))."""
    dataset, model_cfg, train_set, test_set, data = _training_data(model_name, model_cfg, cfg, resuming, ctx)
    train_images = data[0]

    # What each checkpoint records of the run's settings, as config.json keeps them (the data set resolved)
    settings = checkpoint.settings_of(model_cfg, dataclasses.replace(cfg, dataset=dataset))
    _seed(ctx, cfg.seed)  # the same initial weights on every rank
    model = build(model_name, model_cfg).to(ctx.device)
    optimizers = {p: make_optimizer(cfg, model.player_parameters(p), model.optimizer_options(p))
                  for p in model.players}
    _seed(ctx, cfg.seed * 1000 + 1 + ctx.rank)  # per-rank noise (corruption, sampling)

    if resuming:
        per_epoch = len(Batches(train_images, cfg.batch_size, world=ctx.world))
        counters = _restore(run_dir, model_name, model, optimizers, settings, cfg, per_epoch, ctx, say)
    else:
        counters = {"epoch": 0, "batch": 0, "step": 0, "sums": {}, "count": 0, "seconds": 0.0}
        if ctx.is_main:
            _start_run_dir(run_dir, model_name, model_cfg, cfg, dataset, train_set.classes, ctx.world)
            if _numbers_by_name(train_set.classes):
                # Folders 1, 10 and 2 are the classes 0, 1 and 2: --classes 1 trained on "10" without a word.
                shown = ", ".join(f"{i} = {name!r}" for i, name in enumerate(train_set.classes[:12]))
                say(f"note: the classes of {dataset} are its folders in sorted order ({shown}"
                    f"{', ...' if len(train_set.classes) > 12 else ''}); --classes and --label take these numbers")
            say(f"training {model_name} on {dataset} ({len(train_images)} images) -> {run_dir}")
    return model, optimizers, counters, settings, (*data, test_set)


def _training_data(model_name, model_cfg, cfg: TrainConfig, resuming: bool, ctx):
    """The data set's resolved name, the model config fitted to its images, its train and test sets, and the
    (train images, train labels, test images, test labels) a run uses: its --classes, --limit and --eval-limit
    applied. Settings the data cannot take are one GenlabError."""
    dataset = resolve_dataset_name(cfg.dataset, cfg.data_dir)
    sizes_its_networks = hasattr(model_cfg, "image_size")  # dcgan: --image-size is also its networks' size
    if cfg.image_size not in (0, 28) and not is_file_dataset(dataset) and not sizes_its_networks and not resuming:
        raise GenlabError(f"--image-size {cfg.image_size}: {dataset} is 28 x 28; --image-size resizes folder: and "
                          "npz: data sets (leave it out here)")
    if cfg.grey and not is_file_dataset(dataset) and not resuming:
        raise GenlabError(f"--grey: {dataset} is grey already; --grey converts folder: and npz: data sets of colour "
                          "images (leave it out here)")
    options = {"image_size": cfg.image_size, "grey": cfg.grey}
    train_set = load_dataset(dataset, "train", cfg.data_dir, **options)
    test_set = load_dataset(dataset, "test", cfg.data_dir, **options)
    model_cfg = fit_image_shape(model_name, model_cfg, train_set, resuming)
    train_images, train_labels = train_set.images, train_set.labels
    if cfg.classes:
        labels, wanted = torch.as_tensor(train_labels), cfg.class_list()
        present = labels.unique().tolist()
        absent = sorted(set(wanted) - set(present))
        if absent:
            raise GenlabError(f"--classes {cfg.classes}: {dataset} has no training images of label "
                              f"{', '.join(map(str, absent))}; its labels are {min(present)} to {max(present)}")
        keep = torch.isin(labels, torch.tensor(wanted))
        train_images, train_labels = train_images[keep], train_labels[keep]
    train_images = train_images[:cfg.limit] if cfg.limit else train_images
    test_images = test_set.images[:cfg.eval_limit] if cfg.eval_limit else test_set.images
    train_labels, test_labels = train_labels[:len(train_images)], test_set.labels[:len(test_images)]
    least = 2 * ctx.world  # two images a process: batch norm cannot normalise one
    if ctx.world > 1 and cfg.batch_size < least:
        raise GenlabError(f"--batch-size {cfg.batch_size} gives some of the {ctx.world} processes fewer than two "
                          f"images a step; use at least {least}")
    if len(train_images) < least:
        raise GenlabError(f"{dataset} gives {len(train_images)} training image(s); training needs at least "
                          f"{least} (two a process, for batch norm)")
    if cfg.lr_schedule == "cosine" and cfg.lr_final > cfg.lr and not resuming:
        raise GenlabError(f"--lr-final {cfg.lr_final:g} is above --lr {cfg.lr:g}; the cosine schedule decays from "
                          "--lr down to --lr-final")
    return dataset, model_cfg, train_set, test_set, (train_images, train_labels, test_images, test_labels)


def _restore(run_dir: Path, model_name, model, optimizers, settings: str, cfg: TrainConfig, per_epoch: int, ctx,
             say) -> dict:
    """Load ``run_dir``'s checkpoint into the model, its optimisers and the random state, after checking it
    against them and the run's settings; bring metrics.jsonl in line with it. Returns its counters."""
    if not os.path.lexists(run_dir / checkpoint.CHECKPOINT):
        metrics = run_dir / rundir.METRICS
        if metrics.is_file() and metrics.stat().st_size:
            raise GenlabError(f"{run_dir} has no {checkpoint.CHECKPOINT}, though its {rundir.METRICS} logs "
                              "epochs: the checkpoint was removed; restore it, or train anew with another --out")
        raise GenlabError(f"{run_dir} stopped before its first epoch ended, so it has no checkpoint to resume; "
                          f"start it again: genlab train {model_name} ... --out {run_dir}")
    ckpt = checkpoint.load(run_dir / checkpoint.CHECKPOINT)
    checkpoint.check(ckpt, model, optimizers, ctx.world, where=run_dir / checkpoint.CHECKPOINT, settings=settings,
                     epochs=cfg.epochs)
    if ckpt.counters["epoch"] > cfg.epochs:
        raise GenlabError(f"{run_dir} has already trained {ckpt.counters['epoch']} epochs; --epochs must be "
                          f"at least that, got {cfg.epochs}")
    model.load_state_dict(ckpt.model_state)
    for name, opt in optimizers.items():
        opt.load_state_dict(ckpt.optimizer_states[name])
    torch.set_rng_state(ckpt.rng_states[ctx.rank])
    if ctx.device.type == "cuda" and ckpt.cuda_rng_states:
        torch.cuda.set_rng_state(ckpt.cuda_rng_states[ctx.rank], ctx.device)
    elif (ctx.device.type == "cuda") != bool(ckpt.cuda_rng_states):
        trained = "a GPU" if ckpt.cuda_rng_states else "a CPU"
        say(f"note: {run_dir} was trained on {trained} and resumes on {ctx.device.type}; its random stream "
            "continues differently, so the result will not equal an uninterrupted run bit for bit")
    counters = ckpt.counters
    if counters["batch"] > per_epoch or (counters["count"] == 0) != (not counters["sums"]):
        raise GenlabError(f"{run_dir / checkpoint.CHECKPOINT} stopped at batch {counters['batch']} of an epoch "
                          f"of {per_epoch}, with {counters['count']} step(s) summed: the file is damaged or the "
                          "data set changed; retrain, or restore the file")
    model.load_check_state(counters.get("checks", {}))
    if ctx.is_main:
        dropped = rundir.recover_metrics(run_dir, counters)
        if dropped:
            say(f"note: {dropped} line{'s' if dropped > 1 else ''} of {run_dir / rundir.METRICS} past the "
                f"checkpoint's epoch {counters['epoch']} (or cut short) dropped; the epochs they logged are "
                "trained again")
        _record_schedule(run_dir, cfg.epochs)
    if counters["epoch"] >= cfg.epochs:
        say(f"{run_dir} has already trained its {cfg.epochs} epoch{'s' if cfg.epochs > 1 else ''}: nothing to do "
            "(--epochs N trains it longer)")
    else:
        say(f"resuming {run_dir} at epoch {counters['epoch'] + 1}, batch {counters['batch']}")
    return counters


def _start_run_dir(run_dir: Path, model_name, model_cfg, cfg: TrainConfig, dataset: str, classes, world: int):
    """A new run's folder: its config.json (enough to rebuild the model) and an empty metrics.jsonl."""
    run_dir.mkdir(parents=True, exist_ok=True)
    _check_fresh(run_dir)
    cfgmod.write_json(run_dir / checkpoint.CONFIG, {
        "model": model_name, "model_config": cfgmod.to_dict(model_cfg),
        "image_shape": {"channels": model_cfg.channels, "height": model_cfg.height, "width": model_cfg.width},
        "classes": list(classes),
        "train_config": {**cfgmod.to_dict(cfg), "dataset": dataset}, "genlab_version": __version__,
        "world_size": world})
    (run_dir / rundir.METRICS).write_text("")  # a run that never ended an epoch may have left one


def _same_dataset(train_cfg: TrainConfig, saved: str) -> bool:
    """Whether ``train_cfg.dataset`` names the data set the run saved, which is kept resolved ("auto" as the
    data set it chose, a folder as its full path)."""
    try:
        return train_cfg.dataset == "auto" or resolve_dataset_name(train_cfg.dataset, train_cfg.data_dir) == saved
    except GenlabError:
        return False


def _seed(ctx, seed: int) -> None:
    """Seed the generators this run draws from: the CPU's, and its GPU's when it trains on one. (torch.manual_seed
    seeds every GPU too, so a run on the CPU changed the caller's CUDA random state, which train() keeps.)"""
    torch.default_generator.manual_seed(seed)
    if ctx.device.type == "cuda":
        with torch.cuda.device(ctx.device):
            torch.cuda.manual_seed(seed)


def _check_fresh(run_dir: Path) -> None:
    """Refuse a run directory that holds another run, or files of the same names genlab did not write; a run
    of genlab's stopped before its first epoch ended (a config and no lines) is started over."""
    if os.path.lexists(run_dir / checkpoint.CHECKPOINT):
        raise GenlabError(f"{run_dir} already holds a run; choose another --out or continue it with --resume")
    metrics, config = run_dir / rundir.METRICS, run_dir / checkpoint.CONFIG
    if os.path.lexists(metrics) and (not metrics.is_file() or metrics.stat().st_size):
        raise GenlabError(f"{run_dir} already holds a {rundir.METRICS} of epochs trained (its checkpoint is gone); "
                          "choose another --out")
    if os.path.lexists(config):
        try:
            data = cfgmod.read_json(config)
            ours = isinstance(data, dict) and {"model", "train_config"} <= set(data)
        except GenlabError:
            ours = False
        if not ours:
            raise GenlabError(f"{config} is not a genlab run's config, and training would replace it; choose "
                              "another --out")
    # Anything else is somebody's: a run writes its files and figures/ among them, and could replace one of the
    # same name. A run of genlab's stopped before its first epoch (its config, an empty log) may be started over.
    # train.log: where genlab reproduce's worker writes this run's lines (train itself never touches it).
    genlabs = {rundir.LOCK, "train.log"} | ({checkpoint.CONFIG, rundir.METRICS, "figures", "tensorboard"}
                                            if os.path.lexists(config) else set())
    foreign = sorted(entry.name for entry in os.scandir(run_dir)
                     if entry.name not in genlabs and not rundir.is_stale(entry.name))
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise GenlabError(f"{run_dir} holds files that are not a genlab run's ({foreign[0]!r}{more}); train into an "
                          "empty or new folder (--out)")


def _record_schedule(run_dir: Path, epochs: int) -> None:
    """A resumed run trained up to a new ``--epochs`` keeps that length in its ``config.json``, so the next
    resume (on another device, say) goes on with the schedule the run now has."""
    path = run_dir / checkpoint.CONFIG
    data = cfgmod.read_json(path)
    if data["train_config"].get("epochs") != epochs:
        data["train_config"]["epochs"] = epochs
        cfgmod.write_json(path, data)


def fit_image_shape(model_name: str, model_cfg, data, resuming: bool):
    """``model_cfg`` with the image shape (channels, height, width) of ``data``. A resumed run must find the
    shape it was built for; a conditional model needs labels 0..9."""
    shape = image_shape(data.images)
    if resuming:
        check_run_shape(data.images, model_cfg.shape)
    if not all(1 <= side <= 4096 for side in shape[1:]):
        raise GenlabError(f"{data.name}'s images are {shape[2]} x {shape[1]} pixels; genlab's models take 1 to 4096 "
                          "pixels a side: pass --image-size N")
    if MODELS[model_name].conditional and is_file_dataset(data.name) and not data.classes:
        raise GenlabError(f"{model_name} is conditioned on the class, but {data.name} has no labels (an npz without "
                          "'labels', or a folder without class sub-folders)")
    if MODELS[model_name].conditional and len(data.labels) and int(data.labels.max()) > 9:
        raise GenlabError(f"{model_name} is conditioned on 10 classes; this data set has labels up to "
                          f"{int(data.labels.max())}")
    return dataclasses.replace(model_cfg, channels=shape[0], height=shape[1], width=shape[2])


def _step(model, inputs, global_n, optimizers, steps, ctx, precision: str,
          graphed: graphs.GraphedLoss | None = None) -> tuple[list[str], list[torch.Tensor]]:
    """One batch: each player in turn computes its loss, backpropagates (DDP averages the gradients across
    processes during the backward pass), steps. ``inputs``: (images,) or, for a conditional model, (images,
    labels). Returns the terms' names and their batch means as float32 1-d tensors that, joined, hold one
    number a name, still on the device, so nothing waits for the device here; ``_Log.flush`` reads those of
    many steps at once. Under DDP each process's means are weighted by its share of the global batch, so
    their mean over processes is the global batch's mean even when the last batch does not split evenly.

    Each step reduces its own terms: a GPU's reduction adds a row's numbers in an order that depends on how
    many rows it is given, so reducing many steps at once would make the logged means depend on when the log
    was read (a run resumed mid-way reads at other steps than an uninterrupted one).

    ``graphed``: the model's loss recorded as CUDA graphs (genlab.graphs), replayed for full batches."""
    names: list[str] = []
    values: list[torch.Tensor] = []
    turns = graphed.steps(inputs[0]) if graphed is not None and graphed.fits(inputs[0]) else model.steps(*inputs)
    for player in model.players:
        with torch.autocast(ctx.device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext():
            terms = steps[player](turns)
        # This shard's share of the global-batch mean, times the processes whose gradients DDP averages.
        loss = terms["loss"].mean() if ctx.world == 1 else terms["loss"].sum() * (ctx.world / global_n)
        optimizers[player].zero_grad(set_to_none=True)  # also clears what the other player's backward left here
        loss.backward()
        optimizers[player].step()
        model.after_step(player)
        prefix = "" if player == "model" else f"{player}/"
        names += [prefix + key for key in terms]
        if ctx.world == 1 and all(value is terms["loss"] for value in terms.values()):
            # Every term is the loss (the AE's and the DAE's), whose batch mean is at hand: logging it costs
            # no reduction (a GPU step at a large batch is bound by its launches; each one saved shows).
            values += [loss.detach()] * len(terms)
        else:
            values += [value.detach() for value in terms.values()]
    means = _batch_means(values)
    share = len(inputs[0]) * ctx.world / global_n  # 1 unless the shards differ in size (a short last batch)
    return names, means if share == 1 else [part * share for part in means]  # _Log's mean over ranks: the global batch's


def _batch_means(values: list[torch.Tensor]) -> list[torch.Tensor]:
    """The mean of each term in ``values`` as float32 1-d tensors that, joined, hold one number a term: a term
    already reduced (0-d) as it is, one stack and one mean for each run of per-example terms of one length,
    one mean for any other."""
    parts = []
    for length, run in itertools.groupby(values, key=lambda v: v.shape[0] if v.dim() == 1 else None):
        run = list(run)
        if length is not None:
            parts.append(torch.stack(run).float().mean(1) if len(run) > 1 else run[0].float().mean().reshape(1))
        else:
            parts += [(v.float() if v.dim() == 0 else v.float().mean()).reshape(1) for v in run]
    return parts


READ_EVERY = {"cuda": 50}  # steps between reads of the logged terms, by device type (1 elsewhere)
POSTFIX_EVERY = 50  # steps between updates of the progress bar's loss and speed, at the first read after them
# A loss beyond this has diverged though still finite: no model here trains at such a scale (float32 ends at 3.4e38).
LOSS_LIMIT = 1e30


class _Log:
    """Each step's term means waiting on the device, read back every ``every`` steps in one transfer (every
    step on a CPU, where reading costs nothing; every 50 on a GPU, so the host never waits for a step to finish).

    On reading, every rank gets the mean over ranks (one all-reduce, which also carries the stop flag), so
    the non-finite-loss check and the model's own divergence checks reach the same verdict on every rank.
    The running sums are added step by step in order, so when the reads happen never changes a number.
    """

    def __init__(self, model, ctx, counters: dict, run_dir: Path):
        self.model, self.ctx, self.counters, self.run_dir = model, ctx, counters, run_dir
        self.every = READ_EVERY.get(ctx.device.type, 1)
        self.pending: list[tuple[list[str], list[torch.Tensor]]] = []  # per step: term names, their means
        self.last_loss = float("nan")

    def flush(self, epoch: int, stop: bool) -> bool:
        """Read the pending terms, check them, add them to the epoch's sums; return the agreed stop flag."""
        pending, self.pending = self.pending, []
        if not pending and self.ctx.world == 1:
            return stop
        flat = torch.cat([part for _, means in pending for part in means]) if pending else torch.zeros(0)
        if self.ctx.world == 1:
            numbers = flat.tolist()
        else:
            flag = torch.tensor([float(stop)], device=self.ctx.device)
            *numbers, agreed = distributed.sum_across(torch.cat([flat.to(self.ctx.device), flag]), self.ctx).tolist()
            numbers, stop = [value / self.ctx.world for value in numbers], agreed > 0
        i = 0
        step = self.counters["step"] - len(pending)
        for names, _ in pending:
            step += 1
            means = dict(zip(names, numbers[i:i + len(names)]))
            i += len(names)
            for key, value in means.items():
                if (key == "loss" or key.endswith("/loss")) and not abs(value) <= LOSS_LIMIT:
                    player = key.split("/")[0] if "/" in key else "model"
                    what = f"became {value} (not finite)" if not math.isfinite(value) else f"reached {value:.3g}"
                    raise TrainingDiverged(f"the {player} loss {what} at epoch {epoch + 1}, step {step}; lower "
                                           f"--lr or check the data; {self.kept()}")
            sums = self.counters["sums"]
            for key, value in means.items():
                sums[key] = sums.get(key, 0.0) + value
            self.counters["count"] += 1
            self.last_loss = means.get("loss", next(iter(means.values())))
            problem = self.model.diverged(means)
            if problem:
                raise TrainingDiverged(f"training stopped at epoch {epoch + 1}, step {step}: {problem}; "
                                       f"{self.kept(streak=True)}")
        return stop

    def kept(self, streak: bool = False) -> str:
        """What a diverged run leaves: its last good checkpoint, or none yet (it diverged in its first epoch).
        ``streak``: the verdict is on a streak of steps, which may have begun before that checkpoint."""
        if (self.run_dir / checkpoint.CHECKPOINT).exists():
            if streak:
                return (f"the checkpoint of the last finished epoch is kept in {self.run_dir} (the trouble may have "
                        "begun before it)")
            return f"the last good checkpoint in {self.run_dir} is kept"
        return f"no epoch finished, so {self.run_dir} holds no checkpoint: start again with a lower --lr"
