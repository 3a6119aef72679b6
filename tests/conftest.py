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


def mnist_available() -> bool:
    root = os.environ.get("GENLAB_DATA_DIR")
    return bool(root) and (Path(root) / "mnist").is_dir()


needs_mnist = pytest.mark.skipif(not mnist_available(), reason="full MNIST not found: set GENLAB_DATA_DIR")
