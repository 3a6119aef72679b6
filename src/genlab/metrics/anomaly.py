"""Energies as anomaly scores: merged digits (the lecture's Fig. 8) and out-of-distribution inputs.

An energy-based model should give low energy on the data manifold and high energy off it. Two tests:

- merged digits: the lecture averages two test digits 50/50; the result is no digit, and the DAE cannot map it
  back to one, so its reconstruction error (energy) is high. AUROC of the energy separating merged from clean
  test digits.
- out of distribution: 28 x 28 grey patches of the sample photographs that scikit-learn and scikit-image ship
  (``photos``, always at hand), and, where its files are on disk, the other data set's test split (``ood``:
  Fashion-MNIST for a model of digits, MNIST for a model of clothes). A missing data set leaves its
  comparison out with one line saying how to get it; it never fails the report.

In both, the anomalous inputs are the positive class and the energy is the score: AUROC 1 means every
anomalous input has a higher energy than every clean one, 0.5 is chance.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from genlab.errors import GenlabError
from genlab.rng import seeded

SPLITS = ("test", "merged", "photos", "ood")
SPLIT_TITLES = {"test": "clean test digits", "merged": "merged digits", "photos": "photo patches",
                "ood": "other data set"}


def _numpy(a) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


# -- inputs ------------------------------------------------------------------------------------------------
def merged_pairs(n: int, seed: int = 0, labels=None, tries: int = 100) -> np.ndarray:
    """A fixed random partner ``j[i] != i`` for each of ``n`` images: int [n].

    With ``labels`` ([n]) partners also have a different label, so every merged image mixes two different
    digits (two 1s averaged would still look like a digit). Partners are drawn uniformly with a generator
    seeded with ``seed``, and redrawn where they break the rule.
    """
    if n < 2:
        raise GenlabError(f"merging digits needs at least 2 images, got {n}")
    rng = np.random.default_rng(seed)
    labels = None if labels is None else _numpy(labels).reshape(-1)
    if labels is not None and len(np.unique(labels)) < 2:
        raise GenlabError("merging digits with different labels needs at least two distinct labels")
    idx = np.arange(n)
    partner = rng.integers(0, n, size=n)
    for _ in range(tries):
        bad = partner == idx
        if labels is not None:
            bad |= labels[partner] == labels
        if not bad.any():
            return partner
        partner[bad] = rng.integers(0, n, size=int(bad.sum()))
    raise GenlabError(f"could not pair {n} images with partners of a different label; too few distinct labels")


def merged_digits(images_u8, seed: int = 0, labels=None) -> torch.Tensor:
    """The lecture's merged digits: each image averaged 50/50 with a fixed random partner.

    :param images_u8: uint8 [N x 28 x 28].
    :param labels: optional int [N]; when given (preferred) each partner has a different label.
    :return: uint8 [N x 28 x 28], ``(a + b + 1) // 2``: the exact average rounded half up.

    Every pixel map genlab uses (``x / 255`` or ``x / 127.5 - 1``) is affine, so averaging the 8-bit values
    and then mapping is the same as the lecture's averaging on the model's scale, up to this rounding (at most
    half a grey level, 1/510 on [0, 1]). Keeping uint8 lets merged digits go through the same pipeline as
    every other split.
    """
    u = torch.as_tensor(_numpy(images_u8))
    if u.dtype != torch.uint8 or u.ndim != 3:
        raise GenlabError(f"merged_digits needs uint8 images [N x 28 x 28], got {u.dtype} {list(u.shape)}")
    partner = torch.as_tensor(merged_pairs(len(u), seed, labels))
    return ((u.int() + u[partner].int() + 1) // 2).to(torch.uint8)


# -- energies ----------------------------------------------------------------------------------------------
def energies(model, images_u8, batch_size: int = 1000, seed: int = 0) -> np.ndarray:
    """``model.energy`` of uint8 images [N x 28 x 28] in the model's pixel range: float64 [N].

    No gradients; the model is put in eval mode. The global random state is forked and seeded with ``seed``
    so a stochastic energy (a sampled latent, for example) is reproducible and leaves the caller's RNG alone.
    Whether the value is a sum or a mean over pixels is the model's (see its ``energy`` docstring).
    """
    from genlab.data.batching import to_pixels

    model.eval()
    u = torch.as_tensor(_numpy(images_u8))
    device = model.device
    out = []
    with torch.no_grad(), seeded(seed):
        for i in range(0, len(u), batch_size):
            x = to_pixels(u[i:i + batch_size], model.pixel_range).to(device)
            try:
                e = model.energy(x)
            except NotImplementedError:
                raise GenlabError(f"{type(model).__name__} defines no energy, so it has no anomaly score") from None
            out.append(e.double().cpu())
    return torch.cat(out).numpy() if out else np.zeros(0)


def auroc(energy_in, energy_out) -> float:
    """AUROC of the energy separating anomalous inputs (``energy_out``, the positive class) from clean ones.

    The probability that a random anomalous input has a higher energy than a random clean one (ties count
    half); scikit-learn's ``roc_auc_score``.
    """
    e_in, e_out = _numpy(energy_in).reshape(-1), _numpy(energy_out).reshape(-1)
    if len(e_in) == 0 or len(e_out) == 0:
        raise GenlabError("AUROC needs at least one clean and one anomalous energy")
    if not (np.isfinite(e_in).all() and np.isfinite(e_out).all()):
        raise GenlabError("AUROC needs finite energies; the model gave NaN or infinite energies")
    y = np.concatenate([np.zeros(len(e_in)), np.ones(len(e_out))])
    from sklearn.metrics import roc_auc_score  # imported here: scikit-learn takes seconds to import
    return float(roc_auc_score(y, np.concatenate([e_in, e_out])))


# -- a run's data ------------------------------------------------------------------------------------------
def _data_dir(run) -> str | None:
    return getattr(run.train_cfg, "data_dir", "") or None


def in_distribution_name(run) -> str:
    """The data set a run was trained on, as ``load_dataset`` names it."""
    from genlab.data import resolve_dataset_name

    return resolve_dataset_name(run.train_cfg.dataset, _data_dir(run))


def ood_name(in_name: str) -> str:
    """The out-of-distribution data set for a model trained on ``in_name``."""
    return "mnist" if in_name == "fashion-mnist" else "fashion-mnist"


def run_dataset(run, split: str = "test", name: str | None = None):
    """``genlab.data.load_dataset`` of the run's training data set (or ``name``) and ``split``."""
    from genlab.data import load_dataset, run_dataset

    return load_dataset(name, split, _data_dir(run)) if name else run_dataset(run.train_cfg, split)


def split_images(run, split: str, limit: int = 0, seed: int = 0, download: bool = True) -> torch.Tensor:
    """uint8 [N x 28 x 28] inputs for ``split``: "test" (the run's test split), "merged" (merged test digits),
    "photos" (patches of the shipped sample photographs; 2,000, or ``limit``) or "ood" (the other data set's
    test split, downloaded when missing unless ``download`` is False); the first ``limit`` of them (0: all)."""
    if split not in SPLITS:
        raise GenlabError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    shape = tuple(getattr(run.model_cfg, "shape", (1, 28, 28)))
    if split in ("photos", "ood") and shape != (1, 28, 28):
        raise GenlabError(f"--split {split} and --auroc compare with 28 x 28 grey images, but this run works on "
                          f"{' x '.join(map(str, shape))} images; score images of your own with --images PATH")
    if split == "photos":
        from genlab.data.photos import photo_patches
        return photo_patches(limit or 2000, seed)
    if split == "ood":
        from genlab.data import load_dataset
        images = load_dataset(ood_name(in_distribution_name(run)), "test", _data_dir(run), download=download).images
    else:
        data = run_dataset(run, "test")
        images, labels = data.images, data.labels
        if limit:
            images, labels = images[:limit], labels[:limit]
        if split == "merged":
            images = merged_digits(images, seed, labels)
    return images[:limit] if limit else images


def energy_report(run, limit: int = 0, seed: int = 0, batch_size: int = 1000) -> dict:
    """Energies of the clean test split, merged test digits, photo patches and, when its files are on disk,
    the other data set's test split (nothing is downloaded here).

    :return: ``{"model", "in_dataset", "ood_dataset", "n": {split: N}, "mean_energy": {split: float},
        "auroc_merged", "auroc_photos", "auroc_ood" (None when the other data set is missing), "missing" (one
        line saying which comparison is left out and how to get it, or None), "energies": {split: float64 [N]}}``
        (the arrays are left out of ``report_json``).
    """
    from genlab.data import DataError, how_to_get

    in_name = in_distribution_name(run)
    other = ood_name(in_name)
    e, missing = {}, None
    for s in SPLITS:
        try:
            images = split_images(run, s, limit, seed, download=False)
        except DataError:
            if s != "ood":
                raise
            missing = f"the {other} comparison is left out: {how_to_get(other, _data_dir(run))}"
            continue
        e[s] = energies(run.model, images, batch_size, seed)
    return {
        "model": run.model_name,
        "in_dataset": in_name,
        "ood_dataset": other,
        "n": {s: int(len(v)) for s, v in e.items()},
        "mean_energy": {s: float(v.mean()) for s, v in e.items()},
        "auroc_merged": auroc(e["test"], e["merged"]),
        "auroc_photos": auroc(e["test"], e["photos"]),
        "auroc_ood": auroc(e["test"], e["ood"]) if "ood" in e else None,
        "missing": missing,
        "energies": e,
    }


def report_json(report: dict) -> dict:
    """The report without the per-example arrays, ready for ``json.dumps``."""
    return {k: v for k, v in report.items() if k != "energies"}


# -- figures -----------------------------------------------------------------------------------------------
def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def figure_merged(model, merged_u8, path, n: int = 8) -> Path | None:
    """The lecture's Fig. 8: ``n`` merged digits (top row) and the model's reconstructions (bottom row).

    Returns None (and writes nothing) for a model that does not reconstruct.
    """
    from genlab.data.batching import to_pixels

    u = torch.as_tensor(_numpy(merged_u8))[:n]
    x = to_pixels(u, model.pixel_range).to(model.device)
    model.eval()
    try:
        with torch.no_grad():
            y = model.reconstruct(x).float().cpu()
    except NotImplementedError:
        return None
    lo, hi = (-1.0, 1.0) if model.pixel_range == "tanh" else (0.0, 1.0)
    plt = _plt()
    k = len(u)
    fig, axes = plt.subplots(2, k, figsize=(1.2 * k + 1.2, 2.6), squeeze=False)
    for j in range(k):
        axes[0, j].imshow(u[j].numpy(), cmap="gray", vmin=0, vmax=255)
        axes[1, j].imshow(y[j, 0].numpy(), cmap="gray", vmin=lo, vmax=hi)
        for ax in axes[:, j]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_ylabel("merged", fontsize=9)
    axes[1, 0].set_ylabel("reconstruction", fontsize=9)
    fig.tight_layout()
    from genlab.viz.figures import save_figure
    return save_figure(fig, path)


def figure_energy_histograms(report: dict, path) -> Path:
    """Energy histograms of clean, merged and out-of-distribution inputs, overlaid, for one model."""
    plt = _plt()
    e = report["energies"]
    pooled = np.concatenate(list(e.values()))
    # Shared bins over the bulk of the pooled energies (a few huge values would squash every histogram);
    # logarithmic when all energies are positive, since out-of-distribution energies can be 10x the clean ones.
    lo, hi = np.percentile(pooled, [0.0, 99.9])
    hi = hi if hi > lo else lo + 1.0
    log = lo > 0
    bins = np.geomspace(lo, hi, 60) if log else np.linspace(lo, hi, 60)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if log:
        ax.set_xscale("log")
    names = {"test": f"{report['in_dataset']} test", "merged": "merged digits", "photos": "photo patches",
             "ood": f"{report['ood_dataset']} test"}
    for s in e:
        ax.hist(np.clip(e[s], bins[0], bins[-1]), bins=bins, density=True, histtype="stepfilled", alpha=0.4,
                label=f"{names[s]} (n = {len(e[s])})")
    ax.set_xlabel("energy")
    ax.set_ylabel("density")
    ax.set_title(f"{report['model']}: " + ", ".join(f"AUROC {label} {report[key]:.3f}" for key, label in (
        ("auroc_merged", "merged"), ("auroc_photos", "photos"), ("auroc_ood", report["ood_dataset"]))
        if report[key] is not None), fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    from genlab.viz.figures import save_figure
    return save_figure(fig, path)


# -- command line ------------------------------------------------------------------------------------------
def save_energies(values: np.ndarray, path) -> Path:
    """Write per-example energies to ``.npy`` or ``.csv`` (one value a line, with an ``energy`` header)."""
    path = Path(path)
    if path.suffix not in (".npy", ".csv"):
        raise GenlabError(f"--out must end in .npy or .csv, got {path.name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npy":
        np.save(path, values)
    else:
        np.savetxt(path, values, fmt="%.9g", header="energy", comments="")
    return path


def _cmd_energy(args: argparse.Namespace) -> int:
    from genlab.checkpoint import load_run

    if args.images:
        from genlab.scoring import energy_command
        return energy_command(args)
    if args.limit < 0:
        raise GenlabError(f"--limit must be 0 (all) or a positive number of images, got {args.limit}")
    run = load_run(args.run_dir, device=args.device)
    if args.auroc:
        report = energy_report(run, args.limit, args.seed)
        if args.out and args.split not in report["energies"]:
            raise GenlabError(report["missing"])
        figs = Path(args.figures) if args.figures else Path(run.dir) / "figures"
        written = [figure_energy_histograms(report, figs / "energy_histograms.png")]
        merged = figure_merged(run.model, split_images(run, "merged", args.limit, args.seed), figs / "fig8_merged.png")
        written += [merged] if merged else []
        if args.out:
            save_energies(report["energies"][args.split], args.out)
        if args.json:
            print(json.dumps(report_json(report), indent=2))
        else:
            ood = (f"{report['ood_dataset']} vs {report['in_dataset']} {report['auroc_ood']:.4f}"
                   if report["auroc_ood"] is not None else f"{report['ood_dataset']} missing")
            print(f"{run.model_name}: AUROC merged vs clean {report['auroc_merged']:.4f}, "
                  f"photo patches vs clean {report['auroc_photos']:.4f}, {ood}")
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


def add_cli(subparsers) -> argparse.ArgumentParser:
    """Add ``genlab energy RUN_DIR``: per-example energies of a split, or AUROCs with ``--auroc``."""
    p = subparsers.add_parser("energy", help="per-example energies; AUROC for merged and out-of-distribution inputs",
                              description="Print or save a run's per-example energies on the test split, merged "
                                          "test digits or the out-of-distribution test split; with --auroc, the "
                                          "AUROC of the energy for merged and out-of-distribution inputs and the "
                                          "histogram and merged-digit figures.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by genlab train")
    p.add_argument("--split", default="test", choices=SPLITS, help="inputs to score (default: test)")
    p.add_argument("--out", default="", help="save the energies to FILE.npy or FILE.csv instead of printing them")
    p.add_argument("--auroc", action="store_true", help="AUROC of merged and out-of-distribution vs clean, and figures")
    p.add_argument("--figures", default="", help="directory for the --auroc figures (default: RUN_DIR/figures)")
    p.add_argument("--limit", type=int, default=0, help="use only the first N images of each split (0: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the digit pairing and of stochastic energies")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu or cuda")
    from genlab.scoring import add_energy_flags
    add_energy_flags(p)
    p.set_defaults(func=_cmd_energy)
    return p
