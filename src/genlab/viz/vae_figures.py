"""The VAE's figures: samples from the prior, reconstructions, interpolations, the 2-D manifold and t-SNE.

Each function takes a VAE (used in whatever mode it is in: eval mode decodes z = mu and uses the averaged
weights) and writes one PNG; ``final_figures`` and ``epoch_figures`` are what the training loop calls.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from genlab.data.batching import to_pixels
from genlab.viz.figures import save_figure, save_grid, save_rows, subplots

TSNE_IMAGES = 1000  # the lecture's t-SNE uses the first 1000 test images


@torch.no_grad()
def sample_figure(model, path: Path, n: int = 64, seed: int = 0) -> Path:
    """An 8 x 8 grid (for n = 64) of decoder means at z ~ N(0, I)."""
    g = torch.Generator(device=model.device).manual_seed(seed)
    ncol = max(1, round(n ** 0.5))
    return save_grid(path, model.sample(n, generator=g), ncol=ncol, title="VAE: samples, z ~ N(0, I)")


@torch.no_grad()
def reconstruction_figure(model, x: Tensor, path: Path, seed: int = 0) -> Path:
    """Inputs (as the model sees them, binarised if it binarises), decoded at z = mu and at a draw z ~ q(z|x).

    :param x: [N x 1 x 28 x 28] in [0, 1], N about 10.
    """
    g = torch.Generator(device=model.device).manual_seed(seed)
    seen = model.binarize(x)
    mu, logvar = model.encode(seen)
    rows = [("input", seen), ("z = mu", model.decode(mu)),
            ("z ~ q(z|x)", model.decode(model.reparameterize(mu, logvar, g)))]
    return save_rows(path, rows, "VAE: inputs and reconstructions")


@torch.no_grad()
def interpolation_figure(model, x_from: Tensor, x_to: Tensor, path: Path, steps: int = 10) -> Path:
    """One row per pair: decoder means along the straight line between the two images' codes (z = mu).

    :param x_from, x_to: [P x 1 x 28 x 28] in [0, 1], P pairs.
    """
    mu_a, _ = model.encode(model.binarize(x_from))
    mu_b, _ = model.encode(model.binarize(x_to))
    t = torch.linspace(0, 1, steps, device=mu_a.device)
    rows = []
    for a, b in zip(mu_a, mu_b):
        z = (1 - t)[:, None] * a + t[:, None] * b                # [steps x d]
        rows.append(("", model.decode(z)))
    return save_rows(path, rows, "VAE: interpolation between the codes of two test digits")


@torch.no_grad()
def manifold_figure(model, path: Path, n: int = 20) -> Path:
    """For d = 2: decoder means on an n x n grid of z at Gaussian quantiles (Kingma & Welling 2014, Fig. 4),
    so equal areas of the figure hold equal prior mass."""
    if model.cfg.latent_dim != 2:
        raise ValueError(f"the manifold figure needs a 2-D latent space, this model has d = {model.cfg.latent_dim}")
    q = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.5 / n, 1 - 0.5 / n, n))
    z1, z2 = torch.meshgrid(q, q.flip(0), indexing="xy")       # z2 grows upwards, as on a plot
    z = torch.stack([z1.reshape(-1), z2.reshape(-1)], dim=1).to(model.device)
    return save_grid(path, model.decode(z), ncol=n, title="VAE: the learned 2-D manifold")


@torch.no_grad()
def tsne_figure(model, images_u8: Tensor, labels: Tensor, epoch: int, path: Path, n: int = TSNE_IMAGES,
                seed: int = 0) -> Path:
    """t-SNE (2-D) of the encoder means of the first ``n`` images, coloured by label (tab10), as the lecture's
    figure at epochs 0, 5 and 10; a 1-D code is drawn as it is, against the label (t-SNE needs two).
    :param images_u8: uint8 [N x 28 x 28]; :param labels: int [N]."""
    from sklearn.manifold import TSNE

    x = to_pixels(images_u8[:n], "unit").to(model.device)
    mu, _ = model.encode(model.binarize(x))
    mu = mu.double().cpu().numpy()
    y = labels[:n].cpu().numpy()
    fig, ax = subplots(figsize=(5.2, 4.6))
    if mu.shape[1] == 1:
        jitter = np.random.default_rng(seed).uniform(-0.3, 0.3, len(y))  # a label's points side by side
        emb = np.stack([mu[:, 0], y + jitter], 1)
        ax.set_xlabel("z (the encoder's mean)")
        what = "1-D test means by label"
    else:
        emb = TSNE(n_components=2, init="pca", random_state=seed,
                   perplexity=min(30.0, max(1.0, (len(mu) - 1) / 3))).fit_transform(mu)
        ax.set_xticks([])
        what = "t-SNE of the test means"
    points = ax.scatter(emb[:, 0], emb[:, 1], c=y, cmap="tab10", vmin=-0.5, vmax=9.5, s=6)
    fig.colorbar(points, ax=ax, ticks=np.arange(10), label="label")
    ax.set_yticks([])
    ax.set_title(f"VAE: {what}, epoch {epoch} (first {len(mu)} test images)", fontsize=9)
    return save_figure(fig, path)


def epoch_figures(model, epoch: int, test_set, fig_dir: Path) -> list[Path]:
    """After epoch ``epoch`` (0: before training): the t-SNE figure when ``epoch`` is in ``--tsne-epochs``."""
    if epoch not in model.cfg.figure_epochs():
        return []
    path = Path(fig_dir) / f"tsne_epoch{epoch:03d}.png"
    return [tsne_figure(model, test_set.images, test_set.labels, epoch, path)]


@torch.no_grad()
def final_figures(model, test_set, fig_dir: Path) -> list[Path]:
    """The end-of-training figures: samples, reconstructions (z = mu and sampled), interpolations, and the
    manifold when d = 2."""
    fig_dir = Path(fig_dir)
    x = to_pixels(test_set.images[:16], "unit").to(model.device)
    written = [sample_figure(model, fig_dir / "samples.png"),
               reconstruction_figure(model, x[:10], fig_dir / "reconstructions_vae.png"),
               interpolation_figure(model, x[0:8:2], x[1:8:2], fig_dir / "interpolation.png")]
    if model.cfg.latent_dim == 2:
        written.append(manifold_figure(model, fig_dir / "manifold.png"))
    return written
