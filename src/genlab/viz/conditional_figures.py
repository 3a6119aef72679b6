"""Figures and report tables of the conditional models: quadrant completions (after Sohn et al. 2015, Fig. 4
and Pyro's reproduction), one row of samples per class, and the metrics beside the published figures."""

from __future__ import annotations

from pathlib import Path

import torch

from genlab.data.batching import to_pixels, to_unit
from genlab.viz.figures import save_grid, save_rows

# Pyro's reproduction of Sohn et al.'s MNIST quadrant task: negative conditional log-likelihood of the unseen
# quadrants on the test set, nats per image, for 1 / 2 / 3 observed quadrants (its README table, from the ELBO).
PYRO_TABLE = {"NN baseline (Pyro)": (100.4, 61.9, 25.4), "CVAE (Pyro)": (71.8, 51.0, 24.2)}
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
    """``per_class`` samples of each class, one row per class 0..9 (top to bottom)."""
    labels = torch.arange(10).repeat_interleave(per_class)
    images = to_unit(model.sample(len(labels), labels.to(model.device)), model.pixel_range)
    return save_grid(path, images.cpu(), ncol=per_class, title=f"{type(model).__name__}: one row per class 0-9")


def final_figures(model, test_set, fig_dir: Path) -> list[Path]:
    """``completions.png`` for a quadrant cvae; ``class_grid.png`` (and for the cdcgan the GANs' samples and
    energy histogram) otherwise."""
    fig_dir = Path(fig_dir)
    if getattr(model, "quadrants", False):
        return [completions_figure(model, test_set, fig_dir / "completions.png")]
    paths = [class_grid(model, fig_dir / "class_grid.png")]
    if hasattr(model, "discriminator"):
        from genlab.models.gan_common import final_figures as gan_figures
        paths += gan_figures(model, test_set, fig_dir)
    return paths


def report_section(evaluation: dict, figures: dict[str, Path]):
    """A report section with the quadrant table beside Pyro's and the conditional-sample table, from
    ``genlab evaluate`` results (model name -> results) of the conditional runs; None when there are none."""
    from genlab.viz.report import Section

    rows_q = [[name, *values] for name, values in PYRO_TABLE.items()]
    rows_c = []
    for name, r in evaluation.items():
        if "nll_is_q1" in r:
            k = r.get("nll_is_k")
            rows_q.append([f"{name}, importance sampled (k = {k})", *(r[f"nll_is_q{t}"] for t in (1, 2, 3))])
            rows_q.append([f"{name}, bound (-ELBO)", *(r[f"nll_bound_q{t}"] for t in (1, 2, 3))])
        if "cond_accuracy" in r:
            rows_c.append([name, r["cond_accuracy"], r.get("classifier_accuracy"), r["cond_fid_mean"],
                           r["cond_fid_max"], r["cond_spread_min"]])
    if len(rows_q) == len(PYRO_TABLE) and not rows_c:
        return None
    section = Section("conditional", "Conditional models")
    if len(rows_q) > len(PYRO_TABLE):
        section.table(["model", "1 quadrant", "2 quadrants", "3 quadrants"], rows_q,
                      "Negative conditional log-likelihood of the unseen quadrants of the test digits, nats per image "
                      "(grey targets, as Pyro's reproduction of Sohn et al. 2015)")
    for name, path in figures.items():
        section.figure(path, f"{name}: inputs, sampled completions, truth")
    if rows_c:
        section.table(["model", "accuracy", "classifier test accuracy", "mean class FID", "worst class FID",
                       "narrowest class spread"], rows_c,
                      "1,000 samples asked for per class: genlab's classifier accuracy on them, FID of each class "
                      "against the real test digits of that class, and each class's mean pairwise distance over "
                      "the real digits'")
    return section
