"""The training loop: every model smoke-trains, checkpoints round-trip, resume is exact, DDP matches one
process, a killed run leaves a loadable checkpoint, and bad input ends with one line and status 2."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import genlab.train as train_mod
from genlab import checkpoint, config as cfgmod, distributed
from genlab.checkpoint import load_run
from genlab.data import load_dataset
from genlab.data.batching import to_pixels
from genlab.errors import GenlabError
from genlab.models import MODELS
from genlab.viz import training_callbacks

from conftest import needs_mnist
from genlab.train import Interrupted, default_train_config, train

REPO = Path(__file__).resolve().parents[1]


def quick_config(name: str, out: Path, **overrides) -> cfgmod.TrainConfig:
    base = cfgmod.to_dict(default_train_config(name))
    base.update(dataset="mnist-5k", epochs=1, batch_size=64, limit=512, eval_limit=200, progress=False,
                figures=False, out=str(out))
    base.update(overrides)
    return cfgmod.from_dict(cfgmod.TrainConfig, base)


def params_of(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_run(whole, split) -> None:
    """Two run directories hold the same weights and the same metrics, timings aside."""
    a, b = load_run(whole), load_run(split)
    for key, value in params_of(a.model).items():
        assert torch.equal(value, params_of(b.model)[key]), key
    strip = lambda line: {k: v for k, v in json.loads(line).items() if k not in ("seconds", "images_per_s")}  # noqa: E731
    assert ([strip(x) for x in (whole / "metrics.jsonl").read_text().splitlines()]
            == [strip(x) for x in (split / "metrics.jsonl").read_text().splitlines()])


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_smoke_trains_on_mnist_5k(name, tmp_path):
    cfg = quick_config(name, tmp_path / name, figures=True)
    run_dir = train(name, MODELS[name].Config(), cfg, callbacks=training_callbacks(cfg))
    record = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["epoch"] == 1
    losses = [v for k, v in record.items() if k.endswith("loss")]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    run = load_run(run_dir)
    x = to_pixels(load_dataset("mnist-5k", "test").images[:16], run.model.pixel_range)
    with torch.no_grad():
        energy = run.model.energy(x)
    assert energy.shape == (16,) and torch.isfinite(energy).all()
    assert (run_dir / "figures" / "loss_curves.png").stat().st_size > 1000


@pytest.mark.slow
def test_no_figures_means_no_figures(tmp_path):
    """--no-figures draws nothing at all (the VAE's per-epoch t-SNE included); the library loop never draws."""
    out = tmp_path / "vae"
    result = _cli("train", "vae", "--dataset", "mnist-5k", "--limit", "256", "--eval-limit", "100", "--epochs", "1",
                     "--tsne-epochs", "0,1", "--no-figures", "--no-progress", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert not (out / "figures").exists() or not any((out / "figures").iterdir())
    run_dir = train("vae", MODELS["vae"].Config(tsne_epochs="0,1"), quick_config("vae", tmp_path / "lib", figures=True))
    assert not (run_dir / "figures").exists()  # figures come from callbacks (genlab.viz.training_callbacks)


def test_checkpoint_round_trip(tmp_path):
    run_dir = train("ae", MODELS["ae"].Config(latent_dim=8), quick_config("ae", tmp_path / "ae"))
    first = load_run(run_dir)
    ckpt = checkpoint.load(run_dir / checkpoint.CHECKPOINT)
    # Write the loaded model out again and read it back: weights, optimiser and counters survive unchanged.
    opt = torch.optim.Adam(first.model.parameters())
    opt.load_state_dict(ckpt.optimizer_states["model"])
    copy = tmp_path / "copy.safetensors"
    checkpoint.save(copy, first.model, {"model": opt}, {"cpu": ckpt.rng_states}, ckpt.counters)
    again = checkpoint.load(copy)
    assert again.counters == ckpt.counters
    for key, value in ckpt.model_state.items():
        assert torch.equal(again.model_state[key], value)
    for pid, state in ckpt.optimizer_states["model"]["state"].items():
        for key, value in state.items():
            assert torch.equal(torch.as_tensor(again.optimizer_states["model"]["state"][pid][key]),
                               torch.as_tensor(value))
    assert torch.equal(again.rng_states[0], ckpt.rng_states[0])


class _RunsCodeWhenUnpickled:
    """Unpickling this writes a file: the proof that a loader ran code from the checkpoint."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


def test_checkpoint_never_unpickles_and_refuses_garbage(tmp_path):
    bad = tmp_path / checkpoint.CHECKPOINT
    bad.write_bytes(b"\x80\x04not a safetensors file")
    with pytest.raises(Exception) as info:
        checkpoint.load(bad)
    assert "damaged" in str(info.value)


def test_a_checkpoint_holding_a_code_running_pickle_is_refused_and_its_code_never_runs(tmp_path):
    import pickle

    run_dir = train("ae", MODELS["ae"].Config(latent_dim=8), quick_config("ae", tmp_path / "run"))
    pickle.loads(pickle.dumps(_RunsCodeWhenUnpickled(tmp_path / "control")))  # the payload does run when unpickled
    assert (tmp_path / "control").read_text() == "ran"
    marker = tmp_path / "code-ran"
    ckpt = run_dir / checkpoint.CHECKPOINT
    for write in (lambda payload: ckpt.write_bytes(pickle.dumps(payload)), lambda payload: torch.save(payload, ckpt)):
        write({"model": _RunsCodeWhenUnpickled(marker)})
        with pytest.raises(GenlabError, match="damaged or not a genlab checkpoint"):
            load_run(run_dir)
        with pytest.raises(GenlabError, match="damaged or not a genlab checkpoint"):
            train(None, resume=run_dir)
    result = _cli("evaluate", str(run_dir), "--limit", "10")  # the command too: one line, exit status 2
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not marker.exists()


def train_until_sigterm(name, cfg_model, cfg, monkeypatch, at_step: int = 11) -> None:
    """Train, sending this process a real SIGTERM just before step ``at_step``; the run stops, checkpointed."""
    real_step, calls = train_mod._step, {"n": 0}

    def step_then_signal(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == at_step:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train_mod, "_step", step_then_signal)
    with pytest.raises(Interrupted):
        train(name, cfg_model, cfg)
    monkeypatch.setattr(train_mod, "_step", real_step)


def test_resume_after_sigterm_mid_epoch_is_bitwise_exact(tmp_path, monkeypatch):
    # dae: random corruption every step, so the random state must be restored exactly too.
    cfg_model = MODELS["dae"].Config(latent_dim=64)
    whole = train("dae", cfg_model, quick_config("dae", tmp_path / "whole", epochs=2))
    train_until_sigterm("dae", cfg_model, quick_config("dae", tmp_path / "split", epochs=2), monkeypatch)  # 8 a epoch
    stopped = checkpoint.load(tmp_path / "split" / checkpoint.CHECKPOINT).counters
    assert (stopped["epoch"], stopped["batch"]) == (1, 3)  # stopped inside the second epoch
    train(None, resume=tmp_path / "split")

    assert_same_run(whole, tmp_path / "split")


def test_a_resumed_gan_keeps_its_divergence_streaks(tmp_path, monkeypatch):
    # The collapse check counts steps (its warm-up) and streaks across the interruption, as if none happened.
    whole = train("ebgan", None, quick_config("ebgan", tmp_path / "whole", epochs=2))
    train_until_sigterm("ebgan", None, quick_config("ebgan", tmp_path / "split", epochs=2), monkeypatch)
    train(None, resume=tmp_path / "split")
    checks = [checkpoint.load(run / checkpoint.CHECKPOINT).counters["checks"] for run in (whole, tmp_path / "split")]
    assert checks[0]["collapse_seen"] == 16 and checks[1] == checks[0]


@pytest.mark.parametrize("name", ["ebgan", "vae"])
def test_reading_the_log_every_few_steps_changes_no_number(name, tmp_path, monkeypatch):
    # On a GPU the loop reads its terms back every 50 steps, reducing many steps' terms at once; here every
    # 3 steps, over 8 batches of 64 and a last one of 52 (ebgan: two players, so two rows of terms a step).
    each_step = train(name, None, quick_config(name, tmp_path / "each", limit=500))
    monkeypatch.setitem(train_mod.READ_EVERY, "cpu", 3)
    every_third = train(name, None, quick_config(name, tmp_path / "third", limit=500))
    assert_same_run(each_step, every_third)


def test_cosine_learning_rate_from_lr_to_lr_final():
    cfg = cfgmod.TrainConfig(lr=3e-3, lr_schedule="cosine", lr_final=1e-4)
    assert train_mod.learning_rate(cfg, 0, 1000) == pytest.approx(3e-3)
    assert train_mod.learning_rate(cfg, 500, 1000) == pytest.approx((3e-3 + 1e-4) / 2)
    assert train_mod.learning_rate(cfg, 750, 1000) < train_mod.learning_rate(cfg, 250, 1000)
    assert train_mod.learning_rate(cfg, 1000, 1000) == pytest.approx(1e-4)
    assert train_mod.learning_rate(cfgmod.TrainConfig(lr=3e-3), 500, 1000) == 3e-3  # constant: the default


def test_resume_with_cosine_schedule_and_iwae_objective_is_bitwise_exact(tmp_path, monkeypatch):
    # The learning rate and the objective are functions of the counters, so a resumed run repeats exactly;
    # the signal comes in epoch 2, where L_k has replaced the ELBO.
    cfg_model = MODELS["vae"].Config(latent_dim=8, hidden=64, binarize="dynamic", warmup_epochs=2,
                                     objective="iwae", iwae_k=3, iwae_from=1, dreg=True)
    options = dict(epochs=2, lr=3e-3, lr_schedule="cosine", lr_final=1e-4, precision="bf16")
    whole = train("vae", cfg_model, quick_config("vae", tmp_path / "whole", **options))
    train_until_sigterm("vae", cfg_model, quick_config("vae", tmp_path / "split", **options), monkeypatch)
    train(None, resume=tmp_path / "split")

    assert_same_run(whole, tmp_path / "split")
    a = load_run(whole)
    # The cosine reached --lr-final at the last step.
    opt_state = checkpoint.load(whole / checkpoint.CHECKPOINT).optimizer_states["model"]
    assert opt_state["param_groups"][0]["lr"] == pytest.approx(train_mod.learning_rate(
        a.train_cfg, 15, 16))
    # ... which each epoch's log line says (it was in the checkpoint's metadata only)
    logged = [json.loads(line)["lr"] for line in (whole / "metrics.jsonl").read_text().splitlines()]
    assert logged == [pytest.approx(train_mod.learning_rate(a.train_cfg, s, 16)) for s in (7, 15)]


def test_train_vae_help_lists_the_schedule_and_objective_flags(capsys):
    from genlab.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "vae", "--help"])
    out = capsys.readouterr().out
    for flag in ("--lr-schedule", "--lr-final", "--objective", "--iwae-k", "--iwae-from", "--dreg"):
        assert flag in out, flag


def _cli(*args, env=None, **kwargs):
    return subprocess.run([sys.executable, "-m", "genlab.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=REPO, **kwargs)


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tmp_path):
    # 1,029 images: the last global batch holds five, three for one process and two for the other; the
    # gradients and the logged means are still the global batch's. (A last batch of one image, which one of
    # two processes would not get, is left out of the epoch: test_every_process_gets_images_in_every_batch.)
    common = ["ae", "--latent-dim", "16", "--dataset", "mnist-5k", "--epochs", "1", "--batch-size", "128",
              "--limit", "1029", "--eval-limit", "100", "--no-figures", "--no-progress"]
    one = _cli("train", *common, "--out", str(tmp_path / "one"), timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          "--master-port", "29531", "-m", "genlab.cli", "train", *common,
                          "--out", str(tmp_path / "two")], capture_output=True, text=True, cwd=REPO,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    assert json.loads((tmp_path / "two" / "config.json").read_text())["world_size"] == 2
    a, b = params_of(load_run(tmp_path / "one").model), params_of(load_run(tmp_path / "two").model)
    initial = params_of(MODELS["ae"](MODELS["ae"].Config(latent_dim=16)))
    for key in a:
        assert not torch.equal(a[key], initial[key])  # both really trained
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6)
    logged = [json.loads((tmp_path / run / "metrics.jsonl").read_text()) for run in ("one", "two")]
    assert logged[0]["step"] == logged[1]["step"] == 9
    for key in ("train/loss", "test/loss"):
        assert logged[1][key] == pytest.approx(logged[0][key], rel=1e-5), key
    # Resumed by one process, the two-process run is told the command that resumes it, the new --epochs kept
    wrong = _cli("train", "--resume", str(tmp_path / "two"), "--epochs", "3", timeout=120)
    assert wrong.returncode == 2 and wrong.stderr.count("\n") == 1, wrong.stderr
    assert wrong.stderr.rstrip().endswith(
        f"resume it with the same number (got 1): torchrun --nproc-per-node 2 -m genlab.cli train --resume "
        f"{tmp_path / 'two'} --epochs 3"), wrong.stderr


LAUNCHER = """import os, sys
if os.environ["RANK"] == "1":  # this process alone finds no data directory
    os.environ["GENLAB_DATA_DIR"] = sys.argv[1]
sys.argv = ["genlab"] + sys.argv[2:]
from genlab.cli import main
sys.exit(main())
"""


@pytest.mark.slow
@needs_mnist
def test_processes_that_see_different_data_all_say_so(tmp_path):
    # "--dataset auto": rank 0 found full MNIST, rank 1 trained on mnist-5k, and the run "succeeded". With
    # --dataset mnist, rank 1's "not found" was often lost: rank 0 said only "another process stopped".
    (tmp_path / "launch.py").write_text(LAUNCHER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GENLAB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    common = ["ae", "--limit", "256", "--eval-limit", "100", "--epochs", "1", "--no-figures", "--no-progress"]
    for dataset, port, words in (("auto", "29541", "the processes see different training data"),
                                 ("mnist", "29542", "mnist not found and GENLAB_OFFLINE is set")):
        result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                                 "--master-port", port, str(tmp_path / "launch.py"), str(tmp_path / "empty"),
                                 "train", *common, "--dataset", dataset, "--out", str(tmp_path / dataset)],
                                capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
        lines = [line for line in result.stderr.splitlines() if line.startswith("genlab: error:")]
        assert result.returncode != 0 and lines and all(words in line for line in lines), result.stderr[-3000:]


SETTINGS_LAUNCHER = """import os, sys
extra = sys.argv[1].split() if os.environ["RANK"] == "1" else []  # this process alone is started differently
sys.argv = ["genlab"] + sys.argv[2:] + extra
from genlab.cli import main
sys.exit(main())
"""


@pytest.mark.slow
def test_processes_started_with_different_settings_all_say_so(tmp_path):
    # Started by hand, rank 1 with --epochs 3 waited for ever (deaf to SIGTERM) after rank 0 finished its one;
    # with --lr 0.01 both stepped their copies apart and exited 0; with --latent-dim 8 rank 1 showed a traceback.
    (tmp_path / "launch.py").write_text(SETTINGS_LAUNCHER)
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    common = ["ae", "--dataset", "mnist-5k", "--limit", "256", "--eval-limit", "100", "--epochs", "1",
              "--no-figures", "--no-progress"]
    for extra, port in (("--epochs 3", "29544"), ("--lr 0.01", "29545"), ("--latent-dim 8", "29546")):
        out = tmp_path / port
        result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                                 "--master-port", port, str(tmp_path / "launch.py"), extra, "train", *common,
                                 "--out", str(out)], capture_output=True, text=True, env=env, cwd=tmp_path,
                                timeout=120)
        lines = [line for line in result.stderr.splitlines() if line.startswith("genlab: error:")]
        assert result.returncode != 0 and len(lines) == 2, result.stderr[-3000:]
        assert all("the processes see different settings; start every process of a run with one command" in line
                   for line in lines), lines
        assert "internal error" not in result.stderr and not (out / "checkpoint.safetensors").exists()


DYING = """import os, sys
import genlab.train as t
real, steps = t._step, [0]
def step(*args, **kwargs):
    steps[0] += 1
    if os.environ["RANK"] == "1" and steps[0] == 12:  # in epoch 2: rank 1 dies as if killed
        os._exit(9)
    return real(*args, **kwargs)
t._step = step
sys.argv = ["genlab"] + sys.argv[1:]
from genlab.cli import main
sys.exit(main())
"""


def test_a_peer_gone_is_told_from_a_failure_of_this_process():
    # nccl's watchdog words were not known: on GPUs a survivor of a dead peer showed a traceback (exit 70).
    from torch.distributed import DistBackendError
    gone = ["[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:29500",
            "[Rank 1] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=41, OpType=ALLREDUCE) ran for "
            "600000 milliseconds before timing out.", "NCCL communicator was aborted on rank 0."]
    assert all(distributed.is_peer_failure(DistBackendError(text)) for text in gone)
    assert not distributed.is_peer_failure(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not distributed.is_peer_failure(ValueError("Connection closed by peer"))


@pytest.mark.parametrize("backend", ["nccl", "gloo"])
def test_a_failed_nccl_rank_aborts_its_group_rather_than_wait_for_peers_that_never_come(backend, monkeypatch):
    # nccl's destroy_process_group waits for the collectives in flight: a rank that failed alone (a full disk at
    # its checkpoint) would wait for peers blocked in a collective it never joins, before saying its error.
    import torch.distributed as dist

    calls = []
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_backend", lambda group=None: backend)
    monkeypatch.setattr(dist, "barrier", lambda **kw: calls.append("barrier"))
    monkeypatch.setattr(dist, "destroy_process_group", lambda group=None: calls.append("destroy"))
    monkeypatch.setattr(dist.distributed_c10d, "_abort_process_group", lambda group=None: calls.append("abort"))
    ctx = distributed.Context(rank=1, world=2)
    distributed.teardown(ctx, finished=False)
    assert calls == (["abort"] if backend == "nccl" else ["destroy"])
    calls.clear()
    distributed.teardown(ctx, finished=True)  # every rank arrived: a barrier, then the orderly way out
    assert calls == ["barrier", "destroy"]


@pytest.mark.slow
def test_a_process_that_dies_leaves_the_others_one_line_and_a_checkpoint(tmp_path):
    # The survivor printed gloo's "Connection closed by peer" traceback (exit 70).
    (tmp_path / "dying.py").write_text(DYING)
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                             "29543", str(tmp_path / "dying.py"), "train", "ae", "--dataset", "mnist-5k", "--limit",
                             "256", "--batch-size", "32", "--eval-limit", "100", "--epochs", "3", "--no-figures",
                             "--no-progress", "--out", str(tmp_path / "run")],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    said = [line for line in result.stderr.splitlines() if line.startswith("genlab:")]
    # (torchrun adds its own report of the dead worker, a traceback of torchrun's, after the workers' lines)
    assert result.returncode != 0 and "internal error" not in result.stderr, result.stderr[-3000:]
    assert len(said) == 1 and ("another process of this run stopped or died" in said[0]
                               or "interrupted by SIGTERM" in said[0]), result.stderr[-3000:]  # torchrun's stop first
    assert load_run(tmp_path / "run").counters["epoch"] >= 1


@pytest.mark.slow
def test_kill_9_leaves_last_checkpoint_loadable(tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "genlab.cli", "train", "dae", "--latent-dim", "500",
                             "--dataset", "mnist-5k", "--epochs", "50", "--batch-size", "32", "--no-progress",
                             "--no-figures", "--eval-limit", "100", "--out", str(out)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (out / checkpoint.CHECKPOINT).exists():
            time.sleep(0.05)
        assert (out / checkpoint.CHECKPOINT).exists(), "no checkpoint within 120 s"
        time.sleep(0.7)  # well inside a later epoch or checkpoint write
    finally:
        proc.kill()
        proc.wait()
    run = load_run(out)
    assert run.counters["epoch"] >= 1 and run.counters["batch"] == 0


@pytest.mark.slow
def test_bad_input_gives_one_line_and_status_2(tmp_path):
    cases = [
        ("train", "nosuchmodel"),
        ("train", "ae", "--latent-dim", "zero"),
        ("train", "dae", "--corruption", "blur"),
        ("train", "ae", "--dataset", "cifar"),
        ("evaluate", str(tmp_path / "missing")),
    ]
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text(json.dumps(
        {"model": "ae", "model_config": {"latent_dim": 4}, "train_config": {}}))
    (tmp_path / "broken" / checkpoint.CHECKPOINT).write_bytes(b"truncated")
    cases.append(("evaluate", str(tmp_path / "broken")))
    for args in cases:
        result = _cli(*args, timeout=120)
        assert result.returncode == 2, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "error" in lines[0], (args, result.stderr)
    # The benchmarks too: a bad setting, and a data directory without the data.
    for args, env in [(["vae_nll.py", "--ema-decay", "1.5"], {}),
                      (["vae_nll.py"], {"GENLAB_DATA_DIR": str(tmp_path / "empty"), "GENLAB_OFFLINE": "1"})]:
        result = subprocess.run([sys.executable, str(REPO / "benchmarks" / args[0]), *args[1:]], capture_output=True,
                                text=True, env={**os.environ, **env}, cwd=REPO, timeout=120)
        assert result.returncode == 2, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("vae_nll.py: error:"), (args, result.stderr)


def test_tensorboard_logs_scalars_images_and_histograms(tmp_path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    cfg = quick_config("ae", tmp_path / "tb", epochs=2, tensorboard=True)
    run_dir = train("ae", MODELS["ae"].Config(latent_dim=8), cfg, callbacks=training_callbacks(cfg))
    acc = event_accumulator.EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()
    assert [e.step for e in acc.Scalars("test/mse")] == [1, 2]
    assert "reconstructions" in tags["images"] and "energy/test" in tags["histograms"]


@pytest.mark.slow
def test_conv_denoiser_learns_on_mnist_5k(tmp_path):
    run_dir = train("dae", MODELS["dae"].Config(arch="conv"), quick_config("dae", tmp_path / "conv", epochs=2,
                                                                             limit=1024))
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["test/mse_corrupted"] < lines[0]["test/mse_corrupted"] < 0.4  # learning, not collapsed to -1
    run = load_run(run_dir)
    x = to_pixels(load_dataset("mnist-5k", "test").images[:4], "tanh")
    with torch.no_grad():
        out = run.model.reconstruct(run.model.corrupt(x))
    assert out.shape == x.shape and out.min() >= -1 and out.max() <= 1



@pytest.mark.skipif(torch.cuda.is_initialized() or not hasattr(torch.cuda, "_lazy_seed_tracker"),
                    reason="needs CUDA not yet started and PyTorch's record of seeds queued for its start")
def test_a_seeded_block_queues_no_seed_for_cuda_before_it_starts():
    # torch.manual_seed before CUDA starts queues a seed that CUDA applies when it starts; from inside a seeded
    # block that seed would outlive the block and replace the caller's. The block seeds the CPU alone then,
    # and still repeats itself and leaves the CPU stream where it was.
    from genlab.rng import seeded

    torch.manual_seed(3)
    callers_seed = torch.cuda._lazy_seed_tracker.get_calls()[-1][0]  # the seed CUDA would start with
    before = torch.get_rng_state()
    with seeded(11):
        a = torch.rand(5)
    with seeded(11):
        b = torch.rand(5)
    assert torch.equal(a, b) and torch.equal(torch.get_rng_state(), before)
    assert torch.cuda._lazy_seed_tracker.get_calls()[-1][0] is callers_seed


@pytest.mark.parametrize("local_rank", [0, 1])
def test_more_torchrun_processes_than_gpus_is_one_line_on_every_rank(local_rank, monkeypatch):
    # Two processes on a one-GPU machine: nccl would refuse the second rank on the same GPU (or CUDA the
    # missing device) with a traceback; every rank stops first, with the same line, before any collective.
    from genlab import distributed

    monkeypatch.setattr(distributed, "resolve_device", lambda device: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: pytest.fail("reached set_device"))
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda *a, **k: pytest.fail("joined the group"))
    for key, value in {"WORLD_SIZE": "2", "RANK": str(local_rank), "LOCAL_RANK": str(local_rank),
                       "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(GenlabError, match=r"started 2 processes on this machine, which has 1 GPU; .*"
                                          r"--nproc-per-node 1, or train on the CPU with --device cpu"):
        distributed.setup("cuda")


def test_a_longer_schedule_given_on_resume_is_kept_for_the_next_resume(tmp_path):
    # --epochs on resume lengthens the run; its config.json says so, so a later resume without --epochs (on
    # another device, say) goes on with that schedule instead of refusing with an --epochs nobody gave.
    run = train("ae", MODELS["ae"].Config(latent_dim=8), quick_config("ae", tmp_path / "r", limit=128))
    train(None, train_cfg=quick_config("ae", tmp_path / "r", limit=128, epochs=2), resume=run)
    assert checkpoint.read_configs(run)[2].epochs == 2
    train(None, resume=run, device=torch.device("cpu"))  # a torch.device, as the docstring says (it was refused)
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_resume_takes_no_cuda_graphs_and_no_progress_for_this_time(tmp_path, monkeypatch, capsys):
    # A failed CUDA-graph recording says "train with --no-cuda-graphs (and --resume ...)", which the command
    # refused as a setting of a new run; and Python's train() checked cuda_graphs on resume, then dropped it.
    from genlab import graphs
    from genlab.cli import main

    run = train("ae", MODELS["ae"].Config(latent_dim=8),
                quick_config("ae", tmp_path / "r", limit=128, epochs=1, progress=True))
    seen = []
    real = graphs.for_training
    monkeypatch.setattr(graphs, "for_training", lambda model, cfg, *a: seen.append(cfg) or real(model, cfg, *a))
    assert main(["train", "--resume", str(run), "--epochs", "2", "--no-cuda-graphs", "--no-progress"]) == 0
    assert (seen[-1].epochs, seen[-1].cuda_graphs, seen[-1].progress) == (2, False, False)
    saved = checkpoint.read_configs(run)[2]
    assert saved.cuda_graphs and saved.epochs == 2  # for this time only; the longer schedule is the run's
    import dataclasses
    train(None, train_cfg=dataclasses.replace(saved, epochs=3, cuda_graphs=False), resume=run)
    assert (seen[-1].epochs, seen[-1].cuda_graphs) == (3, False)


def test_a_finite_but_astronomical_loss_is_divergence_and_a_first_epoch_leaves_no_checkpoint(tmp_path, monkeypatch):
    # An EBGAN at --lr 10 reached a discriminator loss of 6.4e35 and the run "succeeded"; and a run that
    # diverged in its first epoch promised a last good checkpoint it never wrote.
    real_step, calls = train_mod._step, {"n": 0}

    def step(*args, **kwargs):
        names, means = real_step(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:
            means = torch.stack([torch.full_like(m, 6.4e35) if name == "loss" else m for name, m in zip(names, means)])
        return names, means

    monkeypatch.setattr(train_mod, "_step", step)
    with pytest.raises(train_mod.TrainingDiverged) as info:
        train("ae", MODELS["ae"].Config(latent_dim=8), quick_config("ae", tmp_path / "run"))
    message = str(info.value)
    assert "the model loss reached 6.4e+35 at epoch 1, step 3" in message and "holds no checkpoint" in message
    assert not (tmp_path / "run" / checkpoint.CHECKPOINT).exists()


@pytest.mark.parametrize("name", ["ae", "dae"])
def test_an_autoencoder_whose_outputs_stick_at_the_wrong_ends_stops_in_one_line(name, tmp_path):
    # Adam at --lr 10 (within the flag's range) saturated an AE's and a DAE's tanh outputs at their first step;
    # the error stayed at 3.4, worse than an output of mid-grey everywhere (at most 1), and the run ended with
    # exit 0 and a model that reconstructed nothing.
    with pytest.raises(train_mod.TrainingDiverged) as info:
        train(name, MODELS[name].Config(), quick_config(name, tmp_path / "run", lr=10.0, epochs=3, limit=512))
    message = str(info.value)
    assert "the mean squared error has stayed above 2 for 10 steps in a row" in message, message
    assert "try a lower --lr" in message
    # The last checkpoint (epoch 2) is already stuck: it is not promised as good.
    assert f"the checkpoint of the last finished epoch is kept in {tmp_path / 'run'} (the trouble may have begun " \
           "before it)" in message
    healthy = train(name, MODELS[name].Config(), quick_config(name, tmp_path / "ok", lr=0.1, epochs=2, limit=512))
    assert load_run(healthy).counters["checks"] == {"worse_than_grey": 0}


def test_the_conv_daes_unbounded_output_may_overshoot_and_recover():
    # At Adam lr 5e-2 the U-Net's (unclamped) training output overshot to an error of 1e9, stayed above 2 for 16
    # steps and then trained to a usable denoiser; the autoencoders' streak stopped it at step 11.
    from genlab.models.dae import DAE, DAEConfig

    conv, mlp = DAE(DAEConfig(arch="conv")), DAE(DAEConfig())
    assert not any(conv.diverged({"loss": 30.0}) for _ in range(50))
    assert any(mlp.diverged({"loss": 3.0}) for _ in range(10))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_end_of_run_figures_draw_from_their_own_random_stream(name, tmp_path):
    # The GANs' and conditional models' own figure sets once drew from the training stream (the CUDA one on a
    # GPU) and left the model in eval mode; every figure now draws under a forked, seeded state.
    from genlab.models import build
    from genlab.viz.callbacks import write_figures

    model = build(name, MODELS[name].Config()).train()
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1, "train/loss": 1.0}\n')
    torch.manual_seed(5)
    before = torch.get_rng_state()
    written = write_figures(name, model, load_dataset("mnist-5k", "test"), tmp_path)
    assert written and all(path.is_file() for path in written)
    assert torch.equal(torch.get_rng_state(), before) and model.training


def test_a_reconstruction_that_fails_is_not_taken_for_a_model_without_one(tmp_path):
    # The figures asked "does it reconstruct?" by catching NotImplementedError, which PyTorch also raises for an
    # operator a device lacks: such a failure dropped reconstructions.png without a word. A GAN has none to draw.
    from genlab.models import build
    from genlab.viz.callbacks import write_figures
    from genlab.viz.metric_figures import figure_merged

    class Broken(MODELS["ae"]):
        def reconstruct(self, x):
            raise NotImplementedError("Could not run 'aten::addmm' with arguments from the 'Meta' backend")

    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1, "train/loss": 1.0}\n')
    test_set = load_dataset("mnist-5k", "test")
    with pytest.raises(NotImplementedError, match="aten::addmm"):
        write_figures("ae", Broken(MODELS["ae"].Config()), test_set, tmp_path)
    with pytest.raises(NotImplementedError, match="aten::addmm"):
        figure_merged(Broken(MODELS["ae"].Config()), test_set.images[:4], tmp_path / "merged.png")
    gan = build("dcgan", MODELS["dcgan"].Config())
    assert not any(p.name == "reconstructions.png" for p in write_figures("dcgan", gan, test_set, tmp_path))
    assert figure_merged(gan, test_set.images[:4], tmp_path / "merged.png") is None


def test_a_last_batch_of_one_image_is_left_out_of_the_epoch(tmp_path):
    # EBGAN's MLP generator batch-normalises its batch: a last batch of one image (129 = 2 x 64 + 1) crashed it.
    run = train("ebgan", MODELS["ebgan"].Config(generator="mlp"),
                quick_config("ebgan", tmp_path / "run", limit=129, batch_size=64))
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 2


@pytest.mark.parametrize("n,batch,world", [(129, 64, 1), (129, 64, 2), (130, 64, 2), (131, 64, 3), (5, 64, 2),
                                           (2, 64, 1), (256, 64, 4), (257, 64, 4)])
def test_every_process_gets_images_in_every_batch(n, batch, world):
    from genlab.data.batching import Batches

    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1).expand(n, 2, 2).contiguous()
    shards = [list(Batches(images, batch, seed=1, rank=r, world=world).epoch(0)) for r in range(world)]
    whole = list(Batches(images, batch, seed=1).epoch(0))
    assert all(len(s) == len(shards[0]) for s in shards)  # every rank takes the same steps
    for i, parts in enumerate(zip(*shards)):
        assert all(len(shard) >= 2 for shard, _ in parts) or n < 2 * world  # batch norm needs two
        assert sum(len(shard) for shard, _ in parts) == parts[0][1]
        if world <= 2:  # the global batches of one process, shared out
            assert sorted(torch.cat([shard for shard, _ in parts])[:, 0, 0].tolist()) == \
                sorted(whole[i][0][:, 0, 0].tolist())
    seen = sum(parts[0][1] for parts in zip(*shards))
    assert n - seen < 2 * world  # at most a remainder too small to share out is left


@pytest.mark.parametrize("name", ["ae", "dae", "vae"])
def test_a_step_logs_each_term_mean_and_reduces_a_loss_only_once(name):
    # The AE's and the DAE's terms are all the loss: the step logs the loss's own batch mean rather than
    # reducing it again (two launches saved in every GPU step). The VAE's other terms are reduced as before.
    from torch.profiler import ProfilerActivity, profile

    from genlab import distributed
    model = MODELS[name](MODELS[name].Config()).train()
    ctx = distributed.Context()
    steps = distributed.player_steps(model, ctx)
    optimizers = {p: torch.optim.SGD(model.player_parameters(p), lr=0.0) for p in model.players}  # weights stay
    x = to_pixels(load_dataset("mnist-5k", "train").images[:32], model.pixel_range)
    torch.manual_seed(0)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        names, parts = train_mod._step(model, (x,), len(x), optimizers, steps, ctx, "fp32")
    logged = dict(zip(names, torch.cat(parts).tolist()))
    torch.manual_seed(0)  # the same corruption (DAE) and the same codes drawn (VAE)
    with torch.no_grad():
        again = {key: value.mean().item() for key, value in model.loss(x).items()}
    assert logged == pytest.approx(again, rel=1e-6)
    reductions = sum(e.count for e in prof.key_averages() if e.key in ("aten::mean", "aten::stack"))
    assert reductions == (1 if name in ("ae", "dae") else 3)  # the loss's mean; the VAE's: + one stack, one mean


def test_python_callers_get_one_line_for_configs_that_cannot_train(tmp_path):
    # A field set after the config was made trained on images[:-4400] and left a run nothing could open;
    # another model's config built an ae with the vae's fields.
    cfg = quick_config("ae", tmp_path / "late")
    cfg.limit = -4400
    with pytest.raises(GenlabError, match="--limit must be >= 0"):
        train("ae", None, cfg)
    assert not (tmp_path / "late").exists()  # nothing written
    with pytest.raises(GenlabError, match=r"MODELS\['ae'\].Config, got VAEConfig"):
        train("ae", MODELS["vae"].Config(), quick_config("ae", tmp_path / "other"))
    with pytest.raises(GenlabError, match="got TrainConfig"):
        train("ae", quick_config("ae", tmp_path / "swapped"))
    from genlab.models import build
    with pytest.raises(GenlabError, match="got VAEConfig"):
        build("ae", MODELS["vae"].Config())


def test_resume_from_python_refuses_what_it_would_ignore_and_keeps_the_callers_random_state(tmp_path):
    import dataclasses
    import threading
    cfg = quick_config("ae", tmp_path / "r", limit=128)
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    run = train("ae", MODELS["ae"].Config(latent_dim=8), cfg)
    assert torch.equal(torch.rand(3), expected)  # training drew from its own seeded state
    with pytest.raises(GenlabError, match="holds a run of ae"):
        train("vae", None, None, resume=run)
    with pytest.raises(GenlabError, match="keeps its own model config"):
        train(None, MODELS["ae"].Config(latent_dim=2), None, resume=run)
    with pytest.raises(GenlabError, match="train_cfg changes batch_size, lr"):
        train(None, None, dataclasses.replace(cfg, lr=0.5, batch_size=7, epochs=2), resume=run)
    # Off the main thread (no signal handlers there) and with epochs alone changed, it goes on.
    done = []
    worker = threading.Thread(target=lambda: done.append(train(None, None, dataclasses.replace(cfg, epochs=2),
                                                               resume=run)))
    worker.start()
    worker.join()
    assert done == [run] and checkpoint.read_configs(run)[2].epochs == 2


def test_model_api_refuses_images_of_another_shape_and_draws_from_a_callers_generator():
    from genlab.models import build
    for name in MODELS:
        model = build(name).eval()
        x = torch.rand(4, 1, 28, 28) * (2 if model.pixel_range == "tanh" else 1) - (1 if model.pixel_range == "tanh" else 0)
        assert model.energy(x).shape == (4,)
        with pytest.raises(GenlabError, match=r"expected a float tensor \[N x 1 x 28 x 28\]"):
            model.energy(x[:, 0])  # the VAE broadcast this into energies that grew with N
        with pytest.raises(GenlabError, match="expected a float tensor"):
            model.energy((x * 100).to(torch.uint8))
        if model.can_sample:
            draws = [model.sample(3, generator=torch.Generator().manual_seed(5)) for _ in range(2)]
            assert torch.equal(*draws) and draws[0].shape == (3, 1, 28, 28), name
            with pytest.raises(GenlabError, match="number of samples"):
                model.sample(-1)


def test_the_recorded_loss_outputs_each_distinct_term_once_and_only_the_loss_carries_gradients():
    # genlab.graphs records ``model.loss`` as a module. The AE's "loss" and "mse" are one tensor, which must stay
    # one output (the step logs the loss's mean without a second reduction only when every term is the loss);
    # the VAE's logged terms come out without gradients (a recorded backward would carry them for nothing).
    from genlab import graphs
    x = load_dataset("mnist-5k", "train").images[:8]
    ae, vae = (MODELS[name](MODELS[name].Config()).train() for name in ("ae", "vae"))
    module = graphs._Loss(ae)
    outputs = module(to_pixels(x, ae.pixel_range))
    assert len(outputs) == 1 and outputs[0].requires_grad and module.layout == [("loss", 0), ("mse", 0)]
    assert {id(p) for p in module.parameters()} == {id(p) for p in ae.parameters()}
    module = graphs._Loss(vae)
    outputs = module(to_pixels(x, vae.pixel_range))
    assert module.layout == [("loss", 0), ("rec", 1), ("kl", 2)]
    assert [o.requires_grad for o in outputs] == [True, False, False]
    assert {name for name in MODELS if MODELS[name].graph_safe} == {"ae", "dae", "vae"}


@pytest.mark.parametrize("change", [{}, {"cuda_graphs": False}, {"precision": "bf16"}, {"world": 2},
                                    {"device": "cpu"}, {"model": "cvae"}, {"model": "dcgan"}, {"batch_size": 600}])
def test_the_loss_is_recorded_only_for_one_gpu_in_fp32_and_a_model_that_allows_it(change, monkeypatch):
    from types import SimpleNamespace

    from genlab import graphs
    monkeypatch.setattr(graphs, "GraphedLoss", lambda model, sample, say: ("recorded", tuple(sample.shape)))
    name = change.get("model", "vae")
    cfg = cfgmod.from_dict(cfgmod.TrainConfig, {**cfgmod.to_dict(default_train_config(name)), "batch_size": 64,
                                                **{k: v for k, v in change.items() if k not in ("model", "world",
                                                                                            "device")}})
    ctx = SimpleNamespace(device=torch.device(change.get("device", "cuda")), world=change.get("world", 1))
    model = MODELS[name](MODELS[name].Config())
    images = load_dataset("mnist-5k", "train").images[:512]  # stays on the CPU: nothing here touches CUDA
    got = graphs.for_training(model, cfg, ctx, images, print)
    assert got == (("recorded", (64, 1, 28, 28)) if not change else None)


def test_a_recording_captures_on_a_stream_of_its_models_gpu(monkeypatch):
    # PyTorch makes its default capture stream once, on the GPU current then: a process that recorded a model on
    # cuda:0 and then one on cuda:1 captured nothing the second time (an empty graph, replays computing nothing).
    from contextlib import nullcontext
    from types import SimpleNamespace

    from genlab import graphs
    entered = []
    monkeypatch.setattr(torch.cuda, "device", lambda device: entered.append(device) or nullcontext())
    for made_on, recording_on, kept in (("cuda:0", "cuda:0", True), ("cuda:0", "cuda:1", False)):
        made = SimpleNamespace(device=torch.device(made_on))
        monkeypatch.setattr(torch.cuda.graph, "default_capture_stream", made)
        with graphs._capturing_on(torch.device(recording_on)):
            assert entered[-1] == torch.device(recording_on)
            assert (torch.cuda.graph.default_capture_stream is made) == kept
    with graphs._capturing_on(torch.device("cpu")):  # the CPU tests' plumbing: nothing to switch
        assert len(entered) == 2


def _record_on_the_cpu(monkeypatch, fail_at: int = 0, error=RuntimeError) -> list:
    """Run genlab.graphs' plumbing on a CPU: "recording" hands back the module as it is (so each replay runs the
    loss as launched) and is counted; recording number ``fail_at`` (from 1) fails as a capture can (``error``:
    RuntimeError, or the AssertionError PyTorch's recording raises where it refuses a module). The loop gets
    a GraphedLoss wherever it would on one GPU."""
    from genlab import graphs
    recordings = []

    def record(module, sample_args, **kwargs):
        recordings.append(module.model[0].graph_key())
        module(*sample_args)  # what recording does: it runs the loss (and draws its noise)
        if len(recordings) == fail_at:
            raise error("operation not permitted when stream is capturing\nmore detail")
        return module

    monkeypatch.setattr(torch.cuda, "make_graphed_callables", record)
    monkeypatch.setattr(graphs, "for_training", lambda model, cfg, ctx, images, say: graphs.GraphedLoss(
        model, to_pixels(images[:cfg.batch_size], model.pixel_range), say) if model.graph_safe else None)
    return recordings


@pytest.mark.parametrize("name,overrides", [("dae", {}), ("vae", {"warmup_epochs": 2})])
def test_a_run_through_the_recorded_loss_takes_the_launched_runs_steps(name, overrides, tmp_path, monkeypatch):
    # The loop's side of genlab.graphs: full batches go through the recording, a short last one is launched,
    # recording draws no noise the run would see and leaves the buffers, and a schedule the loss reads (the
    # VAE's KL warm-up: beta 0, 0.5, then 1) makes a new recording when it moves, and only then.
    cfg = MODELS[name].Config(**overrides)
    launched = train(name, cfg, quick_config(name, tmp_path / "launched", epochs=3, limit=520))
    recordings = _record_on_the_cpu(monkeypatch)
    recorded = train(name, cfg, quick_config(name, tmp_path / "recorded", epochs=3, limit=520))
    assert recordings == ([(0.0, False), (0.5, False), (1.0, False)] if name == "vae" else [()])
    a, b = load_run(launched).model.state_dict(), load_run(recorded).model.state_dict()
    assert all(torch.equal(a[key], b[key]) for key in a)
    recordings.clear()  # a resumed run with nothing left to train records nothing
    train(None, train_cfg=quick_config(name, recorded, epochs=3, limit=520), resume=recorded)
    assert recordings == []


@pytest.mark.parametrize("error", [RuntimeError, AssertionError])
def test_a_recording_that_fails_is_said_once_and_the_run_goes_on_launched(error, tmp_path, monkeypatch, capsys):
    # The VAE's second recording (its KL warm-up moved on) fails as a capture can: one note, no further try, and
    # the run goes on kernel by kernel to the steps of a run that never recorded.
    cfg = MODELS["vae"].Config(warmup_epochs=2)
    launched = train("vae", cfg, quick_config("vae", tmp_path / "launched", epochs=3))
    capsys.readouterr()
    recordings = _record_on_the_cpu(monkeypatch, fail_at=2, error=error)
    run_dir = train("vae", cfg, quick_config("vae", tmp_path / "vae", epochs=3))
    err = capsys.readouterr().err
    assert len(recordings) == 2 and err.count("could not record the training step as CUDA graphs (operation "
                                              "not permitted when stream is capturing); each kernel is launched") == 1
    a, b = load_run(launched).model.state_dict(), load_run(run_dir).model.state_dict()
    assert all(torch.equal(a[key], b[key]) for key in a)


def test_a_failed_recording_that_leaves_no_random_draws_stops_in_one_line(tmp_path, monkeypatch):
    # Where the failed capture left the GPU's generator refusing eager draws, the run cannot go on: one line
    # naming --no-cuda-graphs, after the last finished epoch's checkpoint; the run then resumes without.
    from genlab import graphs
    _record_on_the_cpu(monkeypatch, fail_at=2)
    monkeypatch.setattr(graphs, "_recovered", lambda device: False)
    cfg = MODELS["vae"].Config(warmup_epochs=2)
    with pytest.raises(GenlabError, match=r"could not record the training step as CUDA graphs \(operation not "
                                          r"permitted when stream is capturing\), and the failed recording left "
                                          r"this process unable to draw .*; train with --no-cuda-graphs"):
        train("vae", cfg, quick_config("vae", tmp_path / "vae", epochs=3))
    assert load_run(tmp_path / "vae").counters["epoch"] == 1  # the first epoch is kept
    run_dir = train(None, train_cfg=quick_config("vae", tmp_path / "vae", epochs=3, cuda_graphs=False),
                    resume=tmp_path / "vae")
    assert load_run(run_dir).counters["epoch"] == 3


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_trains_with_sgd(name):
    # The GANs handed Adam's betas to SGD: --optimizer sgd, a listed choice, ended in a traceback.
    from genlab.models import build
    model = build(name, MODELS[name].Config())
    cfg = cfgmod.from_dict(cfgmod.TrainConfig, {**cfgmod.to_dict(default_train_config(name)), "optimizer": "sgd"})
    for player in model.players:
        opt = train_mod.make_optimizer(cfg, model.player_parameters(player), model.optimizer_options(player))
        assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.9
    adam = cfgmod.from_dict(cfgmod.TrainConfig, {**cfgmod.to_dict(default_train_config(name)), "optimizer": "adam"})
    for player in model.players:  # Adam keeps the model's own settings (DCGAN's beta1 = 0.5)
        opt = train_mod.make_optimizer(adam, model.player_parameters(player), model.optimizer_options(player))
        assert opt.defaults["betas"] == model.optimizer_options(player).get("betas", (0.9, 0.999))


def test_a_gan_trains_an_epoch_with_sgd(tmp_path):
    run = train("ebgan", MODELS["ebgan"].Config(), quick_config("ebgan", tmp_path / "run", optimizer="sgd", limit=256))
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1


BY_HAND_LAUNCHER = """import sys
import genlab.distributed as distributed
distributed.MEET_SECONDS = float(sys.argv[1])
sys.argv = ["genlab"] + sys.argv[2:]
from genlab.cli import main
sys.exit(main())
"""


def _by_hand(tmp_path, rank: int, port, meet_seconds: float, out: str, **env) -> subprocess.Popen:
    """``genlab train`` as one process of a group started by hand (WORLD_SIZE, RANK, MASTER_* without torchrun)."""
    launcher = tmp_path / "by_hand.py"
    if not launcher.exists():  # written once: a process starting while it was written again read it empty
        launcher.write_text(BY_HAND_LAUNCHER)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("TORCHELASTIC")}, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]), "WORLD_SIZE": "2",
           "RANK": str(rank), "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
           "TORCH_CPP_LOG_LEVEL": "ERROR", **env}  # as genlab's command sets it before PyTorch loads (here, after)
    argv = [sys.executable, str(launcher), str(meet_seconds), "train", "ae", "--dataset", "mnist-5k",
            "--limit", "256", "--eval-limit", "100", "--epochs", "1", "--no-figures", "--no-progress", "--out",
            str(tmp_path / out)]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)


def test_processes_started_by_hand_that_never_meet_end_in_one_line(tmp_path):
    # A process whose peer never came waited 30 minutes inside PyTorch, deaf to Ctrl-C and SIGTERM; a RANK
    # started twice filled the count of arrivals and the group waited for ever; a MASTER_PORT of "abc" or
    # 99999, or one another program holds, was a traceback and "internal error". All at once, each its own port.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        started = {"alone": _by_hand(tmp_path, 1, 29611, 3, "alone"),
                   "waiting": _by_hand(tmp_path, 0, 29612, 600, "waiting"),
                   "abc": _by_hand(tmp_path, 0, "abc", 3, "bad"), "99999": _by_hand(tmp_path, 0, "99999", 3, "bad"),
                   "held": _by_hand(tmp_path, 0, taken.getsockname()[1], 3, "held"),
                   **{name: _by_hand(tmp_path, rank, 29614, 8, "dup", WORLD_SIZE="3")
                      for name, rank in (("group 0", 0), ("group 1", 1), ("group 1 again", 1))}}
        deadline = time.monotonic() + 120
        while True:  # until process 0 waits for its peer, in Python, its store listening
            try:
                socket.create_connection(("127.0.0.1", 29612), timeout=1).close()
                break
            except OSError:
                assert started["waiting"].poll() is None and time.monotonic() < deadline, \
                    started["waiting"].communicate()
                time.sleep(0.2)
        started["waiting"].send_signal(signal.SIGTERM)
        said = {name: (p.communicate(timeout=120)[1], p.returncode) for name, p in started.items()}
    assert said["alone"] == ("genlab: error: MASTER_ADDR:MASTER_PORT 127.0.0.1:29611: process 0 did not come in 3 s; "
                             "start every process of the run (RANK 0 to WORLD_SIZE - 1) with the same MASTER_ADDR and "
                             "MASTER_PORT, or use torchrun, which does\n", 2)
    assert said["waiting"][1] == 128 + signal.SIGTERM and said["waiting"][0].splitlines()[-1] == \
        "genlab: stopped by SIGTERM", said["waiting"]
    for port in ("abc", "99999"):
        assert said[port] == (f"genlab: error: MASTER_PORT='{port}' is not a port number (1 to 65535); start "
                              "data-parallel runs with torchrun, which sets it\n", 2)
    assert said["held"][1] == 2 and said["held"][0].count("\n") == 1 and "in use by another program" in said["held"][0]
    group = [said[name] for name in ("group 0", "group 1", "group 1 again")]
    assert all(code == 2 and err.count("\n") == 1 for err, code in group), group
    twice = [err for err, _ in group if "a process with RANK=1 is already there" in err]
    assert len(twice) == 1 and "RANK 2 of WORLD_SIZE=3 did not come in 8 s" in said["group 0"][0], group
    assert not any((tmp_path / name).exists() for name in ("alone", "waiting", "bad", "held", "dup"))


@pytest.mark.slow
def test_processes_started_by_hand_train_together(tmp_path):
    # The same group through genlab's own meeting of the processes: rank 1 first, rank 0 seconds later.
    first = _by_hand(tmp_path, 1, 29613, 120, "run")
    time.sleep(3)
    second = _by_hand(tmp_path, 0, 29613, 120, "run")
    results = [(p.communicate(timeout=300), p.returncode) for p in (second, first)]
    assert all(code == 0 for _, code in results), [err[-2000:] for (_, err), _ in results]
    assert [json.loads(x)["epoch"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()] == [1]


def test_the_progress_bar_shows_the_loss_in_every_epoch_whatever_its_length(tmp_path, monkeypatch):
    # The loss and speed were shown when a read of the logged terms fell on a multiple of 50 steps; reading
    # every 50 steps (a GPU), an epoch whose length is no multiple of 50 left every later epoch without them.
    shown: list[int] = []

    class Bar:
        def __init__(self, *args, **kwargs):
            self.n = 0

        def update(self, n):
            self.n += n

        def set_postfix(self, **kwargs):
            shown.append(epoch_of[0])

        def close(self):
            epoch_of[0] += 1

        @staticmethod
        def write(message, file=None):  # the loop's lines, said beside the bar
            pass

    epoch_of = [0]
    monkeypatch.setattr(train_mod, "tqdm", Bar)
    monkeypatch.setattr(train_mod, "READ_EVERY", {"cpu": 7})  # as a GPU reads, every few steps
    monkeypatch.setattr(train_mod, "POSTFIX_EVERY", 10)
    train("ae", MODELS["ae"].Config(latent_dim=8), quick_config("ae", tmp_path / "r", limit=64 * 18, epochs=3,
                                                                 progress=True))
    assert sorted(set(shown)) == [0, 1, 2], shown  # 18 steps an epoch: reads at 7 and 14, shown once an epoch
