"""A model's training loss recorded once as CUDA graphs and replayed at every step.

At the lecture's batch sizes a GPU step of a small network is bound by the host: each of its few dozen kernels
costs some microseconds of Python, dispatch and driver to launch, more than the GPU needs to run it. Replaying
a recorded graph launches the whole forward pass in one call and the whole backward pass in another
(``torch.cuda.make_graphed_callables``); the optimiser's step stays as it is.

Only for what a recording can hold: one CUDA device and one process, float32, full batches (a short last batch
runs as usual), and models that declare ``graph_safe``: their loss is the same computation at every step, with
no Python-side state (a warm-up schedule, a switch of objective) and no reads on the host. Random draws in the
loss (the DAE's corruption) are recorded too: each replay draws fresh numbers from the device's generator.
"""

from __future__ import annotations

import torch
from torch import nn

from genlab.config import TrainConfig
from genlab.data.batching import to_pixels


class _Loss(nn.Module):
    """``model.loss(x)`` as a module whose parameters are the model's trained ones (the recording's inputs) and
    whose outputs are the loss terms' distinct tensors (the AE's "loss" and "mse" are one tensor)."""

    def __init__(self, model):
        super().__init__()
        self.params = nn.ParameterList(model.player_parameters("model"))
        self.model = [model]  # not a submodule: its buffers are not the recording's inputs
        self.layout: list[tuple[str, int]] = []  # (term name, index of its tensor among the outputs)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        terms = self.model[0].loss(x)
        outputs: list[torch.Tensor] = []
        self.layout = []
        for name, value in terms.items():
            index = next((i for i, seen in enumerate(outputs) if seen is value), None)
            if index is None:
                index = len(outputs)
                outputs.append(value)
            self.layout.append((name, index))
        return tuple(outputs)


class GraphedLoss:
    """The recorded loss of ``model`` for batches like ``sample`` ([B x C x H x W] float, on the GPU).

    ``steps(x)`` stands in for ``model.steps(x)`` on a batch of B images: it yields ("model", terms), the terms
    being the recording's own memory, which the next replay overwrites (the loop reduces them at once).
    """

    def __init__(self, model, sample: torch.Tensor):
        self.batch_size = len(sample)
        self._loss = _Loss(model)
        # Recording runs the loss a few times on the sample (to warm up what it allocates and initialises):
        # none of that may reach the run, so the random streams and the model's buffers are put back after.
        buffers = [(b, b.clone()) for b in model.buffers()]
        try:
            with torch.random.fork_rng(devices=[sample.device]):
                self._graphed = torch.cuda.make_graphed_callables(self._loss, (sample,), allow_unused_input=True)
        finally:
            with torch.no_grad():
                for live, saved in buffers:
                    live.copy_(saved)
        self.layout = list(self._loss.layout)

    def steps(self, x: torch.Tensor):
        outputs = self._graphed(x)
        yield "model", {name: outputs[index] for name, index in self.layout}


def for_training(model, cfg: TrainConfig, ctx, images_u8: torch.Tensor, say) -> GraphedLoss | None:
    """The recorded loss for this run, or None where the loop launches each kernel: off (``--no-cuda-graphs``),
    not one CUDA process, not float32, a model that is not ``graph_safe``, or fewer images than one batch.
    ``images_u8``: the training images on the device; the first batch of them is the recording's sample.
    A recording that fails (an operation the graphs cannot hold) says so in one line, and training goes on."""
    if not (cfg.cuda_graphs and ctx.device.type == "cuda" and ctx.world == 1 and cfg.precision == "fp32"
            and model.graph_safe and len(images_u8) >= cfg.batch_size):
        return None
    try:
        return GraphedLoss(model, to_pixels(images_u8[:cfg.batch_size], model.pixel_range))
    except RuntimeError as e:
        say(f"note: the training step could not be recorded as CUDA graphs ({str(e).splitlines()[0][:200]}); "
            f"each kernel is launched instead")
        return None
