"""What `genlab denoise` repairs: MNIST test digits with half their pixels missing (p = 0.5), the holes black
or mid-grey, before and after a run's repair (PSNR in dB, the mean over images).

    genlab train dae --latent-dim 500 --epochs 20 --dataset mnist --out runs/dae500
    python benchmarks/denoise_holes.py runs/dae500 [--images 1000]

A DAE trained on dropout (the lecture's) learnt holes where its corruption leaves them, mid-grey; black ones
read to it as background. Needs GENLAB_DATA_DIR pointing at the real MNIST.
"""

from __future__ import annotations

import argparse

import numpy as np

import genlab
from genlab.data import load_dataset
from genlab.errors import one_line_errors


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over images of the PSNR of uint8 images ``a`` against ``b``, in dB."""
    mse = (((a.astype(np.float64) - b.astype(np.float64)) / 255) ** 2).reshape(len(a), -1).mean(1)
    return float(np.mean(10 * np.log10(1 / np.maximum(mse, 1e-12))))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    p.add_argument("--images", type=int, default=1000, help="test digits used (default 1000)")
    args = p.parse_args()
    clean = load_dataset("mnist", "test").images[:args.images].numpy()
    missing = np.random.default_rng(0).random(clean.shape) < 0.5
    model = genlab.load(args.run_dir)
    for name, fill in (("black", 0), ("mid-grey", 128)):
        holed = np.where(missing, fill, clean).astype(np.uint8)
        print(f"{name:8s} holes: {psnr(holed, clean):.2f} dB with the holes, "
              f"{psnr(model.denoise(holed), clean):.2f} dB after genlab denoise")
    return 0


if __name__ == "__main__":
    raise SystemExit(one_line_errors(main))
