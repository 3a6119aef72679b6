"""Out-of-distribution inputs that need no download: 28 x 28 grey patches of the sample photographs that
scikit-learn and scikit-image ship inside their packages.

A model of handwritten digits should give these natural-image patches (textures, edges, faces, fur) a high
energy. They are always at hand, so every energy report has an out-of-distribution column even on a machine
that has never seen Fashion-MNIST.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np
import torch

# scikit-image's photographs that ship in its wheel (no pooch download); text pages are left out, being too
# close to handwriting to count as plainly out of distribution.
SKIMAGE_PHOTOS = ("astronaut", "camera", "coffee", "chelsea", "rocket", "coins", "moon")


def _grey(image: np.ndarray) -> np.ndarray:
    """uint8 [H x W] or [H x W x 3] (RGB) -> uint8 [H x W]."""
    return image if image.ndim == 2 else cv2.cvtColor(np.ascontiguousarray(image[..., :3]), cv2.COLOR_RGB2GRAY)


@functools.lru_cache(maxsize=1)
def sample_photographs() -> tuple[np.ndarray, ...]:
    """The grey photographs, in a fixed order: scikit-learn's two, then scikit-image's."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    photos = [_grey(image) for image in load_sample_images().images]
    photos += [_grey(np.asarray(getattr(data, name)())) for name in SKIMAGE_PHOTOS]
    return tuple(photos)


@functools.lru_cache(maxsize=4)
def photo_patches(n: int = 2000, seed: int = 0) -> torch.Tensor:
    """``n`` patches as uint8 [n x 28 x 28]: square crops of random size (32 px up to half the photograph's
    shorter side) at random places, shrunk to 28 x 28 by area averaging. Photographs are taken in turn;
    the same ``n`` and ``seed`` give the same patches."""
    rng = np.random.default_rng(seed)
    photos = sample_photographs()
    out = np.empty((n, 28, 28), np.uint8)
    for i in range(n):
        photo = photos[i % len(photos)]
        h, w = photo.shape
        side = int(rng.integers(32, max(33, min(h, w) // 2)))
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        out[i] = cv2.resize(photo[top:top + side, left:left + side], (28, 28), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(out)
