"""EBGAN and DCGAN: the loss terms against hand-computed answers, the two-player step order, divergence
detection (a forced NaN through the real training loop, saturation and collapse streaks), the EMA, and the
lecture's 64 x 64 networks."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

import genlab.train as train_mod
from genlab import checkpoint, config as cfgmod
from genlab.checkpoint import load_run
from genlab.data import load_dataset
from genlab.data.batching import to_pixels
from genlab.errors import GenlabError
from genlab.models.dcgan import DCGAN, DCGANConfig
from genlab.models.ebgan import DEFAULT_MARGINS, EBGAN, EBGANConfig, hinge_loss, pulling_away_term, reconstruction_energy
from genlab.models.gan_common import spread
from genlab.viz.gan_figures import energy_histogram_figure


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    """64 real MNIST digits (mnist-5k) as [64 x 1 x 28 x 28] in [-1, 1]."""
    return to_pixels(load_dataset("mnist-5k", "train").images[:64], "tanh")


def small_ebgan(**kw) -> EBGAN:
    torch.manual_seed(0)
    return EBGAN(EBGANConfig(ngf=8, ndf=8, code_dim=16, **kw))


def small_dcgan(**kw) -> DCGAN:
    torch.manual_seed(0)
    return DCGAN(DCGANConfig(ngf=8, ndf=8, **kw))


# -- known answers ----------------------------------------------------------------------------------------------
def test_pulling_away_term_on_a_hand_built_batch():
    # Codes e1, e2 and (1, 1): cos^2 is 0 between e1 and e2 and 1/2 between either and (1, 1). Example i's
    # term is the mean over the two others: (0 + 1/2) / 2, (0 + 1/2) / 2, (1/2 + 1/2) / 2.
    codes = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    pt = pulling_away_term(codes)
    assert torch.allclose(pt, torch.tensor([0.25, 0.25, 0.5]))
    # The batch mean is the paper's 1 / (N (N - 1)) sum over ordered pairs i != j: 2 (0 + 1/2 + 1/2) / 6.
    assert math.isclose(pt.mean().item(), 1 / 3, rel_tol=1e-6)
    # Each code is normalised over its own features: rescaling a code changes nothing.
    assert torch.allclose(pulling_away_term(codes * torch.tensor([[3.0], [0.1], [-7.0]])), pt)
    # Orthogonal codes do not pull at all; identical (or opposite) codes pull maximally.
    assert torch.allclose(pulling_away_term(torch.eye(5)), torch.zeros(5))
    assert torch.allclose(pulling_away_term(torch.tensor([[1.0, 2.0], [2.0, 4.0], [-1.0, -2.0]])), torch.ones(3))
    # Codes of any shape are flattened per example: [N x C x H x W] works like [N x CHW].
    maps = torch.randn(4, 2, 3, 3)
    assert torch.allclose(pulling_away_term(maps), pulling_away_term(maps.flatten(1)))


def test_hinge_is_applied_per_sample():
    real = torch.tensor([1.0, 2.0, 3.0])
    fake = torch.tensor([0.5, 5.0, 12.0])
    # m = 10: [10 - 0.5]^+ = 9.5, [10 - 5]^+ = 5, [10 - 12]^+ = 0 (not the hinge of the batch mean, which
    # would give [10 - 5.83]^+ for every sample).
    assert torch.allclose(hinge_loss(real, fake, 10.0), torch.tensor([10.5, 7.0, 3.0]))
    # A generated image already above the margin sends no gradient to the discriminator; one below does.
    fake = fake.clone().requires_grad_(True)
    hinge_loss(real, fake, 10.0).sum().backward()
    assert fake.grad.tolist() == [-1.0, -1.0, 0.0]


def test_reconstruction_energy_scales():
    x = torch.zeros(2, 1, 28, 28)
    x_hat = torch.full_like(x, 0.5)
    # Every pixel off by 0.5: squared sum 784 / 4 = 196, mean 1/4, Euclidean norm sqrt(196) = 14.
    assert torch.allclose(reconstruction_energy(x_hat, x, "sum"), torch.tensor([196.0, 196.0]))
    assert torch.allclose(reconstruction_energy(x_hat, x, "mean"), torch.tensor([0.25, 0.25]))
    assert torch.allclose(reconstruction_energy(x_hat, x, "norm"), torch.tensor([14.0, 14.0]))
    # The default margins follow the same scales: a factor of 784 between the squared sum and mean.
    assert math.isclose(DEFAULT_MARGINS["mean"] * 784, DEFAULT_MARGINS["sum"])
    assert DEFAULT_MARGINS["norm"] == 10.0  # the paper's MNIST margin


def test_ebgan_discriminator_loss_is_the_per_sample_hinge_of_its_energies(digits):
    model = small_ebgan()
    _, d_terms = next(model.steps(digits))
    m = model.margin_value
    assert m == DEFAULT_MARGINS["sum"]
    expected = d_terms["energy_real"] + (m - d_terms["energy_fake"]).clamp(min=0)
    assert d_terms["loss"].shape == (64,)
    assert torch.allclose(d_terms["loss"], expected)
    assert torch.equal(d_terms["hinge_active"], (d_terms["energy_fake"] < m).float())
    # energy(x) is the same per-example reconstruction energy the loss uses.
    with torch.no_grad():
        assert torch.allclose(model.energy(digits), d_terms["energy_real"], rtol=1e-5)
        assert torch.allclose(model.energy(digits), reconstruction_energy(model.reconstruct(digits), digits, "sum"),
                              rtol=1e-5)


# -- the two-player step -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [small_ebgan, small_dcgan])
def test_discriminator_step_does_not_reach_the_generator(make, digits):
    model = make()
    steps = model.steps(digits)
    player, terms = next(steps)
    assert player == "d" and set(model.players) == {"d", "g"}
    assert all(v.shape == (64,) for v in terms.values())
    terms["loss"].mean().backward()
    assert all(p.grad is None for p in model.player_parameters("g"))
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.player_parameters("d"))
    assert {id(p) for p in model.player_parameters("d")}.isdisjoint(id(p) for p in model.player_parameters("g"))


def test_dcgan_generator_step_sees_the_updated_discriminator(digits):
    model = small_dcgan()
    steps = model.steps(digits)
    next(steps)
    # "Update" D between the two yields: a zero last layer makes every logit 0, so D(G(z)) = 1/2 and the
    # generator's non-saturating loss is -log(1/2) = log 2 per example.
    with torch.no_grad():
        model.discriminator.net[-1].weight.zero_()
    player, terms = next(steps)
    assert player == "g"
    assert torch.allclose(terms["d_g_z2"], torch.full((64,), 0.5))
    assert torch.allclose(terms["loss"], torch.full((64,), math.log(2)))
    terms["loss"].mean().backward()
    assert all(p.grad is not None for p in model.player_parameters("g"))


def test_ebgan_generator_loss_uses_the_updated_discriminator_and_pt(digits):
    model = small_ebgan()
    fakes = []
    model.generator.register_forward_hook(lambda mod, inp, out: fakes.append(out.detach()))
    steps = model.steps(digits)
    next(steps)
    # A decoder whose last layer is zero reconstructs everything as 0, so D(G(z)) = sum of G(z)^2.
    with torch.no_grad():
        model.discriminator.decoder[-1].weight.zero_()
        model.discriminator.decoder[-1].bias.zero_()
    player, terms = next(steps)
    assert player == "g"
    (fake,) = fakes
    assert torch.allclose(terms["g_energy"], fake.pow(2).flatten(1).sum(1), rtol=1e-5)
    assert torch.allclose(terms["loss"], terms["g_energy"] + 0.1 * terms["pt"])
    assert (terms["pt"] >= 0).all() and (terms["pt"] <= 1 + 1e-6).all()


# -- divergence --------------------------------------------------------------------------------------------------
def test_forced_nan_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    calls = {"n": 0}
    original = DCGAN.after_step

    def poisoned_after_step(self, player):
        original(self, player)
        calls["n"] += 1
        if calls["n"] == 10:  # epoch 2 (4 batches of 64 per epoch, 2 players per batch), after a G step
            with torch.no_grad():
                self.generator.net[-2].weight.fill_(float("nan"))

    monkeypatch.setattr(DCGAN, "after_step", poisoned_after_step)
    base = cfgmod.to_dict(train_mod.default_train_config("dcgan"))
    base.update(dataset="mnist-5k", epochs=3, batch_size=64, limit=256, eval_limit=100, progress=False,
                figures=False, out=str(tmp_path / "run"))
    cfg = cfgmod.from_dict(cfgmod.TrainConfig, base)
    with pytest.raises(train_mod.TrainingDiverged) as info:
        train_mod.train("dcgan", DCGANConfig(ngf=8, ndf=8), cfg)
    message = str(info.value)
    assert "d loss became nan" in message and "last good checkpoint" in message and "\n" not in message
    run = load_run(tmp_path / "run")
    assert run.counters["epoch"] == 1  # the checkpoint written after epoch 1, before the NaN
    assert all(torch.isfinite(v).all() for v in run.model.state_dict().values() if v.is_floating_point())
    assert torch.isfinite(run.model.sample(4)).all()


def test_only_real_batches_move_the_discriminators_running_statistics(digits):
    # A full two-player step on one batch must leave D's batch-norm running statistics exactly where a forward
    # pass of the real batch alone puts them, so evaluation mode normalises real images with real statistics.
    m = small_dcgan().train()
    reference = copy.deepcopy(m.discriminator)
    reference(digits)
    for _ in m.steps(digits):
        pass
    bns = [(a, b) for a, b in zip(m.discriminator.modules(), reference.modules()) if isinstance(a, torch.nn.BatchNorm2d)]
    assert bns
    for ours, real_only in bns:
        assert torch.equal(ours.running_mean, real_only.running_mean)
        assert torch.equal(ours.running_var, real_only.running_var)
    # The generated batches did go through batch norm in training mode (batch statistics), and their
    # momentum is restored afterwards.
    assert all(bn.momentum == 0.1 for bn, _ in bns)


def test_dcgan_saturation_needs_a_streak():
    model = small_dcgan()
    saturated = {"d/d_x": 0.9999, "d/d_g_z1": 1e-4}
    healthy = {"d/d_x": 0.8, "d/d_g_z1": 0.2}
    patience = model.SATURATION_PATIENCE
    for _ in range(patience - 1):
        assert model.diverged(saturated) is None
    assert model.diverged(healthy) is None  # one healthy step resets the count
    for _ in range(patience - 1):
        assert model.diverged(saturated) is None
    reason = model.diverged(saturated)
    assert reason and "discriminator saturated" in reason and f"{patience} steps" in reason
    assert reason.endswith("try a lower --lr or another --seed")  # a 28 x 28 network: no smaller size to try
    from genlab.models.cdcgan import CDCGAN, CDCGANConfig
    conditional = CDCGAN(CDCGANConfig(ngf=8, ndf=8))
    reasons = [conditional.diverged(saturated) for _ in range(patience)]
    assert reasons[-1].endswith("try a lower --lr or another --seed") and "--image-size" not in reasons[-1]
    big = small_dcgan(image_size=64)
    assert [big.diverged(saturated) for _ in range(patience)][-1].endswith("--lr, --image-size 28 or another --seed")


def test_a_dcgan_whose_cross_entropy_runs_off_stops_at_once():
    # --lr 10 reached a G loss of 1.7e5 nats an image within a few dozen steps and ended with exit 0.
    from genlab.models import MODELS, build

    for model in (small_dcgan(), build("cdcgan", MODELS["cdcgan"].Config(ngf=8, ndf=8))):
        assert model.diverged({"d/loss": 1.2, "g/loss": 8.0, "d/d_x": 0.8, "d/d_g_z1": 0.2}) is None
        reason = model.diverged({"d/loss": 0.5, "g/loss": 1.7e5, "d/d_x": 0.9, "d/d_g_z1": 0.02})
        assert reason and "the g loss reached 1.7e+05 nats an image" in reason and "--lr" in reason


def test_collapse_is_detected_from_batch_spread():
    model = small_ebgan()
    check = model._collapsed
    collapsed = {"d/spread_real": 20.0, "d/spread_fake": 1.0, "d/hinge_active": 0.5}
    diverse = {"d/spread_real": 20.0, "d/spread_fake": 15.0, "d/hinge_active": 0.5}
    for _ in range(check.warmup):  # the untrained generator's outputs are alike: not counted
        assert model.diverged(collapsed) is None
    for _ in range(check.streak.patience - 1):
        assert model.diverged(collapsed) is None
    assert model.diverged(diverse) is None
    reasons = [model.diverged(collapsed) for _ in range(check.streak.patience)]
    assert reasons[:-1] == [None] * (check.streak.patience - 1) and "generator collapsed" in reasons[-1]
    # spread: each example's mean distance to the others; identical images give 0.
    same = torch.ones(5, 1, 28, 28)
    assert torch.equal(spread(same), torch.zeros(5))
    two = torch.stack([torch.zeros(1, 28, 28), torch.ones(1, 28, 28)])
    assert torch.allclose(spread(two), torch.full((2,), 28.0))


def test_ebgan_saturation_when_no_fake_is_below_the_margin():
    model = small_ebgan()
    for _ in range(model.SATURATION_PATIENCE - 1):
        assert model.diverged({"d/hinge_active": 0.0}) is None
    assert "margin" in model.diverged({"d/hinge_active": 0.0})


# -- EMA, sampling, checkpoints ----------------------------------------------------------------------------------
def test_ema_update_and_round_trip(tmp_path):
    model = small_dcgan(ema=0.9)
    keys = model.state_dict().keys()
    assert any(k.startswith("g_ema.net.") for k in keys) and "g_ema.steps" in keys
    assert all(not p.requires_grad for p in model.g_ema.parameters())
    assert {id(p) for p in model.g_ema.parameters()}.isdisjoint(id(p) for p in model.player_parameters("g"))
    before = [p.detach().clone() for p in model.g_ema.net.parameters()]
    with torch.no_grad():
        for p in model.generator.parameters():
            p.add_(1.0)
    model.after_step("d")  # only G's step moves the average
    assert all(torch.equal(a, b) for a, b in zip(model.g_ema.net.parameters(), before))
    model.after_step("g")
    # First update: decay min(0.9, (1 + 0) / (10 + 0)) = 0.1, so the average moves 90% of the way.
    for avg, old, new in zip(model.g_ema.net.parameters(), before, model.generator.parameters()):
        assert torch.allclose(avg, 0.1 * old + 0.9 * new, atol=1e-6)
    assert int(model.g_ema.steps) == 1
    # Checkpoints keep the averaged weights: save with the training loop's writer, load into a fresh model.
    path = tmp_path / "ckpt.safetensors"
    checkpoint.save(path, model, {}, {"cpu": [torch.get_rng_state()]}, {})
    fresh = small_dcgan(ema=0.9)
    fresh.load_state_dict(checkpoint.load(path).model_state)
    for a, b in zip(fresh.g_ema.net.parameters(), model.g_ema.net.parameters()):
        assert torch.equal(a, b)



def test_ema_follows_the_model_after_it_moves_or_changes_dtype():
    # The average lists its tensors once; .double() (like .to() and .cuda()) gives every buffer a new tensor,
    # so the list is made again and the average goes on reading the generator's own tensors.
    model = small_dcgan(ema=0.9)
    model.after_step("g")
    model.double()
    with torch.no_grad():
        for t in list(model.generator.parameters()) + list(model.generator.buffers()):
            if t.is_floating_point():
                t.add_(1.0)
    before = [p.detach().clone() for p in model.g_ema.net.parameters()]
    model.after_step("g")
    decay = min(0.9, 2 / 11)
    for avg, old, new in zip(model.g_ema.net.parameters(), before, model.generator.parameters()):
        assert avg.dtype == torch.float64 and torch.allclose(avg, decay * old + (1 - decay) * new)
    buffers = [(a, b) for a, b in zip(model.g_ema.net.buffers(), model.generator.buffers()) if a.is_floating_point()]
    assert buffers and all(torch.equal(a, b) for a, b in buffers)

def test_sample_uses_the_ema_generator_and_never_changes_the_model():
    model = small_ebgan(ema=0.99).train()
    with torch.no_grad():
        model.g_ema.net.net[-2].weight.zero_()  # Tanh(0) = 0: the averaged generator draws blank images
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = model.sample(7)
    assert x.shape == (7, 1, 28, 28) and torch.equal(x, torch.zeros_like(x))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())  # batch-norm stats untouched
    assert model.training
    plain = small_ebgan()
    y = plain.sample(5)
    assert y.shape == (5, 1, 28, 28) and y.min() >= -1 and y.max() <= 1 and y.std() > 0


def test_lecture_dcgan_networks_and_sizes(digits):
    model = DCGAN(DCGANConfig(image_size=64))
    # The PyTorch examples' dcgan with nc = 1, nz = 100, ngf = ndf = 64: 3,574,656 generator and 2,763,520
    # discriminator parameters (its final Sigmoid has none).
    assert sum(p.numel() for p in model.generator.parameters()) == 3_574_656
    assert sum(p.numel() for p in model.discriminator.parameters()) == 2_763_520
    convs = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    assert all(abs(m.weight.std().item() - 0.02) < 0.002 for m in convs if m.weight.numel() > 10_000)
    assert model.optimizer_options("d") == {"betas": (0.5, 0.999)} and DCGAN.train_defaults["lr"] == 2e-4
    x = digits[:4]
    player, terms = next(model.steps(x))
    assert player == "d" and terms["loss"].shape == (4,)
    with torch.no_grad():
        assert model.energy(x).shape == (4,)
        assert torch.allclose(model.energy(x), -model.discriminator(F.interpolate(x, size=(64, 64), mode="bilinear")))
        s = model.sample(3)
    assert s.shape == (3, 1, 28, 28) and s.min() >= -1 and s.max() <= 1


def test_energy_histogram_is_written(tmp_path, digits):
    for model in (small_ebgan(), small_dcgan()):
        path = energy_histogram_figure(model, digits, tmp_path / f"{type(model).__name__}.png")
        assert path.stat().st_size > 5000


def test_bad_settings_fail_with_one_line():
    for cls, kwargs in ((EBGANConfig, {"margin": -1.0}), (EBGANConfig, {"energy": "l1"}),
                        (DCGANConfig, {"ema": 1.0}), (DCGANConfig, {"image_size": 48})):
        with pytest.raises(GenlabError) as info:
            cfgmod.validate(cls(**kwargs))
        assert "\n" not in str(info.value) and "--" in str(info.value)


@pytest.mark.slow
def test_a_short_ebgan_run_separates_digits_from_noise(digits):
    """After 60 steps on real digits, the discriminator's energy is lower on held-out digits than on noise."""
    torch.manual_seed(0)
    model = EBGAN(EBGANConfig(ngf=8, ndf=8, code_dim=16))
    opts = {p: torch.optim.Adam(model.player_parameters(p), lr=1e-3, **model.optimizer_options(p))
            for p in model.players}
    images = to_pixels(load_dataset("mnist-5k", "train").images[:3840], "tanh")
    for i in range(60):
        for player, terms in model.steps(images[i * 64:(i + 1) * 64]):
            opts[player].zero_grad()
            terms["loss"].mean().backward()
            opts[player].step()
            model.after_step(player)
    test = to_pixels(load_dataset("mnist-5k", "test").images[:200], "tanh")
    noise = torch.rand_like(test) * 2 - 1
    with torch.no_grad():
        assert model.energy(test).median() < model.energy(noise).min()
