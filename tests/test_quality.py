"""Sample-quality metrics against known answers, and the digit classifier behind them on real data."""

import json

import numpy as np
import pytest
import torch

from genlab.errors import GenlabError
from genlab.metrics import classifier as C
from genlab.metrics import quality as Q


# -- FID ------------------------------------------------------------------------------------------------------

def test_fid_of_a_set_with_itself_is_zero():
    x = np.random.default_rng(0).normal(size=(500, 16)) @ np.random.default_rng(1).normal(size=(16, 16))
    assert Q.fid(x, x) == pytest.approx(0, abs=1e-8)
    assert Q.fid(x, x + 1.0) == pytest.approx(16.0, rel=1e-6)  # a shift by 1 in 16 dims: ||mu1 - mu2||^2 = 16


def test_fid_of_two_gaussian_samples_matches_the_closed_form():
    # Diagonal covariances make (S1 S2)^(1/2) elementwise: sum (v1 + v2 - 2 sqrt(v1 v2)).
    rng = np.random.default_rng(0)
    mu1, mu2 = np.zeros(4), np.array([1.0, 0.5, 0.0, -0.5])
    v1, v2 = np.array([1.0, 2.0, 0.5, 1.0]), np.array([2.0, 1.0, 0.5, 3.0])
    a = mu1 + np.sqrt(v1) * rng.normal(size=(40_000, 4))
    b = mu2 + np.sqrt(v2) * rng.normal(size=(40_000, 4))
    closed = ((mu1 - mu2) ** 2).sum() + (v1 + v2 - 2 * np.sqrt(v1 * v2)).sum()
    assert Q.fid(a, b) == pytest.approx(closed, abs=0.05)
    # The same from the exact statistics, without sampling error.
    assert Q.fid_from_stats(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(closed, rel=1e-9)


def test_fid_from_stats_with_full_covariances_matches_a_symmetric_formula():
    # Tr((S1 S2)^(1/2)) = sum of sqrt(eigenvalues of S1^(1/2) S2 S1^(1/2)), a symmetric PSD matrix.
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(8, 8)), rng.normal(size=(8, 8))
    s1, s2 = a @ a.T, b @ b.T
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    ev, u = np.linalg.eigh(s1)
    r1 = (u * np.sqrt(ev)) @ u.T
    tr = np.sqrt(np.clip(np.linalg.eigvalsh(r1 @ s2 @ r1), 0, None)).sum()
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr
    assert Q.fid_from_stats(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)


def test_fid_with_singular_covariances_is_finite_and_correct():
    # Fewer samples than features and features that never fire (dead ReLU units) make both covariances singular.
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(50, 128)), rng.normal(size=(60, 128)) + 0.1
    a[:, :20] = b[:, :20] = 0
    (mu1, s1), (mu2, s2) = Q.gaussian_stats(a), Q.gaussian_stats(b)
    ev, u = np.linalg.eigh(s1)
    r1 = (u * np.sqrt(np.clip(ev, 0, None))) @ u.T
    tr = np.sqrt(np.clip(np.linalg.eigvalsh(r1 @ s2 @ r1), 0, None)).sum()
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr
    assert Q.fid(a, b) == pytest.approx(expected, rel=1e-5)
    assert Q.fid(a, a) == pytest.approx(0, abs=1e-6)


def test_fid_accepts_torch_and_rejects_bad_shapes():
    x = torch.randn(100, 5)
    assert Q.fid(x, x) == pytest.approx(0, abs=1e-8)
    with pytest.raises(GenlabError):
        Q.fid(torch.randn(10), torch.randn(10))


# -- KID ------------------------------------------------------------------------------------------------------

def test_kid_of_two_samples_of_one_distribution_is_near_zero():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2000, 16)), rng.normal(size=(2000, 16))
    same, same_std = Q.kid(a, b, subsets=20, subset_size=500)
    shifted, _ = Q.kid(a, b + 0.5, subsets=20, subset_size=500)
    assert shifted > 0
    assert abs(same) < 0.05 * shifted
    assert same_std > 0
    assert abs(same) < 3 * same_std  # unbiased: the mean over subsets is within noise of 0


def test_kid_std_is_a_spread_when_the_sets_are_smaller_than_a_subset():
    # 500 points against a subset size of 1000 (the report's quick case): the subsets must still differ.
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(500, 16)), rng.normal(size=(500, 16))
    mean, std = Q.kid(a, b, subsets=20)
    _, std_big = Q.kid(rng.normal(size=(4000, 16)), rng.normal(size=(4000, 16)), subsets=20)
    assert std > 1e-6 and std > 0.1 * std_big
    assert abs(mean) < 3 * std


def test_mmd_is_unbiased_for_identical_distributions():
    # The unbiased MMD^2 can be negative; its average over many independent pairs of samples is ~0,
    # whereas the biased (V-statistic) version would sit clearly above 0.
    rng = np.random.default_rng(1)
    vals = [Q.mmd2_unbiased(rng.normal(size=(50, 4)), rng.normal(size=(50, 4))) for _ in range(400)]
    assert min(vals) < 0
    assert abs(np.mean(vals)) < 3 * np.std(vals) / np.sqrt(len(vals))


# -- precision and recall -------------------------------------------------------------------------------------

def test_precision_and_recall_of_identical_sets_are_one_and_of_disjoint_sets_zero():
    x = np.random.default_rng(0).normal(size=(400, 8))
    assert Q.precision_recall(x, x) == (1.0, 1.0)
    assert Q.precision_recall(x, x + 100.0) == (0.0, 0.0)


def test_precision_and_recall_separate_realism_from_coverage():
    rng = np.random.default_rng(1)
    real = np.concatenate([rng.normal(size=(300, 2)), rng.normal(size=(300, 2)) + 50])  # two modes
    one_mode = rng.normal(size=(300, 2))  # a generator that dropped a mode: realistic, half the coverage
    precision, recall = Q.precision_recall(real, one_mode)
    assert precision > 0.9
    assert 0.4 < recall < 0.6
    blurred = np.concatenate([rng.normal(size=(150, 2)), rng.normal(size=(150, 2)) + 25])  # half off the data
    precision, _ = Q.precision_recall(real, blurred)
    assert 0.4 < precision < 0.6


def test_precision_recall_chunking_agrees_with_one_block(monkeypatch):
    rng = np.random.default_rng(2)
    real, fake = rng.normal(size=(300, 6)), rng.normal(size=(200, 6)) * 1.3
    whole = Q.precision_recall(real, fake)
    monkeypatch.setattr(Q, "_CHUNK_ENTRIES", 1000)  # forces chunks of 3 to 5 rows
    assert Q.precision_recall(real, fake) == whole
    assert 0 < whole[0] < 1 and 0 < whole[1] < 1


# -- predictions ----------------------------------------------------------------------------------------------

def test_classifier_score_is_one_for_constant_and_ten_for_confident_spread_predictions():
    constant = np.tile(np.array([[0.5, 0.3, 0.2] + [0.0] * 7]), (100, 1))
    assert Q.classifier_score(constant) == pytest.approx(1.0, abs=1e-12)
    spread = np.eye(10)[np.arange(1000) % 10]
    assert Q.classifier_score(spread) == pytest.approx(10.0, rel=1e-12)
    collapsed = np.eye(10)[np.arange(1000) % 2]  # two classes only
    assert Q.classifier_score(collapsed) == pytest.approx(2.0, rel=1e-12)


def test_class_shares():
    labels = np.array([0] * 50 + [1] * 30 + [2] * 20)
    probs = np.eye(10)[labels] * 0.8 + 0.02
    shares = Q.class_shares(probs)
    assert shares.shape == (10,)
    np.testing.assert_allclose(shares[:3], [0.5, 0.3, 0.2])
    assert shares[3:].sum() == 0 and shares.sum() == pytest.approx(1)
    assert Q.min_class_share(probs) == 0.0
    assert Q.min_class_share(np.eye(10)[np.arange(1000) % 10]) == pytest.approx(0.1)


# -- the classifier, on real digits ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def quick_classifier():
    """One short epoch on mnist-5k: enough to check the pipeline and a modest accuracy, in seconds."""
    return C.train_classifier("mnist-5k", settings=C.ClassifierSettings(epochs=1))


def test_classifier_trains_on_mnist_5k(quick_classifier):
    from genlab.data import load_dataset

    test = load_dataset("mnist-5k", split="test")
    assert quick_classifier.test_accuracy > 0.90
    assert quick_classifier.accuracy(test.images, test.labels) == quick_classifier.test_accuracy
    x = test.images[:37].unsqueeze(1).float() / 255
    feats, probs = quick_classifier.outputs(x)
    assert feats.shape == (37, C.FEATURE_DIM) and probs.shape == (37, 10)
    assert torch.allclose(probs.sum(1), torch.ones(37), atol=1e-5)
    assert torch.equal(quick_classifier.features(x), feats)  # batching must not change the answer
    assert torch.allclose(quick_classifier.outputs(x, batch_size=5)[0], feats, atol=1e-5)


@pytest.mark.slow
def test_classifier_training_is_deterministic():
    s = C.ClassifierSettings(epochs=1)
    nets = []
    for caller_seed in (1, 2):
        torch.manual_seed(caller_seed)  # the caller's random state must not matter
        nets.append(C.train_classifier("mnist-5k", settings=s).net.state_dict())
    assert all(torch.equal(nets[0][k], nets[1][k]) for k in nets[0])


def test_classifier_cache_round_trip(quick_classifier, tmp_path):
    path = C.save_classifier(quick_classifier, tmp_path)
    assert json.loads(path.read_text())["format_version"] == C.FORMAT_VERSION
    loaded = C.load_classifier(tmp_path, "mnist-5k")
    x = torch.rand(8, 1, 28, 28)
    assert torch.equal(loaded.probs(x), quick_classifier.probs(x))
    assert loaded.test_accuracy == quick_classifier.test_accuracy
    # A damaged or stale cache is not trusted.
    path.write_text("{not json")
    assert C.load_classifier(tmp_path, "mnist-5k") is None
    meta = dict(quick_classifier.meta, format_version=C.FORMAT_VERSION - 1)
    path.write_text(json.dumps(meta))
    assert C.load_classifier(tmp_path, "mnist-5k") is None


def _fake_trainer(calls):
    def train(dataset_name, data_dir=None, settings=None, log=None):
        calls.append(dataset_name)
        torch.manual_seed(len(calls))
        return C.Classifier(C.DigitCNN(), {"format_version": C.FORMAT_VERSION, "dataset": dataset_name,
                                           "test_accuracy": 0.5, "feature_dim": C.FEATURE_DIM})
    return train


def test_cache_goes_beside_the_data_when_writable(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(C, "train_classifier", _fake_trainer(calls))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    data = tmp_path / "data"
    data.mkdir()
    first = C.get_classifier("mnist", str(data), log=None)
    assert (data / "classifiers" / f"mnist-cnn-v{C.FORMAT_VERSION}.safetensors").is_file()
    assert not (tmp_path / "xdg").exists()
    second = C.get_classifier("mnist", str(data), log=None)
    assert calls == ["mnist"]  # trained once, then loaded
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(first.features(x), second.features(x))


def test_cache_falls_back_to_the_user_cache_when_the_data_dir_is_read_only(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(C, "train_classifier", _fake_trainer(calls))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o555)  # as in CI's shared data; root could still write, genlab must not
    try:
        C.get_classifier("mnist", str(data), log=None)
        assert not (data / "classifiers").exists()
        assert (tmp_path / "xdg" / "genlab" / "classifiers" / f"mnist-cnn-v{C.FORMAT_VERSION}.json").is_file()
        C.get_classifier("mnist", str(data), log=None)
        assert calls == ["mnist"]
    finally:
        data.chmod(0o755)


def test_the_reference_row_leaves_a_read_only_data_dir_alone(tmp_path, monkeypatch):
    # Its cache was written wherever root could write: into CI's shared data (mode 555), whose new
    # classifiers/ folder then took every classifier after it.
    from genlab.metrics import quality
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(quality, "reference_row", lambda *args, **kwargs: {"fid": 1.0})
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o555)
    clf = C.Classifier(C.DigitCNN(), {"format_version": C.FORMAT_VERSION, "dataset": "mnist"})
    try:
        assert quality.cached_reference_row("mnist", str(data), clf, (torch.zeros(3, 2),)) == {"fid": 1.0}
        assert not (data / "classifiers").exists()
        assert (tmp_path / "xdg" / "genlab" / "classifiers" / "mnist-reference.json").is_file()
    finally:
        data.chmod(0o755)


def test_cache_dirs_put_the_data_dir_first_and_honour_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    user = tmp_path / "xdg" / "genlab" / "classifiers"
    assert C.cache_dirs(str(tmp_path / "data")) == [tmp_path / "data" / "classifiers", user]
    monkeypatch.delenv("GENLAB_DATA_DIR", raising=False)
    assert C.cache_dirs() == [user]  # the data directory defaults to the user cache: one place, not two


def test_random_shift_moves_images_without_loss_inside_the_margin():
    x = torch.zeros(3, 1, 28, 28)
    x[:, 0, 10:18, 10:18] = torch.rand(3, 8, 8)
    y = C.random_shift(x, 2, torch.Generator().manual_seed(0))
    assert y.shape == x.shape
    torch.testing.assert_close(y.sum((1, 2, 3)), x.sum((1, 2, 3)))  # content away from borders is kept


# -- sample quality on real digits ----------------------------------------------------------------------------

def test_sample_quality_ranks_real_digits_above_noise_and_collapse(quick_classifier):
    from genlab.data import load_dataset

    test = load_dataset("mnist-5k", split="test")
    reference = Q.reference_images("mnist-5k", n=1000)
    assert reference.shape == (1000, 1, 28, 28) and torch.equal(reference, Q.reference_images("mnist-5k", n=1000))
    real = test.images[:1000].unsqueeze(1).float() / 255
    ones = real[test.labels[:1000] == 1]
    collapsed = ones.repeat(len(real) // len(ones) + 1, 1, 1, 1)[:len(real)]
    noise = torch.rand_like(real)
    kw = dict(kid_subsets=10, kid_subset_size=200)
    good = Q.sample_quality(real, reference, quick_classifier, **kw)
    bad = Q.sample_quality(noise, reference, quick_classifier, **kw)
    mode = Q.sample_quality(collapsed, reference, quick_classifier, **kw)
    assert set(good) == {"fid", "kid", "kid_std", "precision", "recall", "min_class_share", "class_shares",
                         "classifier_score"}
    assert len(good["class_shares"]) == 10 and sum(good["class_shares"]) == pytest.approx(1)
    assert good["fid"] < 0.1 * bad["fid"] and good["kid"] < 0.1 * bad["kid"]
    assert good["precision"] > 0.5 and good["recall"] > 0.5 and bad["recall"] < 0.1  # noise covers no digits
    assert good["min_class_share"] > 0.05 and mode["min_class_share"] == 0
    assert good["classifier_score"] > 5 and mode["classifier_score"] < 2  # a one-epoch classifier is not very confident
    assert mode["recall"] < 0.5 * good["recall"]


def test_class_shares_are_counted_on_thousands_of_samples(quick_classifier):
    # mnist-5k's reference set holds 500 images, and the shares of 500 samples moved by a point from one draw to
    # the next: a DCGAN drawing 5.7% fours showed 4.4% in the quick report. FID stays on 500, as the reference.
    from genlab.data import load_dataset

    digits = load_dataset("mnist-5k", split="train").images  # 4,500

    class Digits:  # a "model" that samples the training digits in turn, more of them than the reference holds
        can_sample, pixel_range, training = True, "unit", False
        drawn = 0

        def eval(self):
            return self

        def train(self, mode=True):
            return self

        def sample(self, n):
            idx = torch.arange(self.drawn, self.drawn + n) % len(digits)
            self.drawn += n
            return digits[idx].unsqueeze(1).float() / 255

    model = Digits()
    reference = Q.features_and_probs(Q.reference_images("mnist-5k"), quick_classifier)
    assert len(reference[0]) == 500
    row = Q.model_quality(model, "mnist-5k", classifier=quick_classifier, reference=reference)
    assert model.drawn == Q.SHARE_SAMPLES == 5000
    def shares(idx):
        return list(Q.class_shares(Q.features_and_probs(digits[idx].unsqueeze(1).float() / 255, quick_classifier)[1]))

    assert row["class_shares"] == pytest.approx(shares(torch.arange(5000) % len(digits)))
    assert row["class_shares"] != pytest.approx(shares(torch.arange(500)))


def test_sample_quality_rejects_images_outside_unit_range(quick_classifier):
    x = torch.rand(10, 1, 28, 28)
    with pytest.raises(GenlabError, match=r"\[0, 1\]"):
        Q.sample_quality(2 * x - 1, x, quick_classifier)
    with pytest.raises(GenlabError, match="shape"):
        Q.sample_quality(x.view(10, 784), x, quick_classifier)


def test_model_quality_maps_tanh_samples_and_restores_the_random_state(quick_classifier):
    from genlab.data import load_dataset

    digits = load_dataset("mnist-5k", split="test").images[:300].unsqueeze(1).float() / 255

    class Replay(torch.nn.Module):  # a "model" that samples held-out digits in [-1, 1]
        can_sample, pixel_range = True, "tanh"

        def sample(self, n):
            return digits[torch.randint(len(digits), (n,))] * 2 - 1

    reference = Q.features_and_probs(Q.reference_images("mnist-5k", n=300), quick_classifier)
    state = torch.get_rng_state()
    row = Q.model_quality(Replay(), "mnist-5k", classifier=quick_classifier, reference=reference)
    assert torch.equal(torch.get_rng_state(), state)
    assert row["precision"] > 0.5 and row["min_class_share"] > 0.03
    with pytest.raises(GenlabError, match="cannot sample"):
        Q.draw_samples(torch.nn.Linear(1, 1), 3)


def test_the_reference_row_is_computed_once_per_classifier(quick_classifier, tmp_path, monkeypatch):
    import copy

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    reference = Q.features_and_probs(Q.reference_images("mnist-5k", n=300), quick_classifier)
    calls = []
    real_row = Q.reference_row
    monkeypatch.setattr(Q, "reference_row", lambda *a: calls.append(1) or real_row(*a))
    data_dir = str(tmp_path / "data")
    first = Q.cached_reference_row("mnist-5k", data_dir, quick_classifier, reference)
    again = Q.cached_reference_row("mnist-5k", data_dir, quick_classifier, reference)
    assert len(calls) == 1 and again == first and first["fid"] > 0
    assert (tmp_path / "data" / "classifiers" / "mnist-5k-reference.json").is_file()
    # Another classifier (different metadata) must not reuse the row.
    other = copy.copy(quick_classifier)
    other.meta = {**quick_classifier.meta, "test_accuracy": 0.5}
    Q.cached_reference_row("mnist-5k", data_dir, other, reference)
    assert len(calls) == 2
    # A damaged file is recomputed, not trusted.
    cached = tmp_path / "data" / "classifiers" / "mnist-5k-reference.json"
    cached.write_text("{not json")
    assert Q.cached_reference_row("mnist-5k", data_dir, quick_classifier, reference) == first
    assert len(calls) == 3
    # So is JSON of another shape ("[]" was a traceback) or a row whose numbers are not numbers (trusted).
    stored = json.loads(cached.read_text())
    for damaged in ([], None, "x", {**stored, "row": {**stored["row"], "fid": "abc"}},
                    {**stored, "row": {**stored["row"], "class_shares": []}}):
        cached.write_text(json.dumps(damaged))
        assert Q.cached_reference_row("mnist-5k", data_dir, quick_classifier, reference) == first
    assert len(calls) == 8
