"""Every genlab command on one device, as a user types it: four models train for an epoch, then each command
that computes runs on those runs, and the explorer answers a drawing. A table gives each command's exit
status and seconds; the script exits 1 if any command failed. Commands that do not depend on each other run
``--jobs`` at a time (4), each in its own process, as users run several on one GPU.

Written for a GPU (``--device cuda``, the default; ``benchmarks/gpu_check.sh`` runs it as its ``commands``
stage), where these paths are not in CI. The models are those whose commands ``genlab reproduce`` (the
script's ``reproduce`` stage, which trains, evaluates and scores every model) does not run: the DAE repairs
images, the VAE and both conditional models sample. ``--device cpu`` runs the same on a CPU, which checks the
script.

    python benchmarks/cuda_commands.py OUT_DIR [--device cuda] [--jobs N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

from serve_latency import drawings, running_server

MODELS = ("dae", "vae", "cvae", "cdcgan")
SMALL = ["--dataset", "mnist-5k", "--limit", "1024", "--eval-limit", "200", "--epochs", "1", "--no-progress"]


def genlab(*argv, timeout: float = 300) -> tuple[int, float, str]:
    """(exit status, seconds, last line of stderr) of ``genlab ARGV``."""
    began = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "genlab.cli", *map(str, argv)], capture_output=True, text=True,
                       timeout=timeout, env={**os.environ, "GENLAB_OFFLINE": "1"})
    last = (p.stderr.strip().splitlines() or [""])[-1]
    return p.returncode, time.perf_counter() - began, last


def write_test_digits(folder: Path, n: int) -> Path:
    """The first ``n`` test digits of mnist-5k as PNG files in ``folder``: images for energy and denoise."""
    from genlab.data import load_dataset
    from genlab.data.files import encode_png

    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(load_dataset("mnist-5k", "test").images[:n].numpy()):
        (folder / f"digit{i}.png").write_bytes(encode_png(image))
    return folder


def serve_one_drawing(runs: list[Path], device: str) -> tuple[int, float, str]:
    """Start ``genlab serve`` on the runs, POST one drawing to every model, stop it: (0 or 1, seconds, note)."""
    began = time.perf_counter()
    try:
        with running_server(runs, "--device", device) as (_, line):
            request = urllib.request.Request(f"{line.split()[2].rstrip('/')}/api/draw", data=drawings(1)[0],
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=60) as response:
                answered = json.loads(response.read())["models"]
        ok = len(answered) == len(runs)
        return (0 if ok else 1), time.perf_counter() - began, f"{len(answered)} of {len(runs)} models answered"
    except Exception as e:  # any failure is this command's row, not the end of the script
        return 1, time.perf_counter() - began, f"{type(e).__name__}: {e}"


def torchrun_with_a_process_too_many(out: Path) -> tuple[int, float, str]:
    """``torchrun`` with one process more than this machine has GPUs: each rank should stop with genlab's one
    line (nccl takes one GPU per rank) before it waits for another: (0 if that line came, seconds, the line)."""
    import torch

    began = time.perf_counter()
    n = torch.cuda.device_count() + 1
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(n), "-m",
                        "genlab.cli", "train", "ae", *SMALL, "--device", "cuda", "--out", out / "torchrun"],
                       capture_output=True, text=True, timeout=120, env={**os.environ, "GENLAB_OFFLINE": "1"})
    lines = [line for line in p.stderr.splitlines() if line.startswith("genlab: error:")]
    # Each rank that got as far as its check says so; torchrun may stop a slower one before it does.
    ok = p.returncode != 0 and bool(lines) and all("a GPU of its own" in line for line in lines)
    return (0 if ok else 1), time.perf_counter() - began, lines[0] if lines else f"exit {p.returncode}, no line"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="folder for the runs and the outputs")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--jobs", type=int, default=4, help="commands run at once (each its own process; default 4)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.jobs < 1:
        ap.error(f"--jobs must be at least 1, got {args.jobs}")
    out, dev = args.out, ["--device", args.device]
    rows: list[tuple[str, int, float, str]] = []

    def run_all(commands: dict[str, Callable[[], tuple[int, float, str]]]) -> dict[str, bool]:
        """Run ``commands`` (label -> call) ``--jobs`` at a time; record and print their rows in order."""
        with ThreadPoolExecutor(args.jobs) as pool:
            futures = {label: pool.submit(call) for label, call in commands.items()}
        for label, future in futures.items():
            result = future.result()
            rows.append((label, *result))
            if not args.json:
                print(f"{label:<44} exit {result[0]:<3} {result[1]:6.1f} s  {result[2][:100]}", flush=True)
        return {label: future.result()[0] == 0 for label, future in futures.items()}

    # Each step depends on the one before: the runs, then every command on them, then report and serve.
    first = {f"train {m}": partial(genlab, "train", m, *SMALL, *dev, "--out", out / m) for m in MODELS}
    if args.device.startswith("cuda"):
        first["torchrun, a process more than GPUs"] = partial(torchrun_with_a_process_too_many, out)
    trained = run_all(first)
    runs = {m: out / m for m in MODELS if trained[f"train {m}"]}
    images = write_test_digits(out / "images", 4)
    commands = {f"evaluate {m}": partial(genlab, "evaluate", run, "--limit", "200", "--no-quality", "--json", *dev)
                for m, run in runs.items()}
    for m in ("vae", "cvae", "cdcgan"):
        if m in runs:
            label = ["--label", "7"] if m != "vae" else []
            commands[f"sample {m} {' '.join(label)}"] = partial(genlab, "sample", runs[m], "-n", "16", *label,
                                                                "--out", out / f"{m}.png", *dev)
    if "dae" in runs:
        commands.update({
            "inpaint dae": partial(genlab, "inpaint", runs["dae"], "--limit", "50", *dev),
            "denoise dae": partial(genlab, "denoise", runs["dae"], "--images", images, "--out", out / "repaired", *dev),
            "energy dae --images": partial(genlab, "energy", runs["dae"], "--images", images, "--out", out / "e.csv",
                                           *dev),
            "energy dae --auroc": partial(genlab, "energy", runs["dae"], "--auroc", "--limit", "200", *dev)})
    run_all(commands)
    run_all({"report (every run; reads files only)": partial(genlab, "report", *runs.values(), "--out", out / "report"),
             "serve: one drawing, every model": partial(serve_one_drawing, list(runs.values()), args.device)})

    failed = [label for label, status, *_ in rows if status != 0]
    if args.json:
        print(json.dumps({"device": args.device, "rows": [dict(zip(("command", "exit", "seconds", "note"), r))
                                                         for r in rows], "failed": failed}))
    else:
        print(f"{len(rows) - len(failed)} of {len(rows)} commands ran on {args.device}"
              + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
