"""Test NLL of the lecture's 784-400-20 VAE on dynamically binarised MNIST, trained by ``genlab train``'s loop.

Training: ``genlab.train.train`` with the settings of ``genlab train vae`` below: images binarised afresh at
every use, batch 128, fused Adam with the learning rate decayed along a cosine from ``--lr`` to ``--lr-final``
over all the run's steps, a KL warm-up, the ELBO for the first ``--iwae-from`` epochs and the
importance-weighted bound L_k (k = ``--train-k``) after them, the networks' matrix products in bfloat16
(the loss terms stay float32), evaluation with the averaged weights (EMA). The per-epoch test loss of the loop
runs on the first ``--epoch-eval-limit`` test images only, so it costs little. The same run from the CLI:

    genlab train vae --dataset mnist --binarize dynamic --epochs 550 --lr 3e-3 --lr-schedule cosine \\
        --lr-final 1e-4 --warmup-epochs 5 --objective iwae --iwae-k 10 --iwae-from 395 --precision bf16 \\
        --ema-decay 0.999 --eval-limit 500 --no-figures

Evaluation: -L_5000, the importance-weighted bound with k = 5000 (Burda, Grosse & Salakhutdinov 2016), on the
10,000 test images binarised once (a fixed draw per image), in float32, by ``genlab.metrics.likelihood``.
CPU time is ``time.process_time`` of this process (all its threads), training (the whole ``train`` call,
checkpoints and per-epoch test loss included) and evaluation reported separately and in total.

    GENLAB_DATA_DIR=/work/shared/data OMP_NUM_THREADS=1 python benchmarks/vae_nll.py --json

The defaults are chosen so that training takes at most 60 CPU-minutes on one thread of the machine in
benchmarks/RESULTS.md; the figures measured there are in that file.

Reference: Burda et al. report 86.76 nats for a one-stochastic-layer VAE (two hidden layers of 200 units,
50 latents) trained for 3280 epochs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from genlab import config as cfgmod
from genlab.checkpoint import load_run
from genlab.data import load_dataset
from genlab.errors import GenlabError, one_line_errors
from genlab.metrics.likelihood import evaluate_vae
from genlab.models.vae import VAEConfig
from genlab.train import default_run_dir, default_train_config, train

# The default schedule: L_10 for the last 155 of 550 epochs, started where the step-based cosine still has a
# learning rate of 6.3e-4 (benchmarks/RESULTS.md compares it with later and earlier starts).
EPOCHS, IWAE_FROM = 550, 395


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=EPOCHS, help="training epochs (the default fits in 60 CPU-minutes "
                                                               "on one thread here; see benchmarks/RESULTS.md)")
    p.add_argument("--iwae-from", type=int, default=-1,
                   help=f"epochs trained on the ELBO before L_k replaces it (default: {IWAE_FROM} of {EPOCHS}, "
                        "the same share of other --epochs)")
    p.add_argument("--train-k", type=int, default=10, help="importance samples of the training bound L_k "
                                                           "(1: the ELBO throughout)")
    p.add_argument("--dreg", action=argparse.BooleanOptionalAction, default=False,
                   help="train the encoder on L_k with the doubly reparameterised gradient (Tucker et al. 2019)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3, help="initial Adam learning rate of the cosine schedule")
    p.add_argument("--lr-final", type=float, default=1e-4, help="learning rate at the end of the cosine schedule")
    p.add_argument("--warmup-epochs", type=int, default=5, help="KL warm-up epochs")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="bf16",
                   help="bf16: the networks' matrix products in bfloat16 (fast on CPUs with AVX512_BF16 or AMX; "
                        "fp32 on CPUs without them, where bf16 is emulated and slower)")
    p.add_argument("--ema-decay", type=float, default=0.999,
                   help="evaluate the exponential moving average of the weights with this decay (0: last weights)")
    p.add_argument("--iwae-k", type=int, nargs="+", default=[5000], help="importance samples of the test bound")
    p.add_argument("--eval-limit", type=int, default=0, help="evaluate on the first N test images (0: all)")
    p.add_argument("--epoch-eval-limit", type=int, default=500,
                   help="test images of the loop's per-epoch test loss")
    p.add_argument("--limit", type=int, default=0, help="train on the first N images only (0: all); for checks")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads: 1 spends the CPU budget best on these small matrices")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default="", help="data directory (default: $GENLAB_DATA_DIR)")
    p.add_argument("--out", default="", help="run directory (default: runs/vae-<time>)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    say = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    if args.train_k < 1:
        raise GenlabError(f"--train-k must be at least 1, got {args.train_k}")
    iwae_from = round(args.epochs * IWAE_FROM / EPOCHS) if args.iwae_from < 0 else args.iwae_from
    iwae = {"objective": "iwae", "iwae_k": args.train_k, "iwae_from": iwae_from} if args.train_k > 1 else {}
    model_cfg = VAEConfig(latent_dim=20, hidden=400, binarize="dynamic", warmup_epochs=args.warmup_epochs,
                          dreg=args.dreg, ema_decay=args.ema_decay, tsne_epochs="", **iwae)
    out = args.out or str(default_run_dir("vae"))
    train_cfg = cfgmod.from_dict(cfgmod.TrainConfig, {
        **cfgmod.to_dict(default_train_config("vae")), "dataset": "mnist", "data_dir": args.data_dir,
        "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "lr_schedule": "cosine",
        "lr_final": args.lr_final, "precision": args.precision, "seed": args.seed, "device": "cpu",
        "limit": args.limit, "eval_limit": args.epoch_eval_limit, "figures": False, "progress": False, "out": out})

    start = time.process_time()
    run_dir = train("vae", model_cfg, train_cfg)
    train_cpu = time.process_time() - start

    run = load_run(run_dir)
    test_images = load_dataset("mnist", "test", args.data_dir or None).images
    if args.eval_limit:
        test_images = test_images[:args.eval_limit]
    t0 = time.process_time()
    results = evaluate_vae(run.model, test_images, iwae_k=args.iwae_k, log=say)
    eval_cpu = time.process_time() - t0
    k = max(args.iwae_k)
    summary = {
        "nll": results[f"iwae_{k}"], "nll_bound": f"iwae_{k}", "bits_per_dim": results["bits_per_dim"],
        "neg_elbo": results["neg_elbo"], "active_units": results["active_units"],
        "cpu_minutes": (train_cpu + eval_cpu) / 60, "train_cpu_minutes": train_cpu / 60,
        "eval_cpu_minutes": eval_cpu / 60, "epochs": run.counters["epoch"], "steps": run.counters["step"],
        "iwae_from": iwae_from, "train_k": args.train_k, "dreg": args.dreg, "precision": args.precision,
        "ema_decay": args.ema_decay, "threads": args.threads, "seed": args.seed, "run_dir": str(run_dir),
        "test_images": len(test_images), **{f"iwae_{j}": results[f"iwae_{j}"] for j in args.iwae_k}}
    if args.json:
        print(json.dumps(summary))
    else:
        for key, value in summary.items():
            print(f"{key:<20} {value:.4f}" if isinstance(value, float) else f"{key:<20} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(one_line_errors(main, "vae_nll.py"))
