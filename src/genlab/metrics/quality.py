"""Sample-quality metrics on the features and predictions of genlab's digit classifier (no download).

The metric functions are pure: they take feature arrays [N x F] or class probabilities [N x C] (numpy arrays
or torch tensors; computed in numpy float64) and return floats or numpy arrays.

- ``fid``: Fréchet distance between Gaussians fitted to two feature sets (Heusel et al. 2017),
  ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)). Lower is better; 0 for identical sets.
- ``kid``: kernel inception distance (Bińkowski et al. 2018): the unbiased MMD^2 with the cubic polynomial
  kernel k(x, y) = (x.y / F + 1)^3, mean and std over random subsets. Unbiased, so near 0 (possibly
  negative) for two samples of one distribution, and less dependent on the sample size than FID.
- ``precision_recall``: Kynkäänniemi et al. 2019. Each point gets a ball reaching its k-th nearest neighbour
  in its own set; precision is the share of generated points inside some real ball (are samples realistic?),
  recall the share of real points inside some generated ball (is the data covered?).
- ``class_shares`` / ``min_class_share``: share of samples per predicted class; a model that drops a digit
  (mode collapse) has a small minimum (0.1 for perfect balance with 10 classes).
- ``classifier_score``: exp(E_x KL(p(y|x) || p(y))), the inception score (Salimans et al. 2016) with
  genlab's classifier: 1 when every sample gets the same prediction, at most 10 for confident predictions
  spread evenly over the 10 classes.

FID and KID here are in the units of this classifier's 128-d feature space: they compare models within
genlab, not with numbers from papers that use Inception features.

Images passed to ``sample_quality`` and friends are [N x 1 x 28 x 28] float tensors in [0, 1].
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from scipy import linalg
from scipy.special import xlogy
from torch import Tensor

from genlab.errors import GenlabError
from genlab.models.base import evaluating

# Chunks of pairwise distances hold at most this many float64 entries (80 MB).
_CHUNK_ENTRIES = 10_000_000


def _array(x, name: str, dim: int = 2) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().numpy()
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != dim:
        raise GenlabError(f"{name} must be a {dim}-D array, got shape {list(a.shape)}")
    return a


# -- FID ------------------------------------------------------------------------------------------------------

def gaussian_stats(feats) -> tuple[np.ndarray, np.ndarray]:
    """Mean [F] and covariance [F x F] (unbiased, ``N - 1``) of features [N x F]."""
    f = _array(feats, "features")
    if len(f) < 2:
        raise GenlabError(f"need at least 2 feature vectors for a covariance, got {len(f)}")
    return f.mean(0), np.cov(f, rowvar=False)


def _trace_sqrt_product(s1: np.ndarray, s2: np.ndarray) -> float:
    """Tr((S1 S2)^(1/2)) for covariance matrices S1, S2.

    S1 S2 is similar to the PSD matrix S1^(1/2) S2 S1^(1/2), so its eigenvalues are real and >= 0 and the
    trace of its principal square root is real. Numerically, singular covariances (fewer samples than
    features, or features that never fire) give eigenvalues near 0 that round to tiny negative or complex
    values; we keep the real part and, if ``sqrtm`` fails outright, retry with a small ridge on both
    diagonals, scaled to the covariances' size.
    """
    product = s1 @ s2
    with warnings.catch_warnings():  # singular input is expected here; the residual check below judges it
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        root = linalg.sqrtm(product)
    scale = np.linalg.norm(product)
    ok = np.all(np.isfinite(root)) and np.linalg.norm(root @ root - product) <= 1e-5 * max(scale, 1e-300)
    if not ok:
        ridge = 1e-6 * max(np.trace(s1), np.trace(s2), 1e-12) / len(s1)
        eye = np.eye(len(s1))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", linalg.LinAlgWarning)
            root = linalg.sqrtm((s1 + ridge * eye) @ (s2 + ridge * eye))
        if not np.all(np.isfinite(root)):
            raise GenlabError("FID failed: the covariance square root is not finite; are the features finite?")
    return float(np.real(np.trace(root)))


def fid_from_stats(mu1, s1, mu2, s2) -> float:
    """Fréchet distance ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) between N(mu1, S1) and N(mu2, S2).

    :param mu1, mu2: means [F]. :param s1, s2: covariances [F x F]. Clipped at 0 against round-off.
    """
    mu1, mu2 = _array(mu1, "mu1", 1), _array(mu2, "mu2", 1)
    s1, s2 = _array(s1, "s1"), _array(s2, "s2")
    if not (mu1.shape == mu2.shape and s1.shape == s2.shape == (len(mu1), len(mu1))):
        raise GenlabError(f"FID statistics disagree in shape: {mu1.shape}, {s1.shape}, {mu2.shape}, {s2.shape}")
    diff = mu1 - mu2
    value = diff @ diff + np.trace(s1) + np.trace(s2) - 2 * _trace_sqrt_product(s1, s2)
    return max(float(value), 0.0)


def fid(feats_a, feats_b) -> float:
    """FID between two feature sets [N_a x F] and [N_b x F]."""
    return fid_from_stats(*gaussian_stats(feats_a), *gaussian_stats(feats_b))


# -- KID ------------------------------------------------------------------------------------------------------

def _cubic_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(x.y / F + 1)^3 for [m x F], [n x F] -> [m x n], in float32: several times faster than float64, and
    its relative round-off (~1e-7 per entry, of either sign) is far below KID's spread over subsets. Callers
    sum it in float64."""
    x, y = x.astype(np.float32), y.astype(np.float32)
    return (x @ y.T / np.float32(x.shape[1]) + np.float32(1)) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 between [m x F] and [n x F] with the cubic kernel (diagonals of k(x, x) left out)."""
    m, n = len(x), len(y)
    kxx, kyy, kxy = _cubic_kernel(x, x), _cubic_kernel(y, y), _cubic_kernel(x, y)
    sum_xx = kxx.sum(dtype=np.float64) - np.trace(kxx, dtype=np.float64)
    sum_yy = kyy.sum(dtype=np.float64) - np.trace(kyy, dtype=np.float64)
    return float(sum_xx / (m * (m - 1)) + sum_yy / (n * (n - 1)) - 2 * kxy.sum(dtype=np.float64) / (m * n))


def kid(feats_a, feats_b, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """KID: mean and std of the unbiased MMD^2 over ``subsets`` random subsets (drawn without replacement
    within a subset) of ``min(subset_size, min(N_a, N_b) // 2)`` points from each set. Bińkowski et al. 2018
    use 100 subsets of 1000. At most half the smaller set, so that the subsets differ: subsets holding a
    whole set would all give the same value, and the std would be round-off (the mean is unbiased either way)."""
    a, b = _array(feats_a, "features a"), _array(feats_b, "features b")
    smaller = min(len(a), len(b))
    m = min(subset_size, smaller // 2)
    if m < 2 or subsets < 1:
        raise GenlabError(f"KID needs at least 4 points per set and 1 subset, got {smaller} points and "
                          f"{subsets} subsets")
    rng = np.random.default_rng(seed)
    values = np.array([mmd2_unbiased(a[rng.choice(len(a), m, replace=False)],
                                     b[rng.choice(len(b), m, replace=False)]) for _ in range(subsets)])
    return float(values.mean()), float(values.std())


# -- precision and recall (Kynkäänniemi et al. 2019) ----------------------------------------------------------

def _squared_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """[m x F], [n x F] -> [m x n] squared Euclidean distances in float32 (callers centre the features
    first, which keeps the round-off of |x|^2 + |y|^2 - 2 x.y far below the k-NN radii)."""
    x, y = x.astype(np.float32), y.astype(np.float32)
    d = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2 * x @ y.T
    return np.maximum(d, 0)


def _rows_per_chunk(n_cols: int) -> int:
    return max(1, _CHUNK_ENTRIES // max(n_cols, 1))


def knn_radii(x: np.ndarray, k: int) -> np.ndarray:
    """Squared distance from each point of [N x F] to its k-th nearest other point: [N].

    The point itself is at distance 0, the smallest in its row, so the k-th neighbour is entry k of the
    partially sorted row."""
    if len(x) <= k:
        raise GenlabError(f"precision/recall with k = {k} needs more than {k} points per set, got {len(x)}")
    step = _rows_per_chunk(len(x))
    return np.concatenate([np.partition(_squared_distances(x[i:i + step], x), k, axis=1)[:, k]
                           for i in range(0, len(x), step)])


def _covered(points: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """[N] bool: whether each point lies in at least one ball (centre [M x F], squared radius [M])."""
    step = _rows_per_chunk(len(centres))
    return np.concatenate([(_squared_distances(points[i:i + step], centres) <= radii[None, :]).any(1)
                           for i in range(0, len(points), step)])


def precision_recall(real, fake, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall of ``fake`` [N_f x F] against ``real`` [N_r x F], k-NN balls (k = 3 as
    in the paper)."""
    r, f = _array(real, "real features"), _array(fake, "fake features")
    centre = r.mean(0)  # distances do not change; float32 round-off does, with the size of the vectors
    r, f = r - centre, f - centre
    precision = _covered(f, r, knn_radii(r, k)).mean()
    recall = _covered(r, f, knn_radii(f, k)).mean()
    return float(precision), float(recall)


# -- predictions ----------------------------------------------------------------------------------------------

def class_shares(probs) -> np.ndarray:
    """Share of samples whose most probable class is c, for each class: [N x C] -> [C], summing to 1."""
    p = _array(probs, "probabilities")
    if len(p) == 0:
        raise GenlabError("class shares need at least one prediction")
    return np.bincount(p.argmax(1), minlength=p.shape[1]) / len(p)


def min_class_share(probs) -> float:
    """The smallest class share: 1/C when predictions are balanced, 0 when some class never appears."""
    return float(class_shares(probs).min())


def classifier_score(probs) -> float:
    """exp(E_x KL(p(y|x) || p(y))) with p(y) the mean prediction: [N x C] -> a float in [1, C]."""
    p = _array(probs, "probabilities")
    if len(p) == 0:
        raise GenlabError("the classifier score needs at least one prediction")
    marginal = p.mean(0, keepdims=True)
    kl = (xlogy(p, p) - xlogy(p, marginal)).sum(1)  # 0 log 0 = 0
    return float(np.exp(kl.mean()))


# -- on images ------------------------------------------------------------------------------------------------

def check_unit_images(x: Tensor, name: str) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != (1, 28, 28):
        shape = list(x.shape) if hasattr(x, "shape") else type(x).__name__
        raise GenlabError(f"{name} must be images of shape [N, 1, 28, 28], got {shape}")
    if len(x) and not (x.min() >= -1e-4 and x.max() <= 1 + 1e-4):
        raise GenlabError(f"{name} must have pixels in [0, 1], got [{x.min():.3g}, {x.max():.3g}]; "
                          "map [-1, 1] models' output with (x + 1) / 2")


def features_and_probs(images_unit: Tensor, classifier) -> tuple[np.ndarray, np.ndarray]:
    """The classifier's features [N x F] and probabilities [N x 10] of [N x 1 x 28 x 28] images in [0, 1]."""
    check_unit_images(images_unit, "images")
    feats, probs = classifier.outputs(images_unit)
    return feats.double().numpy(), probs.double().numpy()


def quality_from_features(sample_feats, sample_probs, reference_feats, kid_subsets: int = 100,
                          kid_subset_size: int = 1000, k: int = 3, seed: int = 0) -> dict:
    """All metrics of one sample set against reference features (computed once, reused across models)."""
    kid_mean, kid_std = kid(sample_feats, reference_feats, kid_subsets, kid_subset_size, seed)
    precision, recall = precision_recall(reference_feats, sample_feats, k)
    shares = class_shares(sample_probs)
    return {
        "fid": fid(sample_feats, reference_feats),
        "kid": kid_mean,
        "kid_std": kid_std,
        "precision": precision,
        "recall": recall,
        "min_class_share": float(shares.min()),
        "class_shares": [float(s) for s in shares],
        "classifier_score": classifier_score(sample_probs),
    }


def sample_quality(samples_unit: Tensor, reference_unit: Tensor, classifier, **kwargs) -> dict:
    """Quality of ``samples_unit`` against ``reference_unit`` (both [N x 1 x 28 x 28] in [0, 1]).

    :return: dict with fid, kid, kid_std, precision, recall, min_class_share, class_shares (list of 10) and
        classifier_score; ``kwargs`` go to ``quality_from_features``.
    """
    check_unit_images(reference_unit, "reference images")
    fs, ps = features_and_probs(samples_unit, classifier)
    fr, _ = features_and_probs(reference_unit, classifier)
    return quality_from_features(fs, ps, fr, **kwargs)


def reference_images(dataset_name: str, data_dir: str | None = None, n: int | None = None,
                     seed: int = 0) -> Tensor:
    """The reference set samples are compared with: a fixed random subset of the training split, of the
    test split's size unless ``n`` is given (10,000 images on MNIST rather than all 60,000, for speed and
    so that model rows and the reference row compare sets of equal size; FID depends on the sample size).

    :return: [n x 1 x 28 x 28] float in [0, 1].
    """
    from genlab.data import load_dataset

    train = load_dataset(dataset_name, split="train", data_dir=data_dir)
    if n is None:
        n = len(load_dataset(dataset_name, split="test", data_dir=data_dir).images)
    n = min(n, len(train.images))
    idx = torch.randperm(len(train.images), generator=torch.Generator().manual_seed(seed))[:n]
    return train.images[idx].unsqueeze(1).float() / 255


def reference_row(dataset_name: str, data_dir: str | None = None, classifier=None, reference=None) -> dict:
    """The metrics of the test split against the reference subset of the training split: what a model that
    samples from the data distribution itself would score (not exactly 0: two finite samples differ).

    :param reference: optional features and probabilities of ``reference_images``, as in ``model_quality``.
    """
    from genlab.data import load_dataset
    from genlab.metrics.classifier import get_classifier

    clf = classifier or get_classifier(dataset_name, data_dir)
    if reference is None:
        reference = features_and_probs(reference_images(dataset_name, data_dir), clf)
    test = load_dataset(dataset_name, split="test", data_dir=data_dir)
    fs, ps = features_and_probs(test.images.unsqueeze(1).float() / 255, clf)
    return quality_from_features(fs, ps, reference[0])


def _is_quality_row(row) -> bool:
    """Whether ``row`` is what ``quality_from_features`` gives: its numbers all there and finite (a cache file is
    anyone's to edit: "[]" there was a traceback, and "fid": "abc" went into evaluation.json)."""
    def number(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    scalars = ("fid", "kid", "kid_std", "precision", "recall", "min_class_share", "classifier_score")
    return (isinstance(row, dict) and all(number(row.get(key)) for key in scalars)
            and isinstance(row.get("class_shares"), list) and len(row["class_shares"]) > 0
            and all(number(share) for share in row["class_shares"]))


def cached_reference_row(dataset_name: str, data_dir: str | None, classifier, reference) -> dict:
    """``reference_row``, computed once per classifier and kept as JSON in the classifier cache folders
    (``<cache_name(dataset)>-reference.json``, tagged with the classifier's metadata and the reference set's size); a
    file written for another classifier or reference size, or unreadable, is recomputed. The row depends only
    on the data and the classifier."""
    import json

    from genlab.config import write_json
    from genlab.metrics.classifier import cache_dirs, cache_name, write_to_first

    dirs = cache_dirs(data_dir)
    name = f"{cache_name(dataset_name)}-reference.json"
    for path in (d / name for d in dirs):
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if (isinstance(stored, dict) and stored.get("classifier") == classifier.meta
                and stored.get("reference_size") == len(reference[0]) and _is_quality_row(stored.get("row"))):
            return stored["row"]
    row = reference_row(dataset_name, data_dir, classifier, reference)
    stored = {"classifier": classifier.meta, "reference_size": len(reference[0]), "row": row}
    write_to_first(dirs, lambda d: write_json(d / name, stored))  # a read-only shared data folder stays untouched
    return row


@torch.no_grad()
def draw_samples(model, n: int, seed: int = 0, batch_size: int = 1000) -> Tensor:
    """``n`` samples of a genlab model mapped to [0, 1]: [n x 1 x 28 x 28]. Seeded, without disturbing the
    caller's random state."""
    from genlab.data.batching import to_unit

    if not getattr(model, "can_sample", False):
        raise GenlabError(f"{type(model).__name__} cannot sample; sample quality needs a model that samples")
    with evaluating(model, seed):
        x = torch.cat([model.sample(min(batch_size, n - i)).cpu().float() for i in range(0, n, batch_size)])
    return to_unit(x, model.pixel_range)


# The fewest samples the class shares are counted on. A share near 6% moves by about 1.1 points from one draw
# of 500 samples to the next (binomial noise) and by 0.3 at 5,000: mnist-5k's reference set holds 500 images,
# and a DCGAN drawing 5.7% fours showed 4.4% in one draw of 500.
SHARE_SAMPLES = 5000


def model_quality(model, dataset_name: str, data_dir: str | None = None, classifier=None, reference=None,
                  seed: int = 0) -> dict:
    """Sample as many images from ``model`` as the reference set holds and score them against it; the class
    shares are counted on at least ``SHARE_SAMPLES`` samples (the same draw, continued).

    :param reference: optional (features [N x F], probabilities [N x 10]) of ``reference_images(...)``, from
        ``features_and_probs``, so that several models reuse one computation.
    """
    from genlab.metrics.classifier import get_classifier

    clf = classifier or get_classifier(dataset_name, data_dir)
    if reference is None:
        reference = features_and_probs(reference_images(dataset_name, data_dir), clf)
    n = len(reference[0])
    fs, ps = features_and_probs(draw_samples(model, max(n, SHARE_SAMPLES), seed), clf)
    results = quality_from_features(fs[:n], ps[:n], reference[0], seed=seed)
    shares = class_shares(ps)
    results.update(min_class_share=float(shares.min()), class_shares=[float(s) for s in shares])
    return results


# The reference row's scalars that ``evaluate_samples`` reports beside a model's, prefixed "reference_".
REFERENCE_KEYS = ("fid", "kid", "precision", "recall", "min_class_share", "classifier_score")


def evaluate_samples(run, seed: int = 0, **options) -> dict:
    """Sample quality of a trained run (``genlab evaluate``): the model's metrics, the reference row's
    (test split vs training subset) as ``reference_<name>``, and the classifier's test accuracy. Other
    ``options`` of ``genlab evaluate`` are not about samples and are ignored."""
    from genlab.data import resolve_dataset_name
    from genlab.metrics.classifier import get_classifier

    data_dir = run.train_cfg.data_dir
    name = resolve_dataset_name(run.train_cfg.dataset, data_dir)
    clf = get_classifier(name, data_dir)
    reference = features_and_probs(reference_images(name, data_dir), clf)
    results = model_quality(run.model, name, data_dir, clf, reference, seed)
    ref_row = cached_reference_row(name, data_dir, clf, reference)
    results.update({f"reference_{key}": ref_row[key] for key in REFERENCE_KEYS})
    results["classifier_accuracy"] = clf.test_accuracy
    return results
