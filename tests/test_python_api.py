"""genlab's Python interface as a researcher uses it: images in the layouts other libraries hand over, the
caller's random state and grad mode left alone, and one clear exception for what genlab cannot take."""

from __future__ import annotations

import re
import threading
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import genlab
from genlab import config as cfgmod
from genlab.data import load_dataset
from genlab.errors import GenlabError
from genlab.models import MODELS
from genlab.train import default_train_config, train


def small_config(out, **changes) -> cfgmod.TrainConfig:
    settings = {**cfgmod.to_dict(default_train_config("ae")), "dataset": "mnist-5k", "epochs": 1, "batch_size": 64,
                "limit": 256, "eval_limit": 100, "progress": False, "figures": False, "out": str(out), **changes}
    return cfgmod.from_dict(cfgmod.TrainConfig, settings)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    return {"ae": train("ae", MODELS["ae"].Config(latent_dim=8), small_config(root / "ae")),
            "threes": train("ae", MODELS["ae"].Config(latent_dim=8), small_config(root / "threes", classes="3"))}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("mnist-5k", "test").images[:8].numpy()  # uint8 [8, 28, 28]


def test_the_layouts_of_other_libraries_are_read_as_the_images_they_hold(runs, digits):
    # A flat [N x 784] array (scikit-learn's MNIST) was read as one image 8 pixels tall and gave one energy; one
    # colour picture [H x W x 3] (OpenCV, PIL) gave H energies of 28 x 3 slivers.
    model = genlab.load(runs["ae"])
    reference = model.energy(digits)
    colour = np.repeat(digits[..., None], 3, axis=3)  # [8, 28, 28, 3], equal channels: the same grey digits
    # [8 x 1 x 784] (a channel axis kept) was eight strips one pixel high, squeezed into blank images.
    for layout in (digits.reshape(8, 784), digits.reshape(8, 784) / 255.0, torch.from_numpy(digits.reshape(8, 784)),
                   digits.reshape(8, 1, 784), digits.reshape(8, 784, 1), torch.from_numpy(digits.reshape(8, 1, 784)),
                   digits[:, None], torch.from_numpy(digits[:, None]), digits[..., None], colour,
                   [Image.fromarray(d) for d in digits], [torch.from_numpy(d) for d in digits]):
        assert np.allclose(model.energy(layout), reference), type(layout)
    # A tensor in an image library's layout, [N x H x W x C], where only that reading fits (it was read as
    # [N x C x H x W] and refused with a shape the caller never gave).
    for layout in (torch.from_numpy(digits[..., None]), torch.from_numpy(colour)):
        assert np.allclose(model.energy(layout), reference), layout.shape
    # One grey image with its channel axis, [H x W x 1], was read as 28 images 28 x 1 pixels.
    for one in (colour[0], torch.from_numpy(colour[0]), Image.fromarray(colour[0]), digits[0], digits[0][..., None],
                torch.from_numpy(digits[0][..., None])):
        assert np.allclose(model.energy(one), reference[:1]), type(one)
    assert model.denoise(digits[0][..., None]).shape == (1, 28, 28)
    # A grey picture with alpha (PIL's "LA", [H x W x 2]) was read as 28 images 2 pixels wide; a palette picture
    # as its palette indices; a 1-bit one was refused as booleans.
    grey_alpha = np.stack([digits[0], np.full_like(digits[0], 255)], axis=2)
    for one in (grey_alpha, Image.fromarray(grey_alpha, "LA"), Image.fromarray(digits[0]).convert("P")):
        assert np.allclose(model.energy(one), reference[:1]), one
    black_white = (digits[0] > 127).astype(np.uint8) * 255
    assert np.allclose(model.energy(Image.fromarray(black_white).convert("1")), model.energy(black_white))
    mixed = model.energy([digits[0], np.zeros((40, 30), np.uint8)])  # images of any sizes, resized
    assert mixed.shape == (2,) and mixed[0] == pytest.approx(reference[0], rel=1e-5)
    assert model.denoise(digits.reshape(8, 784)).shape == (8, 28, 28)


def _nested_tensor() -> torch.Tensor:
    with warnings.catch_warnings():  # "nested tensors are a prototype"
        warnings.simplefilter("ignore")
        return torch.nested.nested_tensor([torch.zeros(28, 28), torch.zeros(20, 20)])


@pytest.mark.parametrize("images,words", [
    ([], "no images given"),
    (None, "got NoneType"),
    (["x.png", np.zeros((28, 28), np.uint8)], "all paths or all images"),
    (np.zeros((4, 28, 28), np.int64), "got int64; convert 0..255 values with .astype(numpy.uint8)"),
    (torch.zeros(2, 28, 28, dtype=torch.int64), "got a torch.int64 tensor"),
    (torch.zeros(2, 28, 28, device="meta"), "got a meta tensor, which holds no pixels"),
    ([torch.zeros(28, 28, device="meta")], "got a meta tensor, which holds no pixels"),  # PyTorch's error
    (_nested_tensor(), "got a nested one"),  # PyTorch's "Internal error"
    (torch.full((2, 784), 3.0), "pixels in [0, 1], got values from 3 to 3"),
    (np.full((2, 28, 28), 1.0000001), "to 1.0000001"),
    (np.zeros((2, 3 * 784), np.uint8), "reshape them to images"),
    (np.zeros((0, 0), np.uint8), "an image of 0 x 0 pixels has none to read"),  # OpenCV's resize assertion
    (Image.new("L", (0, 5)), "an image of 0 x 5 pixels has none to read"),
    (torch.rand(2, 28, 28).to_sparse(), "got a sparse_coo one; convert it with .to_dense()"),  # a TypeError
    ([torch.rand(28, 28).to_sparse()], "got a sparse_coo one; convert it with .to_dense()"),
    (["x" * 5000], "x (5000 characters): File name too long"),  # Python's OSError
])
def test_what_cannot_be_read_as_images_is_one_genlab_error(runs, images, words):
    with pytest.raises(GenlabError, match=re.escape(words)):
        genlab.load(runs["ae"]).energy(images)


def test_a_run_of_some_classes_measures_percentiles_against_those_classes(runs):
    # A --classes 3 run took its percentiles and thresholds against all ten classes' test images: threshold(0.5)
    # flagged 16% of threes, not the half that a false-positive rate of 0.5 on data like the training data means.
    model = genlab.load(runs["threes"])
    test = load_dataset("mnist-5k", "test")
    threes = model.energy(test.images[test.labels == 3])
    assert len(model.heldout_energies()) == len(threes) == 50
    assert np.mean(threes > model.threshold(0.5)) == pytest.approx(0.5, abs=0.05)
    # A rate is met as nearly as 50 images allow: 0.02 flagged none of them (the threshold was the largest).
    held = model.heldout_energies()
    assert len(np.unique(held)) == 50  # no ties, so each rate is met exactly
    for fpr, flagged in ((0.0, 0), (0.01, 0), (0.02, 1), (0.04, 2), (0.5, 25), (1.0, 49)):
        assert np.sum(held > model.threshold(fpr)) == flagged, fpr
    with pytest.raises(ValueError, match="read-only"):
        model.heldout_energies()[0] = -1.0  # the ground of every percentile is not the caller's to edit


def test_percentile_and_threshold_refuse_what_is_not_a_number(runs):
    model = genlab.load(runs["ae"])
    for bad in (float("nan"), None, "500", [1.0, float("inf")], {}, 1 + 2j, [object()]):  # the last three: TypeError
        with pytest.raises(GenlabError, match="percentile takes"):
            model.percentile(bad)
    for bad in ("0.1", None, [0.01], True):
        with pytest.raises(GenlabError, match="fpr .--fpr. is a number between 0 and 1"):
            model.threshold(bad)
    assert model.percentile(np.float32(1e9)) == 100.0 and model.threshold(np.float64(0.5)) > 0


def test_loading_and_scoring_leave_the_callers_random_stream_alone_even_from_threads(runs, digits):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    model = genlab.load(runs["ae"])  # built with random weights, then the checkpoint's: drew from the caller's
    assert torch.equal(torch.rand(3), expected)
    torch.manual_seed(123)
    sequential = model.energy(digits, batch_size=2)
    found = []
    workers = [threading.Thread(target=lambda: found.extend(model.energy(digits, batch_size=2) for _ in range(3)))
               for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert torch.equal(torch.rand(3), expected)  # overlapping seeded blocks left seed 0's stream behind
    assert len(found) == 12 and all(np.allclose(e, sequential) for e in found)


def test_train_takes_its_device_trains_under_no_grad_and_refuses_float64_in_one_line(tmp_path):
    cfg = small_config(tmp_path / "a", limit=64)
    with pytest.raises(GenlabError, match="--device must be auto, cpu, cuda or cuda:N, got 'gpu'"):
        train("ae", MODELS["ae"].Config(latent_dim=4), cfg, device="gpu")  # was ignored for a new run
    assert not (tmp_path / "a").exists()
    with torch.no_grad():  # a notebook cell: "element 0 of tensors does not require grad"
        run = train("ae", MODELS["ae"].Config(latent_dim=4), cfg, device=torch.device("cpu"))
    assert genlab.load(run).run.counters["epoch"] == 1
    with torch.inference_mode():
        train("ae", MODELS["ae"].Config(latent_dim=4), small_config(tmp_path / "b", limit=64))
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        for call in (lambda: genlab.load(run), lambda: train("ae", None, small_config(tmp_path / "c", limit=64))):
            with pytest.raises(GenlabError, match="default dtype is torch.float64"):
                call()
    finally:
        torch.set_default_dtype(before)
    assert not (tmp_path / "c").exists()


def test_a_model_made_in_float32_samples_the_same_under_a_float64_default():
    # A model loaded, then torch.set_default_dtype(torch.float64) in the caller's session: energy and denoise
    # went on, sample raised PyTorch's "mat1 and mat2 must have the same dtype" (its noise took the default).
    from genlab.models import build

    for name in ("vae", "ebgan", "dcgan", "cvae", "cdcgan"):
        model = build(name).eval()
        with torch.no_grad():
            wanted = model.sample(3, generator=torch.Generator().manual_seed(0))
            before = torch.get_default_dtype()
            torch.set_default_dtype(torch.float64)
            try:
                got = model.sample(3, generator=torch.Generator().manual_seed(0))
            finally:
                torch.set_default_dtype(before)
        assert got.dtype == torch.float32 and torch.equal(got, wanted), name


def test_sample_refuses_a_generator_that_is_not_torchs(tmp_path):
    model = MODELS["vae"](MODELS["vae"].Config(latent_dim=4, hidden=16))
    for bad in ("x", np.random.default_rng(0)):
        with pytest.raises(GenlabError, match="generator must be a torch.Generator"):
            model.sample(2, generator=bad)
    assert model.sample(2, generator=torch.Generator().manual_seed(0)).shape == (2, 1, 28, 28)


def test_genlabs_figures_leave_the_callers_matplotlib_backend_alone(tmp_path):
    # Importing genlab's figures called matplotlib.use("Agg"): a notebook's inline display, or any backend the
    # caller had chosen, was switched. A fresh interpreter, since this one's matplotlib is already set up.
    import subprocess
    import sys

    script = ("import matplotlib; matplotlib.use('pdf'); import torch; from genlab.viz import training_callbacks; "
              "from genlab.viz.figures import save_grid; "
              f"save_grid({str(tmp_path / 'g.png')!r}, torch.rand(4, 1, 28, 28), ncol=2, title='t'); "
              "print(matplotlib.get_backend())")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "pdf", r.stderr
    assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_samples_come_as_pixels_that_score_like_any_images(tmp_path, runs):
    # model.model.sample gives floats in the model's own range ([-1, 1] for the GANs), which energy() refused
    # as "floats outside [0, 1]"; sample() gives uint8 as denoise() does, seeded and leaving the caller's stream.
    vae = genlab.load(train("vae", MODELS["vae"].Config(), small_config(tmp_path / "vae")))
    gan = genlab.load(train("dcgan", MODELS["dcgan"].Config(), small_config(tmp_path / "dcgan")))
    for model in (vae, gan):
        state = torch.get_rng_state()
        drawn = model.sample(70, seed=5, batch_size=32)  # three batches, one seed
        assert torch.equal(torch.get_rng_state(), state)
        assert drawn.shape == (70, 28, 28) and drawn.dtype == np.uint8 and drawn.max() > drawn.min()
        assert np.array_equal(drawn, model.sample(70, seed=5)) and not np.array_equal(drawn, model.sample(70, seed=6))
        assert np.isfinite(model.energy(drawn)).all()
        assert model.sample(0).shape == (0, 28, 28)
    with pytest.raises(GenlabError, match="ae cannot sample; models that can: vae"):
        genlab.load(runs["ae"]).sample(4)
    with pytest.raises(NotImplementedError):  # the network's own refusal: a GenlabError too
        genlab.load(runs["ae"]).model.sample(4)
    for seed in (-1, 1.5, True):
        with pytest.raises(GenlabError, match="seed is a whole number"):
            vae.sample(4, seed=seed)


def test_a_path_the_system_refuses_and_too_many_samples_are_one_genlab_error(runs, tmp_path):
    # genlab.load of a name too long raised Python's OSError; sample(10**12) grew until the system killed it.
    with pytest.raises(GenlabError, match=r"^x{100}\.\.\.x{50} \(5000 characters\): File name too long$"):
        genlab.load("x" * 5000)
    vae = train("vae", MODELS["vae"].Config(latent_dim=4), small_config(tmp_path / "vae"))
    with pytest.raises(GenlabError, match=r"1000000000000 samples of 1 x 28 x 28 pixels would take 7.3e\+05 GiB, "
                                          r"more than the 4 GiB genlab gives one array"):
        genlab.load(vae).sample(10 ** 12)
    assert genlab.load(vae).sample(0).shape == (0, 28, 28)


def test_configs_take_numpy_scalars_and_train_refuses_mistaken_arguments_before_any_folder(tmp_path):
    # A sweep's values are NumPy scalars: np.int64(8) was "not a whole number". default_train_config("nosuch")
    # was a KeyError, resume=True a TypeError of pathlib, callbacks=[5] an AttributeError after --out was made.
    cfg = MODELS["ae"].Config(latent_dim=np.int64(8))
    settings = cfgmod.TrainConfig(lr=np.float32(1e-3), epochs=np.int32(2), progress=np.bool_(False))
    assert (type(cfg.latent_dim), type(settings.lr), type(settings.epochs), type(settings.progress)) == \
        (int, float, int, bool)
    with pytest.raises(GenlabError, match=re.escape("--epochs must be a whole number, got np.float64(2.0)")):
        cfgmod.TrainConfig(epochs=np.float64(2.0))
    with pytest.raises(GenlabError, match="unknown model 'nosuch'; choose one of: ae, dae"):
        default_train_config("nosuch")
    with pytest.raises(GenlabError, match="resume is the path of the run directory to continue, got True"):
        train(None, resume=True)
    out = tmp_path / "run"
    for callbacks, words in ((5, "callbacks is a list of genlab.train.Callback, got int"),
                             ([5], "callback int has no on_start(); subclass genlab.train.Callback")):
        with pytest.raises(GenlabError, match=re.escape(words)):
            train("ae", cfg, small_config(out), callbacks=callbacks)
    assert not out.exists()


def test_pixel_conversions_refuse_float_images_and_unknown_ranges():
    # to_pixels divided [0, 1] floats by 255 again (near-black images, no word); to_uint8 read "bogus" as "unit".
    from genlab.data.batching import to_pixels, to_uint8, to_unit

    u8 = torch.tensor([[[0, 255]]], dtype=torch.uint8)
    assert to_pixels(u8, "tanh").tolist() == [[[[-1.0, 1.0]]]] and torch.equal(to_uint8(to_pixels(u8, "unit"), "unit"), u8)
    with pytest.raises(GenlabError, match="to_pixels takes uint8 images .0..255., got float32"):
        to_pixels(torch.rand(2, 28, 28), "unit")
    with pytest.raises(GenlabError, match="to_pixels takes a tensor of uint8 images, got ndarray; convert"):
        to_pixels(np.zeros((2, 28, 28), np.uint8), "unit")  # was "takes uint8 images, got uint8"
    for convert in (to_pixels, to_uint8, to_unit):
        with pytest.raises(GenlabError, match="unknown pixel range 'bogus'; expected one of tanh, unit"):
            convert(u8 if convert is to_pixels else u8.float(), "bogus")
