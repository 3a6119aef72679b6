"""Optional TensorBoard logging (``--tensorboard``): per-epoch scalars, an image grid and an energy histogram."""

from __future__ import annotations

from pathlib import Path

from genlab.data.batching import to_pixels, to_unit
from genlab.errors import GenlabError
from genlab.models.base import evaluating
from genlab.train import Callback, RunState


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
        with evaluating(model, seed=epoch):
            x = to_pixels(test_images[:1000], model.pixel_range).to(model.device)
            self.writer.add_histogram("energy/test", model.energy(x).cpu(), epoch)
            if model.can_sample:
                self.writer.add_images("samples", to_unit(model.sample(32), model.pixel_range).cpu(), epoch)
            if model.can_reconstruct:
                self.writer.add_images("reconstructions", to_unit(model.reconstruct(x[:32]), model.pixel_range).cpu(),
                                       epoch)
        self.writer.flush()

    def on_end(self, run: RunState) -> None:
        self.writer.close()
