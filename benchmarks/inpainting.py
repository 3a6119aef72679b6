"""Inpainting: the lecture's denoising autoencoder against OpenCV Telea and Navier-Stokes (radius 3).

Every method fills the same lecture dropout corruption of the test digits at p = 0.25, 0.5 and 0.75; the
table gives mean PSNR (dB, [0, 1] scale) and SSIM over the whole image and over the dropped pixels only (the
protocol is in ``genlab.metrics.inpainting``). Without ``--run`` the lecture-setting DAE (d = 500, dropout
p = 0.5, Adam 1e-3, batch 256, 20 epochs on MNIST) is trained first, a few minutes on a CPU.

    python benchmarks/inpainting.py [--run RUN_DIR] [--limit N] [--epochs E] [--json]

Target: at p = 0.5 the DAE's PSNR is at least the better classical method's + 1.0 dB.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time

from genlab import config as cfgmod
from genlab.checkpoint import load_run
from genlab.errors import one_line_errors
from genlab.metrics.inpainting import DROP_RATES, format_table, inpainting_table, load_dae_run
from genlab.models.dae import DAEConfig
from genlab.train import default_train_config, train

MARGIN_DB = 1.0


def train_lecture_dae(out: str, epochs: int) -> str:
    """The lecture's DAE: d = 500, the {0, 2} dropout mask at p = 0.5, MSE, Adam 1e-3, batch 256, on MNIST."""
    cfg = dataclasses.replace(default_train_config("dae"), dataset="mnist", epochs=epochs, batch_size=256, lr=1e-3,
                              optimizer="adam", out=out, figures=False, progress=False)
    return str(train("dae", DAEConfig(latent_dim=500, corruption="dropout", noise=0.5, arch="mlp"), cfg))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default="", help="a trained dae run directory (default: train the lecture's DAE)")
    ap.add_argument("--limit", type=int, default=0, help="use only the first N test digits (0: all 10,000)")
    ap.add_argument("--epochs", type=int, default=20, help="epochs when training the DAE here (default: 20)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the corruption masks")
    ap.add_argument("--json", action="store_true", help="print the whole table as JSON")
    args = ap.parse_args(argv)

    start = time.perf_counter()
    run_dir = args.run or train_lecture_dae(tempfile.mkdtemp(prefix="genlab-dae-"), args.epochs)
    run = load_dae_run(run_dir) if args.run else load_run(run_dir)
    images = run.dataset("test").images
    images = images[:args.limit] if args.limit else images
    table = inpainting_table(run.model, images, DROP_RATES, seed=args.seed)

    r = table["results"]
    best_classical = max(r["telea"]["0.5"]["psnr"], r["ns"]["0.5"]["psnr"])
    table["run"] = run_dir
    table["model_config"] = cfgmod.to_dict(run.model_cfg)
    table["acceptance"] = {"dae_psnr_p0.5": r["dae"]["0.5"]["psnr"], "best_classical_psnr_p0.5": best_classical,
                           "margin_db": MARGIN_DB, "passed": r["dae"]["0.5"]["psnr"] >= best_classical + MARGIN_DB}
    table["seconds"] = round(time.perf_counter() - start, 1)
    if args.json:
        print(json.dumps(table, indent=2))
    else:
        print(format_table(table))
        a = table["acceptance"]
        print(f"p = 0.5: DAE {a['dae_psnr_p0.5']:.2f} dB vs best classical {best_classical:.2f} dB + {MARGIN_DB} "
              f"-> {'PASS' if a['passed'] else 'FAIL'}  (run {run_dir}, {table['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(one_line_errors(main, "inpainting.py"))
