"""Inpainting metrics and protocol: PSNR/SSIM on hand examples, the lecture's mask and 8-bit picture, OpenCV."""

import json

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from genlab.data import load_dataset
from genlab.data.batching import to_pixels
from genlab.errors import GenlabError
from genlab.metrics import inpainting as inp
from genlab.models import build
from genlab.models.dae import DAEConfig
from genlab.viz.metric_figures import figure_inpainting


@pytest.fixture(scope="module")
def digits():
    """200 genuine MNIST digits (mnist-5k's test split, shipped with genlab: no download)."""
    return load_dataset("mnist-5k", "test").images[:200]


# -- PSNR --------------------------------------------------------------------------------------------------
def test_psnr_of_a_constant_offset_is_20_db():
    a = np.full((3, 28, 28), 0.4)
    assert np.allclose(inp.psnr(a + 0.1, a), 20.0, atol=1e-9)  # MSE 0.01 on a peak of 1


def test_psnr_of_identical_images_is_inf_and_shapes_agree():
    rng = np.random.default_rng(0)
    a = rng.random((4, 1, 28, 28))
    b = a.copy()
    b[1] += 0.05
    out = inp.psnr(a, b)
    assert out.shape == (4,)
    assert np.isinf(out[[0, 2, 3]]).all() and out[1] == pytest.approx(10 * np.log10(1 / 0.05 ** 2))


def test_psnr_over_a_mask_uses_only_the_masked_pixels():
    a = np.zeros((1, 4, 4))
    b = a.copy()
    b[0, 0, :2] = 0.1     # error 0.1 on two masked pixels
    b[0, 3, 3] = 1.0      # a large error outside the mask must not count
    mask = np.zeros((1, 4, 4), bool)
    mask[0, 0] = True     # 4 masked pixels: MSE = 2 * 0.01 / 4
    assert inp.psnr(b, a, mask)[0] == pytest.approx(10 * np.log10(1 / 0.005))
    assert inp.psnr(b, a)[0] == pytest.approx(10 * np.log10(16 / 1.02))


# -- SSIM --------------------------------------------------------------------------------------------------
def test_ssim_identical_is_one_and_constants_give_the_hand_value():
    rng = np.random.default_rng(1)
    a = rng.random((2, 28, 28))
    assert np.allclose(inp.ssim(a, a), 1.0)
    # Two flat images: both variances are 0, so SSIM is the luminance term alone,
    # (2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1) with C1 = (0.01 * data_range)^2.
    c1 = 1e-4
    expected = (2 * 0.2 * 0.4 + c1) / (0.2 ** 2 + 0.4 ** 2 + c1)
    assert inp.ssim(np.full((1, 28, 28), 0.2), np.full((1, 28, 28), 0.4))[0] == pytest.approx(expected, rel=1e-9)


def test_ssim_matches_skimage_and_an_all_ones_mask_gives_the_whole_image_value(digits):
    clean = digits[:5].numpy() / 255.0
    noisy = np.clip(clean + np.random.default_rng(2).normal(0, 0.2, clean.shape), 0, 1)
    whole = inp.ssim(noisy, clean)
    direct = [structural_similarity(noisy[i], clean[i], data_range=1.0) for i in range(5)]
    assert np.allclose(whole, direct)
    assert 0.0 < whole.min() and whole.max() < 1.0
    assert np.allclose(inp.ssim(noisy, clean, np.ones(clean.shape, bool)), whole)
    # A mask over a region where the images agree gives a higher value than the whole image.
    agree = noisy.copy()
    agree[:, :14] = clean[:, :14]
    top = np.zeros(clean.shape, bool)
    top[:, :10] = True
    assert (inp.ssim(agree, clean, top) > inp.ssim(agree, clean)).all()


def test_batched_ssim_is_skimages_image_by_image(digits):
    # genlab computes SSIM for the whole stack at once; each image's map and means must be skimage's own.
    rng = np.random.default_rng(3)
    clean = digits[:40].numpy() / 255.0
    noisy = np.clip(clean + rng.normal(0, 0.3, clean.shape), 0, 1)
    noisy[:5] = rng.random((5, 28, 28))  # and some images that are noise alone
    mask = rng.random(clean.shape) < 0.5
    maps = inp.ssim_maps(noisy, clean)
    whole, masked = inp.ssim_pair(noisy, clean, mask)
    r = inp.SSIM_WIN // 2
    for i in range(len(clean)):
        value, smap = structural_similarity(noisy[i], clean[i], data_range=1.0, win_size=inp.SSIM_WIN, full=True)
        assert np.allclose(maps[i], smap, rtol=0, atol=1e-12)
        assert whole[i] == pytest.approx(value, abs=1e-12)
        inside = mask[i, r:-r, r:-r]
        assert masked[i] == pytest.approx(smap[r:-r, r:-r][inside].mean(), abs=1e-12)
    nothing_inside = np.zeros((1, 28, 28), bool)
    nothing_inside[0, 0, 0] = True  # the only masked pixel lies in the border the mean leaves out
    assert np.isnan(inp.ssim(noisy[:1], clean[:1], nothing_inside)[0])


def test_opencv_inpainting_in_threads_equals_one_call_per_image(digits):
    import cv2

    c = inp.lecture_corruption(digits[:300], 0.5, seed=4)
    for method, flag in inp.CV2_FLAGS.items():
        one_by_one = np.stack([cv2.inpaint(a, (m != 0).astype(np.uint8), 3, flag) for a, m in zip(c.img8, c.mask8)])
        assert np.array_equal(inp.inpaint_classical(c.img8, c.mask8, method), one_by_one)


# -- the lecture's corruption ------------------------------------------------------------------------------
def test_lecture_mask_takes_values_0_and_2_at_half_and_drops_about_p(digits):
    c = inp.lecture_corruption(digits, 0.5, seed=0)
    assert set(torch.unique(c.noise).tolist()) == {0.0, 2.0}
    assert abs((c.noise == 0).float().mean().item() - 0.5) < 0.01
    assert torch.equal(c.img_bad, to_pixels(digits, "tanh") * c.noise)
    values = torch.unique(inp.lecture_corruption(digits, 0.25).noise).tolist()
    assert values[0] == 0.0 and values[1:] == [pytest.approx(4 / 3)]
    # The inpainting mask is non-zero exactly where a pixel was dropped.
    assert np.array_equal(c.mask8 != 0, c.noise[:, 0].numpy() == 0)


@pytest.mark.parametrize("p", [0.25, 0.5, 0.75])
def test_8bit_picture_round_trip_keeps_kept_pixels_at_their_true_value(digits, p):
    c = inp.lecture_corruption(digits, p, seed=3)
    kept = c.mask8 == 0
    assert c.img8.dtype == np.uint8
    # Kept pixels come back on the clean image's [0, 1] scale to within 1/255 (here: exactly).
    err = np.abs(c.img8.astype(float) / 255 - digits.numpy() / 255.0)[kept]
    assert err.max() <= 1 / 255
    assert np.array_equal(c.img8[kept], digits.numpy()[kept])


def test_8bit_picture_is_the_lectures_formula_at_half(digits):
    c = inp.lecture_corruption(digits, 0.5, seed=4)
    lecture = np.rint((c.img_bad[:, 0].numpy().astype(np.float64) / 4 + 0.5) * 255)
    assert np.array_equal(c.img8, lecture.astype(np.uint8))


def test_masks_are_nested_across_drop_rates(digits):
    dropped = [inp.lecture_corruption(digits, p, seed=5).dropped for p in (0.25, 0.5, 0.75)]
    assert (dropped[0] <= dropped[1]).all() and (dropped[1] <= dropped[2]).all()
    assert dropped[0].sum() < dropped[1].sum() < dropped[2].sum()


# -- methods -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["telea", "ns"])
def test_opencv_fills_dropped_pixels_and_leaves_the_others(digits, method):
    c = inp.lecture_corruption(digits, 0.5, seed=6)
    out = inp.inpaint_classical(c.img8, c.mask8, method)
    assert out.shape == c.img8.shape and out.dtype == np.uint8
    assert np.array_equal(out[~c.dropped], c.img8[~c.dropped])
    clean = digits.numpy().astype(float)
    # Dropped pixels hold mid-grey (128) in the input; filled in, they are far closer to the clean digit.
    filled_err = np.abs(out[c.dropped] - clean[c.dropped]).mean()
    placeholder_err = np.abs(c.img8[c.dropped] - clean[c.dropped]).mean()
    assert filled_err < 0.5 * placeholder_err


def test_unknown_method_is_a_clear_error(digits):
    c = inp.lecture_corruption(digits[:2], 0.5)
    with pytest.raises(GenlabError, match="telea or ns"):
        inp.inpaint_classical(c.img8, c.mask8, "fmm")


class Recorder(torch.nn.Module):
    """Stands in for a DAE: records its input and returns it (clamped) as the "denoised" image."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen = []

    @property
    def device(self):
        return self.w.device

    def forward(self, x):
        self.seen.append(x.clone())
        return x.clamp(-1, 1)


def test_dae_sees_the_lecture_corruption_at_every_rate(digits):
    lecture = Recorder(DAEConfig(noise=0.5))
    for p in (0.5, 0.75):
        c = inp.lecture_corruption(digits[:50], p, seed=7)
        inp.inpaint_dae(lecture, c)
        assert torch.equal(lecture.seen[-1], c.img_bad)  # exactly the lecture's img * Dropout(p)(ones)
    # A DAE trained with the plain {0, 1} mask gets that mask.
    plain = Recorder(DAEConfig(noise=0.5, unscaled_mask=True))
    inp.inpaint_dae(plain, c)
    assert torch.allclose(plain.seen[0], to_pixels(digits[:50], "tanh") * (c.noise > 0), atol=1e-6)


def test_table_has_every_method_and_rate_and_a_perfect_fill_scores_inf_on_dropped_pixels(digits):
    model = build("dae", DAEConfig(latent_dim=16))
    table = inp.inpainting_table(model, digits[:20], drop_rates=(0.25, 0.75), seed=0)
    assert set(table["results"]) == {"dae", "telea", "ns"}
    for method in inp.METHODS:
        for p in ("0.25", "0.75"):
            r = table["results"][method][p]
            assert set(r) == {"psnr", "ssim", "psnr_dropped", "ssim_dropped"}
            assert all(np.isfinite(v) for v in r.values())
    # More dropped pixels: the classical methods get worse.
    for method in ("telea", "ns"):
        assert table["results"][method]["0.25"]["psnr"] > table["results"][method]["0.75"]["psnr"]
    json.dumps(table)  # plain JSON


def test_figure_is_written(digits, tmp_path):
    model = build("dae", DAEConfig(latent_dim=16))
    path = figure_inpainting(model, digits, tmp_path / "fig7.png", n=4)
    assert path.stat().st_size > 1000


# -- the command line --------------------------------------------------------------------------------------
def _train(name, cfg, out):
    from genlab.config import TrainConfig
    from genlab.train import train

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GENLAB_OFFLINE", "1")
        return train(name, cfg, TrainConfig(dataset="mnist-5k", epochs=1, limit=1000, eval_limit=100,
                                            figures=False, progress=False, out=str(out), device="cpu"))


def _cli(argv):
    from genlab.cli import build_parser

    args = build_parser().parse_args(argv)
    return args.func(args)


def test_cli_inpaint_json_and_figure(tmp_path, capsys):
    run = _train("dae", DAEConfig(latent_dim=32), tmp_path / "dae")
    assert _cli(["inpaint", str(run), "--limit", "30", "--json", "--out", str(tmp_path / "out")]) == 0
    table = json.loads(capsys.readouterr().out)
    assert table["n_images"] == 30 and table["drop_rates"] == [0.25, 0.5, 0.75]
    assert set(table["results"]["ns"]["0.5"]) == {"psnr", "ssim", "psnr_dropped", "ssim_dropped"}
    assert (tmp_path / "out" / "fig7_inpainting.png").is_file()
    assert json.loads((tmp_path / "out" / "inpainting.json").read_text()) == table


def test_cli_inpaint_refuses_a_run_without_a_dae(tmp_path):
    from genlab.models.ae import AEConfig

    run = _train("ae", AEConfig(latent_dim=8), tmp_path / "ae")
    with pytest.raises(GenlabError, match="needs a dae run"):
        _cli(["inpaint", str(run), "--limit", "5"])


def test_the_report_says_which_repair_is_best_at_each_drop_rate():
    # The quick report showed the table alone, where the DAE lost on whole images to Navier-Stokes.
    from genlab.reproduce import _reading_of_inpainting

    def r(psnr, ssim, dropped):
        return {"psnr": psnr, "ssim": ssim, "psnr_dropped": dropped, "ssim_dropped": ssim}
    text = _reading_of_inpainting({"dae": {0.5: r(18.60, 0.739, 17.41)}, "telea": {0.5: r(17.75, 0.745, 14.73)},
                                   "ns": {0.5: r(18.62, 0.793, 15.60)}})
    assert text == ("Reading (higher is better for each): at p = 0.5, PSNR best ns 18.62 dB (dae 18.60 dB), SSIM best "
                    "ns 0.793 (dae 0.739), dropped pixels' PSNR best dae 17.41 dB.")
