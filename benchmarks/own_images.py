"""genlab on your own images: the acceptance measurements of folder:/npz: data sets, energy --images and denoise.

    python benchmarks/own_images.py folder  --work W   # a: Fashion-MNIST as PNG folders == --dataset fashion-mnist
    python benchmarks/own_images.py photos  --work W   # b: LFW faces (AE) and colour photo patches (conv DAE, VAE)
    python benchmarks/own_images.py ood     --work W   # c: DAE on MNIST, energy --images on digits + clothes
    python benchmarks/own_images.py speed   --work W   # d: energy --images on 10,000 PNGs; the model alone

Needs MNIST and Fashion-MNIST in the data directory ($GENLAB_DATA_DIR). Every step prints its numbers; the
user cache is W/cache so "first run" really decodes.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

FASHION_CLASSES = ("0-tshirt", "1-trouser", "2-pullover", "3-dress", "4-coat", "5-sandal", "6-shirt", "7-sneaker",
                   "8-bag", "9-ankle-boot")


def write_pngs(images: np.ndarray, labels: np.ndarray | None, folder: Path, names=None, offset: int = 0) -> None:
    """uint8 [N, H, W] or [N, 3, H, W] as PNG files, named by index, in class sub-folders when labels are given."""
    from genlab.data.files import encode_png
    for i, image in enumerate(images):
        sub = folder / (names[labels[i]] if labels is not None else "")
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"{offset + i:05d}.png").write_bytes(encode_png(image))


def genlab(*argv: str, env: dict | None = None) -> tuple[float, str]:
    """Run the genlab command; (seconds, stdout)."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "genlab.cli", *argv], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    seconds = time.perf_counter() - started
    if done.returncode:
        sys.exit(f"genlab {' '.join(argv)} failed:\n{done.stderr}")
    return seconds, done.stdout


def final_loss(run: Path) -> dict:
    import json
    return json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])


# -- a ----------------------------------------------------------------------------------------------------------
def folder(work: Path) -> None:
    import torch
    from genlab.data import clear_cache, load_dataset

    root = work / "fashion-png"
    if not root.exists():
        for split in ("train", "test"):
            data = load_dataset("fashion-mnist", split)
            write_pngs(data.images.numpy(), data.labels.numpy(), root / split, FASHION_CLASSES)
    spec = f"folder:{root}"
    for split in ("train", "test"):
        ref, mine = load_dataset("fashion-mnist", split), load_dataset(spec, split)
        same = torch.equal(ref.images, mine.images) and torch.equal(ref.labels, mine.labels)
        print(f"a: {split}: {len(mine)} PNGs, images {tuple(mine.images.shape)} {mine.images.dtype}, identical to "
              f"--dataset fashion-mnist: {same}")
    clear_cache()
    code = ("import os, time; from genlab.data import load_dataset; t, c = time.perf_counter(), time.process_time(); "
            f"load_dataset({spec!r}, 'train'); load_dataset({spec!r}, 'test'); "
            "print(f'{time.perf_counter() - t:.3f} s wall, {time.process_time() - c:.3f} s CPU, load average "
            "{os.getloadavg()[0]:.2f}')")
    for _ in range(3):
        timing = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        print(f"a: second load (cached), a fresh process, both splits: {timing.strip()}")
    for name, dataset in (("builtin", "fashion-mnist"), ("folder", spec)):
        run = work / f"a-ae-{name}"
        if not run.exists():
            genlab("train", "ae", "--dataset", dataset, "--epochs", "1", "--seed", "0", "--out", str(run),
                   "--no-figures", "--no-progress")
        record = final_loss(run)
        print(f"a: ae 1 epoch seed 0 on {name}: train/loss {record['train/loss']!r} test/loss {record['test/loss']!r}")


# -- b ----------------------------------------------------------------------------------------------------------
def photo_patches(n: int = 6000, side: int = 32, seed: int = 0) -> np.ndarray:
    """``n`` colour patches [n, side, side, 3]: square crops (side to 3 x side pixels, shrunk by area averaging)
    of the colour sample photographs of scikit-image and scikit-learn."""
    import cv2
    from skimage import data
    from sklearn.datasets import load_sample_images

    photos = [np.asarray(getattr(data, name)())[..., :3] for name in ("astronaut", "coffee", "chelsea", "rocket")]
    photos += list(load_sample_images().images)
    rng = np.random.default_rng(seed)
    out = np.empty((n, side, side, 3), np.uint8)
    for i in range(n):
        photo = photos[i % len(photos)]
        crop = int(rng.integers(side, 3 * side + 1))
        top, left = int(rng.integers(0, photo.shape[0] - crop + 1)), int(rng.integers(0, photo.shape[1] - crop + 1))
        out[i] = cv2.resize(photo[top:top + crop, left:left + crop], (side, side), interpolation=cv2.INTER_AREA)
    return out


def photos(work: Path, epochs: int) -> None:
    from skimage.data import lfw_subset

    faces = work / "lfw.npz"
    np.savez(faces, images=(lfw_subset() * 255).round().astype(np.uint8))  # 200 grey faces, 25 x 25, floats in [0, 1]
    patches = work / "patches.npz"
    np.savez(patches, images=photo_patches())
    runs = [("ae", f"npz:{faces}", ["--image-size", "28", "--epochs", "200", "--batch-size", "32", "--latent-dim", "30"]),
            ("dae", f"npz:{patches}", ["--arch", "conv", "--epochs", str(epochs), "--batch-size", "64"]),
            ("vae", f"npz:{patches}", ["--arch", "conv", "--epochs", str(epochs), "--batch-size", "64"])]
    for model, dataset, flags in runs:
        run = work / f"b-{model}"
        if not run.exists():
            seconds, _ = genlab("train", model, "--dataset", dataset, "--out", str(run), "--no-progress", *flags)
            print(f"b: {model} on {dataset}: {seconds:.0f} s")
        record = final_loss(run)
        print(f"b: {model} {' '.join(flags)}: test/loss {record['test/loss']:.5g}; figures in {run / 'figures'}")


# -- c ----------------------------------------------------------------------------------------------------------
def ood(work: Path, epochs: int) -> None:
    from genlab.data import load_dataset
    from sklearn.metrics import roc_auc_score

    mnist_train, mnist_test = load_dataset("mnist", "train"), load_dataset("mnist", "test")
    fashion_test = load_dataset("fashion-mnist", "test")
    # Train on all 60,000 training digits; calibrate on test digits 0..8999; score the other 1,000 test digits
    # (never seen, not in the calibration set) mixed with 1,000 Fashion-MNIST test images.
    data = work / "mnist-9k-heldout.npz"
    if not data.exists():
        np.savez(data, x_train=mnist_train.images.numpy(), y_train=mnist_train.labels.numpy(),
                 x_test=mnist_test.images[:9000].numpy(), y_test=mnist_test.labels[:9000].numpy())
    mix = work / "mix"
    if not mix.exists():
        write_pngs(mnist_test.images[9000:].numpy(), None, mix / "digits", offset=9000)
        write_pngs(fashion_test.images[:1000].numpy(), None, mix / "fashion")
    run = work / "c-dae"
    if not run.exists():
        seconds, _ = genlab("train", "dae", "--dataset", f"npz:{data}", "--epochs", str(epochs), "--out", str(run),
                            "--no-progress", "--no-figures")
        print(f"c: dae trained {epochs} epochs in {seconds:.0f} s")
    scores = work / "c-scores.csv"
    seconds, out = genlab("energy", str(run), "--images", str(mix), "--out", str(scores), "--fpr", "0.01")
    print(f"c: genlab energy {run} --images {mix} --out {scores} --fpr 0.01 ({seconds:.1f} s): {out.strip()}")
    rows = list(csv.DictReader(scores.open()))
    is_fashion = np.array(["/fashion/" in r["path"] for r in rows])
    energy, flag = np.array([float(r["energy"]) for r in rows]), np.array([int(r["flag"]) for r in rows])
    print(f"c: {len(rows)} rows ({(~is_fashion).sum()} digits, {is_fashion.sum()} Fashion-MNIST); AUROC "
          f"{roc_auc_score(is_fashion, energy):.4f}; digits flagged {100 * flag[~is_fashion].mean():.2f}%, "
          f"Fashion-MNIST flagged {100 * flag[is_fashion].mean():.2f}%")


# -- d ----------------------------------------------------------------------------------------------------------
def speed(work: Path) -> None:
    import torch
    from genlab.data import load_dataset

    pngs = work / "mnist-test-png"
    if not pngs.exists():
        write_pngs(load_dataset("mnist", "test").images.numpy(), None, pngs)
    run = work / "c-dae"
    import shutil
    cache = work / "cache-d"  # an empty user cache: the first run decodes and scores the held-out split
    shutil.rmtree(cache, ignore_errors=True)
    for attempt in ("first (decodes 10,000 PNGs)", "cached", "cached"):
        seconds, _ = genlab("energy", str(run), "--images", str(pngs), "--out", str(work / "d-scores.csv"),
                            env={"XDG_CACHE_HOME": str(cache)})
        print(f"d: genlab energy c-dae --images <10,000 PNGs>, {attempt}: {seconds:.2f} s (whole command; load "
              f"average {os.getloadavg()[0]:.2f})")
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import genlab.cli; genlab.cli.build_parser()"], check=True)
    print(f"d: of which starting Python and importing genlab's command line (torch): {time.perf_counter() - started:.2f} s")
    from genlab import load
    from genlab.data.batching import to_pixels
    model = load(run)
    x = to_pixels(model.images(pngs), "tanh")  # decoded and in the model's range: the model alone is timed
    for threads in (1, 2):
        torch.set_num_threads(threads)
        load_average = os.getloadavg()[0]
        with torch.no_grad():
            model.model.energy(x[:1000])
            best = float("inf")
            for _ in range(10):
                started = time.perf_counter()
                for i in range(0, len(x), 1000):
                    model.model.energy(x[i:i + 1000])
                best = min(best, time.perf_counter() - started)
        print(f"d: DAE energy alone, {threads} thread(s), batches of 1,000: {len(x) / best:,.0f} images/s (best of "
              f"10 passes over 10,000; load average {load_average:.2f} before)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=("folder", "photos", "ood", "speed"))
    parser.add_argument("--work", default="runs/own-images", help="folder for the data, runs and scores")
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    work = Path(args.work).absolute()
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("XDG_CACHE_HOME", str(work / "cache"))
    {"folder": folder, "photos": lambda w: photos(w, args.epochs), "ood": lambda w: ood(w, args.epochs),
     "speed": speed}[args.step](work)


if __name__ == "__main__":
    main()
