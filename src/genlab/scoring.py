"""Score and repair new images with a trained run: ``genlab.load(RUN)``, behind ``genlab energy RUN --images ...``
and ``genlab denoise RUN --images ...`` (genlab.commands).

    >>> model = genlab.load("runs/dae-mnist")
    >>> model.energy(["photo.png", "scans/"])          # float64 [N]: low on the run's data, high off it
    >>> model.denoise(np.asarray(images, np.uint8))     # uint8, the model's repair of each image
    >>> model.sample(64, seed=0)                        # uint8, a model that samples (complete(): a quadrant cvae)

Images are fitted to the run's shape first: resized to its height and width (OpenCV INTER_AREA) and made grey
or colour as the run's data were. An energy is put in context by the run's own held-out energies (its test
split): ``percentile`` is the share of them at or below it, and ``flag`` marks energies above the threshold that
a share ``fpr`` of the held-out images exceed (the false-positive rate on data like the training data).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from genlab.checkpoint import CHECKPOINT, CONFIG, load_run, trained_labels
from genlab.config import to_dict
from genlab.data import cache_dir
from genlab.data.batching import to_pixels, to_uint8
from genlab.data.datasets import write_cache_file
from genlab.data.files import (MAX_ARRAY_BYTES, decode_files, image_paths, is_file_dataset, normalise_image,
                               scan_images, stack_images)
from genlab.errors import GenlabError, describe_os_error
from genlab.metrics.anomaly import energies
from genlab.models import cannot_sample
from genlab.models.base import eval_batch, sample_count
from genlab.models.cvae import checked_task
from genlab.rng import seeded


HELDOUT_VERSION = 3  # 2: a run of some classes (--classes) is measured against those classes' images only;
# 3: a conditional run of some classes scores without a label over those classes only


def _os_errors_in_one_line(method):
    """A path the system refuses (a name too long, a folder that cannot be listed) is a GenlabError naming it,
    as on the command line, not Python's OSError."""
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except OSError as e:
            raise GenlabError(describe_os_error(e)) from None
    return wrapper


def _room_for(images: int, shape: Sequence[int], what: str) -> None:
    """Refuse, before drawing any, more images of ``shape`` than genlab holds in one array."""
    needed = images * math.prod(shape)
    if needed > MAX_ARRAY_BYTES:
        raise GenlabError(f"{what} of {' x '.join(map(str, shape))} pixels would take {needed / 2**30:.3g} GiB, "
                          f"more than the {MAX_ARRAY_BYTES >> 30} GiB genlab gives one array; ask for fewer at a "
                          "time (another seed for each call)")


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
    @_os_errors_in_one_line
    def images(self, images) -> torch.Tensor:
        """uint8 [N x H x W] or [N x C x H x W] in the run's shape, from: paths (files or folders, one or a list),
        a numpy array ([H x W] or [H x W x C] for one image; [N x H x W], [N x H x W x C], an image library's
        layout, or [N x C x H x W]; a list of such images of any sizes; for a grey run also [N x H*W], flat rows
        as scikit-learn's MNIST comes) or a tensor (the same; with channels [N x C x H x W], genlab's layout, or
        [N x H x W x C] where only that reading fits). Pixels are uint8, or floats in [0, 1] (taken as 255
        levels); floats outside [0, 1] are refused rather than clipped."""
        if isinstance(images, (str, Path)) or (isinstance(images, (list, tuple)) and images
                                               and all(isinstance(i, (str, Path)) for i in images)):
            return self.images_from_files(image_paths([images] if isinstance(images, (str, Path)) else images))
        if isinstance(images, (list, tuple)) and not len(images):
            raise GenlabError("no images given")
        if isinstance(images, torch.Tensor):
            t = _dense_cpu(images, "a dense tensor")
            if not (t.is_floating_point() or t.dtype == torch.uint8):
                raise GenlabError(f"expected uint8 images, or floats in [0, 1], got a {t.dtype} tensor; convert it, "
                                  "e.g. with .byte() for 0..255 values")
            array = self._layout(_unit_floats_to_uint8(t.float().numpy() if t.is_floating_point() else t.numpy()),
                                 channels_last=False)
        elif isinstance(images, (list, tuple)) and all(_is_image(i) for i in images):
            array = [_unit_floats_to_uint8(_one_image(im)) for im in images]  # of different sizes: resized below
            bad = next((im for im in array if im.dtype != np.uint8 or im.ndim not in (2, 3)), None)
            if bad is not None:
                raise GenlabError(f"expected uint8 images [H x W] or [H x W x C], got {bad.dtype} {list(bad.shape)}")
        else:
            if not isinstance(images, (np.ndarray, list, tuple)) and not hasattr(images, "__array_interface__"):
                raise GenlabError(f"expected images (paths, a numpy array, a tensor or a list of images), got "
                                  f"{type(images).__name__}")
            try:
                array = _picture(images) if _is_picture(images) else np.asarray(images)
            except ValueError:  # a ragged list: a path beside an array, say
                raise GenlabError("expected a list of all paths or all images (numpy arrays), got a mix") from None
            if array.dtype.kind in "iub" and array.dtype != np.uint8:
                raise GenlabError(f"expected uint8 images, or floats in [0, 1], got {array.dtype}; convert 0..255 "
                                  "values with .astype(numpy.uint8)")
            array = self._layout(_unit_floats_to_uint8(array), channels_last=True)
        if not len(array):
            raise GenlabError("no images given")
        decoded = [normalise_image(im, "array") for im in array]
        return torch.from_numpy(stack_images(decoded, [f"image {i}" for i in range(len(decoded))], shape=self.shape))

    def _layout(self, array: np.ndarray, channels_last: bool) -> np.ndarray:
        """uint8 images as [N x H x W] or [N x H x W x C], read from the layouts ``images`` takes. Where a layout
        could be read two ways, the reading that makes sense wins: a grey run's [N x H*W] are N flat images, not
        one image N pixels tall (and so are [N x 1 x H*W] and [N x H*W x 1], not strips one pixel high); [H x W x 3]
        is one colour image, not H images 3 pixels wide; and a colour run's [3 x H x W] is one image in PyTorch's
        layout (torchvision's ``ToTensor`` gives it), not three grey ones."""
        if array.dtype != np.uint8 or array.ndim not in (2, 3, 4):
            layouts = "[H x W], [H x W x C], [N x H x W], [N x H x W x C] or [N x C x H x W]"
            raise GenlabError(f"expected uint8 images {layouts}, got {array.dtype} {list(array.shape)}")
        channels, height, width = self.shape
        if array.ndim == 2:
            if channels == 1 and array.shape[1] == height * width and array.shape != (height, width):
                return array.reshape(-1, height, width)  # flat rows
            if array.shape[1] in (3 * height * width, height * width):
                layout = f"{height} x {width}" + (" x 3" if array.shape[1] == 3 * height * width else "")
                raise GenlabError(f"got {len(array)} flat rows of {array.shape[1]} values; reshape them to images "
                                  f"[N x {layout}] (this run is {channels} x {height} x {width})")
            return array[None]  # one grey image
        if array.ndim == 3:
            if channels == 1 and sorted(array.shape[1:]) == [1, height * width] and height * width > 1:
                return array.reshape(-1, height, width)  # flat rows with an axis kept, [N x 1 x H*W] or [N x H*W x 1]
            if array.shape[2] in (1, 2, 3, 4) and array.shape[0] > 4 and array.shape[1] > 4:
                return array[None]  # one image with channels (grey, grey and alpha, colour), as libraries give it
            if channels == 3 and array.shape[0] == 3 and array.shape[1] > 4 and array.shape[2] > 4:
                return array.transpose(1, 2, 0)[None]  # one colour image [3 x H x W]: PyTorch's layout, the run's
            return array  # [N x H x W]
        if channels_last:  # an array: [N x H x W x C] unless only [N x C x H x W] makes sense
            nchw = array.shape[1] in (1, 3) and array.shape[3] not in (1, 3, 4)
        else:  # a tensor: [N x C x H x W] unless only [N x H x W x C] makes sense
            nchw = array.shape[1] in (1, 3, 4) or array.shape[3] not in (1, 3, 4)
        return array.transpose(0, 2, 3, 1) if nchw else array

    def images_from_files(self, files: Sequence[str | Path]) -> torch.Tensor:
        """Image files (not folders) decoded into the run's shape, through the user cache."""
        return torch.from_numpy(decode_files(files, shape=self.shape))

    # -- energies ---------------------------------------------------------------------------------------------
    @_os_errors_in_one_line
    def energy(self, images, batch_size: int = 1000) -> np.ndarray:
        """The model's energy of each image: float64 [N], low on the run's data, high off it."""
        return self._energies(self.images(images), _batch_size(batch_size))

    def _energies(self, u8: torch.Tensor, batch_size: int = 1000) -> np.ndarray:
        # A conditional model scores an image without its class: the free energy under a uniform class prior
        # (cvae's quadrants: the mean over its three completion tasks), as in the AUROC of genlab energy.
        return energies(self.model, u8, batch_size)

    @_os_errors_in_one_line
    def heldout_energies(self) -> np.ndarray:
        """Energies of the run's held-out images (its test split), sorted: float64 [M]. Kept in the user cache,
        keyed by the checkpoint's and the data's size and modification time, so a second command reuses them."""
        if self._heldout is None:
            key = self._heldout_key()
            cached = _read_heldout(key)
            if cached is None:
                test = self.run.dataset("test", download=False)
                images = test.images
                trained = self.run.train_cfg.class_list()
                if trained:  # a run of some classes: data like its training data are those classes' images
                    images = images[torch.isin(test.labels, torch.tensor(trained))]
                    if not len(images):
                        raise GenlabError(f"the test split of {self.run.train_cfg.dataset} holds no image of the "
                                          f"run's classes ({self.run.train_cfg.classes}), the ground of percentiles "
                                          "and thresholds; give the data set test images of those classes")
                cached = np.sort(self._energies(images))
                _write_heldout(key, cached)
            cached.flags.writeable = False  # the ground of every percentile: a caller's edit would move them
            self._heldout = cached
        return self._heldout

    def _heldout_key(self) -> str:
        stamps = []
        dataset = self.run.train_cfg.dataset
        for path in (Path(self.run.dir) / CHECKPOINT, Path(self.run.dir) / CONFIG,
                     Path(dataset.partition(":")[2]) if is_file_dataset(dataset) else None):
            if path is not None and path.exists():
                info = path.stat()
                stamps.append([str(path.resolve()), info.st_size, info.st_mtime_ns])
        if dataset.startswith("folder:") and Path(dataset[len("folder:"):]).is_dir():
            # Every image file's size and time: a folder's own time stays put when files in its class
            # sub-folders change, and the held-out energies (percentiles, flags) went stale.
            listing = json.dumps(scan_images(dataset[len("folder:"):]))
            stamps.append(hashlib.sha256(listing.encode(errors="surrogateescape")).hexdigest())
        # The device too: a GPU computes the same energies to a few digits only (TF32 convolutions, other
        # kernels), so percentiles and thresholds are taken against energies from the device that scores.
        text = json.dumps([HELDOUT_VERSION, stamps, to_dict(self.run.train_cfg), self.model.device.type],
                          sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def percentile(self, energy) -> np.ndarray:
        """Share (in %) of the held-out energies at or below each energy."""
        try:  # text ("500") and None would be read by NumPy as a number and as NaN
            if isinstance(energy, (str, bytes)) or energy is None:
                raise TypeError
            values = np.asarray(energy, float)
        except (TypeError, ValueError):
            raise GenlabError(f"percentile takes energies (numbers, as energy() gives them), got "
                              f"{type(energy).__name__} {str(energy)[:40]!r}") from None
        if not np.isfinite(values).all():
            raise GenlabError("percentile takes finite energies; an energy that is NaN or infinite has no percentile")
        held = self.heldout_energies()
        return 100.0 * np.searchsorted(held, values, side="right") / len(held)

    def threshold(self, fpr: float = 0.01) -> float:
        """The energy that a share ``fpr`` of the held-out images exceed, as nearly as their count allows: of M
        held-out energies, the floor(fpr * M) highest lie above it (fewer where energies tie; M - 1 at most).
        Flag energies above it."""
        if isinstance(fpr, bool) or not isinstance(fpr, (int, float, np.integer, np.floating)):
            raise GenlabError(f"fpr (--fpr) is a number between 0 and 1, got {fpr!r}")
        if not 0.0 <= fpr <= 1.0:
            raise GenlabError(f"fpr (--fpr) must be between 0 and 1, got {fpr}")
        held = self.heldout_energies()  # sorted
        above = min(math.floor(fpr * len(held) + 1e-9), len(held) - 1)  # + 1e-9: 0.01 * 500 is 5, not 4.999...
        return float(held[len(held) - 1 - above])

    # -- samples and completions ----------------------------------------------------------------------------
    @_os_errors_in_one_line
    def sample(self, n: int, seed: int = 0, batch_size: int = 1000) -> np.ndarray:
        """``n`` of the model's samples as uint8 pixels, laid out as ``denoise`` gives them (grey [N x H x W],
        colour [N x C x H x W]), so that ``energy(sample(n))`` scores them whatever the model's own pixel range
        (``model.sample`` gives floats in it: [0, 1] or [-1, 1]). The same ``seed`` gives the same samples on
        one device; the caller's random stream is left alone. A conditional model's samples cycle through the
        classes the run learned."""
        model, count = self.model.eval(), sample_count(n)
        if not model.can_sample:
            raise GenlabError(cannot_sample(self.run.model_name, model))
        _room_for(count, self.shape, f"{count} samples")
        seed = _seed(seed)
        generator = torch.Generator().manual_seed(seed)
        batch_size = eval_batch(_batch_size(batch_size), self.shape)
        labels = torch.tensor(trained_labels(self.run))
        out = []
        with torch.no_grad(), seeded(seed):
            for start in range(0, count, batch_size):
                size = min(batch_size, count - start)
                if model.conditional:
                    ys = labels[torch.arange(start, start + size) % len(labels)].to(model.device)
                    x = model.sample(size, ys, generator=generator)
                else:
                    x = model.sample(size, generator=generator)
                out.append(to_uint8(x.float().cpu(), model.pixel_range))
        if not out:
            return np.zeros((0, *self.shape[1:]) if self.shape[0] == 1 else (0, *self.shape), np.uint8)
        return torch.cat(out).numpy()

    @_os_errors_in_one_line
    def complete(self, images, observed: int, n: int = 1, seed: int = 0) -> np.ndarray:
        """A quadrant cvae's ``n`` completions of each image from ``observed`` quadrants (1: the lower left,
        2: the left half, 3: all but the lower right; the rest of each image is not looked at): uint8
        [n x N x H x W], the observed pixels kept. Seeded as ``sample`` is."""
        if not getattr(self.model, "quadrants", False):
            raise GenlabError(f"completing quadrants needs a cvae trained with --condition quadrants; "
                              f"{self.run.dir} holds a {self.run.model_name} run")
        count, seed = sample_count(n), _seed(seed)
        generator = torch.Generator().manual_seed(seed)
        u8 = self.images(images)
        _room_for(count * len(u8), self.shape, f"{count} x {len(u8)} completions")
        if not count:
            checked_task(observed)  # a task that is not one is refused, asked for none
            return np.zeros((0, *u8.shape), np.uint8)
        x = to_pixels(u8, self.model.pixel_range).to(self.model.device)
        with torch.no_grad(), seeded(seed):
            done = self.model.eval().complete(x, observed, count, generator=generator)
        return to_uint8(done.flatten(0, 1).float().cpu(), self.model.pixel_range).view(
            count, len(x), *self.shape[1:]).numpy()

    # -- repairs ----------------------------------------------------------------------------------------------
    @_os_errors_in_one_line
    @torch.no_grad()
    def denoise(self, images, batch_size: int = 1000) -> np.ndarray:
        """The model's repair (reconstruction) of each image: uint8 [N x H x W] (grey) or [N x C x H x W]."""
        name, others = self.run.model_name, "use an ae, dae, vae or ebgan run"
        if not self.model.can_reconstruct:
            raise GenlabError(f"a {name} model has no reconstruction to repair images with; {others}")
        if getattr(self.model, "quadrants", False):
            raise GenlabError(f"a {name} model trained with --condition quadrants completes digits from observed "
                              f"quadrants (its model's complete()); it has no repair of whole images: {others}")
        if self.model.conditional:
            raise GenlabError(f"a {name} model repairs a digit only given its class, and these images come without "
                              f"labels; {others}")
        batch_size = _batch_size(batch_size)
        u8 = self.images(images)
        model = self.model.eval()
        batch_size = eval_batch(batch_size, u8.shape[1:])
        out = []
        with seeded(0):
            for i in range(0, len(u8), batch_size):
                x = to_pixels(u8[i:i + batch_size], model.pixel_range).to(model.device)
                y = model.reconstruct(x)
                out.append(to_uint8(y.float().cpu(), model.pixel_range))
        return torch.cat(out).numpy()


def _is_image(item) -> bool:
    """Whether a list item is one image: a numpy array, a tensor or an image library's picture (PIL's)."""
    return isinstance(item, (np.ndarray, torch.Tensor)) or hasattr(item, "__array_interface__")


def _one_image(item) -> np.ndarray:
    """One image of a list as an array [H x W] or [H x W x C]; an array or a tensor [C x H x W] (PyTorch's layout,
    genlab's) too: a list of such arrays was refused while a list of such tensors was read."""
    if isinstance(item, torch.Tensor):
        t = _dense_cpu(item, "dense tensors")
        item = (t.float() if t.is_floating_point() else t).numpy()
    array = _picture(item) if _is_picture(item) else np.asarray(item)
    chw = array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[2] not in (1, 3, 4)
    return array.transpose(1, 2, 0) if chw else array


def _dense_cpu(t: torch.Tensor, what: str) -> torch.Tensor:
    """A tensor of images, detached and on the CPU; sparse, nested and meta tensors (no pixels to read) refused.
    ``what``: what was expected, for the message."""
    if t.is_nested or t.layout != torch.strided:
        kind = "nested" if t.is_nested else str(t.layout).removeprefix("torch.")
        raise GenlabError(f"expected {what} of images, got a {kind} one; convert it with .to_dense() (a nested "
                          "tensor: pass its images as a list)")
    if t.device.type == "meta":
        raise GenlabError(f"expected {what} of images, got a meta tensor, which holds no pixels")
    return t.detach().cpu()


def _is_picture(item) -> bool:
    """Whether ``item`` is an image library's picture (PIL's): it has a mode and converts between modes."""
    return hasattr(item, "mode") and callable(getattr(item, "convert", None)) and hasattr(item, "__array_interface__")


# A picture's pixels as numpy reads them are not always its colours: a palette picture's are indices into its
# palette, a 1-bit picture's are booleans, CMYK's four inks. Those are converted first.
PICTURE_MODES = {"P": "RGBA", "PA": "RGBA", "1": "L", "CMYK": "RGB", "YCbCr": "RGB", "LAB": "RGB", "HSV": "RGB"}


def _picture(item) -> np.ndarray:
    """A PIL picture as [H x W] or [H x W x C] pixels, in a mode whose numbers are its grey or colour levels."""
    mode = PICTURE_MODES.get(item.mode)
    return np.asarray(item.convert(mode) if mode else item)


def _seed(value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value < 2**63:
        raise GenlabError(f"seed is a whole number from 0 to 2**63 - 1, got {value!r}")
    return int(value)


def _batch_size(value) -> int:
    """``value`` if it is a whole number of at least 1 (a batch of -1 scored nothing and said nothing)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise GenlabError(f"batch_size must be a whole number of at least 1, got {value!r}")
    return int(value)


def _unit_floats_to_uint8(array: np.ndarray) -> np.ndarray:
    """Float pixels in [0, 1] as uint8 (255 levels); any other array unchanged. Floats outside [0, 1] (0..255
    values, NaN) are one clear error: clipping them would score a white or black image instead."""
    if not np.issubdtype(array.dtype, np.floating):
        return array
    if array.size and not (np.isfinite(array).all() and array.min() >= 0.0 and array.max() <= 1.0):
        finite = array[np.isfinite(array)]
        seen = ([f"values from {finite.min():.8g} to {finite.max():.8g}"] if finite.size else []) + \
            (["NaN or infinity"] if finite.size < array.size else [])
        raise GenlabError(f"float images must hold pixels in [0, 1], got {' and '.join(seen)}; divide 0..255 "
                          "values by 255, or pass uint8")
    return np.round(array * 255).astype(np.uint8)


def _heldout_path(key: str) -> Path:
    return cache_dir() / "heldout" / f"{key}.npy"


def _read_heldout(key: str) -> np.ndarray | None:
    try:
        values = np.load(_heldout_path(key), allow_pickle=False)
        sound = values.dtype == np.float64 and values.ndim == 1 and len(values) and np.isfinite(values).all()
        return values if sound else None  # a damaged file is a miss (computed afresh), not a wrong percentile
    except (OSError, ValueError):
        return None


def _write_heldout(key: str, values: np.ndarray) -> None:
    write_cache_file(_heldout_path(key), lambda f: np.save(f, values))


@_os_errors_in_one_line
def load(run_dir: str | Path, device: str = "cpu") -> LoadedModel:
    """A trained run directory as a ``LoadedModel`` with ``.energy(images)`` and ``.denoise(images)``."""
    return LoadedModel(load_run(run_dir, device=device))


__all__: Sequence[str] = ("LoadedModel", "load")
