"""``genlab reproduce``: train every model of the lecture with its settings, evaluate them, write one report.

Full MNIST when it is on disk, else the embedded ``mnist-5k``; ``--quick`` uses ``mnist-5k`` with short
schedules (the README's first command). Everything lands in one folder: a run directory per model, the
tables as JSON, the cross-model figures, ``report.html`` (self-contained) and ``report.md``.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

import torch
from tqdm import tqdm

from genlab import config as cfgmod
from genlab import checkpoint
from genlab.checkpoint import load_run
from genlab.data import load_dataset, resolve_data_dir, resolve_dataset_name
from genlab.distributed import usable_cpus
from genlab.errors import GenlabError, Stopped, first_line
from genlab.models import MODELS
from genlab.train import Interrupted, default_train_config, train
from genlab.report import Section, check_report_folder, write_report
from genlab.viz import metric_figures, training_callbacks
from genlab.viz.callbacks import write_figures


@dataclass
class Stage:
    """One model of the lecture: its config and its training schedule (full, and --quick)."""
    model: str
    title: str
    model_config: dict
    train: dict  # TrainConfig overrides for the full run
    quick: dict = field(default_factory=dict)  # overrides on top of ``train`` for --quick
    quick_model: dict = field(default_factory=dict)  # overrides on top of ``model_config`` for --quick
    quick_too: bool = True  # part of --quick (False: only in the full run, or when named with --models)


# The lecture's settings (SETTINGS.md beside the lecture note); GAN schedules are bounded for a CPU.
STAGES = [
    Stage("ae", "Under-complete autoencoder (d = 30)", {"latent_dim": 30},
          {"epochs": 20, "batch_size": 256, "lr": 1e-3}, {"epochs": 30}),
    Stage("dae", "Denoising autoencoder (d = 500, dropout corruption)", {"latent_dim": 500},
          {"epochs": 20, "batch_size": 256, "lr": 1e-3}, {"epochs": 30}),
    # --quick: mnist-5k has 4,500 training digits, so the quick schedules take smaller batches (more steps) where
    # a model needs steps to draw digits: 60 VAE epochs at batch 64 (4,260 steps) rather than 180 steps.
    Stage("vae", "Variational autoencoder (d = 20)", {"latent_dim": 20},
          {"epochs": 10, "batch_size": 256, "lr": 1e-3, "seed": 1}, {"epochs": 60, "batch_size": 64}),
    # The GANs as benchmarks/gan_quality.py trains them (recognisable digits of every class in minutes), sampled
    # from a moving average of the generator. --quick: in minutes on 2 cores, narrower networks trained for more
    # steps draw better digits of more classes than the full widths trained for fewer (benchmarks/RESULTS.md,
    # "The quick schedules"): EBGAN at half width (generator 32, discriminator 16 channels, a 128-d code) with the
    # pulling-away term at weight 1, 14 epochs at lr 7e-4; DCGAN at half width (32 and 32), 12 epochs at lr 1e-3.
    Stage("ebgan", "Energy-based GAN", {"ema": 0.999}, {"epochs": 3}, {"epochs": 14, "lr": 7e-4},
          quick_model={"ngf": 32, "ndf": 16, "pt_weight": 1.0, "code_dim": 128}),
    Stage("dcgan", "DCGAN (28 x 28 variant)", {"ema": 0.999}, {"epochs": 2, "lr": 5e-4}, {"epochs": 12, "lr": 1e-3},
          quick_model={"ngf": 32, "ndf": 32}),
    # Beyond the lecture: the conditional models as benchmarks/conditional.py trains them (RESULTS.md). Each
    # needs more minutes than --quick has, so --quick runs them only when named (--models); then on mnist-5k the
    # cvae takes 30 epochs at batch 64 (2,130 steps), and the cdcgan the DCGAN's quick schedule, which drew
    # digits of the asked class 97% of the time in about two minutes (its full schedule, 142 steps there, drew
    # noise).
    Stage("cvae", "Conditional VAE: completing digits from 1, 2, 3 observed quadrants (Sohn et al. 2015)",
          {"condition": "quadrants"}, {"epochs": 30, "batch_size": 128, "lr": 1e-3}, {"batch_size": 64},
          quick_too=False),
    Stage("cdcgan", "Conditional DCGAN (projection discriminator)", {"ema": 0.999},
          {"epochs": 2, "batch_size": 64, "lr": 5e-4}, {"epochs": 12, "lr": 1e-3},
          quick_model={"ngf": 32, "ndf": 32}, quick_too=False),
]

DEPARTURES = [
    "VAE samples draw z ~ N(0, I) (randn); the lecture note's code uses torch.rand, a uniform draw on [0, 1), "
    "which is a typo for the Gaussian prior.",
    "The lecture note's reparameterise function names its noise `epsilon` and then uses `eps`; genlab's "
    "reparameterisation is z = mu + eps * exp(logvar / 2) with one name.",
    "The VAE decoder outputs Bernoulli logits and the loss is computed from them (numerically stable), where the "
    "note applies a Sigmoid and then binary cross-entropy; the values are the same.",
    "The lecture's DCGAN works on 64 x 64 images; the report's DCGAN is genlab's 28 x 28 variant, the practical "
    "size on a CPU (the 64 x 64 network is `genlab train dcgan --image-size 64`).",
    "The EBGAN energy is the squared reconstruction error summed over pixels, as in the lecture (the paper uses "
    "the norm), and the margin is set on that scale: m = 200 for 28 x 28 digits (a config's \"margin\": 0 "
    "means this default; the paper's m = 10 belongs to its norm, --energy norm); no sweep of margins is run "
    "here. Its generator's loss adds the paper's pulling-away term (weight 0.1), which the lecture's leaves out.",
    "The DCGAN's discriminator ends in a logit and trains with binary cross-entropy on it (the lecture's Sigmoid "
    "then BCELoss, computed stably); its batch norm keeps running statistics of real batches only, so that in "
    "evaluation a real image's energy is normalised with real images' statistics.",
    "The VAE evaluates, samples and draws its t-SNE with an exponential moving average of its weights (decay "
    "0.999; --ema-decay 0 turns it off) and starts its encoder near-deterministic (small means, log-variance "
    "-4); both make short runs better. Its test loss decodes a code drawn from q(z|x); the notebook's "
    "evaluation decodes z = mu, which is the column \"VAE loss (z = mu)\" and its energy. genlab train vae "
    "defaults to batch 128 and seed 0 (the PyTorch examples' batch); this reproduction uses the lecture's "
    "batch 256 and seed 1.",
    "Both GANs' samples come from an exponential moving average (decay 0.999) of the generator's weights, and "
    "the DCGAN here trains with lr 5e-4 rather than the lecture's 2e-4, which reached recognisable digits sooner "
    "within a CPU budget of minutes (the lecture's settings remain the defaults of genlab train dcgan).",
    "The quick reproduction (--quick) trains on mnist-5k's 4,500 training digits, so for more epochs: the AE "
    "and the DAE 30, the VAE 60 at batch 64; both GANs at half width for more steps: EBGAN with generator 32 "
    "and discriminator 16 channels, a 128-d code and the pulling-away term at weight 1 (14 epochs, lr 7e-4), "
    "DCGAN with 32 and 32 channels (12 epochs, lr 1e-3); in minutes these draw better digits of more classes "
    "than the full widths trained for fewer steps. Named with --models, the cvae takes batch 64 and the cdcgan "
    "the DCGAN's quick schedule.",
]


def _log(msg: str) -> None:
    tqdm.write(msg, file=sys.stderr)


# -- training stages side by side --------------------------------------------------------------------------------
def _training_processes(device: str, quick: bool, n_jobs: int, asked: int | None = None) -> int:
    """How many processes train the ``n_jobs`` stages: ``asked`` (``--jobs``) if given; else on a CPU two for
    --quick (with two or more cores) and one for the full reproduction; on a GPU three (with four or more cores).

    The quick models are small: a second PyTorch thread speeds one of them up by about 1.2x, while two
    single-thread processes train two models at once, so the quick reproduction ends sooner (RESULTS.md,
    "The quick schedules"). On a GPU one process leaves the card mostly idle: each step of these small
    networks waits on the host launching its kernels (a plain loop reaches 5,200 images/s for the EBGAN at
    batch 64 on an H200), so three processes, each launching its own, train three models at once.
    """
    if asked is not None:
        return max(1, min(asked, n_jobs))
    if _on_cpu(device):
        return 2 if quick and usable_cpus() >= 2 and n_jobs >= 2 else 1
    return min(3, n_jobs) if usable_cpus() >= 4 else 1


def _on_cpu(device: str) -> bool:
    return device == "cpu" or (device == "auto" and not torch.cuda.is_available())


def _classifier_alongside(device: str, workers: int) -> bool:
    """Whether this process trains the feature classifier (a CPU job, once per data set, then cached) while
    the training processes run: on a GPU, whose training processes leave most cores idle; not on a CPU,
    where they use every core the classifier would."""
    return workers > 1 and not _on_cpu(device)


class _Alongside(threading.Thread):
    """``work()`` in a thread beside the training processes; ``finish()`` waits for it and raises its error.
    A daemon, so Ctrl-C or SIGTERM ends the reproduction without waiting for it."""

    def __init__(self, work):
        super().__init__(daemon=True)
        self.work, self.error = work, None
        self.start()

    def run(self):
        try:
            self.work()
        except BaseException as e:  # noqa: BLE001 - handed to the main thread by finish()
            self.error = e

    def finish(self) -> None:
        self.join()
        if self.error is not None:
            raise self.error


class StagesInterrupted(Stopped):
    """Ctrl-C or SIGTERM while the stages trained. Each run keeps its last checkpoint, so the same command with
    the same ``--out`` goes on: finished stages are reused and an interrupted one resumes where it stopped."""

    def __init__(self, out: Path, signum: int):
        super().__init__(f"reproduce interrupted by {signal.Signals(signum).name}: every stage keeps its last "
                         f"checkpoint in {out}; go on with the same command and --out {out}", signum)
        self.out = out


def _train_stage(name: str, model_cfg, train_cfg, resume: bool) -> None:
    """Train one stage, or (``resume``) go on with its interrupted run in ``train_cfg.out``."""
    if resume:
        saved = checkpoint.read_configs(train_cfg.out)[2]
        train(None, resume=train_cfg.out, device=train_cfg.device, callbacks=training_callbacks(saved))
    else:
        train(name, model_cfg, train_cfg, callbacks=training_callbacks(train_cfg))


_stopping = None  # in a worker process: the event the main process sets when the reproduction stops
_training = threading.Event()  # in a worker process: set while a stage trains


def _start_worker(stopping, main: int | None = None) -> None:
    """A worker process's set-up: keep the stop event, and stop this worker too if the main process (``main``,
    its pid) dies without telling it (kill -9), rather than train on with nobody to report to."""
    global _stopping
    _stopping = stopping
    # SIGTERM to a worker between stages (the main process stops them all) ends it through Python's own exit,
    # so its locks are released (killed outright, it left one to the resource tracker, which said so on stderr
    # after genlab's one line). While a stage trains, the training loop's own handler takes over.
    signal.signal(signal.SIGTERM, _exit_unless_exiting)
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:  # a closed terminal hangs up every process of it
        signal.signal(signal.SIGHUP, _exit_unless_exiting)
    tqdm.monitor_interval = 0  # no bar is shown in a worker, and no thread is wanted to watch one
    # The main process's pid as it gave it: this worker's own parent, read here, is already init's where the main
    # process died while the worker started (killed in the first seconds, the workers trained on to the end).
    threading.Thread(target=_stop_when_orphaned, args=(main or os.getppid(),), daemon=True).start()


def _exit_unless_exiting(signum, frame) -> None:
    """SIGTERM in an idle worker: Python's own exit. Once the worker is already exiting (its main thread is
    done, the exit hooks run), nothing: raised inside a hook, the exit printed a traceback of it."""
    if threading.main_thread().is_alive():
        sys.exit(128 + signum)


def _stop_when_orphaned(parent: int, poll_s: float = 1.0, grace_s: float = 30.0) -> None:
    while os.getppid() == parent:
        time.sleep(poll_s)
    _stopping.set()  # no stage starts any more, here or in the other workers
    if _training.is_set():  # (set before a stage looks at _stopping: one of the two sees the other's flag)
        os.kill(os.getpid(), signal.SIGTERM)  # the stage saves its checkpoint and stops at its next step
        deadline = time.monotonic() + grace_s
        time.sleep(0.1)  # the signal's handler runs in the main thread
        while _training.is_set() and time.monotonic() < deadline:
            time.sleep(0.05)
    # Then leave at once: with nobody to report to, the worker would wait on the queue to the dead main process
    # (and a signal to a worker still starting was reported as its initializer's failure, with a traceback).
    os._exit(128 + signal.SIGTERM)


def _train_one_thread(name: str, model_cfg, train_cfg, resume: bool) -> float | None:
    """A worker process: train one stage on one thread, its log in ``RUN_DIR/train.log``; the seconds it took,
    or None for a stage that was already queued here when the reproduction stopped (it does not start)."""
    _training.set()  # before _stopping is read (see _stop_when_orphaned)
    try:
        if _stopping is not None and _stopping.is_set():
            return None
        torch.set_num_threads(1)
        run_dir = Path(train_cfg.out)
        run_dir.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        # Line-buffered: the log shows each epoch as it ends, and a worker killed outright loses none of it.
        with open(run_dir / "train.log", "a" if resume else "w", buffering=1) as log, contextlib.redirect_stderr(log):
            _train_stage(name, model_cfg, replace(train_cfg, progress=False), resume)
        return time.perf_counter() - started
    finally:
        _training.clear()  # its checkpoint is written


def _train_in_processes(jobs, workers: int, done) -> dict[str, float]:
    """Train ``jobs`` in ``workers`` fresh processes, the last stages (the GANs, the longest) first; call
    ``done()`` as each ends and return each one's seconds. A failure in one ends the reproduction with its error;
    so does Ctrl-C or SIGTERM here, which the running stages are sent too, so they checkpoint and stop at their
    next step rather than train on unwatched."""
    seconds = {}
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no state forked from this one
    _quiet_resource_tracker()
    others, stopping = set(multiprocessing.active_children()), context.Event()
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                             initargs=(stopping, os.getpid())) as pool:
        futures = {pool.submit(_train_one_thread, *job): job[0] for job in reversed(jobs)}
        try:
            for future in as_completed(futures):
                seconds[futures[future]] = future.result()
                done()
        except BaseException as e:
            stopping.set()  # the stages not yet started never start, queued in a worker or not
            pool.shutdown(wait=False, cancel_futures=True)
            for worker in set(multiprocessing.active_children()) - others:
                worker.terminate()  # SIGTERM: a training stage saves its checkpoint and stops at its next step
            if isinstance(e, BrokenProcessPool):  # a worker was killed (kill -9, the out-of-memory killer)
                unfinished = ", ".join(name for name, *_ in jobs if name not in seconds)
                raise GenlabError(f"a training process of the reproduction died (killed, or out of memory) while "
                                  f"{unfinished} trained; the checkpoints written are kept: run the same genlab "
                                  "reproduce command again to go on from them") from None
            raise
    return {f"train {name}": seconds[name] for name, *_ in jobs}


def _quiet_resource_tracker() -> None:
    """Start multiprocessing's resource tracker without its warning about a worker's semaphore left behind by a
    worker killed outright: genlab's own line says what happened, and the warning came after it."""
    from multiprocessing import resource_tracker
    before = os.environ.get("PYTHONWARNINGS")
    os.environ["PYTHONWARNINGS"] = "ignore::UserWarning"  # read by the tracker process as it starts
    try:
        resource_tracker.ensure_running()
    finally:
        if before is None:
            os.environ.pop("PYTHONWARNINGS", None)
        else:
            os.environ["PYTHONWARNINGS"] = before


@contextlib.contextmanager
def _stop_signals_interrupt(out: Path):
    """SIGTERM sent to this process alone (``kill``, ``timeout``, a scheduler), or SIGHUP (a closed terminal),
    stops the training stages as Ctrl-C does. Only the main thread can install a handler; elsewhere they keep
    their default, and SIGHUP ignored by the caller (``nohup``) stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise Interrupted(out, signum)

    signals = [signal.SIGTERM] + ([signal.SIGHUP] if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN else [])
    old = {signum: signal.signal(signum, stop) for signum in signals}
    try:
        yield
    finally:
        for signum, handler in old.items():
            signal.signal(signum, handler)


TITLE = "genlab: the generative-models lecture, reproduced"
MARKER = ".genlab-reproduce.json"  # what a reproduction folder is of: a later command goes on only with the same


def _check_out_folder(out: Path, kind: dict) -> None:
    """Refuse an --out that holds files but is no reproduction's folder (the user's files would be replaced, and
    runs of other settings reused), or is a reproduction of another kind (a quick one's runs in a full report)."""
    if not out.is_dir() or not any(out.iterdir()):
        return
    try:
        saved = json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        raise GenlabError(f"--out {out} holds files that genlab reproduce did not write; choose a new or empty "
                          "folder") from None
    if saved != kind:
        def said(k):
            return f"a {'quick ' if k.get('quick') else ''}reproduction on {k.get('dataset')}"
        raise GenlabError(f"--out {out} holds {said(saved)}, and this is {said(kind)}; choose another --out")


def _refuse_leaving_stages_unfinished(out: Path, asked: list[str], known: list[str], quick: bool) -> None:
    """Refuse a reproduction of some models (``asked``) into a folder where an earlier one left another model's
    stage unfinished (stopped by Ctrl-C): its report would leave that stage out, and the report, once written,
    is never replaced, so the earlier command could no longer go on."""
    left = []
    for model in known:
        run = out / model
        if model in asked or not os.path.lexists(run / checkpoint.CONFIG):
            continue
        try:
            schedule = checkpoint.read_configs(run)[2].epochs
            done = checkpoint.read_counters(run / checkpoint.CHECKPOINT)["epoch"] \
                if os.path.lexists(run / checkpoint.CHECKPOINT) else 0
        except GenlabError as e:
            left.append(f"{model} (damaged: {first_line(e)})")
            continue
        if done < schedule:
            left.append(f"{model} (epoch {done} of {schedule})")
    if left:
        # The earlier command trained every stage the folder holds: the default set, or those it named.
        present = [m for m in known if m in asked or (out / m).is_dir()]
        default = [s.model for s in STAGES if s.model in known and (not quick or s.quick_too)]
        again = "the same command without --models" if set(present) == set(default) else \
            f"--models {' '.join(present)}"
        raise GenlabError(f"--out {out} holds {'; '.join(left)}, left unfinished by an earlier reproduce; go on "
                          f"with {again}, or choose another --out")


def reproduce(out: Path | None = None, quick: bool = False, data_dir: str | None = None,
              models: list[str] | None = None, device: str = "auto", processes: int | None = None) -> Path:
    """Train, evaluate and report every model of the lecture; return the folder holding ``report.html``.
    ``processes``: how many train the stages at once (default: see ``_training_processes``)."""
    began = time.perf_counter()
    dataset = "mnist-5k" if quick else resolve_dataset_name("auto", data_dir)
    out = Path(out) if out else Path("runs") / f"reproduce-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    check_report_folder(out, TITLE)
    _check_out_folder(out, {"quick": quick, "dataset": dataset})
    known = [s.model for s in STAGES if s.model in MODELS]
    if models is not None:
        unknown = sorted(set(models) - set(known))
        twice = sorted({m for m in models if models.count(m) > 1})
        if unknown or twice or not models:
            what = (f"unknown model(s) {', '.join(map(repr, unknown))}" if unknown else
                    f"{', '.join(twice)} named twice" if twice else "no model named")
            raise GenlabError(f"--models: {what}; choose from {', '.join(known)}")
    stages = [s for s in STAGES if s.model in MODELS and (not models or s.model in models)
              and (not quick or s.quick_too or models)]
    _refuse_leaving_stages_unfinished(out, [s.model for s in stages], known, quick)
    cfgmod.check_device(device)  # before the folder is made: a refusal leaves nothing behind
    if data_dir:
        resolve_data_dir(data_dir)  # a file or a blank name: refused now, not after the first stage has trained
    out.mkdir(parents=True, exist_ok=True)
    cfgmod.write_json(out / MARKER, {"quick": quick, "dataset": dataset})
    timings: dict[str, float] = {}
    steps = len(stages) + 3
    overall = tqdm(total=steps, desc="reproduce", unit="stage", file=sys.stderr, disable=None)

    jobs = []  # (model name, model config, train config, resume) of the stages still to train
    for stage in stages:
        settings = {**cfgmod.to_dict(default_train_config(stage.model)), **stage.train,
                    **(stage.quick if quick else {}), "dataset": dataset, "data_dir": data_dir, "device": device,
                    "out": str(out / stage.model)}
        model_cfg = cfgmod.from_dict(MODELS[stage.model].Config,
                                     {**cfgmod.to_dict(MODELS[stage.model].Config()), **stage.model_config,
                                      **(stage.quick_model if quick else {})})
        train_cfg = cfgmod.from_dict(cfgmod.TrainConfig, settings)
        saved = out / stage.model / checkpoint.CHECKPOINT
        trained = checkpoint.load(saved).counters["epoch"] if saved.exists() else None
        if trained is not None and trained >= train_cfg.epochs:
            _log(f"{stage.model}: reusing the trained run in {out / stage.model}")
            overall.update(1)
        else:
            if trained is not None:
                _log(f"{stage.model}: going on with the run in {out / stage.model} after epoch {trained} of "
                     f"{train_cfg.epochs}")
            jobs.append((stage.model, model_cfg, train_cfg, trained is not None))
    workers = _training_processes(device, quick, len(jobs), asked=processes)
    classifier = None
    if _classifier_alongside(device, workers) and any(MODELS[s.model].can_sample for s in stages):
        from genlab.metrics import classifier as feature_classifier
        classifier = _Alongside(lambda: feature_classifier.get_classifier(dataset, data_dir))
    try:
        with _stop_signals_interrupt(out):
            if workers > 1:
                overall.set_postfix_str(f"training {len(jobs)} models in {workers} processes")
                _log(f"training {', '.join(j[0] for j in jobs)} in {workers} processes of one thread each; "
                     f"their logs go to {out}/<model>/train.log")
                timings.update(_train_in_processes(jobs, workers, lambda: overall.update(1)))
            else:
                for name, model_cfg, train_cfg, resume in jobs:
                    overall.set_postfix_str(f"training {name}")
                    started = time.perf_counter()
                    _train_stage(name, model_cfg, train_cfg, resume)
                    timings[f"train {name}"] = time.perf_counter() - started
                    overall.update(1)
    except (Interrupted, KeyboardInterrupt) as e:
        overall.close()
        raise StagesInterrupted(out, getattr(e, "signum", signal.SIGINT)) from None
    if classifier is not None:
        classifier.finish()  # cached now: evaluation and sample quality load it
    runs = {stage.model: load_run(out / stage.model, device) for stage in stages}
    for name, run in runs.items():
        if not (run.dir / "figures" / "loss_curves.png").exists():  # drawn last, at the end of its training
            # A stage stopped (kill -9) while it drew its end-of-run figures has them all the same.
            _log(f"{name}: drawing the end-of-run figures its training did not finish")
            write_figures(name, run.model, run.dataset("test"), run.dir)

    test = load_dataset(dataset, "test", data_dir)
    limit = 1000 if quick else 0
    tables: dict = {}

    overall.set_postfix_str("evaluating")
    started = time.perf_counter()
    from genlab.evaluate import evaluate_run, finite_or_null
    iwae_k = (1, 50) if quick else (1, 50, 500)
    for name, run in runs.items():
        results = evaluate_run(run, limit=limit, quality=False, **({"iwae_k": iwae_k} if "likelihood" in run.model.extra_metrics else {}))
        cfgmod.write_json(run.dir / "evaluation.json", finite_or_null(results))
        tables.setdefault("evaluation", {})[name] = results
    timings["evaluate"] = time.perf_counter() - started
    overall.update(1)

    overall.set_postfix_str("sample quality")
    started = time.perf_counter()
    samplers = [name for name, run in runs.items() if run.model.can_sample]
    if samplers:
        from genlab.metrics.classifier import get_classifier
        from genlab.metrics import conditional
        from genlab.metrics.quality import cached_reference_row, features_and_probs, model_quality, reference_images
        clf = get_classifier(dataset, data_dir)
        reference = features_and_probs(reference_images(dataset, data_dir), clf)
        tables["quality"] = {"reference (test vs train)": cached_reference_row(dataset, data_dir, clf, reference)}
        for name in samplers:
            model = runs[name].model
            tables["quality"][name] = model_quality(model, dataset, data_dir, clf, reference)
            if model.conditional and not getattr(model, "quadrants", False):  # accuracy and FID per class
                results = tables["evaluation"][name]
                results.update(conditional.evaluate_model(model, dataset, data_dir, classifier=clf))
                cfgmod.write_json(runs[name].dir / "evaluation.json", finite_or_null(results))
        timings["sample quality"] = time.perf_counter() - started
    overall.update(1)

    overall.set_postfix_str("energy view")
    started = time.perf_counter()
    figures = out / "figures"
    from genlab.metrics import anomaly
    tables["energy"] = {}
    for name, run in runs.items():
        report = anomaly.energy_report(run, limit=limit)
        tables["energy"][name] = anomaly.report_json(report)
        if report["missing"] and name == next(iter(runs)):
            _log(f"note: {report['missing']}")
        metric_figures.figure_energy_histograms(report, figures / f"energy_histograms_{name}.png")
        if name == "dae":
            merged = anomaly.merged_digits(test.images[:200], seed=0, labels=test.labels[:200])
            metric_figures.figure_merged(run.model, merged, figures / "merged_digits.png")
    if "dae" in runs:
        from genlab.metrics import inpainting
        tables["inpainting"] = inpainting.inpainting_table(runs["dae"].model, test.images[:limit or None])
        metric_figures.figure_inpainting(runs["dae"].model, test.images, figures / "inpainting.png")
    timings["energy and inpainting"] = time.perf_counter() - started
    overall.update(1)
    overall.close()

    timings["all stages"] = time.perf_counter() - began
    cfgmod.write_json(out / "tables.json", {"dataset": dataset, "quick": quick, "timings_s": timings, **tables})
    trained_by = (f"{workers} training processes of one thread each" if workers > 1 and jobs else
                  "one training process" if jobs else "runs trained earlier")
    sections = build_sections(runs, tables, timings, dataset, quick, figures, trained_by)
    html_path, _ = write_report(out, TITLE, sections)
    minutes, seconds = divmod(round(time.perf_counter() - began), 60)
    _log(f"report: {html_path} ({minutes} min {seconds} s in all)")
    return out


def _fmt_rows(data: dict, keys: list[str]) -> list[list]:
    return [[name] + [row.get(k) for k in keys] for name, row in data.items()]


def build_sections(runs, tables, timings, dataset, quick, figures: Path, trained_by: str = "") -> list[Section]:
    from genlab.report import run_section

    overview = Section("overview", "Overview")
    device = next(iter(runs.values())).model.device if runs else torch.device("cpu")
    threads = f"evaluation on {torch.get_num_threads()} CPU threads" if device.type == "cpu" else ""
    where = (torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU") + \
        (f" ({'; '.join(x for x in (trained_by, threads) if x)})" if trained_by or threads else "")
    overview.text(f"Data set: {dataset}{' (quick schedules)' if quick else ''}. Models: {', '.join(runs)}. "
                  f"Device: {where}.")
    overview.table(["stage", "seconds"], [[k, v] for k, v in timings.items()], "Timings")
    sections = [overview]

    ev = tables.get("evaluation", {})
    summary = Section("metrics", "Test metrics")
    rows = [[name, r.get("loss"), r.get("energy"), r.get("mse", r.get("mse_corrupted")),
             r.get("loss_mean"), r.get("nll")] for name, r in ev.items()]
    summary.table(["model", "test loss", "mean energy", "mse", "VAE loss (z = mu)", "VAE bound, grey pixels"], rows,
                  "genlab evaluate on the test split, per image. Test loss: each model's training objective (the "
                  "VAE's with z drawn from q(z|x); the GANs' is their discriminator's). Mean energy: each model's "
                  "own energy, on its own scale, so not comparable across models. mse: a mean over pixels of the "
                  "reconstruction of the clean image from the clean input (ae) or the corrupted one (dae). VAE "
                  "bound: the tightest importance-weighted bound, nats, of the Bernoulli loss on grey pixels, which "
                  "is a loss, not a likelihood of grey images: not comparable with published likelihoods of "
                  "binarised MNIST (benchmarks/vae_nll.py measures that setting)")
    sections.append(summary)

    if "inpainting" in tables:
        inp = Section("inpainting", "Denoising vs classical inpainting (Fig. 7)")
        results = tables["inpainting"]["results"]
        rows = [[f"{method} p={p}", r["psnr"], r["ssim"], r["psnr_dropped"], r["ssim_dropped"]]
                for method, by_p in results.items() for p, r in by_p.items()]
        inp.table(["method, drop rate", "PSNR (dB)", "SSIM", "PSNR dropped", "SSIM dropped"], rows,
                  f"Over {tables['inpainting']['n_images']} test images, pixels on [0, 1]")
        inp.text(_reading_of_inpainting(results))
        inp.figure(figures / "inpainting.png", "Fig. 7: noise mask, corrupted input, DAE, Telea, Navier-Stokes")
        sections.append(inp)

    if tables.get("energy"):
        en = Section("energy", "The energy view: merged digits and out-of-distribution inputs (Fig. 8)")
        first = next(iter(tables["energy"].values()))
        other = first["ood_dataset"]
        en.table(["model", "AUROC merged", "AUROC merged vs faded", "AUROC OOD: photo patches",
                  f"AUROC OOD: {other}"],
                 [[n, r["auroc_merged"], r.get("auroc_merged_vs_faded"), r["auroc_photos"],
                   r["auroc_ood"] if r["auroc_ood"] is not None else "missing"] for n, r in tables["energy"].items()],
                 "AUROC of the energy separating anomalous inputs (merged test digits, 28 x 28 patches of the "
                 f"sample photographs shipped with scikit-learn and scikit-image, {other} test images) from clean "
                 "test digits: 1 when every anomalous input has the higher energy, 0.5 chance, below 0.5 the "
                 "anomalous inputs have the lower energies. Merged vs faded: merged digits against single test "
                 "digits faded to the same half strength of ink (each averaged with a blank image), the control "
                 "for faintness: near 0.5 where the energy sees only how faint an image is. "
                 + _counts_of(first["n"], other))
        reading = _reading_of_merged(tables["energy"])
        if reading:
            en.text(reading)
        if first["missing"]:
            en.text(f"Note: {first['missing']}.")
        en.figure(figures / "merged_digits.png", "Fig. 8: merged digits (top) and the DAE's reconstructions")
        for name in tables["energy"]:
            en.figure(figures / f"energy_histograms_{name}.png", f"{name}: energies of clean, merged and OOD inputs")
        sections.append(en)

    if tables.get("quality"):
        q = Section("quality", "Sample quality (offline classifier features)")
        keys = ["fid", "kid", "precision", "recall", "min_class_share", "classifier_score"]
        q.table(["samples"] + keys, _fmt_rows(tables["quality"], keys),
                "FID and KID on the penultimate features of genlab's MNIST classifier, of as many samples as the "
                "test split holds; the reference row is the test split against the training split. Lower FID and "
                "KID are better (KID is unbiased: near 0, even below, for samples like the data); both are in "
                "units of this classifier's features, not comparable with papers' Inception-feature figures. "
                "Higher precision (samples that look real), recall (data the samples cover), min_class_share (the "
                "rarest class among the classifier's predictions, on at least 5,000 samples; 0.1 is perfect "
                "balance) and classifier_score (at most 10) are better")
        sections.append(q)

    completions = {name: run.dir / "figures" / "completions.png" for name, run in runs.items()
                   if getattr(run.model, "quadrants", False)}
    conditional = report_section(ev, completions)
    if conditional:
        sections.append(conditional)

    for name, run in runs.items():
        stage = next(s for s in STAGES if s.model == name)
        sections.append(run_section(run.dir, stage.title))

    dep = Section("departures", "Where genlab departs from the lecture note")
    for line in DEPARTURES:
        dep.text(line)
    sections.append(dep)
    return sections


def _reading_of_inpainting(results: dict) -> str:
    """Which method repairs best at each drop rate, by each measure, in words (the lecture shows the DAE's
    output beside the classical inpainting's and expects it to be the better repair)."""
    said = []
    for p in next(iter(results.values())):
        parts = []
        for key, what, form in (("psnr", "PSNR", "{:.2f} dB"), ("ssim", "SSIM", "{:.3f}"),
                                ("psnr_dropped", "dropped pixels' PSNR", "{:.2f} dB")):
            scores = {method: by_p[p][key] for method, by_p in results.items()}
            best = max(scores, key=scores.get)
            dae = f" (dae {form.format(scores['dae'])})" if best != "dae" and "dae" in scores else ""
            parts.append(f"{what} best {best} {form.format(scores[best])}{dae}")
        said.append(f"at p = {p}, " + ", ".join(parts))
    return "Reading (higher is better for each): " + "; ".join(said) + "."


def _counts_of(n: dict, other: str) -> str:
    """The number of images behind each AUROC, from an energy report's counts (genlab energy --auroc scores as
    many with the same --limit); ``other``: the out-of-distribution data set."""
    names = {"test": "clean test digits", "merged": "merged", "faded": "faded", "photos": "photo patches",
             "ood": f"{other} test images"}
    return "Images scored: " + ", ".join(f"{count:,} {names[split]}" for split, count in n.items()) + "."


def _reading_of_merged(energy: dict) -> str:
    """The merged-digit columns in words, model by model (the lecture expects merged digits' energies high)."""
    def means(r) -> str:
        m = r["mean_energy"]
        return f"mean energies: clean {m['test']:.3g}, faded {m['faded']:.3g}, merged {m['merged']:.3g}"

    said = []
    for name, r in energy.items():
        if "faded" not in r.get("mean_energy", {}):  # an energy table of an earlier genlab
            continue
        if r["auroc_merged"] < 0.5:
            said.append(f"{name} gives merged digits lower energies than clean ones, against the lecture's "
                        f"expectation ({means(r)})")
        elif r["auroc_merged_vs_faded"] < 0.7:
            said.append(f"{name} tells merged from clean digits at {r['auroc_merged']:.2f} but merged from faded "
                        f"ones only at {r['auroc_merged_vs_faded']:.2f}: mostly by faintness ({means(r)})")
        else:
            said.append(f"{name} gives merged digits higher energies than clean and than faded ones, as the lecture "
                        f"expects ({means(r)})")
    return ("Reading: " + "; ".join(said) + ".") if said else ""


# Pyro's reproduction of Sohn et al.'s MNIST quadrant task: negative conditional log-likelihood of the unseen
# quadrants on the test set, nats per image, for 1 / 2 / 3 observed quadrants (its README table, from the ELBO).
PYRO_TABLE = {"NN baseline (Pyro)": (100.4, 61.9, 25.4), "CVAE (Pyro)": (71.8, 51.0, 24.2)}


def report_section(evaluation: dict, figures: dict[str, Path]):
    """A report section with the quadrant table beside Pyro's and the conditional-sample table, from
    ``genlab evaluate`` results (model name -> results) of the conditional runs; None when there are none."""
    rows_q = [[name, *values] for name, values in PYRO_TABLE.items()]
    rows_c = []
    for name, r in evaluation.items():
        if "nll_is_q1" in r:
            k = r.get("nll_is_k")
            rows_q.append([f"{name}, importance sampled (k = {k})", *(r[f"nll_is_q{t}"] for t in (1, 2, 3))])
            rows_q.append([f"{name}, bound (-ELBO)", *(r[f"nll_bound_q{t}"] for t in (1, 2, 3))])
        if "cond_accuracy" in r:
            rows_c.append([name, r["cond_accuracy"], r.get("classifier_accuracy"), r["cond_fid_mean"],
                           r["cond_fid_max"], r["cond_spread_min"]])
    if len(rows_q) == len(PYRO_TABLE) and not rows_c:
        return None
    section = Section("conditional", "Conditional models")
    if len(rows_q) > len(PYRO_TABLE):
        section.table(["model", "1 quadrant", "2 quadrants", "3 quadrants"], rows_q,
                      "Negative conditional log-likelihood of the unseen quadrants of the test digits, nats per image "
                      "(grey targets, as Pyro's reproduction of Sohn et al. 2015)")
    for name, path in figures.items():
        section.figure(path, f"{name}: inputs, sampled completions, truth")
    if rows_c:
        section.table(["model", "accuracy", "classifier test accuracy", "mean class FID", "worst class FID",
                       "narrowest class spread"], rows_c,
                      "1,000 samples asked for per class: genlab's classifier accuracy on them, FID of each class "
                      "against the real test digits of that class, and each class's mean pairwise distance over "
                      "the real digits'")
    return section
