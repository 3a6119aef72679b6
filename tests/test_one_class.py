"""Training on some classes only (``--classes``): the training split keeps those labels, the test split keeps
every class, a model trained on one digit gives it the lowest energies, and bad values end with one line."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from genlab import config as cfgmod
from genlab.checkpoint import load_run
from genlab.data import load_dataset
from genlab.errors import GenlabError
from genlab.metrics.anomaly import energies
from genlab.models import MODELS
from genlab.train import default_train_config, train

REPO = Path(__file__).resolve().parents[1]


def one_class_config(out: Path, **overrides) -> cfgmod.TrainConfig:
    base = cfgmod.to_dict(default_train_config("ae"))
    base.update(dataset="mnist-5k", epochs=1, batch_size=50, eval_limit=100, progress=False, figures=False,
                out=str(out))
    base.update(overrides)
    return cfgmod.from_dict(cfgmod.TrainConfig, base)


def steps_of(run_dir: Path) -> int:
    return json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])["step"]


def test_classes_keeps_only_those_labels(tmp_path):
    labels = load_dataset("mnist-5k", "train").labels
    n3 = int((labels == 3).sum())
    model_cfg = MODELS["ae"].Config(latent_dim=4)
    assert steps_of(train("ae", model_cfg, one_class_config(tmp_path / "three", classes="3"))) == math.ceil(n3 / 50)
    # --limit counts the kept images: 120 of the digits 0, 1 and 2 are 3 batches of 50
    assert steps_of(train("ae", model_cfg, one_class_config(tmp_path / "low", classes="2, 0,1,1", limit=120))) == 3
    run = load_run(tmp_path / "three")
    assert run.train_cfg.classes == "3" and run.train_cfg.class_list() == [3]


def test_a_model_of_one_digit_gives_it_the_lowest_energies(tmp_path):
    run_dir = train("ae", MODELS["ae"].Config(latent_dim=16), one_class_config(tmp_path / "one", classes="1",
                                                                               epochs=5))
    test = load_dataset("mnist-5k", "test")
    energy = energies(load_run(run_dir).model, test.images)
    assert roc_auc_score((test.labels != 1).numpy(), energy) > 0.9


@pytest.mark.parametrize("bad", ["1,x", "1000", "-1", ",", "3;4", "1.5"])
def test_bad_classes_is_one_error(bad):
    with pytest.raises(GenlabError, match="--classes"):
        cfgmod.TrainConfig(classes=bad)


def test_classes_the_data_does_not_have_are_one_error(tmp_path):
    # Labels are checked against the data when it loads: a folder of 20 classes may train on class 15, MNIST
    # has no class 10.
    from genlab.train import train

    cfg = cfgmod.TrainConfig(dataset="mnist-5k", classes="3,10", epochs=1, limit=64, progress=False, figures=False,
                             out=str(tmp_path / "run"))
    with pytest.raises(GenlabError, match="mnist-5k has no training images of label 10; its labels are 0 to 9"):
        train("ae", None, cfg)


@pytest.mark.slow
def test_bad_classes_on_the_command_line_exit_2_with_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "genlab.cli", "train", "ae", "--classes", "1,x", "--out",
                             str(tmp_path / "x")], capture_output=True, text=True, cwd=REPO, env=dict(os.environ),
                            timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("genlab: error: --classes"), result.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("args", [["--models", "gan"], ["--classes", "12"], ["--datasets", "cifar"]])
def test_the_benchmark_refuses_bad_lists_in_one_line(args, capsys):
    spec = importlib.util.spec_from_file_location("one_class", REPO / "benchmarks" / "one_class.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.one_line_errors(lambda: bench.main(args), "one_class.py") == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"one_class.py: error: {args[0]}"), lines


def test_no_classes_trains_on_every_label():
    assert cfgmod.TrainConfig().class_list() == []
    assert np.array_equal(cfgmod.TrainConfig(classes=" 9,0 ").class_list(), [0, 9])
