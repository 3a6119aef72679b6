"""The lecture's autoencoder: Linear-Tanh-Linear-Tanh on [-1, 1] pixels, trained with mean squared error.

Under-complete with ``--latent-dim 30`` (the lecture's Figs. 3 and 4), over-complete with 500.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from genlab.config import ImageShape, opt
from genlab.models.base import GenerativeModel, Streak


@dataclass
class AEConfig(ImageShape):
    latent_dim: int = opt(30, "code size d: 30 is under-complete (the lecture), 500 over-complete", min=1, max=10_000)


def squared_error(x_hat: Tensor, x: Tensor) -> Tensor:
    """Per-example squared error summed over pixels: [N x ...] -> [N]."""
    return (x_hat - x).pow(2).flatten(1).sum(1)


class Reconstructor(GenerativeModel):
    """A model trained to give back its input's pixels, in [-1, 1], by mean squared error (AE, DAE): its
    divergence check. The error of an output of mid-grey (0) everywhere is mean(x^2), at most 1 whatever the
    images; an untrained network starts near it (0.8 to 1.3 measured, any code size, at both ends of the grey
    scale) and training only lowers it. An error above ``MSE_LIMIT`` for ``MSE_PATIENCE`` steps in a row means
    the outputs sit at the wrong ends of their range: Adam at --lr 10 left an AE there after its first step,
    its error frozen at 3.4, and the run ended with exit 0 as if it had trained. Only for outputs that end in a
    Tanh (``tanh_output``): an unbounded output (the conv DAE's, in training) can overshoot far above 2 at a
    high learning rate for a dozen steps and then recover."""

    pixel_range = "tanh"
    MSE_LIMIT, MSE_PATIENCE = 2.0, 10
    tanh_output = True

    def __init__(self, cfg):
        super().__init__(cfg)
        self._worse = Streak(self.MSE_PATIENCE)

    def diverged(self, logs: dict[str, float]) -> str | None:
        mse = logs.get("loss")
        if mse is not None and self.tanh_output and self._worse.update(mse > self.MSE_LIMIT):
            return (f"the mean squared error has stayed above {self.MSE_LIMIT:g} for {self._worse.count} steps in a "
                    f"row (now {mse:.3g}; an output of mid-grey everywhere scores at most 1): the outputs are stuck "
                    "at the wrong ends of their range; try a lower --lr")
        return None

    def check_state(self) -> dict[str, int]:
        return {"worse_than_grey": self._worse.count}

    def load_check_state(self, state: dict[str, int]) -> None:
        self._worse.count = state.get("worse_than_grey", 0)

    def reconstruct(self, x: Tensor) -> Tensor:
        self.check_images(x)
        return self(x)

    def energy(self, x: Tensor) -> Tensor:
        """Reconstruction error ||x - f(x)||^2 of the input as given (a DAE's uncorrupted), summed over pixels:
        [N]."""
        return self.energy_and_reconstruction(x)[0]

    def energy_and_reconstruction(self, x: Tensor) -> tuple[Tensor, Tensor]:
        recon = self.reconstruct(x)
        return squared_error(recon, x), recon


def mlp_autoencoder(cfg, d: int) -> tuple[nn.Module, nn.Module]:
    """The lecture's encoder and decoder for images of ``cfg``'s shape, flattened: Linear-Tanh to a code of
    ``d``, Linear-Tanh back to the pixels."""
    pixels = cfg.channels * cfg.height * cfg.width
    return nn.Sequential(nn.Linear(pixels, d), nn.Tanh()), nn.Sequential(nn.Linear(d, pixels), nn.Tanh())


class AE(Reconstructor):
    Config = AEConfig
    graph_safe = True  # its loss is one fixed computation at every step (genlab.graphs)

    def __init__(self, cfg: AEConfig):
        super().__init__(cfg)
        self.encoder, self.decoder = mlp_autoencoder(cfg, cfg.latent_dim)

    def forward(self, x: Tensor) -> Tensor:
        """:param x: [N x C x H x W] in [-1, 1], flattened. :return: the reconstruction, same shape."""
        return self.decoder(self.encoder(x.flatten(1))).view_as(x)

    def loss(self, x: Tensor) -> dict[str, Tensor]:
        """``mse``: per-example squared error averaged over the pixels (nn.MSELoss's scale)."""
        mse = squared_error(self(x), x) / x[0].numel()
        return {"loss": mse, "mse": mse}

    def encoder_kernels(self) -> Tensor:
        return self.encoder[0].weight.detach()
