"""What every genlab model is: an energy-based model with per-example losses.

A model takes images ``x`` as an [N x C x H x W] float tensor (its config's ``channels``, ``height`` and ``width``,
set by ``genlab train`` from the data; 1 x 28 x 28 for MNIST) in its own pixel range (``pixel_range``:
"tanh" is [-1, 1] as in the lecture's autoencoders, "unit" is [0, 1] as in its VAE) and gives

- ``loss(x)``: a dict of per-example terms, each of shape [N]; ``"loss"`` is what training minimises;
- ``energy(x)``: shape [N], low on the data manifold, high off it (each model's docstring says whether it is a
  sum or a mean over pixels);
- ``reconstruct(x)``: same shape as ``x``, where the model has one;
- ``sample(n, generator=None)``: [n x C x H x W] (the model's image shape) in the pixel range, where the model
  can sample; the noise comes from ``generator`` (a ``torch.Generator`` of your own) or the device's own.

``energy`` and ``reconstruct`` refuse, in one line, images of another shape or a non-float type (``check_images``).

Models with two players (GANs) override ``players`` and ``steps``; the one training loop steps one optimiser
per player, in the order ``steps`` yields them.

Conditional models (``conditional = True``) also take the digit labels ``y`` (int64 [N]) of their images: the
loop calls ``steps(x, y)`` and ``eval_terms(x, y)``, and ``sample(n, y)`` draws images of the given classes.
"""

from __future__ import annotations

import copy
import math
import operator
from contextlib import contextmanager
from typing import Callable, ClassVar, Iterator

import torch
from torch import Tensor, nn

from genlab.data.batching import to_pixels
from genlab.rng import seeded
from genlab.errors import GenlabError


class Unsupported(GenlabError, NotImplementedError):
    """A model asked for what it does not do (sampling, a reconstruction): a GenlabError, as every refusal of
    genlab's, and a NotImplementedError, Python's word for it."""


def sample_count(n) -> int:
    """``n`` if it is a whole number of samples (0 or more), else one line."""
    try:
        count = operator.index(n)  # an int, or a numpy integer
    except TypeError:
        count = -1
    if isinstance(n, bool) or count < 0:
        raise GenlabError(f"the number of samples is a whole number, 0 or more, got {n!r}")
    return count


def conv_sizes_ok(cfg, name: str, multiple: int = 4) -> None:
    """Refuse, in one line, an image shape a convolutional network cannot take: height and width must be
    multiples of ``multiple`` (28, 32 and 64 all are)."""
    if cfg.height % multiple or cfg.width % multiple:
        raise GenlabError(f"{name} needs images whose height and width are multiples of {multiple} (28, 32, 64, ...), "
                          f"got {cfg.height} x {cfg.width}; pass --image-size 28, 32 or 64 to resize them")


def mnist_shape_only(cfg, name: str) -> None:
    """Refuse, in one line, any image shape but MNIST's 1 x 28 x 28 (models built around digits)."""
    if (cfg.channels, cfg.height, cfg.width) != (1, 28, 28):
        raise GenlabError(f"{name} works on 28 x 28 grey images with 10 classes, got {cfg.channels} x {cfg.height} x "
                          f"{cfg.width}; use --image-size 28 --grey, or an unconditional model (ae, dae, vae, ebgan, "
                          "dcgan)")


class GenerativeModel(nn.Module):
    Config: ClassVar[type]
    pixel_range: ClassVar[str] = "tanh"
    # Whether ``loss`` is the same computation at every training step (no reads on the host; Python-side state
    # such as a schedule only through ``graph_key``), so a GPU can replay it as a recorded CUDA graph (genlab.graphs).
    graph_safe: ClassVar[bool] = False
    players: ClassVar[tuple[str, ...]] = ("model",)
    can_sample: ClassVar[bool] = False
    # True: the loop passes each batch's labels, steps(x, y) and eval_terms(x, y) (see the module docstring).
    conditional: ClassVar[bool] = False
    # Training settings this model's literature uses, overriding TrainConfig's defaults (flags still win),
    # e.g. {"lr": 2e-4, "batch_size": 64} for DCGAN.
    train_defaults: ClassVar[dict] = {}
    # The figure sets genlab.viz.callbacks draws for this model besides everyone's: "vae", "gan", "conditional".
    figure_sets: ClassVar[tuple[str, ...]] = ()
    # The metric families genlab.evaluate adds for this model: "likelihood" (IWAE bounds), "conditional".
    extra_metrics: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg

    # -- training -----------------------------------------------------------------------------------------
    def loss(self, x: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError

    def player_parameters(self, player: str) -> list[nn.Parameter]:
        """The parameters that ``player``'s optimiser steps."""
        return list(self.parameters())

    def optimizer_options(self, player: str) -> dict:
        """Extra keyword arguments for ``player``'s Adam, e.g. {"betas": (0.5, 0.999)} for DCGAN (SGD, with
        ``--optimizer sgd``, takes none)."""
        return {}

    def steps(self, x: Tensor, *cond: Tensor) -> Iterator[tuple[str, dict[str, Tensor]]]:
        """Yield (player, per-example terms) in order; the loop steps that player's optimiser in between.

        A generator, so a later player sees the earlier player's update (the GAN's (1) update D, (2) update G).
        ``cond``: the labels [N] of a conditional model, nothing otherwise.
        """
        yield "model", self.loss(x, *cond)

    def after_step(self, player: str) -> None:
        """Called after ``player``'s optimiser step (for example to update an EMA of the generator)."""

    def diverged(self, logs: dict[str, float]) -> str | None:
        """Given one step's mean terms, return why training has failed (for example a saturated
        discriminator), or None. NaN and infinite losses are caught by the loop itself."""
        return None

    def check_state(self) -> dict[str, int]:
        """The counters behind ``diverged`` (streaks of suspicious steps), kept in the checkpoint so a resumed
        run reaches the verdicts an uninterrupted one would."""
        return {}

    def load_check_state(self, state: dict[str, int]) -> None:
        """Restore what ``check_state`` returned (an older checkpoint's empty dict leaves the counters at 0)."""

    def graph_key(self) -> tuple:
        """For a ``graph_safe`` model, the Python-side values its ``loss`` reads (a schedule's value now): the
        recording is made again whenever they change (genlab.graphs)."""
        return ()

    def end_of_epoch(self, epoch: int) -> None:
        """Called after each epoch (and with ``epoch - 1`` before the first one trained, also on resume): set
        per-epoch schedules such as KL warm-up here, as a function of ``epoch`` alone so resuming is exact."""

    # -- evaluation ---------------------------------------------------------------------------------------
    def eval_terms(self, x: Tensor, *cond: Tensor) -> dict[str, Tensor]:
        """Per-example evaluation metrics (shape [N] each), averaged over a split by ``genlab evaluate``."""
        return self.loss(x, *cond)

    def energy(self, x: Tensor) -> Tensor:
        raise Unsupported(f"{type(self).__name__} defines no energy, so it has no anomaly score")

    def energy_and_reconstruction(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """``(energy(x) [N], reconstruct(x) or None)``, from one pass where the energy is a reconstruction error
        (autoencoders, EBGAN's discriminator, the VAE in eval mode): the same values as the two calls."""
        return self.energy(x), (self.reconstruct(x) if self.can_reconstruct else None)

    def check_images(self, x) -> None:
        """Refuse, in one line, what ``energy`` and ``reconstruct`` cannot take: anything but a float tensor
        [N x C x H x W] of this model's image shape (an [N x H x W] batch was broadcast against the VAE's
        output, giving energies that grew with N)."""
        shape = (self.cfg.channels, self.cfg.height, self.cfg.width)
        if not isinstance(x, Tensor):
            raise GenlabError(f"expected a float tensor [N x {' x '.join(map(str, shape))}], got {type(x).__name__}")
        if x.dim() != 4 or tuple(x.shape[1:]) != shape or not x.is_floating_point():
            raise GenlabError(f"expected a float tensor [N x {' x '.join(map(str, shape))}] in the model's pixel "
                              f"range ({self.pixel_range}), got {str(x.dtype).removeprefix('torch.')} "
                              f"{list(x.shape)}; genlab.load(RUN).energy(images) takes images of any size and type")

    def reconstruct(self, x: Tensor) -> Tensor:
        raise Unsupported(f"{type(self).__name__} does not reconstruct (its can_reconstruct is False)")

    @property
    def can_reconstruct(self) -> bool:
        """Whether this model has a ``reconstruct`` of its own (the GANs do not)."""
        return type(self).reconstruct is not GenerativeModel.reconstruct

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n samples as [n x C x H x W], the model's image shape, in its pixel range."""
        raise Unsupported(f"{type(self).__name__} cannot sample (its can_sample is False)")

    def upgrade_state(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """A checkpoint's weights with the names an older genlab gave them renamed to this one's (see the VAE)."""
        return state

    def encoder_kernels(self) -> Tensor | None:
        """Rows of the first encoder layer as [K x C*H*W] (the lecture's Figs. 4 and 6), or None."""
        return None

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


class Streak:
    """Counts consecutive steps on which a condition held; fires once the count reaches ``patience``.

    Divergence is a state, not an event: one batch with D(G(z)) near 0 happens in healthy GAN runs, a few
    hundred in a row does not.
    """

    def __init__(self, patience: int):
        self.patience = patience
        self.count = 0

    def update(self, condition: bool) -> bool:
        self.count = self.count + 1 if condition else 0
        return self.count >= self.patience


class EMA(nn.Module):
    """An exponential moving average of a network's weights: the one weight average of every genlab model
    (Polyak & Juditsky 1992; for GAN generators, Yazici et al. 2019).

    A submodule, so the averaged weights and the step counter are in the model's ``state_dict`` and every
    checkpoint keeps them. The decay ramps up as min(decay, (1 + t) / (10 + t)) so the average forgets the
    random initialisation within the first few hundred steps. Buffers (batch-norm statistics) are copied.
    """

    def __init__(self, net: nn.Module, decay: float):
        super().__init__()
        self.decay = decay
        self.net = copy.deepcopy(net).requires_grad_(False)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self._t = 0  # ``steps`` mirrored as a Python int, so no step waits for a GPU to read it
        self._tensors = None  # (source, its tensors and ours): see ``_pairs``

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._t = int(self.steps)  # once, when a checkpoint is loaded

    def _apply(self, fn, *args, **kwargs):
        self._tensors = None  # .to(), .cuda(), .double() may replace tensors (buffers always): list them again
        return super()._apply(fn, *args, **kwargs)

    def _pairs(self, source: nn.Module) -> tuple:
        """(our parameters, the source's, our buffers, the source's), listed once: walking the modules for them
        at every step cost more host time than the average itself (0.1 ms a step for the VAE on a CPU)."""
        if self._tensors is None or self._tensors[0] is not source:
            self._tensors = (source, list(self.net.parameters()), list(source.parameters()),
                             list(self.net.buffers()), list(source.buffers()))
        return self._tensors[1:]

    @torch.no_grad()
    def update(self, source: nn.Module) -> None:
        decay = min(self.decay, (1.0 + self._t) / (10.0 + self._t))
        ours, theirs, our_buffers, their_buffers = self._pairs(source)
        torch._foreach_lerp_(ours, theirs, 1.0 - decay)
        if our_buffers:
            torch._foreach_copy_(our_buffers, their_buffers)
        self.steps += 1
        self._t += 1

    def forward(self, *args):
        return self.net(*args)


# -- evaluation: the one batched, seeded, gradient-free loop ----------------------------------------------------
@contextmanager
def evaluating(model: nn.Module, seed: int = 0) -> Iterator[nn.Module]:
    """``model`` in eval mode, without gradients, under a forked random state seeded with ``seed``
    (``genlab.rng.seeded``): the numbers repeat, and the caller's random streams (CPU and CUDA) and the
    model's mode are as they were afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), seeded(seed):
            yield model
    finally:
        model.train(was_training)


EVAL_PIXELS = 1000 * 28 * 28  # the most pixels a batch of evaluation holds: 1000 MNIST digits


def eval_batch(batch_size: int, shape) -> int:
    """``batch_size``, lowered for images of ``shape`` (one image's, e.g. ``images.shape[1:]``) so that a batch
    holds at most ``EVAL_PIXELS`` pixels (one image at least): a fixed 1000 images of 256 x 256 asked for
    gigabytes, and no flag could lower it."""
    return max(1, min(batch_size, EVAL_PIXELS // max(1, math.prod(shape))))


def per_example(model: GenerativeModel, images_u8: Tensor, fn: Callable | None = None, batch_size: int = 1000,
                seed: int = 0, labels: Tensor | None = None) -> Tensor | dict[str, Tensor]:
    """``fn(x)`` (default ``model.energy``; ``fn(x, y)`` with ``labels``) over uint8 images [N x ...] in the
    model's pixel range, ``batch_size`` at a time on the model's device, under ``evaluating(model, seed)``.

    :return: float64 [N] on the CPU, or a dict of them when ``fn`` returns a dict of per-example terms.
    """
    fn = fn or model.energy
    batch_size = eval_batch(batch_size, images_u8.shape[1:])
    parts = []
    with evaluating(model, seed):
        for i in range(0, len(images_u8), batch_size):
            x = to_pixels(images_u8[i:i + batch_size], model.pixel_range).to(model.device)
            cond = () if labels is None else (labels[i:i + batch_size].to(model.device),)
            parts.append(fn(x, *cond))
    if parts and isinstance(parts[0], dict):
        return {key: torch.cat([p[key].double().cpu() for p in parts]) for key in parts[0]}
    return torch.cat([p.double().cpu() for p in parts]) if parts else torch.zeros(0, dtype=torch.float64)
