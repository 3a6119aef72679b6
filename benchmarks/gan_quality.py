"""Sample quality of EBGAN, DCGAN and the lecture's VAE side by side, with the test-vs-train reference row.

Every model draws 10,000 samples; FID, KID, precision and recall compare their features with those of a fixed
10,000-image subset of the MNIST training split, in the feature space of genlab's own digit classifier
(``genlab.metrics.quality``; not comparable with Inception-feature numbers from papers). Coverage is the
smallest share of the 10 classes the classifier assigns; the classifier score is the inception score with it.
The reference row scores the test split itself: what a perfect model would get.

Without run directories each model is trained here on full MNIST, on the CPU, with the settings of
``genlab reproduce`` (``genlab.reproduce.STAGES``), each within 15 minutes on an unloaded 2-core machine:
- ebgan: the lecture's energy, squared error summed over pixels, margin m = 200 (see
  ``genlab.models.ebgan.DEFAULT_MARGINS``), lambda_PT = 0.1, conv generator (ngf = 64) and conv autoencoder
  (ndf = 32, 64-d code), Adam 1e-3 with betas (0.5, 0.999), batch 64, 3 epochs, samples from an EMA (0.999)
  of the generator;
- dcgan: the 28 x 28 variant of the lecture's networks (ngf = ndf = 64, nz = 100), non-saturating BCE, Adam
  5e-4 (the lecture: 2e-4, slower to reach recognisable digits) with betas (0.5, 0.999), batch 64, 2 epochs,
  samples from an EMA (0.999) of the generator;
- vae: the lecture's VAE (784-400-20, BCE summed over pixels + KL), Adam 1e-3, batch 256, 10 epochs, seed 1.

    python benchmarks/gan_quality.py [--ebgan RUN] [--dcgan RUN] [--vae RUN] [--json]

Target: each GAN gives every digit class at least 5% of its samples and a lower FID than the
VAE, after at most 15 minutes of training.
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

from genlab import config as cfgmod
from genlab.checkpoint import load_run
from genlab.errors import one_line_errors
from genlab.metrics.classifier import get_classifier
from genlab.metrics.quality import (REFERENCE_KEYS, cached_reference_row, features_and_probs, model_quality,
                                    reference_images)
from genlab.models import MODELS
from genlab.reproduce import STAGES
from genlab.train import default_train_config, train

MODEL_NAMES = ("ebgan", "dcgan", "vae")
MIN_SHARE, MAX_SECONDS = 0.05, 15 * 60

# model -> (model config overrides, training overrides): those of genlab reproduce, so that the benchmark and
# the report measure the same runs.
SETTINGS = {stage.model: (stage.model_config, stage.train) for stage in STAGES if stage.model in MODEL_NAMES}


def train_setting(name: str, out: Path, data_dir: str | None, epochs: int = 0) -> Path:
    """Train ``name`` on full MNIST with ``SETTINGS[name]`` (``epochs`` > 0 overrides) into ``out``."""
    model_over, train_over = SETTINGS[name]
    train_over = {**train_over, **({"epochs": epochs} if epochs else {})}
    cfg = dataclasses.replace(default_train_config(name), dataset="mnist", data_dir=data_dir or "", out=str(out),
                              figures=False, progress=False, **train_over)
    model_cfg = dataclasses.replace(MODELS[name].Config(), **model_over)
    print(f"training {name} ({cfgmod.to_dict(model_cfg)}; {train_over}) ...", file=sys.stderr, flush=True)
    return train(name, model_cfg, cfg)


def quality_table(runs: dict[str, Path], data_dir: str | None, seed: int = 0) -> dict:
    """Metrics of each run's samples and of the reference row, on one classifier and one reference set."""
    clf = get_classifier("mnist", data_dir)
    reference = features_and_probs(reference_images("mnist", data_dir), clf)
    rows = {}
    for name, run_dir in runs.items():
        run = load_run(run_dir)
        row = model_quality(run.model, "mnist", data_dir, clf, reference, seed)
        row["train_seconds"] = round(float(run.counters.get("seconds", float("nan"))), 1)
        row["run"] = str(run_dir)
        row["model_config"] = cfgmod.to_dict(run.model_cfg)
        row["train_config"] = {k: getattr(run.train_cfg, k) for k in ("lr", "batch_size", "epochs", "seed")}
        rows[name] = row
    rows["reference"] = cached_reference_row("mnist", data_dir, clf, reference)
    return {"rows": rows, "classifier_test_accuracy": clf.test_accuracy}


def acceptance(rows: dict) -> dict:
    vae_fid = rows["vae"]["fid"] if "vae" in rows else float("nan")
    out = {}
    for name in ("ebgan", "dcgan"):
        if name not in rows:
            continue
        r = rows[name]
        out[name] = {"min_class_share": r["min_class_share"], "fid": r["fid"], "vae_fid": vae_fid,
                     "train_seconds": r["train_seconds"],
                     "passed": bool(r["min_class_share"] >= MIN_SHARE and r["fid"] < vae_fid
                                    and r["train_seconds"] <= MAX_SECONDS)}
    return out


def format_table(table: dict) -> str:
    cols = ("fid", "kid", "precision", "recall", "min_class_share", "classifier_score")
    head = f"{'model':<11}" + "".join(f"{c:>17}" for c in cols) + f"{'train s':>10}"
    lines = [head, "-" * len(head)]
    for name, r in table["rows"].items():
        label = "test/train" if name == "reference" else name
        secs = f"{r['train_seconds']:>10.0f}" if "train_seconds" in r else f"{'':>10}"
        lines.append(f"{label:<11}" + "".join(f"{r[c]:>17.4f}" for c in cols) + secs)
    lines.append("class shares: " + "; ".join(
        f"{name} " + " ".join(f"{s:.3f}" for s in r["class_shares"]) for name, r in table["rows"].items()))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name in MODEL_NAMES:
        ap.add_argument(f"--{name}", default="", metavar="RUN", help=f"a trained {name} run directory "
                                                                     f"(default: train it here)")
    ap.add_argument("--models", nargs="+", default=list(MODEL_NAMES), choices=MODEL_NAMES, help="models to score")
    ap.add_argument("--epochs", type=int, default=0, help="override every model's training epochs (0: SETTINGS)")
    ap.add_argument("--data-dir", default=os.environ.get("GENLAB_DATA_DIR", ""), help="directory holding mnist/")
    ap.add_argument("--out", default="", help="where to keep runs trained here (default: a temporary directory)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the 10,000 samples")
    ap.add_argument("--json", action="store_true", help="print the whole table as JSON")
    args = ap.parse_args(argv)

    start = time.perf_counter()
    data_dir = args.data_dir or None
    out = Path(args.out or tempfile.mkdtemp(prefix="genlab-gan-quality-"))
    runs = {}
    for name in args.models:
        given = getattr(args, name)
        runs[name] = Path(given) if given else train_setting(name, out / name, data_dir, args.epochs)
    table = quality_table(runs, data_dir, args.seed)
    table["acceptance"] = acceptance(table["rows"])
    table["reference_keys"] = list(REFERENCE_KEYS)
    table["seconds"] = round(time.perf_counter() - start, 1)
    if args.json:
        print(json.dumps(table, indent=2))
    else:
        print(format_table(table))
        for name, a in table["acceptance"].items():
            print(f"{name}: min class share {a['min_class_share']:.3f} (>= {MIN_SHARE}), FID {a['fid']:.2f} vs VAE "
                  f"{a['vae_fid']:.2f}, trained {a['train_seconds']:.0f} s (<= {MAX_SECONDS}) -> "
                  f"{'PASS' if a['passed'] else 'FAIL'}")
    return 0


if __name__ == "__main__":
    sys.exit(one_line_errors(main, "gan_quality.py"))
