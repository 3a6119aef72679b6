"""Training speed with PyTorch's CPU threads waiting passively (genlab's default) against spinning (OpenMP's).

PyTorch's CPU build runs its parallel regions on OpenMP threads. Between regions an idle thread spins for a
while before it sleeps (GNU OpenMP: 300,000 spins, ``GOMP_SPINCOUNT``). On a machine whose cores are all in
use, a spinning thread holds a core that another thread needs, and every parallel region waits for the
thread that was not scheduled. genlab's command line therefore sets ``OMP_WAIT_POLICY=PASSIVE`` unless the
user set ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` (``genlab/__init__.py``).

Protocol: ``genlab train MODEL`` on mnist-5k for ``--epochs`` epochs with ``--threads`` PyTorch threads, as a
subprocess, once with genlab's default (passive) and once with ``GOMP_SPINCOUNT=300000`` (OpenMP's own
default), alternating, ``--rounds`` times; the figure of a run is the median images/s of its epochs after the
first (start-up and data loading excluded). Two conditions: ``none`` (the benchmark adds no load: on an idle
machine, the cost of waiting passively) and ``busy`` (one extra process spinning on the CPU for the whole run,
as another program on a laptop would). Report the machine's load average with the figures. Prints the
median ratio passive / spinning per model and condition: above 1, passive is faster.

    python benchmarks/omp_wait.py [--models ae dae vae] [--epochs 8] [--rounds 3] [--threads 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def spin(stop) -> None:
    while not stop.is_set():
        pass


def images_per_s(model: str, epochs: int, threads: int, spinning: bool, work: Path) -> float:
    out = Path(tempfile.mkdtemp(dir=work))
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env["OMP_NUM_THREADS"] = str(threads)
    if spinning:
        env["GOMP_SPINCOUNT"] = "300000"
    subprocess.run([sys.executable, "-m", "genlab.cli", "train", model, "--dataset", "mnist-5k", "--epochs",
                    str(epochs), "--no-figures", "--no-progress", "--out", str(out / "run")],
                   env=env, check=True, capture_output=True)
    lines = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(line["images_per_s"] for line in lines[1:])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["ae", "dae", "vae"])
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--conditions", nargs="+", default=["none", "busy"], choices=("none", "busy"))
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for condition in args.conditions:
            stop = multiprocessing.Event()
            hog = multiprocessing.Process(target=spin, args=(stop,)) if condition == "busy" else None
            if hog:
                hog.start()
            try:
                for model in args.models:
                    ratios, passive, spinning = [], [], []
                    for _ in range(args.rounds):
                        a = images_per_s(model, args.epochs, args.threads, False, Path(tmp))
                        b = images_per_s(model, args.epochs, args.threads, True, Path(tmp))
                        passive.append(a)
                        spinning.append(b)
                        ratios.append(a / b)
                    row = {"condition": condition, "model": model, "passive_img_s": statistics.median(passive),
                           "spinning_img_s": statistics.median(spinning), "ratio": statistics.median(ratios),
                           "ratio_range": [min(ratios), max(ratios)]}
                    rows.append(row)
                    if not args.json:
                        print(f"{condition:<6} {model:<4} passive {row['passive_img_s']:>9.0f} img/s  spinning "
                              f"{row['spinning_img_s']:>9.0f} img/s  ratio {row['ratio']:.2f} "
                              f"({min(ratios):.2f}-{max(ratios):.2f})", flush=True)
            finally:
                if hog:
                    stop.set()
                    hog.join()
    if args.json:
        print(json.dumps({"threads": args.threads, "epochs": args.epochs, "rounds": args.rounds, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
