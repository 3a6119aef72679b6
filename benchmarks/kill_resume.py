"""kill -9 at random moments of a run with many short epochs, each followed by ``genlab train --resume``: the
final checkpoint and ``metrics.jsonl`` must equal an uninterrupted run's.

One reference run trains straight through; its training phase is timed from its first checkpoint (after
start-up, data loading and epoch 1) to its exit. Then each trial starts the same run in a fresh directory, waits
for its first checkpoint, kills it with SIGKILL after a uniformly random further delay within the reference's
training phase (so the kills land in training, evaluation, checkpoint writes and log appends rather than in
Python's start-up), notes what the kill left (the checkpoint's epoch, the lines logged, any half-written
``.checkpoint-*.tmp``), and resumes it. Checked per trial: every tensor of the final checkpoint equals
the reference's, ``metrics.jsonl`` equals the reference's without its timing fields, no epoch is logged twice,
no temporary file is left.

    python benchmarks/kill_resume.py [--trials 20] [--seed 0] [--model ae] [--epochs 30]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
TIMING = ("seconds", "images_per_s")


def command(model: str, epochs: int, out: Path) -> list[str]:
    return [sys.executable, "-m", "genlab.cli", "train", model, "--dataset", "mnist-5k", "--limit", "512",
            "--batch-size", "64", "--epochs", str(epochs), "--eval-limit", "200", "--no-figures", "--no-progress",
            "--out", str(out)]


def resume_command(out: Path) -> list[str]:
    return [sys.executable, "-m", "genlab.cli", "train", "--resume", str(out)]


def run(argv) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=600)


def metrics(out: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (out / "metrics.jsonl").read_text().splitlines()]


def wait_for(path: Path, proc: subprocess.Popen) -> float:
    """Poll until ``path`` exists (or ``proc`` ends); the time it appeared."""
    while not path.exists() and proc.poll() is None:
        time.sleep(0.02)
    return time.perf_counter()


def checkpoint_epoch(out: Path) -> int | None:
    try:
        with safe_open(str(out / "checkpoint.safetensors"), framework="pt") as f:
            return json.loads(f.metadata()["counters"])["epoch"]
    except Exception:  # noqa: BLE001 - absent or being replaced: reported as "none"
        return None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    p.add_argument("--model", default="ae")
    p.add_argument("--epochs", type=int, default=30)
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="genlab-kill-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        ref = subprocess.Popen(command(args.model, args.epochs, root / "ref"), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
        first = wait_for(root / "ref" / "checkpoint.safetensors", ref)
        _, err = ref.communicate(timeout=600)
        wall, training = time.perf_counter() - started, time.perf_counter() - first
        if ref.returncode:
            print(err, file=sys.stderr)
            return 1
        want_metrics, want_tensors = metrics(root / "ref"), load_file(str(root / "ref" / "checkpoint.safetensors"))
        print(f"reference: {args.model}, {args.epochs} epochs of 8 batches, {wall:.1f} s wall, of which "
              f"{training:.1f} s after its first checkpoint")
        print("| trial | kill s after first checkpoint | checkpoint epoch at kill | lines logged at kill | temporary files at kill "
              "| then | final tensors equal | metrics equal | epochs logged twice | temporary files left |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        failures = 0
        for trial in range(1, args.trials + 1):
            out = root / f"t{trial}"
            delay = rng.uniform(0.0, training)
            proc = subprocess.Popen(command(args.model, args.epochs, out), stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            wait_for(out / "checkpoint.safetensors", proc)
            time.sleep(delay)
            proc.kill()
            proc.wait()
            at_kill = (checkpoint_epoch(out), len((out / "metrics.jsonl").read_text().splitlines())
                       if (out / "metrics.jsonl").exists() else 0, len(list(out.glob(".checkpoint-*.tmp"))))
            # Resume; a run killed before its first checkpoint is started again (genlab refuses --resume there).
            then = "--resume" if at_kill[0] is not None else "start again"
            result = run(resume_command(out) if at_kill[0] is not None else command(args.model, args.epochs, out))
            if result.returncode:
                print(f"trial {trial}: the resume failed: {result.stderr.strip()}", file=sys.stderr)
            got_tensors = load_file(str(out / "checkpoint.safetensors"))
            tensors_equal = set(got_tensors) == set(want_tensors) and all(
                torch.equal(got_tensors[k], want_tensors[k]) for k in want_tensors)
            got_metrics = metrics(out)
            epochs = [m["epoch"] for m in got_metrics]
            twice = len(epochs) - len(set(epochs))
            left = len(list(out.glob(".checkpoint-*.tmp")))
            ok = result.returncode == 0 and tensors_equal and got_metrics == want_metrics and not twice and not left
            failures += not ok
            print(f"| {trial} | {delay:.2f} | {at_kill[0] if at_kill[0] is not None else 'none'} | {at_kill[1]} | "
                  f"{at_kill[2]} | {then} | {tensors_equal} | {got_metrics == want_metrics} | {twice} | {left} |")
        print(f"\n{args.trials} kills: {args.trials - failures} resumed to the reference exactly, {failures} did not")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
