"""Which figures a run gets, drawn through the training loop's callbacks (genlab.train.Callback).

Every run: reconstructions (the lecture's Fig. 3) and corrupted inputs where the model has them, encoder
kernels (Figs. 4 and 6), loss curves. On top, the figure sets a model class names in ``figure_sets``:
"vae" (samples, reconstructions, interpolations, the manifold, t-SNE of the codes), "gan" (samples, energy
histograms of real against generated images after every epoch) and "conditional" (quadrant completions or one
row of samples per class).
"""

from __future__ import annotations

from pathlib import Path

import torch

from genlab.data.batching import to_pixels, to_unit
from genlab.models.base import evaluating
from genlab.train import Callback, RunState
from genlab.viz import conditional_figures, gan_figures, vae_figures
from genlab.viz.figures import kernels_figure, loss_curves, save_rows

# name -> (figures at the end: f(model, test_set, fig_dir) -> [paths],
#          figures after every epoch and before the first: f(model, epoch, test_set, fig_dir), or None)
FIGURE_SETS = {
    "vae": (vae_figures.final_figures, vae_figures.epoch_figures),
    "gan": (gan_figures.final_figures, gan_figures.epoch_figures),
    "conditional": (conditional_figures.final_figures, None),
}


class Figures(Callback):
    """Every figure of the run, into ``RUN_DIR/figures``: the per-epoch ones as training goes, the rest at the end."""

    def on_start(self, run: RunState, resuming: bool) -> None:
        if not resuming:  # the untrained model, "epoch 0"
            epoch_figures(run.model, 0, run.test_set, run.run_dir / "figures")

    def on_epoch(self, run: RunState, epoch: int, record: dict) -> None:
        epoch_figures(run.model, epoch, run.test_set, run.run_dir / "figures")

    def on_end(self, run: RunState) -> None:
        write_figures(run.model_name, run.model, run.test_set, run.run_dir)


def training_callbacks(cfg) -> list[Callback]:
    """The callbacks a TrainConfig asks for: ``Figures`` when ``cfg.figures``, TensorBoard when ``cfg.tensorboard``."""
    callbacks: list[Callback] = [Figures()] if cfg.figures else []
    if cfg.tensorboard:
        from genlab.viz.tensorboard import TensorBoardLog
        callbacks.append(TensorBoardLog())
    return callbacks


@torch.no_grad()
def write_figures(model_name: str, model, test_set, run_dir: Path, n: int = 10) -> list[Path]:
    """Write every figure that applies to ``model`` into ``run_dir/figures`` and return their paths."""
    fig_dir = Path(run_dir) / "figures"
    written = []
    # Eval mode, no gradients, and a forked random state (CPU and CUDA): drawing figures never consumes the
    # training streams, and the model's mode is as it was afterwards.
    with evaluating(model, seed=0):
        x = to_pixels(test_set.images[:n], model.pixel_range).to(model.device)
        unit = lambda t: to_unit(t, model.pixel_range)  # noqa: E731
        if model.can_reconstruct:
            if hasattr(model, "corrupt"):
                corrupted = model.corrupt(x)
                rows = [("input", unit(x)), ("corrupted", unit(corrupted)),
                        ("output", unit(model.reconstruct(corrupted)))]
                written.append(save_rows(fig_dir / "corrupted_inputs.png", rows,
                                         f"{model_name}: clean input, corrupted input, reconstruction"))
            rows = [("input", unit(x)), ("output", unit(model.reconstruct(x)))]
            written.append(save_rows(fig_dir / "reconstructions.png", rows,
                                     f"{model_name}: inputs (top) and reconstructions (bottom)"))
        kernels = model.encoder_kernels()
        if kernels is not None and kernels.shape[-1] == 784:  # drawn as 28 x 28 pictures: MNIST-shaped models only
            written.append(kernels_figure(fig_dir / "kernels.png", kernels, f"{model_name}: encoder kernels"))
        for name in model.figure_sets:
            written += FIGURE_SETS[name][0](model, test_set, fig_dir)
        # Last: its presence says the end-of-run figures are whole (genlab reproduce draws them where it is not).
        curves = loss_curves(fig_dir / "loss_curves.png", Path(run_dir) / "metrics.jsonl")
        if curves:
            written.append(curves)
    return written


def epoch_figures(model, epoch: int, test_set, fig_dir: Path) -> None:
    """Per-epoch figures of the model's figure sets (t-SNE of VAE codes, GAN energy histograms), if any."""
    sets = [FIGURE_SETS[name][1] for name in model.figure_sets if FIGURE_SETS[name][1] is not None]
    if sets:
        with evaluating(model, seed=epoch):  # the model's mode is as it was after, also when a figure fails
            for draw in sets:
                draw(model, epoch, test_set, Path(fig_dir))
