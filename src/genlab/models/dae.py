"""The denoising autoencoder: corrupt the input, reconstruct the clean image (the lecture's Figs. 5 to 7).

Corruptions, on [-1, 1] pixels:
- ``dropout`` exactly as the lecture: the mask is ``Dropout(p)`` applied to ones, so it takes the values
  {0, 1/(1-p)} ({0, 2} at p = 0.5): kept pixels are scaled up and dropped pixels become 0 (mid-grey).
  ``--unscaled-mask`` uses the plain {0, 1} mask instead.
- ``gaussian``: x + noise * N(0, 1), clipped to [-1, 1].
- ``salt-pepper``: a fraction ``noise`` of pixels set to -1 or +1 with equal chance.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from genlab import rng
from genlab.config import ImageShape, opt
from genlab.errors import GenlabError
from genlab.models.ae import Reconstructor, mlp_autoencoder, squared_error
from genlab.models.base import conv_sizes_ok

CORRUPTIONS = ("dropout", "gaussian", "salt-pepper")


@dataclass
class DAEConfig(ImageShape):
    latent_dim: int = opt(500, "code size d (the lecture: 500, over-complete)", min=1, max=10_000)
    corruption: str = opt("dropout", "how inputs are corrupted", choices=CORRUPTIONS)
    noise: float = opt(0.5, "corruption level: drop probability, Gaussian std, or salt-and-pepper fraction",
                       min=0.0, max=100.0)
    unscaled_mask: bool = opt(False, "dropout: use a {0, 1} mask instead of the lecture's {0, 1/(1-p)}")
    arch: str = opt("mlp", "mlp (the lecture) or conv (a stronger convolutional denoiser)", choices=("mlp", "conv"))

    def check(self) -> None:
        if self.corruption in ("dropout", "salt-pepper") and not 0.0 <= self.noise < 1.0:
            raise GenlabError(f"--noise is a probability for {self.corruption}: expected 0 <= noise < 1, got {self.noise}")
        if self.unscaled_mask and self.corruption != "dropout":  # it was accepted and did nothing
            raise GenlabError(f"--unscaled-mask sets the dropout mask's values; it does nothing with --corruption "
                              f"{self.corruption}: leave it out")


def dropout_mask(shape, p: float, scaled: bool = True, generator: torch.Generator | None = None,
                 device=None) -> Tensor:
    """The lecture's noise mask ``Dropout(p)(ones)``: values {0, 1/(1-p)}, or {0, 1} when not ``scaled``."""
    keep = rng.rand(shape, generator, device) >= p
    scale = 1.0 / (1.0 - p) if scaled else 1.0
    return keep.float() * scale


def corrupt(x: Tensor, cfg: DAEConfig, generator: torch.Generator | None = None) -> Tensor:
    """Corrupt [N x C x H x W] images in [-1, 1] as ``cfg`` says."""
    if cfg.corruption == "dropout":
        return x * dropout_mask(x.shape, cfg.noise, not cfg.unscaled_mask, generator, x.device)
    if cfg.corruption == "gaussian":
        noise = rng.randn(x.shape, generator, x.device)
        return (x + cfg.noise * noise).clamp(-1, 1)
    hit = rng.rand(x.shape, generator, x.device) < cfg.noise
    salt = rng.rand(x.shape, generator, x.device) < 0.5
    return torch.where(hit, salt.float() * 2 - 1, x)


class ConvDenoiser(nn.Module):
    """A small U-Net (28 -> 14 -> 7 -> 14 -> 28 for MNIST; any side that is a multiple of 4) with skips, sized for a CPU: the wide layers work at 7 x 7 and
    14 x 14, only thin ones at full resolution. Sees each pixel's neighbourhood, which is what inpainting needs."""

    def __init__(self, width: int = 32, channels: int = 1):
        super().__init__()
        w, c = width, channels
        act = nn.ReLU
        self.down1 = nn.Sequential(nn.Conv2d(c, w, 3, stride=2, padding=1), act())                  # w x 14 x 14
        self.down2 = nn.Sequential(nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), act(),              # 2w x 7 x 7
                                   nn.Conv2d(2 * w, 2 * w, 3, padding=1), act(),
                                   nn.Conv2d(2 * w, 2 * w, 3, padding=1), act())
        self.up2 = nn.Sequential(nn.ConvTranspose2d(2 * w, w, 4, stride=2, padding=1), act())      # w x 14 x 14
        self.mix2 = nn.Sequential(nn.Conv2d(2 * w, w, 3, padding=1), act())
        self.up1 = nn.Sequential(nn.ConvTranspose2d(w, w // 2, 4, stride=2, padding=1), act())     # w/2 x 28 x 28
        self.out = nn.Sequential(nn.Conv2d(w // 2 + c, w // 2, 3, padding=1), act(),
                                 nn.Conv2d(w // 2, c, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        """:param x: [N x 1 x 28 x 28]. :return: [N x 1 x 28 x 28]; clipped to [-1, 1] outside training.

        The output layer is linear: behind a Tanh, the mostly-black targets drive every output to -1 within a
        few steps, where the Tanh saturates and learning stops.
        """
        h1 = self.down1(x)
        h = self.mix2(torch.cat([self.up2(self.down2(h1)), h1], dim=1))
        y = self.out(torch.cat([self.up1(h), x], dim=1))
        return y if self.training else y.clamp(-1, 1)


class DAE(Reconstructor):
    Config = DAEConfig
    graph_safe = True  # its loss is one fixed computation at every step (genlab.graphs)

    def __init__(self, cfg: DAEConfig):
        super().__init__(cfg)
        self.tanh_output = cfg.arch == "mlp"  # the U-Net's output is unbounded in training (Reconstructor)
        if cfg.arch == "mlp":
            self.encoder, self.decoder = mlp_autoencoder(cfg, cfg.latent_dim)
        else:
            conv_sizes_ok(cfg, "dae --arch conv")
            self.net = ConvDenoiser(channels=cfg.channels)

    def forward(self, x: Tensor) -> Tensor:
        """:param x: [N x C x H x W] in [-1, 1] (corrupted or not). :return: the denoised image."""
        if self.cfg.arch == "conv":
            return self.net(x)
        return self.decoder(self.encoder(x.flatten(1))).view_as(x)

    def corrupt(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return corrupt(x, self.cfg, generator)

    def loss(self, x: Tensor) -> dict[str, Tensor]:
        """``loss``: per-example MSE (mean over pixels) of the clean target from a corrupted input."""
        mse = squared_error(self(self.corrupt(x)), x) / x[0].numel()
        return {"loss": mse}

    def eval_terms(self, x: Tensor) -> dict[str, Tensor]:
        """``mse_clean``: clean target from clean input; ``mse_corrupted``: from corrupted input (mean over pixels)."""
        n = x[0].numel()
        corrupted = squared_error(self(self.corrupt(x)), x) / n
        return {"loss": corrupted, "mse_corrupted": corrupted, "mse_clean": squared_error(self(x), x) / n}

    def encoder_kernels(self) -> Tensor | None:
        return self.encoder[0].weight.detach() if self.cfg.arch == "mlp" else None
