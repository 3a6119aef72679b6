"""The VAE: closed-form KL, stable BCE, IWAE against the ELBO, binarisation, schedules, figures, evaluation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from genlab.config import validate
from genlab.data import load_dataset
from genlab.data.batching import Batches, to_pixels
from genlab.errors import GenlabError
from genlab.metrics.likelihood import active_units, evaluate_vae, iwae_bound, kl_per_dim
from genlab.models import MODELS, build
from genlab.models.vae import VAE, VAEConfig, bernoulli_nll, gaussian_kl, hashed_uniform
from genlab.viz import vae_figures


def train_briefly(cfg: VAEConfig, images: torch.Tensor, epochs: int = 2, seed: int = 0) -> VAE:
    """A few epochs of the plain loop (the one genlab.train runs, without checkpoints)."""
    torch.manual_seed(seed)
    model = VAE(cfg)
    opt = torch.optim.Adam(model.player_parameters("model"), lr=1e-3)
    batches = Batches(images, 128, seed=seed)
    for epoch in range(epochs):
        for shard, _ in batches.epoch(epoch):
            loss = model.loss(to_pixels(shard, "unit"))["loss"].mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            model.after_step("model")
        model.end_of_epoch(epoch)
    return model.eval()


@pytest.fixture(scope="module")
def data():
    return load_dataset("mnist-5k", "train"), load_dataset("mnist-5k", "test")


@pytest.fixture(scope="module")
def trained(data):
    return train_briefly(VAEConfig(latent_dim=8, hidden=200), data[0].images, epochs=3)


@pytest.fixture(scope="module")
def trained_dynamic(data):
    return train_briefly(VAEConfig(latent_dim=8, hidden=200, binarize="dynamic"), data[0].images, epochs=3)


def test_registered():
    assert MODELS["vae"] is VAE
    assert isinstance(build("vae"), VAE)


def test_kl_matches_closed_form_on_a_hand_example():
    mu = torch.tensor([[1.0, 0.0, -2.0]])
    logvar = torch.tensor([[0.0, math.log(4.0), math.log(0.25)]])
    # 0.5 * (v - log v - 1 + mu^2) per dimension, worked by hand.
    expected = torch.tensor([[0.5, 0.5 * (3 - math.log(4)), 0.5 * (0.25 + math.log(4) - 1 + 4)]])
    assert torch.allclose(gaussian_kl(mu, logvar), expected, atol=1e-6)
    # and against torch.distributions, computed a different way
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros(3), torch.ones(3))
    assert torch.allclose(gaussian_kl(mu, logvar), torch.distributions.kl_divergence(q, p), atol=1e-6)


def test_bce_from_logits_is_the_summed_cross_entropy_and_stays_finite():
    logits = torch.randn(4, 1, 28, 28) * 3
    x = torch.rand(4, 1, 28, 28)
    ref = F.binary_cross_entropy(torch.sigmoid(logits), x, reduction="none").flatten(1).sum(1)
    assert bernoulli_nll(logits, x).shape == (4,)
    assert torch.allclose(bernoulli_nll(logits, x), ref, rtol=1e-4)
    # saturated logits: the probability form would clamp log(0); the logit form is exact
    big = torch.full((1, 784), 200.0)
    assert bernoulli_nll(big, torch.zeros(1, 784)).item() == pytest.approx(784 * 200.0)
    assert bernoulli_nll(big, torch.ones(1, 784)).item() == pytest.approx(0.0, abs=1e-6)


def test_shapes_and_ranges(data):
    x = to_pixels(data[1].images[:6], "unit")
    for arch in ("mlp", "conv"):
        torch.manual_seed(0)
        model = VAE(VAEConfig(arch=arch, latent_dim=4)).train()
        terms = model.loss(x)
        assert set(terms) == {"loss", "rec", "kl"}
        assert all(v.shape == (6,) and torch.isfinite(v).all() for v in terms.values())
        assert (terms["kl"] >= 0).all() and (terms["rec"] > 0).all()
        model.eval()
        ev = model.eval_terms(x)
        assert {"loss", "loss_sampled", "loss_mean", "kl", "neg_elbo"} <= set(ev)
        assert all(v.shape == (6,) for v in ev.values())
        with torch.no_grad():
            rec, samples, energy = model.reconstruct(x), model.sample(5), model.energy(x)
        assert rec.shape == x.shape and 0 <= rec.min() and rec.max() <= 1
        assert samples.shape == (5, 1, 28, 28) and 0 <= samples.min() and samples.max() <= 1
        assert energy.shape == (6,) and torch.isfinite(energy).all()


def test_eval_decodes_the_mean_and_training_samples(trained, data):
    x = to_pixels(data[1].images[:8], "unit")
    with torch.no_grad():
        assert torch.equal(trained.reconstruct(x), trained.reconstruct(x))           # z = mu: deterministic
        assert not torch.equal(trained.reconstruct(x, sample=True), trained.reconstruct(x, sample=True))
        ev = trained.eval_terms(x)
    # decoding the mean is the better reconstruction on average (the lecture's eval-mode choice)
    assert ev["rec_mean"].mean() < ev["rec_sampled"].mean()
    assert torch.allclose(ev["loss"], ev["loss_sampled"])


def test_iwae_1_equals_the_elbo_in_expectation(trained, data):
    # For each image, E[-log w] with one draw is rec + KL; compare the two Monte Carlo means within their error.
    x = to_pixels(data[1].images[:4], "unit").repeat(500, 1, 1, 1)                  # 2000 rows
    torch.manual_seed(1)
    with torch.no_grad():
        iwae1 = iwae_bound(trained, x, k=1)
        ev = trained.eval_terms(x)
    elbo = (ev["rec_sampled"] + ev["kl"]).double()
    diff = iwae1.mean() - elbo.mean()
    se = math.sqrt(iwae1.var().item() / len(iwae1) + elbo.var().item() / len(elbo))
    assert abs(diff.item()) < 4 * se + 1e-3, (diff.item(), se)


def test_iwae_does_not_get_worse_with_k_on_a_trained_model(trained, data):
    x = to_pixels(data[1].images[:200], "unit")
    torch.manual_seed(2)
    bounds = [iwae_bound(trained, x, k).mean().item() for k in (1, 10, 100)]
    assert bounds[0] > bounds[1] > bounds[2], bounds
    assert bounds[0] - bounds[2] < 30                                              # a bound, not a collapse


def _iwae_gradients(model: VAE, x: torch.Tensor, k: int, dreg: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss [N], encoder gradient, decoder gradient) of the mean of ``model.iwae_loss``, each flattened."""
    model.zero_grad()
    loss = model.iwae_loss(x, k, dreg=dreg)
    loss.mean().backward()
    flat = lambda net: torch.cat([p.grad.flatten() for p in net.parameters()])  # noqa: E731
    return loss.detach(), flat(model.encoder), flat(model.decoder)


def test_dreg_keeps_the_value_and_the_decoder_gradient_of_iwae():
    torch.manual_seed(0)
    model = VAE(VAEConfig(latent_dim=4, hidden=16, binarize="dynamic"))
    x = (torch.rand(8, 1, 28, 28) < 0.3).float()
    torch.manual_seed(1)
    plain = _iwae_gradients(model, x, 5, dreg=False)
    torch.manual_seed(1)
    dreg = _iwae_gradients(model, x, 5, dreg=True)
    assert torch.equal(plain[0], dreg[0])
    assert torch.allclose(plain[2], dreg[2], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(plain[1], dreg[1], rtol=0.1, atol=1e-3)             # the encoder's path differs


@pytest.mark.slow
def test_dreg_encoder_gradient_has_the_iwae_gradient_as_its_mean():
    """Averaged over 16 x 1000 draws per image, DReG's encoder gradient matches plain IWAE's within 5 standard
    errors in every coordinate. Dropping the squared weights (w instead of w^2) misses by over 100 of them."""
    torch.manual_seed(0)
    model = VAE(VAEConfig(latent_dim=2, hidden=8, binarize="dynamic", ema_decay=0))
    x = (torch.rand(2, 1, 28, 28) < 0.3).float().repeat(1000, 1, 1, 1)

    def encoder_gradients(dreg: bool) -> torch.Tensor:
        torch.manual_seed(0)
        return torch.stack([_iwae_gradients(model, x, 5, dreg)[1] for _ in range(16)])

    plain, dreg = encoder_gradients(False), encoder_gradients(True)
    se = ((plain.var(0) + dreg.var(0)) / len(plain)).sqrt()
    z = (plain.mean(0) - dreg.mean(0)).abs() / se.clamp_min(1e-12)
    assert z.max() < 5, z.max()


def test_bf16_autocast_runs_the_networks_in_bf16_and_keeps_the_loss_terms_float32():
    torch.manual_seed(0)
    model = VAE(VAEConfig(binarize="dynamic"))
    x = (torch.rand(16, 1, 28, 28) < 0.3).float()
    torch.manual_seed(1)
    exact = model.iwae_loss(x, 10)
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = model.iwae_loss(x, 10)
        mu, logvar = model.encode(x)
        assert model.decode_logits(mu).dtype == mu.dtype == logvar.dtype == torch.float32
        assert model.loss(x)["loss"].dtype == torch.float32
        _, z, log_px, _ = model._log_weights(x, 3)
        logits = model.decode_logits(z.reshape(-1, z.shape[-1])).view(3, len(x), -1).double()
    # log p(x|z) from the same (bf16-computed) logits: its contraction ran in float32, not as a bf16 product.
    exact_px = (logits * x.flatten(1).double()).sum(-1) - torch.nn.functional.softplus(logits).sum(-1)
    assert torch.allclose(log_px.double(), exact_px, rtol=0, atol=1e-3)  # a bf16 product: 4e-3 off here
    assert fast.dtype == torch.float32
    assert not torch.equal(fast, exact)                                 # the products did run in bf16 ...
    assert torch.allclose(fast, exact, rtol=1e-3, atol=0)               # ... and only rounding differs


class TableOfLogWeights:
    """A stand-in model whose log-weights come from a fixed [k x N] table, in the order they are asked for."""

    def __init__(self, table: torch.Tensor):
        self.table, self.used = table, torch.zeros(table.shape[1], dtype=torch.long)

    def binarize(self, x):
        return x

    def log_weights(self, x, k, generator=None):
        idx = x[:, 0, 0, 0].long()                                     # each image carries its own index
        rows = torch.stack([self.table[self.used[i]:self.used[i] + k, i] for i in idx.tolist()], dim=1)
        self.used[idx] += k
        return rows


def test_iwae_chunks_combine_to_the_exact_logsumexp():
    torch.manual_seed(0)
    table = torch.randn(64, 30, dtype=torch.float64) * 40 - 100         # widely spread weights: overflow-prone
    x = torch.arange(30, dtype=torch.float32).view(30, 1, 1, 1).expand(30, 1, 28, 28)
    exact = -(torch.logsumexp(table, 0) - math.log(64))
    for rows in (10_000, 64 * 7, 50, 7, 1):                             # whole, several images, sample chunks
        got = iwae_bound(TableOfLogWeights(table), x, 64, rows=rows)
        assert torch.allclose(got, exact, rtol=0, atol=1e-9), rows
    with pytest.raises(GenlabError):
        iwae_bound(TableOfLogWeights(table), x, 0)


def test_evaluate_vae_reports_every_number(trained_dynamic, data):
    images = data[1].images[:150]
    out = evaluate_vae(trained_dynamic, images, iwae_k=(1, 20))
    for key in ("loss_sampled", "loss_mean", "iwae_1", "iwae_20", "bits_per_dim", "active_units", "kl_per_dim"):
        assert key in out
    assert out["nll"] == min(out["iwae_1"], out["iwae_20"])
    assert out["bits_per_dim"] == pytest.approx(out["nll"] / (784 * math.log(2)))
    assert len(out["kl_per_dim"]) == 8 and sum(out["kl_per_dim"]) == pytest.approx(out["kl"], rel=1e-4)
    assert 0 <= out["active_units"] <= 8
    # the same numbers twice: fixed binarisation of the test images and seeded draws of z
    again = evaluate_vae(trained_dynamic, images, iwae_k=(1, 20))
    assert {k: v for k, v in again.items() if not k.startswith("seconds")} == \
        {k: v for k, v in out.items() if not k.startswith("seconds")}
    # IWAE_1 and the sampled -ELBO estimate the same quantity
    assert abs(out["iwae_1"] - out["neg_elbo"]) < 2.0


def test_active_units_and_kl_per_dim(trained, data):
    x = to_pixels(data[1].images[:300], "unit")
    kl = kl_per_dim(trained, x)
    assert kl.shape == (8,) and (kl >= 0).all()
    with torch.no_grad():
        mu, _ = trained.encode(x)
    assert active_units(trained, x) == int((mu.var(0) > 0.01).sum())
    assert active_units(trained, x, threshold=1e9) == 0


def test_binarisation_modes(data):
    x = to_pixels(data[1].images[:20], "unit")
    fixed = VAE(VAEConfig(binarize="fixed"))
    assert torch.equal(fixed.binarize(x), (x > 0.5).float())
    dyn = VAE(VAEConfig(binarize="dynamic")).train()
    a, b = dyn.binarize(x), dyn.binarize(x)
    assert set(a.unique().tolist()) <= {0.0, 1.0} and not torch.equal(a, b)       # redrawn at every use
    assert (a[x == 0] == 0).all() and (a[x == 1] == 1).all()
    dyn.eval()
    e = dyn.binarize(x)
    # one fixed draw per image, whatever the batch it comes in
    assert torch.equal(e, dyn.binarize(x)) and torch.equal(e[7:9], dyn.binarize(x[7:9]))
    assert torch.equal(dyn.binarize(e), e)                                          # binary input passes through
    assert abs(e.mean() - x.mean()) < 0.01                                          # an unbiased draw
    assert torch.equal(VAE(VAEConfig()).binarize(x), x)                             # none: grey, as the lecture


def test_hashed_uniform_is_uniform_and_image_dependent(data):
    x = to_pixels(data[1].images[:200], "unit")
    u = hashed_uniform(x)
    assert u.shape == x.shape and 0 < u.min() and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 0.005 and abs(u.var().item() - 1 / 12) < 0.002
    assert not torch.equal(u[0], u[1])
    assert (hashed_uniform(x, seed=1) != u).float().mean() > 0.99


def test_kl_warmup_and_free_bits(data):
    x = to_pixels(data[1].images[:32], "unit")
    model = VAE(VAEConfig(warmup_epochs=4, beta=2.0))
    assert model.beta_now == 0.0
    model.end_of_epoch(1)                                                            # two epochs done
    assert model.beta_now == pytest.approx(1.0)
    model.end_of_epoch(9)
    assert model.beta_now == pytest.approx(2.0)

    # At initialisation every latent's KL is 0.5 * (e^-4 + 4 - 1), about 1.51 nats (log-variance starts at -4).
    torch.manual_seed(0)
    plain = VAE(VAEConfig()).train()
    terms = {}
    for lam in (0.0, 1.0, 2.0):
        model = VAE(VAEConfig(free_bits=lam)).train()
        model.load_state_dict(plain.state_dict())
        torch.manual_seed(5)
        terms[lam] = model.loss(x)
        assert torch.allclose(terms[lam]["kl"], terms[0.0]["kl"])                   # the reported KL is the true one
    per_dim = 0.5 * (math.exp(-4) + 3)
    assert terms[0.0]["kl"].mean().item() == pytest.approx(20 * per_dim, rel=0.01)
    assert torch.allclose(terms[1.0]["loss"], terms[0.0]["loss"])                   # 1 nat < 1.51: no change
    kl_part = terms[2.0]["loss"] - terms[2.0]["rec"]
    assert torch.allclose(kl_part, torch.full_like(kl_part, 20 * 2.0))              # each latent counts 2 nats
    kl_part.mean().backward()                                                        # ... and is not pushed down
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.parameters())


def test_weight_average_is_used_in_eval_mode(data):
    x = to_pixels(data[1].images[:8], "unit")
    model = train_briefly(VAEConfig(latent_dim=4, hidden=64), data[0].images[:1024], epochs=1)
    with torch.no_grad():
        averaged = model.eval().encode(x)[0]
        live = model.train().encode(x)[0]
    assert not torch.allclose(averaged, live)
    off = train_briefly(VAEConfig(latent_dim=4, hidden=64, ema_decay=0.0), data[0].images[:1024], epochs=1)
    assert off.ema is None
    with torch.no_grad():
        assert torch.equal(off.eval().encode(x)[0], off.train().encode(x)[0])
    assert set(map(id, model.player_parameters("model"))).isdisjoint(map(id, model.ema.parameters()))


def test_checkpoint_of_genlab_0_1_loads_with_its_weight_average(tmp_path):
    """genlab 0.1 named the VAE's averaged networks ema_encoder/ema_decoder; such a run still loads, average included."""
    model = VAE(VAEConfig(latent_dim=4, hidden=16))
    with torch.no_grad():
        for p in model.ema.parameters():
            p.normal_()
    old = {k.replace("ema.net.encoder.", "ema_encoder.").replace("ema.net.decoder.", "ema_decoder.")
           .replace("ema.steps", "ema_steps"): v for k, v in model.state_dict().items()}
    assert any(k.startswith("ema_encoder.") for k in old)
    fresh = VAE(VAEConfig(latent_dim=4, hidden=16))
    fresh.load_state_dict(fresh.upgrade_state(old))
    for a, b in zip(fresh.ema.parameters(), model.ema.parameters()):
        assert torch.equal(a, b)


def test_config_errors_are_one_line():
    # --dreg without the IWAE objective, and --unscaled-mask without dropout, were accepted and did nothing.
    from genlab.models.dae import DAEConfig

    for bad in (dict(beta=-1.0), dict(latent_dim=0), dict(ema_decay=1.0), dict(tsne_epochs="0,five"), dict(dreg=True),
                lambda: DAEConfig(corruption="gaussian", noise=0.3, unscaled_mask=True)):
        with pytest.raises(GenlabError) as info:
            validate(VAEConfig(**bad) if isinstance(bad, dict) else bad())
        assert "\n" not in str(info.value) and "--" in str(info.value)
    assert VAEConfig(tsne_epochs="0, 5,10").figure_epochs() == {0, 5, 10}
    assert VAEConfig(tsne_epochs="none").figure_epochs() == VAEConfig(tsne_epochs="").figure_epochs() == set()


@pytest.mark.slow
def test_figures(trained, data, tmp_path):
    test_set = data[1]
    paths = vae_figures.final_figures(trained, test_set, tmp_path)
    names = {p.name for p in paths}
    assert {"samples.png", "reconstructions_vae.png", "interpolation.png"} <= names
    assert "manifold.png" not in names                                               # d = 8
    assert all(p.stat().st_size > 2000 for p in paths)
    two_d = VAE(VAEConfig(latent_dim=2, hidden=32)).eval()
    assert vae_figures.manifold_figure(two_d, tmp_path / "m.png", n=5).stat().st_size > 1000
    with pytest.raises(ValueError):
        vae_figures.manifold_figure(trained, tmp_path / "no.png")
    p = vae_figures.tsne_figure(trained, test_set.images, test_set.labels, 3, tmp_path / "t.png", n=150)
    assert p.stat().st_size > 2000
    assert vae_figures.epoch_figures(trained, 7, test_set, tmp_path) == []           # 7 is not a t-SNE epoch


def test_a_one_dimensional_code_is_drawn_against_the_label(tmp_path):
    # --latent-dim 1 (a valid value) crashed the run before its first step: t-SNE needs two dimensions (exit 70).
    from genlab.data import load_dataset

    test_set = load_dataset("mnist-5k", "test")
    one_d = VAE(VAEConfig(latent_dim=1, hidden=16)).eval()
    (path,) = vae_figures.epoch_figures(one_d, 0, test_set, tmp_path)
    assert path.name == "tsne_epoch000.png" and path.stat().st_size > 2000


def test_objective_switches_to_iwae_at_iwae_from_without_warmup(data):
    x = to_pixels(data[1].images[:32], "unit")
    torch.manual_seed(0)
    model = VAE(VAEConfig(latent_dim=8, hidden=64, binarize="fixed", warmup_epochs=10, objective="iwae",
                          iwae_k=5, iwae_from=2)).train()
    model.end_of_epoch(-1)                                                           # before the first epoch
    assert not model.iwae_now
    torch.manual_seed(1)
    elbo = model.loss(x)
    model.end_of_epoch(0)
    assert not model.iwae_now                                                        # one epoch done, of two
    model.end_of_epoch(1)
    assert model.iwae_now
    torch.manual_seed(1)
    terms = model.loss(x)
    torch.manual_seed(1)
    expected = model.iwae_loss(model.binarize(x), 5)
    # -L_k exactly, with no warm-up weight (beta_now is still 0.2 here) and no beta.
    assert model.beta_now == pytest.approx(0.2)
    assert torch.equal(terms["loss"], expected)
    assert set(terms) == set(elbo) == {"loss", "rec", "kl"}
    assert torch.allclose(terms["kl"], elbo["kl"])                                  # the same q, the same KL
    assert (terms["rec"] > 0).all() and not terms["rec"].requires_grad
    # An ELBO-only config never switches.
    plain = VAE(VAEConfig(latent_dim=8, hidden=64, iwae_from=0))
    plain.end_of_epoch(5)
    assert not plain.iwae_now


def test_iwae_objective_trains_with_dreg_gradients(data):
    x = to_pixels(data[1].images[:16], "unit")
    torch.manual_seed(0)
    model = VAE(VAEConfig(latent_dim=4, hidden=32, objective="iwae", iwae_k=4, dreg=True)).train()
    model.end_of_epoch(-1)
    model.loss(x)["loss"].mean().backward()
    grads = [p.grad for p in model.player_parameters("model")]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
