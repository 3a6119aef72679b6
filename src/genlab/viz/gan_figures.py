"""The GANs' own figures: real against generated energies (after every epoch and at the end) and a sample grid."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor

from genlab.data.batching import to_pixels, to_unit
from genlab.viz.figures import save_figure, subplots, save_grid


# -- energy histograms ----------------------------------------------------------------------------------------
@torch.no_grad()
def energy_histogram_figure(model, real_batch: Tensor, path: str | Path, title: str = "") -> Path:
    """Histograms of ``model.energy`` on a real batch and on as many generated samples; written to ``path``.

    :param real_batch: [N x 1 x 28 x 28] in the model's pixel range.
    A healthy EBGAN shows the two histograms overlapping below the margin; a discriminator that separates
    them completely (no overlap) is winning, which precedes divergence.
    """
    was_training = model.training
    model.eval()
    try:
        real = model.energy(real_batch.to(model.device)).float().cpu()
        fake = model.energy(model.sample(real_batch.shape[0])).float().cpu()
    finally:
        model.train(was_training)
    lo = float(torch.minimum(real.min(), fake.min()))
    hi = float(torch.maximum(real.max(), fake.max()))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        lo, hi = 0.0, 1.0
    bins = torch.linspace(lo, hi if hi > lo else lo + 1.0, 41).numpy()
    fig, ax = subplots(figsize=(5, 3.2))
    ax.hist(real.numpy(), bins=bins, alpha=0.6, label=f"real (mean {real.mean():.3g})", color="tab:blue")
    ax.hist(fake.numpy(), bins=bins, alpha=0.6, label=f"generated (mean {fake.mean():.3g})", color="tab:red")
    if hasattr(model, "margin_value"):  # EBGAN: the discriminator pushes generated energies up to m
        ax.axvline(model.margin_value, color="k", linestyle="--", linewidth=1, label=f"margin m = {model.margin_value:g}")
    ax.set_xlabel("energy")
    ax.set_ylabel("images")
    ax.set_title(title or f"{type(model).__name__}: energy of real vs generated images")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


# -- the figure set "gan" (see genlab.viz.figures) ---------------------------------------------------
def _real_batch(model, test_set, n: int = 500) -> Tensor:
    return to_pixels(test_set.images[:n], model.pixel_range).to(model.device)


def epoch_figures(model, epoch: int, test_set, fig_dir: Path) -> list[Path]:
    """After every epoch: ``energy_hist_epoch<k>.png``, energies of 500 test digits vs 500 samples."""
    path = Path(fig_dir) / f"energy_hist_epoch{epoch:03d}.png"
    title = f"{type(model).__name__}, epoch {epoch}: energy of real vs generated"
    return [energy_histogram_figure(model, _real_batch(model, test_set), path, title)]


@torch.no_grad()
def final_figures(model, test_set, fig_dir: Path) -> list[Path]:
    """At the end of training: a grid of 64 samples and the final energy histogram."""
    fig_dir = Path(fig_dir)
    samples = to_unit(model.sample(64).cpu(), model.pixel_range).clamp(0, 1)
    paths = [save_grid(fig_dir / "samples.png", samples, ncol=8, title=f"{type(model).__name__}: samples")]
    paths.append(energy_histogram_figure(model, _real_batch(model, test_set), fig_dir / "energy_hist.png"))
    return paths
