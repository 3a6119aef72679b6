"""What a GPU needs of a training step, checked on the CPU: the step never reads a value back to the host and
never builds a tensor on the host.

On a GPU either one costs a wait: reading a value (``if loss > x``, ``.item()``, ``.tolist()``, ``float(t)``,
a boolean-mask index) waits for every queued kernel, and a tensor built on the host must be copied over or
mixes devices. ``tests/test_cuda.py`` checks the same on a real GPU with CUDA's sync debug mode; this test
sees the Python calls behind those waits, so CI (which has no GPU) catches them too. Reads inside PyTorch's
own C++ (one_hot's range check on a CPU, which on a GPU is a device-side assert) are not Python calls and are
not counted.
"""

from __future__ import annotations

import traceback

import pytest
import torch
from torch.overrides import TorchFunctionMode

import genlab.train as train_mod
from genlab import config as cfgmod
from genlab.models import MODELS
from genlab.train import default_train_config, train

READS = {"__bool__", "__float__", "__int__", "__index__", "item", "tolist", "numpy", "cpu", "nonzero",
         "argwhere", "masked_select", "unique"}
HOST_DATA = {"tensor", "as_tensor", "from_numpy"}
FACTORIES = {"zeros", "ones", "full", "empty", "arange", "linspace", "randn", "rand", "randint", "randperm", "eye"}


class HostCalls(TorchFunctionMode):
    """Records each call in genlab's code that would make a GPU step wait, with the line that made it."""

    def __init__(self):
        super().__init__()
        self.found: set[tuple[str, str]] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        problem = None
        if name in READS:
            problem = f"reads a value back ({name})"
        elif name in HOST_DATA:
            problem = f"copies host data ({name})"
        elif name in FACTORIES and kwargs.get("device") is None:
            problem = f"builds a tensor on the host ({name} without device=)"
        elif name == "__getitem__" and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool
                                           for i in (args[1] if isinstance(args[1], tuple) else (args[1],))):
            problem = "indexes with a boolean mask"
        if problem:
            ours = [f for f in traceback.extract_stack()[:-1] if "/genlab/" in f.filename.replace("\\", "/")]
            where = f"{ours[-1].filename.rsplit('genlab', 1)[-1]}:{ours[-1].lineno} {ours[-1].line}" if ours else "?"
            self.found.add((problem, where))
        return func(*args, **kwargs)


# Every model with its defaults, and the options that change what a step computes.
CASES = [(name, {}) for name in sorted(MODELS)] + [
    ("cvae", {"condition": "quadrants"}), ("vae", {"objective": "iwae", "binarize": "dynamic"}),
    ("dae", {"corruption": "gaussian"}), ("dae", {"corruption": "salt-pepper"}), ("dae", {"arch": "conv"})]


@pytest.mark.parametrize("name,options", CASES, ids=[f"{n}-{'-'.join(map(str, o.values())) or 'default'}"
                                                     for n, o in CASES])
def test_training_steps_read_nothing_back_and_build_nothing_on_the_host(name, options, tmp_path, monkeypatch):
    spy, real_step = HostCalls(), train_mod._step

    def watched_step(*args, **kwargs):
        with spy:
            return real_step(*args, **kwargs)

    monkeypatch.setattr(train_mod, "_step", watched_step)
    base = cfgmod.to_dict(default_train_config(name))
    base.update(dataset="mnist-5k", epochs=1, batch_size=64, limit=128, eval_limit=100, progress=False,
                figures=False, out=str(tmp_path / "run"))
    train(name, MODELS[name].Config(**options), cfgmod.from_dict(cfgmod.TrainConfig, base))
    assert not spy.found, sorted(spy.found)


def test_the_check_sees_a_read_back_and_a_host_tensor():
    spy = HostCalls()
    x = torch.randn(4)
    with spy:
        if x.max() > 10:  # a read
            pass
        x + torch.ones(4)  # a host tensor
    assert {problem for problem, _ in spy.found} == {"reads a value back (__bool__)",
                                                     "builds a tensor on the host (ones without device=)"}
