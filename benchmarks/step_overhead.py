"""What genlab's training loop adds to each step, against the plain loop of ``throughput.py``: measured on a CPU
at a tiny batch, where a step is mostly Python and kernel launches, as it is on a GPU at the lecture's batch
sizes. The log is read every 50 steps, as on a GPU (``--read-every``; on a CPU genlab reads it every step).

For each model: steps/s of both loops over windows of several seconds, alternating, and the extra host time
per step of genlab's loop (median over ``--rounds``). Single-threaded, so the figure is the loop's own cost.

    python benchmarks/step_overhead.py [--models ae vae] [--batch 4] [--rounds 5] [--read-every 50] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch

import genlab.train
from genlab.data import load_dataset, resolve_dataset_name
from genlab.errors import one_line_errors
from throughput import GPU_CASES, genlab_rate, plain_rate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["ae", "vae"], choices=sorted(GPU_CASES))
    parser.add_argument("--batch", type=int, default=4, help="images per step (default 4: the step is mostly host work)")
    parser.add_argument("--images", type=int, default=3000, help="training images per epoch")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--min-seconds", type=float, default=4.0)
    parser.add_argument("--read-every", type=int, default=50,
                        help="steps between reads of the logged terms (50, as on a GPU; genlab reads every step on a CPU)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    for flag in ("batch", "images", "rounds", "read_every"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    if not args.min_seconds > 0:
        parser.error("--min-seconds must be above 0")

    torch.set_num_threads(1)
    genlab.train.READ_EVERY["cpu"] = args.read_every
    dataset = resolve_dataset_name("auto", None)
    split = load_dataset(dataset, "train")
    images, labels = split.images[:args.images], split.labels[:args.images]
    setting = (f"{dataset}, {len(images)} images an epoch, batch {args.batch}, the log read every "
               f"{args.read_every} steps, 1 thread, PyTorch {torch.__version__}")
    if not args.json:
        print(setting)
    results = {}
    for name in args.models:
        overrides = GPU_CASES[name][1]
        rounds = []
        for _ in range(args.rounds):
            plain, epochs = plain_rate(name, images, labels, args.batch, overrides, "cpu", args.min_seconds)
            ours = genlab_rate(name, len(images), args.batch, overrides, dataset, epochs=1 + epochs)
            rounds.append((ours / args.batch, plain / args.batch))
        ours, plain = (statistics.median(column) for column in zip(*rounds))
        extra = statistics.median(1e6 * (1 / o - 1 / p) for o, p in rounds)
        results[name] = {"genlab_steps_per_s": round(ours, 1), "plain_steps_per_s": round(plain, 1),
                         "extra_us_per_step": round(extra, 1),
                         "rounds_extra_us": [round(1e6 * (1 / o - 1 / p), 1) for o, p in rounds]}
        if args.json:
            continue
        print(f"{name:<7} genlab {ours:7.0f} steps/s   plain loop {plain:7.0f} steps/s   ratio {ours / plain:4.2f}   "
              f"genlab's extra host time {extra:5.0f} us a step (rounds: "
              + ", ".join(f"{1e6 * (1 / o - 1 / p):.0f}" for o, p in rounds) + ")", flush=True)
    if args.json:
        print(json.dumps({"setting": setting, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(one_line_errors(main, "step_overhead.py"))
