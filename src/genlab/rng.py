"""Random state: seeded blocks that neither depend on nor disturb the caller's stream, on a CPU and on CUDA.

Evaluation, figures and sample-quality metrics draw noise (a VAE's latent, a GAN's z, a DAE's corruption)
with the global generators. Running them under ``seeded(seed)`` makes their numbers repeatable and leaves
the training's stream exactly where it was, so a run that writes figures resumes bit for bit like one that
does not. On CUDA the device generators are forked too: a model on the GPU draws from them, not the CPU's.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

import torch

from genlab.errors import GenlabError

_SEEDED = threading.RLock()  # one seeded block at a time in the process (see ``seeded``)


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with the CPU and every initialised CUDA generator forked and seeded with ``seed``.

    Where CUDA has not started, only the CPU generator is seeded: ``torch.manual_seed`` would queue a seed for
    CUDA's start, which would outlive the block and replace the caller's own CUDA seed. The generators are the
    process's, so blocks in other threads wait: overlapping ones saved each other's seeded state, and the last
    to end left it in place of the caller's."""
    cuda = torch.cuda.is_initialized()
    devices = list(range(torch.cuda.device_count())) if cuda else []
    with _SEEDED, torch.random.fork_rng(devices=devices):
        if cuda:
            torch.manual_seed(seed)  # seeds the CPU and every CUDA generator
        else:
            torch.default_generator.manual_seed(seed)
        yield


def randn(shape, generator: torch.Generator | None, device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``torch.randn(shape)`` on ``device``, drawn by ``generator`` where it lives: a CPU generator (the one a
    user most often makes) serves a model on a GPU too, its draws copied over. Without a generator, the global
    generator of ``device``."""
    where = _home(generator, device)
    return torch.randn(shape, generator=generator, device=where, dtype=dtype or torch.float32).to(device)


def rand(shape, generator: torch.Generator | None, device) -> torch.Tensor:
    """``torch.rand(shape)`` on ``device``, drawn by ``generator`` where it lives (see ``randn``)."""
    where = _home(generator, device)
    return torch.rand(shape, generator=generator, device=where, dtype=torch.float32).to(device)


def _home(generator, device):
    """Where ``generator`` draws (``device`` when there is none); anything but a torch.Generator refused."""
    if generator is None:
        return device
    if not isinstance(generator, torch.Generator):
        raise GenlabError(f"generator must be a torch.Generator (e.g. torch.Generator().manual_seed(0)), got "
                          f"{type(generator).__name__}")
    return generator.device
