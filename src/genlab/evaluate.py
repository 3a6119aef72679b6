"""``genlab evaluate``: one set of numbers per run, the same way for every model.

Every model gives the means of its ``eval_terms`` on a split (its test loss) and the mean energy; a model
family may add its own metrics (the VAE its likelihood bounds), and every model that samples gets the
offline sample-quality metrics.
"""

from __future__ import annotations

import importlib

import torch

from genlab.checkpoint import Run
from genlab.data import run_dataset
from genlab.data.batching import to_pixels
from genlab.train import evaluate_terms
from genlab.rng import seeded

# Model family -> "module:function" called as function(run, images_u8, **options) -> dict of extra metrics.
EXTRA_METRICS = {
    "vae": "genlab.metrics.likelihood:evaluate_run",
    "cvae": "genlab.metrics.conditional:evaluate_run",
    "cdcgan": "genlab.metrics.conditional:evaluate_run",
}


@torch.no_grad()
def mean_energy(model, images_u8: torch.Tensor, batch_size: int = 1000, labels: torch.Tensor | None = None) -> float:
    """Mean energy of ``images_u8``; a conditional model's given each image's label in ``labels``."""
    total = 0.0
    with seeded(0):
        for i in range(0, len(images_u8), batch_size):
            x = to_pixels(images_u8[i:i + batch_size], model.pixel_range).to(model.device)
            cond = (labels[i:i + batch_size].to(model.device),) if labels is not None else ()
            total += model.energy(x, *cond).double().sum().item()
    return total / len(images_u8)


def evaluate_run(run: Run, split: str = "test", limit: int = 0, quality: bool = True, **options) -> dict:
    """All metrics of ``run`` on ``split`` (the first ``limit`` images when ``limit`` > 0), as name -> value."""
    cfg = run.train_cfg
    data = run_dataset(cfg, split)
    images = data.images[:limit] if limit else data.images
    results: dict = {"model": run.model_name, "dataset": cfg.dataset, "split": split, "images": len(images)}
    labels = data.labels[:len(images)] if run.model.conditional else None
    results.update(evaluate_terms(run.model, images, labels=labels))
    results["energy"] = mean_energy(run.model, images, labels=labels)
    if run.model_name in EXTRA_METRICS:
        module, func = EXTRA_METRICS[run.model_name].split(":")
        results.update(getattr(importlib.import_module(module), func)(run, images, **options))
    mnist_like = tuple(run.model_cfg.shape) == (1, 28, 28) and not cfg.dataset.startswith(("folder:", "npz:"))
    if quality and run.model.can_sample and mnist_like:  # the quality metrics' classifier knows the built-ins
        from genlab.metrics.quality import evaluate_samples
        results.update(evaluate_samples(run, **options))
    return results
