"""Metrics of the conditional models (``cvae``, ``cdcgan``): quadrant completion likelihoods, and the class,
per-class FID and within-class spread of samples asked for by class.

Quadrant completion (Sohn, Lee & Yan 2015, Sec. 5.1; Pyro's reproduction): for 1, 2 and 3 observed
quadrants of each test digit, the negative conditional log-likelihood of the unseen pixels,
-log p(y | c), in nats per image, estimated

- as the bound: -ELBO with one draw of q (what Pyro's table reports, there with 10 draws averaged);
- by importance sampling with k draws of q(z | c, y): -log (1/k) sum_i p(y | c, z_i) p(z_i | c) / q(z_i | c, y),
  an upper bound on -log p(y | c) that tightens as k grows (Burda et al. 2016).

Targets keep their grey values, as in Pyro's reproduction (see ``genlab.models.cvae``).

Conditional samples: ``per_class`` samples asked for as each class (1,000 each: 10,000 in all) are scored by
genlab's MNIST classifier (``genlab.metrics.classifier``):

- ``cond_accuracy``: the share classified as the class asked for (real test digits score the classifier's own
  test accuracy, ``classifier_accuracy``, the ceiling);
- ``cond_fid_<k>``: FID of the class-k samples against the real test digits of class k, on the classifier's
  features (not comparable with Inception FIDs); ``cond_fid_max`` the worst class;
- ``cond_spread_<k>``: the samples' mean pairwise Euclidean distance in pixel space ([0, 1] pixels), over
  the same for the real test digits of class k (``real_spread_<k>``): 1 matches the data's variety, near 0 is
  one image drawn again and again; ``cond_spread_min`` the narrowest class.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from genlab.data.batching import to_pixels, to_unit
from genlab.errors import GenlabError
from genlab.models.base import evaluating

DEFAULT_K = 100  # importance samples for the quadrant likelihood
PER_CLASS = 1000  # conditional samples per class


# -- quadrant completion ----------------------------------------------------------------------------------------
QUADRANT_ROWS = 32_768  # decoded images held at once by quadrant_nll (about 100 MB of float32 at 784 pixels)


@torch.no_grad()
def quadrant_nll(model, images_u8: Tensor, k: int = DEFAULT_K, batch_size: int = 250, seed: int = 0,
                 progress: bool = False) -> dict:
    """-log p(unseen | seen) on ``images_u8`` (uint8 [N x 28 x 28]) for 1, 2, 3 observed quadrants, mean nats
    per image: ``nll_is_q<t>`` (importance sampled, ``k`` draws) and ``nll_bound_q<t>`` (-ELBO, one draw).
    ``progress``: a bar over the images on stderr, when it is a terminal."""
    if k < 1:
        raise GenlabError(f"importance sampling needs k >= 1 draws, got {k}")
    if not getattr(model, "quadrants", False):
        raise GenlabError("quadrant completion needs a cvae trained with --condition quadrants")
    sums: dict[str, float] = {}
    bar = tqdm(total=len(images_u8), desc=f"quadrant completion, k={k}", unit="image", leave=False,
               file=sys.stderr, disable=None if progress else True)  # None: shown only on a terminal
    with evaluating(model, seed), bar:
        for i in range(0, len(images_u8), batch_size):
            x = to_pixels(images_u8[i:i + batch_size], model.pixel_range).to(model.device)
            for t in (1, 2, 3):
                c = torch.full((len(x),), t, device=x.device)
                bound = model.terms(x, c)["loss"].double().sum().item()
                # The k draws in chunks of at most QUADRANT_ROWS decoded images (k = 100,000 asked for 78 GB
                # at once); one chunk at the default k, so its numbers are those of a single pass.
                chunk = max(1, QUADRANT_ROWS // len(x))
                parts = [torch.logsumexp(model.log_weights(x, c, min(chunk, k - j)).double(), 0)  # [B] each
                         for j in range(0, k, chunk)]
                nll = -(torch.logsumexp(torch.stack(parts), 0) - math.log(k)).sum().item()
                sums[f"nll_bound_q{t}"] = sums.get(f"nll_bound_q{t}", 0.0) + bound
                sums[f"nll_is_q{t}"] = sums.get(f"nll_is_q{t}", 0.0) + nll
            bar.update(len(x))
    out = {key: value / len(images_u8) for key, value in sorted(sums.items())}
    out["nll_is_k"] = k
    return out


# -- conditional samples ---------------------------------------------------------------------------------------
@torch.no_grad()
def class_samples(model, per_class: int = PER_CLASS, seed: int = 0, batch_size: int = 1000,
                  classes: Sequence[int] = range(10)) -> tuple[Tensor, Tensor]:
    """``per_class`` samples of each of ``classes`` (default 0..9): (images [K per_class x 1 x 28 x 28] in
    [0, 1], labels int)."""
    labels = torch.tensor(list(classes)).repeat_interleave(per_class)
    with evaluating(model, seed):
        parts = [model.sample(len(labels[i:i + batch_size]), labels[i:i + batch_size].to(model.device)).cpu().float()
                 for i in range(0, len(labels), batch_size)]
    return to_unit(torch.cat(parts), model.pixel_range), labels


def mean_pairwise_distance(x: Tensor) -> float:
    """Mean Euclidean distance between distinct images of [N x ...] (N >= 2)."""
    flat = x.flatten(1).double()
    n = len(flat)
    if n < 2:
        raise GenlabError(f"a spread needs at least 2 images, got {n}")
    return float(torch.cdist(flat, flat).sum() / (n * (n - 1)))


def conditional_quality(samples: Tensor, labels: Tensor, real: Tensor, real_labels: Tensor, classifier) -> dict:
    """Accuracy, per-class FID and per-class spread of ``samples`` ([N x 1 x 28 x 28] in [0, 1], asked for as
    ``labels``) against ``real`` images in [0, 1] of classes ``real_labels`` (the test split)."""
    from genlab.metrics.quality import features_and_probs, fid

    fs, ps = features_and_probs(samples, classifier)
    fr, _ = features_and_probs(real, classifier)
    labels_np, real_np = labels.cpu().numpy(), real_labels.cpu().numpy()
    out: dict = {"cond_accuracy": float((ps.argmax(1) == labels_np).mean())}
    fids, ratios = [], []
    for k in sorted(set(labels_np.tolist())):
        mine, theirs = labels_np == k, real_np == k
        if mine.sum() < 2 or theirs.sum() < 2:
            raise GenlabError(f"class {k} needs at least 2 samples and 2 real test images for its FID and spread, "
                              f"and the test split has {int(theirs.sum())}; give the data set more test images of "
                              "it, or leave these metrics out with --no-quality")
        fids.append(fid(fs[mine], fr[theirs]))
        s_fake = mean_pairwise_distance(samples[torch.from_numpy(mine)])
        s_real = mean_pairwise_distance(real[torch.from_numpy(theirs)])
        ratios.append(s_fake / s_real)
        out[f"cond_fid_{k}"] = fids[-1]
        out[f"cond_spread_{k}"] = ratios[-1]
        out[f"real_spread_{k}"] = s_real
    out["cond_fid_max"] = float(np.max(fids))
    out["cond_fid_mean"] = float(np.mean(fids))
    out["cond_spread_min"] = float(np.min(ratios))
    return out


def evaluate_model(model, dataset_name: str, data_dir: str | None = None, per_class: int = PER_CLASS,
                   seed: int = 0, classifier=None, classes: Sequence[int] = range(10)) -> dict:
    """``conditional_quality`` of ``per_class`` samples of each of ``classes`` against the test split, with the
    classifier's own test accuracy as ``classifier_accuracy``."""
    from genlab.data import load_dataset
    from genlab.metrics.classifier import get_classifier

    clf = classifier or get_classifier(dataset_name, data_dir)
    test = load_dataset(dataset_name, "test", data_dir)
    samples, labels = class_samples(model, per_class, seed, classes=classes)
    out = conditional_quality(samples, labels, test.images.unsqueeze(1).float() / 255, test.labels, clf)
    out["classifier_accuracy"] = clf.test_accuracy
    return out


def evaluate_run(run, images_u8: Tensor, iwae_k=None, per_class: int = PER_CLASS, quality: bool = True,
                 **options) -> dict:
    """``genlab evaluate``'s extra metrics of a conditional run: the quadrant likelihoods of a quadrant cvae
    (``iwae_k``: importance samples, the largest value given; default ``DEFAULT_K``), the conditional-sample
    metrics of the others."""
    from genlab.data import resolve_dataset_name

    if getattr(run.model, "quadrants", False):
        k = int(max(iwae_k)) if iwae_k else DEFAULT_K
        return quadrant_nll(run.model, images_u8, k, progress=True)
    from genlab.data.files import is_file_dataset

    cfg = run.train_cfg
    if not quality:  # the conditional samples' quality: what --no-quality leaves out
        return {}
    if is_file_dataset(cfg.dataset) and (cfg.image_size or cfg.grey):
        return {}  # the feature classifier learns a folder:/npz: data set as it is, not resized or made grey
    return evaluate_model(run.model, resolve_dataset_name(cfg.dataset, cfg.data_dir), cfg.data_dir, per_class,
                          classes=run.model.learned_classes)
