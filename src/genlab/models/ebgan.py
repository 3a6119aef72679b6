"""Energy-based GAN (Zhao, Mathieu, LeCun 2016, arXiv 1609.03126): the discriminator is an autoencoder and its
energy is the reconstruction error.

    D(x)  = || Dec(Enc(x)) - x ||  in one of three scales (``--energy``):
            "sum"  squared error summed over the 784 pixels (the lecture's C(y) = ||Dec(Enc(y)) - y||^2),
            "mean" squared error averaged over the pixels (the sum / 784),
            "norm" the Euclidean norm, not squared (the paper, Sec. 2.3);
    L_D   = D(x) + [m - D(G(z))]^+                 per sample (the lecture's l_C; paper Eq. 1)
    L_G   = D(G(z)) + lambda_PT * PT               (paper Eq. 2 and Sec. 2.4)
    PT    = 1 / (N (N - 1)) sum_{i != j} cos^2(S_i, S_j), S = Enc(G(z)) the codes of the generated batch.

The right margin m depends on the energy's scale by a factor of 784 between "sum" and "mean": ``--margin 0``
picks the scale-matched default of each (see ``DEFAULT_MARGINS``). Every term is per example, shape [N]; the
PT of example i is its mean cos^2 with the others, so the batch mean is the paper's PT. ``--ema`` samples
from an exponential moving average of the generator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab.config import ImageShape, opt
from genlab.errors import GenlabError
from genlab.models.base import EMA, conv_sizes_ok
from genlab.models.gan_common import GENERATOR_SIZES, TwoPlayerGAN, find_log, make_generator, spread

ENERGIES = ("sum", "mean", "norm")

# Margins matched to each energy's scale on MNIST in [-1, 1]. "norm" is the paper's m = 10 (its MNIST grid
# search). For the lecture's "sum" the margin has to sit above the discriminator's energy of real digits (about
# 75 with m = 100, 125 with m = 200, during training) and below that of an untrained generator's blobs (several hundred): on full MNIST,
# two epochs with m = 200 gave FID 35 against 47 with m = 100 (= 10^2, the paper's margin squared), so 200;
# sqrt(200) = 14 lies inside the paper's sweep m in {1, ..., 32}. "mean" is the same threshold / 784.
DEFAULT_MARGINS = {"sum": 200.0, "norm": 10.0, "mean": 200.0 / 784}


@dataclass
class EBGANConfig(ImageShape):
    generator: str = opt("conv", "generator: conv (DCGAN-style, 4 -> 7 -> 14 -> 28 pixels) or mlp", choices=("conv", "mlp"))
    discriminator: str = opt("conv", "the discriminator autoencoder: conv or mlp", choices=("conv", "mlp"))
    nz: int = opt(100, "size of the latent noise z", min=1, max=10_000)
    ngf: int = opt(64, "generator width: channels of its last hidden layer (conv) or hidden units / 16 (mlp)",
                   min=1, max=256)
    ndf: int = opt(32, "discriminator width: channels of its first layer (conv) or hidden units / 16 (mlp)",
                   min=1, max=256)
    code_dim: int = opt(64, "size of the discriminator autoencoder's code (the PT acts on it)", min=1,
                        max=10_000)
    energy: str = opt("sum", "D(x): sum (squared error summed over pixels, the lecture), mean (averaged over "
                             "pixels) or norm (Euclidean norm, the paper)", choices=ENERGIES)
    margin: float = opt(0.0, "hinge margin m; 0 picks the default matched to --energy (sum 200, norm 10, "
                             "mean 200/784)", min=0.0, max=1e6)
    pt_weight: float = opt(0.1, "weight lambda_PT of the pulling-away term in the generator's loss (0: off)",
                           min=0.0, max=1e6)
    ema: float = opt(0.0, "decay of an exponential moving average of the generator used for sampling (0: off)",
                     min=0.0, below=1.0)


# -- the energy and the two loss terms, as functions so they can be checked against known answers ----------
def reconstruction_energy(x_hat: Tensor, x: Tensor, mode: str) -> Tensor:
    """||x_hat - x|| per example, [N x ...] -> [N]: squared and summed over pixels ("sum"), squared and
    averaged over pixels ("mean"), or the Euclidean norm ("norm"). In float32 whatever autocast made of x_hat
    (on a CPU, autocast leaves a bfloat16 difference's square and sum in bfloat16)."""
    sq = (x_hat.float() - x.float()).pow(2).flatten(1)
    if mode == "sum":
        return sq.sum(1)
    if mode == "mean":
        return sq.mean(1)
    if mode == "norm":
        # The norm's gradient is undefined at 0; the epsilon only matters for a perfect reconstruction.
        return (sq.sum(1) + 1e-12).sqrt()
    raise GenlabError(f"--energy must be one of {', '.join(ENERGIES)}, got {mode!r}")


def hinge_loss(energy_real: Tensor, energy_fake: Tensor, margin: float) -> Tensor:
    """The discriminator's loss per sample: D(x_i) + [m - D(G(z_i))]^+, [N] and [N] -> [N]."""
    return energy_real + F.relu(margin - energy_fake)


def pulling_away_term(codes: Tensor) -> Tensor:
    """The pulling-away term per example: [N x ...] codes -> [N], whose mean is the paper's PT.

    Each code is normalised over its own features; example i gets the mean over j != i of cos^2(S_i, S_j),
    so the batch mean equals 1 / (N (N - 1)) sum_{i != j} (S_i^T S_j / (|S_i| |S_j|))^2. A batch of
    mutually orthogonal codes gives 0, a batch of parallel codes 1.
    """
    s = F.normalize(codes.flatten(1), dim=1)
    n = s.shape[0]
    if n < 2:
        return torch.zeros(n, device=codes.device)
    cos2 = (s @ s.t()).float().pow(2)  # float32 from here under autocast (a CPU's keeps the square in bfloat16)
    return (cos2.sum(1) - cos2.diagonal()) / (n - 1)


# -- the discriminator: an autoencoder --------------------------------------------------------------------------
class ConvAutoencoder(nn.Module):
    """1 x 28 x 28 -> w x 14 x 14 -> 2w x 7 x 7 -> code [code_dim] -> 2w x 7 x 7 -> w x 14 x 14 -> 1 x 28 x 28.

    No batch norm, so each image's energy does not depend on the rest of its batch; no output squashing, so
    the energy of a generated image can be pushed up to the margin freely.
    """

    def __init__(self, width: int = 64, code_dim: int = 64, shape: tuple[int, int, int] = (1, 28, 28)):
        super().__init__()
        w, (c, h, wd) = width, shape
        cells = (h // 4) * (wd // 4)  # 49 for MNIST
        self.encoder = nn.Sequential(
            nn.Conv2d(c, w, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(w, 2 * w, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Flatten(), nn.Linear(2 * w * cells, code_dim),
        )
        self.decoder = nn.Sequential(
            nn.Linear(code_dim, 2 * w * cells), nn.LeakyReLU(0.2), nn.Unflatten(1, (2 * w, h // 4, wd // 4)),
            nn.ConvTranspose2d(2 * w, w, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.ConvTranspose2d(w, c, 4, 2, 1),
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """:param x: [N x 1 x 28 x 28]. :return: (reconstruction [N x 1 x 28 x 28], code [N x code_dim])."""
        code = self.encoder(x)
        return self.decoder(code), code


class MLPAutoencoder(nn.Module):
    """784 -> hidden -> code -> hidden -> 784, LeakyReLU, linear code and output."""

    def __init__(self, hidden: int = 1024, code_dim: int = 64, pixels: int = 784):
        super().__init__()
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(pixels, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, code_dim))
        self.decoder = nn.Sequential(nn.Linear(code_dim, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, pixels))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        code = self.encoder(x)
        return self.decoder(code).view_as(x), code


class EBGAN(TwoPlayerGAN):
    Config = EBGANConfig
    # Adam with betas (0.5, 0.999) as DCGAN; the paper's lr 1e-3 (its MNIST grid search) with batch 64. Three
    # epochs on full MNIST took 7 minutes on a 2-core CPU and give recognisable digits of every class.
    train_defaults = {"lr": 1e-3, "batch_size": 64, "epochs": 3}
    figure_sets = ("gan",)

    # Saturation: the hinge inactive for every generated image (all D(G(z)) >= m) for 200 steps in a row.
    # D then gets no gradient from fakes and G's samples are all far off the data; in healthy runs some
    # generated images fall below the margin on every batch after the first few hundred steps.
    SATURATION_PATIENCE = 200

    def __init__(self, cfg: EBGANConfig):
        super().__init__(cfg)
        if cfg.generator == "conv" and not (cfg.height == cfg.width and cfg.height in GENERATOR_SIZES):
            raise GenlabError(f"ebgan --generator conv makes square images of 28, 32 or 64 pixels, got {cfg.height} x "
                              f"{cfg.width}; pass --image-size 28, 32 or 64, or use --generator mlp")
        self.generator = make_generator(cfg.generator, cfg.nz, cfg.ngf, cfg.height, cfg.shape)
        if cfg.discriminator == "conv":
            conv_sizes_ok(cfg, "ebgan --discriminator conv")
            self.discriminator = ConvAutoencoder(cfg.ndf, cfg.code_dim, cfg.shape)
        else:
            self.discriminator = MLPAutoencoder(cfg.ndf * 16, cfg.code_dim, cfg.channels * cfg.height * cfg.width)
        self.g_ema = EMA(self.generator, cfg.ema) if cfg.ema > 0 else None

    @property
    def margin_value(self) -> float:
        """The margin m in use: ``--margin``, or the default matched to ``--energy`` (and, for "sum" and "norm",
        to the number of pixel values: the MNIST margins scale with C H W / 784, or its square root)."""
        if self.cfg.margin > 0:
            return self.cfg.margin
        scale = self.cfg.channels * self.cfg.height * self.cfg.width / 784
        return DEFAULT_MARGINS[self.cfg.energy] * {"sum": scale, "norm": scale ** 0.5, "mean": 1.0}[self.cfg.energy]

    # -- networks -------------------------------------------------------------------------------------------
    def _energy_and_code(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x_hat, code = self.discriminator(x)
        return reconstruction_energy(x_hat, x, self.cfg.energy), code

    # -- training -------------------------------------------------------------------------------------------
    def steps(self, x: Tensor) -> Iterator[tuple[str, dict[str, Tensor]]]:
        """:param x: [N x 1 x 28 x 28] real images in [-1, 1].

        Yields ("d", terms) then ("g", terms), each [N]: D's ``loss`` = D(x) + [m - D(G(z))]^+ with
        ``energy_real``, ``energy_fake`` and ``hinge_active`` (1 where D(G(z)) < m); G's ``loss`` =
        D(G(z)) + lambda_PT * PT with ``g_energy`` and ``pt``. Energies in the ``--energy`` scale.
        """
        n = x.shape[0]
        fake = self.generator(self.noise(n))

        # (1) Update D: push the energy of real images down and that of generated ones up to the margin.
        # G's output is detached: D's step must not push gradients into G.
        e_real, _ = self._energy_and_code(x)
        e_fake, _ = self._energy_and_code(fake.detach())
        m = self.margin_value
        yield "d", {"loss": hinge_loss(e_real, e_fake, m), "energy_real": e_real.detach(),
                    "energy_fake": e_fake.detach(), "hinge_active": (e_fake < m).float().detach(),
                    "spread_real": spread(x), "spread_fake": spread(fake)}

        # (2) Update G: lower the updated D's energy of the same generated images; the pulling-away term on
        # their codes keeps the batch from collapsing onto one mode (paper Sec. 2.4).
        e_fake, code = self._energy_and_code(fake)
        pt = pulling_away_term(code)
        yield "g", {"loss": e_fake + self.cfg.pt_weight * pt, "g_energy": e_fake.detach(), "pt": pt.detach()}

    def diverged(self, logs: dict[str, float]) -> str | None:
        active = find_log(logs, "hinge_active")
        if active is not None and self._saturated.update(active == 0.0):
            return (f"discriminator saturated: every generated image had energy above the margin "
                    f"m = {self.margin_value:g} for {self._saturated.count} steps in a row, so the generator gets "
                    f"no useful signal; try a larger --margin or a lower --lr")
        return self._collapsed(logs)

    # -- evaluation -----------------------------------------------------------------------------------------
    def energy(self, x: Tensor) -> Tensor:
        """The discriminator's reconstruction energy D(x), [N]: summed over pixels for ``--energy sum``,
        averaged over pixels for ``mean``, the (unsquared) Euclidean norm for ``norm``."""
        self.check_images(x)
        return self._energy_and_code(x)[0]

    def reconstruct(self, x: Tensor) -> Tensor:
        """The discriminator autoencoder's output Dec(Enc(x)), same shape as x."""
        self.check_images(x)
        return self.discriminator(x)[0]

    def energy_and_reconstruction(self, x: Tensor) -> tuple[Tensor, Tensor]:
        recon = self.reconstruct(x)
        return reconstruction_energy(recon, x, self.cfg.energy), recon
