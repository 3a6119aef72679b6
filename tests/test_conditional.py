"""The conditional models: quadrant masks and the conditional bound against hand-computed values, labels
through the loop, conditioning that changes the class (checked by genlab's classifier), save/load round trips
and every command on cvae and cdcgan."""

from __future__ import annotations

import json
import math
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.distributions import Normal, kl_divergence

from genlab import config as cfgmod
from genlab.checkpoint import load_run
from genlab.data import load_dataset
from genlab.data.batching import Batches, to_pixels
from genlab.errors import GenlabError
from genlab.metrics.conditional import class_samples, conditional_quality, mean_pairwise_distance
from genlab.models import build
from genlab.models.cdcgan import CDCGAN, CDCGANConfig
from genlab.models.cvae import CVAE, CVAEConfig, gaussian_kl2, quadrant_mask, task_masks
from genlab.train import default_train_config, train



def quick_config(name: str, out: Path, **overrides) -> cfgmod.TrainConfig:
    base = cfgmod.to_dict(default_train_config(name))
    base.update(dataset="mnist-5k", epochs=1, batch_size=64, limit=512, eval_limit=200, progress=False,
                figures=False, out=str(out))
    base.update(overrides)
    return cfgmod.from_dict(cfgmod.TrainConfig, base)


# -- masks and the bound by hand ------------------------------------------------------------------------------
def test_quadrant_masks():
    one, two, three = (quadrant_mask(t) for t in (1, 2, 3))
    assert [int(m.sum()) for m in (one, two, three)] == [196, 392, 588]
    assert one[27, 0] and not one[0, 0] and not one[27, 27] and not one[13, 0] and one[14, 13] and not one[14, 14]
    assert two[0, 0] and two[27, 13] and not two[0, 14]                      # the left half
    assert three[0, 27] and three[27, 0] and not three[14, 14] and not three[27, 27]   # all but bottom-right
    assert (one <= two).all() and (two <= three).all()                       # each task reveals more
    batch = task_masks(torch.tensor([3, 1, 2]))
    assert batch.shape == (3, 1, 28, 28) and torch.equal(batch[1, 0], one) and torch.equal(batch[0, 0], three)
    with pytest.raises(GenlabError):
        quadrant_mask(4)


def _constant_cvae(mu_q: float, lv_q: float, mu_p: float, lv_p: float, logit: float) -> CVAE:
    """A quadrant CVAE whose networks ignore their inputs: q = N(mu_q, e^lv_q), p(z|c) = N(mu_p, e^lv_p) in each of
    its 2 latents, and every pixel's logit is ``logit``."""
    model = CVAE(CVAEConfig(condition="quadrants", latent_dim=2, hidden=8, ema_decay=0)).eval()
    with torch.no_grad():
        for net, (mu, lv) in ((model.nets.recognition, (mu_q, lv_q)), (model.nets.prior, (mu_p, lv_p))):
            net[-1].weight.zero_()
            net[-1].bias.copy_(torch.tensor([mu, mu, lv, lv]))
        model.nets.decoder[-1].weight.zero_()
        model.nets.decoder[-1].bias.fill_(logit)
    return model


@pytest.mark.slow
def test_conditional_bound_against_a_hand_example():
    # Decoder logit 0 everywhere: each unseen pixel costs log 2 whatever its value. q = N(0.5, 1), p(z|c) = N(0, 1)
    # in 2 latents: KL = 2 * 0.5 * 0.5^2 = 0.25 nats. So F(unseen | seen) = (unseen pixels) * log 2 + 0.25.
    torch.manual_seed(0)
    model = _constant_cvae(0.5, 0.0, 0.0, 0.0, 0.0)
    x = to_pixels(load_dataset("mnist-5k", "test").images[:4], "unit")
    for t, unseen in ((1, 588), (2, 392), (3, 196)):
        c = torch.full((4,), t)
        terms = model.terms(x, c, sample=False)
        torch.testing.assert_close(terms["kl"], torch.full((4,), 0.25))
        torch.testing.assert_close(terms["loss"], torch.full((4,), unseen * math.log(2) + 0.25))
        # The decoder ignores z, so every importance weight is p(y|c) p(z|c) / q(z|c,y) with p(y|c) = 2^-unseen.
        # E_q[p/q] = 1, and p/q has variance e^0.5 - 1 = 0.65 here, so the log-mean over k = 20000 draws is
        # within 0.05 nats of -unseen * log 2 (about 9 standard errors).
        lw = model.log_weights(x, c, 20000)
        nll = -(torch.logsumexp(lw.double(), 0) - math.log(20000))
        torch.testing.assert_close(nll, torch.full((4,), unseen * math.log(2), dtype=torch.float64),
                                   atol=0.05, rtol=0)
    # Mean energy over the three tasks: (588 + 392 + 196) / 3 * log 2 + 0.25.
    torch.testing.assert_close(model.energy(x), torch.full((4,), 392 * math.log(2) + 0.25))


def test_kl_of_two_gaussians_matches_torch():
    g = torch.Generator().manual_seed(0)
    mu_q, lv_q, mu_p, lv_p = (torch.randn(5, 3, generator=g) for _ in range(4))
    ours = gaussian_kl2(mu_q, lv_q, mu_p, lv_p)
    ref = kl_divergence(Normal(mu_q, (0.5 * lv_q).exp()), Normal(mu_p, (0.5 * lv_p).exp())).sum(-1)
    torch.testing.assert_close(ours, ref)


def test_unseen_pixels_alone_count():
    # Changing an observed pixel of the target leaves the reconstruction term alone only through the condition;
    # with a constant network it must not change the loss at all, and changing an unseen pixel must.
    model = _constant_cvae(0.0, 0.0, 0.0, 0.0, 2.0)
    x = torch.zeros(1, 1, 28, 28)
    c = torch.tensor([1])
    base = model.terms(x, c, sample=False)["rec"]
    seen, unseen = x.clone(), x.clone()
    seen[0, 0, 27, 0] = 1.0     # bottom-left: observed with 1 quadrant
    unseen[0, 0, 0, 27] = 1.0   # top-right: unseen
    assert torch.equal(model.terms(seen, c, sample=False)["rec"], base)
    torch.testing.assert_close(model.terms(unseen, c, sample=False)["rec"] - base, torch.tensor([-2.0]))


# -- labels through the loop -----------------------------------------------------------------------------------
@pytest.mark.parametrize("condition", ["label", "quadrants"])
def test_bf16_autocast_keeps_the_cvaes_probabilistic_terms_float32(condition):
    # Its draws, KL and log-densities ran in bf16 under --precision bf16 (the VAE's did not).
    model = CVAE(CVAEConfig(condition=condition, latent_dim=4, hidden=16, ema_decay=0))
    x, c = torch.rand(8, 1, 28, 28), torch.tensor([0, 1, 2, 3, 1, 2, 3, 9]) % (3 if condition == "quadrants" else 10) + (
        1 if condition == "quadrants" else 0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cond, _ = model.condition(x, c)
        assert all(t.dtype == torch.float32 for t in (*model._q(x, cond), *model._p(cond)))
        assert model.decode_logits(torch.zeros(8, 4), cond).dtype == torch.float32
        assert all(t.dtype == torch.float32 for t in model.terms(x, c).values())


@pytest.mark.parametrize("name", ["ae", "dae", "vae", "ebgan", "dcgan", "cvae", "cdcgan"])
def test_bf16_autocast_gives_every_loss_and_logged_term_in_float32(name):
    # On a CPU, autocast leaves a bfloat16 difference's square and sum in bfloat16: the AE's and EBGAN's errors
    # and EBGAN's pulling-away term were bfloat16. D(x) and D(G(z)) were sigmoids of bfloat16 logits, which hold
    # nothing between 0.9961 and 1: the saturation check (D(x) > 0.999) fired on a discriminator at 0.998.
    from genlab.models import MODELS

    model = MODELS[name](MODELS[name].Config())
    x, y = torch.rand(8, 1, 28, 28), torch.arange(8)
    x = x * 2 - 1 if model.pixel_range == "tanh" else x
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = {player: t for player, t in model.steps(x, *([y] if model.conditional else []))}
    assert {k: t.dtype for step in terms.values() for k, t in step.items() if t.dtype != torch.float32} == {}
    if "d_x" in terms.get("d", {}):
        assert len(set(terms["d"]["d_x"].tolist())) == 8  # bfloat16 held these eight near 0.5 in a few values


def test_batches_carry_labels_with_their_images():
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1).expand(10, 28, 28).contiguous()
    labels = torch.arange(10) * 7
    for shard, n, y in Batches(images, 4, seed=3, labels=labels).epoch(0):
        assert torch.equal(shard[:, 0, 0].long() * 7, y) and n == len(y)
    assert all(len(b) == 2 for b in Batches(images, 4).epoch(0))   # unlabelled: (shard, n) as before
    with pytest.raises(ValueError):
        Batches(images, 4, labels=labels[:5])


def test_conditional_models_receive_the_labels(tmp_path, monkeypatch):
    seen = []
    original = CVAE.loss

    def spy(self, x, y=None):
        seen.append(y)
        return original(self, x, y)

    monkeypatch.setattr(CVAE, "loss", spy)
    train("cvae", CVAEConfig(), quick_config("cvae", tmp_path / "run", limit=128))
    data = load_dataset("mnist-5k", "train")
    assert len(seen) == 2 and all(y is not None for y in seen)
    # mnist-5k's first 128 images, in some order: the labels are those of the images batched with them.
    assert sorted(torch.cat(seen).tolist()) == sorted(data.labels[:128].tolist())


# -- conditioning changes the class ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_label_cvae(tmp_path_factory):
    out = tmp_path_factory.mktemp("cvae") / "label"
    return load_run(train("cvae", CVAEConfig(latent_dim=8, hidden=256),
                          quick_config("cvae", out, epochs=6, limit=0, batch_size=64)))


@pytest.mark.slow
def test_conditioning_changes_the_class(trained_label_cvae):
    from genlab.metrics.classifier import get_classifier

    clf = get_classifier("mnist-5k")
    model = trained_label_cvae.model
    samples, labels = class_samples(model, per_class=50)
    predicted = clf.probs(samples).argmax(1)
    accuracy = (predicted == labels).float().mean().item()
    assert accuracy > 0.8, accuracy
    # Known answer: the same samples scored against shifted classes must fail, so the check can fail.
    assert (predicted == (labels + 1) % 10).float().mean().item() < 0.2
    # Same z, another class: asking for a 1 instead of a 0 changes the classifier's verdict.
    torch.manual_seed(0)
    zeros = model.sample(20, 0)
    torch.manual_seed(0)
    ones = model.sample(20, 1)
    assert (clf.probs(zeros).argmax(1) == 0).float().mean() > 0.7
    assert (clf.probs(ones).argmax(1) == 1).float().mean() > 0.7


def test_conditional_quality_metrics_on_real_digits():
    from genlab.metrics.classifier import get_classifier

    test = load_dataset("mnist-5k", "test")
    real = test.images.unsqueeze(1).float() / 255
    clf = get_classifier("mnist-5k")
    # The test digits themselves as "samples": accuracy is the classifier's, spread ratio 1, FID 0.
    same = conditional_quality(real, test.labels, real, test.labels, clf)
    assert same["cond_accuracy"] == pytest.approx(clf.probs(real).argmax(1).eq(test.labels).float().mean().item())
    assert same["cond_spread_min"] == pytest.approx(1.0) and same["cond_fid_max"] == pytest.approx(0.0, abs=1e-3)
    # One image repeated per class: no spread at all, and a much larger FID.
    first = torch.stack([real[test.labels == k][0] for k in range(10)])
    repeated = first.repeat_interleave(50, 0) + 1e-3 * torch.rand(500, 1, 28, 28)
    bad = conditional_quality(repeated.clamp(0, 1), torch.arange(10).repeat_interleave(50), real, test.labels, clf)
    assert bad["cond_spread_min"] < 0.01 and bad["cond_fid_max"] > 10 * max(same["cond_fid_max"], 1.0)
    assert mean_pairwise_distance(torch.tensor([[0.0, 0.0], [3.0, 4.0]])) == pytest.approx(5.0)


def test_cdcgan_generator_and_discriminator_use_the_class():
    torch.manual_seed(0)
    model = CDCGAN(CDCGANConfig(ngf=8, ndf=8, ema=0)).eval()
    torch.manual_seed(1)
    a = model.sample(4, 3)
    torch.manual_seed(1)
    b = model.sample(4, 5)
    assert not torch.allclose(a, b)
    x = torch.rand(4, 1, 28, 28) * 2 - 1
    s = model.discriminator.all_classes(x)
    for k in (0, 7):
        torch.testing.assert_close(model.discriminator(x, torch.full((4,), k)), s[:, k])
    torch.testing.assert_close(model.energy(x), math.log(10) - torch.logsumexp(s, 1))


def test_the_classes_to_sample_are_integers_of_any_kind():
    """One class as a NumPy or 0-d tensor integer is one class for all; truth values, floats (which would be
    truncated) and text are refused by name."""
    model = CVAE(CVAEConfig(hidden=16)).eval()
    for one in (np.int64(3), torch.tensor(3), np.array(3, dtype=np.uint8)):
        torch.manual_seed(0)
        a = model.sample(4, one)
        torch.manual_seed(0)
        torch.testing.assert_close(a, model.sample(4, 3))
    torch.manual_seed(0)
    a = model.sample(2, np.array([1, 7]))
    torch.manual_seed(0)
    torch.testing.assert_close(a, model.sample(2, torch.tensor([1, 7])))
    for bad, said in ((True, "truth value True"), (torch.tensor([1.7, 2.0]), "float32 labels"), (2.0, "float32"),
                      ([True, False], "bool labels"), ("3", "str '3'")):
        with pytest.raises(GenlabError, match=re.escape(said)):
            model.sample(2, bad)
    with pytest.raises(GenlabError, match=re.escape("expected 2 labels (or one class for all), got shape [3]")):
        model.sample(2, [1, 2, 3])


# -- round trips and commands ------------------------------------------------------------------------------
@pytest.mark.parametrize("name,cfg", [("cvae", CVAEConfig(condition="quadrants", hidden=64)),
                                      ("cvae", CVAEConfig(hidden=64)), ("cdcgan", CDCGANConfig(ngf=8, ndf=8))])
def test_save_load_round_trip(name, cfg, tmp_path):
    torch.manual_seed(0)
    run_dir = train(name, cfg, quick_config(name, tmp_path / "run", limit=128))
    a, b = load_run(run_dir).model, load_run(run_dir).model
    x = to_pixels(load_dataset("mnist-5k", "test").images[:8], a.pixel_range)
    y = torch.arange(8)
    with torch.no_grad():
        torch.testing.assert_close(a.energy(x, y), b.energy(x, y))
        if a.can_sample:
            torch.manual_seed(5)
            sa = a.sample(8, y)
            torch.manual_seed(5)
            torch.testing.assert_close(sa, b.sample(8, y))
    rebuilt = build(name, cfg)
    rebuilt.load_state_dict(a.state_dict())
    for key, value in a.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], value)


@pytest.fixture
def genlab(capsys):
    """Run the genlab command in this process (one torch import for the whole test): (status, stdout, stderr)."""
    from genlab.cli import main

    def run(*args: str) -> subprocess.CompletedProcess:
        capsys.readouterr()
        try:
            code = main(list(args))
        except SystemExit as e:  # argparse's one-line errors end the process with status 2
            code = e.code
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)
    return run


def test_a_conditional_run_of_some_classes_samples_and_is_scored_on_those_only(tmp_path, genlab):
    # A cdcgan trained on three classes drew "class 5" (a slot it never trained) without a word, its default grid
    # had ten rows, and evaluate could never finish (classes with no test images), not even with --no-quality.
    import cv2

    from genlab.serve.explorer import Explorer

    from genlab.train import Callback
    from genlab.viz.conditional_figures import class_grid

    class EndGrid(Callback):  # the figures at the end of training: its grid had ten rows, seven of them noise
        def on_end(self, run):
            class_grid(run.model, tmp_path / "end_grid.png", per_class=2)

    run = train("cdcgan", CDCGANConfig(ngf=8, ndf=8), quick_config("cdcgan", tmp_path / "run", classes="0,2,5",
                                                                   limit=128, eval_limit=100), callbacks=[EndGrid()])
    assert cv2.imread(str(tmp_path / "end_grid.png"), cv2.IMREAD_GRAYSCALE).shape[0] == 259  # 3 rows and a title (10 rows: 679)
    refused = genlab("sample", str(run), "--label", "3", "--out", str(tmp_path / "s.png"))
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        f"genlab: error: --label 3: {run} learned the classes 0, 2 and 5 only; choose one of them"]
    grid = genlab("sample", str(run), "-n", "6", "--out", str(tmp_path / "grid.png"))
    assert grid.returncode == 0, grid.stderr
    assert cv2.imread(str(tmp_path / "grid.png"), cv2.IMREAD_GRAYSCALE).shape[0] == 259  # 3 rows, a title of 2 lines (10 rows: 679 px)
    done = genlab("evaluate", str(run), "--no-quality", "--limit", "50", "--json")
    assert done.returncode == 0, done.stderr
    assert not [k for k in json.loads(done.stdout) if k.startswith("cond_")]
    # Its label-free energy is over the three classes it learned, not over seven untrained slots too.
    loaded = load_run(run)
    x = to_pixels(load_dataset("mnist-5k", "test").images[:8], "tanh")
    with torch.no_grad():
        scores = loaded.model.discriminator.all_classes(x)
        assert loaded.model.learned_classes == [0, 2, 5]
        assert torch.allclose(loaded.model.energy(x), math.log(3) - torch.logsumexp(scores[:, [0, 2, 5]], 1))
    cvae = CVAE(CVAEConfig(latent_dim=4, hidden=16)).eval()
    cvae.learned_classes = [1, 4]
    u = to_pixels(load_dataset("mnist-5k", "test").images[:8], "unit")
    with torch.no_grad():
        free = torch.stack([cvae.terms(u, torch.full((8,), k), False)["loss"] for k in (1, 4)])
        assert torch.allclose(cvae.energy(u), math.log(2) - torch.logsumexp(-free, 0))
        # Its reconstruction without a label takes the learned class of lower free energy (it took the smallest of
        # all ten, untrained slots among them).
        chosen = torch.tensor([1, 4])[free.argmin(0)]
        assert torch.equal(cvae.reconstruct(u), cvae.reconstruct(u, chosen))
        assert not torch.equal(cvae.reconstruct(u), cvae.reconstruct(u, torch.full((8,), 7)))
        # The networks too refuse to draw a class the run never learned (they drew one without a word), and cycle
        # the ones it did.
        with pytest.raises(GenlabError, match="learned the classes 0, 2, 5 only; class 4 is one it never saw"):
            loaded.model.sample(2, y=4)
        assert loaded.model.sample(4).shape == (4, 1, 28, 28)
        assert torch.equal(loaded.model.sample(4, generator=torch.Generator().manual_seed(1)),
                           loaded.model.sample(4, torch.tensor([0, 2, 5, 0]), torch.Generator().manual_seed(1)))
        with pytest.raises(GenlabError, match="learned the classes 1, 4 only; class 3"):
            cvae.sample(1, y=3)
    explorer = Explorer([run], device="cpu", test_limit=20)
    (name,) = explorer.models
    assert explorer.models[name].describe()["classes"] == [0, 2, 5]
    assert len(explorer.sample(name, 2, 0, label=5)["images"]) == 2
    with pytest.raises(GenlabError, match="learned the classes 0, 2 and 5 only"):
        explorer.walk(name, 0, 3, 1.0, label=9)


@pytest.mark.slow
def test_every_command_on_the_conditional_models(tmp_path, genlab):
    runs = {}
    for tag, extra in (("quad", ["cvae", "--condition", "quadrants"]), ("label", ["cvae"]),
                       ("gan", ["cdcgan", "--ngf", "8", "--ndf", "8"])):
        out = tmp_path / tag
        p = genlab("train", *extra, "--dataset", "mnist-5k", "--epochs", "1", "--limit", "256", "--eval-limit",
                   "100", "--no-progress", "--out", str(out))
        assert p.returncode == 0, p.stderr
        runs[tag] = out
    assert (runs["quad"] / "figures" / "completions.png").is_file()
    assert (runs["label"] / "figures" / "class_grid.png").is_file()

    p = genlab("evaluate", str(runs["quad"]), "--json", "--limit", "50", "--iwae-k", "10")
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert r["nll_is_k"] == 10 and all(r[f"nll_is_q{t}"] <= r[f"nll_bound_q{t}"] + 5 for t in (1, 2, 3))
    assert r["nll_bound_q1"] > r["nll_bound_q3"]  # three unseen quadrants cost more than one
    p = genlab("evaluate", str(runs["gan"]), "--json", "--limit", "50")
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert 0 <= r["cond_accuracy"] <= 1 and all(f"cond_fid_{k}" in r for k in range(10))
    p = genlab("evaluate", str(runs["gan"]), "--json", "--no-quality", "--limit", "50")  # the samples' quality
    assert p.returncode == 0 and not [k for k in json.loads(p.stdout) if k.startswith("cond_")], p.stderr

    for tag in ("label", "gan"):
        p = genlab("sample", str(runs[tag]), "--label", "7", "-n", "9", "--out", str(tmp_path / f"{tag}7.png"))
        assert p.returncode == 0 and (tmp_path / f"{tag}7.png").stat().st_size > 1000, p.stderr
        p = genlab("sample", str(runs[tag]), "-n", "20", "--out", str(tmp_path / f"{tag}_grid.png"))
        assert p.returncode == 0 and (tmp_path / f"{tag}_grid.png").is_file(), p.stderr
    for args, words in (((str(runs["quad"]),), "completes digits"), ((str(runs["gan"]), "--label", "12"), "between 0 and 9")):
        p = genlab("sample", *args, "--out", str(tmp_path / "x.png"))
        assert p.returncode == 2 and words in p.stderr and len(p.stderr.strip().splitlines()) == 1

    for tag in runs:
        p = genlab("energy", str(runs[tag]), "--limit", "20")
        assert p.returncode == 0, p.stderr
        assert len(p.stdout.split()) == 20 and all(math.isfinite(float(v)) for v in p.stdout.split())
        # New image files too, scored without their class (once refused: there was no way to give one).
        digit = tmp_path / "digit.png"
        Image.fromarray(load_dataset("mnist-5k", "test").images[0].numpy()).save(digit)
        p = genlab("energy", str(runs[tag]), "--images", str(digit), "--out", str(tmp_path / f"{tag}.csv"))
        assert p.returncode == 0, p.stderr
        row = (tmp_path / f"{tag}.csv").read_text().splitlines()[1].split(",")
        assert row[0] == str(digit) and math.isfinite(float(row[1])) and 0 <= float(row[2]) <= 100
    p = genlab("report", *map(str, runs.values()), "--out", str(tmp_path / "report"))
    assert p.returncode == 0, p.stderr
    html = (tmp_path / "report" / "report.html").read_text()
    assert "Quadrant completion" in html and "one row per class" in html


def test_quadrant_likelihood_draws_in_chunks_with_the_same_result(monkeypatch):
    # All k draws at once: k = 100,000 asked for 78 GB. In chunks of a bounded size, the same draws in the same
    # order, so the same numbers.
    from genlab.metrics import conditional
    model = CVAE(CVAEConfig(condition="quadrants")).eval()
    images = load_dataset("mnist-5k", "test").images[:20]
    whole = conditional.quadrant_nll(model, images, k=64)
    monkeypatch.setattr(conditional, "QUADRANT_ROWS", 20 * 8)  # chunks of 8 draws
    chunked = conditional.quadrant_nll(model, images, k=64)
    assert chunked == pytest.approx(whole, rel=1e-9)


def test_a_quadrant_cvae_completes_images_from_python(tmp_path):
    # complete() drew from the global stream with no generator, and nothing took a user's images to it.
    import numpy as np

    import genlab as api

    run = train("cvae", CVAEConfig(condition="quadrants", latent_dim=4, hidden=32), quick_config("cvae", tmp_path / "q"))
    model = api.load(run)
    digits = load_dataset("mnist-5k", "test").images[:5].numpy()
    state = torch.get_rng_state()
    done = model.complete(digits, observed=2, n=3, seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    assert done.shape == (3, 5, 28, 28) and done.dtype == np.uint8
    assert np.array_equal(done[:, :, :, :14], np.broadcast_to(digits[:, :, :14], (3, 5, 28, 14)))  # left half kept
    assert np.array_equal(done, model.complete(digits, 2, n=3, seed=1))
    assert not np.array_equal(done[:, :, :, 14:], model.complete(digits, 2, n=3, seed=2)[:, :, :, 14:])
    assert not np.array_equal(done[0], done[1])  # each completion its own draw
    with pytest.raises(GenlabError, match="observed quadrants must be 1, 2 or 3"):
        model.complete(digits, observed=4)
    for taken in (True, 2.0, "2"):  # True completed as 1, and "2" was refused as "got 2"
        with pytest.raises(GenlabError, match=re.escape(f"must be 1, 2 or 3, got {taken!r}")):
            model.complete(digits, observed=taken)
    assert np.array_equal(model.complete(digits, np.int64(2), n=3, seed=1), done)
    # n = 0 is no completions, as sample(0) is no samples (it raised from torch.stack); too many is one line.
    assert model.complete(digits, 2, n=0).shape == (0, 5, 28, 28)
    with pytest.raises(GenlabError, match="observed quadrants must be 1, 2 or 3, got 7"):
        model.complete(digits, 7, n=0)
    with pytest.raises(GenlabError, match=r"10000000 x 5 completions of 1 x 28 x 28 pixels would take 36.5 GiB"):
        model.complete(digits, 2, n=10 ** 7)
    label_run = train("cvae", CVAEConfig(latent_dim=4, hidden=32), quick_config("cvae", tmp_path / "l"))
    with pytest.raises(GenlabError, match="needs a cvae trained with --condition quadrants"):
        api.load(label_run).complete(digits, 2)
