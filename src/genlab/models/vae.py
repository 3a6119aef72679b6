"""The lecture's variational autoencoder (Kingma & Welling 2014) as an energy-based model.

The encoder maps an image to the mean and log-variance of a diagonal Gaussian q(z|x) over d latents; the
decoder maps z to the logits of 784 independent Bernoulli pixels p(x|z); the prior is N(0, I). Everything is
per example and in nats:

- ``rec``: -log p(x|z), the binary cross-entropy **summed over the 784 pixels**, computed from logits
  (softplus form), so it never takes the log of a saturated sigmoid;
- ``kl``: KL(q(z|x) || N(0, I)) in closed form, summed over the d latents: 0.5 * sum(v - log v - 1 + mu^2);
- the free energy F(x) = rec + beta * kl (the lecture's F(y) = C(y, y~) + beta * D_KL). With beta = 1 and rec
  averaged over codes drawn from q(z|x) it is the negative ELBO, an upper bound on -log p(x);
  ``genlab.metrics.likelihood`` tightens it by importance weighting (Burda, Grosse & Salakhutdinov 2016).
  ``energy`` decodes the single code z = mu in evaluation (the lecture's notebook), which is no bound: it is
  usually below the -ELBO.

Pixels are in [0, 1] (``pixel_range = "unit"``). Binarisation happens here, not in the data pipeline:
``none`` keeps grey values (the lecture and the PyTorch examples: the "BCE" of grey targets is then a loss,
not a log-likelihood), ``fixed`` thresholds at 0.5, ``dynamic`` draws x ~ Bernoulli(grey) afresh each time an
image is used in training (the standard for likelihood numbers). Evaluation binarises deterministically:
in eval mode each image gets one fixed binarisation, a pseudo-random function of the image itself
(``hashed_uniform``), so a test number does not depend on batch size, order, device or ``--limit``.

Two choices beyond the lecture make short runs better: the encoder starts near-deterministic (small means,
log-variance -4), so the decoder sees informative codes from the first step; and evaluation uses an
exponential moving average of the weights (Polyak & Juditsky 1992; ``--ema-decay 0`` turns it off). In the
PyTorch examples' setting (batch 128, Adam 1e-3, 10 epochs) they take the test loss from about 105.6 (that
script's own figure) to about 104.2 nats.

Training tricks, both off by default: a KL warm-up (beta rises linearly from 0 over ``warmup_epochs``;
Bowman et al. 2016, Sønderby et al. 2016) and free bits (Kingma et al. 2016, Appendix C: a latent dimension
whose batch-mean KL is below ``free_bits`` nats is not pushed further down). Both change only the training
loss; evaluation reports the true bound.

A second objective, ``--objective iwae``: from epoch ``iwae_from`` on the training loss is -L_k, the
importance-weighted bound with ``iwae_k`` draws (optionally with the doubly reparameterised encoder gradient,
``--dreg``). L_k is a bound on log p(x) itself: beta, the warm-up and free bits do not apply to it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab import rng
from genlab.config import ImageShape, opt
from genlab.errors import GenlabError
from genlab.models.base import EMA, GenerativeModel, conv_sizes_ok, sample_count

BINARIZE = ("none", "fixed", "dynamic")
EVAL_SEED = 0  # seed of the one fixed binarisation per image used in evaluation (see hashed_uniform)
LOG_2PI = math.log(2 * math.pi)


@dataclass
class VAEConfig(ImageShape):
    latent_dim: int = opt(20, "latent size d (the lecture: 20; 2 also draws the manifold figure)",
                          min=1, max=10_000)
    hidden: int = opt(400, "hidden units of encoder and decoder (the lecture: 400)", min=1, max=10_000)
    beta: float = opt(1.0, "KL weight in the free energy rec + beta * KL (1: the ELBO, the lecture)",
                      min=0.0, max=1e6)
    arch: str = opt("mlp", "mlp (the lecture: 784-400-2d encoder, d-400-784 decoder) or conv", choices=("mlp", "conv"))
    binarize: str = opt("none", "none: grey pixels in [0, 1] (the lecture); fixed: threshold 0.5; "
                                "dynamic: Bernoulli redrawn at each use (the standard for likelihoods)",
                        choices=BINARIZE)
    warmup_epochs: int = opt(0, "KL warm-up: beta rises linearly from 0 over this many epochs (0: off)",
                             min=0, max=1_000_000)
    free_bits: float = opt(0.0, "free bits: a latent's batch-mean KL counts as at least this many nats "
                                "in training (0: off)", min=0.0, max=1e6)
    objective: str = opt("elbo", "training objective: elbo (rec + beta * KL, the lecture) or iwae: from epoch "
                                 "--iwae-from on, -L_k, the importance-weighted bound with --iwae-k draws "
                                 "(Burda et al. 2016), which fits the decoder to the likelihood more closely",
                         choices=("elbo", "iwae"))
    iwae_k: int = opt(10, "importance samples of the training bound L_k (--objective iwae)", min=1, max=10_000)
    iwae_from: int = opt(0, "epochs trained on the ELBO before L_k replaces it (--objective iwae; 0: L_k throughout)",
                         min=0, max=1_000_000)
    dreg: bool = opt(False, "train the encoder on L_k with the doubly reparameterised gradient (Tucker et al. 2019)")
    ema_decay: float = opt(0.999, "evaluate with an exponential moving average of the weights, updated each step "
                                  "with this decay (0: off, the last weights)", min=0.0, below=1.0)
    tsne_epochs: str = opt("0,5,10", "epochs after which to draw the t-SNE of test codes (the lecture: 0,5,10; "
                                     "none: no t-SNE)")
    sample_eval: bool = opt(True, "the evaluation 'loss' decodes a sampled z (the PyTorch examples' test loss); "
                                  "--no-sample-eval decodes z = mu (the lecture's notebook); both are reported")

    def check(self) -> None:
        try:
            self.figure_epochs()
        except ValueError:
            raise GenlabError(f"--tsne-epochs must be comma-separated epoch numbers like 0,5,10, or none, "
                              f"got {self.tsne_epochs!r}") from None
        if self.dreg and self.objective != "iwae":  # it was accepted and did nothing
            raise GenlabError("--dreg is a gradient of the IWAE bound L_k; add --objective iwae, or leave --dreg out")

    def figure_epochs(self) -> set[int]:
        """The epochs of ``tsne_epochs`` as a set of ints."""
        if self.tsne_epochs.strip().lower() == "none":
            return set()
        return {int(e) for e in self.tsne_epochs.replace(" ", "").split(",") if e}


def bernoulli_nll(logits: Tensor, x: Tensor, weight: Tensor | None = None) -> Tensor:
    """-log Bernoulli(x | sigmoid(logits)) summed over all but the first dimension: [N x ...] -> [N]; with
    ``weight`` (0 or 1, broadcasting against ``logits``) over the pixels it marks only.

    softplus(l) - x * l is the binary cross-entropy written in logits: exact for x in {0, 1}, and the
    cross-entropy loss for grey x in [0, 1]; it never forms log(sigmoid(l)), which underflows.
    """
    nll = F.softplus(logits) - x * logits
    return (nll if weight is None else nll * weight).flatten(1).sum(1)


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, diag(exp(logvar))) || N(0, I)) per latent dimension, in nats: [N x d] -> [N x d]."""
    return 0.5 * (logvar.exp() - logvar - 1 + mu.pow(2))


def gaussian_log_density(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """log N(z; mu, diag(exp(logvar))) summed over the last dimension: [... x d] -> [...]."""
    return -0.5 * ((z - mu).pow(2) / logvar.exp() + logvar + LOG_2PI).sum(-1)


_U32 = 0xFFFFFFFF


def _mix32(h: Tensor) -> Tensor:
    """An integer hash (xorshift-multiply rounds, after Wellons' "lowbias32") of uint32 values held in int64.

    Multipliers stay below 2^31 so products fit in int64 without overflow.
    """
    h = h ^ (h >> 16)
    h = (h * 0x7FEB352D) & _U32
    h = h ^ (h >> 15)
    h = (h * 0x2C1B3C6D) & _U32
    return h ^ (h >> 16)


def hashed_uniform(x: Tensor, seed: int = EVAL_SEED) -> Tensor:
    """Pseudo-random numbers in (0, 1), one per pixel, that depend only on the image and the pixel's index.

    :param x: [N x ...] grey images in [0, 1]. :return: float64, same shape. Evaluation binarises with
        ``hashed_uniform(x) < x``: a draw of Bernoulli(x) fixed per image, the same in any batch.
    """
    flat = x.flatten(1)
    idx = torch.arange(flat.shape[1], device=x.device, dtype=torch.int64)
    levels = (flat * 255).round().to(torch.int64)                                # the 8-bit image
    weights = (_mix32(idx + 1) & 0x7FFFFF) | 1                                    # per-pixel odd weights < 2^23
    key = _mix32(((levels * weights).sum(1) & _U32) ^ (seed & _U32))             # [N]: one key per image
    h = _mix32((key[:, None] + idx * 0x9E3779B1) & _U32)                          # [N x P]
    return ((h.double() + 0.5) / 2.0 ** 32).view_as(x)


class MLPEncoder(nn.Module):
    """784 (C H W) -> hidden -> ReLU -> 2d (first d: mean, last d: log-variance), the lecture's encoder."""

    def __init__(self, d: int, hidden: int, shape: tuple[int, int, int] = (1, 28, 28)):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(math.prod(shape), hidden), nn.ReLU(), nn.Linear(hidden, 2 * d))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(1))


class MLPDecoder(nn.Module):
    """d -> hidden -> ReLU -> 784 (C H W) logits (the lecture's decoder without its final sigmoid)."""

    def __init__(self, d: int, hidden: int, shape: tuple[int, int, int] = (1, 28, 28)):
        super().__init__()
        self.shape = tuple(shape)
        self.net = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, math.prod(shape)))

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).view(-1, *self.shape)


class ConvEncoder(nn.Module):
    """28 -> 14 -> 7 strided convolutions (H x W -> H/4 x W/4), then hidden -> 2d."""

    def __init__(self, d: int, hidden: int, width: int = 32, shape: tuple[int, int, int] = (1, 28, 28)):
        super().__init__()
        w, (c, h, wd) = width, shape
        self.net = nn.Sequential(
            nn.Conv2d(c, w, 4, stride=2, padding=1), nn.ReLU(),          # 14 x 14
            nn.Conv2d(w, 2 * w, 4, stride=2, padding=1), nn.ReLU(),      # 7 x 7
            nn.Flatten(), nn.Linear(2 * w * (h // 4) * (wd // 4), hidden), nn.ReLU(), nn.Linear(hidden, 2 * d),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ConvDecoder(nn.Module):
    """d -> hidden -> 7 x 7 feature maps, then 7 -> 14 -> 28 transposed convolutions to one logit per pixel."""

    def __init__(self, d: int, hidden: int, width: int = 32, shape: tuple[int, int, int] = (1, 28, 28)):
        super().__init__()
        w, (c, h, wd) = width, shape
        self.net = nn.Sequential(
            nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, 2 * w * (h // 4) * (wd // 4)), nn.ReLU(),
            nn.Unflatten(1, (2 * w, h // 4, wd // 4)),
            nn.ConvTranspose2d(2 * w, w, 4, stride=2, padding=1), nn.ReLU(),   # 14 x 14
            nn.ConvTranspose2d(w, c, 4, stride=2, padding=1),                  # 28 x 28
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


class VAE(GenerativeModel):
    Config = VAEConfig
    pixel_range = "unit"
    can_sample = True
    # The PyTorch examples' vae (batch 128, 10 epochs, Adam 1e-3): the setting of the widely reported test
    # loss of about 105.6. The lecture's notebook uses batch 256 and 10 to 20 epochs (pass --batch-size 256).
    train_defaults = {"batch_size": 128, "epochs": 10}
    figure_sets = ("vae",)
    extra_metrics = ("likelihood",)
    graph_safe = True  # the loss reads the epoch only through beta_now and iwae_now (graph_key)

    def __init__(self, cfg: VAEConfig):
        super().__init__(cfg)
        d, h = cfg.latent_dim, cfg.hidden
        if cfg.arch == "mlp":
            self.encoder, self.decoder = MLPEncoder(d, h, cfg.shape), MLPDecoder(d, h, cfg.shape)
        else:
            conv_sizes_ok(cfg, "vae --arch conv")
            self.encoder, self.decoder = ConvEncoder(d, h, shape=cfg.shape), ConvDecoder(d, h, shape=cfg.shape)
        with torch.no_grad():
            # Start near-deterministic: small means and log-variance -4 (sigma 0.14), so the decoder learns
            # from informative codes at once instead of unit-variance noise; the KL term then widens q. Worth
            # about 0.4 nats of test loss after the PyTorch examples' 10 epochs.
            last = self.encoder.net[-1]
            last.weight.mul_(0.1)
            last.bias[:d].zero_()
            last.bias[d:].fill_(-4.0)
        # The averaged networks, used in eval mode (not trained: see player_parameters).
        # The one view of both networks the average follows, kept outside the module tree (so the state_dict
        # holds no second copy of the weights): a view made at every step would make EMA list its tensors anew.
        self.__dict__["_averaged"] = nn.ModuleDict({"encoder": self.encoder, "decoder": self.decoder})
        self.ema = EMA(self._averaged, cfg.ema_decay) if cfg.ema_decay > 0 else None
        # Epochs finished (KL warm-up); a buffer, so a resume continues the schedule.
        self.register_buffer("epochs_done", torch.zeros((), dtype=torch.long))
        self._epochs = 0  # ``epochs_done`` mirrored as a Python int, so no step waits for a GPU to read it

    def player_parameters(self, player: str) -> list[nn.Parameter]:
        return list(self.encoder.parameters()) + list(self.decoder.parameters())

    def after_step(self, player: str) -> None:
        if self.ema is not None:
            self.ema.update(self._averaged)

    def upgrade_state(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """Checkpoints of genlab 0.1 kept the averages as ``ema_encoder``/``ema_decoder``/``ema_steps``."""
        renamed = {"ema_encoder.": "ema.net.encoder.", "ema_decoder.": "ema.net.decoder.", "ema_steps": "ema.steps"}
        out = {}
        for key, value in state.items():
            old = next((o for o in renamed if key.startswith(o)), None)
            if old is None:
                out[key] = value
            elif self.ema is not None:  # an old run without an average kept an unused ema_steps
                out[renamed[old] + key[len(old):]] = value
        return out

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._epochs = int(self.epochs_done)  # once, when a checkpoint is loaded

    def _nets(self) -> tuple[nn.Module, nn.Module]:
        """(encoder, decoder): the trained ones in training mode, their averages in eval mode."""
        if self.training or self.ema is None:
            return self.encoder, self.decoder
        return self.ema.net["encoder"], self.ema.net["decoder"]

    # -- the network --------------------------------------------------------------------------------------
    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """:param x: [N x C x H x W] in [0, 1]. :return: (mu, logvar) of q(z|x), each [N x d]."""
        # .float(): under bf16 autocast the networks' matrix products run in bf16, but every probabilistic
        # term (KL, log-densities, log-sum-exp over draws) stays in float32. A no-op otherwise.
        mu, logvar = self._nets()[0](x).float().chunk(2, dim=1)
        return mu, logvar

    def decode_logits(self, z: Tensor) -> Tensor:
        """:param z: [N x d]. :return: Bernoulli logits of p(x|z), [N x C x H x W]."""
        return self._nets()[1](z).float()

    def decode(self, z: Tensor) -> Tensor:
        """:param z: [N x d]. :return: the mean of p(x|z), [N x C x H x W] in [0, 1]."""
        return torch.sigmoid(self.decode_logits(z))

    @staticmethod
    def reparameterize(mu: Tensor, logvar: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """z = mu + sigma * eps, eps ~ N(0, I): a sample of q(z|x) that gradients flow through. [N x d]."""
        eps = rng.randn(mu.shape, generator, mu.device, mu.dtype)
        return mu + (0.5 * logvar).exp() * eps

    def binarize(self, x: Tensor) -> Tensor:
        """Apply ``cfg.binarize`` to [N x C x H x W] grey images in [0, 1].

        ``dynamic`` draws Bernoulli(x) afresh in training mode; in eval mode it uses the one fixed draw
        ``hashed_uniform(x) < x`` per image. Images already in {0, 1} pass through every mode unchanged.
        """
        if self.cfg.binarize == "fixed":
            return (x > 0.5).to(x.dtype)
        if self.cfg.binarize == "dynamic":
            if self.training:
                return torch.bernoulli(x)
            return (hashed_uniform(x) < x).to(x.dtype)
        return x

    # -- per-example terms --------------------------------------------------------------------------------
    def terms(self, x: Tensor, sample: bool, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """One pass on already binarised x: ``rec`` [N] (BCE summed over pixels), ``kl_dim`` [N x d],
        ``mu``, ``logvar`` [N x d]. ``sample``: decode a draw of q(z|x), else its mean."""
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar, generator) if sample else mu
        rec = bernoulli_nll(self.decode_logits(z), x)
        return {"rec": rec, "kl_dim": gaussian_kl(mu, logvar), "mu": mu, "logvar": logvar}

    @property
    def beta_now(self) -> float:
        """The KL weight of the training loss: beta, ramped linearly from 0 during the warm-up."""
        w = self.cfg.warmup_epochs
        return self.cfg.beta * (min(1.0, self._epochs / w) if w else 1.0)

    @property
    def iwae_now(self) -> bool:
        """Whether the training loss is -L_k (``--objective iwae`` from epoch ``iwae_from`` on)."""
        return self.cfg.objective == "iwae" and self._epochs >= self.cfg.iwae_from

    def graph_key(self) -> tuple:
        return (self.beta_now, self.iwae_now)

    def end_of_epoch(self, epoch: int) -> None:
        """:param epoch: the epoch just finished, counting from 0; moves the KL warm-up and the objective on."""
        self.epochs_done.fill_(epoch + 1)
        self._epochs = epoch + 1

    def loss(self, x: Tensor) -> dict[str, Tensor]:
        """Training terms per example, [N] each, in nats: ``loss`` = rec + beta_now * KL (with free bits),
        ``rec`` (BCE summed over pixels, z sampled) and ``kl`` (the true KL, summed over latents).

        While ``iwae_now``: ``loss`` = -L_k, ``rec`` the BCE averaged over the k draws, ``kl`` the true KL.
        """
        x = self.binarize(x)
        if self.iwae_now:
            return self._iwae_terms(x, self.cfg.iwae_k, self.cfg.dreg)
        t = self.terms(x, sample=True)
        kl_dim = t["kl_dim"]
        kl_train = kl_dim
        if self.cfg.free_bits > 0:
            # Kingma et al. 2016, App. C: the batch-mean KL of a dimension (this process's shard under DDP)
            # counts as max(lambda, mean). Where the mean is below lambda the dimension gets no gradient;
            # the constant keeps the value right.
            below = kl_dim.mean(0, keepdim=True).detach() < self.cfg.free_bits
            kl_train = torch.where(below, torch.full_like(kl_dim, self.cfg.free_bits), kl_dim)
        kl = kl_dim.sum(1)
        return {"loss": t["rec"] + self.beta_now * kl_train.sum(1), "rec": t["rec"], "kl": kl}

    def eval_terms(self, x: Tensor, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Evaluation terms per example, [N] each, in nats (no warm-up, no free bits: the true objective).

        ``loss_sampled`` = rec + beta * KL decoding z ~ q(z|x) (the PyTorch examples' test loss);
        ``loss_mean`` the same decoding z = mu (the lecture's notebook); ``rec_sampled``, ``rec_mean``, ``kl``;
        ``neg_elbo`` = rec_sampled + KL, an unbiased estimate of -ELBO >= -log p(x) whatever beta is.
        ``loss`` is ``loss_sampled`` or, with ``--no-sample-eval``, ``loss_mean``.
        """
        x = self.binarize(x)
        mu, logvar = self.encode(x)
        kl = gaussian_kl(mu, logvar).sum(1)
        rec_sampled = bernoulli_nll(self.decode_logits(self.reparameterize(mu, logvar, generator)), x)
        rec_mean = bernoulli_nll(self.decode_logits(mu), x)
        b = self.cfg.beta
        out = {"loss_sampled": rec_sampled + b * kl, "loss_mean": rec_mean + b * kl,
               "rec_sampled": rec_sampled, "rec_mean": rec_mean, "kl": kl, "neg_elbo": rec_sampled + kl}
        out["loss"] = out["loss_sampled"] if self.cfg.sample_eval else out["loss_mean"]
        return out

    def energy(self, x: Tensor) -> Tensor:
        """The free energy F(x) = rec + beta * KL per example, in nats (rec summed over pixels): [N].

        Decodes z = mu in eval mode (deterministic, the lecture's choice) and a sample of q(z|x) in training.
        """
        self.check_images(x)
        t = self.terms(self.binarize(x), sample=self.training)
        return t["rec"] + self.cfg.beta * t["kl_dim"].sum(1)

    def energy_and_reconstruction(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.training:  # two draws of q(z|x), as the two calls make
            return super().energy_and_reconstruction(x)
        self.check_images(x)
        xb = self.binarize(x)
        mu, logvar = self.encode(xb)
        logits = self.decode_logits(mu)
        return bernoulli_nll(logits, xb) + self.cfg.beta * gaussian_kl(mu, logvar).sum(1), torch.sigmoid(logits)

    # -- importance weighting -----------------------------------------------------------------------------
    def log_weights(self, x: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor:
        """log w = log p(x|z) + log p(z) - log q(z|x) for k draws z ~ q(z|x) per image: [k x N].

        :param x: [N x C x H x W], already binarised. All k * N decoder passes go in one batch; the caller
            bounds memory by choosing k and N (``genlab.metrics.likelihood.iwae_bound`` chunks them).
        """
        return self._log_weights(x, k, generator)[0]

    def _log_weights(self, x: Tensor, k: int, generator: torch.Generator | None = None,
                     fixed_q: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(log w [k x N], the draws z [k x N x d], log p(x|z) [k x N], KL(q(z|x) || p(z)) [N]). ``fixed_q``
        holds q's parameters fixed inside log q(z|x): same value, but the encoder's gradient then flows through
        z alone (the score term is dropped)."""
        mu, logvar = self.encode(x)
        n, d = mu.shape
        eps = rng.randn((k, n, d), generator, mu.device, mu.dtype)
        z = mu + (0.5 * logvar).exp() * eps                                          # [k x N x d]
        logits = self.decode_logits(z.reshape(k * n, d)).view(k, n, -1)             # [k x N x 784]
        # -bernoulli_nll, with the x . logits part as one contraction (this loop is IWAE's whole cost), in
        # float32 under bf16 autocast too (autocast would run the contraction as a bf16 matrix product).
        with torch.autocast(logits.device.type, enabled=False):
            log_px = torch.einsum("knp,np->kn", logits, x.flatten(1).float()) - F.softplus(logits).sum(-1)  # [k x N]
        log_pz = -0.5 * (z.pow(2) + LOG_2PI).sum(-1)
        if fixed_q:
            log_qz = gaussian_log_density(z, mu.detach(), logvar.detach())
        else:
            log_qz = -0.5 * (eps.pow(2) + logvar + LOG_2PI).sum(-1)
        return log_px + log_pz - log_qz, z, log_px, gaussian_kl(mu, logvar).sum(1)

    def iwae_loss(self, x: Tensor, k: int, dreg: bool = False) -> Tensor:
        """-L_k, the importance-weighted bound with k draws, per image: [N] nats (a training objective).

        :param x: [N x C x H x W], already binarised.
        :param dreg: take the encoder's gradient by the doubly reparameterised estimator (Tucker, Lawson, Gu &
            Maddison 2019): same value, same decoder gradient, same expected encoder gradient, but the encoder
            gets it through z alone, weighted by the squared normalised weights, which keeps its signal as k
            grows instead of letting it fade (Rainforth et al. 2018).
        """
        return self._iwae_terms(x, k, dreg)["loss"]

    def _iwae_terms(self, x: Tensor, k: int, dreg: bool) -> dict[str, Tensor]:
        """``iwae_loss`` as ``loss``, with ``rec`` (-log p(x|z) averaged over the k draws) and ``kl`` (the
        closed-form KL) for the log, [N] each; ``rec`` and ``kl`` carry no gradient."""
        log_w, z, log_px, kl = self._log_weights(x, k, fixed_q=dreg)
        value = math.log(k) - torch.logsumexp(log_w, 0)
        logged = {"rec": -log_px.detach().mean(0), "kl": kl.detach()}
        if not dreg:
            return {"loss": value, **logged}
        w = torch.softmax(log_w.detach(), 0)
        if z.requires_grad:
            z.register_hook(lambda grad: grad * w.unsqueeze(-1))  # the encoder's weights w -> w^2
        surrogate = -(w * log_w).sum(0)
        return {"loss": value.detach() + (surrogate - surrogate.detach()), **logged}

    # -- pictures -----------------------------------------------------------------------------------------
    def reconstruct(self, x: Tensor, sample: bool | None = None) -> Tensor:
        """The decoder's mean image for the code of x: [N x C x H x W] in [0, 1].

        ``sample`` None decodes z = mu in eval mode and a draw of q(z|x) in training mode.
        """
        self.check_images(x)
        mu, logvar = self.encode(self.binarize(x))
        draw = self.training if sample is None else sample
        return self.decode(self.reparameterize(mu, logvar) if draw else mu)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Decode z ~ N(0, I): the mean images of p(x|z), [n x 1 x 28 x 28] in [0, 1] (grey, as the lecture)."""
        z = rng.randn((sample_count(n), self.cfg.latent_dim), generator, self.device)
        return self.decode(z)

    def encoder_kernels(self) -> Tensor | None:
        return self._nets()[0].net[0].weight.detach() if self.cfg.arch == "mlp" else None
