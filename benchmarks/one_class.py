"""One-class anomaly detection on MNIST and Fashion-MNIST: the energy of a model trained on one class.

The protocol of the deep anomaly-detection literature (Ruff et al. 2018, Golan & El-Yaniv 2018, Gong et al.
2019): for each class c, train on the training images of class c only (about 6,000), give every image of the
test split (10,000, all classes) its energy, and report the AUROC of the energy separating class c (normal,
low energy) from the other nine (anomalies, the positive class), per class and averaged over the ten classes.
Training goes through genlab's own loop (``--classes c``); the fixed schedule per model (``SCHEDULE``) is
printed with the results, beside published results of the same protocol (``PUBLISHED``).

    python benchmarks/one_class.py [--datasets mnist,fashion-mnist] [--models ae,dae,vae] [--classes 0,...,9]
                                   [--epochs E] [--seed S] [--json] [--out results.json]

``--epochs`` overrides every model's epochs (for quick checks; the reported table uses the schedule).
Needs both data sets on disk (``GENLAB_DATA_DIR``). Set ``OMP_NUM_THREADS`` to choose the threads.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from genlab.commands.flags import bounded_int
from genlab import config as cfgmod
from genlab.checkpoint import load_run
from genlab.data import load_dataset
from genlab.errors import GenlabError, one_line_errors
from genlab.metrics.anomaly import energies
from genlab.models import MODELS
from genlab.train import default_train_config, train

DATASETS = ("mnist", "fashion-mnist")

# One fixed schedule per model, the same for every class and both data sets (chosen on MNIST classes 2, 3, 5
# and 8 before the full run): Adam 1e-3, batch 64, 30 epochs of the ~6,000 images of one class.
SCHEDULE = {
    "ae": {"model": {"latent_dim": 32}, "train": {"epochs": 30, "batch_size": 64, "lr": 1e-3}},
    "dae": {"model": {"latent_dim": 32, "corruption": "gaussian", "noise": 0.5, "arch": "mlp"},
            "train": {"epochs": 30, "batch_size": 64, "lr": 1e-3}},
    "vae": {"model": {"latent_dim": 16, "hidden": 400, "arch": "mlp", "tsne_epochs": ""},
            "train": {"epochs": 30, "batch_size": 64, "lr": 1e-3}},
}

# Published AUROCs (%) of the same protocol, per class 0..9 and the mean over the ten classes.
PUBLISHED: dict[str, list[dict]] = {
    "mnist": [
        {"method": "Deep SVDD (one-class)",
         "per_class": [98.0, 99.7, 91.7, 91.9, 94.9, 88.5, 98.3, 94.6, 93.9, 96.5], "mean": 94.8,
         "source": "Ruff et al., Deep One-Class Classification, ICML 2018, Table 1 (one-class Deep SVDD)"},
    ],
    "fashion-mnist": [],
}


def parse_list(text: str, allowed, what: str) -> list:
    items = [t for t in text.replace(" ", "").split(",") if t]
    bad = [t for t in items if t not in allowed]
    if bad or not items:
        raise GenlabError(f"--{what} takes a comma-separated subset of {','.join(allowed)}, got {text!r}")
    return items


def one_class_auroc(model_name: str, dataset: str, label: int, test, work: str, seed: int,
                    epochs: int = 0) -> dict:
    """Train ``model_name`` on the training images of class ``label`` and return the AUROC (%) of its energy
    on the whole test split (anomaly: label != ``label``), with the training's CPU and wall seconds."""
    plan = SCHEDULE[model_name]
    model_cfg = MODELS[model_name].Config(**plan["model"])
    train_cfg = dataclasses.replace(
        default_train_config(model_name), dataset=dataset, classes=str(label), seed=seed, device="cpu",
        out=os.path.join(work, f"{model_name}-{dataset}-{label}"), figures=False, progress=False,
        eval_limit=500, **{**plan["train"], **({"epochs": epochs} if epochs else {})})
    cpu, wall = time.process_time(), time.perf_counter()
    run_dir = train(model_name, model_cfg, train_cfg)
    model = load_run(run_dir).model
    energy = energies(model, test.images)
    anomaly = (test.labels.numpy() != label).astype(np.int64)
    if not np.isfinite(energy).all():
        raise GenlabError(f"{model_name} on {dataset} class {label} gave non-finite energies")
    return {"auroc": 100.0 * float(roc_auc_score(anomaly, energy)),
            "cpu_s": time.process_time() - cpu, "wall_s": time.perf_counter() - wall}


def format_tables(result: dict) -> str:
    lines = []
    for dataset, block in result["datasets"].items():
        classes = block["classes"]
        head = f"{'':34s}" + "".join(f"{c:>6d}" for c in classes) + f"{'mean':>7s}"
        lines += [f"{dataset}: AUROC (%) of the energy, class c normal vs the rest", head]
        for name, row in block["genlab"].items():
            lines.append(f"{'genlab ' + name:34s}" + "".join(f"{row['per_class'][str(c)]:6.1f}" for c in classes)
                         + f"{row['mean']:7.1f}")
        for pub in PUBLISHED.get(dataset, []):
            per = pub["per_class"]
            cells = "".join(f"{per[c]:6.1f}" if per and per[c] is not None else f"{'-':>6s}" for c in classes)
            lines.append(f"{pub['method'][:34]:34s}" + cells + f"{pub['mean']:7.1f}")
        lines.append("")
    for dataset in result["datasets"]:
        for pub in PUBLISHED.get(dataset, []):
            lines.append(f"{dataset} / {pub['method']}: {pub['source']}")
    lines.append("schedule: " + json.dumps(result["schedule"]))
    lines.append(f"CPU {result['cpu_s'] / 60:.1f} min, wall {result['wall_s'] / 60:.1f} min, "
                 f"{result['threads']} thread(s), torch {result['torch']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated: mnist, fashion-mnist")
    ap.add_argument("--models", default=",".join(SCHEDULE), help=f"comma-separated: {', '.join(SCHEDULE)}")
    ap.add_argument("--classes", default="0,1,2,3,4,5,6,7,8,9", help="comma-separated normal classes")
    ap.add_argument("--epochs", type=bounded_int(1, 10_000), default=0,
                    help="override every model's epochs (default: the schedule's)")
    ap.add_argument("--seed", type=bounded_int(0, 2**32 - 1), default=0, help="training seed")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--out", default="", help="also write the results as JSON to this file")
    args = ap.parse_args(argv)
    datasets = parse_list(args.datasets, DATASETS, "datasets")
    models = parse_list(args.models, tuple(SCHEDULE), "models")
    classes = [int(c) for c in parse_list(args.classes, tuple("0123456789"), "classes")]
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1") or 1))

    schedule = {m: {k: dict(v) for k, v in SCHEDULE[m].items()} for m in models}
    if args.epochs:
        for m in models:
            schedule[m]["train"]["epochs"] = args.epochs
    say = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    say("schedule: " + json.dumps(schedule))
    cpu0, wall0 = time.process_time(), time.perf_counter()
    result = {"schedule": schedule, "seed": args.seed, "threads": torch.get_num_threads(),
              "torch": torch.__version__, "datasets": {}}
    with tempfile.TemporaryDirectory(prefix="genlab-one-class-") as work:
        for dataset in datasets:
            test = load_dataset(dataset, "test")
            block = result["datasets"][dataset] = {"classes": classes, "genlab": {}}
            for name in models:
                row = block["genlab"][name] = {"per_class": {}, "cpu_s": 0.0, "wall_s": 0.0}
                for c in classes:
                    r = one_class_auroc(name, dataset, c, test, work, args.seed, args.epochs)
                    row["per_class"][str(c)] = r["auroc"]
                    row["cpu_s"] += r["cpu_s"]
                    row["wall_s"] += r["wall_s"]
                    say(f"{dataset} {name} class {c}: AUROC {r['auroc']:.1f}%  ({r['cpu_s']:.0f} CPU-s, "
                        f"{r['wall_s']:.0f} s; total {(time.perf_counter() - wall0) / 60:.1f} min)")
                row["mean"] = float(np.mean(list(row["per_class"].values())))
                say(f"{dataset} {name}: mean AUROC {row['mean']:.1f}%")
    result["cpu_s"], result["wall_s"] = time.process_time() - cpu0, time.perf_counter() - wall0
    result["published"] = {d: PUBLISHED.get(d, []) for d in datasets}
    if args.out:
        cfgmod.write_json(args.out, result)
    print(json.dumps(result, indent=2) if args.json else format_tables(result))
    return 0


if __name__ == "__main__":
    sys.exit(one_line_errors(main, "one_class.py"))
