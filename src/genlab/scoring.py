"""Score and repair new images with a trained run: ``genlab.load(RUN)``, ``genlab energy RUN --images ...`` and
``genlab denoise RUN --images ...``.

    >>> model = genlab.load("runs/dae-mnist")
    >>> model.energy(["photo.png", "scans/"])          # float64 [N]: low on the run's data, high off it
    >>> model.denoise(np.asarray(images, np.uint8))     # uint8, the model's repair of each image

Images are fitted to the run's shape first: resized to its height and width (OpenCV INTER_AREA) and made grey
or colour as the run's data were. An energy is put in context by the run's own held-out energies (its test
split): ``percentile`` is the share of them at or below it, and ``flag`` marks energies above the threshold that
a share ``fpr`` of the held-out images exceed (the false-positive rate on data like the training data).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from genlab.errors import GenlabError


class LoadedModel:
    """A trained run, ready to score and repair images (``genlab.load``)."""

    def __init__(self, run):
        self.run = run
        self.model = run.model
        self.shape = tuple(run.model_cfg.shape)  # (channels, height, width)
        self._heldout: np.ndarray | None = None

    def __repr__(self) -> str:
        return f"<genlab {self.run.model_name} {' x '.join(map(str, self.shape))} from {self.run.dir}>"

    # -- inputs -----------------------------------------------------------------------------------------------
    def images(self, images) -> torch.Tensor:
        """uint8 [N x H x W] or [N x C x H x W] in the run's shape, from: paths (files or folders, one or a list),
        a numpy uint8 array ([H x W], [N x H x W] or [N x H x W x C], an image library's layout, or a list of
        such images of any sizes) or a tensor
        (uint8 [N x H x W] or [N x C x H x W], genlab's layout; float in [0, 1] is taken as 255 levels)."""
        from genlab.data.files import _normalise, decode_files, image_paths, stack_images

        if isinstance(images, (str, Path)) or (isinstance(images, (list, tuple)) and images
                                               and all(isinstance(i, (str, Path)) for i in images)):
            return self.images_from_files(image_paths([images] if isinstance(images, (str, Path)) else images))
        if isinstance(images, torch.Tensor):
            t = images.detach().cpu()
            if t.is_floating_point():
                t = t.clamp(0, 1).mul(255).round().to(torch.uint8)
            if t.dtype != torch.uint8 or t.dim() not in (3, 4):
                raise GenlabError(f"expected a uint8 tensor [N x H x W] or [N x C x H x W], got {t.dtype} "
                                  f"{list(t.shape)}")
            array = t.numpy() if t.dim() == 3 else t.permute(0, 2, 3, 1).numpy()
        elif isinstance(images, (list, tuple)) and images and all(isinstance(i, np.ndarray) for i in images):
            array = list(images)  # images of different sizes: each is resized below
            bad = next((im for im in array if im.dtype != np.uint8 or im.ndim not in (2, 3)), None)
            if bad is not None:
                raise GenlabError(f"expected uint8 images [H x W] or [H x W x C], got {bad.dtype} {list(bad.shape)}")
        else:
            array = np.asarray(images)
            if array.dtype != np.uint8 or array.ndim not in (2, 3, 4):
                raise GenlabError(f"expected uint8 images [H x W], [N x H x W] or [N x H x W x C], got {array.dtype} "
                                  f"{list(array.shape)}")
            array = array[None] if array.ndim == 2 else array
        if not len(array):
            raise GenlabError("no images given")
        decoded = [_normalise(im, "array") for im in array]
        return torch.from_numpy(stack_images(decoded, [f"image {i}" for i in range(len(decoded))], shape=self.shape))

    def images_from_files(self, files: Sequence[str | Path]) -> torch.Tensor:
        """Image files (not folders) decoded into the run's shape, through the user cache."""
        from genlab.data.files import decode_files
        return torch.from_numpy(decode_files(files, shape=self.shape))

    # -- energies ---------------------------------------------------------------------------------------------
    def energy(self, images, batch_size: int = 1000) -> np.ndarray:
        """The model's energy of each image: float64 [N], low on the run's data, high off it."""
        return self._energies(self.images(images), batch_size)

    def _energies(self, u8: torch.Tensor, batch_size: int = 1000) -> np.ndarray:
        from genlab.metrics.anomaly import energies
        if self.model.conditional:
            raise GenlabError(f"{self.run.model_name} gives an energy only with a class label; score images with "
                              "an unconditional model (ae, dae, vae, ebgan, dcgan)")
        return energies(self.model, u8, batch_size)

    def heldout_energies(self) -> np.ndarray:
        """Energies of the run's held-out images (its test split), sorted: float64 [M]. Kept in the user cache,
        keyed by the checkpoint's and the data's size and modification time, so a second command reuses them."""
        if self._heldout is None:
            from genlab.data import run_dataset
            key = self._heldout_key()
            cached = _read_heldout(key)
            if cached is None:
                cached = np.sort(self._energies(run_dataset(self.run.train_cfg, "test", download=False).images))
                _write_heldout(key, cached)
            self._heldout = cached
        return self._heldout

    def _heldout_key(self) -> str:
        import hashlib
        import json
        from genlab.checkpoint import CHECKPOINT, CONFIG
        from genlab.config import to_dict

        stamps = []
        dataset = self.run.train_cfg.dataset
        for path in (Path(self.run.dir) / CHECKPOINT, Path(self.run.dir) / CONFIG,
                     Path(dataset.partition(":")[2]) if dataset.startswith(("folder:", "npz:")) else None):
            if path is not None and path.exists():
                info = path.stat()
                stamps.append([str(path.resolve()), info.st_size, info.st_mtime_ns])
        text = json.dumps([stamps, to_dict(self.run.train_cfg)], sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def percentile(self, energy) -> np.ndarray:
        """Share (in %) of the held-out energies at or below each energy."""
        held = self.heldout_energies()
        return 100.0 * np.searchsorted(held, np.asarray(energy, float), side="right") / len(held)

    def threshold(self, fpr: float = 0.01) -> float:
        """The energy that at most a share ``fpr`` of the held-out images exceed: flag energies above it."""
        if not 0.0 <= fpr <= 1.0:
            raise GenlabError(f"--fpr must be between 0 and 1, got {fpr}")
        held = self.heldout_energies()
        return float(np.quantile(held, 1.0 - fpr, method="higher"))

    # -- repairs ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def denoise(self, images, batch_size: int = 1000) -> np.ndarray:
        """The model's repair (reconstruction) of each image: uint8 [N x H x W] (grey) or [N x C x H x W]."""
        from genlab.data.batching import to_pixels, to_uint8
        from genlab.rng import seeded

        u8 = self.images(images)
        model = self.model.eval()
        out = []
        with seeded(0):
            for i in range(0, len(u8), batch_size):
                x = to_pixels(u8[i:i + batch_size], model.pixel_range).to(model.device)
                try:
                    y = model.reconstruct(x) if not model.conditional else None
                except NotImplementedError:
                    y = None
                if y is None:
                    raise GenlabError(f"a {self.run.model_name} model has no reconstruction to repair images with; "
                                      "use ae, dae, vae or ebgan (its energy still scores images: genlab energy)")
                out.append(to_uint8(y.float().cpu(), model.pixel_range))
        return torch.cat(out).numpy()


def _heldout_path(key: str) -> Path:
    from genlab.data import cache_dir
    return cache_dir() / "heldout" / f"{key}.npy"


def _read_heldout(key: str) -> np.ndarray | None:
    try:
        values = np.load(_heldout_path(key), allow_pickle=False)
        return values if values.dtype == np.float64 and values.ndim == 1 and len(values) else None
    except (OSError, ValueError):
        return None


def _write_heldout(key: str, values: np.ndarray) -> None:
    from genlab.data.datasets import _write_cache_file
    _write_cache_file(_heldout_path(key), lambda f: np.save(f, values))


def load(run_dir: str | Path, device: str = "cpu") -> LoadedModel:
    """A trained run directory as a ``LoadedModel`` with ``.energy(images)`` and ``.denoise(images)``."""
    from genlab.checkpoint import load_run
    return LoadedModel(load_run(run_dir, device=device))


# -- command line ---------------------------------------------------------------------------------------------
def energy_command(args: argparse.Namespace) -> int:
    """``genlab energy RUN --images PATH... [--out scores.csv] [--fpr 0.01]``: one CSV row per image file."""
    from genlab.data.files import image_paths

    if args.out and not args.out.endswith(".csv"):
        raise GenlabError(f"--out with --images writes a CSV: give a name ending in .csv, got {args.out}")
    model = load(args.run_dir, args.device)
    paths = image_paths(args.images)
    energy = model._energies(model.images_from_files(paths))
    percentile, threshold = model.percentile(energy), model.threshold(args.fpr)
    flags = energy > threshold
    out = open(args.out, "w", newline="") if args.out else sys.stdout
    try:
        writer = csv.writer(out)
        writer.writerow(["path", "energy", "percentile", "flag"])
        for path, e, p, f in zip(paths, energy, percentile, flags):
            writer.writerow([str(path), f"{e:.9g}", f"{p:.2f}", int(f)])
    finally:
        if args.out:
            out.close()
    if args.out:
        print(f"wrote {len(paths)} rows to {args.out}: {int(flags.sum())} flagged above energy {threshold:.6g} "
              f"(held-out false-positive rate {args.fpr:g})")
    return 0


def _cmd_denoise(args: argparse.Namespace) -> int:
    from genlab.data.files import encode_png, image_paths

    model = load(args.run_dir, args.device)
    paths = image_paths(args.images)
    inputs = model.images_from_files(paths).numpy()
    repaired = model.denoise(torch.from_numpy(inputs))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    for path, before, after in zip(paths, inputs, repaired):
        base = Path(path).stem
        stem, k = base, 1
        while stem in used:  # files of the same name in different folders
            k += 1
            stem = f"{base}-{k}"
        used.add(stem)
        gap = np.full(before.shape[:-1] + (2,), 255, np.uint8)
        (out / f"{stem}.png").write_bytes(encode_png(after))
        (out / f"{stem}-pair.png").write_bytes(encode_png(np.concatenate([before, gap, after], axis=-1)))
    print(f"wrote {len(paths)} repairs and {len(paths)} side-by-side pairs (input | repair) to {out}")
    return 0


def add_cli(subparsers) -> None:
    """Add ``genlab denoise``; ``genlab energy --images`` lives with the energy command."""
    p = subparsers.add_parser("denoise", help="repair your own images with a model that reconstructs",
                              description="Write the model's repair (reconstruction) of each image as OUT/NAME.png "
                                          "and a side-by-side OUT/NAME-pair.png (input | repair). Images are "
                                          "resized to the run's size and made grey or colour as its data.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by genlab train")
    p.add_argument("--images", nargs="+", required=True, metavar="PATH", help="image files or folders of them")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the PNGs")
    p.add_argument("--device", default="cpu", help="cpu (default), auto, cuda or cuda:N")
    p.set_defaults(func=_cmd_denoise)


def add_energy_flags(p: argparse.ArgumentParser) -> None:
    """``--images`` and ``--fpr`` for ``genlab energy``."""
    p.add_argument("--images", nargs="+", metavar="PATH", help="score these image files or folders instead: one "
                   "CSV row per file (path, energy, percentile among the held-out energies, flag)")
    p.add_argument("--fpr", type=float, default=0.01, help="with --images: flag energies above the threshold this "
                   "share of held-out images exceed (default: 0.01)")


__all__: Sequence[str] = ("LoadedModel", "load")
