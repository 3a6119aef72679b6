"""Bad input is one line and status 2 from every entry point; checkpoints are checked before use; a run
directory has one owner and one history; data files are checked against their published checksums."""

from __future__ import annotations

import errno
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from genlab import checkpoint, config as cfgmod, rundir
import genlab.train as train_mod
from genlab.cli import main
from genlab.data import DataError, clear_cache, load_dataset
from genlab.data.files import encode_png
from genlab.errors import BUG_STATUS, GenlabError, one_line_errors
from genlab.models import MODELS
from genlab.train import default_train_config, train

from conftest import needs_mnist

REPO = Path(__file__).resolve().parents[1]
QUICK = ["--dataset", "mnist-5k", "--limit", "128", "--eval-limit", "100", "--batch-size", "64", "--epochs", "1",
         "--no-progress", "--no-figures"]


def quick_config(out: Path, **overrides) -> cfgmod.TrainConfig:
    base = {**cfgmod.to_dict(default_train_config("ae")), "dataset": "mnist-5k", "epochs": 2, "batch_size": 64,
            "limit": 128, "eval_limit": 100, "progress": False, "figures": False, "out": str(out), **overrides}
    return cfgmod.from_dict(cfgmod.TrainConfig, base)


@pytest.fixture(scope="module")
def ae_run(tmp_path_factory) -> Path:
    """A finished 2-epoch AE run; tests copy it before changing anything."""
    return train("ae", MODELS["ae"].Config(latent_dim=8), quick_config(tmp_path_factory.mktemp("runs") / "ae"))


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def cli(capsys, *argv) -> tuple[int, list[str], str]:
    """Run ``genlab ARGV`` in this process: (status, stderr lines, stdout)."""
    try:
        status = main([str(a) for a in argv])
    except SystemExit as e:  # argparse's errors
        status = e.code
    out = capsys.readouterr()
    return status, [x for x in out.err.splitlines() if x.strip()], out.out


def assert_one_line(status, lines, *words):
    assert status == 2 and len(lines) == 1 and "Traceback" not in lines[0], (status, lines)
    for word in words:
        assert word in lines[0], (word, lines)


def edit_checkpoint(run: Path, tensors=None, counters=None, meta_edit=None) -> None:
    path = run / checkpoint.CHECKPOINT
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    t = load_file(str(path))
    if tensors:
        t = tensors(t)
    if counters:
        meta = {**meta, "counters": json.dumps({**json.loads(meta["counters"]), **counters})}
    if meta_edit:
        meta = meta_edit(meta)
    # A file crafted whole (its checksum matching its tensors), so the checks behind the checksum are tested.
    meta = {**meta, "crc32": checkpoint.checksum(t)}
    save_file(t, str(path), metadata={**meta, "crc32_meta": checkpoint.metadata_checksum(meta)})


# -- validation in one place --------------------------------------------------------------------------------
@pytest.mark.parametrize("field,flag_value,value,words", [
    ("batch_size", "0", 0, "--batch-size must be >= 1"),
    ("lr", "nan", float("nan"), "--lr must be a finite number"),
    ("lr", "-1", -1.0, "--lr must be > 0"),
    ("epochs", "0", 0, "--epochs must be >= 1"),
    ("limit", "-5", -5, "--limit must be >= 0"),
    ("eval_limit", "-1", -1, "--eval-limit must be >= 0"),
    ("device", "tpu9", "tpu9", "--device must be auto, cpu, cuda or cuda:N"),
])
def test_flags_json_and_python_give_the_same_error(field, flag_value, value, words, capsys, ae_run, tmp_path):
    status, lines, _ = cli(capsys, "train", "ae", *QUICK, "--out", tmp_path / "flag", f"--{field.replace('_', '-')}",
                           flag_value)
    assert_one_line(status, lines, words)
    with pytest.raises(GenlabError, match=words.replace("+", r"\+")):
        cfgmod.validate(cfgmod.TrainConfig(**{field: value}))
    if isinstance(value, float) and value != value:
        return  # NaN is not JSON: read_json refuses it before validation (tested below)
    run = copy_run(ae_run, tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    config["train_config"][field] = value
    (run / "config.json").write_text(json.dumps(config))
    status, lines, _ = cli(capsys, "train", "--resume", run)
    assert_one_line(status, lines, words, "config.json")


@pytest.mark.parametrize("edit,words", [
    ({"limit": 64}, "limit 64 (trained with 128)"),
    ({"batch_size": 8}, "batch_size 8 (trained with 64)"),
    ({"classes": " 1 , 2"}, 'classes " 1 , 2" (trained with "")'),
    ({"seed": 5, "lr": 0.01}, "lr 0.01 (trained with 0.001), seed 5 (trained with 0)"),
])
def test_a_config_json_edited_to_other_settings_is_refused_not_followed(edit, words, capsys, ae_run, tmp_path):
    # --resume went on under the edited settings (another data set, limit, batch size, classes) and exited 0;
    # evaluate scored the run under them. The checkpoint keeps the settings it was trained with.
    run = copy_run(ae_run, tmp_path / "run")
    assert cli(capsys, "evaluate", run, "--no-quality", "--limit", "20")[0] == 0  # the report shows it unloaded
    config = json.loads((run / "config.json").read_text())
    config["train_config"].update(edit)
    (run / "config.json").write_text(json.dumps(config))
    for argv in (["train", "--resume", run, "--epochs", "3"], ["evaluate", run, "--no-quality"],
                 ["report", run, "--out", tmp_path / "report"]):
        status, lines, _ = cli(capsys, *argv)
        assert_one_line(status, lines, "was not trained with the settings of its config.json", words,
                        "put back the run's own config.json")
    assert checkpoint.read_counters(run / checkpoint.CHECKPOINT)["epoch"] == 2


def test_settings_that_change_no_number_may_change_and_an_older_checkpoint_has_none(capsys, ae_run, tmp_path):
    run = copy_run(ae_run, tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    config["train_config"].update(figures=True, progress=True, data_dir="/elsewhere", device="cpu")
    (run / "config.json").write_text(json.dumps(config))
    assert cli(capsys, "evaluate", run, "--no-quality")[0] == 0
    config["train_config"]["limit"] = 64
    (run / "config.json").write_text(json.dumps(config))
    # A setting genlab gained after the checkpoint was written is not compared (every run would be refused).
    def without_limit(meta):
        settings = json.loads(meta["settings"])
        del settings["train_config"]["limit"]
        return {**meta, "settings": json.dumps(settings)}
    edit_checkpoint(run, meta_edit=without_limit)
    assert cli(capsys, "evaluate", run, "--no-quality")[0] == 0
    edit_checkpoint(run, meta_edit=lambda meta: {k: v for k, v in meta.items() if k != "settings"})
    assert cli(capsys, "evaluate", run, "--no-quality")[0] == 0  # no settings to compare with: an older genlab's


@pytest.mark.parametrize("settings", ['[]', '{}', '{"model_config": 1, "train_config": {}}',
                                      '{"model_config": {}, "train_config": []}'])
def test_a_checkpoints_damaged_settings_are_the_checkpoints_damage(settings, capsys, ae_run, tmp_path):
    # They were blamed on config.json ("the file was edited: put back the run's own config.json").
    run = copy_run(ae_run, tmp_path / "run")
    edit_checkpoint(run, meta_edit=lambda meta: {**meta, "settings": settings})
    assert_one_line(*cli(capsys, "evaluate", run, "--no-quality")[:2], "is damaged or not a genlab checkpoint",
                    "its settings are not model_config and train_config as JSON objects")


def test_a_training_setting_missing_from_config_json_is_damage(capsys, ae_run, tmp_path):
    # "train_config": {} was read as the defaults: "dataset": "auto" scored a mnist-5k run on full MNIST.
    run = copy_run(ae_run, tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    del config["train_config"]["dataset"], config["train_config"]["limit"]
    (run / "config.json").write_text(json.dumps(config))
    status, lines, _ = cli(capsys, "evaluate", run, "--no-quality")
    assert_one_line(status, lines, "'train_config' lacks 'dataset', 'limit'", "the run directory is damaged")


@pytest.mark.parametrize("name,fields", [
    ("ae", {"latent_dim": 10**8}), ("vae", {"hidden": 10**6}), ("dcgan", {"ngf": 10**5}),
    ("dae", {"noise": float("inf")}), ("ebgan", {"margin": -1.0}), ("vae", {"ema_decay": 1.0}),
    ("ae", {"latent_dim": "eight"}), ("vae", {"sample_eval": 1}),
])
def test_model_config_ranges_are_declared_with_the_fields(name, fields):
    with pytest.raises(GenlabError, match="^--"):
        cfgmod.from_dict(MODELS[name].Config, fields)


def test_device_that_is_not_there_names_the_ones_that_are(capsys, tmp_path):
    missing = "cuda:99" if torch.cuda.is_available() else "cuda"
    status, lines, _ = cli(capsys, "train", "ae", *QUICK, "--out", tmp_path / "r", "--device", missing)
    assert_one_line(status, lines, "not available", "available: cpu")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("config,words", [
    ([1, 2, 3], "must hold a JSON object"),
    ("{not json", "is not valid JSON"),
    ('{"model": "ae", "model_config": {}, "train_config": {"lr": NaN}}', "is not valid JSON"),
    ({"model": "ae", "train_config": {}}, "lacks 'model_config'"),
    ({"model": "ae", "model_config": {"latent_dim": "8"}, "train_config": {}}, "--latent-dim must be a whole number"),
    ({"model": "ae", "model_config": [8], "train_config": {}}, "must be a JSON object"),
    ({"model": 3, "model_config": {}, "train_config": {}}, "names model 3"),
])
def test_damaged_config_json_is_one_line(config, words, capsys, ae_run, tmp_path):
    run = copy_run(ae_run, tmp_path / "run")
    (run / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    for argv in (["train", "--resume", run], ["evaluate", run, "--no-quality"], ["sample", run]):
        assert_one_line(*cli(capsys, *argv)[:2], words)


@pytest.mark.parametrize("edit,words", [
    ({"image_shape": {"channels": 3, "height": 28, "width": 28}}, "'image_shape' is"),
    ({"image_shape": "28x28"}, "while the model's config says channels 1, height 28, width 28"),
    ({"classes": [1, 2]}, "'classes' is '[1, 2]', not a list of class names"),
    ({"classes": ["a"]}, "'classes' is \"['a']\" while mnist-5k names no classes"),  # a cvae sampled class 0 only
    ({"world_size": 0}, "'world_size' is '0', not a number of processes"),
    ({"world_size": True}, "not a number of processes"),
])
def test_config_json_facts_that_disagree_with_the_model_are_one_line(edit, words, capsys, ae_run, tmp_path):
    # These were read by nobody, or read as they came: an edited image shape let every command run as if
    # nothing were wrong, and class names that were numbers reached the conditional models' labels.
    run = copy_run(ae_run, tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, **edit}))
    for argv in (["train", "--resume", run, "--epochs", "3"], ["evaluate", run, "--no-quality"]):
        assert_one_line(*cli(capsys, *argv)[:2], words, "the run directory is damaged")


def test_a_config_json_naming_another_model_is_one_line(capsys, ae_run, tmp_path):
    # A DAE has an AE's tensors, so only the model named in the checkpoint tells the two apart.
    run = copy_run(ae_run, tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "model": "dae"}))
    for argv in (["train", "--resume", run, "--epochs", "3"], ["evaluate", run, "--no-quality"], ["energy", run]):
        assert_one_line(*cli(capsys, *argv)[:2], "holds model 'ae', but its config.json names 'dae'")


@pytest.mark.parametrize("argv,words", [
    (["sample", "{run}", "-n", "0"], "must be between 1 and 10000"),
    (["evaluate", "{run}", "--quality"], "--quality measures a model's samples, and ae cannot sample"),  # was ignored
    (["sample", "{run}", "-n", "-5"], "must be between 1 and 10000"),
    (["sample", "{run}", "-n", "10000000"], "must be between 1 and 10000"),
    (["train", "--resume", "{run}", "--epochs", "-1"], "must be at least 1"),
    (["train", "--resume", "{run}", "--epochs", "1"], "already trained 2 epochs"),
    (["evaluate", "{run}", "--limit", "-1"], "must be at least 0"),
    (["evaluate", "{run}", "--device", "tpu9"], "--device must be"),
    (["evaluate", "{run}", "--iwae-k", "0"], "must be between 1"),
    (["train", "ae", *QUICK, "--out", "{run}/config.json"], "is a file, not a run directory"),
    (["energy", "{run}", "--limit", "10", "--out", "{run}/config.json/e.npy"], "config.json: File exists"),
    (["sample", "{run}", "--out", "{run}/samples.txt"], "ending in .png"),
    (["sample", "{run}", "--out", "{run}/.png"], "needs a name before .png"),
    (["train", "ae", *QUICK, "--image-size", "32", "--out", "{run}/x"], "mnist-5k is 28 x 28; --image-size resizes"),
    (["train", "vae", "--latent-dims", "5"], "did you mean --latent-dim? (see genlab train vae --help)"),
    (["evaluate", "{run}", "--bogus"], "unrecognized arguments: --bogus (see genlab evaluate --help)"),
    (["energy", "{run}", "--seed", "99999999999999999999"], "must be between 0 and 4294967295"),
    (["inpaint", "{run}", "--seed", "-5"], "must be between 0 and 4294967295"),
    # Once accepted in silence: the model flags were checked, then dropped; the server bound every interface.
    (["train", "--resume", "{run}", "--epochs", "3", "vae", "--lr", "5"], "not vae too"),
    (["serve", "{run}", "--host", "", "--port", "0"], "--host is empty; give a value, or leave the flag out"),
    (["train", "--resume", "{run}", "--device", ""], "--device is empty; give a value, or leave the flag out"),
    (["energy", "{run}", "--images", ""], "--images is empty"),
    # A required one was told "or leave the flag out"; train's --out '' was the default folder.
    (["denoise", "{run}", "--images", "{run}", "--out", ""], "--out is empty; give a value (see genlab denoise"),
    (["report", "{run}", ""], "RUN_DIR is empty; give a value (see genlab report"),
    (["evaluate", ""], "RUN_DIR is empty; give a value (see genlab evaluate"),
    (["train", "ae", "--out", ""], "--out is empty; give a value, or leave the flag out"),
    (["report", "{run}", "--out", "/dev/null"], "/dev/null: File exists and is not a folder; give a folder"),
    (["report", "{run}", "--device", "tpu9", "--out", "{run}/r"], "--device must be auto, cpu, cuda or cuda:N"),
    (["train", "ae", *QUICK, "--classes", "\u0663"], "--classes must be comma-separated labels (0 to 999)"),
    (["train", "ae", *QUICK, "--lr-schedule", "cosine", "--lr-final", "5"], "the cosine schedule decays from --lr"),
    # settings that another one switches on, given without it, did nothing
    (["train", "ae", *QUICK, "--lr-final", "0.5"], "--lr-final is where the cosine schedule ends; add --lr-schedule"),
    (["train", "vae", *QUICK, "--iwae-k", "5", "--iwae-from", "1"], "--iwae-k and --iwae-from set the IWAE objective"),
    (["train", "vae", *QUICK, "--objective", "iwae", "--iwae-from", "1000000"],
     "--iwae-from 1000000 is past the run's 1 epoch, so it would never train on L_k"),
    # Said as something else: "argument MODEL: invalid choice: '0.1'", "does not exist", "Not a directory".
    (["train", "--resume", "{run}", "--lr", "0.1"], "--lr is a setting of a new run; --resume goes on"),
    # argparse kept the last and trained it, the other passed over without a word
    (["train", "--resume", "{run}", "--resume={run}/c", "--epochs", "5"], "--resume is given more than once"),
    (["train", "--resum", "{run}", "--resume", "{run}/c"], "--resume is given more than once"),  # abbreviated
    (["energy", "{run}", "--images", "{run}/loop"], "a symbolic link that leads nowhere"),
    (["datasets", "--data-dir", "   "], "--data-dir is blank"),
    (["datasets", "--data-dir", "{run}/config.json"], "config.json is a file, not a folder; name the data"),
    (["train", "ae", *QUICK, "--classes", "3 5", "--out", "{run}/c"], "--classes must be comma-separated labels"),
    (["train", "ae", *QUICK, "--classes", " ", "--out", "{run}/c"], "got ' '"),
    (["sample", "{run}", "--label", "\u0663"], "expected a whole number, got '\u0663'"),  # int() reads it as 3
    # A model's and training's own flags read them too, and "1_0" as 10.
    (["train", "ae", *QUICK, "--latent-dim", "\u0663", "--out", "{run}/c"], "expected a whole number, got '\u0663'"),
    (["train", "ae", *QUICK, "--latent-dim", "1_0", "--out", "{run}/c"], "expected a whole number, got '1_0'"),
    (["train", "ae", *QUICK, "--lr", "\u0660.\u0661", "--out", "{run}/c"], "expected a number, got"),
    (["energy", "{run}", "--images", "{run}", "--fpr", "1_0e-3"], "expected a number, got '1_0e-3'"),
    (["serve", "{run}", "{run}/", "--port", "0"], "is named twice; name each run once"),
])
def test_out_of_range_requests_are_one_line(argv, words, capsys, ae_run, tmp_path):
    run = copy_run(ae_run, tmp_path / "run")
    (run / "loop").symlink_to(run / "loop")
    assert_one_line(*cli(capsys, *[a.format(run=run) for a in argv])[:2], words)


def test_a_run_folder_named_like_a_flag_is_told_how_to_write(capsys, ae_run, tmp_path, monkeypatch):
    # train --out=-run makes one; "genlab evaluate -run" then said only "the following arguments are required".
    copy_run(ae_run, tmp_path / "-run")
    monkeypatch.chdir(tmp_path)
    assert_one_line(*cli(capsys, "evaluate", "-run")[:2], "-run is read as a flag, though a file of that name is "
                                                         "here: write ./-run")
    copy_run(ae_run, tmp_path / "-1")  # a value argparse read as one (a negative number) is not said to be a flag
    status, lines = cli(capsys, "energy", "-run", "--limit", "-1")[:2]
    assert status == 2 and "read as a flag" not in lines[0] and "--limit" in lines[0], lines


def test_evaluate_json_prints_null_for_values_that_are_not_finite(capsys, ae_run, tmp_path):
    # Finite weights so large that sums of their products overflow (inf - inf is NaN).
    run = copy_run(ae_run, tmp_path / "run")
    huge = lambda w: torch.where(torch.arange(w.numel()).view_as(w) % 2 == 0, 3e38, -3e38)  # noqa: E731
    edit_checkpoint(run, tensors=lambda t: {**t, "model/encoder.0.weight": huge(t["model/encoder.0.weight"])})
    status, lines, out = cli(capsys, "evaluate", run, "--json", "--no-quality", "--limit", "20")
    assert status == 0
    results = json.loads(out, parse_constant=lambda name: pytest.fail(f"{name} printed: not JSON"))
    assert results["loss"] is None and results["images"] == 20


def test_a_checkpoint_with_weights_that_are_not_finite_is_refused_by_every_command(capsys, ae_run, tmp_path):
    # Every number such a model gives is NaN: energies flagged nothing, denoise wrote black images, sample a
    # blank grid, all with exit status 0.
    run = copy_run(ae_run, tmp_path / "run")
    edit_checkpoint(run, tensors=lambda t: {**t, "model/decoder.0.bias": t["model/decoder.0.bias"] * float("nan")})
    png = tmp_path / "digit.png"
    png.write_bytes(encode_png(load_dataset("mnist-5k", "test").images[0].numpy()))
    for argv in (["evaluate", run, "--no-quality"], ["energy", run, "--images", png], ["train", "--resume", run,
                 "--epochs", "3"], ["denoise", run, "--images", png, "--out", tmp_path / "out"], ["inpaint", run]):
        assert_one_line(*cli(capsys, *argv)[:2], "tensor model/decoder.0.bias holds NaN or infinite values")


def test_energy_out_is_whole_or_not_written_and_never_waits_on_a_pipe(ae_run, tmp_path):
    # --out was opened in place: a write that failed part-way (a full disk; here the file-size limit, which
    # fails a write as a full disk does) left the user's earlier file cut short, and a FIFO there made the
    # command wait for a reader for ever.
    import resource

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))

    kept = tmp_path / "energies.csv"
    kept.write_text("energy\n1\n2\n")
    r = subprocess.run([sys.executable, "-m", "genlab.cli", "energy", str(ae_run), "--limit", "100", "--out",
                        str(kept)], capture_output=True, text=True, preexec_fn=small_files, timeout=300)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert f"{kept}: File too large; free space" in r.stderr
    assert kept.read_text() == "energy\n1\n2\n" and sorted(p.name for p in tmp_path.iterdir()) == ["energies.csv"]
    os.mkfifo(tmp_path / "pipe.csv")
    (tmp_path / "link.npy").symlink_to(tmp_path / "pipe.csv")
    for name in ("pipe.csv", "link.npy"):
        r = subprocess.run([sys.executable, "-m", "genlab.cli", "energy", str(ae_run), "--limit", "10", "--out",
                            str(tmp_path / name)], capture_output=True, text=True, timeout=300)
        assert r.returncode == 2 and "pipe.csv is not a regular file" in r.stderr, r.stderr
    (tmp_path / "to-kept.csv").symlink_to(kept)  # a link is written through, as opening it did
    r = subprocess.run([sys.executable, "-m", "genlab.cli", "energy", str(ae_run), "--limit", "3", "--out",
                        str(tmp_path / "to-kept.csv")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and (tmp_path / "to-kept.csv").is_symlink(), r.stderr
    assert len(kept.read_text().splitlines()) == 4
    # ... but not into a file of another kind: a link named scores.csv to the run's checkpoint replaced it
    run = copy_run(ae_run, tmp_path / "run")
    (tmp_path / "scores.csv").symlink_to(run / checkpoint.CHECKPOINT)
    before = (run / checkpoint.CHECKPOINT).read_bytes()
    r = subprocess.run([sys.executable, "-m", "genlab.cli", "energy", str(run), "--limit", "3", "--out",
                        str(tmp_path / "scores.csv")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "a file of another kind" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert (run / checkpoint.CHECKPOINT).read_bytes() == before


def test_file_names_the_output_encoding_cannot_carry_are_printed_not_a_traceback(ae_run, tmp_path):
    # A file name that is not valid UTF-8, or a character an ASCII terminal lacks, ended energy, denoise and
    # the error lines in a UnicodeEncodeError traceback (exit 70).
    png = encode_png(load_dataset("mnist-5k", "test").images[0].numpy())
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / os.fsdecode(b"caf\xe9.png")).write_bytes(png)
    (folder / "\u00fcber-\u20ac.png").write_bytes(png)
    env = {**os.environ, "PYTHONIOENCODING": "ascii:strict"}
    r = subprocess.run([sys.executable, "-m", "genlab.cli", "energy", str(ae_run), "--images", str(folder)],
                       capture_output=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert b"/caf\xe9.png," in r.stdout and b"/\\xfcber-\\u20ac.png," in r.stdout  # the bytes on disk; escapes
    for argv in (["denoise", str(ae_run), "--images", str(folder), "--out", str(tmp_path / "\u00f6ut")],
                 ["energy", str(tmp_path / "n\u00f6")]):
        r = subprocess.run([sys.executable, "-m", "genlab.cli", *argv], capture_output=True, env=env, timeout=300)
        assert r.returncode in (0, 2) and b"Traceback" not in r.stderr and b"\\xf6" in r.stdout + r.stderr, r


def test_denoise_out_that_is_a_file_is_said_so(ae_run, tmp_path, capsys):
    # --out naming a file (or /dev/null) was "cannot write the repairs ... free space": advice for another trouble.
    png = tmp_path / "digit.png"
    png.write_bytes(encode_png(load_dataset("mnist-5k", "test").images[0].numpy()))
    for out in (png, Path(os.devnull)):
        assert_one_line(*cli(capsys, "denoise", ae_run, "--images", png, "--out", out)[:2], "is a file, not a folder")
    assert png.stat().st_size > 0


def test_the_largest_sample_grid_is_written_pixel_for_pixel(tmp_path):
    # sample -n 10000 drew a 6000 x 6000 matplotlib figure: 3.8 GB of memory and 40 s on 2 cores. Above
    # MAX_FIGURE_PIXELS the grid is written as its own pixels; small grids keep their titled figure.
    import cv2

    from genlab.viz.figures import save_grid

    images = torch.rand(10_000, 1, 28, 28)
    save_grid(tmp_path / "big.png", images, ncol=100)
    got = cv2.imread(str(tmp_path / "big.png"), cv2.IMREAD_UNCHANGED)
    assert got.shape == (3002, 3002) and got.dtype == "uint8"
    assert torch.equal(torch.from_numpy(got[2:30, 32:60]), (images[1, 0] * 255).round().byte())  # row 0, column 1
    assert (got[:2] == 255).all() and (got[30:32] == 255).all()  # the white gaps
    save_grid(tmp_path / "small.png", images[:64], ncol=8, title="samples")
    assert cv2.imread(str(tmp_path / "small.png")).shape[:2] == (542, 520)  # matplotlib's figure, 100 dpi
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.png", "small.png"]  # no temporary file left


def test_a_narrow_grids_title_is_wrapped_inside_the_figure(tmp_path, monkeypatch):
    # A conditional model's 10 x 1 grid titled "...: 10 samples, one row per class 0 to 9" showed its middle.
    import genlab.viz.figures as figures

    drawn = []
    monkeypatch.setattr(figures, "save_figure", lambda fig, path: drawn.append(fig) or path)
    for ncol in (1, 2, 8):
        figures.save_grid(tmp_path / "g.png", torch.rand(10 * ncol, 1, 28, 28), ncol=ncol,
                          title="CVAE: 10 samples, one row per class 0 to 9")
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    for fig in drawn:
        fig.tight_layout()
        renderer = FigureCanvasAgg(fig).get_renderer()
        title = fig.axes[0].title.get_window_extent(renderer)
        page = fig.bbox
        assert page.x0 <= title.x0 and title.x1 <= page.x1 and title.y1 <= page.y1, (title, page)


def test_weights_that_become_nan_are_never_checkpointed(tmp_path, monkeypatch):
    # The last step of epoch 2 leaves a NaN in the weights after its loss was finite: the epoch's checkpoint
    # is not written, epoch 1's is kept.
    import genlab.train as train_mod

    real_step, calls = train_mod._step, {"n": 0}

    def step_then_poison(model, *args, **kwargs):
        out = real_step(model, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 4:  # 2 batches of 64 an epoch
            with torch.no_grad():
                model.decoder[0].bias[0] = float("nan")
        return out

    monkeypatch.setattr(train_mod, "_step", step_then_poison)
    with pytest.raises(train_mod.TrainingDiverged, match="weight decoder.0.bias became NaN or infinite in epoch 2"):
        train("ae", MODELS["ae"].Config(latent_dim=8), quick_config(tmp_path / "run", epochs=3))
    assert checkpoint.load_run(tmp_path / "run").counters["epoch"] == 1


def test_evaluate_json_gives_one_value_per_term(capsys, tmp_path):
    # The VAE's likelihood pass drew its own noise and overwrote loss_sampled, which then differed from "loss".
    status, lines, _ = cli(capsys, "train", "vae", *QUICK, "--out", tmp_path / "vae")
    assert status == 0, lines
    status, lines, out = cli(capsys, "evaluate", tmp_path / "vae", "--json", "--no-quality", "--limit", "50",
                             "--iwae-k", "5")
    assert status == 0, lines
    results = json.loads(out)
    assert results["loss"] == results["loss_sampled"] == results["neg_elbo"] != results["loss_mean"]


def test_report_does_not_replace_an_existing_report(capsys, ae_run, tmp_path):
    out = tmp_path / "rep"
    out.mkdir()
    (out / "report.html").write_text("keep")
    assert_one_line(*cli(capsys, "report", ae_run, "--out", out)[:2], "already holds a report")
    assert (out / "report.html").read_text() == "keep"
    damaged = copy_run(ae_run, tmp_path / "damaged")
    (damaged / "metrics.jsonl").write_text('{"epoch": 1}\n{"epo')
    assert_one_line(*cli(capsys, "report", damaged, "--out", tmp_path / "rep2")[:2], "line 2")


@pytest.mark.parametrize("value", ["abc", [1, 2], True, None, {"a": 1}])
def test_a_metrics_value_that_is_not_a_number_is_one_line(value, capsys, ae_run, tmp_path):
    # The report printed a hand-edited "abc" as the test loss; a resumed run carried it into its loss curves.
    run = copy_run(ae_run, tmp_path / "run")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    records[-1]["test/loss"] = value
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    words = f"line {len(records)}: test/loss is {json.dumps(value)}, not a number"
    assert_one_line(*cli(capsys, "report", run, "--out", tmp_path / "rep")[:2], words)
    assert_one_line(*cli(capsys, "train", "--resume", run, "--epochs", "3")[:2], words)
    assert not (tmp_path / "rep").exists()


def test_a_metrics_line_nested_100000_deep_is_one_line(capsys, ae_run, tmp_path):
    run = copy_run(ae_run, tmp_path / "run")
    with open(run / "metrics.jsonl", "a") as f:
        f.write("[" * 100_000 + "\n" + (run / "metrics.jsonl").read_text().splitlines()[0] + "\n")
    assert_one_line(*cli(capsys, "report", run, "--out", tmp_path / "rep")[:2], "line 3 is not a metrics record")
    assert_one_line(*cli(capsys, "train", "--resume", run, "--epochs", "3")[:2], "line 3 is damaged")


def test_a_metrics_log_that_is_a_fifo_is_one_line_not_a_wait(ae_run, tmp_path):
    # Reading a FIFO waits for a writer that never comes: --resume hung with no output.
    run = copy_run(ae_run, tmp_path / "run")
    (run / "metrics.jsonl").unlink()
    os.mkfifo(run / "metrics.jsonl")
    done = subprocess.run([sys.executable, "-m", "genlab.cli", "train", "--resume", str(run), "--epochs", "3"],
                          capture_output=True, text=True, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "is not a regular file" in lines[0], done.stderr


def test_a_config_that_is_a_fifo_is_named_as_such_by_report_and_serve(ae_run, tmp_path):
    # Both said "no config.json" beside the FIFO that was there (evaluate named it).
    run = copy_run(ae_run, tmp_path / "run")
    (run / "config.json").unlink()
    os.mkfifo(run / "config.json")
    for argv in (("report", run, "--out", tmp_path / "rep"), ("serve", run, "--port", "0")):
        done = subprocess.run([sys.executable, "-m", "genlab.cli", *map(str, argv)], capture_output=True, text=True,
                              timeout=120)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and lines == [f"genlab: error: {run / 'config.json'} is not a regular file (a "
                                                  "FIFO, a device?); the run directory is damaged"], done.stderr


def test_denoise_never_writes_over_its_own_input_images(ae_run, tmp_path, capsys):
    from genlab.data.files import encode_png

    folder = tmp_path / "mine"
    folder.mkdir()
    originals = {}
    for name in ("a.png", "b.png"):
        originals[name] = encode_png(load_dataset("mnist-5k", "test").images[len(originals)].numpy())
        (folder / name).write_bytes(originals[name])
    assert_one_line(*cli(capsys, "denoise", ae_run, "--images", folder, "--out", folder)[:2],
                    "would overwrite the input image", "choose another folder")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == originals
    # Nor over a file already in --out, nor one repair over another (x-pair.png's repair and x.png's pair).
    (folder / "a-pair.png").write_bytes(originals["a.png"])
    out = tmp_path / "out"
    status, lines, _ = cli(capsys, "denoise", ae_run, "--images", folder, "--out", out)
    assert status == 0, lines
    assert sorted(p.name for p in out.iterdir()) == ["a-2-pair.png", "a-2.png", "a-pair-pair.png", "a-pair.png",
                                                      "b-pair.png", "b.png"]
    (out / "b.png").write_bytes(b"a file of the user's")
    assert_one_line(*cli(capsys, "denoise", ae_run, "--images", folder, "--out", out)[:2], "already holds")
    assert (out / "b.png").read_bytes() == b"a file of the user's"


def test_denoise_stopped_part_way_keeps_nothing_and_says_so(ae_run, tmp_path, capsys, monkeypatch):
    # Stopped by SIGTERM it left the repairs written so far, said only "stopped by SIGTERM", and the same
    # command then refused the folder as not empty.
    from genlab.data.files import encode_png
    from genlab.errors import Stopped

    folder = tmp_path / "mine"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.png").write_bytes(encode_png(load_dataset("mnist-5k", "test").images[i].numpy()))
    real, writes = cfgmod.write_atomically, []

    def stopped_at_the_third(path, data, **kwargs):
        writes.append(path)
        if len(writes) == 3:
            raise Stopped("stopped by SIGTERM", signal.SIGTERM)
        return real(path, data, **kwargs)

    monkeypatch.setattr(cfgmod, "write_atomically", stopped_at_the_third)
    status, lines, _ = cli(capsys, "denoise", ae_run, "--images", folder, "--out", tmp_path / "out")
    assert status == 128 + signal.SIGTERM and lines == [
        f"genlab: stopped by SIGTERM; no repair was kept in {tmp_path / 'out'}: run the command again"]
    assert not (tmp_path / "out").exists()
    monkeypatch.setattr(cfgmod, "write_atomically", real)
    assert cli(capsys, "denoise", ae_run, "--images", folder, "--out", tmp_path / "out")[0] == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_ends_any_command_with_one_line(signum, ae_run):
    # serve and the commands that do not train died of SIGTERM in silence; they now end as Ctrl-C does. A
    # SIGHUP (a closed terminal) left the explorer serving, after a traceback from inside its event loop.
    pytest.importorskip("uvicorn")
    server = subprocess.Popen([sys.executable, "-m", "genlab.cli", "serve", str(ae_run), "--port", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        assert "genlab serve: http://" in line
        url = line.split()[2] + "api/models"
        for _ in range(100):  # up and answering: a stop from then on is uvicorn's graceful one
            try:
                urllib.request.urlopen(url, timeout=5).read()
                break
            except OSError:
                time.sleep(0.1)
        server.send_signal(signum)
        err = server.communicate(timeout=60)[1]
    finally:
        server.kill()
    name = signal.Signals(signum).name
    assert server.returncode == 128 + signum and err.strip().splitlines() == [f"genlab: stopped by {name}"], err


@pytest.mark.parametrize("value,accepted", [("0", False), ("", False), ("two", False), ("2,0", False),
                                            ("99999999999999999999", False), ("2", True), ("4, 2", True)])
def test_a_thread_count_that_is_not_one_is_one_line(value, accepted):
    # OpenMP printed its own warning as PyTorch loaded, ignored the value and genlab went on.
    done = subprocess.run([sys.executable, "-m", "genlab.cli", "datasets"], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "OMP_NUM_THREADS": value})
    if accepted:
        assert done.returncode == 0 and "libgomp" not in done.stderr, done.stderr
    else:
        assert done.returncode == 2 and done.stderr.splitlines() == [
            f"genlab: error: OMP_NUM_THREADS={value!r} is not a number of threads; set it to a whole number from "
            "1 to 65536 or unset it"], done.stderr


@pytest.mark.parametrize("settings,words", [
    ({"OPENCV_IO_MAX_IMAGE_PIXELS": "1e9"}, "OPENCV_IO_MAX_IMAGE_PIXELS='1e9' is not a number of pixels"),
    ({"OPENCV_IO_MAX_IMAGE_PIXELS": ""}, "OPENCV_IO_MAX_IMAGE_PIXELS='' is not a number of pixels"),
    ({"OMP_WAIT_POLICY": "garbage"}, "OMP_WAIT_POLICY='garbage' is not a wait policy; set it to PASSIVE or ACTIVE"),
    ({"OPENCV_IO_MAX_IMAGE_PIXELS": "500000000", "OMP_WAIT_POLICY": "active"}, None),
])
def test_library_settings_they_cannot_read_are_one_line(settings, words):
    # OpenCV aborted every command as it loaded ("terminate called after throwing ... stoull", status 134), and
    # OpenMP printed its own complaint and genlab went on.
    done = subprocess.run([sys.executable, "-m", "genlab.cli", "datasets"], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **settings})
    if words is None:
        assert done.returncode == 0 and "libgomp" not in done.stderr, done.stderr
    else:
        lines = done.stderr.splitlines()
        assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"genlab: error: {words}"), lines


def test_pixel_limits_opencv_cannot_read_are_found_without_starting_it():
    # What OpenCV reads with std::stoull: ASCII digits only, below 2**64 (" 5", "-1", "1e9" and 2**64 aborted).
    script = ("import genlab, os; print(genlab.ENVIRONMENT_PROBLEMS != [], "
              "os.environ['OPENCV_IO_MAX_IMAGE_PIXELS'])")
    for value, refused in ((" 5", True), ("-1", True), (str(2**64), True), ("\u0665", True), ("abc", True),
                           (str(2**64 - 1), False), ("5", False)):
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                              env={**os.environ, "OPENCV_IO_MAX_IMAGE_PIXELS": value})
        assert done.stdout.split() == [str(refused), str(1 << 27) if refused else value], (value, done.stderr)


@pytest.mark.parametrize("signum,line", [(signal.SIGINT, "genlab: interrupted"),
                                         (signal.SIGTERM, "genlab: stopped by SIGTERM"),
                                         (signal.SIGHUP, "genlab: stopped by SIGHUP")])
def test_a_signal_while_pytorch_loads_is_one_line(signum, line):
    # Sent while the command's imports load (PyTorch takes a second or more): a KeyboardInterrupt traceback from
    # inside an import, an abort from C++, or (SIGTERM) a death without a word.
    process = subprocess.Popen([sys.executable, "-m", "genlab.cli", "evaluate", "no-such-run"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    maps, deadline = Path(f"/proc/{process.pid}/maps"), time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None and "libtorch" not in maps.read_text():
        time.sleep(0.01)  # PyTorch's library mapped: its import has begun, inside main
    assert process.poll() is None, "the command ended before the signal; it cannot test this here"
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signum and err.strip().splitlines() == [line], err


def test_a_reader_that_goes_away_ends_the_command_quietly():
    # genlab energy RUN | head: the pipe closed under a long listing, and genlab said "error: Broken pipe".
    script = ("import sys; from genlab.errors import one_line_errors\n"
              "def main():\n    for i in range(10 ** 6):\n        print(i)\n    return 0\n"
              "sys.exit(one_line_errors(main))")
    done = subprocess.run(f"{sys.executable} -c '{script}' | head -1", shell=True, capture_output=True, text=True,
                          timeout=60)
    assert done.stdout == "0\n" and done.stderr == "", done.stderr


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (a device that is always full)")
@pytest.mark.parametrize("argv,unbuffered", [(["datasets"], False), (["--version"], True), (["--version"], False),
                                            (["train", "ae", "--help"], True)])
def test_a_full_standard_output_is_named_in_one_line(argv, unbuffered):
    # > /dev/full: "No space left on device" without a word of which file, or Python's "Exception ignored"
    # traceback and status 120 where the output was still buffered when the command ended.
    # Unbuffered (python -u), the failure met argparse's --help and --version, which ignore it: status 0.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "genlab.cli", *argv], stdout=full, stderr=subprocess.PIPE,
                              text=True, timeout=120, env={**env, **({"PYTHONUNBUFFERED": "1"} if unbuffered else {})})
    assert done.returncode == 2 and done.stderr.splitlines() == [
        "genlab: error: standard output: No space left on device; free space (or raise the limit) and try again"]


def test_an_error_line_is_written_whole_even_unbuffered():
    # Under python -u (PYTHONUNBUFFERED), print wrote a line and its end in two writes: the error lines of two
    # processes of one run came out glued, "...one command)genlab: error: rank 1: ...", then an empty line.
    script = ("import os, sys\nwrites, real = [], os.write\n"
              "def write(fd, data):\n    if fd == 2:\n        writes.append(bytes(data))\n    return real(fd, data)\n"
              "os.write = write\nfrom genlab.cli import main\nsys.argv = ['genlab', 'evaluate', 'no-such-run']\ntry:\n    status = main()\n"
              "except SystemExit as e:\n    status = e.code\nprint(status, repr(writes))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    status, writes = done.stdout.split(" ", 1)
    writes = eval(writes)  # a list of bytes, as repr wrote it
    assert status == "2" and len(writes) == 1 and writes[0].startswith(b"genlab: error: ") \
        and writes[0].endswith(b"\n"), (done.stdout, done.stderr)


def test_a_signal_after_the_commands_last_line_ends_the_process_at_once_with_that_lines_status():
    # A second Ctrl-C right after the first ("genlab: interrupted") raised KeyboardInterrupt inside the exit's
    # handlers: "Exception ignored in atexit callback" and PyTorch's traceback; a SIGTERM just after "interrupted
    # by SIGINT" then ended the process with 143, not the line's 130. A caller's main(argv) keeps its handlers.
    script = ("import os, signal, sys, time\nfrom genlab.cli import main\ntry:\n    main(['--version'])\n"
              "except SystemExit:\n    pass\nkept = signal.getsignal(signal.SIGINT) is signal.default_int_handler\n"
              "sys.argv = ['genlab', '--version']\ntry:\n    main()\nexcept SystemExit:\n    pass\n"
              "print(kept, flush=True)\nprint('buffered')\n"
              "os.kill(os.getpid(), signal.SIGTERM)\ntime.sleep(30)\nprint('not reached')")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.splitlines()[-2:] == ["True", "buffered"], (done.returncode,
                                                                                          done.stdout, done.stderr)


def test_a_bug_shows_its_traceback_and_asks_for_a_report(capsys):
    def bug():
        raise ZeroDivisionError("oops")
    assert one_line_errors(bug) == BUG_STATUS
    err = capsys.readouterr().err
    assert "Traceback" in err and "ZeroDivisionError" in err and err.strip().splitlines()[-1].startswith(
        "genlab: internal error: this is a bug")

    def full():
        raise OSError(errno.ENOSPC, "No space left on device", "/some/file")
    assert one_line_errors(full) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "/some/file: No space left on device; free space" in lines[0]



@pytest.mark.parametrize("error,words", [
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
                            "79 GiB"), "out of device memory (CUDA out of memory); lower --batch-size"),
    (RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported"),
     "out of device memory"),
    # What CUDA says where the GPU is in exclusive compute mode and another process holds it (reproduce's
    # training processes, a second genlab command); it reaches reproduce from its worker as the same text.
    (RuntimeError("CUDA error: CUDA-capable device(s) is/are busy or unavailable\nCUDA kernel errors might be "
                  "asynchronously reported"), "the GPU is taken: it admits one process at a time"),
])
def test_a_gpu_that_cannot_take_the_work_is_one_line(error, words, capsys):
    def fails():
        raise error
    assert one_line_errors(fails) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], lines

def test_a_run_stopped_by_a_signal_is_one_line_and_128_plus_the_signal_wherever_it_is_caught(capsys, tmp_path):
    # A benchmark script calls genlab.train.train under one_line_errors; `timeout` then stopped one with
    # SIGTERM and it printed "internal error: this is a bug". A stop is now its own kind of exit.
    from genlab.train import Interrupted

    def stopped():
        raise Interrupted(tmp_path / "run", signal.SIGTERM)
    assert one_line_errors(stopped, "throughput.py") == 143
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"throughput.py: interrupted by SIGTERM: checkpoint saved; continue with: genlab train "
                     f"--resume {tmp_path / 'run'}"]


# -- checkpoints checked before use -------------------------------------------------------------------------
@pytest.mark.parametrize("counters,words", [
    ({"batch": 1_000_000}, "stopped at batch 1000000 of an epoch of 2"),  # resumed into an epoch of no steps
    ({"sums": {"loss": -1e308}, "count": 0}, "with 0 step(s) summed"),  # logged as the epoch's train loss
    ({"epoch": 10 ** 30}, "more than any run can; the file is damaged"),
])
def test_checkpoint_counters_that_cannot_be_are_refused_on_resume(counters, words, capsys, ae_run, tmp_path):
    run = copy_run(ae_run, tmp_path / "run")
    edit_checkpoint(run, counters=counters)
    assert_one_line(*cli(capsys, "train", "--resume", run, "--epochs", "4")[:2], words)


@pytest.mark.parametrize("counters,words", [({"epoch": float("nan")}, "counter epoch"),
                                             ({"epoch": 10 ** 30}, "more than any run can")])
def test_counters_that_cannot_be_are_refused_by_evaluate_too(counters, words, capsys, ae_run, tmp_path):
    # evaluate printed "epoch nan" (and wrote it to evaluation.json) where resume refused the same file.
    run = copy_run(ae_run, tmp_path / "run")
    edit_checkpoint(run, counters=counters)
    assert_one_line(*cli(capsys, "evaluate", run, "--limit", "20", "--no-quality", "--device", "cpu")[:2], words)
    assert not (run / "evaluation.json").exists()


@pytest.mark.parametrize("label,tensors,counters,words", [
    ("optimiser state of the wrong shape", lambda t: {**t, "optim/model/0/exp_avg": torch.zeros(3, 3)}, None,
     "optim/model/0/exp_avg has shape [3, 3]"),
    ("optimiser state of the wrong dtype", lambda t: {**t, "optim/model/1/exp_avg_sq": t["optim/model/1/exp_avg_sq"].double()},
     None, "optim/model/1/exp_avg_sq has shape [8] float64"),
    ("a parameter the optimiser does not have", lambda t: {**t, "optim/model/9/exp_avg": torch.zeros(1)}, None,
     "parameter 9"),
    ("model tensor of the wrong shape", lambda t: {**t, "model/decoder.0.weight": torch.zeros(784, 9)}, None,
     "model/decoder.0.weight has shape [784, 9]"),
    ("model tensor missing", lambda t: {k: v for k, v in t.items() if k != "model/decoder.0.bias"}, None,
     "model/decoder.0.bias is missing"),
    ("random state cut short", lambda t: {**t, "rng/0": t["rng/0"][:10].clone()}, None, "rng/0 has 10 bytes"),
    ("random state of the wrong dtype", lambda t: {**t, "rng/0": t["rng/0"].float()}, None, "rng/0 must be a 1-D uint8"),
    ("random state of zeros", lambda t: {**t, "rng/0": torch.zeros_like(t["rng/0"])}, None,
     "rng/0 is not a valid generator state"),
    ("CUDA random state of the wrong dtype", lambda t: {**t, "cuda_rng/0": torch.zeros(3)}, None, "cuda_rng/0"),
    # torch.cuda.set_rng_state refuses these with a RuntimeError: a GPU resume showed a traceback.
    ("CUDA random state cut short", lambda t: {**t, "cuda_rng/0": torch.zeros(12, dtype=torch.uint8)}, None,
     "cuda_rng/0 is not a valid CUDA generator state"),
    ("CUDA random state at an offset CUDA cannot take",
     lambda t: {**t, "cuda_rng/0": torch.tensor([0] * 8 + [6] + [0] * 7, dtype=torch.uint8)}, None,
     "cuda_rng/0 is not a valid CUDA generator state"),
    ("an unknown tensor", lambda t: {**t, "payload": torch.zeros(1)}, None, "unexpected tensor 'payload'"),
    ("a negative counter", None, {"epoch": -1}, "counter epoch"),
    ("a string counter", None, {"step": "7"}, "counter step"),
    ("a divergence streak that is not a count", None, {"checks": {"saturated": -3}}, "counter checks"),
])
def test_checkpoint_is_checked_before_loading(label, tensors, counters, words, capsys, ae_run, tmp_path):
    run = copy_run(ae_run, tmp_path / "run")
    edit_checkpoint(run, tensors, counters)
    with pytest.raises(GenlabError) as info:
        train(None, None, quick_config(run, epochs=3), resume=run)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_a_flipped_bit_or_a_checkpoint_replaced_while_read_never_loads_wrong_weights(ae_run, tmp_path):
    # Flipped exponent bits in a weight evaluated to another loss, exit 0. And a checkpoint read while
    # training replaced it was opened by name twice: one file's counters with another's tensors, or tensors
    # at shifted offsets.
    run = copy_run(ae_run, tmp_path / "run")
    path = run / checkpoint.CHECKPOINT
    data = bytearray(path.read_bytes())
    data[-40] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(GenlabError, match="do not match the checksum"):
        checkpoint.load(path)
    good = copy_run(ae_run, tmp_path / "good") / checkpoint.CHECKPOINT
    other = copy_run(ae_run, tmp_path / "other")
    train(None, None, quick_config(other, epochs=2), resume=other)  # a later epoch: other tensors and counters
    later = (other / checkpoint.CHECKPOINT).read_bytes()
    import threading
    stop = threading.Event()

    def replace_again_and_again():
        versions = [good.read_bytes(), later]
        while not stop.is_set():
            for i, version in enumerate(versions):
                tmp = good.with_name(f".swap{i}")
                tmp.write_bytes(version)
                os.replace(tmp, good)

    writer = threading.Thread(target=replace_again_and_again)
    writer.start()
    try:
        epochs = {1: checkpoint.load(ae_run / checkpoint.CHECKPOINT).model_state,
                  2: checkpoint.load(other / checkpoint.CHECKPOINT).model_state}
        for _ in range(300):
            ckpt = checkpoint.load(good)  # each load is one whole file, never a mix
            expected = epochs[ckpt.counters["epoch"]]
            assert all(torch.equal(ckpt.model_state[k], v) for k, v in expected.items())
    finally:
        stop.set()
        writer.join()


@pytest.mark.parametrize("where,flip", [
    (b'"lr\\": 0.00', 0x02),  # the learning rate 0.001 read as 0.003: resume trained on with it
    (b'{\\"epoch\\": ', 0x02),  # epoch 1 read as 3: resume skipped two epochs
    (b'"crc32_meta"', 0x01),  # the checksum's own name: an entry genlab never writes
])
def test_a_flipped_bit_in_the_counters_or_settings_is_damage(where, flip, capsys, ae_run, tmp_path):
    # Only the tensors had a checksum: one bit of the metadata, JSON that still parsed, was taken as written.
    run = copy_run(ae_run, tmp_path / "run")
    path = run / checkpoint.CHECKPOINT
    data = bytearray(path.read_bytes())
    data[data.index(where) + len(where)] ^= flip
    path.write_bytes(bytes(data))
    # report passed a damaged checkpoint over as a blank energy, as it does a run copied without its weights
    for argv in (["train", "--resume", run, "--epochs", "5"], ["evaluate", run, "--no-quality"],
                 ["report", run, "--out", tmp_path / "report"]):
        assert_one_line(*cli(capsys, *argv)[:2], f"checkpoint {path} is damaged")


def test_report_says_a_damaged_checkpoint_or_metrics_log_beside_an_evaluation(ae_run, tmp_path, capsys):
    # With an evaluation.json beside it, a checkpoint cut short was never read: the report showed the old
    # evaluation as the run's numbers, exit 0; and a metrics.jsonl that is a folder was passed over.
    run = copy_run(ae_run, tmp_path / "run")
    assert cli(capsys, "evaluate", run, "--no-quality", "--limit", "20")[0] == 0
    whole = (run / checkpoint.CHECKPOINT).read_bytes()
    (run / checkpoint.CHECKPOINT).write_bytes(whole[:-100])
    assert_one_line(*cli(capsys, "report", run, "--out", tmp_path / "r1")[:2], "is damaged", "restore the file")
    (run / checkpoint.CHECKPOINT).write_bytes(whole)
    (run / "metrics.jsonl").unlink()
    (run / "metrics.jsonl").mkdir()
    assert_one_line(*cli(capsys, "report", run, "--out", tmp_path / "r2")[:2], "metrics.jsonl is not a regular file")
    (run / "metrics.jsonl").rmdir()
    (run / checkpoint.CHECKPOINT).unlink()  # a run copied without its weights is reported from what it has
    assert cli(capsys, "report", run, "--out", tmp_path / "r3")[0] == 0


def test_report_shows_the_epochs_the_checkpoint_holds(ae_run, tmp_path, capsys):
    # A line of "epoch 7" appended to the log of a 2-epoch run: the report said 7 epochs, with its numbers.
    run = copy_run(ae_run, tmp_path / "run")
    lines = (run / "metrics.jsonl").read_text().splitlines()
    last = json.loads(lines[-1])
    (run / "metrics.jsonl").write_text("\n".join([*lines, lines[-1], json.dumps({**last, "epoch": 7,
                                                                              "train/loss": 123.456})]) + "\n")
    assert cli(capsys, "report", run, "--out", tmp_path / "r")[0] == 0
    text = (tmp_path / "r" / "report.md").read_text()
    assert "2 epochs" in text and "7 epochs" not in text and "123.456" not in text


def test_a_run_named_wrongly_is_said_as_what_it_is(ae_run, tmp_path, capsys):
    # "--resume RUN/config.json" was "RUN/config.json/config.json not found"; a folder of runs was "FOLDER/config.json
    # not found"; a checkpoint that is a link in a loop was "no checkpoint ...; train first".
    run = copy_run(ae_run, tmp_path / "runs" / "ae")
    assert_one_line(*cli(capsys, "train", "--resume", run / "config.json")[:2],
                    f"{run / 'config.json'} is a file; name the run directory that holds it ({run})")
    assert_one_line(*cli(capsys, "energy", tmp_path / "runs")[:2],
                    f"{tmp_path / 'runs'} is not a run directory but holds runs: {run}; name one of them")
    (run / checkpoint.CHECKPOINT).unlink()
    (run / checkpoint.CHECKPOINT).symlink_to(checkpoint.CHECKPOINT)
    assert_one_line(*cli(capsys, "evaluate", run, "--no-quality")[:2], "is a symbolic link that leads nowhere",
                    "restore the file")


def test_optional_cuda_random_state_is_accepted(ae_run, tmp_path):
    run = copy_run(ae_run, tmp_path / "run")
    edit_checkpoint(run, tensors=lambda t: {**t, "cuda_rng/0": torch.zeros(16, dtype=torch.uint8)})
    ckpt = checkpoint.load(run / checkpoint.CHECKPOINT)
    checkpoint.check(ckpt, checkpoint.load_run(run).model)


def test_a_folder_of_other_files_is_not_trained_into(tmp_path):
    # A config.json of the user's was replaced without a word, and a foreign metrics.jsonl appended to.
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "config.json").write_text('{"my": "settings"}')
    with pytest.raises(GenlabError, match="is not a genlab run's config"):
        train("ae", MODELS["ae"].Config(latent_dim=8), quick_config(tmp_path / "proj"))
    assert json.loads((tmp_path / "proj" / "config.json").read_text()) == {"my": "settings"}
    (tmp_path / "log").mkdir()
    (tmp_path / "log" / "metrics.jsonl").write_text('{"epoch": 1, "loss": 0.5}\n')
    with pytest.raises(GenlabError, match="already holds a metrics.jsonl"):
        train("ae", MODELS["ae"].Config(latent_dim=8), quick_config(tmp_path / "log"))


def test_a_run_stopped_in_its_first_epoch_is_started_again_not_resumed(tmp_path):
    run = tmp_path / "run"
    real_step = train_mod._step
    with pytest.raises(KeyboardInterrupt):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(train_mod, "_step", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
            train("ae", MODELS["ae"].Config(latent_dim=8), quick_config(run))
    assert (run / "config.json").exists() and not (run / checkpoint.CHECKPOINT).exists()
    with pytest.raises(GenlabError, match="stopped before its first epoch ended"):
        train(None, resume=run)
    assert train_mod._step is real_step
    train("ae", MODELS["ae"].Config(latent_dim=8), quick_config(run))  # started over in place
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_a_half_written_figure_is_neither_shown_nor_kept(ae_run, tmp_path):
    # A kill while a figure was written left NAME.tmp.png, which genlab report embedded as a figure.
    from genlab.report import report_runs
    run = copy_run(ae_run, tmp_path / "run")
    (run / "figures").mkdir(exist_ok=True)
    for name in ("loss_curves.tmp.png", ".loss_curves.123.tmp.png"):
        (run / "figures" / name).write_bytes(b"")
    html, md = report_runs([run], tmp_path / "rep", device="cpu")
    assert ".tmp" not in md.read_text()
    train(None, None, quick_config(run, epochs=3), resume=run)  # the next claim clears genlab's own
    assert [p.name for p in (run / "figures").glob("*.tmp.png")] == ["loss_curves.tmp.png"]  # a name genlab never writes


def test_report_leaves_out_an_evaluation_of_an_earlier_epoch(ae_run, tmp_path, capsys):
    # evaluation.json of epoch 1 was shown, and its energy put in the comparison, after 30 more epochs.
    from genlab.report import report_runs
    run = copy_run(ae_run, tmp_path / "run")
    assert main(["evaluate", str(run), "--no-quality", "--device", "cpu"]) == 0
    evaluated = json.loads((run / "evaluation.json").read_text())
    epoch = evaluated["epoch"]
    train(None, None, quick_config(run, epochs=epoch + 1), resume=run)
    html, md = report_runs([run], tmp_path / "rep", device="cpu")
    text = md.read_text()
    assert f"evaluation.json is of epoch {epoch}" in text and "| genlab evaluate" not in text
    assert main(["evaluate", str(run), "--no-quality", "--device", "cpu"]) == 0  # up to date again
    html, md = report_runs([run], tmp_path / "rep2", device="cpu")
    assert "evaluation.json is of" not in md.read_text()


# -- one owner, one history -----------------------------------------------------------------------------------
def test_a_second_writer_is_refused(ae_run, tmp_path):
    run = copy_run(ae_run, tmp_path / "run")
    with rundir.claim(run):
        with pytest.raises(GenlabError, match=f"in use by another genlab process \\(pid {os.getpid()}\\)"):
            train(None, None, quick_config(run, epochs=3), resume=run)
        with pytest.raises(GenlabError, match="in use"):
            train("ae", MODELS["ae"].Config(latent_dim=8), quick_config(run))
    train(None, None, quick_config(run, epochs=3), resume=run)  # the lock went with its holder
    # A look at the lock (refuse_if_in_use holds it shared for a moment) does not turn a run away.
    import fcntl
    import threading
    (tmp_path / "looked").mkdir()
    (tmp_path / "looked" / rundir.LOCK).write_text("")
    fd = os.open(tmp_path / "looked" / rundir.LOCK, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH)
    threading.Timer(0.05, os.close, (fd,)).start()
    with rundir.claim(tmp_path / "looked"):
        pass
    # A run in its first second has no config.json yet: its --resume was told "is this a genlab run directory?".
    with rundir.claim(tmp_path / "starting"):
        with pytest.raises(GenlabError, match=f"in use by another genlab process \\(pid {os.getpid()}\\)"):
            train(None, resume=tmp_path / "starting")


@pytest.mark.parametrize("env,words", [
    ({"WORLD_SIZE": "abc"}, "WORLD_SIZE='abc' must be a whole number"),
    ({"WORLD_SIZE": "0"}, "WORLD_SIZE='0' must be a whole number of at least 1"),
    ({"WORLD_SIZE": "2"}, "RANK is not set"),
    ({"WORLD_SIZE": "2", "RANK": "0"}, "MASTER_ADDR and MASTER_PORT are not set"),
    # once a wait of 30 minutes for a rank 0 that never comes, deaf to SIGTERM
    ({"WORLD_SIZE": "2", "RANK": "5", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29599"}, "ranks run from 0 to 1"),
])
def test_a_process_group_set_up_by_hand_wrongly_is_one_line(env, words, capsys, tmp_path, monkeypatch):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert_one_line(*cli(capsys, "train", "ae", *QUICK, "--out", tmp_path / "r")[:2], words)
    assert not (tmp_path / "r").exists()


def test_a_figures_folder_that_cannot_be_written_is_refused_before_the_scoring(capsys, ae_run, tmp_path,
                                                                              monkeypatch):
    """energy --auroc on a read-only run scored every split, then stopped at the figures folder and printed none
    of its AUROCs; the line named no way out."""
    scored = []
    monkeypatch.setattr("genlab.commands.energy.energy_report", lambda *a: scored.append(a))
    in_the_way = tmp_path / "afile"
    in_the_way.write_text("x")
    status, lines, _ = cli(capsys, "energy", ae_run, "--auroc", "--figures", in_the_way / "sub")
    assert_one_line(status, lines, f"cannot write into {in_the_way / 'sub'}: {in_the_way} is a file, not a folder; "
                    "pass --figures DIR to write elsewhere")
    (tmp_path / "dangling").symlink_to("nowhere")
    status, lines, _ = cli(capsys, "energy", ae_run, "--auroc", "--figures", tmp_path / "dangling" / "figs")
    assert_one_line(status, lines, f"{tmp_path / 'dangling'} is a symbolic link that leads nowhere; pass --figures")
    read_only = copy_run(ae_run, tmp_path / "ro")
    writable = os.access
    assert not (read_only / "figures").exists()  # to be made in a run folder this user may not write
    monkeypatch.setattr(os, "access", lambda p, *a, **k: str(p) != str(read_only) and writable(p, *a, **k))
    status, lines, _ = cli(capsys, "energy", read_only, "--auroc")
    assert_one_line(status, lines, f"cannot write into {read_only / 'figures'}: {read_only} is not writable",
                    "pass --figures DIR")
    assert scored == []


def test_a_stop_during_a_write_waits_for_the_file_to_be_whole(tmp_path, monkeypatch):
    """SIGTERM arriving inside a write left its hidden .tmp file (denoise then said "no repair was kept" beside
    it), or a finished file its command had not yet recorded for the cleanup."""
    import signal

    from genlab import cli
    from genlab.errors import Stopped

    real_replace, target = os.replace, tmp_path / "out.png"

    def replace_while_signalled(src, dst):
        signal.raise_signal(signal.SIGTERM)  # delivered, and its handler run, before the rename
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_while_signalled)
    with cli._handlers({signal.SIGTERM: cli._stop}), pytest.raises(Stopped, match="stopped by SIGTERM"):
        cfgmod.write_atomically(target, b"whole", hidden=True)
    assert target.read_bytes() == b"whole" and sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


def test_a_checkpoint_this_user_may_not_read_is_not_called_damaged(capsys, ae_run, monkeypatch):
    """A checkpoint without read permission (as root cannot show) was "damaged or not a genlab checkpoint ...;
    retrain": advice that threw away a sound run."""
    def refused(path):
        raise PermissionError(13, "Permission denied", str(path))
    monkeypatch.setattr(checkpoint, "_open_regular", refused)
    for argv in (("evaluate", ae_run, "--no-quality"), ("report", ae_run)):
        status, lines, _ = cli(capsys, *argv)
        assert_one_line(status, lines, f"cannot read checkpoint {ae_run / 'checkpoint.safetensors'} (Permission "
                        "denied); check its permissions")
        assert "damaged" not in lines[0] and "retrain" not in lines[0]


def test_control_characters_of_a_name_are_escaped_in_the_line_that_names_it(capsys, ae_run, tmp_path):
    """A file name from an unpacked archive, ESC and BEL in it, reached the terminal raw in the error naming it:
    enough to set the window's title and clear the screen."""
    folder = tmp_path / "images"
    folder.mkdir()
    bad = folder / "\x1b]0;pwned\x07\x1b[2J.png"
    bad.write_bytes(b"not a png")
    for argv, words in ((("energy", ae_run, "--images", folder), "\\x1b]0;pwned\\x07\\x1b[2J.png is not a readable"),
                        (("evaluate", tmp_path / "\x1b[31mred"), "\\x1b[31mred does not exist"),
                        (("train", "ae", "--bogus\x1b[2J"), "--bogus\\x1b[2J")):
        status, lines, _ = cli(capsys, *argv)
        assert_one_line(status, lines, words)
        assert not any(c in lines[0] for c in "\x1b\x07"), lines


def test_commands_other_than_train_refuse_torchrun(capsys, ae_run, monkeypatch):
    # Each process did the whole job: evaluate --json printed its JSON twice, reproduce's stages joined one
    # another's process groups.
    monkeypatch.setenv("WORLD_SIZE", "2")
    for argv in (["evaluate", ae_run], ["sample", ae_run], ["reproduce", "--quick"]):
        assert_one_line(*cli(capsys, *argv)[:2], f"genlab {argv[0]} runs as one process; start it without torchrun")


def test_two_writers_of_one_json_file_never_meet(tmp_path):
    # Both wrote through NAME.tmp: one renamed the other's file away ("cannot write ... No such file"), or a
    # reader met half a file.
    import threading

    from genlab.config import read_json, write_json

    path, failures = tmp_path / "evaluation.json", []

    def write(value):
        for i in range(200):
            try:
                write_json(path, {"writer": value, "i": i, "pad": "x" * 2000})
            except GenlabError as e:
                failures.append(str(e))

    threads = [threading.Thread(target=write, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == [] and read_json(path)["i"] == 199
    assert [p.name for p in tmp_path.iterdir()] == ["evaluation.json"]


def test_run_files_get_the_usual_permissions(ae_run):
    # The checkpoint was private (mode 600, a temporary file's) while the run's other files were not.
    from genlab.config import usual_mode

    for name in ("checkpoint.safetensors", "config.json", "metrics.jsonl"):
        assert (ae_run / name).stat().st_mode & 0o777 == usual_mode(), name


def test_a_refused_run_leaves_no_empty_folders(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    refused = ["train", "ae", *QUICK, "--lr-schedule", "cosine", "--lr-final", "5"]
    assert_one_line(*cli(capsys, *refused)[:2], "--lr-final 5")  # the default run dir, runs/ae-<time>
    assert_one_line(*cli(capsys, *refused, "--out", "a/b/c")[:2], "--lr-final 5")
    (tmp_path / "mine").mkdir()
    assert_one_line(*cli(capsys, *refused, "--out", "mine")[:2], "--lr-final 5")
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == ["mine"]
    status, _, _ = cli(capsys, "train", "ae", *QUICK, "--out", "mine")
    assert status == 0 and (tmp_path / "mine" / "checkpoint.safetensors").is_file()


@pytest.mark.slow
def test_two_trainers_started_at_once_on_one_out(tmp_path):
    out = tmp_path / "shared"
    argv = [sys.executable, "-m", "genlab.cli", "train", "ae", *QUICK, "--epochs", "3", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    procs = [subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    statuses = sorted(status for status, _ in results)
    assert statuses == [0, 2], results
    refused = next(err for status, err in results if status == 2).strip().splitlines()
    assert len(refused) == 1 and ("in use by another genlab process" in refused[0]
                                  or "already holds a run" in refused[0]), refused  # the loser lost the race early
    epochs = [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]


def test_resume_drops_lines_past_the_checkpoint_and_stale_temporaries(ae_run, tmp_path, capsys):
    run = copy_run(ae_run, tmp_path / "run")
    lines = (run / "metrics.jsonl").read_text().splitlines()
    # A run killed after logging epoch 3 but before its checkpoint, half-way through a save and an append:
    (run / "metrics.jsonl").write_text("\n".join(lines + [json.dumps({"epoch": 3, "train/loss": 9.0})]) + '\n{"ep')
    (run / ".checkpoint-abcd_123.tmp").write_bytes(b"half")
    train(None, None, quick_config(run, epochs=3), resume=run)
    assert "note: 2 lines of" in capsys.readouterr().err  # said, not dropped in silence
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3] and records[2]["train/loss"] != 9.0
    assert not list(run.glob(".checkpoint-*"))


def test_a_line_lost_after_its_checkpoint_is_restored_from_it(ae_run, tmp_path):
    run = copy_run(ae_run, tmp_path / "run")
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text(lines[0] + "\n")  # killed between epoch 2's checkpoint and its line
    train(None, None, quick_config(run, epochs=2), resume=run)
    assert (run / "metrics.jsonl").read_text().splitlines() == lines


def test_a_full_disk_while_saving_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real_save, calls = checkpoint.save_file, []

    def save_until_full(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 2:  # the second epoch's checkpoint: half a file, then the disk is full
            Path(filename).write_bytes(b"\0" * 1000)
            raise OSError(errno.ENOSPC, "No space left on device", filename)
        return real_save(tensors, filename, metadata=metadata)

    monkeypatch.setattr(checkpoint, "save_file", save_until_full)
    run = tmp_path / "run"
    with pytest.raises(GenlabError, match=r"No space left on device\); the last good checkpoint .* is kept") as info:
        train("ae", MODELS["ae"].Config(latent_dim=8), quick_config(run, epochs=3))
    assert "\n" not in str(info.value)
    assert not list(run.glob(".checkpoint-*"))
    assert checkpoint.load(run / checkpoint.CHECKPOINT).counters["epoch"] == 1
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1]
    monkeypatch.setattr(checkpoint, "save_file", real_save)
    train(None, None, None, resume=run)
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


@pytest.mark.parametrize("error,words", [(errno.EPERM, "make the run folder and its files writable and start the run again"),
                                          (errno.ENOSPC, "free space and start the run again")])
def test_a_failed_first_save_says_what_helps(error, words, tmp_path, monkeypatch):
    # A refused write (an immutable file) was blamed on the disk, and with no checkpoint at all the advice was
    # to --resume, which then said there was nothing to resume.
    def refuse(tensors, filename, metadata=None):
        raise OSError(error, os.strerror(error), filename)

    monkeypatch.setattr(checkpoint, "save_file", refuse)
    with pytest.raises(GenlabError) as info:
        train("ae", MODELS["ae"].Config(latent_dim=8), quick_config(tmp_path / "run"))
    assert str(info.value).endswith(words) and "--resume" not in str(info.value)


# -- data checked against published checksums ---------------------------------------------------------------
@needs_mnist
def test_overwritten_pixels_fail_the_checksum_once_and_a_pass_is_remembered(tmp_path, monkeypatch):
    from genlab.data import datasets

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    real = Path(os.environ["GENLAB_DATA_DIR"]) / "mnist"
    root = tmp_path / "data" / "mnist"
    root.mkdir(parents=True)
    for f in real.glob("*.gz"):
        (root / f.name).symlink_to(f)
    (root / "t10k-images-idx3-ubyte.gz").unlink()
    raw = bytearray(gzip.decompress((real / "t10k-images-idx3-ubyte.gz").read_bytes()))
    raw[16 + 784 * 5 + 400: 16 + 784 * 5 + 420] = b"\xff" * 20  # a plausible image, altered
    (root / "t10k-images-idx3-ubyte").write_bytes(bytes(raw))
    clear_cache()
    with pytest.raises(DataError, match="fail mnist's published checksum") as info:
        load_dataset("mnist", "test", data_dir=tmp_path / "data", download=False)
    assert "\n" not in str(info.value) and "t10k-images-idx3-ubyte" in str(info.value)
    # The sound train split passes, is remembered, and is not hashed again.
    assert len(load_dataset("mnist", "train", data_dir=tmp_path / "data", download=False)) == 60000
    assert (tmp_path / "cache" / "genlab" / datasets.VERIFIED).is_file()
    clear_cache()
    monkeypatch.setattr(datasets, "idx_md5", lambda array: pytest.fail("hashed twice"))
    assert len(load_dataset("mnist", "train", data_dir=tmp_path / "data", download=False)) == 60000
    clear_cache()


def test_the_scoring_and_evaluation_api_refuse_what_they_would_misread(ae_run):
    import genlab
    from genlab.evaluate import evaluate_run
    model = genlab.load(ae_run)
    images = torch.zeros(3, 28, 28, dtype=torch.uint8)
    for bad in (-1, 0, 2.5):
        with pytest.raises(GenlabError, match="batch_size must be a whole number"):
            model.energy(images, batch_size=bad)  # -1 scored nothing and said nothing
    with pytest.raises(GenlabError, match="an image path given is empty"):
        model.energy("")  # "" is "." to pathlib: every image below the working folder
    with pytest.raises(GenlabError, match="limit is a whole number"):
        evaluate_run(ae_run, limit=-1)
    with pytest.raises(GenlabError, match="no option iwaek"):
        evaluate_run(ae_run, iwaek=(1,))
    with pytest.raises(GenlabError, match="a run directory is a path"):
        genlab.load(None)
    assert evaluate_run(ae_run, limit=10)["images"] == 10  # a path is loaded


def test_pytorch_out_of_memory_is_one_line_and_evaluation_batches_shrink_with_the_image(capsys):
    # PyTorch's allocator failing was a traceback and "a bug in genlab" (exit 70); and evaluation took 1000
    # images a batch whatever their size: gigabytes at 256 x 256, with no flag to lower it.
    from genlab.models.base import eval_batch

    def fail():
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 41943040000 bytes. Error code 12 (Cannot allocate memory)")
    assert one_line_errors(fail) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "out of memory (PyTorch asked for 39.1 GiB at once)" in lines[0], lines
    assert eval_batch(1000, torch.zeros(5, 28, 28, dtype=torch.uint8).shape[1:]) == 1000  # MNIST's evaluation as before
    assert eval_batch(1000, torch.zeros(5, 3, 256, 256, dtype=torch.uint8).shape[1:]) == 3
    assert eval_batch(1000, torch.zeros(5, 3, 2048, 2048, dtype=torch.uint8).shape[1:]) == 1


def test_resizing_up_to_more_than_genlab_holds_is_refused_before_allocating(monkeypatch):
    import numpy as np

    from genlab.data import files
    monkeypatch.setattr(files, "MAX_ARRAY_BYTES", 10 * 64 * 64)
    images = [np.zeros((8, 8), np.uint8)] * 11
    assert files.stack_images(images[:10], [str(i) for i in range(10)], image_size=64).shape == (10, 64, 64)
    with pytest.raises(GenlabError, match="11 images of 64 x 64 x 1 would take .* choose a smaller --image-size"):
        files.stack_images(images, [str(i) for i in range(11)], image_size=64)


def test_samples_are_drawn_in_batches_and_a_seed_still_gives_one_grid(tmp_path, monkeypatch):
    # All at once, 10,000 samples of a large model asked for 30 GB. (Batches draw the noise in other sizes, so a
    # grid larger than a batch differs from one drawn at once; at 28 x 28 a batch holds 1000.)
    from genlab.models import base
    run = tmp_path / "vae"
    train("vae", MODELS["vae"].Config(), quick_config(run))
    monkeypatch.setattr(base, "EVAL_PIXELS", 3 * 28 * 28)  # batches of 3
    calls = []
    real = MODELS["vae"].sample
    monkeypatch.setattr(MODELS["vae"], "sample", lambda self, n, *a, **k: calls.append(n) or real(self, n, *a, **k))
    for name in ("a.png", "b.png"):
        assert main(["sample", str(run), "-n", "20", "--seed", "4", "--out", str(tmp_path / name)]) == 0
    assert calls == [3] * 6 + [2] + [3] * 6 + [2]
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


def test_a_review_of_this_round_found_these_and_they_hold(ae_run, tmp_path, capsys):
    # A checkpoint path that is a folder leaked a descriptor and named a number; genlab.load(device=None) failed;
    # an empty --classes ("empty: all") was refused as an empty argument; an evaluation.json of a checkpoint
    # taken mid-epoch (past the last metrics line) was called out of date.
    import genlab
    from genlab.cli import _empty_argument, build_parser
    from genlab.report import report_runs
    (tmp_path / "folder").mkdir()
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        with pytest.raises(GenlabError, match="folder is not a regular file"):
            checkpoint.load(tmp_path / "folder")
    assert len(os.listdir("/proc/self/fd")) == before
    assert genlab.load(ae_run, device=None).model.device.type == "cpu"
    parser = build_parser()
    args = parser.parse_args(["train", "ae", "--classes", ""])
    assert _empty_argument(parser, args) is None
    run = copy_run(ae_run, tmp_path / "run")
    counters = checkpoint.load(run / checkpoint.CHECKPOINT).counters
    edit_checkpoint(run, counters={"step": counters["step"] + 1, "batch": 1})  # as if stopped one step in
    assert main(["evaluate", str(run), "--no-quality", "--device", "cpu"]) == 0
    html, md = report_runs([run], tmp_path / "rep", device="cpu")
    assert "evaluation.json is of" not in md.read_text()


def test_a_jpeg_with_padding_before_a_marker_is_read_and_stderr_may_be_closed(tmp_path):
    # libjpeg's "extraneous bytes before marker" came with pixels identical to the file's own: refused as
    # damage. With standard error closed, reading any image raised AttributeError.
    import cv2
    import numpy as np

    from genlab.data.files import read_image
    image = np.random.default_rng(0).integers(0, 256, (28, 28), np.uint8)
    jpeg = cv2.imencode(".jpg", image)[1].tobytes()
    at = jpeg.index(b"\xff\xda")
    (tmp_path / "padded.jpg").write_bytes(jpeg[:at] + b"\0\0\0" + jpeg[at:])
    assert np.array_equal(read_image(tmp_path / "padded.jpg"), cv2.imdecode(np.frombuffer(jpeg, np.uint8), 0))
    code = f"import os, sys; os.close(2); sys.stderr = None; from genlab.data.files import read_image; " \
           f"print(read_image({str(tmp_path / 'padded.jpg')!r}).shape)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "(28, 28)", done


def test_resume_from_python_takes_the_model_config_it_was_trained_with_on_other_shapes(tmp_path):
    import dataclasses

    import numpy as np
    np.savez(tmp_path / "rgb.npz", images=np.random.default_rng(0).integers(0, 256, (40, 32, 32, 3), np.uint8))
    model_cfg = MODELS["ae"].Config(latent_dim=8)  # 1 x 28 x 28 by default; the run's is the data's
    cfg = quick_config(tmp_path / "run", dataset=f"npz:{tmp_path / 'rgb.npz'}", limit=0)
    run = train("ae", model_cfg, cfg)
    train("ae", model_cfg, dataclasses.replace(cfg, epochs=2), resume=run)
    assert checkpoint.load(run / checkpoint.CHECKPOINT).counters["epoch"] == 2


# -- a folder given to --out is the user's until genlab has made a run there ------------------------------------
def test_a_folder_of_the_users_is_refused_and_its_files_kept(tmp_path, capsys):
    # Training into it deleted the user's notes.json.tmp and figures/plot.tmp.png (taken for genlab's debris)
    # and wrote a run among the user's files.
    folder = tmp_path / "mine"
    (folder / "figures").mkdir(parents=True)
    mine = {"notes.json.tmp": "1", "a.json.v1.tmp": "2", ".checkpoint-mine.tmp": "3", "readme.txt": "4",
            "figures/plot.tmp.png": "5"}
    for name, text in mine.items():
        (folder / name).write_text(text)
    status, lines, _ = cli(capsys, "train", "ae", *QUICK, "--out", folder)
    assert_one_line(status, lines, "holds files that are not a genlab run's")
    assert {name: (folder / name).read_text() for name in mine} == mine
    assert sorted(p.name for p in folder.iterdir()) == sorted([".checkpoint-mine.tmp", "a.json.v1.tmp", "figures",
                                                                "notes.json.tmp", "readme.txt"])


def test_a_refused_run_and_a_resume_keep_files_genlab_did_not_name(ae_run, tmp_path, capsys):
    run = copy_run(ae_run, tmp_path / "run")
    (run / "keep.json.tmp").write_text("mine")
    assert_one_line(*cli(capsys, "train", "ae", *QUICK, "--out", run)[:2], "already holds a run")
    train(None, None, quick_config(run, epochs=3), resume=run)
    assert (run / "keep.json.tmp").read_text() == "mine"


def test_a_lock_that_is_a_link_is_refused_and_its_target_untouched(ae_run, tmp_path, capsys):
    # .lock pointing at a file of the user's: the file was truncated to genlab's process id.
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's own words\n")
    run = copy_run(ae_run, tmp_path / "run")
    (run / rundir.LOCK).unlink(missing_ok=True)
    (run / rundir.LOCK).symlink_to(victim)
    assert_one_line(*cli(capsys, "train", "--resume", run, "--epochs", "3")[:2], "is a symbolic link")
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / rundir.LOCK).symlink_to(victim)
    assert_one_line(*cli(capsys, "train", "ae", *QUICK, "--out", fresh)[:2], "is a symbolic link")
    assert victim.read_text() == "the user's own words\n"
    (run / rundir.LOCK).unlink()
    (run / rundir.LOCK).mkdir()  # was "(Is a directory); make it writable"
    assert_one_line(*cli(capsys, "train", "--resume", run, "--epochs", "3")[:2], ".lock is a folder, not genlab's")


def test_a_lock_file_holding_something_else_is_locked_but_not_rewritten(ae_run, tmp_path):
    # A hard link (or any file named .lock) that is not a process id is the user's: locked as it is.
    run = copy_run(ae_run, tmp_path / "run")
    (run / rundir.LOCK).write_text("not a pid\n")
    train(None, None, quick_config(run, epochs=3), resume=run)
    assert (run / rundir.LOCK).read_text() == "not a pid\n"


def test_no_usable_temporary_folder_says_why_and_what_to_do(tmp_path):
    # Under a file-size limit, PyTorch's first look for a temporary folder failed and genlab said only
    # "No usable temporary directory found in [...]".
    script = (f"import os, sys, tempfile; tempfile.tempdir = None; os.environ['TMPDIR'] = {str(tmp_path)!r}\n"
              "from genlab.errors import one_line_errors\n"
              "sys.exit(one_line_errors(lambda: tempfile.gettempdir() and 0))\n")
    proc = subprocess.run(["bash", "-c", f'ulimit -f 0; exec "{sys.executable}" -c "$0"', script],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "set TMPDIR to a writable folder" in proc.stderr


def test_a_float_setting_written_as_a_huge_integer_is_one_line(ae_run, tmp_path, capsys):
    # "lr": 1 followed by 400 zeros in config.json: float() raised OverflowError in evaluate, resume and serve.
    run = copy_run(ae_run, tmp_path / "run")
    text = (run / "config.json").read_text()
    data = json.loads(text)
    lr = data["train_config"]["lr"]
    (run / "config.json").write_text(text.replace(f'"lr": {json.dumps(lr)}', '"lr": 1' + "0" * 400))
    assert_one_line(*cli(capsys, "evaluate", run, "--no-quality", "--limit", "20")[:2],
                    "--lr must be a finite number, got a 401-digit number")
    assert_one_line(*cli(capsys, "train", "--resume", run, "--epochs", "3")[:2], "a 401-digit number")


@pytest.mark.parametrize("command", ["datasets", "train ae --dataset mnist-5k --limit 300 --epochs 1 --out run"])
def test_a_command_started_with_its_output_closed_says_so_before_any_work(command, tmp_path):
    # genlab datasets >&- printed nowhere and exited 0; then a training run trained to its end and only then
    # said so, status 2 after the work was done.
    proc = subprocess.run(["bash", "-c", f'exec "{sys.executable}" -m genlab.cli {command} >&-'], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "GENLAB_OFFLINE": "1"})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "genlab: error: standard output is closed, so what this command prints would be lost; run it with its "
        "output going to a terminal, a file or a pipe"]
    assert not (tmp_path / "run").exists()


def test_a_working_folder_that_was_removed_is_said_so(tmp_path):
    # PyTorch's libraries failed to load: "Intel oneMKL FATAL ERROR: Cannot load .../libtorch_cpu.so".
    gone = tmp_path / "gone"
    gone.mkdir()
    proc = subprocess.run(["bash", "-c", f'cd "{gone}" && rmdir "{gone}" && exec "{sys.executable}" -m genlab.cli '
                           'datasets'], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.returncode == 2 and proc.stderr.splitlines() == [
        "genlab: error: the working folder no longer exists (it was removed after the shell entered it); cd to an "
        "existing folder and run the command again"], proc.stderr[-2000:]


@pytest.mark.parametrize("replace", ["removed and made again", "renamed"])
def test_a_run_folder_taken_away_while_it_trains_stops_the_run_in_one_line(replace, tmp_path):
    # Removed and made again, the rest of the run went into the new folder (no config.json, no lock) and it
    # reported success; renamed, the line said only "r: No such file or directory".
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "genlab.cli", "train", "ae", "--dataset", "mnist-5k", "--limit",
                             "1000", "--epochs", "2000", "--no-figures", "--no-progress", "--out", str(run)],
                            stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "GENLAB_OFFLINE": "1"})
    deadline = time.monotonic() + 120
    while not ((run / "metrics.jsonl").exists() and (run / "metrics.jsonl").read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    run.rename(tmp_path / "elsewhere")  # at once (a removal by rmtree races the run's own temporary files)
    if replace == "removed and made again":
        run.mkdir()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and err.strip().splitlines()[-1] == (
        f"genlab: error: the run folder {run} was removed, renamed or replaced while the run trained, so its "
        "checkpoint has nowhere to go; start the run again (or resume it from where its folder went, if it was "
        "renamed)"), err[-2000:]
    if replace == "renamed":  # the folder where it went is a whole run: its checkpoint is checked and loads
        assert checkpoint.load_run(tmp_path / "elsewhere").model is not None



def _set_group(meta: dict, key: str, value) -> dict:
    optims = json.loads(meta["optimizers"])
    optims["model"]["param_groups"][0][key] = value
    return {**meta, "optimizers": json.dumps(optims)}


@pytest.mark.parametrize("label,tensors,meta_edit,words", [
    # Each resumed with exit 0: gradient ascent, NaN logged as the train loss, a layout of another genlab.
    ("a negative learning rate", None, lambda m: _set_group(m, "lr", -5.0), "setting lr is -5.0"),
    ("betas past 1", None, lambda m: _set_group(m, "betas", [5.0, -3.0]), "setting betas is [5.0, -3.0]"),
    ("a negative eps", None, lambda m: _set_group(m, "eps", -1e-8), "setting eps is -1e-08"),
    ("NaN running sums", None, lambda m: {**m, "counters": m["counters"].replace('"sums": {}', '"sums": {"loss": NaN}')
                                          .replace('"count": 0', '"count": 1').replace('"batch": 0', '"batch": 1')},
     "counter sums must map loss terms to finite numbers"),
    ("a format of another genlab", None, lambda m: {**m, "format": "genlab-99"}, "of format 'genlab-99'"),
    ("NaN in Adam's average", lambda t: {**t, "optim/model/0/exp_avg": torch.full_like(t["optim/model/0/exp_avg"], float("nan"))},
     None, "optim/model/0/exp_avg holds values no training step leaves"),
    ("a negative mean square", lambda t: {**t, "optim/model/1/exp_avg_sq": -torch.ones_like(t["optim/model/1/exp_avg_sq"])},
     None, "optim/model/1/exp_avg_sq holds values no training step leaves"),
])
def test_optimiser_settings_and_state_a_run_cannot_hold_are_refused(label, tensors, meta_edit, words, ae_run, tmp_path,
                                                                    capsys):
    run = copy_run(ae_run, tmp_path / "run")
    edit_checkpoint(run, tensors, meta_edit=meta_edit)
    assert_one_line(*cli(capsys, "train", "--resume", run, "--epochs", "3")[:2], words)


def test_a_file_whose_tensors_do_not_end_where_it_does_is_refused_before_it_is_read(ae_run, tmp_path, capsys):
    # A sparse 1.9 GB file was read whole (2.2 GB of memory) before its header was found wanting.
    run = copy_run(ae_run, tmp_path / "run")
    path = run / checkpoint.CHECKPOINT
    os.truncate(path, 1 << 30)
    status, lines, _ = cli(capsys, "evaluate", run, "--no-quality", "--limit", "20")
    assert_one_line(status, lines, "do not end where the file does")
    (run / checkpoint.CHECKPOINT).write_bytes(b"\xff" * 8 + b"{}")
    assert_one_line(*cli(capsys, "evaluate", run, "--no-quality")[:2], "is damaged or not a genlab checkpoint")
    for entry in ({"data_offsets": []}, [], {"data_offsets": "0-4"}):  # an IndexError reached the user
        header = json.dumps({"__metadata__": {}, "x": entry}).encode()
        (run / checkpoint.CHECKPOINT).write_bytes(len(header).to_bytes(8, "little") + header)
        assert_one_line(*cli(capsys, "evaluate", run, "--no-quality")[:2], "do not end where the file does")


def test_a_hard_linked_copy_of_a_run_keeps_its_own_log(ae_run, tmp_path):
    # resume appended to metrics.jsonl in place, so a snapshot made with hard links (cp -al) logged epochs its
    # checkpoint never held.
    run = copy_run(ae_run, tmp_path / "run")
    snapshot = tmp_path / "snapshot"
    subprocess.run(["cp", "-al", str(run), str(snapshot)], check=True)
    before = {p.name: p.read_bytes() for p in snapshot.iterdir() if p.is_file()}
    train(None, None, quick_config(run, epochs=3), resume=run)
    assert {p.name: p.read_bytes() for p in snapshot.iterdir() if p.is_file()} == before
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3
    assert not list(run.glob(".metrics*"))


def test_a_failed_command_leaves_no_empty_output_folder(tmp_path):
    # report, denoise and inpaint made their --out folder, failed to write into it, and left it behind.
    existing = tmp_path / "existing"
    existing.mkdir()
    for out in (tmp_path / "new" / "deeper", existing):
        with pytest.raises(OSError):
            with cfgmod.output_folder(out):
                assert out.is_dir()
                raise OSError(errno.ENOSPC, "No space left on device")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing"]  # the one that was there before stays
    with cfgmod.output_folder(tmp_path / "kept"):
        pass
    assert (tmp_path / "kept").is_dir()


def test_an_input_name_too_long_for_its_repair_says_to_rename_it(ae_run, tmp_path, capsys):
    # "File name too long ...: choose another --out", which cannot help: NAME-pair.png is over 255 bytes.
    import numpy as np

    long_name = tmp_path / ("b" * 250 + ".png")
    long_name.write_bytes(encode_png(np.zeros((28, 28), np.uint8)))
    status, lines, _ = cli(capsys, "denoise", ae_run, "--images", long_name, "--out", tmp_path / "repairs")
    assert_one_line(status, lines, "is too long a name for its repair's", "rename it")
    assert not (tmp_path / "repairs").exists()


def _genlab_in_bash(args: str, timeout=300, extra_env=None, **kw) -> subprocess.CompletedProcess:
    """``genlab ARGS`` as a shell runs it, so ARGS may close or redirect the command's standard files."""
    return subprocess.run(["bash", "-c", f'exec "{sys.executable}" -m genlab.cli {args}'], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "GENLAB_OFFLINE": "1", **(extra_env or {})},
                          **kw)


@pytest.mark.parametrize("redirect", ["2>&-", "2>/dev/full"])
def test_a_standard_error_closed_or_full_loses_only_what_it_would_have_shown(redirect, tmp_path):
    # train ... 2>&- was a traceback from the progress bar (status 70); 2>/dev/full ended the run at its first
    # line (status 1, neither bad input nor a bug); both left the run without a checkpoint. With standard error
    # closed, the next file opened took its number, and whatever wrote there wrote into that file.
    if redirect.endswith("/dev/full") and not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full (a device that is always full)")
    # Also MPLBACKEND=foo, a backend matplotlib does not know: training, sampling and energy --auroc ended in a
    # traceback (status 70); the command draws into files and opens no window, so the setting is not its business.
    run = tmp_path / "run"
    done = _genlab_in_bash(f'train ae --dataset mnist-5k --limit 300 --epochs 2 --out "{run}" {redirect}',
                           extra_env={"MPLBACKEND": "foo"})
    assert done.returncode == 0 and done.stdout.strip() == str(run), done.stdout
    assert (run / "figures" / "loss_curves.png").stat().st_size > 1000
    assert (run / ".lock").read_text().strip().isdigit()  # the lock holds a pid and nothing written to fd 2
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert checkpoint.load_run(run).model is not None  # a whole checkpoint: checked and loaded
    refused = _genlab_in_bash(f'evaluate "{tmp_path / "no-such-run"}" {redirect}')
    assert refused.returncode == 2 and refused.stdout == ""


def test_a_hang_up_stops_training_at_a_checkpoint_unless_it_is_ignored(tmp_path):
    # SIGHUP (a closed terminal, a dropped ssh session) killed training outright: no checkpoint of the epoch in
    # progress, no line. It now stops as SIGTERM does; under nohup, which ignores it, the run goes on.
    started = {}
    for ignored in (False, True):  # both at once
        run = tmp_path / f"run-{ignored}"
        argv = [sys.executable, "-m", "genlab.cli", "train", "ae", "--dataset", "mnist-5k", "--limit", "1000",
                "--epochs", "6" if ignored else "2000", "--no-figures", "--no-progress", "--out", str(run)]
        ignore = (lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN)) if ignored else None
        started[ignored] = run, subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                                 preexec_fn=ignore, env={**os.environ, "GENLAB_OFFLINE": "1"})
    deadline = time.monotonic() + 120
    for run, proc in started.values():
        while not ((run / "metrics.jsonl").exists() and (run / "metrics.jsonl").read_text()):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.1)
        proc.send_signal(signal.SIGHUP)
    (run, proc), (_, ignoring) = started[False], started[True]
    _, err = proc.communicate(timeout=120)
    assert ignoring.wait(timeout=120) == 0, ignoring.communicate()[1][-2000:]
    assert proc.returncode == 128 + signal.SIGHUP, err[-2000:]
    assert err.strip().splitlines()[-1] == (f"genlab: interrupted by SIGHUP: checkpoint saved; continue with: "
                                            f"genlab train --resume {run}")
    epochs = [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    resumed = _genlab_in_bash(f'train --resume "{run}" --epochs {epochs[-1] + 1} --no-progress')
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [
        *epochs, epochs[-1] + 1]


def test_a_library_that_cannot_load_is_one_line(tmp_path):
    # Under a memory limit too small for PyTorch's code (ulimit -v), or with a dependency missing, the import
    # of the commands ended in a traceback and status 1.
    resource = pytest.importorskip("resource")
    limit = lambda: resource.setrlimit(resource.RLIMIT_AS, (300 << 20, 300 << 20))  # noqa: E731
    done = _genlab_in_bash("datasets", preexec_fn=limit)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr[-2000:]
    assert done.stderr.startswith("genlab: error: too little memory to load PyTorch") and "ulimit -v" in done.stderr
    script = "import sys; sys.modules['tqdm'] = None; from genlab.cli import main; sys.exit(main())"
    done = subprocess.run([sys.executable, "-c", script, "datasets"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.splitlines() == [
        "genlab: error: the package 'tqdm', which genlab needs, is not installed in this environment; install genlab "
        "with its dependencies (pip install -e . in its folder)"], done.stderr


def test_a_run_folder_that_is_a_dangling_link_is_said_so(capsys, tmp_path):
    # "cannot use RUN as a run directory (File exists); make it writable": the folder was not the trouble.
    (tmp_path / "run").symlink_to(tmp_path / "nowhere")
    status, lines, _ = cli(capsys, "train", "ae", "--dataset", "mnist-5k", "--limit", "64", "--epochs", "1",
                           "--out", tmp_path / "run")
    assert_one_line(status, lines, f"{tmp_path / 'run'} is a symbolic link to {tmp_path / 'nowhere'}, which does not "
                                   "exist; make that folder, or remove the link")
