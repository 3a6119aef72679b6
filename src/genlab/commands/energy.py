"""``genlab energy RUN_DIR``: per-example energies of a split, or the AUROCs of merged digits and
out-of-distribution inputs with ``--auroc``."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

import genlab.scoring
from genlab.checkpoint import load_run
from genlab.commands.flags import DEVICE_HELP, bounded_int, number_flag, seed_flag
from genlab.config import check_output_folder, write_output
from genlab.errors import GenlabError
from genlab.metrics.anomaly import SPLIT_TITLES, SPLITS, energies, energy_report, report_json, save_energies, split_images


def add(subparsers) -> None:
    p = subparsers.add_parser("energy", help="per-example energies; AUROC for merged and out-of-distribution inputs",
                              description="Print or save a run's per-example energies on the test split, merged "
                                          "test digits, faded test digits (the merged digits' control), patches of "
                                          "sample photographs or the other data set's test split; with --auroc, the "
                                          "AUROC of the energy for each against clean test digits and the "
                                          "histogram and merged-digit figures. With --images, of your own files.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by genlab train")
    splits = ", ".join(f"{name} ({title})" for name, title in SPLIT_TITLES.items())
    p.add_argument("--split", default=None, choices=SPLITS, help=f"inputs to score: {splits} (default: test)")
    p.add_argument("--out", default=None, help="save the energies to FILE.npy or FILE.csv (replaced whole if it exists) instead of printing them")
    p.add_argument("--auroc", action="store_true", help="AUROC of merged and out-of-distribution vs clean, and figures")
    p.add_argument("--figures", default=None, help="directory for the --auroc figures, energy_histograms.png and "
                   "fig8_merged.png, which replace files of those names (default: RUN_DIR/figures)")
    p.add_argument("--limit", type=bounded_int(0), default=0, help="use only the first N images of each split (0: all)")
    p.add_argument("--seed", type=seed_flag, default=0,
                   help="seed of the digit pairing and of stochastic energies")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--images", nargs="+", metavar="PATH", help="score these image files or folders instead: one "
                   "CSV row per file (path, energy, percentile among the held-out energies, flag)")
    p.add_argument("--fpr", type=number_flag, default=None, help="with --images: flag energies above the threshold this "
                   "share of held-out images exceed (default: 0.01)")
    p.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    if args.images:
        # They were ignored in silence, exit 0: the user thought they had asked for something they did not get.
        other = next((flag for flag, given in (("--auroc", args.auroc), ("--split", args.split is not None),
                                               ("--limit", args.limit), ("--figures", args.figures is not None))
                      if given), None)
        if other:
            raise GenlabError(f"{other} applies to the run's own test splits, not with --images (which scores the "
                              "files named); run it as its own genlab energy command")
        return score_images(args)
    if args.figures is not None and not args.auroc:
        raise GenlabError("--figures names where --auroc draws its figures; add --auroc, or leave --figures out")
    args.split = args.split or "test"
    if args.fpr is not None:
        raise GenlabError("--fpr applies with --images (it sets the threshold that flags new images)")
    run = load_run(args.run_dir, device=args.device)
    if args.auroc:
        from genlab.viz import metric_figures

        figs = Path(args.figures) if args.figures else Path(run.dir) / "figures"
        check_output_folder(figs, "--figures DIR")  # before the scoring, which takes minutes
        report = energy_report(run, args.limit, args.seed)
        if args.out and args.split not in report["energies"]:
            raise GenlabError(report["missing"])
        written = [metric_figures.figure_energy_histograms(report, figs / "energy_histograms.png")]
        merged = metric_figures.figure_merged(run.model, split_images(run, "merged", args.limit, args.seed), figs / "fig8_merged.png")
        written += [merged] if merged else []
        if args.out:
            save_energies(report["energies"][args.split], args.out)
        if args.json:
            print(json.dumps(report_json(report), indent=2))
        else:
            ood = (f"{report['ood_dataset']} vs {report['in_dataset']} {report['auroc_ood']:.4f}"
                   if report["auroc_ood"] is not None else f"{report['ood_dataset']} missing")
            print(f"{run.model_name}: AUROC merged vs clean {report['auroc_merged']:.4f}, merged vs faded "
                  f"{report['auroc_merged_vs_faded']:.4f}, photo patches vs clean {report['auroc_photos']:.4f}, {ood}")
            for s in report["energies"]:
                print(f"  mean energy {SPLIT_TITLES[s]:<20} {report['mean_energy'][s]:.4g} (n = {report['n'][s]})")
            if report["missing"]:
                print(f"note: {report['missing']}")
            print("wrote " + ", ".join(map(str, written)))
        return 0
    values = energies(run.model, split_images(run, args.split, args.limit, args.seed), seed=args.seed)
    if args.out:
        path = save_energies(values, args.out)
        if not args.json:
            print(f"wrote {len(values)} energies of the {args.split} split to {path}")
    if args.json:
        print(json.dumps({"model": run.model_name, "split": args.split, "energies": values.tolist()}))
    elif not args.out:
        print("\n".join(f"{v:.9g}" for v in values))
    return 0


def score_images(args: argparse.Namespace) -> int:
    """``genlab energy RUN --images PATH... [--out scores.csv] [--fpr 0.01]``: one CSV row per image file."""
    from genlab.data.files import image_paths
    from genlab.evaluate import finite_or_null

    if args.out and not args.out.endswith(".csv"):
        raise GenlabError(f"--out with --images writes a CSV: give a name ending in .csv, got {args.out}")
    fpr = 0.01 if args.fpr is None else args.fpr
    model = genlab.scoring.load(args.run_dir, args.device)
    paths = image_paths(args.images)
    energy = model._energies(model.images_from_files(paths))
    percentile, threshold = model.percentile(energy), model.threshold(fpr)
    flags = energy > threshold
    held = len(model.heldout_energies())
    if 0 < fpr and fpr * held < 1:  # a one-class run of mnist-5k holds 50: --fpr 0.01 meant "above all 50"
        print(f"note: the threshold rests on {held} held-out images, too few to set a false-positive rate of "
              f"{fpr:g}: it is the highest of their energies, which about 1 in {held + 1} images like them exceed",
              file=sys.stderr)
    if args.out or not args.json:
        table = io.StringIO(newline="")
        writer = csv.writer(table)
        writer.writerow(["path", "energy", "percentile", "flag"])
        for path, e, p, f in zip(paths, energy, percentile, flags):
            writer.writerow([str(path), f"{e:.9g}", f"{p:.2f}", int(f)])
        if args.out:  # surrogateescape: a file name that is not valid UTF-8 is written back as its bytes on disk
            write_output(args.out, table.getvalue().encode("utf-8", "surrogateescape"))
        else:
            sys.stdout.write(table.getvalue())
    if args.json:
        rows = [{"path": str(path), "energy": float(e), "percentile": float(p), "flag": bool(f)}
                for path, e, p, f in zip(paths, energy, percentile, flags)]
        print(json.dumps(finite_or_null({"model": model.run.model_name, "threshold": float(threshold), "fpr": fpr,
                                         "images": rows}), allow_nan=False))
    elif args.out:
        rows = f"{len(paths)} row" + ("s" if len(paths) != 1 else "")
        print(f"wrote {rows} to {args.out}: {int(flags.sum())} flagged above energy {threshold:.6g} "
              f"(held-out false-positive rate {fpr:g})")
    return 0
