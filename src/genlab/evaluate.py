"""``genlab evaluate``: one set of numbers per run, the same way for every model.

Every model gives the means of its ``eval_terms`` on a split (its test loss) and the mean energy; a model
class may name further metric families in ``extra_metrics`` (the VAE its likelihood bounds, the conditional
models theirs), and every model that samples gets the offline sample-quality metrics.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from genlab.checkpoint import Run
from genlab.data.files import is_file_dataset
from genlab.errors import GenlabError
from genlab.metrics import conditional, likelihood
from genlab.models.base import per_example
from genlab.train import evaluate_terms

# A name in a model class's ``extra_metrics`` -> function(run, images_u8, quality=..., **options) -> dict of
# metrics (``quality``: whether sample-quality metrics are wanted).
EXTRA_METRICS = {"likelihood": likelihood.evaluate_run, "conditional": conditional.evaluate_run}


def mean_energy(model, images_u8: torch.Tensor, batch_size: int = 1000, labels: torch.Tensor | None = None) -> float:
    """Mean energy of ``images_u8``; a conditional model's given each image's label in ``labels``."""
    return per_example(model, images_u8, batch_size=batch_size, labels=labels).mean().item()


# The options evaluate_run passes on: importance samples (VAE, quadrant CVAE), samples a class (conditional
# models), the seed of the sample-quality draws.
OPTIONS = ("iwae_k", "per_class", "seed")


def evaluate_run(run: Run | str | Path, split: str = "test", limit: int = 0, quality: bool = True,
                 **options) -> dict:
    """All metrics of ``run`` (a loaded Run, or a run directory) on ``split`` (the first ``limit`` images when
    ``limit`` > 0), as name -> value. ``options``: see ``OPTIONS``."""
    if isinstance(run, (str, Path)):
        from genlab.checkpoint import load_run
        run = load_run(run)
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise GenlabError(f"evaluate_run has no option {', '.join(unknown)}; its options: {', '.join(OPTIONS)}")
    if split not in ("train", "test"):
        raise GenlabError(f"split is train or test, got {split!r}")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise GenlabError(f"limit is a whole number of images, 0 (all) or more, got {limit!r}")
    cfg = run.train_cfg
    data = run.dataset(split)
    images = data.images[:limit] if limit else data.images
    results: dict = {"model": run.model_name, "dataset": cfg.dataset, "split": split, "images": len(images),
                     # the checkpoint evaluated: genlab report uses an evaluation.json only while it is the last
                     "epoch": run.counters.get("epoch"), "step": run.counters.get("step")}
    labels = data.labels[:len(images)] if run.model.conditional else None
    results.update(evaluate_terms(run.model, images, labels=labels))
    results["energy"] = mean_energy(run.model, images, labels=labels)
    for name in run.model.extra_metrics:
        # The terms above win: a family's own pass (the VAE's likelihood) draws other noise, and its loss terms
        # would then disagree in the last digits with "loss" and with the run's metrics.jsonl.
        for key, value in EXTRA_METRICS[name](run, images, quality=quality, **options).items():
            results.setdefault(key, value)
    mnist_like = tuple(run.model_cfg.shape) == (1, 28, 28) and not is_file_dataset(cfg.dataset)
    if quality and run.model.can_sample and mnist_like:  # the quality metrics' classifier knows the built-ins
        from genlab.metrics.quality import evaluate_samples
        results.update(evaluate_samples(run, **options))
    return results


def finite_or_null(value):
    """NaN and infinities are not JSON: ``evaluate --json`` prints them as null (a diverged model's metrics),
    in lists (the VAE's KL per dimension) too."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v) for v in value]
    return value
