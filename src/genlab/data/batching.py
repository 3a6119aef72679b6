"""Tensor-resident batching: a data set stays one uint8 tensor; batches are index_selects of a permutation.

This is where genlab's speed comes from on a CPU: no per-sample Python, no PIL images, no worker processes.
Pixels become floats per batch, in the model's range, only when they are used.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor

from genlab.errors import GenlabError

PIXEL_RANGES = ("tanh", "unit")


def to_pixels(images: Tensor, pixel_range: str) -> Tensor:
    """uint8 [N x H x W] (grey) or [N x C x H x W] -> float [N x C x H x W] (C = 1 for grey) in [-1, 1] ("tanh")
    or [0, 1] ("unit"). Float images are refused: divided by 255 again, [0, 1] pixels became near-black ones."""
    _check_range(pixel_range)
    if not isinstance(images, Tensor):
        raise GenlabError(f"to_pixels takes a tensor of uint8 images, got {type(images).__name__}; convert a NumPy "
                          "array with torch.from_numpy")
    if images.dtype != torch.uint8:
        raise GenlabError(f"to_pixels takes uint8 images (0..255), got {str(images.dtype).removeprefix('torch.')}; "
                          "float images in [0, 1] are already pixels of the \"unit\" range")
    if images.dim() not in (3, 4):
        raise GenlabError(f"expected images [N x H x W] or [N x C x H x W], got shape {list(images.shape)}")
    x = (images.unsqueeze(1) if images.dim() == 3 else images).float().div_(255.0)
    if pixel_range == "tanh":
        return x.mul_(2.0).sub_(1.0)  # (x / 255 - 0.5) / 0.5, the lecture's normalisation
    return x


def to_uint8(x: Tensor, pixel_range: str) -> Tensor:
    """The inverse of ``to_pixels``: float [N x C x H x W] in the model's range -> uint8 [N x H x W] when C = 1,
    else [N x C x H x W]."""
    return to_unit(x, pixel_range).mul(255).round().to(torch.uint8).squeeze(1)


def to_unit(x: Tensor, pixel_range: str) -> Tensor:
    """Float images in the model's range -> [0, 1] (for figures and sample-quality metrics)."""
    _check_range(pixel_range)
    return ((x + 1) / 2 if pixel_range == "tanh" else x).clamp(0, 1)


def _check_range(pixel_range: str) -> None:
    if pixel_range not in PIXEL_RANGES:
        raise GenlabError(f"unknown pixel range {pixel_range!r}; expected one of {', '.join(PIXEL_RANGES)} (a "
                          "model's pixel_range)")


class Batches:
    """Shuffled mini-batches of a uint8 image tensor, sharded across data-parallel processes.

    Each epoch draws one global permutation from (seed, epoch), identical on every process; global batch i is
    ``perm[i*B:(i+1)*B]`` and process ``rank`` takes every ``world``-th element of it. So a run on W processes
    sees exactly the global batches of a run on one process, and resuming at (epoch, batch) needs no state.
    With ``labels`` (int64 [N]) each batch also carries its labels, taken by the same index.
    """

    def __init__(self, images: Tensor, batch_size: int, *, seed: int = 0, shuffle: bool = True,
                 rank: int = 0, world: int = 1, device: torch.device | str = "cpu", labels: Tensor | None = None):
        if batch_size < world:
            raise ValueError(f"batch size {batch_size} is smaller than the number of processes {world}")
        if labels is not None and len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images.to(device)
        self.labels = labels.to(device) if labels is not None else None
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.rank, self.world = rank, world

    def __len__(self) -> int:
        """Global batches per epoch. The last one may be smaller, but one too small to give every process two
        images (batch norm cannot normalise one) is left out of the epoch; with the shuffle, those images fall
        in other batches in other epochs. So one process and W see the same batches, except when the last one
        holds 2 to 2W - 1 images, which W processes leave out."""
        full, rest = divmod(len(self.images), self.batch_size)
        return full + (1 if rest and (rest >= 2 * self.world or not full) else 0)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[Tensor, ...]]:
        """Yield (this process's uint8 shard [n x H x W] or [n x C x H x W], size of the global batch) from batch ``start`` on;
        with labels, (shard, size of the global batch, the shard's labels [n])."""
        n = len(self.images)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            perm = torch.randperm(n, generator=g).to(self.images.device)
        else:
            perm = torch.arange(n, device=self.images.device)
        for i in range(start, len(self)):
            idx = perm[i * self.batch_size:(i + 1) * self.batch_size]
            mine = idx[self.rank::self.world] if self.world > 1 else idx
            if self.labels is None:
                yield self.images.index_select(0, mine), len(idx)
            else:
                yield self.images.index_select(0, mine), len(idx), self.labels.index_select(0, mine)
