"""Figures of the conditional models: quadrant completions (after Sohn et al. 2015, Fig. 4 and Pyro's
reproduction) and one row of samples per class."""

from __future__ import annotations

from pathlib import Path

import torch

from genlab.data.batching import to_pixels, to_unit
from genlab.viz.figures import save_grid, save_rows

UNSEEN = 0.35  # grey level that marks unseen pixels in the input rows


def one_per_class(test_set, n: int = 10) -> torch.Tensor:
    """Indices of the first test image of each class 0..n-1: int [n]."""
    return torch.stack([(test_set.labels == k).nonzero()[0, 0] for k in range(n)])


@torch.no_grad()
def completions_figure(model, test_set, path: Path, samples: int = 3) -> Path:
    """For 1, 2, 3 observed quadrants: the input (unseen pixels grey), ``samples`` completions drawn from
    p(z | c), and the truth, for one test digit of each class."""
    from genlab.models.cvae import quadrant_mask

    x = to_pixels(test_set.images[one_per_class(test_set)], model.pixel_range).to(model.device)
    rows = []
    for t in (1, 2, 3):
        seen = quadrant_mask(t).to(x.device)
        rows.append((f"{t} observed", torch.where(seen, x, torch.full_like(x, UNSEEN))))
        for i, completion in enumerate(model.complete(x, t, samples)):
            rows.append((f"sample {i + 1}", completion))
    rows.append(("truth", x))
    return save_rows(path, [(label, to_unit(images, model.pixel_range)) for label, images in rows],
                     "cvae: quadrant completion (input, samples of p(y | c), truth)")


@torch.no_grad()
def class_grid(model, path: Path, per_class: int = 10) -> Path:
    """``per_class`` samples of each class, one row per class (top to bottom): 0..9, or the classes a run of
    some classes learned (its other rows were noise)."""
    classes = getattr(model, "learned_classes", None) or list(range(10))
    labels = torch.tensor(classes).repeat_interleave(per_class)
    images = to_unit(model.sample(len(labels), labels.to(model.device)), model.pixel_range)
    said = "0-9" if classes == list(range(10)) else ", ".join(map(str, classes))
    return save_grid(path, images.cpu(), ncol=per_class, title=f"{type(model).__name__}: one row per class {said}")


def final_figures(model, test_set, fig_dir: Path) -> list[Path]:
    """``completions.png`` for a quadrant cvae, ``class_grid.png`` otherwise."""
    fig_dir = Path(fig_dir)
    if getattr(model, "quadrants", False):
        return [completions_figure(model, test_set, fig_dir / "completions.png")]
    return [class_grid(model, fig_dir / "class_grid.png")]
