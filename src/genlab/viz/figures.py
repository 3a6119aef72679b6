"""Drawing: image rows and grids, encoder kernels (the lecture's Figs. 4 and 6), loss curves, and the one way
a figure is written (``save_figure``). Which figures a run gets is genlab.viz.callbacks's business.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from genlab.config import discard
from genlab.errors import GenlabError
from genlab.rundir import read_metrics


def subplots(nrows: int = 1, ncols: int = 1, figsize=None, squeeze: bool = True):
    """``pyplot.subplots`` without pyplot: the figure belongs to no backend, so genlab neither chooses nor
    switches the caller's (importing genlab's figures switched a notebook's to Agg) and leaves none open."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, squeeze=squeeze)


def _picture(image: torch.Tensor) -> np.ndarray:
    """[C x H x W] in [0, 1] -> what imshow takes: [H x W] (grey) or [H x W x C] (colour)."""
    image = image.detach().float().cpu()
    return image[0].numpy() if image.shape[0] == 1 else image.permute(1, 2, 0).clamp(0, 1).numpy()


def save_rows(path: Path, rows: list[tuple[str, torch.Tensor]], title: str = "") -> Path:
    """One figure of labelled image rows; each tensor is [N x C x H x W] in [0, 1] (C = 1 grey, 3 RGB)."""
    n = max(len(images) for _, images in rows)
    # 1.2 inches a row: at 1.0 the squares of the images left no room for the next row's label, drawn over them
    fig, axes = subplots(len(rows), n, figsize=(n * 0.9, len(rows) * 1.2 + 0.3), squeeze=False)
    for r, (label, images) in enumerate(rows):
        images = images.detach().float().cpu()  # one copy from the device per row, not one per picture
        for c in range(n):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(images):
                ax.imshow(_picture(images[c]), cmap="gray", vmin=0, vmax=1)
        axes[r][0].set_title(label, fontsize=8, loc="left")
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


MAX_FIGURE_PIXELS = 4000 * 4000  # a grid drawn larger (10,000 samples: 6000 x 6000) took 3.8 GB in matplotlib


def save_grid(path: Path, images: torch.Tensor, ncol: int = 8, title: str = "") -> Path:
    """A grid of [N x C x H x W] images in [0, 1] (C = 1 grey, 3 RGB), ``ncol`` per row: a figure with its
    title, or, where that figure would exceed ``MAX_FIGURE_PIXELS``, the grid itself pixel for pixel (2-pixel
    white gaps, no title)."""
    images = images.detach().float().cpu()
    n, channels, h, w = images.shape
    nrow = -(-n // ncol)
    canvas = np.ones((nrow * (h + 2) + 2, ncol * (w + 2) + 2) + ((channels,) if channels > 1 else ()), np.float32)
    for i in range(n):
        r, c = divmod(i, ncol)
        canvas[2 + r * (h + 2):2 + r * (h + 2) + h, 2 + c * (w + 2):2 + c * (w + 2) + w] = _picture(images[i])
    width = max(ncol * 0.6 + 0.4, 2.0 if title else 0.0)  # inches, at 100 dots each
    # The title in lines that fit the figure's width (at most 7.5 dots a character at 10 points): a grid of
    # one column cut "samples, one row per class" to its middle.
    lines = textwrap.wrap(title, int(width * 100 / 7.5))
    size = (width, nrow * 0.6 + 0.45 + 0.17 * max(len(lines), 1))
    if size[0] * size[1] * 100 ** 2 > MAX_FIGURE_PIXELS:
        return _save_pixels(path, canvas)
    fig, ax = subplots(figsize=size)
    ax.imshow(canvas, cmap="gray", vmin=0, vmax=1)
    ax.axis("off")
    if lines:
        ax.set_title("\n".join(lines), fontsize=10)
    return save_figure(fig, path)


def _save_pixels(path: Path, canvas: np.ndarray) -> Path:
    """[H x W] or [H x W x 3] in [0, 1] as a PNG of exactly those pixels, replaced atomically."""
    from genlab.config import write_atomically
    from genlab.data.files import encode_png

    pixels = np.round(np.clip(canvas, 0, 1) * 255).astype(np.uint8)
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, encode_png(pixels if pixels.ndim == 2 else pixels.transpose(2, 0, 1)), hidden=True)
    except OSError as e:
        raise GenlabError(f"cannot write the figure {path} ({e.strerror or e}); free space or check the folder's "
                          "permissions, then run the command again") from None
    return path


def save_figure(fig, path: Path) -> Path:
    """Write a matplotlib figure to ``path`` (PNG, folders made, replaced atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    # A hidden name of this process's own: a killed run's half-written file is neither taken for a figure
    # (genlab report embedded one) nor shared with another writer; the run's next claim removes it.
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    try:
        fig.savefig(tmp, dpi=100, format="png")
        tmp.replace(path)
    except OSError as e:
        raise GenlabError(f"cannot write the figure {path} ({e.strerror or e}); free space or check the folder's "
                          "permissions, then run the command again") from None
    finally:
        discard(tmp)
    return path


def kernels_figure(path: Path, weights: torch.Tensor, title: str) -> Path:
    """The first 20 rows of the encoder's weight matrix as 28 x 28 images, 5 rows of 4, shown as
    0.5 * (w + 1) with an automatic grey scale per kernel (lecture Figs. 4 and 6)."""
    w = 0.5 * (weights[:20].detach().cpu().float() + 1)
    fig, axes = subplots(5, 4, figsize=(4.4, 5.6))
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < len(w):
            ax.imshow(w[i].view(28, 28).numpy(), cmap="gray")
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def loss_curves(path: Path, metrics_file: Path) -> Path | None:
    """Every train/* and test/* series of metrics.jsonl against the epoch, one panel per term."""
    lines = read_metrics(metrics_file)
    if not lines:
        return None
    terms = sorted({k.split("/", 1)[1] for line in lines for k in line if k.startswith(("train/", "test/"))})
    fig, axes = subplots(1, len(terms), figsize=(3.2 * len(terms), 2.8), squeeze=False)
    for ax, term in zip(axes[0], terms):
        for split in ("train", "test"):
            pts = [(line["epoch"], line[f"{split}/{term}"]) for line in lines if f"{split}/{term}" in line]
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=3, label=split)
        ax.set_title(term, fontsize=9)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
    return save_figure(fig, path)
