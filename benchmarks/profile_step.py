"""Where a training step's time goes: PyTorch's profiler over genlab's real training loop, for one model and
batch size. Prints the operators by host (self CPU) time, the kernels launched and the device time per step,
and writes a trace for chrome://tracing or Perfetto.

On a GPU this tells a step bound by the host (kernel launches, Python) from one bound by the card: the
device busy for a small share of the wall time means the host is the limit.

    python benchmarks/profile_step.py OUT_DIR [--model vae] [--batch 1024] [--steps 40] [--device cuda] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from genlab import config as cfgmod
from genlab.errors import GenlabError, one_line_errors
from genlab.models import MODELS
from genlab.train import default_train_config, train


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for the trace")
    parser.add_argument("--model", default="vae", choices=sorted(MODELS))
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=40, help="steps profiled (after an epoch to warm up)")
    parser.add_argument("--device", default="cuda", choices=("cpu", "cuda"))
    parser.add_argument("--dataset", default="auto")
    parser.add_argument("--json", action="store_true", help="the summary as JSON, without the operator table")
    args = parser.parse_args()
    if args.batch < 1 or args.steps < 1:
        parser.error("--batch and --steps must be at least 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise GenlabError("--device cuda: no CUDA GPU here")
    args.out.mkdir(parents=True, exist_ok=True)

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
    with tempfile.TemporaryDirectory() as work:
        options = {**cfgmod.to_dict(default_train_config(args.model)), "batch_size": args.batch,
                   "limit": args.batch * args.steps, "eval_limit": 200, "device": args.device, "figures": False,
                   "progress": False, "dataset": args.dataset}
        warm = cfgmod.from_dict(cfgmod.TrainConfig, {**options, "epochs": 1, "out": f"{work}/warm"})
        train(args.model, MODELS[args.model].Config(), warm)  # kernels chosen, memory pools filled
        run = cfgmod.from_dict(cfgmod.TrainConfig, {**options, "epochs": 1, "out": f"{work}/run"})
        with profile(activities=activities) as prof:
            began = time.perf_counter()
            train(args.model, MODELS[args.model].Config(), run)
            wall = time.perf_counter() - began
    events = prof.key_averages()
    if not args.json:
        print(events.table(sort_by="self_cpu_time_total", row_limit=25))
    device_us = sum(e.self_device_time_total for e in events) if args.device == "cuda" else 0.0
    kernels = sum(e.count for e in events if e.device_type == torch.autograd.DeviceType.CUDA) \
        if args.device == "cuda" else 0
    name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    trace = args.out / f"trace-{args.model}-b{args.batch}-{args.device}.json"
    prof.export_chrome_trace(str(trace))
    if args.json:
        print(json.dumps({"model": args.model, "batch": args.batch, "steps": args.steps,
                          "device": f"{name}, PyTorch {torch.__version__}", "wall_ms_per_step": 1e3 * wall / args.steps,
                          "device_ms_per_step": device_us / 1e3 / args.steps if args.device == "cuda" else None,
                          "kernels_per_step": kernels / args.steps if args.device == "cuda" else None,
                          "trace": str(trace)}))
        return 0
    print(f"{args.model} batch {args.batch}, {args.steps} steps plus one evaluation and one checkpoint "
          f"({name}, PyTorch {torch.__version__}): {1e3 * wall / args.steps:.2f} ms wall a step"
          + (f", device busy {device_us / 1e3 / args.steps:.2f} ms a step, {kernels / args.steps:.0f} kernels "
             "a step" if args.device == "cuda" else ""))
    print(f"trace: {trace}")
    return 0


if __name__ == "__main__":
    sys.exit(one_line_errors(main, "profile_step.py"))
