"""Optional TensorBoard logging (``--tensorboard``): per-epoch scalars, an image grid and an energy histogram."""

from __future__ import annotations

from pathlib import Path

from genlab.data.batching import to_pixels, to_unit
from genlab.errors import GenlabError
from genlab.models.base import evaluating, per_example
from genlab.train import Callback, RunState

HISTOGRAM_IMAGES, GRID_IMAGES = 1000, 32  # test images in the energy histogram; images in each grid


class TensorBoardLog(Callback):
    """Writes ``RUN_DIR/tensorboard``; open it with ``tensorboard --logdir RUN_DIR``."""

    def __init__(self):
        try:  # here, so a missing package stops the command before any training
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise GenlabError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
        self.writer_class, self.writer = SummaryWriter, None

    def on_start(self, run: RunState, resuming: bool) -> None:
        self.writer = self.writer_class(str(Path(run.run_dir) / "tensorboard"))

    def on_epoch(self, run: RunState, epoch: int, record: dict) -> None:
        model, test_images = run.model, run.test_set.images
        for key, value in record.items():
            if isinstance(value, (int, float)) and key != "epoch":
                self.writer.add_scalar(key, value, epoch)
        # Batched as every evaluation is (a fixed 1000 large colour images asked for gigabytes at once).
        self.writer.add_histogram("energy/test", per_example(model, test_images[:HISTOGRAM_IMAGES], seed=epoch), epoch)
        with evaluating(model, seed=epoch):
            if model.can_sample:
                self.writer.add_images("samples", to_unit(model.sample(GRID_IMAGES), model.pixel_range).cpu(), epoch)
            if model.can_reconstruct:
                x = to_pixels(test_images[:GRID_IMAGES], model.pixel_range).to(model.device)
                self.writer.add_images("reconstructions", to_unit(model.reconstruct(x), model.pixel_range).cpu(), epoch)
        self.writer.flush()

    def on_end(self, run: RunState) -> None:
        self.writer.close()
