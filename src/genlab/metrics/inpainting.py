"""Inpainting: the denoising autoencoder against OpenCV's Telea and Navier-Stokes (the lecture's Fig. 7).

The corruption is the lecture's: a noise mask ``Dropout(p)(ones)`` with values {0, s}, s = 1/(1-p), and the
corrupted image ``img_bad = img * mask`` on [-1, 1] pixels. Every method sees the same mask.

Protocol (how the three methods are compared fairly)
----------------------------------------------------
All scores are computed on the clean image's [0, 1] scale (``u8 / 255``), per image, then averaged.

- DAE: its input is the lecture's ``img_bad`` (below), its [-1, 1] output is mapped to [0, 1] as
  ``(y + 1) / 2``. The output is used as it is, also at kept pixels, as the lecture shows it.
- Telea / Navier-Stokes (``cv2.inpaint``, radius 3): the input is the 8-bit corrupted picture
  ``(img_bad / (2 s) + 0.5) * 255`` and the 8-bit mask (non-zero exactly where a pixel was dropped); the
  output, in 0..255, is divided by 255.

At p = 0.5 (s = 2) the 8-bit picture is exactly the lecture's ``(img_bad / 4 + 0.5) * 255``, and since a kept
pixel is ``2 img``, it shows kept pixels at their true grey value ``(img + 1) / 2``: the lecture's picture is
already on the clean image's scale, so the classical outputs compare with the clean image directly. At other
drop rates the lecture's literal ``/ 4`` would not: at p = 0.75 kept pixels are ``4 img`` and would map to
[-0.5, 1.5], clipped to 8 bits, destroying half the grey range (Telea falls from 15.4 dB to 10.8 dB on MNIST);
at p = 0.25 they would be squeezed into [1/6, 5/6]. Dividing by ``2 s`` instead is the same formula at the
lecture's rate and, at every rate, gives the classical methods the kept pixels at their true value, which an
inpainting method is entitled to since the mask is known. The dropped pixels (0, mid-grey) are masked, so
their 8-bit value does not matter.

The DAE gets exactly ``img_bad``, the lecture's input at every rate: kept pixels scaled by 1/(1-p) as
``Dropout(p)`` does, so the expected input equals the clean image, the property its training at p = 0.5 relied
on (a DAE trained with ``--unscaled-mask`` gets the {0, 1} mask instead). On the lecture's DAE this beats
showing kept pixels at the training scale 2 at p = 0.25 (22.6 against 22.1 dB) and is within 0.2 dB at 0.75.

Because the classical methods return kept pixels unchanged (up to 8-bit rounding) while the DAE redraws every
pixel, scores are also given over the dropped pixels only, where all methods do the same job.

The masks for different drop rates come from the same uniform draws (``keep = u >= p`` with ``u`` from a
generator seeded with ``seed``), so the pixels dropped at p = 0.25 are also dropped at p = 0.5 and 0.75.

On the 10,000 MNIST test digits at p = 0.5 (seed 0) this gives Telea 17.9 dB, Navier-Stokes 18.8 dB and the
lecture's DAE (d = 500, 20 epochs) 20.3 dB over the whole image.
"""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from scipy.ndimage import uniform_filter
from torch import Tensor

from genlab.data.batching import to_pixels
from genlab.distributed import usable_cpus
from genlab.errors import GenlabError
from genlab.models.base import eval_batch
from genlab.models.dae import dropout_mask

DROP_RATES = (0.25, 0.5, 0.75)
METHODS = ("dae", "telea", "ns")
METHOD_TITLES = {"dae": "DAE", "telea": "Telea", "ns": "Navier-Stokes"}
CV2_FLAGS = {"telea": cv2.INPAINT_TELEA, "ns": cv2.INPAINT_NS}
SSIM_WIN = 7  # skimage's default window; its mean SSIM leaves out a border of SSIM_WIN // 2 pixels


def _numpy(a) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, Tensor) else np.asarray(a)


def image_batch(a) -> np.ndarray:
    """[N x 28 x 28] or [N x 1 x 28 x 28] -> [N x H x W] numpy."""
    a = _numpy(a)
    if a.ndim == 4:
        if a.shape[1] != 1:
            raise GenlabError(f"expected single-channel images [N x 1 x H x W], got shape {list(a.shape)}")
        a = a[:, 0]
    if a.ndim != 3:
        raise GenlabError(f"expected a batch of images [N x H x W], got shape {list(a.shape)}")
    return a


# -- the lecture's corruption ------------------------------------------------------------------------------
@dataclass
class Corruption:
    """One draw of the lecture's dropout corruption for a batch of N images at drop rate ``p``.

    ``noise``: [N x 1 x 28 x 28] float, the lecture's mask, values {0, 1/(1-p)}.
    ``img_bad``: [N x 1 x 28 x 28] float, ``img * noise`` with ``img`` on [-1, 1] (so on [-2/(1-p), 2/(1-p)]).
    ``img8``: [N x 28 x 28] uint8, the 8-bit corrupted picture given to OpenCV (see ``corrupted_uint8``).
    ``mask8``: [N x 28 x 28] uint8, 255 exactly where a pixel was dropped, else 0 (OpenCV's inpainting mask).
    """

    p: float
    noise: Tensor
    img_bad: Tensor
    img8: np.ndarray
    mask8: np.ndarray

    @property
    def dropped(self) -> np.ndarray:
        """[N x 28 x 28] bool, True where a pixel was dropped."""
        return self.mask8 > 0


def corrupted_uint8(img_bad: Tensor, scale: float) -> np.ndarray:
    """The 8-bit picture of a corrupted image: ``(img_bad / (2 * scale) + 0.5) * 255``.

    :param img_bad: [N x 1 x 28 x 28], ``img * mask`` with mask values {0, ``scale``} and ``img`` on [-1, 1].
    :return: [N x 28 x 28] uint8, rounded to the nearest integer (halves to even, so a dropped pixel's 127.5
        becomes 128) and clipped to [0, 255] (a no-op for images that were on [-1, 1]).

    With ``scale`` = 2 (p = 0.5) this is the lecture's ``(img_bad / 4 + 0.5) * 255``; a kept pixel of clean
    8-bit value ``u`` comes back as exactly ``u``.
    """
    v = (_numpy(img_bad)[:, 0].astype(np.float64) / (2 * scale) + 0.5) * 255
    return np.clip(np.rint(v), 0, 255).astype(np.uint8)


def lecture_corruption(images_u8, p: float, seed: int = 0) -> Corruption:
    """Corrupt uint8 images [N x 28 x 28] as the lecture does, at drop rate ``p`` (0 < p < 1).

    The mask is ``genlab.models.dae.dropout_mask`` drawn from a CPU generator seeded with ``seed``; the same
    seed gives nested masks across drop rates.
    """
    if not 0.0 < p < 1.0:
        raise GenlabError(f"drop rate must satisfy 0 < p < 1, got {p}")
    img = to_pixels(torch.as_tensor(_numpy(images_u8)), "tanh")  # [N x 1 x 28 x 28] on [-1, 1], the lecture's
    generator = torch.Generator().manual_seed(seed)
    noise = dropout_mask(img.shape, p, scaled=True, generator=generator)
    img_bad = img * noise
    mask8 = np.where(_numpy(noise)[:, 0] == 0, 255, 0).astype(np.uint8)
    return Corruption(p=p, noise=noise, img_bad=img_bad, img8=corrupted_uint8(img_bad, 1.0 / (1.0 - p)), mask8=mask8)


# -- methods -----------------------------------------------------------------------------------------------
def inpaint_classical(img8, mask8, method: str = "telea", radius: int = 3) -> np.ndarray:
    """OpenCV inpainting of each image: uint8 [N x H x W] and mask [N x H x W] (non-zero = fill) -> uint8 [N x H x W].

    ``method``: "telea" (Telea 2004, fast marching) or "ns" (Bertalmio et al. 2001, Navier-Stokes).
    """
    if method not in CV2_FLAGS:
        raise GenlabError(f"unknown inpainting method {method!r}; choose telea or ns")
    img8, mask8 = image_batch(img8), image_batch(mask8)
    if img8.dtype != np.uint8 or img8.shape != mask8.shape:
        raise GenlabError(f"inpaint_classical needs uint8 images and a mask of the same shape, got "
                          f"{img8.dtype} {list(img8.shape)} and {list(mask8.shape)}")
    mask8 = (mask8 != 0).astype(np.uint8)
    flag = CV2_FLAGS[method]

    # OpenCV has no batch API: one call per image (about 0.3 ms for 28 x 28). It lets go of Python's lock
    # while it works, so a thread per core shares the images out.
    def chunk(rows: range) -> np.ndarray:
        out = np.empty_like(img8[rows.start:rows.stop])
        for i in rows:
            out[i - rows.start] = cv2.inpaint(np.ascontiguousarray(img8[i]), np.ascontiguousarray(mask8[i]),
                                              radius, flag)
        return out

    cores = usable_cpus()
    step = max(64, -(-len(img8) // cores))
    with ThreadPoolExecutor(cores) as pool:
        parts = list(pool.map(chunk, [range(i, min(i + step, len(img8))) for i in range(0, len(img8), step)]))
    return np.concatenate(parts) if parts else np.empty_like(img8)


def dae_mask_scale(model, p: float) -> float:
    """The non-zero mask value the DAE ``model`` gets at drop rate ``p``: the lecture's 1/(1-p), or 1 for a DAE
    trained with ``--unscaled-mask``."""
    return 1.0 if getattr(model.cfg, "unscaled_mask", False) else 1.0 / (1.0 - p)


@torch.no_grad()
def inpaint_dae(model, corruption: Corruption, batch_size: int = 1000) -> np.ndarray:
    """The DAE's output for the corrupted images, mapped to [0, 1]: float [N x 28 x 28].

    The input is the lecture's ``img_bad`` on [-1, 1] (see the module docstring).
    """
    model.eval()
    p = corruption.p
    # img_bad * (1 - p) is img on kept pixels and 0 on dropped ones; a no-op for the lecture's scaled mask.
    x = corruption.img_bad if dae_mask_scale(model, p) != 1.0 else corruption.img_bad * (1.0 - p)
    batch_size = eval_batch(batch_size, x.shape[1:])
    out = []
    for i in range(0, len(x), batch_size):
        y = model(x[i:i + batch_size].to(model.device))
        out.append(((y.float().cpu() + 1) / 2).clamp(0, 1))
    return torch.cat(out)[:, 0].numpy().astype(np.float64)


def inpaint_all(model, images_u8, p: float, seed: int = 0, batch_size: int = 1000,
                radius: int = 3) -> tuple[Corruption, dict[str, np.ndarray]]:
    """Corrupt ``images_u8`` at drop rate ``p`` and inpaint with every method.

    :return: the corruption and {method: float [N x 28 x 28] on [0, 1]} for "dae", "telea" and "ns".
    """
    c = lecture_corruption(images_u8, p, seed)
    outs = {"dae": inpaint_dae(model, c, batch_size)}
    for method in ("telea", "ns"):
        outs[method] = inpaint_classical(c.img8, c.mask8, method, radius).astype(np.float64) / 255
    return c, outs


# -- scores ------------------------------------------------------------------------------------------------
def psnr(a, b, mask=None) -> np.ndarray:
    """Peak signal-to-noise ratio per image on [0, 1] (peak 1): ``10 log10(1 / MSE)`` in dB.

    :param a, b: [N x H x W] or [N x 1 x H x W] on [0, 1].
    :param mask: optional [N x H x W] bool; the MSE is then the mean over the masked pixels only.
    :return: float [N]; ``inf`` where the images agree exactly, ``nan`` where the mask is empty.
    """
    a, b = image_batch(a).astype(np.float64), image_batch(b).astype(np.float64)
    if a.shape != b.shape:
        raise GenlabError(f"psnr needs images of the same shape, got {list(a.shape)} and {list(b.shape)}")
    err = (a - b) ** 2
    if mask is None:
        mse = err.reshape(len(err), -1).mean(1)
    else:
        m = image_batch(mask).astype(bool).reshape(len(err), -1)
        with np.errstate(invalid="ignore"):
            mse = (err.reshape(len(err), -1) * m).sum(1) / m.sum(1)
    with np.errstate(divide="ignore"):
        return 10 * np.log10(1.0 / mse)


def ssim_maps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The SSIM map of each pair of float images [N x H x W] on [0, 1]: what skimage's
    ``structural_similarity(a[i], b[i], data_range=1, win_size=7, full=True)`` returns as its map, for all N at
    once. skimage takes one image per call (0.2 ms each, 90,000 calls in the inpainting table); here are its
    steps on the whole stack, with the window along the image axes only, so each image's numbers are the same
    (``tests/test_inpainting.py`` checks them against skimage)."""
    window = (1, SSIM_WIN, SSIM_WIN)  # size 1 along N: scipy filters only the two image axes
    mean = lambda x: uniform_filter(x, size=window)  # noqa: E731 - skimage's filter, mode "reflect"
    ux, uy = mean(a), mean(b)
    cov_norm = SSIM_WIN ** 2 / (SSIM_WIN ** 2 - 1)  # sample covariance, as skimage by default
    vx, vy = cov_norm * (mean(a * a) - ux * ux), cov_norm * (mean(b * b) - uy * uy)
    vxy = cov_norm * (mean(a * b) - ux * uy)
    c1, c2 = 0.01 ** 2, 0.03 ** 2  # (K1 L)^2, (K2 L)^2 with skimage's K1, K2 and data range L = 1
    return ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))


def ssim_pair(a, b, mask=None) -> tuple[np.ndarray, np.ndarray]:
    """Whole-image SSIM and masked SSIM per image in one pass: two float [N] arrays (see ``ssim``)."""
    a, b = image_batch(a).astype(np.float64), image_batch(b).astype(np.float64)
    if a.shape != b.shape:
        raise GenlabError(f"ssim needs images of the same shape, got {list(a.shape)} and {list(b.shape)}")
    # skimage's mean leaves out the border where the window does not fit; so does the masked mean, so an
    # all-ones mask gives exactly the whole-image value.
    r = SSIM_WIN // 2
    inner = ssim_maps(a, b)[:, r:-r, r:-r]
    whole = inner.reshape(len(a), -1).mean(1)
    if mask is None:
        return whole, whole.copy()
    m = image_batch(mask).astype(bool)[:, r:-r, r:-r].reshape(len(a), -1)
    with np.errstate(invalid="ignore"):
        masked = (inner.reshape(len(a), -1) * m).sum(1) / m.sum(1)  # nan where no masked pixel is inside
    return whole, masked


def ssim(a, b, mask=None) -> np.ndarray:
    """Structural similarity per image on [0, 1] (skimage, 7 x 7 uniform window, data_range 1): float [N].

    :param a, b: [N x H x W] or [N x 1 x H x W] on [0, 1].
    :param mask: optional [N x H x W] bool: average skimage's SSIM map over the masked pixels instead of over
        the whole image (both leave out the 3-pixel border where the window does not fit); ``nan`` where no
        masked pixel lies inside that border.
    """
    whole, masked = ssim_pair(a, b, mask)
    return whole if mask is None else masked


def scores(out, clean, dropped) -> dict[str, np.ndarray]:
    """Per-image psnr, ssim, psnr_dropped and ssim_dropped (each float [N]) of ``out`` against ``clean``."""
    s, s_dropped = ssim_pair(out, clean, dropped)
    return {"psnr": psnr(out, clean), "ssim": s, "psnr_dropped": psnr(out, clean, dropped), "ssim_dropped": s_dropped}


def inpainting_table(dae_model, images_u8, drop_rates=DROP_RATES, seed: int = 0, batch_size: int = 1000) -> dict:
    """Mean PSNR (dB) and SSIM, whole image and dropped pixels only, per method and drop rate.

    :param dae_model: a trained DAE (``genlab.models.dae.DAE``).
    :param images_u8: uint8 [N x 28 x 28] clean images (the test split).
    :return: ``{"n_images", "seed", "drop_rates", "results": {method: {str(p): {"psnr", "ssim",
        "psnr_dropped", "ssim_dropped"}}}}`` with methods "dae", "telea", "ns"; every value is a mean over the
        N images of a per-image score (the dropped-pixel scores over the images with a dropped pixel inside
        SSIM's window border; NaN when none has one).
    """
    images_u8 = image_batch(images_u8)
    if min(images_u8.shape[1:]) < SSIM_WIN:
        raise GenlabError(f"inpainting scores SSIM over {SSIM_WIN} x {SSIM_WIN} windows, and these images are "
                          f"{images_u8.shape[1]} x {images_u8.shape[2]}; it needs images of at least "
                          f"{SSIM_WIN} x {SSIM_WIN} (train the dae with a larger --image-size)")
    clean = images_u8.astype(np.float64) / 255
    results: dict[str, dict[str, dict[str, float]]] = {m: {} for m in METHODS}
    for p in drop_rates:
        c, outs = inpaint_all(dae_model, images_u8, p, seed, batch_size)
        for method, out in outs.items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # "mean of empty slice": no image had a dropped pixel
                results[method][str(p)] = {k: float(np.nanmean(v)) for k, v in scores(out, clean, c.dropped).items()}
    return {"n_images": len(images_u8), "seed": seed, "drop_rates": list(drop_rates), "results": results}


def format_table(table: dict) -> str:
    """The table as aligned text: one row per drop rate and method."""
    lines = [f"inpainting on {table['n_images']} images (PSNR in dB on [0, 1]; 'dropped' = dropped pixels only)",
             f"{'p':>5}  {'method':<14}{'psnr':>8}{'ssim':>8}{'psnr_dropped':>14}{'ssim_dropped':>14}"]
    for p in table["drop_rates"]:
        for method in METHODS:
            r = table["results"][method][str(p)]
            lines.append(f"{p:>5}  {METHOD_TITLES[method]:<14}{r['psnr']:>8.2f}{r['ssim']:>8.3f}"
                         f"{r['psnr_dropped']:>14.2f}{r['ssim_dropped']:>14.3f}")
    return "\n".join(lines)


# -- command line ------------------------------------------------------------------------------------------
def load_dae_run(run_dir, device: str = "cpu"):
    """``genlab.checkpoint.load_run`` for a run that must hold a DAE; GenlabError otherwise."""
    from genlab.checkpoint import load_run

    run = load_run(run_dir, device)
    if run.model_name != "dae":
        raise GenlabError(f"{run_dir} holds {'an' if run.model_name[0] in 'aeiou' else 'a'} {run.model_name} run; genlab inpaint needs a dae run "
                          "(train one with: genlab train dae)")
    return run
