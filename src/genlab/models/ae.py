"""The lecture's autoencoder: Linear-Tanh-Linear-Tanh on [-1, 1] pixels, trained with mean squared error.

Under-complete with ``--latent-dim 30`` (the lecture's Figs. 3 and 4), over-complete with 500.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from genlab.config import ImageShape, opt
from genlab.models.base import GenerativeModel


@dataclass
class AEConfig(ImageShape):
    latent_dim: int = opt(30, "code size d: 30 is under-complete (the lecture), 500 over-complete", min=1, max=10_000)


def squared_error(x_hat: Tensor, x: Tensor) -> Tensor:
    """Per-example squared error summed over pixels: [N x ...] -> [N]."""
    return (x_hat - x).pow(2).flatten(1).sum(1)


class AE(GenerativeModel):
    Config = AEConfig
    pixel_range = "tanh"
    graph_safe = True  # its loss is one fixed computation at every step (genlab.graphs)

    def __init__(self, cfg: AEConfig):
        super().__init__(cfg)
        d, pixels = cfg.latent_dim, cfg.channels * cfg.height * cfg.width
        self.encoder = nn.Sequential(nn.Linear(pixels, d), nn.Tanh())
        self.decoder = nn.Sequential(nn.Linear(d, pixels), nn.Tanh())

    def forward(self, x: Tensor) -> Tensor:
        """:param x: [N x C x H x W] in [-1, 1], flattened. :return: the reconstruction, same shape."""
        return self.decoder(self.encoder(x.flatten(1))).view_as(x)

    def reconstruct(self, x: Tensor) -> Tensor:
        self.check_images(x)
        return self(x)

    def loss(self, x: Tensor) -> dict[str, Tensor]:
        """``mse``: per-example squared error averaged over the pixels (nn.MSELoss's scale)."""
        mse = squared_error(self(x), x) / x[0].numel()
        return {"loss": mse, "mse": mse}

    def energy(self, x: Tensor) -> Tensor:
        """Reconstruction error ||x - Dec(Enc(x))||^2, summed over pixels: [N]."""
        self.check_images(x)
        return squared_error(self(x), x)

    def encoder_kernels(self) -> Tensor:
        return self.encoder[0].weight.detach()
