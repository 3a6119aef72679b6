"""Random state: seeded blocks that neither depend on nor disturb the caller's stream, on a CPU and on CUDA.

Evaluation, figures and sample-quality metrics draw noise (a VAE's latent, a GAN's z, a DAE's corruption)
with the global generators. Running them under ``seeded(seed)`` makes their numbers repeatable and leaves
the training's stream exactly where it was, so a run that writes figures resumes bit for bit like one that
does not. On CUDA the device generators are forked too: a model on the GPU draws from them, not the CPU's.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with the CPU and every initialised CUDA generator forked and seeded with ``seed``."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)  # seeds the CPU and every CUDA generator
        yield
