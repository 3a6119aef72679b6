"""The report opens in a real headless Chromium from disk: every image loads, every section is there."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import genlab.reproduce as reproduce_mod
from genlab.report import Section, render_markdown, write_report

pytestmark = pytest.mark.slow  # real server processes and a real browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _open_in_chromium(html_path: Path, screenshot: Path) -> dict:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("CI must have Debian's chromium for the report test (.ci/run installs it)")
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(html_path.resolve().as_uri())
            page.wait_for_load_state("load")
            info = page.evaluate("""() => ({
                images: Array.from(document.images).map(i => ({alt: i.alt, ok: i.complete && i.naturalWidth > 0})),
                sections: Array.from(document.querySelectorAll('section')).map(s => s.id),
                links: Array.from(document.querySelectorAll('nav a')).map(a => a.getAttribute('href')),
                external: Array.from(document.querySelectorAll('[src]')).map(e => e.getAttribute('src'))
                    .filter(s => !s.startsWith('data:')),
            })""")
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return info


def test_reproduce_report_in_chromium(tmp_path, monkeypatch):
    # The real reproduce pipeline on two models with one-epoch schedules, so the check stays quick, on a
    # newcomer's machine: an empty data directory and cache, no Debian data sets, so no Fashion-MNIST.
    from genlab.data import clear_cache

    for name in ("GENLAB_DATA_DIR", "XDG_CACHE_HOME"):
        monkeypatch.setenv(name, str(tmp_path / "empty"))
    monkeypatch.setenv("GENLAB_NO_SYSTEM_DATA", "1")
    clear_cache()
    short = [dataclasses.replace(s, quick={"epochs": 1}) for s in reproduce_mod.STAGES if s.model in ("ae", "dae")]
    monkeypatch.setattr(reproduce_mod, "STAGES", short)
    out = reproduce_mod.reproduce(tmp_path / "repro", quick=True)
    tables = json.loads((out / "tables.json").read_text())
    if len(os.sched_getaffinity(0)) >= 2:  # two cores: the quick stages trained in two worker processes
        for name in ("ae", "dae"):
            assert "epoch 1  step" in (out / name / "train.log").read_text()
    for name in ("ae", "dae"):  # the out-of-distribution column that needs no download, and a note for the other
        energy = tables["energy"][name]
        assert 0.0 <= energy["auroc_photos"] <= 1.0 and energy["auroc_ood"] is None
        assert "genlab datasets --download fashion-mnist" in energy["missing"]
    html_path = out / "report.html"
    info = _open_in_chromium(html_path, tmp_path / "report.png")

    assert info["external"] == []  # self-contained: nothing to fetch
    assert len(info["images"]) >= 8
    broken = [i["alt"] for i in info["images"] if not i["ok"]]
    assert broken == []
    for section in ("overview", "metrics", "inpainting", "energy", "departures", "ae", "dae"):
        assert section in info["sections"], section
    assert all(link.lstrip("#") in info["sections"] for link in info["links"])
    assert (tmp_path / "report.png").stat().st_size > 20_000
    markdown = (out / "report.md").read_text()
    assert "AUROC OOD: photo patches" in markdown and "the fashion-mnist comparison is left out" in markdown
    for fig in ("kernels.png", "reconstructions.png", "inpainting.png", "merged_digits.png"):
        assert fig in markdown, fig


def test_how_many_processes_train_the_stages(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    choose = reproduce_mod._training_processes
    assert choose("cpu", quick=True, n_jobs=5) == 2 and choose("cpu", quick=False, n_jobs=7) == 1
    # On a GPU each small model's steps wait on the host, so three processes share the card.
    assert choose("cuda", quick=False, n_jobs=7) == 3 and choose("cuda:1", quick=True, n_jobs=2) == 2
    assert choose("cuda", quick=False, n_jobs=1) == 1
    # --jobs decides, never beyond the stages left to train.
    assert choose("cpu", quick=False, n_jobs=7, asked=4) == 4 and choose("cuda", quick=False, n_jobs=2, asked=5) == 2
    assert choose("cuda", quick=False, n_jobs=7, asked=1) == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert choose("cuda", quick=False, n_jobs=7) == 1  # fewer than four cores: one process


def test_on_a_gpu_the_classifier_trains_beside_the_training_processes(tmp_path, monkeypatch, capfd):
    # On a GPU the training processes leave most cores idle, so the main process trains the sample-quality
    # classifier meanwhile. Forced here on a CPU, with one-epoch stages and an empty cache: the classifier is
    # trained once, on another thread, and evaluation waits for it (made slow here, so it would lose the race).
    import threading

    import genlab.evaluate
    from genlab.metrics import classifier as feature_classifier

    for name in ("GENLAB_DATA_DIR", "XDG_CACHE_HOME"):  # no classifier cached anywhere (mnist-5k needs no files)
        monkeypatch.setenv(name, str(tmp_path / "empty"))
    monkeypatch.setattr(reproduce_mod, "_classifier_alongside", lambda device, workers: workers > 1)
    short = [dataclasses.replace(s, quick={"epochs": 1}) for s in reproduce_mod.STAGES if s.model in ("ae", "vae")]
    monkeypatch.setattr(reproduce_mod, "STAGES", short)
    events = []
    real_get, real_evaluate = feature_classifier.get_classifier, genlab.evaluate.evaluate_run

    def slow_get(*args, **kwargs):
        if not events:
            time.sleep(10)
            events.append(("classifier", threading.current_thread() is threading.main_thread()))
        return real_get(*args, **kwargs)

    def evaluate(*args, **kwargs):
        events.append(("evaluate", threading.current_thread() is threading.main_thread()))
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(feature_classifier, "get_classifier", slow_get)
    monkeypatch.setattr(genlab.evaluate, "evaluate_run", evaluate)
    out = reproduce_mod.reproduce(tmp_path / "repro", quick=True, device="cpu", processes=2)
    assert events[:2] == [("classifier", False), ("evaluate", True)]
    assert capfd.readouterr().err.count("training the mnist-5k feature classifier once") == 1
    quality = json.loads((out / "tables.json").read_text())["quality"]
    assert set(quality) == {"reference (test vs train)", "vae"} and quality["vae"]["fid"] > 0

    # A failure there is the reproduction's failure, in one line, after the training.
    def broken(*args, **kwargs):
        raise reproduce_mod.GenlabError("no classifier today")
    monkeypatch.setattr(feature_classifier, "get_classifier", broken)
    with pytest.raises(reproduce_mod.GenlabError, match="no classifier today"):
        reproduce_mod.reproduce(tmp_path / "repro2", quick=True, device="cpu", processes=2)


def test_report_command_side_by_side(tmp_path, capsys):
    from genlab.cli import main

    runs = []
    for name in ("ae", "dae"):
        assert main(["train", name, "--dataset", "mnist-5k", "--epochs", "1", "--limit", "512",
                     "--eval-limit", "100", "--no-progress", "--out", str(tmp_path / name)]) == 0
        runs.append(str(tmp_path / name))
    # A second run of one name, in a folder whose name holds a quote: its own anchor, a safe one.
    shutil.copytree(tmp_path / "ae", tmp_path / "it's" / "ae")
    runs.append(str(tmp_path / "it's" / "ae"))
    # genlab evaluate keeps its numbers beside the run, where the report's table finds them.
    assert main(["evaluate", runs[0], "--limit", "50"]) == 0
    assert json.loads((tmp_path / "ae" / "evaluation.json").read_text())["images"] == 50
    # A quicker look at the same checkpoint is printed, and the fuller evaluation kept (it was replaced).
    assert main(["evaluate", runs[0], "--limit", "5", "--no-quality"]) == 0
    assert json.loads((tmp_path / "ae" / "evaluation.json").read_text())["images"] == 50
    assert main(["report", *runs, "--out", str(tmp_path / "report")]) == 0
    html = (tmp_path / "report" / "report.html").read_text()
    assert html.count("<section") == 4 and html.count("data:image/png;base64,") >= 5  # the table, then each run
    assert "Runs side by side" in html and "<section id='ae'>" in html and "<section id='ae-2'>" in html
    table = (tmp_path / "report" / "report.md").read_text().split("## ae")[0]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table.splitlines()
            if line.startswith(f"| {tmp_path}")]
    assert [row[0] for row in rows] == runs
    # Energies from evaluation.json (50 images) or, for runs genlab evaluate has not scored, computed here.
    assert rows[0][1:4] == ["ae", "mnist-5k", "1"] and rows[0][-1] == "50" and rows[2][-1] == "500"
    assert all(float(row[-2]) > 0 for row in rows)
    assert main(["report", runs[0], runs[0] + "/", "--out", str(tmp_path / "twice")]) == 2  # one run named twice
    capsys.readouterr()
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "all")]) == 0  # a folder of runs, as serve takes
    assert "<section id='dae'>" in (tmp_path / "all" / "report.html").read_text()
    # Its other folders (the reports above; a reproduction's folder of runs) were left out without a word.
    assert f"note: in {tmp_path}, it's, report are not a run and left out" in capsys.readouterr().err
    # A report.md of the user's was replaced (only report.html was looked for); genlab's own half-written one,
    # left by a write cut short, is finished.
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "report.md").write_text("my notes\n")
    assert main(["report", runs[0], "--out", str(tmp_path / "notes")]) == 2
    assert (tmp_path / "notes" / "report.md").read_text() == "my notes\n"
    (tmp_path / "report" / "report.html").unlink()
    assert main(["report", runs[0], "--out", str(tmp_path / "report")]) == 0
    # A run without its checkpoint (copied without its weights) was shown as any other, without a word.
    shutil.copytree(runs[0], tmp_path / "no-weights")
    (tmp_path / "no-weights" / "checkpoint.safetensors").unlink()
    capsys.readouterr()
    assert main(["report", str(tmp_path / "no-weights"), "--out", str(tmp_path / "r3")]) == 0
    assert f"note: {tmp_path / 'no-weights'} holds no checkpoint.safetensors" in capsys.readouterr().err
    assert "It holds no checkpoint (its weights)" in (tmp_path / "r3" / "report.md").read_text()


def test_reproduce_refuses_a_folder_it_did_not_write_or_of_another_kind_before_training(tmp_path, capsys):
    # A folder of the user's had its tables.json, report.md and figures replaced; a run of other settings copied
    # into OUT/ae was reused as the stage's; a quick reproduction's runs went into a full one; --data-dir naming
    # a file was refused after the first stage had trained.
    from genlab.cli import main

    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "tables.json").write_text("mine")
    other_kind = tmp_path / "quick"
    other_kind.mkdir()
    (other_kind / reproduce_mod.MARKER).write_text(json.dumps({"quick": True, "dataset": "mnist-5k"}))
    afile = tmp_path / "afile"
    afile.write_text("x")
    for argv, words in ((["--quick", "--out", theirs], "holds files that genlab reproduce did not write"),
                        (["--out", other_kind, "--data-dir", tmp_path], "holds a quick reproduction on mnist-5k, "
                         "and this is a reproduction on mnist-5k"),
                        (["--quick", "--data-dir", afile, "--out", tmp_path / "new"], "is a file, not a folder")):
        assert main(["reproduce", "--models", "ae", *map(str, argv)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err
    assert (theirs / "tables.json").read_text() == "mine" and not (tmp_path / "new").exists()


def test_reproduce_of_some_models_refuses_a_folder_where_another_stage_is_unfinished(tmp_path, capsys):
    # reproduce --models ae dae stopped by Ctrl-C in dae's stage, then reproduce --models ae into the same --out:
    # it wrote a report of ae alone, after which the first command (which the stop line said to run again) was
    # refused for the report it found, and dae stayed half-trained without a word.
    from genlab import config as cfgmod
    from genlab.cli import main
    from genlab.train import Callback, default_train_config, train

    class StopAfterTheFirstEpoch(Callback):
        def on_epoch(self, run, epoch, record):
            raise KeyboardInterrupt

    out = tmp_path / "rep"
    out.mkdir()
    (out / reproduce_mod.MARKER).write_text(json.dumps({"quick": True, "dataset": "mnist-5k"}))
    settings = {**cfgmod.to_dict(default_train_config("dae")), "dataset": "mnist-5k", "epochs": 3, "limit": 128,
                "eval_limit": 100, "progress": False, "figures": False, "out": str(out / "dae")}
    with pytest.raises(KeyboardInterrupt):
        train("dae", train_cfg=cfgmod.from_dict(cfgmod.TrainConfig, settings), callbacks=[StopAfterTheFirstEpoch()])
    capsys.readouterr()
    assert main(["reproduce", "--quick", "--models", "ae", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"genlab: error: --out {out} holds dae (epoch 1 of 3), left unfinished by an earlier reproduce; "
                   "go on with --models ae dae, or choose another --out"]
    assert sorted(p.name for p in out.iterdir()) == [reproduce_mod.MARKER, "dae"]  # nothing trained, nothing written
    # Stages of every default model: the earlier command named none; a damaged stage is said with its reason.
    for model in ("vae", "ebgan", "dcgan"):
        shutil.copytree(out / "dae", out / model)
    (out / "ebgan" / "config.json").write_text("{broken")
    assert main(["reproduce", "--quick", "--models", "ae", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds dae (epoch 1 of 3); vae (epoch 1 of 3); ebgan (damaged: " in err[0] and \
        err[0].endswith("go on with the same command without --models, or choose another --out"), err


def test_markdown_and_html_share_one_structure(tmp_path):
    png = tmp_path / "a.png"
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plt.imsave(png, [[0, 1], [1, 0]])
    section = Section("s1", "One").text("hello").figure(png, "a figure").table(["k", "v"], [["x", 0.5]], "cap")
    section.figure(tmp_path / "missing.png", "left out: no such file")
    html_path, md_path = write_report(tmp_path, "T", [section])
    html = html_path.read_text()
    assert "<section id='s1'>" in html and "data:image/png;base64," in html and "<td>0.5</td>" in html
    assert "missing.png" not in html
    md = render_markdown("T", [section], tmp_path)
    assert "![a figure](a.png)" in md and "| x | 0.5 |" in md


# -- stopping the reproduction -------------------------------------------------------------------------------------
def _tagged_processes(tag: str) -> list[int]:
    """Live processes whose environment holds ``tag`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and tag.encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_a_stopped_reproduction_leaves_no_process_behind_and_goes_on_where_it_stopped(tmp_path):
    # SIGTERM to the main process alone (as `timeout` or a job scheduler sends it) while two worker processes
    # train: one line, status 143, no worker left training; the same command then finishes, each epoch logged once.
    out, tag = tmp_path / "repro", f"genlab-test-{os.getpid()}-{time.time_ns()}"
    env = {**os.environ, "GENLAB_TEST_TAG": tag, "GENLAB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "genlab.cli", "reproduce", "--quick", "--models", "ae", "dae", "--out", str(out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    logs = [out / name / "train.log" for name in ("ae", "dae")]
    deadline = time.monotonic() + 120
    while not all(log.exists() and "epoch 1 " in log.read_text() for log in logs):  # both stages are training
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 143 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("genlab: reproduce interrupted by SIGTERM: every stage keeps")
    deadline = time.monotonic() + 10
    while _tagged_processes(tag) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _tagged_processes(tag)

    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    for name in ("ae", "dae"):
        epochs = [json.loads(line)["epoch"] for line in (out / name / "metrics.jsonl").read_text().splitlines()]
        assert epochs == list(range(1, 31)), (name, epochs)
    assert (out / "report.html").exists()


WORKER_STOPPED_BETWEEN_STAGES = """
import multiprocessing, sys, time
from concurrent.futures import ProcessPoolExecutor
from genlab import reproduce

def stage():
    from tqdm import tqdm  # its lock is a semaphore, as a training stage's progress makes
    for _ in tqdm(range(3), file=sys.stderr):
        pass

if __name__ == "__main__":
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=context, initializer=reproduce._start_worker,
                             initargs=(context.Event(),)) as pool:
        pool.submit(stage).result()
        for worker in multiprocessing.active_children():
            if worker.name.startswith("SpawnProcess"):
                worker.terminate()  # as the main process stops its workers, this one between stages
        time.sleep(1)
"""


def test_a_finished_stage_without_its_end_figures_gets_them(tmp_path, capsys):
    # Killed (kill -9) while a stage drew its end-of-run figures, the next reproduction reused the stage as
    # finished, and its figures stayed missing for good.
    from genlab.cli import main

    out = tmp_path / "rep"
    assert main(["reproduce", "--quick", "--models", "ae", "--out", str(out)]) == 0
    drawn = sorted(p.name for p in (out / "ae" / "figures").iterdir())
    shutil.rmtree(out / "ae" / "figures")
    (out / "report.html").unlink()
    capsys.readouterr()
    assert main(["reproduce", "--quick", "--models", "ae", "--out", str(out)]) == 0
    assert "ae: drawing the end-of-run figures its training did not finish" in capsys.readouterr().err
    assert sorted(p.name for p in (out / "ae" / "figures").iterdir()) == drawn and "loss_curves.png" in drawn


def _run_script(tmp_path, text: str) -> subprocess.CompletedProcess:
    """``text`` run as a script of its own (the spawned workers import it as their __main__), genlab's src/ first
    on its path."""
    script = tmp_path / "script.py"
    script.write_text(text)
    source = str(Path(__file__).resolve().parents[1] / "src")
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([source, os.environ.get("PYTHONPATH", "")])})


WORKER_WHOSE_MAIN_PROCESS_IS_GONE = """
import multiprocessing, sys, time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from genlab import reproduce

if __name__ == "__main__":
    context = multiprocessing.get_context("spawn")
    stopping, gone = context.Event(), context.Process(target=time.sleep, args=(0,))
    gone.start()
    gone.join()  # a main process that died before the worker began: its pid is nobody's parent now
    started = time.monotonic()
    with ProcessPoolExecutor(1, mp_context=context, initializer=reproduce._start_worker,
                             initargs=(stopping, gone.pid)) as pool:
        try:
            pool.submit(time.sleep, 60).result(timeout=30)  # a stage training on with nobody to report to
            ended = "finished"
        except BrokenProcessPool:
            ended = "left"
    print(ended, stopping.is_set(), round(time.monotonic() - started))
"""


def test_a_worker_whose_main_process_died_before_it_began_stops(tmp_path):
    # Killed in its first seconds (kill -9), the main process was gone before its workers read their parent's
    # pid: they watched init's instead, and trained every stage to the end with nobody to report to.
    # Stopped by a signal while it started, it then printed its initializer's traceback (SystemExit: 143).
    result = _run_script(tmp_path, WORKER_WHOSE_MAIN_PROCESS_IS_GONE)
    ended, stopped, seconds = result.stdout.split()
    assert ended == "left" and stopped == "True" and int(seconds) < 15, result.stdout + result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "Exception" not in result.stderr, result.stderr[-2000:]


def test_a_worker_stopped_between_stages_leaves_no_lock_behind(tmp_path):
    # Killed outright by SIGTERM, an idle worker left a semaphore to the resource tracker, which printed
    # "There appear to be 1 leaked semaphore objects" after reproduce's one line (a CI run caught it).
    result = _run_script(tmp_path, WORKER_STOPPED_BETWEEN_STAGES)
    assert result.returncode == 0 and "leaked" not in result.stderr, result.stderr[-2000:]


def test_figure_captions_name_the_lectures_figure_only_where_it_is_one():
    # "as the lecture's Fig. 4 (AE) and Fig. 6 (DAE)" was printed under the VAE's kernels, "Fig. 3" under the
    # EBGAN discriminator's reconstructions, and fifteen per-epoch histograms of each GAN filled its section.
    from genlab.report import _caption

    assert _caption(Path("kernels.png"), "ae").endswith("as the lecture's Fig. 4")
    assert _caption(Path("kernels.png"), "dae").endswith("as the lecture's Fig. 6")
    assert "Fig." not in _caption(Path("kernels.png"), "vae")
    assert "discriminator" in _caption(Path("reconstructions.png"), "ebgan")
    assert _caption(Path("energy_hist_epoch007.png"), "dcgan") is None
    assert "before training" in _caption(Path("tsne_epoch000.png"), "vae")
    assert "after epoch 10" in _caption(Path("tsne_epoch010.png"), "vae")
    assert _caption(Path("something_new.png"), "ae") == "something new"
