"""DCGAN (Radford, Metz, Chintala 2016) as the lecture runs it: the PyTorch examples' dcgan on MNIST.

Three sizes:
- ``--image-size 64``: the lecture's networks exactly (MNIST resized to 64 x 64 inside the model, nz = 100,
  ngf = ndf = 64, batch norm, N(0, 0.02) initialisation); ``--image-size 32``: the same networks one stage
  shorter at 32 x 32;
- ``--image-size 28`` (default): the same networks one stage shorter (4 -> 7 -> 14 -> 28 pixels, same ngf and
  ndf), working on MNIST's own 28 x 28 pixels; about a tenth of the arithmetic per step, the practical choice
  on a CPU.

All train with the non-saturating binary cross-entropy of the lecture (labels real = 1, fake = 0; the
generator is trained with "real" labels) and Adam with lr 2e-4, betas (0.5, 0.999). The discriminator returns
a logit s(x); D(x) = sigmoid(s(x)) and the energy is -s(x): low where D believes the image is real.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab.config import ImageShape, opt
from genlab.models.base import EMA
from genlab.models.gan_common import (TwoPlayerGAN, dcgan_init, find_log, make_generator, resize,
                                      running_stats_frozen, spread)


@dataclass
class DCGANConfig(ImageShape):
    image_size: int = opt(28, "28: networks sized for MNIST's 28 x 28 pixels (the CPU default); 64: the lecture's "
                              "networks on MNIST resized to 64 x 64; 32: in between. Images of another size are "
                              "resized inside the model (given as a flag, it also resizes folder:/npz: data sets on loading)",
                          choices=(28, 32, 64))
    nz: int = opt(100, "size of the latent noise z", min=1, max=10_000)
    ngf: int = opt(64, "generator width (channels of its last hidden layer)", min=1, max=256)
    ndf: int = opt(64, "discriminator width (channels of its first layer)", min=1, max=256)
    ema: float = opt(0.0, "decay of an exponential moving average of the generator used for sampling (0: off; "
                          "0.999 is typical)", min=0.0, below=1.0)


class Discriminator28(nn.Module):
    """The lecture's discriminator with one stage fewer, for 28 x 28 images:
    1 x 28 x 28 -> ndf x 14 x 14 -> 2 ndf x 7 x 7 -> 4 ndf x 4 x 4 -> logit (LeakyReLU 0.2, batch norm)."""

    def __init__(self, ndf: int = 64, channels: int = 1):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2),                              # 14
            nn.Conv2d(ndf, 2 * ndf, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * ndf), nn.LeakyReLU(0.2),      # 7
            nn.Conv2d(2 * ndf, 4 * ndf, 3, 2, 1, bias=False), nn.BatchNorm2d(4 * ndf), nn.LeakyReLU(0.2),  # 4
            nn.Conv2d(4 * ndf, 1, 4, 1, 0, bias=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        """:param x: [N x 1 x 28 x 28]. :return: logits [N]."""
        return self.net(x).flatten()


class Discriminator64(nn.Module):
    """The lecture's discriminator, 1 x 64 x 64 -> 64 -> 128 -> 256 -> 512 channels at 32, 16, 8, 4 pixels ->
    logit. The lecture ends in a Sigmoid and uses BCELoss; we keep the logit and use the equivalent, stabler
    BCE-with-logits."""

    def __init__(self, ndf: int = 64, channels: int = 1, size: int = 64):
        super().__init__()

        def down(c_in, c_out):  # halves the side
            return [nn.Conv2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2)]

        top = 8 if size == 64 else 4  # size 32: one stage fewer (32 -> 16 -> 8 -> 4)
        stages, width = [], ndf
        while width < top * ndf:
            stages += down(width, 2 * width)
            width *= 2
        self.net = nn.Sequential(
            nn.Conv2d(channels, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2),                            # 32
            *stages,                                                                                     # 16, 8, 4
            nn.Conv2d(top * ndf, 1, 4, 1, 0, bias=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        """:param x: [N x 1 x 64 x 64]. :return: logits [N]."""
        return self.net(x).flatten()


class BCEGAN(TwoPlayerGAN):
    """A GAN whose discriminator is a classifier trained with binary cross-entropy (DCGAN and its conditional
    form, genlab.models.cdcgan): its divergence checks."""

    # Saturation: D(x) > 0.999 and D(G(z)) < 1e-3 on average over the batch, 100 steps in a row. A healthy
    # run keeps D(G(z)) around 0.1 to 0.4 after the first hundred steps; once D separates everything this
    # sharply the generator's gradient carries no information about the data and the run does not recover.
    SATURATION_D_X, SATURATION_D_G_Z, SATURATION_PATIENCE = 0.999, 1e-3, 100
    # A player's mean binary cross-entropy above this many nats an image means the discriminator's logits are in
    # the thousands: no healthy step comes near (the losses stay within about 0.1 to 10), and a run at --lr 10
    # reached 1.7e5 in a few dozen steps, too soon for the streak above, and ended with exit 0.
    BCE_LIMIT = 1e3

    def diverged(self, logs: dict[str, float]) -> str | None:
        for player in self.players:
            loss = logs.get(f"{player}/loss")
            if loss is not None and loss > self.BCE_LIMIT:
                return (f"the {player} loss reached {loss:.3g} nats an image (healthy runs stay below 10): the "
                        "discriminator's logits have run off to the thousands; try a lower --lr")
        d_x, d_g_z = find_log(logs, "d_x"), find_log(logs, "d_g_z1")
        if d_x is not None and d_g_z is not None:
            if self._saturated.update(d_x > self.SATURATION_D_X and d_g_z < self.SATURATION_D_G_Z):
                smaller = ", --image-size 28" if getattr(self.cfg, "image_size", 28) != 28 else ""
                return (f"discriminator saturated: D(x) = {d_x:.4f} and D(G(z)) = {d_g_z:.2e} for "
                        f"{self._saturated.count} steps in a row, so the generator no longer learns; try a lower "
                        f"--lr{smaller} or another --seed")
        return self._collapsed(logs)

    def bce_steps(self, real: Tensor, fake: Tensor, score: Callable[[Tensor], Tensor]
                  ) -> Iterator[tuple[str, dict[str, Tensor]]]:
        """The two players' steps for ``real`` and generated ``fake`` images [N x C x H x W] in [-1, 1], where
        ``score`` gives the discriminator's logit s(x) [N], D(x) = sigmoid(s(x)) (a conditional one's for the
        batch's classes).

        Yields ("d", terms) then ("g", terms), each with a per-example ``loss`` [N] (binary cross-entropy,
        nats per image) and logged extras: ``d_x`` = D(x), ``d_g_z1`` = D(G(z)) before D's update, ``d_g_z2``
        after it (the lecture's D_G_z1 / D_G_z2), and the batches' ``spread_real`` / ``spread_fake`` for the
        collapse check.
        """
        n = real.shape[0]
        ones, zeros = torch.ones(n, device=real.device), torch.zeros(n, device=real.device)

        # (1) Update D: maximise log D(x) + log(1 - D(G(z))). G's output is detached: D's step must not
        # push gradients into G.
        # Only real batches update D's batch-norm running statistics (see running_stats_frozen).
        s_real = score(real)
        with running_stats_frozen(self.discriminator):
            s_fake = score(fake.detach())
        loss_d = (F.binary_cross_entropy_with_logits(s_real, ones, reduction="none")
                  + F.binary_cross_entropy_with_logits(s_fake, zeros, reduction="none"))
        # D's outputs in float32: under --precision bf16 the logits are bfloat16, which holds nothing between
        # 0.9961 and 1 (the saturation check reads D(x) > 0.999).
        yield "d", {"loss": loss_d, "d_x": torch.sigmoid(s_real.detach().float()),
                    "d_g_z1": torch.sigmoid(s_fake.detach().float()),
                    "spread_real": spread(real), "spread_fake": spread(fake)}

        # (2) Update G: maximise log D(G(z)) with the updated D (the non-saturating loss of Goodfellow et al.
        # 2014, Sec. 3: labels "real" for the fakes), re-using the same fakes as the lecture does.
        with running_stats_frozen(self.discriminator):
            s_fake = score(fake)
        loss_g = F.binary_cross_entropy_with_logits(s_fake, ones, reduction="none")
        yield "g", {"loss": loss_g, "d_g_z2": torch.sigmoid(s_fake.detach().float())}


class DCGAN(BCEGAN):
    Config = DCGANConfig
    # The lecture's (PyTorch examples') optimiser settings. One epoch of the 28 x 28 variant took 200 s on a
    # 2-core CPU (the 64 x 64 networks about ten times as long); genlab's quality benchmark uses lr 5e-4 and two
    # epochs, which reach recognisable digits sooner.
    train_defaults = {"lr": 2e-4, "batch_size": 64, "epochs": 3}
    figure_sets = ("gan",)

    def __init__(self, cfg: DCGANConfig):
        super().__init__(cfg)
        s, c = cfg.image_size, cfg.channels
        self.generator = make_generator("conv", cfg.nz, cfg.ngf, s, cfg.shape)
        self.discriminator = Discriminator64(cfg.ndf, c, s) if s in (32, 64) else Discriminator28(cfg.ndf, c)
        self.discriminator.apply(dcgan_init)
        self.g_ema = EMA(self.generator, cfg.ema) if cfg.ema > 0 else None

    # -- networks -------------------------------------------------------------------------------------------
    def _resize(self, x: Tensor) -> Tensor:
        """Real [N x C x H x W] images to the networks' size (the lecture resizes MNIST to 64 x 64)."""
        s = self.cfg.image_size
        return resize(x, (s, s))

    def logit(self, x: Tensor) -> Tensor:
        """The discriminator's logit s(x), D(x) = sigmoid(s(x)). :param x: [N x C x H x W]. :return: [N]."""
        return self.discriminator(self._resize(x))

    # -- training -------------------------------------------------------------------------------------------
    def steps(self, x: Tensor) -> Iterator[tuple[str, dict[str, Tensor]]]:
        """:param x: [N x C x H x W] real images in [-1, 1], resized to the networks' size. Yields the two
        players' steps (``bce_steps``) on fakes G(z), z ~ N(0, I)."""
        real = self._resize(x)
        yield from self.bce_steps(real, self.generator(self.noise(real.shape[0])), self.discriminator)

    # -- evaluation -----------------------------------------------------------------------------------------
    def energy(self, x: Tensor) -> Tensor:
        """-s(x), the negative discriminator logit: [N]. Low where D takes x for real data."""
        self.check_images(x)
        return -self.logit(x)
