"""Test set-up: real MNIST through GENLAB_DATA_DIR (CI points it at ../shared/data), quiet progress bars."""

import os
from pathlib import Path

import genlab  # noqa: F401  (first: it sets PyTorch's OpenMP threads to wait passively, before torch loads)
import pytest

REPO = Path(__file__).resolve().parents[1]
_shared = REPO.parent / "shared" / "data"
if "GENLAB_DATA_DIR" not in os.environ and (_shared / "mnist").is_dir():
    os.environ["GENLAB_DATA_DIR"] = str(_shared)
os.environ.setdefault("GENLAB_OFFLINE", "1")  # tests never reach out to the network

# The README's test command runs the tests in several processes (pytest-xdist's `-n auto`, one per core): each
# takes its share of the cores for PyTorch's threads rather than all of them, so the workers do not fight.
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _workers > 1:
    import torch

    from genlab.distributed import usable_cpus

    torch.set_num_threads(max(1, usable_cpus() // _workers))


def mnist_available() -> bool:
    root = os.environ.get("GENLAB_DATA_DIR")
    return bool(root) and (Path(root) / "mnist").is_dir()


needs_mnist = pytest.mark.skipif(not mnist_available(), reason="full MNIST not found: set GENLAB_DATA_DIR")


@pytest.fixture(autouse=True)
def cpu_unless_a_cuda_test(request, monkeypatch):
    """Every test but those of tests/test_cuda.py is of genlab on the CPU, as CI runs it. On a GPU machine
    ``--device auto`` would take CUDA there: two torchrun processes would each want a GPU of their own, and
    tests of exact CPU numbers would measure another device. So "auto" means the CPU for them, in this process
    and in the processes they start (CUDA_VISIBLE_DEVICES, read when CUDA starts in a new process);
    tests/test_cuda.py is where genlab is tested on the GPU."""
    if request.path.name == "test_cuda.py":
        yield
        return
    import torch

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    yield
