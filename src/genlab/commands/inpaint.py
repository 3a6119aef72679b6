"""``genlab inpaint RUN_DIR``: a DAE run against OpenCV's Telea and Navier-Stokes inpainting at p = 0.25, 0.5
and 0.75 (PSNR, SSIM), and the lecture's Fig. 7."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from genlab import config as cfgmod
from genlab.commands.flags import DEVICE_HELP, bounded_int, seed_flag
from genlab.errors import GenlabError
from genlab.metrics.inpainting import DROP_RATES, format_table, inpainting_table, load_dae_run


def add(subparsers) -> None:
    p = subparsers.add_parser("inpaint", help="inpainting benchmark: a DAE run against OpenCV Telea and Navier-Stokes",
                              description="Corrupt the test digits with the lecture's dropout mask at p = 0.25, "
                                          "0.5, 0.75 and compare the DAE with OpenCV inpainting (PSNR, SSIM).")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by genlab train dae")
    p.add_argument("--split", default="test", choices=("test", "train"), help="split to corrupt (default: test)")
    p.add_argument("--limit", type=bounded_int(0), default=0, help="use only the first N images (0: all)")
    p.add_argument("--seed", type=seed_flag, default=0,
                   help="seed of the corruption masks (default: 0)")
    p.add_argument("--json", action="store_true", help="print the table as JSON")
    p.add_argument("--out", default=None, help="directory for fig7_inpainting.png and inpainting.json, "
                                             "which replace files of those names (default: RUN_DIR/figures)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.set_defaults(func=command)


def _run_images(run, split: str, limit: int):
    images = run.dataset(split).images
    return images[:limit] if limit else images


def command(args: argparse.Namespace) -> int:
    from genlab.evaluate import finite_or_null
    from genlab.viz.metric_figures import figure_inpainting

    run = load_dae_run(args.run_dir, args.device)
    if run.model_cfg.shape[0] != 1:
        raise GenlabError(f"inpaint compares the DAE with OpenCV's inpainting on grey images; {run.dir} works on "
                          f"{' x '.join(map(str, run.model_cfg.shape))} colour images (genlab denoise repairs those)")
    out = Path(args.out) if args.out else Path(run.dir) / "figures"
    cfgmod.check_output_folder(out, "--out DIR")  # before the table, which takes a while
    images = _run_images(run, args.split, args.limit)
    table = inpainting_table(run.model, images, DROP_RATES, seed=args.seed)
    with cfgmod.output_folder(out):
        fig = figure_inpainting(run.model, images, out / "fig7_inpainting.png", p=0.5, seed=args.seed)
        # A perfect repair scores an infinite PSNR: JSON has no such number, so it is written as null.
        cfgmod.write_json(out / "inpainting.json", finite_or_null(table))
    if args.json:
        print(json.dumps(finite_or_null(table), indent=2, allow_nan=False))
    else:
        print(format_table(table))
        print(f"wrote {fig} and {out / 'inpainting.json'}")
    return 0
