"""The conditional models against their published and internal yardsticks, on full MNIST.

- cvae, ``--condition quadrants``: negative conditional log-likelihood of the unseen quadrants of the 10,000
  test digits for 1, 2, 3 observed quadrants, importance sampled (``--k`` draws of q, default 100) and as the
  bound (-ELBO, one draw), beside Pyro's reproduction of Sohn et al. 2015 (NN baseline 100.4 / 61.9 / 25.4,
  CVAE 71.8 / 51.0 / 24.2 nats, from the ELBO). Target: importance-sampled values below Pyro's CVAE for all three,
  after at most 30 CPU-minutes of training.
- cdcgan: 1,000 samples asked for per class, scored by genlab's MNIST classifier: accuracy (>= 0.95), the FID of
  each class against the real test digits of that class (each within 2x the unconditional DCGAN's overall FID,
  ``--dcgan-fid``, by default the figure of ``benchmarks/gan_quality.py`` in ``benchmarks/RESULTS.md``), and each class's spread
  (mean pairwise pixel distance) over the real class's (no class below 0.5); at most 15 CPU-minutes of training.

Without run directories each model is trained here with the settings of ``genlab reproduce``
(``genlab.reproduce.STAGES``) on one thread, and its training CPU time (``time.process_time``) is measured.

    OMP_NUM_THREADS=1 python benchmarks/conditional.py [--cvae RUN] [--cdcgan RUN] [--k 100] [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from genlab import config as cfgmod
from genlab.checkpoint import load_run
from genlab.data import load_dataset
from genlab.errors import GenlabError, one_line_errors
from genlab.metrics.conditional import DEFAULT_K, evaluate_model, quadrant_nll
from genlab.models import MODELS
from genlab.reproduce import PYRO_TABLE, STAGES
from genlab.train import default_train_config, train

MODEL_NAMES = ("cvae", "cdcgan")
CPU_LIMITS = {"cvae": 30 * 60, "cdcgan": 15 * 60}
DCGAN_FID = 46.6  # benchmarks/gan_quality.py, full MNIST (README "Measured")
SETTINGS = {stage.model: (stage.model_config, stage.train) for stage in STAGES if stage.model in MODEL_NAMES}


def train_setting(name: str, out: Path, data_dir: str | None) -> tuple[Path, float]:
    """Train ``name`` on full MNIST with ``SETTINGS[name]``: (run directory, training CPU seconds)."""
    model_over, train_over = SETTINGS[name]
    cfg = dataclasses.replace(default_train_config(name), dataset="mnist", data_dir=data_dir or "", out=str(out),
                              progress=False, **train_over)
    model_cfg = dataclasses.replace(MODELS[name].Config(), **model_over)
    print(f"training {name} ({cfgmod.to_dict(model_cfg)}; {train_over}) ...", file=sys.stderr, flush=True)
    started = time.process_time()
    run_dir = train(name, model_cfg, cfg)
    return run_dir, time.process_time() - started


def cvae_rows(run_dir: Path, k: int, data_dir: str | None) -> dict:
    run = load_run(run_dir)
    if not getattr(run.model, "quadrants", False):
        raise GenlabError(f"{run_dir} is not a cvae trained with --condition quadrants")
    test = load_dataset("mnist", "test", data_dir)
    return quadrant_nll(run.model, test.images, k)


def cdcgan_rows(run_dir: Path, data_dir: str | None) -> dict:
    run = load_run(run_dir)
    if run.model_name != "cdcgan":
        raise GenlabError(f"{run_dir} holds a {run.model_name}, not a cdcgan")
    return evaluate_model(run.model, "mnist", data_dir)


def reference_rows(data_dir: str | None, per_class: int = 1000) -> dict:
    """The same metrics for ``per_class`` real training digits of each class in place of samples: the floor
    that finite sets of 1,000 give (FID is not 0 between two samples of one distribution)."""
    from genlab.metrics.classifier import get_classifier
    from genlab.metrics.conditional import conditional_quality

    train_set, test = load_dataset("mnist", "train", data_dir), load_dataset("mnist", "test", data_dir)
    idx = torch.cat([(train_set.labels == k).nonzero()[:per_class, 0] for k in range(10)])
    unit = lambda images: images.unsqueeze(1).float() / 255  # noqa: E731
    return conditional_quality(unit(train_set.images[idx]), train_set.labels[idx], unit(test.images), test.labels,
                               get_classifier("mnist", data_dir))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name in MODEL_NAMES:
        ap.add_argument(f"--{name}", default="", metavar="RUN", help=f"a trained {name} run (default: train here)")
    ap.add_argument("--models", nargs="+", default=list(MODEL_NAMES), choices=MODEL_NAMES, help="models to score")
    ap.add_argument("--k", type=int, default=DEFAULT_K, help="importance samples per image and task")
    ap.add_argument("--dcgan-fid", type=float, default=DCGAN_FID, help="the unconditional DCGAN's overall FID")
    ap.add_argument("--data-dir", default=os.environ.get("GENLAB_DATA_DIR", ""), help="directory holding mnist/")
    ap.add_argument("--out", default="", help="where to keep runs trained here (default: a temporary directory)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args(argv)
    if args.k < 1:
        raise GenlabError(f"--k must be at least 1, got {args.k}")
    data_dir = args.data_dir or None
    out = Path(args.out or tempfile.mkdtemp(prefix="genlab-conditional-"))

    results: dict = {"threads": torch.get_num_threads()}
    for name in args.models:
        given = getattr(args, name)
        run_dir, cpu = (Path(given), None) if given else train_setting(name, out / name, data_dir)
        started = time.perf_counter()
        rows = cvae_rows(run_dir, args.k, data_dir) if name == "cvae" else cdcgan_rows(run_dir, data_dir)
        counters = load_run(run_dir).counters
        rows.update(run=str(run_dir), train_cpu_seconds=cpu, train_wall_seconds=counters.get("seconds"),
                    epochs=counters.get("epoch"), eval_seconds=round(time.perf_counter() - started, 1))
        results[name] = rows
    if "cdcgan" in results:
        results["reference"] = reference_rows(data_dir)

    if "cvae" in results:
        r = results["cvae"]
        cpu_ok = r["train_cpu_seconds"] is None or r["train_cpu_seconds"] <= CPU_LIMITS["cvae"]
        r["passed"] = bool(cpu_ok and all(r[f"nll_is_q{t}"] < PYRO_TABLE["CVAE (Pyro)"][t - 1] for t in (1, 2, 3)))
    if "cdcgan" in results:
        r = results["cdcgan"]
        cpu_ok = r["train_cpu_seconds"] is None or r["train_cpu_seconds"] <= CPU_LIMITS["cdcgan"]
        r["passed"] = bool(cpu_ok and r["cond_accuracy"] >= 0.95 and r["cond_fid_max"] <= 2 * args.dcgan_fid
                           and r["cond_spread_min"] >= 0.5)

    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    if "cvae" in results:
        r = results["cvae"]
        print(f"{'quadrant completion, nats':<40}{'1':>9}{'2':>9}{'3':>9}")
        for label, values in PYRO_TABLE.items():
            print(f"{label:<40}" + "".join(f"{v:>9.1f}" for v in values))
        print(f"{'cvae, importance sampled (k = ' + str(r['nll_is_k']) + ')':<40}"
              + "".join(f"{r[f'nll_is_q{t}']:>9.2f}" for t in (1, 2, 3)))
        print(f"{'cvae, bound (-ELBO)':<40}" + "".join(f"{r[f'nll_bound_q{t}']:>9.2f}" for t in (1, 2, 3)))
        print(f"cvae: {r['epochs']} epochs, training CPU s {r['train_cpu_seconds']} (<= {CPU_LIMITS['cvae']}) "
              f"-> {'PASS' if r['passed'] else 'FAIL'}")
    if "cdcgan" in results:
        r = results["cdcgan"]
        print(f"cdcgan: accuracy {r['cond_accuracy']:.4f} (classifier's own test accuracy "
              f"{r['classifier_accuracy']:.4f}; >= 0.95)")
        print("  class FID   " + " ".join(f"{r[f'cond_fid_{k}']:6.1f}" for k in range(10))
              + f"   max {r['cond_fid_max']:.1f} (<= 2 x {args.dcgan_fid} = {2 * args.dcgan_fid:.1f})")
        print("  spread/real " + " ".join(f"{r[f'cond_spread_{k}']:6.3f}" for k in range(10))
              + f"   min {r['cond_spread_min']:.3f} (>= 0.5)")
        ref = results["reference"]
        print("  real train digits (1,000 per class) in place of samples: accuracy "
              f"{ref['cond_accuracy']:.4f}, class FID " + " ".join(f"{ref[f'cond_fid_{k}']:.1f}" for k in range(10)))
        print(f"cdcgan: {r['epochs']} epochs, training CPU s {r['train_cpu_seconds']} (<= {CPU_LIMITS['cdcgan']}) "
              f"-> {'PASS' if r['passed'] else 'FAIL'}")
    return 0


if __name__ == "__main__":
    sys.exit(one_line_errors(main, "conditional.py"))
