"""genlab on a GPU: exact resume with the CUDA random state, checkpoints that move between GPU and CPU, seeded
blocks that leave the CUDA stream alone, and training steps that never wait for the device.

Every test here needs CUDA and is skipped without it (CI has no GPU); ``benchmarks/gpu_check.sh`` runs them on
a GPU machine.
"""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

import genlab.train as train_mod
from genlab import checkpoint, config as cfgmod
from genlab.checkpoint import load_run
from genlab.errors import GenlabError
from genlab.models import MODELS
from genlab.rng import seeded
from genlab.train import Interrupted, default_train_config, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def cuda_config(name, out, **overrides) -> cfgmod.TrainConfig:
    base = cfgmod.to_dict(default_train_config(name))
    base.update(dataset="mnist-5k", epochs=2, batch_size=64, limit=640, eval_limit=200, progress=False,
                figures=False, out=str(out), device="cuda", deterministic=True)
    base.update(overrides)
    return cfgmod.from_dict(cfgmod.TrainConfig, base)


def state_of(run_dir) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in checkpoint.load(run_dir / checkpoint.CHECKPOINT).model_state.items()}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_sigterm_then_resume_on_cuda_equals_an_uninterrupted_run(name, tmp_path, monkeypatch):
    # Noise on the GPU (corruption, latent draws, z) comes from the CUDA generator: without its state in the
    # checkpoint the resumed run would draw other noise and end elsewhere.
    cfg = MODELS[name].Config()
    whole = train(name, cfg, cuda_config(name, tmp_path / "whole"))
    real_step, calls = train_mod._step, {"n": 0}

    def step_then_signal(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 13:  # inside the second epoch (10 batches per epoch)
            os.kill(os.getpid(), signal.SIGTERM)
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train_mod, "_step", step_then_signal)
    with pytest.raises(Interrupted):
        train(name, cfg, cuda_config(name, tmp_path / "split"))
    monkeypatch.setattr(train_mod, "_step", real_step)
    ckpt = checkpoint.load(tmp_path / "split" / checkpoint.CHECKPOINT)
    assert (ckpt.counters["epoch"], ckpt.counters["batch"]) == (1, 3) and len(ckpt.cuda_rng_states) == 1
    train(None, resume=tmp_path / "split")
    a, b = state_of(whole), state_of(tmp_path / "split")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # The logged means too: the resumed run reads its log at other steps (3 of 10, then 7), and each step's
    # terms are reduced alone, so the numbers do not depend on how many steps one read takes.
    assert metrics_of(whole) == metrics_of(tmp_path / "split")


def metrics_of(run_dir) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in ("seconds", "images_per_s")} for line in lines]


def test_a_checkpoint_written_on_the_gpu_loads_on_a_cpu_and_back(tmp_path):
    run_dir = train("vae", MODELS["vae"].Config(latent_dim=8), cuda_config("vae", tmp_path / "vae", epochs=1))
    on_cpu, on_gpu = load_run(run_dir, "cpu"), load_run(run_dir, "cuda")
    assert on_cpu.model.device.type == "cpu" and on_gpu.model.device.type == "cuda"
    x = torch.rand(16, 1, 28, 28)
    with torch.no_grad():
        a = on_cpu.model.decode(on_cpu.model.encode(x)[0])
        b = on_gpu.model.decode(on_gpu.model.encode(x.cuda())[0]).cpu()
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # A run goes on on the other device (with a note that the random stream differs): GPU -> CPU -> GPU.
    train(None, train_cfg=cuda_config("vae", run_dir, epochs=2), resume=run_dir, device="cpu")
    train(None, train_cfg=cuda_config("vae", run_dir, epochs=3), resume=run_dir, device="cuda")
    assert load_run(run_dir).counters["epoch"] == 3
    assert len(checkpoint.load(run_dir / checkpoint.CHECKPOINT).cuda_rng_states) == 1


def test_seeded_blocks_leave_the_cuda_generator_alone():
    torch.cuda.manual_seed(7)
    torch.randn(1, device="cuda")  # initialise CUDA's generator
    before = torch.cuda.get_rng_state()
    with seeded(3):
        first = torch.randn(5, device="cuda")
    assert torch.equal(torch.cuda.get_rng_state(), before)
    with seeded(3):
        assert torch.equal(torch.randn(5, device="cuda"), first)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_training_steps_never_wait_for_the_gpu(name, tmp_path, monkeypatch):
    # CUDA's sync debug mode raises on any operation that makes the host wait for the device: the data, the
    # forward and backward passes, the optimiser and the logging of a step must all stay on the GPU.
    real_step = train_mod._step

    def strict_step(*args, **kwargs):
        torch.cuda.set_sync_debug_mode("error")
        try:
            return real_step(*args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    monkeypatch.setattr(train_mod, "_step", strict_step)
    train(name, MODELS[name].Config(), cuda_config(name, tmp_path / name, epochs=1, deterministic=False))


def test_a_cpu_generator_draws_the_same_noise_for_a_model_on_the_gpu():
    # A user's torch.Generator() lives on the CPU; the public draws take it for a GPU model too, and the same
    # seed gives the same samples and corruptions on either device (up to the device's arithmetic).
    torch.manual_seed(0)
    vae, dae = (MODELS[name](MODELS[name].Config()).eval() for name in ("vae", "dae"))
    x = torch.rand(4, 1, 28, 28) * 2 - 1
    on_cpu = vae.sample(4, generator=torch.Generator().manual_seed(7)), dae.corrupt(x, torch.Generator().manual_seed(7))
    vae, dae = vae.cuda(), dae.cuda()
    on_gpu = (vae.sample(4, generator=torch.Generator().manual_seed(7)),
              dae.corrupt(x.cuda(), torch.Generator().manual_seed(7)))
    for a, b in zip(on_cpu, on_gpu):
        assert b.device.type == "cuda"
        torch.testing.assert_close(b.cpu(), a, atol=1e-4, rtol=1e-4)


def test_training_on_the_cpu_leaves_the_callers_cuda_random_state(tmp_path):
    # torch.manual_seed in the loop's set-up seeded every GPU too: a run on the CPU changed the caller's CUDA
    # random state, which train() promises to leave as it was.
    torch.cuda.manual_seed(123)
    before = torch.cuda.get_rng_state()
    train("ae", MODELS["ae"].Config(latent_dim=8), cuda_config("ae", tmp_path / "cpu", device="cpu", epochs=1,
                                                                deterministic=False))
    assert torch.equal(torch.cuda.get_rng_state(), before)


@pytest.mark.parametrize("name,overrides", [
    ("ae", {}), ("dae", {}), ("dae", {"arch": "conv"}), ("vae", {}), ("vae", {"arch": "conv"}),
    ("vae", {"warmup_epochs": 2}), ("vae", {"binarize": "dynamic", "free_bits": 0.5}),
    ("vae", {"objective": "iwae", "iwae_from": 1, "iwae_k": 5}),
    ("vae", {"objective": "iwae", "iwae_from": 1, "iwae_k": 5, "dreg": True})])
def test_a_recorded_step_trains_as_the_launched_one(name, overrides, tmp_path, monkeypatch):
    # The AE's, the DAE's and the VAE's loss replay as CUDA graphs (genlab.graphs) on every full batch: the run
    # must take the steps the kernel-by-kernel run takes, drawing fresh noise at every replay (noise drawn once
    # and replayed would leave the two runs apart after the first step), and the VAE's recording must follow
    # its KL warm-up (beta 0, then 0.5) and its switch to the IWAE objective (in the second epoch).
    from genlab import graphs
    replays = {"n": 0}
    real_steps = graphs.GraphedLoss.steps

    def counted(self, x):
        replays["n"] += 1
        return real_steps(self, x)

    monkeypatch.setattr(graphs.GraphedLoss, "steps", counted)
    cfg = MODELS[name].Config(**overrides)
    recorded = train(name, cfg, cuda_config(name, tmp_path / "graphs", limit=650))  # 10 full batches + 10 images
    assert replays["n"] == 20
    launched = train(name, cfg, cuda_config(name, tmp_path / "launched", limit=650, cuda_graphs=False))
    assert replays["n"] == 20
    a, b = state_of(recorded), state_of(launched)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)
    for x, y in zip(metrics_of(recorded), metrics_of(launched)):
        assert x.keys() == y.keys() and all(x[k] == pytest.approx(y[k], rel=1e-4) for k in x)


@pytest.mark.parametrize("name", ["ae", "dae"])
def test_a_loss_the_graphs_cannot_hold_is_said_in_one_line_and_never_a_traceback(name, tmp_path, monkeypatch,
                                                                                  capsys):
    # A model that says it is graph-safe but reads a number on the host: the recording fails. genlab either
    # trains on kernel by kernel with a note (the process can still draw random numbers: the DAE's corruption)
    # or, where the failed capture left the generator refusing draws, stops in one line naming --no-cuda-graphs.
    # Then the same process trains with the recording off, where it still can draw (the AE draws nothing).
    model_cls = type(MODELS[name](MODELS[name].Config()))
    real_loss = model_cls.loss

    def host_read(self, x):
        terms = real_loss(self, x)
        if terms["loss"].sum().item() < 0:  # never true; the read is what matters
            raise AssertionError
        return terms

    monkeypatch.setattr(model_cls, "loss", host_read)
    try:
        run_dir = train(name, MODELS[name].Config(), cuda_config(name, tmp_path / "recorded", epochs=1,
                                                                 deterministic=False))
        assert "could not record the training step as CUDA graphs" in capsys.readouterr().err
        assert load_run(run_dir).counters["epoch"] == 1
    except GenlabError as e:
        assert "unable to draw random numbers on the GPU; train with --no-cuda-graphs" in str(e)
        if name == "dae":
            return  # its corruption cannot be drawn in this process now (the resume: tests/test_train.py)
    monkeypatch.setattr(model_cls, "loss", real_loss)
    run_dir = train(name, MODELS[name].Config(), cuda_config(name, tmp_path / "launched", epochs=1,
                                                             deterministic=False, cuda_graphs=False))
    assert load_run(run_dir).counters["epoch"] == 1


@pytest.mark.parametrize("name", sorted(MODELS))
def test_bf16_autocast_on_the_gpu_gives_every_loss_and_logged_term_in_float32(name):
    # CUDA's autocast keeps more in float32 than a CPU's (pow, sum), and less elsewhere: the logged terms and the
    # losses are float32 on either, so --precision bf16 changes a run's numbers by rounding only.
    model = MODELS[name](MODELS[name].Config()).cuda()
    x, y = torch.rand(8, 1, 28, 28, device="cuda"), torch.arange(8, device="cuda")
    x = x * 2 - 1 if model.pixel_range == "tanh" else x
    with torch.autocast("cuda", dtype=torch.bfloat16):
        terms = {player: t for player, t in model.steps(x, *([y] if model.conditional else []))}
    assert {k: t.dtype for step in terms.values() for k, t in step.items() if t.dtype != torch.float32} == {}
