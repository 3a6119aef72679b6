"""The conditional VAE (Sohn, Lee & Yan 2015, "Learning structured output representation using deep conditional
generative models") as an energy-based model: the energy of an output y given a condition c is the
conditional free energy F(y | c) = -E_q[log p(y | c, z)] + KL(q(z | c, y) || p(z | c)), an upper bound on
-log p(y | c) in nats.

Two conditions (``--condition``):

- ``label``: y is the whole image, c its digit class (one-hot). Recognition q(z | x, c), generation p(x | z, c),
  prior N(0, I). Sampling a class: z ~ N(0, I), decode with that class's one-hot.
- ``quadrants``: the paper's structured-output task on MNIST. c is a digit with 1, 2 or 3 of its 14 x 14
  quadrants observed (the rest set to -1, so the mask is part of the input), y the unseen quadrants. As in
  Pyro's reproduction of the paper, 1 quadrant is the bottom-left one, 2 the left half, 3 all but the
  bottom-right one (``quadrant_mask``). The prior is learned, p(z | c) (the paper's "conditional prior
  network"); recognition q(z | c, y) sees the whole image; generation p(y | c, z) gives Bernoulli logits of
  every pixel but only the unseen ones count. One model serves all three tasks: each training image gets a
  task drawn uniformly from {1, 2, 3}, while Pyro trains one model per task.

Everything is per example, in nats. Pixels are in [0, 1] (``pixel_range = "unit"``) and the targets keep their
grey values, as Pyro's reproduction does (its ``MaskedBCELoss`` and Bernoulli likelihood on ``ToTensor``
digits), so the bound and the importance-sampled negative conditional log-likelihood
(``genlab.metrics.conditional``) compare with its table; ``rec`` is the binary cross-entropy **summed over the
target pixels** (784 for ``label``, the unseen 588 / 392 / 196 for ``quadrants``).

Networks are the lecture VAE's MLPs, two hidden layers of ``hidden`` units each (Pyro uses 500 and 500).
As in genlab's VAE, q starts near-deterministic (log-variance -4) and evaluation uses an exponential moving
average of the weights (``--ema-decay``).
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab import rng
from genlab.config import ImageShape, opt
from genlab.errors import GenlabError
from genlab.models.base import EMA, GenerativeModel, mnist_shape_only, sample_count
from genlab.models.vae import LOG_2PI, bernoulli_nll, gaussian_log_density

CONDITIONS = ("label", "quadrants")
TASKS = (1, 2, 3)  # observed quadrants in the structured-output task
MASKED = -1.0  # the value unseen pixels take in the condition (Pyro's choice; observed pixels are in [0, 1])


@dataclass
class CVAEConfig(ImageShape):
    condition: str = opt("label", "label: generate a digit of a given class; quadrants: complete a digit from "
                                  "1, 2 or 3 observed quadrants (Sohn et al. 2015, Sec. 5.1)", choices=CONDITIONS)
    latent_dim: int = opt(32, "latent size d", min=1, max=10_000)
    hidden: int = opt(500, "units of each of the two hidden layers of every network (Pyro's reproduction: 500)",
                      min=1, max=10_000)
    ema_decay: float = opt(0.999, "evaluate with an exponential moving average of the weights, updated each step "
                                  "with this decay (0: off, the last weights)", min=0.0, below=1.0)


def checked_task(observed: int) -> int:
    """``observed`` (how many quadrants are seen), if it is one of the tasks 1, 2, 3."""
    try:
        task = operator.index(observed)  # an int, or a numpy integer
    except TypeError:
        task = None
    if isinstance(observed, bool) or task not in TASKS:
        raise GenlabError(f"the number of observed quadrants must be 1, 2 or 3, got {observed!r}")
    return task


def quadrant_mask(observed: int) -> Tensor:
    """The observed pixels of a task as a bool [28 x 28]: 1 = bottom-left quadrant, 2 = left half, 3 = all but
    the bottom-right quadrant."""
    return task_masks(torch.tensor([checked_task(observed)]))[0, 0]


def one_hot_checked(c: Tensor, low: int, high: int, what: str) -> Tensor:
    """``c`` (int [N], values in low..high) one-hot: [N x (high - low + 1)]. A value outside fails in one_hot:
    here on a CPU, in its device-side assert on a GPU (a check in Python would read ``c`` back from the device
    and make every GPU step wait)."""
    try:
        return F.one_hot(c.long() - low, high - low + 1)
    except RuntimeError:
        raise GenlabError(f"{what} must be in {low}..{high}") from None


def task_masks(tasks: Tensor) -> Tensor:
    """Observed-pixel masks of a batch: int [N] tasks in {1, 2, 3} -> bool [N x 1 x 28 x 28] (see
    ``quadrant_mask``), built on the tasks' device by comparison (no copy from the host)."""
    _, two, three = one_hot_checked(tasks, 1, 3, "observed quadrants").bool().view(-1, 3, 1, 1).unbind(1)
    upper = torch.arange(28, device=tasks.device) < 14
    top, left = upper.view(1, 28, 1), upper.view(1, 1, 28)
    return ((~top & left) | ((two | three) & left) | (three & top)).unsqueeze(1)


def gaussian_kl2(mu_q: Tensor, lv_q: Tensor, mu_p: Tensor, lv_p: Tensor) -> Tensor:
    """KL(N(mu_q, e^lv_q) || N(mu_p, e^lv_p)) summed over the last dimension, in nats: [N x d] -> [N]."""
    return 0.5 * (lv_p - lv_q + (lv_q.exp() + (mu_q - mu_p).pow(2)) / lv_p.exp() - 1).sum(-1)


def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, n_out))


class CVAENets(nn.Module):
    """recognition [x, c] -> (mu, logvar) of q(z | c, x); prior c -> (mu, logvar) of p(z | c) (quadrants only);
    decoder [z, c] -> 784 logits. ``c`` is a one-hot [N x 10] or a masked image [N x 784]."""

    def __init__(self, cond_dim: int, d: int, hidden: int, learned_prior: bool):
        super().__init__()
        self.recognition = _mlp(784 + cond_dim, hidden, 2 * d)
        self.prior = _mlp(cond_dim, hidden, 2 * d) if learned_prior else None
        self.decoder = _mlp(d + cond_dim, hidden, 784)
        with torch.no_grad():
            # q starts near-deterministic (sigma 0.14), as in genlab's VAE: the decoder learns from informative
            # codes at once; the KL term widens q.
            last = self.recognition[-1]
            last.weight.mul_(0.1)
            last.bias[:d].zero_()
            last.bias[d:].fill_(-4.0)


class CVAE(GenerativeModel):
    Config = CVAEConfig
    pixel_range = "unit"
    conditional = True
    learned_classes: list[int] | None = None  # a run of some classes: its label-free energy is over those (load_run)
    can_sample = True
    train_defaults = {"batch_size": 128, "epochs": 20}
    figure_sets = ("conditional",)
    extra_metrics = ("conditional",)

    def __init__(self, cfg: CVAEConfig):
        super().__init__(cfg)
        mnist_shape_only(cfg, "cvae")
        self.quadrants = cfg.condition == "quadrants"
        # A quadrant model completes digits rather than drawing them (``complete``), so it does not ``sample``.
        self.can_sample = not self.quadrants
        self.nets = CVAENets(784 if self.quadrants else 10, cfg.latent_dim, cfg.hidden, self.quadrants)
        self.ema = EMA(self.nets, cfg.ema_decay) if cfg.ema_decay > 0 else None

    def player_parameters(self, player: str) -> list[nn.Parameter]:
        return list(self.nets.parameters())

    def after_step(self, player: str) -> None:
        if self.ema is not None:
            self.ema.update(self.nets)

    def upgrade_state(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """Checkpoints of genlab 0.1 kept the average as ``ema_nets`` and ``ema_steps``."""
        out = {}
        for key, value in state.items():
            if key.startswith("ema_nets."):
                out["ema.net." + key[len("ema_nets."):]] = value
            elif key == "ema_steps":
                if self.ema is not None:
                    out["ema.steps"] = value
            else:
                out[key] = value
        return out

    def _nets(self) -> CVAENets:
        """The trained networks in training mode, their average in eval mode."""
        return self.nets if self.training or self.ema is None else self.ema.net

    # -- conditions -----------------------------------------------------------------------------------------
    def condition(self, x: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        """(condition vector, target weight) of a batch.

        :param x: [N x 1 x 28 x 28] in [0, 1].
        :param c: int [N]: the digit classes (``label``) or the observed quadrants 1, 2, 3 (``quadrants``).
        :return: the condition [N x 10] (one-hot) or [N x 784] (the image, unseen pixels at -1), and the
            weight of each pixel in the likelihood, [N x 1 x 28 x 28] (quadrants: 1 on unseen pixels) or [1].
        """
        if self.quadrants:
            seen = task_masks(c)
            return torch.where(seen, x, torch.full_like(x, MASKED)).flatten(1), (~seen).to(x.dtype)
        one_hot = one_hot_checked(c, 0, 9, "digit labels")
        return one_hot.to(x.dtype), torch.ones(1, device=x.device, dtype=x.dtype)

    # .float() in the three below: under bf16 autocast the matrix products run in bf16, while the draws, the KL
    # and the log-densities stay in float32 (as the VAE's). A no-op otherwise.
    def _q(self, x: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        return self._nets().recognition(torch.cat([x.flatten(1), cond], 1)).float().chunk(2, dim=1)

    def _p(self, cond: Tensor) -> tuple[Tensor, Tensor]:
        """(mu, logvar) of the prior p(z | c): learned for quadrants, N(0, I) for labels. Each [N x d]."""
        if self.quadrants:
            return self._nets().prior(cond).float().chunk(2, dim=1)
        zeros = cond.new_zeros(len(cond), self.cfg.latent_dim)
        return zeros, zeros

    def decode_logits(self, z: Tensor, cond: Tensor) -> Tensor:
        """:param z: [N x d]; :param cond: [N x C]. :return: Bernoulli logits [N x 1 x 28 x 28]."""
        return self._nets().decoder(torch.cat([z, cond], 1)).float().view(-1, 1, 28, 28)

    # -- per-example terms ----------------------------------------------------------------------------------
    def terms(self, x: Tensor, c: Tensor, sample: bool = True) -> dict[str, Tensor]:
        """``rec`` (BCE summed over the target pixels, z drawn from q or at its mean), ``kl``
        (KL(q(z | c, x) || p(z | c))) and ``loss`` = rec + kl, the conditional free energy; each [N] nats."""
        cond, weight = self.condition(x, c)
        mu, lv = self._q(x, cond)
        z = mu + (0.5 * lv).exp() * torch.randn_like(mu) if sample else mu
        rec = bernoulli_nll(self.decode_logits(z, cond), x, weight)
        kl = gaussian_kl2(mu, lv, *self._p(cond))
        return {"loss": rec + kl, "rec": rec, "kl": kl}

    def _tasks_for(self, x: Tensor, y: Tensor | None) -> Tensor:
        """The condition of each image in training: its label, or (quadrants) a task drawn from {1, 2, 3}."""
        if self.quadrants:
            return torch.randint(1, 4, (len(x),), device=x.device)
        if y is None:
            raise GenlabError("a cvae with --condition label needs the digit labels of its images")
        return y

    def loss(self, x: Tensor, y: Tensor | None = None) -> dict[str, Tensor]:
        """Training terms [N] each: the conditional free energy ``loss`` = rec + kl (the negative ELBO).
        ``y``: digit labels [N]; a quadrant model ignores them and draws a task per image."""
        return self.terms(x, self._tasks_for(x, y))

    def eval_terms(self, x: Tensor, y: Tensor | None = None) -> dict[str, Tensor]:
        """Evaluation terms [N] each, z drawn from q. ``label``: ``loss`` (= -ELBO of x given its label y),
        ``rec``, ``kl``. ``quadrants``: ``neg_elbo_q1/q2/q3`` (the bound on -log p(unseen | seen) for 1, 2, 3
        observed quadrants) and ``loss``, their mean."""
        if not self.quadrants:
            return self.terms(x, self._tasks_for(x, y))
        out = {}
        for t in TASKS:
            out[f"neg_elbo_q{t}"] = self.terms(x, torch.full((len(x),), t, device=x.device))["loss"]
        out["loss"] = sum(out.values()) / len(TASKS)
        return out

    def energy(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """The conditional free energy per example, [N] nats, z at the mean of q in eval mode.

        ``label`` with labels ``y``: F(x | y). Without labels: -log (1/K) sum_y exp(-F(x | y)), the free
        energy of x under a uniform prior over the K classes it learned (``learned_classes``; all ten by
        default), an upper bound on -log p(x), as each F(x | y) bounds -log p(x | y). ``quadrants``: the mean
        over the three tasks of F(unseen | seen) (labels unused).
        """
        self.check_images(x)
        sample = self.training
        if self.quadrants:
            return sum(self.terms(x, torch.full((len(x),), t, device=x.device), sample)["loss"]
                       for t in TASKS) / len(TASKS)
        if y is not None:
            return self.terms(x, y, sample)["loss"]
        classes, per_class = self._free_energies(x, sample)
        return math.log(len(classes)) - torch.logsumexp(-per_class, 0)

    def _free_energies(self, x: Tensor, sample: bool) -> tuple[Tensor, Tensor]:
        """The classes the model learned (``learned_classes``; all ten by default), [K], and F(x | y) for each:
        [K x N]. A class the run never saw has an untrained slot, so it is never among them."""
        classes = torch.tensor(self.learned_classes or range(10), device=x.device)
        return classes, torch.stack([self.terms(x, k.expand(len(x)), sample)["loss"] for k in classes])

    # -- importance weighting -------------------------------------------------------------------------------
    def log_weights(self, x: Tensor, c: Tensor, k: int) -> Tensor:
        """log w = log p(y | c, z) + log p(z | c) - log q(z | c, y) for k draws z ~ q per example: [k x N].

        Its log-mean-exp over the k draws is a lower bound on log p(y | c) that tightens as k grows (Burda et al.
        2016); k = 1 is the ELBO in expectation.
        """
        cond, weight = self.condition(x, c)
        mu, lv = self._q(x, cond)
        mu_p, lv_p = self._p(cond)
        n, d = mu.shape
        eps = torch.randn(k, n, d, device=x.device, dtype=mu.dtype)
        z = mu + (0.5 * lv).exp() * eps                                                  # [k x N x d]
        # The decoder's first layer splits into its z part (per draw) and its condition part (once per image).
        dec = self._nets().decoder
        first = dec[0]
        h_cond = F.linear(cond, first.weight[:, d:], first.bias)                         # [N x H]
        h = torch.relu(F.linear(z, first.weight[:, :d]) + h_cond)                       # [k x N x H]
        logits = dec[1:](h)                                                              # [k x N x 784]
        target, w = x.flatten(1), weight.flatten(1) if weight.dim() > 1 else weight
        log_py = -((F.softplus(logits) - target * logits) * w).sum(-1)                   # [k x N]
        log_pz = gaussian_log_density(z, mu_p, lv_p)
        log_qz = -0.5 * (eps.pow(2) + lv + LOG_2PI).sum(-1)
        return log_py + log_pz - log_qz

    # -- generation -----------------------------------------------------------------------------------------
    def complete(self, x: Tensor, observed: int, n: int = 1, generator: torch.Generator | None = None) -> Tensor:
        """``n`` completions of each image from ``observed`` quadrants (1: the lower left, 2: the left half,
        3: all but the lower right): z ~ p(z | c) drawn by ``generator`` (None: the device's own), the decoder's
        mean on the unseen pixels, the observed pixels kept. :param x: [N x 1 x 28 x 28] in [0, 1].
        :return: [n x N x 1 x 28 x 28]."""
        if not self.quadrants:
            raise GenlabError("completing quadrants needs a cvae trained with --condition quadrants")
        c = torch.full((len(x),), checked_task(observed), device=x.device)
        cond, weight = self.condition(x, c)
        mu_p, lv_p = self._p(cond)
        out = []
        for _ in range(n):
            z = mu_p + (0.5 * lv_p).exp() * rng.randn(mu_p.shape, generator, mu_p.device, mu_p.dtype)
            mean = torch.sigmoid(self.decode_logits(z, cond))
            out.append(torch.where(weight > 0, mean, x))
        return torch.stack(out)

    @torch.no_grad()
    def sample(self, n: int, y: Tensor | int | None = None, generator: torch.Generator | None = None) -> Tensor:
        """Decode z ~ N(0, I) with class ``y`` (int [n], one int, or None for the classes cycled: 0, 1, ..., 9, 0,
        ..., or those the run learned): the mean images [n x 1 x 28 x 28] in [0, 1]."""
        if self.quadrants:
            raise GenlabError("a cvae with --condition quadrants completes digits (see figures/completions.png); "
                              "train --condition label to draw digits of a class")
        labels = class_labels(sample_count(n), y, self.device, self.learned_classes)
        z = rng.randn((len(labels), self.cfg.latent_dim), generator, self.device)
        cond = F.one_hot(labels, 10).to(z.dtype)
        return torch.sigmoid(self.decode_logits(z, cond))

    def reconstruct(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Label models: the decoder's mean for the code of x given its class (``y``; default: the learned class of
        the smallest free energy). Quadrant models: the completion from 2 observed quadrants at the prior's mean."""
        self.check_images(x)
        if self.quadrants:
            c = torch.full((len(x),), 2, device=x.device)
            cond, weight = self.condition(x, c)
            mean = torch.sigmoid(self.decode_logits(self._p(cond)[0], cond))
            return torch.where(weight > 0, mean, x)
        if y is None:
            classes, per_class = self._free_energies(x, sample=False)
            y = classes[per_class.argmin(0)]
        cond, _ = self.condition(x, y)
        return torch.sigmoid(self.decode_logits(self._q(x, cond)[0], cond))


def class_labels(n: int, y: Tensor | int | None, device, learned: list[int] | None = None) -> Tensor:
    """Labels for ``n`` conditional samples: ``y`` as given (int [n] or one class for all), or the classes cycled:
    0..9, or those a run of some classes ``learned`` (another is refused, see ``check_learned``)."""
    if y is None:
        classes = torch.tensor(learned or range(10), device=device)
        return classes[torch.arange(n, device=device) % len(classes)]
    if isinstance(y, torch.Generator):
        raise GenlabError("the classes come second in sample(n, y, generator): pass the generator as generator=...")
    try:  # Python's, NumPy's and PyTorch's integers alike, one or one per sample
        labels = torch.as_tensor(y, device=device)
    except (TypeError, ValueError, RuntimeError):
        raise GenlabError(f"the classes are integers 0..9 (one, or one per sample), got {type(y).__name__} "
                          f"{str(y)[:40]!r}") from None
    if labels.dtype == torch.bool and labels.dim() == 0:
        raise GenlabError(f"the classes are integers 0..9, got the truth value {bool(labels)}")
    if labels.numel() and (labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex()):
        # a float would be truncated: 2.7 sampled class 2
        raise GenlabError(f"the classes are integers 0..9, got {str(labels.dtype).removeprefix('torch.')} labels")
    labels = labels.long()
    if labels.dim() == 0:  # one class for all
        if not 0 <= int(labels) <= 9:
            raise GenlabError(f"a digit class is 0..9, got {int(labels)}")
        labels = labels.expand(n).clone()
    if labels.shape != (n,):
        raise GenlabError(f"expected {n} labels (or one class for all), got shape {list(labels.shape)}")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise GenlabError("digit labels must be in 0..9")
    check_learned(labels, learned)
    return labels


def check_learned(y: Tensor | int, learned: list[int] | None) -> None:
    """Refuse a class that a run of some classes never learned (``learned``; None: all ten): its samples are
    noise, and the network drew them without a word. (Energies given a label stay open to every class: evaluate
    scores a run's whole test split, each image given its own label.)"""
    if not learned:
        return
    wanted = torch.as_tensor(y).reshape(-1).cpu()
    unseen = sorted(set(wanted.tolist()) - set(learned))
    if unseen:
        raise GenlabError(f"this run learned the classes {', '.join(map(str, learned))} only; class {unseen[0]} is "
                          "one it never saw")
