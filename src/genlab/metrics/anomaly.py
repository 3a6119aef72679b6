"""Energies as anomaly scores: merged digits (the lecture's Fig. 8) and out-of-distribution inputs.

An energy-based model should give low energy on the data manifold and high energy off it. Two tests:

- merged digits: the lecture averages two test digits 50/50; the result is no digit, and the DAE cannot map it
  back to one, so its reconstruction error (energy) is high. AUROC of the energy separating merged from clean
  test digits. A merged digit is also fainter than a clean one (where the two do not overlap, its ink is at
  half strength), and an energy may rise, or fall, with faintness alone: the control is ``faded`` digits, each
  test digit averaged 50/50 with a blank image (one digit at the same half strength), and the AUROC of merged
  against faded digits says whether the energy sees two digits in one (1) or only how faint an image is (0.5).
- out of distribution: 28 x 28 grey patches of the sample photographs that scikit-learn and scikit-image ship
  (``photos``, always at hand), and, where its files are on disk, the other data set's test split (``ood``:
  Fashion-MNIST for a model of digits, MNIST for a model of clothes). A missing data set leaves its
  comparison out with one line saying how to get it; it never fails the report.

In both, the anomalous inputs are the positive class and the energy is the score: AUROC 1 means every
anomalous input has a higher energy than every clean one, 0.5 is chance.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from genlab.config import write_output
from genlab.errors import GenlabError
from genlab.models.base import per_example

SPLITS = ("test", "merged", "faded", "photos", "ood")
SPLIT_TITLES = {"test": "clean test digits", "merged": "merged digits", "faded": "faded digits",
                "photos": "photo patches", "ood": "other data set"}


def _numpy(a) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


# -- inputs ------------------------------------------------------------------------------------------------
def merged_pairs(n: int, seed: int = 0, labels=None, tries: int = 100) -> np.ndarray:
    """A fixed random partner ``j[i] != i`` for each of ``n`` images: int [n].

    With ``labels`` ([n]) partners also have a different label, so every merged image mixes two different
    digits (two 1s averaged would still look like a digit). Partners are drawn uniformly with a generator
    seeded with ``seed``, and redrawn where they break the rule.
    """
    if n < 2:
        raise GenlabError(f"merging digits needs at least 2 images, got {n}")
    rng = np.random.default_rng(seed)
    labels = None if labels is None else _numpy(labels).reshape(-1)
    if labels is not None and len(np.unique(labels)) < 2:
        raise GenlabError("merging digits with different labels needs at least two distinct labels")
    idx = np.arange(n)
    partner = rng.integers(0, n, size=n)
    for _ in range(tries):
        bad = partner == idx
        if labels is not None:
            bad |= labels[partner] == labels
        if not bad.any():
            return partner
        partner[bad] = rng.integers(0, n, size=int(bad.sum()))
    raise GenlabError(f"could not pair {n} images with partners of a different label; too few distinct labels")


def merged_digits(images_u8, seed: int = 0, labels=None) -> torch.Tensor:
    """The lecture's merged digits: each image averaged 50/50 with a fixed random partner.

    :param images_u8: uint8 [N x 28 x 28].
    :param labels: optional int [N]; when given (preferred) each partner has a different label.
    :return: uint8 [N x 28 x 28], ``(a + b + 1) // 2``: the exact average rounded half up.

    Every pixel map genlab uses (``x / 255`` or ``x / 127.5 - 1``) is affine, so averaging the 8-bit values
    and then mapping is the same as the lecture's averaging on the model's scale, up to this rounding (at most
    half a grey level, 1/510 on [0, 1]). Keeping uint8 lets merged digits go through the same pipeline as
    every other split.
    """
    u = torch.as_tensor(_numpy(images_u8))
    if u.dtype != torch.uint8 or u.ndim != 3:
        raise GenlabError(f"merged_digits needs uint8 images [N x 28 x 28], got {u.dtype} {list(u.shape)}")
    partner = torch.as_tensor(merged_pairs(len(u), seed, labels))
    return ((u.int() + u[partner].int() + 1) // 2).to(torch.uint8)


def faded_digits(images_u8) -> torch.Tensor:
    """Each image averaged 50/50 with a blank (black) one, rounded as ``merged_digits`` rounds: one digit at the
    half strength of a merged digit's ink, the control that tells two digits in one from a faint digit.

    :param images_u8: uint8 [N x 28 x 28]; :return: uint8 [N x 28 x 28], ``(a + 1) // 2``.
    """
    u = torch.as_tensor(_numpy(images_u8))
    if u.dtype != torch.uint8 or u.ndim != 3:
        raise GenlabError(f"faded_digits needs uint8 images [N x 28 x 28], got {u.dtype} {list(u.shape)}")
    return ((u.int() + 1) // 2).to(torch.uint8)


# -- energies ----------------------------------------------------------------------------------------------
def energies(model, images_u8, batch_size: int = 1000, seed: int = 0) -> np.ndarray:
    """``model.energy`` of uint8 images [N x 28 x 28] in the model's pixel range: float64 [N].

    Batched, seeded and gradient-free (``genlab.models.per_example``), so a stochastic energy (a sampled
    latent, for example) is reproducible and leaves the caller's RNG alone. Whether the value is a sum or a
    mean over pixels is the model's (see its ``energy`` docstring).
    """
    return per_example(model, torch.as_tensor(_numpy(images_u8)), batch_size=batch_size, seed=seed).numpy()


def auroc(energy_in, energy_out) -> float:
    """AUROC of the energy separating anomalous inputs (``energy_out``, the positive class) from clean ones.

    The probability that a random anomalous input has a higher energy than a random clean one (ties count
    half); scikit-learn's ``roc_auc_score``.
    """
    e_in, e_out = _numpy(energy_in).reshape(-1), _numpy(energy_out).reshape(-1)
    if len(e_in) == 0 or len(e_out) == 0:
        raise GenlabError("AUROC needs at least one clean and one anomalous energy")
    if not (np.isfinite(e_in).all() and np.isfinite(e_out).all()):
        raise GenlabError("AUROC needs finite energies; the model gave NaN or infinite energies")
    y = np.concatenate([np.zeros(len(e_in)), np.ones(len(e_out))])
    from sklearn.metrics import roc_auc_score  # imported here: scikit-learn takes seconds to import
    return float(roc_auc_score(y, np.concatenate([e_in, e_out])))


# -- a run's data ------------------------------------------------------------------------------------------
def in_distribution_name(run) -> str:
    """The data set a run was trained on, as ``load_dataset`` names it."""
    from genlab.data import resolve_dataset_name

    return resolve_dataset_name(run.train_cfg.dataset, run.train_cfg.data_dir)


def ood_name(in_name: str) -> str:
    """The out-of-distribution data set for a model trained on ``in_name``."""
    return "mnist" if in_name == "fashion-mnist" else "fashion-mnist"


def split_images(run, split: str, limit: int = 0, seed: int = 0, download: bool = True) -> torch.Tensor:
    """uint8 [N x 28 x 28] inputs for ``split``: "test" (the run's test split), "merged" (merged test digits),
    "faded" (test digits at half strength, the control for merged ones), "photos" (patches of the shipped sample photographs; 2,000, or ``limit``) or "ood" (the other data set's
    test split, downloaded when missing unless ``download`` is False); the first ``limit`` of them (0: all)."""
    if split not in SPLITS:
        raise GenlabError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    shape = tuple(run.model_cfg.shape)
    if split in ("merged", "faded", "photos", "ood") and shape != (1, 28, 28):
        raise GenlabError(f"--split {split} and --auroc use 28 x 28 grey digits, but this run works on "
                          f"{' x '.join(map(str, shape))} images; score images of your own with --images PATH")
    if split == "photos":
        from genlab.data.photos import photo_patches
        return photo_patches(limit or 2000, seed)
    if split == "ood":
        from genlab.data import load_dataset
        images = load_dataset(ood_name(in_distribution_name(run)), "test", run.train_cfg.data_dir, download=download).images
    else:
        data = run.dataset("test")
        images, labels = data.images, data.labels
        if limit:
            images, labels = images[:limit], labels[:limit]
        if split == "merged":
            images = merged_digits(images, seed, labels)
        elif split == "faded":
            images = faded_digits(images)
    return images[:limit] if limit else images


def energy_report(run, limit: int = 0, seed: int = 0, batch_size: int = 1000) -> dict:
    """Energies of the clean test split, merged and faded test digits, photo patches and, when its files are on
    disk, the other data set's test split (nothing is downloaded here).

    :return: ``{"model", "in_dataset", "ood_dataset", "n": {split: N}, "mean_energy": {split: float},
        "auroc_merged", "auroc_merged_vs_faded" (merged digits the positives, faded ones the negatives),
        "auroc_photos", "auroc_ood" (None when the other data set is missing), "missing" (one
        line saying which comparison is left out and how to get it, or None), "energies": {split: float64 [N]}}``
        (the arrays are left out of ``report_json``).
    """
    from genlab.data import DataError, how_to_get

    in_name = in_distribution_name(run)
    other = ood_name(in_name)
    e, missing = {}, None
    for s in SPLITS:
        try:
            images = split_images(run, s, limit, seed, download=False)
        except DataError:
            if s != "ood":
                raise
            missing = f"the {other} comparison is left out: {how_to_get(other, run.train_cfg.data_dir)}"
            continue
        e[s] = energies(run.model, images, batch_size, seed)
    return {
        "model": run.model_name,
        "in_dataset": in_name,
        "ood_dataset": other,
        "n": {s: int(len(v)) for s, v in e.items()},
        "mean_energy": {s: float(v.mean()) for s, v in e.items()},
        "auroc_merged": auroc(e["test"], e["merged"]),
        "auroc_merged_vs_faded": auroc(e["faded"], e["merged"]),
        "auroc_photos": auroc(e["test"], e["photos"]),
        "auroc_ood": auroc(e["test"], e["ood"]) if "ood" in e else None,
        "missing": missing,
        "energies": e,
    }


def report_json(report: dict) -> dict:
    """The report without the per-example arrays, ready for ``json.dumps``."""
    return {k: v for k, v in report.items() if k != "energies"}


# -- saving ------------------------------------------------------------------------------------------
def save_energies(values: np.ndarray, path) -> Path:
    """Write per-example energies to ``.npy`` or ``.csv`` (one value a line, with an ``energy`` header)."""
    path = Path(path)
    if path.suffix not in (".npy", ".csv"):
        raise GenlabError(f"--out must end in .npy or .csv, got {path.name}")
    if path.suffix == ".npy":
        data = io.BytesIO()
        np.save(data, values)
        write_output(path, data.getvalue())
    else:
        write_output(path, ("energy\n" + "".join(f"{v:.9g}\n" for v in values)).encode())
    return path
