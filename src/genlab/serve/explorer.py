"""What the explorer computes, with no web framework: the loaded runs and one method per action of the page.

Every image goes in and out as [28 x 28] float on [0, 1] (0 = background, 1 = ink), whatever the model's own
pixel range; ``encode_image`` turns one into the wire format (base64 of 784 uint8 bytes, row-major). Everything
a request may ask for is bounded here (``LIMITS``), so the same caps hold for the page and for scripts.

Loaded once at start-up, per model: its run (weights from safetensors, eval mode), its data set's first
``test_limit`` test digits, their energies (sorted, for the percentile gauge) and, for a VAE, the 2-D layout of
their means (PCA, see ``LatentMap``). Requests never copy a model; the caller runs them one at a time.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from genlab.checkpoint import CHECKPOINT, CONFIG, Run, find_runs, labels_said, load_run
from genlab.data.batching import to_unit
from genlab.distributed import resolve_device
from genlab.errors import GenlabError

# Caps on the work one request may ask for.
LIMITS = {
    "descend_steps": 32,   # gradient steps of one descent
    "samples": 64,         # images of one sample grid
    "walk_steps": 16,      # images of one walk through z or one interpolation strip
    "draw_batch": 64,      # drawings scored in one batched pass
}
TAIL_LINE_BYTES = 4096  # a metrics line is well under this (a few hundred bytes)
METRICS_TAIL = 2000  # metrics lines of a watched run sent to the page
MAX_FIGURE_BYTES = 64 << 20  # a watched figure the page may fetch (genlab's own are well under 1 MB; read whole)


def encode_image(unit: np.ndarray | Tensor) -> str:
    """[28 x 28] (or [1 x 28 x 28]) on [0, 1] -> base64 of 784 uint8 bytes, row-major (255 = ink)."""
    a = unit.detach().float().cpu().numpy() if isinstance(unit, Tensor) else np.asarray(unit, np.float32)
    return base64.b64encode(np.rint(np.clip(a.reshape(-1), 0, 1) * 255).astype(np.uint8).tobytes()).decode()


def _plottable(value) -> bool:
    """A metric the page can plot: a finite number that a float holds (a hand-edited log may hold anything)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value) if isinstance(value, float) else abs(value) < 2 ** 53


def encode_images(unit: Tensor) -> list[str]:
    """``encode_image`` of each image of a batch [N x ...], read back from the device in one copy."""
    return [encode_image(image) for image in unit.detach().float().cpu().numpy()]


def decode_image(text: str) -> np.ndarray:
    """The inverse of ``encode_image``: [28 x 28] float32 on [0, 1]."""
    return np.frombuffer(base64.b64decode(text), np.uint8).reshape(28, 28).astype(np.float32) / 255


def _check_label(m: Loaded, label: int | None) -> None:
    """A label the conditional model ``m`` learned (a run on three classes has ten class slots, seven of them
    never trained)."""
    learned = m.model.learned_classes if getattr(m.model, "conditional", False) else None
    if label is not None and learned is not None and label not in learned:
        raise GenlabError(f"'label' {label}: {m.name} learned the classes {labels_said(learned)} only")


def _unique_name(path: Path, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_.-]", "-", path.name)[:40] or "run"
    name, k = base, 2
    while name in taken:
        name, k = f"{base}-{k}", k + 1
    taken.add(name)
    return name


def _to_model(x_unit: Tensor, model) -> Tensor:
    """[N x 1 x 28 x 28] on [0, 1] -> the model's pixel range."""
    return x_unit * 2 - 1 if model.pixel_range == "tanh" else x_unit


def _seeded_normal(n: int, d: int, seed: int) -> Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


@dataclass
class LatentMap:
    """A VAE's test means laid out in 2-D by PCA: ``xy = (mu - mean) @ axes``.

    PCA rather than t-SNE: it is computed in milliseconds at start-up, is the same on every start, and is a
    linear map, so the straight interpolation between two codes is a straight line on the map too. Hovering
    decodes the mean of the test digit nearest to the cursor (a real code: a 2-D point of a d-dimensional
    latent has no unique code, and the PCA plane alone decodes to blurred averages when d > 2).
    """

    mu: Tensor        # [N x d] test means
    xy: np.ndarray    # [N x 2] their layout
    explained: list   # share of the variance along each of the two axes

    @classmethod
    def of(cls, mu: Tensor) -> "LatentMap":
        mu = torch.nan_to_num(mu, nan=0.0, posinf=0.0, neginf=0.0)  # a code that overflowed: at the origin
        centred = mu - mu.mean(0, keepdim=True)
        _, s, vt = torch.linalg.svd(centred, full_matrices=False)
        k = min(2, vt.shape[0])
        xy = (centred @ vt[:k].T).numpy()
        if k == 1:  # a 1-D latent: the second axis is 0
            xy = np.concatenate([xy, np.zeros_like(xy)], 1)
        var = (s ** 2) / max(float((s ** 2).sum()), 1e-12)
        return cls(mu, xy.astype(np.float64), [float(v) for v in var[:2]])

    def nearest(self, x: float, y: float) -> int:
        return int(np.argmin(((self.xy - [x, y]) ** 2).sum(1)))


@dataclass
class Loaded:
    """One run as the explorer uses it."""
    name: str
    run: Run
    images: Tensor                 # uint8 [N x 28 x 28], the first test digits of its data set
    labels: Tensor                 # int64 [N]
    energies: np.ndarray           # float64 [N], sorted: the test digits' energies
    reconstructs: bool
    latent: LatentMap | None = None

    @property
    def model(self):
        return self.run.model

    def describe(self) -> dict:
        m = self.model
        info = {"name": self.name, "model": self.run.model_name, "dir_name": self.run.dir.name,
                "pixel_range": m.pixel_range, "reconstructs": self.reconstructs, "can_sample": m.can_sample,
                "dataset": self.run.train_cfg.dataset, "epochs": self.run.counters.get("epoch"),
                "test_images": len(self.images),
                "energy_percentiles": {str(q): float(np.percentile(self.energies, q)) for q in (5, 50, 95)},
                "energy_doc": (type(m).energy.__doc__ or "").strip().splitlines()[0]}
        if self.latent is not None:
            info["latent_dim"] = int(self.latent.mu.shape[1])
        info["conditional"] = bool(getattr(m, "conditional", False))
        if info["conditional"]:
            info["classes"] = m.learned_classes  # the labels it learned: a sample of another is noise
        if hasattr(m.cfg, "nz") or (info["conditional"] and m.can_sample):  # a generator panel: GANs, cvae
            info["nz"] = Explorer._latent_size(m)
        return info

    def percentile(self, energy: float) -> float:
        """Percent of the test digits whose energy is at most ``energy``."""
        return 100.0 * float(np.searchsorted(self.energies, energy, side="right")) / len(self.energies)


def _mtime(path: Path) -> float | None:
    """When ``path`` was last modified, or None where it is missing (or a link to nothing)."""
    try:
        return path.stat().st_mtime
    except OSError:
        return None


@dataclass
class Watched:
    """A run in progress: its metrics and figures are read afresh on each poll, its checkpoint reloaded
    when it changes (for a sample grid from fixed noise)."""
    name: str
    dir: Path
    stamp: tuple = ()  # the modification times of the checkpoint and config.json its samples were drawn from
    samples: list = field(default_factory=list)
    sample_epoch: int | None = None
    note: str = ""


class Explorer:
    """The runs named on the command line, loaded once; each method is one action of the page."""

    def __init__(self, run_dirs=(), watch_dirs=(), test_limit: int = 1000, device: str = "cpu", say=None):
        """``say``: where a note goes (the folders a folder of runs holds that are not runs)."""
        if test_limit < 10:
            raise GenlabError(f"--test-limit must be at least 10, got {test_limit}")
        self.device = resolve_device(device) if isinstance(device, str) else torch.device(device)
        self.test_limit = test_limit
        taken: set[str] = set()
        self.models: dict[str, Loaded] = {}
        for path in find_runs(run_dirs, say) if run_dirs else []:
            name = _unique_name(path, taken)
            self.models[name] = self._load(name, path)
        self.watched: dict[str, Watched] = {}
        for raw in watch_dirs:
            path = Path(raw)
            if not str(raw).strip():
                raise GenlabError("--watch is empty (''); name the folder of a run (the --out of genlab train)")
            if path.exists() and not path.is_dir():
                raise GenlabError(f"--watch {path} is a file, not a folder; name the folder of a run (the --out of "
                                  "genlab train)")
            if not path.is_dir():
                raise GenlabError(f"--watch {path}: no such directory (start genlab train --out {path} first)")
            if not (path / CONFIG).exists() and any(not p.name.startswith(".") for p in path.iterdir()):
                raise GenlabError(f"--watch {path}: holds files but no genlab run ({CONFIG}); give a run directory "
                                  "(the --out of genlab train), an empty folder a run will start in, or for a "
                                  "genlab reproduce folder each of its runs (--watch FOLDER/ae ...)")
            name = _unique_name(path, taken)
            self.watched[name] = Watched(name, path)
        if not self.models and not self.watched:
            raise GenlabError("nothing to serve: name run directories, a genlab reproduce folder, or --watch RUN_DIR")

    # -- loading ----------------------------------------------------------------------------------------
    def _load(self, name: str, path: Path) -> Loaded:
        # Loaded outside inference mode: weights made inside it could never take part in a gradient (descend).
        run = load_run(path, self.device)
        shape = tuple(run.model_cfg.shape)
        if shape != (1, 28, 28):
            raise GenlabError(f"{path}: the explorer shows models of 28 x 28 grey images, this one works on "
                              f"{' x '.join(map(str, shape))} images; score its images with genlab energy --images")
        test = run.dataset("test", download=False)  # the run's own options: size, grey
        images, labels = test.images[:self.test_limit], test.labels[:self.test_limit]
        with torch.inference_mode():
            x = _to_model(images.float().div(255).unsqueeze(1).to(self.device), run.model)
            energies = torch.cat([run.model.energy(x[i:i + 500]) for i in range(0, len(x), 500)])
            loaded = Loaded(name, run, images, labels, np.sort(energies.double().cpu().numpy()),
                            run.model.can_reconstruct)
            if run.model_name == "vae":
                mu = run.model.encode(run.model.binarize(x))[0].float().cpu()
                loaded.latent = LatentMap.of(mu)
        return loaded

    def get(self, name: str) -> Loaded:
        if name not in self.models:
            raise KeyError(name)
        return self.models[name]

    def describe(self) -> dict:
        return {"models": [m.describe() for m in self.models.values()], "watch": list(self.watched),
                "limits": LIMITS}

    # -- draw -------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def draw(self, inputs: list[np.ndarray], wanted: list[list[str]]) -> list[dict]:
        """Score a batch of drawings with the models each asks for, one batched pass per model.

        :param inputs: B arrays [28 x 28] on [0, 1] (already MNIST-style). :param wanted: B lists of model names.
        :return: B dicts {model name: {energy, percentile, reconstruction, error}} (images base64, see
            ``encode_image``; ``error`` is |input - reconstruction| per pixel on [0, 1]).
        """
        out: list[dict] = [{} for _ in inputs]
        x_all = torch.from_numpy(np.stack(inputs).astype(np.float32)).unsqueeze(1).to(self.device)
        for name, m in self.models.items():
            idx = [i for i, w in enumerate(wanted) if name in w]
            if not idx:
                continue
            x_unit = x_all[idx]
            x = _to_model(x_unit, m.model)
            energy, recon = m.model.energy_and_reconstruction(x)  # the draw endpoint's work, halved
            energy = energy.double().cpu().numpy()
            if recon is not None:  # both images of the whole batch to uint8 at once: [B x 2 x 784]
                recon = to_unit(recon, m.model.pixel_range)
                pair = torch.stack([recon, (recon - x_unit).abs()], 1).flatten(2)
                pair = pair.mul(255).round_().to(torch.uint8).cpu().numpy()
            for j, i in enumerate(idx):
                e = float(energy[j])
                item = {"energy": e if math.isfinite(e) else None, "percentile": m.percentile(e)}
                if recon is not None:
                    item["reconstruction"] = base64.b64encode(pair[j, 0].tobytes()).decode()
                    item["error"] = base64.b64encode(pair[j, 1].tobytes()).decode()
                out[i][name] = item
        return out

    def descend(self, name: str, image: np.ndarray, steps: int, step_size: float) -> dict:
        """Move ``image`` downhill on model ``name``'s energy: ``steps`` gradient steps, each of RMS size
        ``step_size`` (on the [0, 1] pixel scale), kept inside the pixel range. A step that would raise the
        energy is halved (up to 6 times), so the frames go downhill: a fixed step overshoots near the bottom.

        :return: {"frames": [base64 image], "energies": [float], "step_sizes": [float]}, the start first.
        """
        model = self.get(name).model
        x = _to_model(torch.from_numpy(image.astype(np.float32)).view(1, 1, 28, 28).to(self.device), model)
        lo, span = (-1.0, 2.0) if model.pixel_range == "tanh" else (0.0, 1.0)

        def energy_of(v: Tensor) -> float:
            with torch.inference_mode():
                return float(model.energy(v)[0])

        frames, energies, sizes = [encode_image(to_unit(x[0], model.pixel_range))], [energy_of(x)], []
        for _ in range(steps):
            with torch.enable_grad():
                xg = x.detach().requires_grad_(True)
                (g,) = torch.autograd.grad(self._energy_for_gradient(model, xg).sum(), xg)
            rms = g.pow(2).mean().sqrt()
            if not rms > 0:  # flat: nothing further downhill from here
                break
            size = step_size
            for _ in range(7):
                candidate = (x - size * span * g / rms).clamp(lo, lo + span)
                e = energy_of(candidate)
                if e <= energies[-1]:
                    break
                size /= 2
            else:  # no step lowers the energy: a (local) minimum at this resolution
                break
            x = candidate
            frames.append(encode_image(to_unit(x[0], model.pixel_range)))
            energies.append(e)
            sizes.append(size)
        return {"frames": frames, "energies": energies, "step_sizes": sizes}

    @staticmethod
    def _energy_for_gradient(model, x: Tensor) -> Tensor:
        # A VAE that binarises its input has a zero gradient through the threshold; its free energy of the
        # grey image (rec + beta * KL, z = mu) gives the direction. The frames' energies are the model's own.
        from genlab.models.vae import VAE
        if isinstance(model, VAE):
            t = model.terms(x, sample=False)
            return t["rec"] + model.cfg.beta * t["kl_dim"].sum(1)
        return model.energy(x)

    # -- corrupt and repair ------------------------------------------------------------------------------
    def repair(self, name: str, index: int, rate: float, seed: int) -> dict:
        """Test digit ``index`` of DAE ``name``'s data set, the lecture's dropout corruption at ``rate``, and
        the DAE, Telea and Navier-Stokes repairs with their PSNR (dB, whole image and dropped pixels only)."""
        from genlab.metrics.inpainting import inpaint_all, psnr

        m = self.get(name)
        clean_u8 = m.images[index:index + 1]
        with torch.inference_mode():
            c, outs = inpaint_all(m.model, clean_u8, rate, seed=seed)
        clean = clean_u8.numpy().astype(np.float64) / 255
        dropped = c.dropped
        repairs = {}
        for method, title in (("dae", "DAE"), ("telea", "Telea"), ("ns", "Navier-Stokes")):
            img = outs[method]
            whole, holes = float(psnr(img, clean)[0]), float(psnr(img, clean, dropped)[0])
            repairs[method] = {"title": title, "image": encode_image(img[0]),
                               "psnr": whole if math.isfinite(whole) else None,
                               "psnr_dropped": holes if math.isfinite(holes) else None}
        return {"index": index, "label": int(m.labels[index]), "rate": rate, "seed": seed,
                "clean": encode_image(clean[0]), "corrupted": encode_image(c.img8[0] / 255),
                "dropped": int(dropped.sum()), "repairs": repairs}

    # -- latent map ---------------------------------------------------------------------------------------
    def latent_points(self, name: str) -> dict:
        lm = self.get(name).latent
        m = self.get(name)
        return {"method": "pca", "explained": lm.explained, "xy": np.round(lm.xy, 4).tolist(),
                "labels": m.labels.tolist(), "latent_dim": int(lm.mu.shape[1])}

    @torch.inference_mode()
    def latent_decode(self, name: str, x: float, y: float) -> dict:
        m = self.get(name)
        i = m.latent.nearest(x, y)
        img = m.model.decode(m.latent.mu[i:i + 1].to(self.device))[0]
        return {"index": i, "label": int(m.labels[i]), "xy": m.latent.xy[i].tolist(), "image": encode_image(img)}

    @torch.inference_mode()
    def interpolate(self, name: str, a: int, b: int, steps: int) -> dict:
        m = self.get(name)
        mu = m.latent.mu.to(self.device)
        t = torch.linspace(0, 1, steps, device=self.device).unsqueeze(1)
        imgs = m.model.decode((1 - t) * mu[a] + t * mu[b])
        return {"a": a, "b": b, "images": encode_images(imgs),
                "labels": [int(m.labels[a]), int(m.labels[b])]}

    # -- sampling and walks ----------------------------------------------------------------------------------
    @staticmethod
    def _latent_size(model) -> int:
        return int(model.cfg.nz if hasattr(model.cfg, "nz") else model.cfg.latent_dim)

    def _generate(self, model, z: Tensor, label: int | None = None) -> Tensor:
        """Images [N x 1 x 28 x 28] in the model's range from codes z [N x nz]: a VAE's decoder mean, a GAN's
        (averaged, where kept) generator in evaluation mode. A conditional model draws digits of class
        ``label`` (None: the classes it learned in turn); the others take no label."""
        z = z.to(self.device)
        if getattr(model, "conditional", False):
            turns = torch.tensor(model.learned_classes or list(range(10)), device=self.device)
            y = torch.full((len(z),), label, device=self.device) if label is not None else \
                turns[torch.arange(len(z), device=self.device) % len(turns)]
            cond = torch.nn.functional.one_hot(y, 10).to(z.dtype)
            if not hasattr(model, "generator"):  # cvae: the decoder's mean given the class
                return torch.sigmoid(model.decode_logits(z, cond))
            with model.sampling_net() as net:
                return net(torch.cat([z, cond], 1))
        if label is not None:
            raise GenlabError(f"{type(model).__name__.lower()} is not conditional: it takes no label")
        if not hasattr(model, "generator"):
            return model.decode(z)
        from genlab.models.gan_common import resize
        with model.sampling_net() as net:
            return resize(net(z), (28, 28))

    @torch.inference_mode()
    def sample(self, name: str, n: int, seed: int, label: int | None = None) -> dict:
        """``n`` samples from fixed noise (``seed``), of class ``label`` for a conditional model, and each one's
        energy under the same model (for a GAN, its discriminator's)."""
        m = self.get(name)
        _check_label(m, label)
        imgs = self._generate(m.model, _seeded_normal(n, self._latent_size(m.model), seed), label)
        energies = m.model.energy(imgs).double().cpu().tolist()
        unit = to_unit(imgs, m.model.pixel_range)
        return {"images": encode_images(unit), "energies": energies,
                "percentiles": [m.percentile(e) for e in energies]}

    @torch.inference_mode()
    def walk(self, name: str, seed: int, steps: int, scale: float, label: int | None = None) -> dict:
        """A straight walk z0 + t u, t from -scale to scale, with z0 and the unit direction u drawn from ``seed``;
        for a conditional model the class stays ``label`` while z, the style, moves."""
        m = self.get(name)
        _check_label(m, label)
        d = self._latent_size(m.model)
        z0 = _seeded_normal(1, d, seed)
        u = _seeded_normal(1, d, seed + 1)
        u = u / u.norm()
        t = torch.linspace(-scale, scale, steps).unsqueeze(1)
        imgs = self._generate(m.model, z0 + t * u, label)
        energies = m.model.energy(imgs).double().cpu().tolist()
        return {"images": encode_images(to_unit(imgs, m.model.pixel_range)), "energies": energies,
                "t": t[:, 0].tolist()}

    # -- watching a run in progress ----------------------------------------------------------------------------
    def watch_state(self) -> dict:
        """Each watched run's metrics (the last ``METRICS_TAIL`` complete lines), its figures (name, mtime) and a
        sample grid of its latest checkpoint when it can sample."""
        return {"runs": [self._watch_one(w) for w in self.watched.values()]}

    def _watch_one(self, w: Watched) -> dict:
        metrics, lines, unreadable = [], [], []
        path = w.dir / "metrics.jsonl"
        try:
            if path.is_file():
                with open(path, "rb") as f:  # the tail only: a poll read a 300 MB log whole, 1.1 s each time
                    f.seek(0, os.SEEK_END)
                    start = max(0, f.tell() - METRICS_TAIL * TAIL_LINE_BYTES)
                    f.seek(start)
                    lines = f.read().split(b"\n")[1 if start else 0:]  # a line cut by the seek is not one
        except OSError as e:  # its permissions taken away, say: said in the run's note, not a 500 for every poll
            unreadable.append(f"cannot read {path.name} ({e.strerror or e})")
        for line in lines[-METRICS_TAIL - 1:]:
            try:
                record = json.loads(line)
            except (ValueError, RecursionError):  # a line still being written, a blank one, or a hostile one
                continue
            if isinstance(record, dict) and type(record.get("epoch")) is int:  # an epoch's line, not a stray one
                metrics.append({k: v for k, v in record.items() if _plottable(v)})
        try:
            self._refresh_samples(w)
        except OSError as e:  # the checkpoint unreadable: the samples of the last one read stay
            unreadable.append(f"cannot read {CHECKPOINT} ({e.strerror or e})")
        figures = self._figures(w, unreadable)
        return {"name": w.name, "dir_name": w.dir.name, "metrics": metrics[-METRICS_TAIL:],
                "figures": [{"name": k, "mtime": v[1]} for k, v in figures.items()],
                "samples": w.samples, "sample_epoch": w.sample_epoch,
                "note": "; ".join(text for text in [*unreadable, w.note] if text)}

    @staticmethod
    def _figures(w: Watched, unreadable: list | None = None) -> dict[str, tuple[Path, float]]:
        """The run's PNG figures by file name, newest first: the only files ``figure`` will read. Figures this
        process may not read, or larger than ``MAX_FIGURE_BYTES``, are left out (and the figures folder, if it
        cannot be listed, said in ``unreadable``). A name's bytes that are not UTF-8 are listed as U+FFFD,
        the name a client's request for it arrives with."""
        found = []
        fig_dir = w.dir / "figures"
        try:
            entries = list(fig_dir.iterdir()) if fig_dir.is_dir() else []
        except OSError as e:
            entries = []
            if unreadable is not None:
                unreadable.append(f"cannot list figures/ ({e.strerror or e})")
        for entry in entries:
            # A figure being written is NAME.tmp.png until it is renamed; either may vanish while we look.
            if entry.suffix != ".png" or entry.name.endswith(".tmp.png"):
                continue
            try:
                if entry.is_file() and not entry.is_symlink() and os.access(entry, os.R_OK):
                    info = entry.stat()
                    if info.st_size <= MAX_FIGURE_BYTES:
                        name = os.fsencode(entry.name).decode("utf-8", "replace")
                        found.append((name, (entry, info.st_mtime)))
            except OSError:
                continue
        return dict(sorted(found, key=lambda kv: -kv[1][1]))

    def figure(self, run: str, file_name: str) -> bytes:
        """The bytes of figure ``file_name`` of watched run ``run``, looked up in the run's own listing (never
        a path built from the request)."""
        figures = self._figures(self.watched[run])
        with open(figures[file_name][0], "rb") as f:  # grown past the cap since it was listed: a KeyError too
            data = f.read(MAX_FIGURE_BYTES + 1)
        if len(data) > MAX_FIGURE_BYTES:
            raise KeyError(file_name)
        return data

    @torch.inference_mode()
    def _refresh_samples(self, w: Watched) -> None:
        ckpt = w.dir / CHECKPOINT
        if not ckpt.is_file():
            w.note = "no checkpoint yet" if w.dir.is_dir() else f"{w.dir} is gone (moved or deleted)"
            w.samples, w.sample_epoch, w.stamp = [], None, ()
            return
        # config.json too: an edited or broken one was not seen until the next checkpoint
        stamp = (ckpt.stat().st_mtime, _mtime(w.dir / CONFIG))
        if stamp == w.stamp:
            return
        try:
            run = load_run(w.dir, self.device)
        except GenlabError as e:  # caught between writes, or a damaged file: try again at the next poll
            w.note = str(e)
            return
        w.stamp, w.note = stamp, ""
        w.sample_epoch = run.counters.get("epoch")
        if run.model.can_sample:
            imgs = self._generate(run.model, _seeded_normal(16, self._latent_size(run.model), 0))
            w.samples = encode_images(to_unit(imgs, run.model.pixel_range))
