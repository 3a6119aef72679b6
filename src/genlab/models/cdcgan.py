"""DCGAN conditioned on the digit class, with a projection discriminator (Miyato & Koyama 2018, "cGANs with
projection discriminator").

- Generator: genlab's 28 x 28 DCGAN generator fed [z, one-hot(y)] (nz + 10 inputs; Mirza & Osindero 2014's
  concatenation), batch norm, Tanh output.
- Discriminator: the 28 x 28 DCGAN discriminator's trunk phi(x) (ndf x 14 x 14 -> 2 ndf x 7 x 7 ->
  4 ndf x 4 x 4, flattened to F = 64 ndf features) and the projection logit
  s(x, y) = psi(phi(x)) + <e_y, phi(x)>, with psi DCGAN's last 4 x 4 convolution and e_y a learned embedding
  of the class (Miyato & Koyama, Eq. 3).

Why projection and not an auxiliary classifier (AC-GAN, Odena et al. 2017): the AC-GAN generator is also
rewarded for images its classifier finds easy, which pulls each class towards its most typical digits and
narrows the classes (Shu, Bui & Ermon 2017; Miyato & Koyama, Sec. 5); genlab measures that spread within each
class. The projection discriminator keeps one adversarial loss with no extra weight to tune, and its logit
stays an estimate of log p(x | y) / q(x | y) (data over model), so the energy -s(x, y) keeps its meaning.

Training is DCGAN's (non-saturating binary cross-entropy, Adam with betas (0.5, 0.999)); the fakes of a batch
are asked for the classes of the real images of that batch. Samples come from an exponential moving average
of the generator (``--ema``, on by default; Yazici et al. 2019). The energy is -s(x, y): low where D takes x
for a real digit of class y; without a class, -log (1/10) sum_y exp(s(x, y)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab.config import ImageShape, opt
from genlab.errors import GenlabError
from genlab.models.base import EMA, mnist_shape_only, sample_count
from genlab.models.cvae import class_labels
from genlab.models.dcgan import BCEGAN
from genlab.models.gan_common import dcgan_init, make_generator


@dataclass
class CDCGANConfig(ImageShape):
    nz: int = opt(100, "size of the latent noise z", min=1, max=10_000)
    ngf: int = opt(64, "generator width (channels of its last hidden layer)", min=1, max=256)
    ndf: int = opt(64, "discriminator width (channels of its first layer)", min=1, max=256)
    ema: float = opt(0.999, "decay of the exponential moving average of the generator that samples (0: off)",
                     min=0.0, below=1.0)


class ProjectionDiscriminator28(nn.Module):
    """phi: 1 x 28 x 28 -> ndf x 14 x 14 -> 2 ndf x 7 x 7 -> 4 ndf x 4 x 4 (LeakyReLU 0.2, batch norm, as
    genlab's DCGAN discriminator); s(x, y) = psi(phi(x)) + <embed(y), phi(x)>."""

    def __init__(self, ndf: int = 64):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv2d(1, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2),                                     # 14
            nn.Conv2d(ndf, 2 * ndf, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * ndf), nn.LeakyReLU(0.2),      # 7
            nn.Conv2d(2 * ndf, 4 * ndf, 3, 2, 1, bias=False), nn.BatchNorm2d(4 * ndf), nn.LeakyReLU(0.2),  # 4
        )
        self.psi = nn.Conv2d(4 * ndf, 1, 4, 1, 0, bias=False)
        self.embed = nn.Embedding(10, 4 * ndf * 16)
        self.apply(dcgan_init)
        nn.init.normal_(self.embed.weight, 0.0, 0.02)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """:param x: [N x 1 x 28 x 28]; :param y: int [N]. :return: logits s(x, y), [N]."""
        h = self.trunk(x)
        return self.psi(h).flatten() + (self.embed(y) * h.flatten(1)).sum(1)

    def all_classes(self, x: Tensor) -> Tensor:
        """s(x, y) for every class: [N x 10]."""
        h = self.trunk(x)
        return self.psi(h).flatten(1) + h.flatten(1) @ self.embed.weight.t()


class CDCGAN(BCEGAN):
    Config = CDCGANConfig
    conditional = True
    learned_classes: list[int] | None = None  # a run of some classes: its label-free energy is over those (load_run)
    # genlab's DCGAN quality settings (benchmarks/gan_quality.py): Adam 5e-4, batch 64.
    train_defaults = {"lr": 5e-4, "batch_size": 64, "epochs": 2}
    figure_sets = ("conditional", "gan")
    extra_metrics = ("conditional",)

    def __init__(self, cfg: CDCGANConfig):
        super().__init__(cfg)
        mnist_shape_only(cfg, "cdcgan")
        self.generator = make_generator("conv", cfg.nz + 10, cfg.ngf, 28)
        self.discriminator = ProjectionDiscriminator28(cfg.ndf)
        self.g_ema = EMA(self.generator, cfg.ema) if cfg.ema > 0 else None

    def generate(self, net: nn.Module, y: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Images [N x 1 x 28 x 28] in [-1, 1] of classes ``y`` (int [N]) from ``net``, a generator or its EMA."""
        z = self.noise(len(y), generator)
        return net(torch.cat([z, F.one_hot(y, 10).to(z.dtype)], 1))

    # -- training -------------------------------------------------------------------------------------------
    def steps(self, x: Tensor, y: Tensor | None = None) -> Iterator[tuple[str, dict[str, Tensor]]]:
        """:param x: [N x 1 x 28 x 28] real images in [-1, 1]; :param y: their classes, int [N].

        Yields the two players' steps as DCGAN does (``bce_steps``), on fakes of the real batch's classes judged
        for those classes: real (x, y) against fake (G(z, y), y).
        """
        if y is None:
            raise GenlabError("cdcgan trains on labelled images; its batches need their digit labels")
        yield from self.bce_steps(x, self.generate(self.generator, y), lambda images: self.discriminator(images, y))

    # -- evaluation and sampling ----------------------------------------------------------------------------
    def energy(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """-s(x, y) per example, [N]; without classes -log (1/K) sum_y exp(s(x, y)) over the K classes it learned
        (``learned_classes``; all ten by default)."""
        self.check_images(x)
        if y is not None:
            return -self.discriminator(x, y)
        scores = self.discriminator.all_classes(x)
        if self.learned_classes:
            scores = scores[:, self.learned_classes]
        return math.log(scores.shape[1]) - torch.logsumexp(scores, 1)

    @torch.no_grad()
    def sample(self, n: int, y: Tensor | int | None = None, generator: torch.Generator | None = None) -> Tensor:
        """n samples [n x 1 x 28 x 28] in [-1, 1] of classes ``y`` (int [n], one class, or None for 0..9
        cycled, or the classes the run learned), from the EMA generator in evaluation mode."""
        labels = class_labels(sample_count(n), y, self.device, self.learned_classes)
        with self.sampling_net() as net:
            return self.generate(net, labels, generator)
