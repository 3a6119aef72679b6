"""Energies as anomaly scores: AUROC, merged digits, deterministic energies, the report and ``genlab energy``."""

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from genlab.config import TrainConfig
from genlab.data import load_dataset
from genlab.data.batching import to_pixels
from genlab.data.datasets import find_idx_dir
from genlab.errors import GenlabError
from genlab.cli import build_parser
from genlab.metrics import anomaly
from genlab.models import build
from genlab.models.ae import AEConfig
from genlab.models.dae import DAEConfig
from genlab.viz import metric_figures

needs_fashion = pytest.mark.skipif(find_idx_dir("fashion-mnist") is None,
                                   reason="Fashion-MNIST is not on disk (tests never download)")


@pytest.fixture(scope="module")
def test_set():
    return load_dataset("mnist-5k", "test")


@pytest.fixture(scope="module")
def dae_run(tmp_path_factory):
    """A small DAE trained for 3 epochs on mnist-5k (a few seconds)."""
    from genlab.train import train

    out = tmp_path_factory.mktemp("runs") / "dae"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GENLAB_OFFLINE", "1")
        torch.manual_seed(0)
        return train("dae", DAEConfig(latent_dim=64),
                     TrainConfig(dataset="mnist-5k", epochs=3, eval_limit=100, figures=False, progress=False,
                                 out=str(out), device="cpu"))


# -- AUROC -------------------------------------------------------------------------------------------------
def test_auroc_equals_a_hand_computed_value_with_and_without_ties():
    # Each anomalous energy beats the clean ones below it: 2.5 beats 1 and 2 (not 3), 4 beats all -> 5 / 6.
    assert anomaly.auroc([1.0, 2.0, 3.0], [2.5, 4.0]) == pytest.approx(5 / 6)
    # A tie counts half: 2 vs (1, 2) -> 1.5, 3 vs (1, 2) -> 2; total 3.5 of 4 pairs.
    assert anomaly.auroc([1.0, 2.0], [2.0, 3.0]) == pytest.approx(3.5 / 4)


def test_auroc_equals_scikit_learn_on_a_small_example():
    rng = np.random.default_rng(0)
    e_in, e_out = rng.normal(0, 1, 37), rng.normal(0.7, 1.3, 23)
    expected = roc_auc_score(np.r_[np.zeros(37), np.ones(23)], np.r_[e_in, e_out])
    assert anomaly.auroc(e_in, e_out) == pytest.approx(expected)
    assert anomaly.auroc(e_out, e_in) == pytest.approx(1 - expected)  # swapping the classes mirrors it


def test_auroc_refuses_nan_energies():
    with pytest.raises(GenlabError, match="finite"):
        anomaly.auroc([1.0, np.nan], [2.0])


# -- merged digits -----------------------------------------------------------------------------------------
def test_merged_digits_are_the_average_of_two_different_digits(test_set):
    images, labels = test_set.images[:300], test_set.labels[:300]
    partner = anomaly.merged_pairs(len(images), seed=3, labels=labels)
    merged = anomaly.merged_digits(images, seed=3, labels=labels)
    assert merged.dtype == torch.uint8 and merged.shape == images.shape
    assert (partner != np.arange(300)).all()
    assert (labels.numpy()[partner] != labels.numpy()).all()
    a, b = images.int(), images[torch.as_tensor(partner)].int()
    assert torch.equal(merged.int(), (a + b + 1) // 2)
    # On the model's scale this is the lecture's (img_a + img_b) / 2 to within half a grey level.
    lecture = (to_pixels(images, "tanh") + to_pixels(images[torch.as_tensor(partner)], "tanh")) / 2
    assert (to_pixels(merged, "tanh") - lecture).abs().max() <= 1 / 255 + 1e-6
    # Fixed by the seed.
    assert torch.equal(merged, anomaly.merged_digits(images, seed=3, labels=labels))
    assert not torch.equal(merged, anomaly.merged_digits(images, seed=4, labels=labels))


def test_merging_needs_two_labels(test_set):
    ones = test_set.images[:10]
    with pytest.raises(GenlabError, match="two distinct labels"):
        anomaly.merged_digits(ones, labels=torch.zeros(10, dtype=torch.int64))


# -- energies ----------------------------------------------------------------------------------------------
def test_energies_are_the_models_energy_on_its_pixel_scale_in_any_batch_size(test_set):
    torch.manual_seed(0)
    model = build("ae", AEConfig(latent_dim=8))
    images = test_set.images[:70]
    e = anomaly.energies(model, images, batch_size=32)
    with torch.no_grad():
        expected = model.energy(to_pixels(images, "tanh")).double().numpy()
    assert e.shape == (70,)
    assert np.allclose(e, expected, rtol=1e-5)


class NoisyEnergy(torch.nn.Module):
    """A model whose energy is random, like a sampled latent: energies() must still be repeatable."""

    pixel_range = "unit"

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    @property
    def device(self):
        return self.w.device

    def energy(self, x):
        return x.flatten(1).sum(1) + torch.randn(len(x))


def test_stochastic_energies_are_repeatable_and_leave_the_global_rng_alone(test_set):
    model = NoisyEnergy()
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    e1 = anomaly.energies(model, test_set.images[:50], batch_size=16)
    assert torch.equal(torch.random.get_rng_state(), before)
    e2 = anomaly.energies(model, test_set.images[:50], batch_size=16)
    assert np.array_equal(e1, e2)
    assert not np.array_equal(e1, anomaly.energies(model, test_set.images[:50], batch_size=16, seed=1))


# -- the report and the command line -----------------------------------------------------------------------
@needs_fashion
def test_energy_report_scores_fashion_mnist_above_mnist(dae_run, tmp_path):
    from genlab.checkpoint import load_run

    run = load_run(dae_run)
    report = anomaly.energy_report(run, limit=300)
    assert report["in_dataset"] == "mnist-5k" and report["ood_dataset"] == "fashion-mnist"
    assert report["n"] == {"test": 300, "merged": 300, "faded": 300, "photos": 300, "ood": 300}
    assert report["missing"] is None
    e = report["energies"]
    assert report["auroc_ood"] == pytest.approx(anomaly.auroc(e["test"], e["ood"]))
    assert report["auroc_merged_vs_faded"] == pytest.approx(anomaly.auroc(e["faded"], e["merged"]))
    assert report["auroc_ood"] > 0.6  # a trained DAE reconstructs digits better than clothes
    assert 0.0 <= report["auroc_merged"] <= 1.0
    json.dumps(anomaly.report_json(report))
    assert metric_figures.figure_energy_histograms(report, tmp_path / "h.png").stat().st_size > 1000
    merged = anomaly.split_images(run, "merged", 6)
    assert metric_figures.figure_merged(run.model, merged, tmp_path / "m.png").stat().st_size > 1000


def test_energy_report_without_fashion_mnist_still_has_an_ood_column(dae_run, tmp_path, monkeypatch):
    """A newcomer's machine: no data directory, no Debian data sets. The photo patches that scikit-learn and
    scikit-image ship are the out-of-distribution set; the Fashion-MNIST comparison is left out with one line
    saying how to get it, and nothing is downloaded."""
    from genlab.checkpoint import load_run
    from genlab.data import clear_cache

    monkeypatch.setenv("GENLAB_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("GENLAB_NO_SYSTEM_DATA", "1")
    monkeypatch.delenv("GENLAB_OFFLINE", raising=False)  # even online, a report never downloads
    monkeypatch.setattr("genlab.data.datasets.download_files", lambda *a, **k: pytest.fail("a report downloaded"))
    clear_cache()
    run = load_run(dae_run)
    report = anomaly.energy_report(run, limit=200)
    assert set(report["energies"]) == {"test", "merged", "faded", "photos"} and report["auroc_ood"] is None
    e = report["energies"]
    assert len(e["photos"]) == 200 and report["auroc_photos"] == pytest.approx(anomaly.auroc(e["test"], e["photos"]))
    missing = report["missing"]
    assert "fashion-mnist" in missing and "\n" not in missing
    assert str(tmp_path / "empty" / "fashion-mnist") in missing and "dataset-fashion-mnist" in missing
    assert "genlab datasets --download fashion-mnist" in missing
    assert metric_figures.figure_energy_histograms(report, tmp_path / "h.png").stat().st_size > 1000


def test_photo_patches_are_fixed_grey_28_by_28_images():
    from genlab.data.photos import photo_patches

    a, b = photo_patches(50, seed=3), photo_patches(50, seed=3)
    assert a.shape == (50, 28, 28) and a.dtype == torch.uint8 and torch.equal(a, b)
    assert not torch.equal(a, photo_patches(50, seed=4))
    assert a.float().std() > 20  # real photographs, not flat fields


def _cli(argv):
    args = build_parser().parse_args(argv)
    return args.func(args)


def test_cli_saves_energies_of_a_split(dae_run, tmp_path, capsys):
    assert _cli(["energy", str(dae_run), "--split", "merged", "--limit", "40", "--out", str(tmp_path / "e.csv")]) == 0
    saved = np.loadtxt(tmp_path / "e.csv", skiprows=1)
    assert _cli(["energy", str(dae_run), "--split", "merged", "--limit", "40", "--out", str(tmp_path / "e.npy")]) == 0
    assert saved.shape == (40,) and np.allclose(saved, np.load(tmp_path / "e.npy"), rtol=1e-6)
    capsys.readouterr()
    assert _cli(["energy", str(dae_run), "--split", "test", "--limit", "5", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["split"] == "test" and len(printed["energies"]) == 5
    with pytest.raises(GenlabError, match=r"\.npy or \.csv"):
        _cli(["energy", str(dae_run), "--limit", "5", "--out", str(tmp_path / "e.txt")])


@needs_fashion
def test_cli_auroc_json(dae_run, tmp_path, capsys):
    assert _cli(["energy", str(dae_run), "--auroc", "--json", "--limit", "200", "--figures", str(tmp_path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert 0.0 <= out["auroc_merged"] <= 1.0 and 0.0 <= out["auroc_ood"] <= 1.0
    assert (tmp_path / "energy_histograms.png").is_file() and (tmp_path / "fig8_merged.png").is_file()


def test_faded_digits_have_the_ink_of_a_merged_digit_where_the_two_do_not_overlap():
    # The control for the merged digits: a merged digit is also fainter than a clean one, and an energy that
    # falls or rises with faintness alone separated merged from clean digits (or put them below) without
    # seeing two digits in one.
    a = torch.tensor([[[0, 255, 255, 1]]], dtype=torch.uint8).expand(2, 1, 4).contiguous()
    assert anomaly.faded_digits(a)[0].tolist() == [[0, 128, 128, 1]]
    merged = anomaly.merged_digits(torch.tensor([[[0, 255, 255]], [[255, 255, 0]]], dtype=torch.uint8), seed=0)
    assert merged.tolist() == [[[128, 255, 128]], [[128, 255, 128]]]  # half strength where they do not overlap
    with pytest.raises(GenlabError, match="uint8"):
        anomaly.faded_digits(a.float())


def test_the_report_reads_the_merged_digit_columns_in_words():
    from genlab.reproduce import _reading_of_merged

    def row(merged, vs_faded, clean=100.0, faded=50.0, mixed=70.0):
        return {"auroc_merged": merged, "auroc_merged_vs_faded": vs_faded,
                "mean_energy": {"test": clean, "faded": faded, "merged": mixed}}
    text = _reading_of_merged({"ae": row(0.08, 0.92), "vae": row(0.97, 0.93), "dcgan": row(0.88, 0.52)})
    assert text.startswith("Reading: ae gives merged digits lower energies than clean ones, against the lecture")
    assert "vae gives merged digits higher energies than clean and than faded ones" in text
    assert "dcgan tells merged from clean digits at 0.88 but merged from faded ones only at 0.52" in text
    assert _reading_of_merged({"ae": {"auroc_merged": 0.3, "mean_energy": {"test": 1.0}}}) == ""  # an older table
