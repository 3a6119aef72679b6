"""``genlab train MODEL`` (one sub-command per model, its flags made from the model's and the training's
configs) and ``genlab train --resume RUN_DIR``."""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys

from genlab import checkpoint, config as cfgmod, distributed
from genlab.commands.flags import DEVICE_HELP, Parser, add_arguments, bounded_int, from_namespace
from genlab.errors import GenlabError
from genlab.models import MODELS
from genlab.train import default_train_config, train
from genlab.viz import training_callbacks


def add(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a model (genlab train MODEL --help for its flags)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run exactly where it stopped")
    p.add_argument("--epochs", type=bounded_int(1), default=argparse.SUPPRESS,
                   help="with --resume: train up to this many epochs in all")
    p.add_argument("--device", default=argparse.SUPPRESS,
                   help=f"with --resume: continue on this device ({DEVICE_HELP}) instead of the run's own")
    p.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                   help="with --resume: record the step as CUDA graphs on one GPU, or not (--no-cuda-graphs), "
                        "this time")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                   help="with --resume: show a progress bar, or not (--no-progress), this time")
    p.set_defaults(func=command, model=None)
    models = p.add_subparsers(dest="model", parser_class=Parser, metavar="MODEL")
    for name, cls in MODELS.items():
        m = models.add_parser(name, help=summary(cls), description=summary(cls))
        add_arguments(m, cls.Config, f"{name} model")
        add_arguments(m, cfgmod.TrainConfig, "training", defaults=default_train_config(name))


RESUME_FLAGS = "--epochs N, --device D, --[no-]cuda-graphs and --[no-]progress"  # what --resume takes


def summary(cls) -> str:
    """What a model is, in a few words: its module's first sentence without citations."""
    doc = " ".join((sys.modules[cls.__module__].__doc__ or cls.__name__).split())
    first = re.split(r"[:.](?:\s|$)", doc, maxsplit=1)[0]
    return re.sub(r"\s*\([^()]*\)", "", first).strip() or cls.__name__


def command(args) -> int:
    # Ctrl-C or SIGTERM ends in train's Interrupted: one line and 128 + the signal (genlab.errors.Stopped).
    if args.resume and args.model:
        raise GenlabError(f"--resume goes on with the run's own model and settings; give either --resume RUN_DIR "
                          f"(with {RESUME_FLAGS} at most) or a model and its flags, not {args.model} too")
    if args.resume:
        saved = checkpoint.read_configs(args.resume)[2]
        given = {k: getattr(args, k) for k in ("epochs", "cuda_graphs", "progress") if hasattr(args, k)}
        train_cfg = dataclasses.replace(saved, **given) if given else None
        run_dir = train(None, None, train_cfg, resume=args.resume, device=getattr(args, "device", None),
                        callbacks=training_callbacks(saved))
    else:
        model_cfg = from_namespace(MODELS[args.model].Config, args)
        train_cfg = from_namespace(cfgmod.TrainConfig, args, base=default_train_config(args.model))
        run_dir = train(args.model, model_cfg, train_cfg, callbacks=training_callbacks(train_cfg))
    if distributed.launch_env()[1] == 0:  # one line on stdout, not one per process under torchrun
        print(run_dir)
    return 0
