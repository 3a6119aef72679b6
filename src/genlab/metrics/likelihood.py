"""Likelihood metrics of a VAE on a split: ELBO, importance-weighted bounds, active units, KL per latent.

The importance-weighted bound (Burda, Grosse & Salakhutdinov 2016, eq. 8) with k draws z_i ~ q(z|x),

    log p(x) >= L_k(x) = E[ log (1/k) sum_i p(x, z_i) / q(z_i|x) ],

equals the ELBO for k = 1, does not decrease with k and tends to log p(x); -L_5000 is the usual "test NLL".
Here it is computed batched over samples and images with a running logsumexp, so memory stays bounded by
``rows`` decoder outputs whatever k is. Values are per example, in nats (bits/dim divides by the pixel count
times ln 2: 784 ln 2 for MNIST).
"""

from __future__ import annotations

import math
import sys
import time
from typing import Callable, Sequence

import torch
from torch import Tensor
from tqdm import tqdm

from genlab.data.batching import to_pixels
from genlab.errors import GenlabError
from genlab.models.vae import VAE

DEFAULT_ROWS = 32_768  # decoder outputs held at once (about 100 MB of float32 logits at 784 pixels)


def _batch_sizes(k: int, n: int, rows: int) -> tuple[int, int]:
    """(images per batch, samples per chunk) with images * samples <= rows, preferring whole k per image."""
    samples = max(1, min(k, rows))
    images = max(1, min(n, rows // samples))
    return images, samples


@torch.no_grad()
def iwae_bound(model: VAE, x: Tensor, k: int, rows: int = DEFAULT_ROWS,
               generator: torch.Generator | None = None, progress: bool = False) -> Tensor:
    """-L_k(x): the importance-weighted upper bound on -log p(x) per example, in nats: [N].

    :param x: [N x 1 x 28 x 28] in [0, 1]; binarised by the model (in eval mode: one fixed binarisation per
        image). :param rows: memory bound, images x samples decoded in one pass. :param progress: a progress
        bar over the images on stderr, when it is a terminal (k = 5000 on the test set takes minutes on a CPU).
    """
    if k < 1:
        raise GenlabError(f"IWAE needs k >= 1 importance samples, got {k}")
    x = model.binarize(x)
    n = len(x)
    # ``rows`` is counted in 28 x 28 decoder outputs: larger images take proportionally fewer at once.
    images, samples = _batch_sizes(k, n, max(1, rows * 784 // max(1, x[0].numel())) if n else rows)
    out = torch.empty(n, dtype=torch.float64)
    bar = tqdm(total=n, desc=f"IWAE k={k}", unit="image", leave=False, file=sys.stderr,
               disable=None if progress else True)  # None: shown only on a terminal
    for start in range(0, n, images):
        xb = x[start:start + images]
        # Running logsumexp over sample chunks: m is the max so far, s the sum of exp(log w - m).
        m = torch.full((len(xb),), -math.inf, dtype=torch.float64, device=x.device)
        s = torch.zeros(len(xb), dtype=torch.float64, device=x.device)
        for done in range(0, k, samples):
            lw = model.log_weights(xb, min(samples, k - done), generator).double()   # [c x B]
            m_new = torch.maximum(m, lw.max(0).values)
            s = s * (m - m_new).exp() + (lw - m_new).exp().sum(0)
            m = m_new
        out[start:start + len(xb)] = -(m + s.log() - math.log(k)).cpu()
        bar.update(len(xb))
    bar.close()
    return out


@torch.no_grad()
def encoder_means(model: VAE, x: Tensor, batch_size: int = 1000) -> tuple[Tensor, Tensor]:
    """(mu, logvar) of q(z|x) for every image, [N x d] each; x is binarised by the model first."""
    parts = [model.encode(model.binarize(x[i:i + batch_size])) for i in range(0, len(x), batch_size)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


@torch.no_grad()
def active_units(model: VAE, x: Tensor, threshold: float = 0.01) -> int:
    """How many latents are active: Cov_x(E_q[z_u]) > threshold (Burda et al. 2016, Sec. 5.2)."""
    if len(x) < 2:
        raise GenlabError("active units need at least 2 images (a variance over images); evaluate more of them")
    mu, _ = encoder_means(model, x)
    return int((mu.var(0) > threshold).sum())


@torch.no_grad()
def kl_per_dim(model: VAE, x: Tensor) -> Tensor:
    """KL(q(z_j|x) || N(0, 1)) averaged over the images, per latent j, in nats: [d]."""
    from genlab.models.vae import gaussian_kl

    mu, logvar = encoder_means(model, x)
    return gaussian_kl(mu, logvar).mean(0)


@torch.no_grad()
def evaluate_vae(model: VAE, images_u8: Tensor, iwae_k: Sequence[int] = (1, 50, 5000), batch_size: int = 1000,
                 rows: int = DEFAULT_ROWS, seed: int = 0, log: Callable[[str], None] | None = None) -> dict:
    """All likelihood numbers of a VAE on one split, as a JSON-ready dict (nats per image unless named).

    The model is put in eval mode, so each image has one fixed binarisation (``dynamic``: see
    ``genlab.models.vae.hashed_uniform``) and the averaged weights are used; every draw of z comes from a
    generator seeded with ``seed``, so the numbers repeat exactly.

    Keys: ``loss_sampled`` (rec + beta * KL, z ~ q), ``loss_mean`` (z = mu), ``rec_sampled``, ``rec_mean``,
    ``kl``, ``neg_elbo``; ``iwae_<k>`` = -L_k for each k; ``nll`` (the tightest bound: the smallest -L_k, else
    the -ELBO) and ``bits_per_dim`` (nll / (pixels ln 2)); ``active_units``; ``kl_per_dim`` (list of d floats);
    ``seconds_iwae_<k>`` (wall time of each bound).

    :param images_u8: uint8 [N x 28 x 28].
    """
    model.eval()
    x = to_pixels(images_u8, "unit").to(model.device)
    g = torch.Generator(device=x.device).manual_seed(seed)
    sums: dict[str, float] = {}
    for i in range(0, len(x), batch_size):
        for key, value in model.eval_terms(x[i:i + batch_size], generator=g).items():
            sums[key] = sums.get(key, 0.0) + float(value.double().sum())
    out = {key: value / len(x) for key, value in sums.items() if key != "loss"}
    best = None
    for k in sorted(set(int(k) for k in iwae_k)):
        t0 = time.perf_counter()
        bound = float(iwae_bound(model, x, k, rows, g, progress=log is not None).mean())
        out[f"iwae_{k}"] = bound
        out[f"seconds_iwae_{k}"] = time.perf_counter() - t0
        if log:
            log(f"IWAE k={k}: {bound:.3f} nats ({out[f'seconds_iwae_{k}']:.0f} s)")
        best = bound if best is None else min(best, bound)
    out["nll"] = best if best is not None else out["neg_elbo"]
    out["bits_per_dim"] = out["nll"] / (x[0].numel() * math.log(2))
    if len(x) >= 2:  # a variance over images
        out["active_units"] = active_units(model, x)
    out["kl_per_dim"] = [float(v) for v in kl_per_dim(model, x)]
    return out


def evaluate_run(run, images_u8: Tensor, iwae_k: Sequence[int] = (1, 50, 5000), **options) -> dict:
    """``genlab evaluate``'s VAE metrics for a loaded run: ``evaluate_vae`` on ``images_u8`` (uint8 [N x 28 x 28]).

    Other options (meant for other model families) are ignored.
    """
    return evaluate_vae(run.model, images_u8, iwae_k=iwae_k, log=lambda msg: print(msg, file=sys.stderr))
