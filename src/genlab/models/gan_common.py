"""Pieces the GANs share: DCGAN-style networks, the two-player step and the divergence checks (their figures
are in genlab.viz.gan_figures).

Images are [N x C x S x S] in [-1, 1] (the generators end in Tanh), C the data's channels; S is 28 (MNIST's own
size), 32, or 64 (the lecture's DCGAN, which trains on MNIST resized to 64 x 64).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab import rng
from genlab.models.base import GenerativeModel, Streak, sample_count


# -- initialisation -----------------------------------------------------------------------------------------
def dcgan_init(module: nn.Module) -> None:
    """DCGAN's initialisation (Radford et al. 2016, Sec. 4): convolutions N(0, 0.02), batch norm scale
    N(1, 0.02) and shift 0. Apply with ``net.apply(dcgan_init)``."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


# -- generators: z [N x nz] -> images [N x C x S x S] in [-1, 1] --------------------------------------------
class MLPGenerator(nn.Module):
    """A fully connected generator: nz -> hidden -> ... -> 784 -> Tanh, batch norm between layers."""

    def __init__(self, nz: int, hidden: int = 1024, layers: int = 2, shape: tuple[int, int, int] = (1, 28, 28)):
        super().__init__()
        self.shape = tuple(shape)
        blocks, width = [], nz
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), nn.BatchNorm1d(hidden), nn.ReLU()]
            width = hidden
        self.net = nn.Sequential(*blocks, nn.Linear(width, math.prod(shape)), nn.Tanh())

    def forward(self, z: Tensor) -> Tensor:
        """:param z: [N x nz]. :return: [N x C x H x W] (1 x 28 x 28 for MNIST)."""
        return self.net(z).view(-1, *self.shape)


class ConvGenerator28(nn.Module):
    """The lecture's DCGAN generator with one upsampling stage fewer, sized for MNIST's own 28 x 28 pixels:
    z -> 4 ngf x 4 x 4 -> 2 ngf x 7 x 7 -> ngf x 14 x 14 -> 1 x 28 x 28 (batch norm, ReLU, Tanh output).

    The 4 -> 7 step uses a 3 x 3 kernel (stride 2, padding 1), the others DCGAN's 4 x 4; with ngf = 64 a
    step costs about a tenth of the 64 x 64 generator's.
    """

    def __init__(self, nz: int = 100, ngf: int = 64, channels: int = 1):
        super().__init__()
        self.net = nn.Sequential(
            nn.ConvTranspose2d(nz, 4 * ngf, 4, 1, 0, bias=False), nn.BatchNorm2d(4 * ngf), nn.ReLU(),        # 4
            nn.ConvTranspose2d(4 * ngf, 2 * ngf, 3, 2, 1, bias=False), nn.BatchNorm2d(2 * ngf), nn.ReLU(),   # 7
            nn.ConvTranspose2d(2 * ngf, ngf, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf), nn.ReLU(),           # 14
            nn.ConvTranspose2d(ngf, channels, 4, 2, 1, bias=False), nn.Tanh(),                                # 28
        )

    def forward(self, z: Tensor) -> Tensor:
        """:param z: [N x nz]. :return: [N x 1 x 28 x 28]."""
        return self.net(z[:, :, None, None])


class ConvGenerator64(nn.Module):
    """The lecture's DCGAN generator (the PyTorch examples' dcgan): z -> 8 ngf x 4 x 4 -> ... -> 1 x 64 x 64;
    ``size`` 32 drops the widest stage (z -> 4 ngf x 4 x 4 -> ... -> C x 32 x 32)."""

    def __init__(self, nz: int = 100, ngf: int = 64, channels: int = 1, size: int = 64):
        super().__init__()

        def up(c_in, c_out):  # doubles the side: 4 x 4 kernel, stride 2, padding 1
            return [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]

        top = 8 if size == 64 else 4
        stages = []
        while top > 1:
            stages += up(top * ngf, top // 2 * ngf)
            top //= 2
        self.net = nn.Sequential(
            nn.ConvTranspose2d(nz, (8 if size == 64 else 4) * ngf, 4, 1, 0, bias=False),
            nn.BatchNorm2d((8 if size == 64 else 4) * ngf), nn.ReLU(),                                   # 4
            *stages,                                                                                    # 8, 16, 32
            nn.ConvTranspose2d(ngf, channels, 4, 2, 1, bias=False), nn.Tanh(),                          # 64
        )

    def forward(self, z: Tensor) -> Tensor:
        """:param z: [N x nz]. :return: [N x 1 x 64 x 64]."""
        return self.net(z[:, :, None, None])


GENERATOR_SIZES = (28, 32, 64)


def make_generator(kind: str, nz: int, width: int, size: int = 28, shape: tuple[int, int, int] = (1, 28, 28)) -> nn.Module:
    """``kind`` "mlp" (images of ``shape``) or "conv" (``shape``'s channels, ``size`` x ``size``, ``size`` one of
    28, 32, 64). DCGAN-initialised."""
    if kind == "mlp":
        net = MLPGenerator(nz, hidden=width * 16, shape=shape)
    elif size not in GENERATOR_SIZES:
        from genlab.errors import GenlabError
        raise GenlabError(f"the convolutional generator makes square images of 28, 32 or 64 pixels, not {size}; "
                          "pass --image-size 28, 32 or 64 to resize the data")
    elif size in (32, 64):
        net = ConvGenerator64(nz, width, shape[0], size)
    else:
        net = ConvGenerator28(nz, width, shape[0])
    net.apply(dcgan_init)
    return net


def resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """[N x C x H x W] -> [N x C x size]: area averaging to shrink, bilinear to enlarge (the lecture trains its
    DCGAN on MNIST enlarged to 64 x 64)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if x.shape[-2] >= size[0] and x.shape[-1] >= size[1]:
        return F.interpolate(x, size=size, mode="area")
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


# -- what both GANs do alike --------------------------------------------------------------------------------
class TwoPlayerGAN(GenerativeModel):
    """A discriminator ``d`` and a generator ``g`` stepped in that order by the one training loop; subclasses
    set ``generator``, ``discriminator``, ``g_ema`` (an ``EMA`` or None), ``cfg.nz``, ``steps(x)``, and
    ``SATURATION_PATIENCE`` for their divergence checks ``_saturated`` (a ``Streak``) and ``_collapsed`` (a
    ``CollapseCheck``), which ``diverged`` updates."""

    pixel_range = "tanh"
    players = ("d", "g")
    can_sample = True
    SATURATION_PATIENCE: int  # steps in a row of a saturated discriminator that stop a run

    def __init__(self, cfg):
        super().__init__(cfg)
        self._saturated = Streak(self.SATURATION_PATIENCE)
        self._collapsed = CollapseCheck()

    def noise(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """The generator's input z ~ N(0, I): [n x nz], drawn by ``generator`` or the device's own."""
        return rng.randn((n, self.cfg.nz), generator, self.device)

    def player_parameters(self, player: str) -> list[nn.Parameter]:
        net = {"d": self.discriminator, "g": self.generator}[player]
        return list(net.parameters())

    def optimizer_options(self, player: str) -> dict:
        # Adam with beta1 = 0.5 for both players (DCGAN, Sec. 4: the default 0.9 oscillated and was unstable).
        return {"betas": (0.5, 0.999)}

    def after_step(self, player: str) -> None:
        if player == "g" and self.g_ema is not None:
            self.g_ema.update(self.generator)

    def check_state(self) -> dict[str, int]:
        return {"saturated": self._saturated.count, "collapse_seen": self._collapsed.seen,
                "collapse_streak": self._collapsed.streak.count}

    def load_check_state(self, state: dict[str, int]) -> None:
        self._saturated.count = state.get("saturated", 0)
        self._collapsed.seen = state.get("collapse_seen", 0)
        self._collapsed.streak.count = state.get("collapse_streak", 0)

    def loss(self, x: Tensor, *condition: Tensor) -> dict[str, Tensor]:
        """Both players' terms on one batch, no update: D's loss as ``loss``, G's as ``loss_g`` (each [N]).
        ``condition``: a conditional GAN's labels, as its ``steps`` takes them."""
        terms = {}
        for player, t in self.steps(x, *condition):
            for key, value in t.items():
                terms["loss_g" if (player == "g" and key == "loss") else key] = value.detach()
        return terms

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n samples [n x C x H x W] in [-1, 1] (the data's shape: 64 x 64 output is reduced to 28), from the EMA generator when
        ``--ema`` is on (see ``sampling_net``)."""
        with self.sampling_net() as net:
            return resize(net(self.noise(sample_count(n), generator)), (self.cfg.height, self.cfg.width))

    @contextmanager
    def sampling_net(self) -> Iterator[nn.Module]:
        """The generator samples come from (the EMA generator under ``--ema``), in evaluation mode (batch-norm
        running statistics) while the block runs, so sampling never changes the model."""
        net = self.g_ema.net if self.g_ema is not None else self.generator
        was_training = net.training
        net.eval()
        try:
            yield net
        finally:
            net.train(was_training)


# -- batch norm in the discriminator -------------------------------------------------------------------------
@contextmanager
def running_stats_frozen(net: nn.Module) -> Iterator[None]:
    """Batch norm in ``net`` normalises with the batch's statistics as usual but leaves its running statistics
    alone (momentum 0). A discriminator sees two generated batches for each real one; if they all fed the
    running statistics, evaluation mode (which uses them) would normalise real images with the statistics of
    fakes, and the energy of a real test image would mean nothing."""
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(norms, saved):
            m.momentum = momentum


# -- batch statistics for the divergence checks ---------------------------------------------------------------
def spread(x: Tensor) -> Tensor:
    """Each example's mean Euclidean distance to the other examples of its batch: [N x ...] -> [N].

    Its mean is the batch's mean pairwise distance; a generator collapsed onto one mode drives it to 0.
    """
    flat = x.detach().flatten(1).float()
    n = flat.shape[0]
    if n < 2:
        return torch.zeros(n, device=x.device)
    return torch.cdist(flat, flat).sum(1) / (n - 1)


def find_log(logs: dict[str, float], name: str) -> float | None:
    """``logs[name]``, also when the loop prefixed the key with its player ("d/name")."""
    if name in logs:
        return logs[name]
    for key, value in logs.items():
        if key.endswith("/" + name):
            return value
    return None


class CollapseCheck:
    """Generator collapse: the generated batch's mean pairwise distance ``spread_fake`` stays below
    ``ratio`` times the real batch's ``spread_real`` for ``patience`` consecutive steps, after ``warmup``.

    On MNIST in [-1, 1] a real batch has a mean pairwise distance of about 20 (42 at 64 x 64). A generator that
    emits one image (up to small jitter) falls below 0.1 of that; healthy generators reach 0.9 within a few
    hundred steps and stay there, and partial mode dropping keeps the ratio well above 0.5. Only the first
    steps of a run come near the threshold: the untrained generator's outputs are alike (ratios 0.1 to 0.3 in
    the first 100 steps of the 64 x 64 DCGAN), hence the warm-up and a streak of 200 steps rather than one.
    """

    def __init__(self, ratio: float = 0.1, patience: int = 200, warmup: int = 500):
        self.ratio = ratio
        self.streak = Streak(patience)
        self.warmup = warmup
        self.seen = 0

    def __call__(self, logs: dict[str, float]) -> str | None:
        fake, real = find_log(logs, "spread_fake"), find_log(logs, "spread_real")
        if fake is None or real is None or not real > 0:
            return None
        self.seen += 1
        if self.seen <= self.warmup:
            return None
        if self.streak.update(fake < self.ratio * real):
            return (f"generator collapsed: generated images have mean pairwise distance {fake:.3g}, below "
                    f"{self.ratio} x the real data's {real:.3g}, for {self.streak.count} steps in a row")
        return None
