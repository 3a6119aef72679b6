"""Figures of the anomaly and inpainting metrics: the lecture's Fig. 8 (merged digits), energy histograms of
clean and anomalous inputs, and the lecture's Fig. 7 (inpainting against OpenCV)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import torch
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from genlab.data.batching import to_pixels
from genlab.metrics.inpainting import METHOD_TITLES, METHODS, image_batch, inpaint_all
from genlab.viz.figures import save_figure, subplots


def _numpy(a) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


# -- energies -----------------------------------------------------------------------------------------------
def figure_merged(model, merged_u8, path, n: int = 8) -> Path | None:
    """The lecture's Fig. 8: ``n`` merged digits (top row) and the model's reconstructions (bottom row).

    Returns None (and writes nothing) for a model that does not reconstruct.
    """
    if not model.can_reconstruct:
        return None
    u = torch.as_tensor(_numpy(merged_u8))[:n]
    x = to_pixels(u, model.pixel_range).to(model.device)
    model.eval()
    with torch.no_grad():
        y = model.reconstruct(x).float().cpu()
    lo, hi = (-1.0, 1.0) if model.pixel_range == "tanh" else (0.0, 1.0)
    k = len(u)
    fig, axes = subplots(2, k, figsize=(1.2 * k + 1.2, 2.6), squeeze=False)
    for j in range(k):
        axes[0, j].imshow(u[j].numpy(), cmap="gray", vmin=0, vmax=255)
        axes[1, j].imshow(y[j, 0].numpy(), cmap="gray", vmin=lo, vmax=hi)
        for ax in axes[:, j]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_ylabel("merged", fontsize=9)
    axes[1, 0].set_ylabel("reconstruction", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def figure_energy_histograms(report: dict, path) -> Path:
    """Energy histograms of clean, merged and out-of-distribution inputs, overlaid, for one model."""
    e = report["energies"]
    pooled = np.concatenate(list(e.values()))
    # Shared bins over the bulk of the pooled energies (a few huge values would squash every histogram);
    # logarithmic when all energies are positive, since out-of-distribution energies can be 10x the clean ones.
    lo, hi = np.percentile(pooled, [0.0, 99.9])
    hi = hi if hi > lo else lo + 1.0
    log = lo > 0
    bins = np.geomspace(lo, hi, 60) if log else np.linspace(lo, hi, 60)
    fig, ax = subplots(figsize=(6, 3.5))
    if log:
        ax.set_xscale("log")
        # Labels at 1, 2 and 5 times the powers of ten, as plain numbers: matplotlib's own labelled minor ticks
        # of a range of one or two decades overlapped ("2 x 10^2" beside "3 x 10^2").
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    names = {"test": f"{report['in_dataset']} test", "merged": "merged digits", "faded": "faded digits",
             "photos": "photo patches", "ood": f"{report['ood_dataset']} test"}
    for s in e:
        ax.hist(np.clip(e[s], bins[0], bins[-1]), bins=bins, density=True, histtype="stepfilled", alpha=0.4,
                label=f"{names[s]} (n = {len(e[s])})")
    ax.set_xlabel("energy")
    ax.set_ylabel("density")
    aurocs = [f"{label} {report[key]:.3f}".replace(" ", "\u00a0") for key, label in (  # a pair kept on one line
        ("auroc_merged", "merged"), ("auroc_merged_vs_faded", "merged vs faded"), ("auroc_photos", "photos"),
        ("auroc_ood", report["ood_dataset"])) if report.get(key) is not None]
    # Wrapped: with a data set's name in it the line ran past the figure's edge and lost its last value.
    ax.set_title(textwrap.fill(f"{report['model']}: AUROC " + ", ".join(aurocs), 75, break_on_hyphens=False),
                 fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


# -- inpainting ----------------------------------------------------------------------------------------------
def figure_inpainting(dae_model, images_u8, path, p: float = 0.5, seed: int = 0, n: int = 8) -> Path:
    """The lecture's Fig. 7: rows noise mask, corrupted input, DAE, Telea, Navier-Stokes; ``n`` digits as columns.

    The corrupted input is the 8-bit picture OpenCV inpaints (at p = 0.5 exactly the lecture's). Saved as PNG.
    """
    images_u8 = image_batch(images_u8)[:n]
    c, outs = inpaint_all(dae_model, images_u8, p, seed)
    rows = [("noise mask", _numpy(c.noise)[:, 0], (0, float(c.noise.max()))),
            ("corrupted", c.img8, (0, 255))]
    rows += [(METHOD_TITLES[m], outs[m], (0, 1)) for m in METHODS]
    k = len(images_u8)
    fig, axes = subplots(len(rows), k, figsize=(1.2 * k + 1.2, 1.2 * len(rows)), squeeze=False)
    for r, (title, imgs, (lo, hi)) in enumerate(rows):
        for j in range(k):
            ax = axes[r, j]
            ax.imshow(imgs[j], cmap="gray", vmin=lo, vmax=hi)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(title, fontsize=9)
    fig.suptitle(f"Inpainting at drop rate p = {p}", fontsize=10)
    return save_figure(fig, path)


