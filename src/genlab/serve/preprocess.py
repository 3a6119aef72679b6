"""A freehand drawing to an MNIST-style 28 x 28 input, as MNIST itself was made (LeCun et al. 1998):

1. crop to the bounding box of the ink;
2. scale it, keeping its aspect ratio, so that its longer side is 20 pixels (area interpolation, which
   anti-aliases as the NIST digits' normalisation did);
3. place it in a 28 x 28 field so that its centre of mass sits at the field's centre (13.5, 13.5) in pixel
   index coordinates, shifted by whole pixels and kept inside the field.

Without steps 2 and 3 a model trained on MNIST sees an off-centre, oddly sized stroke and its energy says
"not a digit" about a perfectly good digit.
"""

from __future__ import annotations

import cv2
import numpy as np

from genlab.errors import GenlabError

FIELD = 28  # side of the output
BOX = 20  # side of the box the ink is scaled into
INK = 0.05  # a pixel counts as ink above this fraction of the drawing's brightest pixel


def mnist_style(drawing: np.ndarray) -> np.ndarray:
    """:param drawing: [H x W] float, darkest = background, larger = ink (any positive scale).
    :return: [28 x 28] float32 in [0, 1], the ink scaled into a 20-pixel box and centred by its centre of mass.

    Raises GenlabError for a blank drawing (nothing to centre).
    """
    a = np.asarray(drawing, dtype=np.float32)
    if a.ndim != 2 or min(a.shape) < 1:
        raise GenlabError(f"a drawing is a 2-D array, got shape {list(a.shape)}")
    # The background is the drawing's darkest level (black on the explorer's pad; a scan's paper is grey): a
    # canvas of one grey, or of ink everywhere, has nothing on it to centre.
    a = a - a.min()
    peak = float(a.max())
    if not peak > 0:
        raise GenlabError("the drawing is blank: draw a digit first")
    a = a / peak
    rows = np.flatnonzero((a > INK).any(axis=1))
    cols = np.flatnonzero((a > INK).any(axis=0))
    crop = a[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    h, w = crop.shape
    scale = BOX / max(h, w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    # INTER_AREA averages when shrinking (anti-aliasing); a tiny crop grows with bilinear weights instead.
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    box = cv2.resize(crop, (new_w, new_h), interpolation=interp)
    box = np.clip(box, 0.0, 1.0)
    mass = float(box.sum())
    com_y = float(box.sum(1) @ np.arange(new_h, dtype=np.float32)) / mass
    com_x = float(box.sum(0) @ np.arange(new_w, dtype=np.float32)) / mass
    top = int(np.clip(round((FIELD - 1) / 2 - com_y), 0, FIELD - new_h))
    left = int(np.clip(round((FIELD - 1) / 2 - com_x), 0, FIELD - new_w))
    out = np.zeros((FIELD, FIELD), dtype=np.float32)
    out[top:top + new_h, left:left + new_w] = box
    return out
