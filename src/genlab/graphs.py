"""A model's training loss recorded once as CUDA graphs and replayed at every step.

At the lecture's batch sizes a GPU step of a small network is bound by the host: each of its few dozen kernels
costs some microseconds of Python, dispatch and driver to launch, more than the GPU needs to run it. Replaying
a recorded graph launches the whole forward pass in one call and the whole backward pass in another
(``torch.cuda.make_graphed_callables``); the optimiser's step stays as it is.

Only for what a recording can hold: one CUDA device and one process, float32, full batches (a short last batch
runs as usual), and models that declare ``graph_safe``: their loss is the same computation at every step, with
no reads on the host, and Python-side state (a warm-up's weight, a switch of objective) only through
``graph_key``, whose change makes a new recording. Random draws in the loss (the DAE's corruption, the VAE's
codes) are recorded too: each replay draws fresh numbers from the device's generator, where the launched step
would have drawn them.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager, nullcontext

import torch
from torch import nn

from genlab.config import TrainConfig
from genlab.data.batching import to_pixels
from genlab.errors import GenlabError, first_line


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
        seen: list[torch.Tensor] = []  # the distinct terms, as the loss returned them
        outputs: list[torch.Tensor] = []
        self.layout = []
        for name, value in terms.items():
            index = next((i for i, term in enumerate(seen) if term is value), None)
            if index is None:
                index = len(seen)
                seen.append(value)
                # Only the loss is backpropagated: the other terms are logged, and a recorded backward pass
                # would otherwise carry their (zero) gradients through the network at every step.
                outputs.append(value if value is terms["loss"] else value.detach())
            self.layout.append((name, index))
        return tuple(outputs)


class GraphedLoss:
    """The recorded loss of ``model`` for batches like ``sample`` ([B x C x H x W] float, on the GPU).

    ``steps(x)`` stands in for ``model.steps(x)`` on a batch that ``fits``: it yields ("model", terms), the terms
    being the recording's own memory, which the next replay overwrites (the loop reduces them at once).
    ``refresh()``, between epochs, records the loss again if the model's ``graph_key`` has changed (a KL
    warm-up's weight, a switch of objective). A recording that fails (an operation the graphs cannot hold) is
    said in one line through ``say``, and the run goes on launching each kernel, if the process can still
    draw random numbers on the GPU (a failed capture can leave PyTorch's generator refusing eager draws);
    where it cannot, a GenlabError naming ``--no-cuda-graphs`` stops the run.
    """

    def __init__(self, model, sample: torch.Tensor, say):
        self.model, self.sample, self.say = model, sample, say
        self._graphed, self.key = None, None
        self._record()

    def fits(self, x: torch.Tensor) -> bool:
        return self._graphed is not None and len(x) == len(self.sample)

    def _record(self) -> None:
        if self._graphed is not None:
            # The previous recording's memory goes back before the new one takes its own: its module and
            # PyTorch's replay function refer to each other, which only the cycle collector frees.
            self._graphed = None
            gc.collect()
        loss = _Loss(self.model)  # a fresh module: recording replaces the forward of the one it is given
        cuda = self.sample.is_cuda
        if cuda:
            # The recording keeps the autograd graph it captured, with the parameters' gradient sinks made on its
            # capture stream; each replay's backward hands them gradients from the training's stream, as
            # PyTorch's recording intends. Recent PyTorch would warn of that at the first replay; the switch
            # is process-wide.
            quiet = getattr(torch.autograd.graph, "set_warn_on_accumulate_grad_stream_mismatch", None)
            if quiet is not None:
                quiet(False)
        # Recording runs the loss a few times on the sample (to warm up what it allocates and initialises):
        # none of that may reach the run, so the random streams and the model's buffers are put back after.
        buffers = [(b, b.clone()) for b in self.model.buffers()]
        try:
            # Also the current stream: a capture that fails can leave its own stream current.
            with _capturing_on(self.sample.device), \
                    torch.cuda.stream(torch.cuda.current_stream(self.sample.device)) if cuda else nullcontext(), \
                    torch.random.fork_rng(devices=[self.sample.device] if cuda else []):
                graphed = torch.cuda.make_graphed_callables(loss, (self.sample,), allow_unused_input=True)
        except (RuntimeError, AssertionError) as e:  # a capture that failed, or a module refused
            why = first_line(e)
            if not _recovered(self.sample.device):
                raise GenlabError(f"genlab could not record the training step as CUDA graphs ({why}), and the failed "
                                  f"recording left this process unable to draw random numbers on the GPU; train "
                                  f"with --no-cuda-graphs (and --resume where the run has finished an epoch)") from None
            self.say(f"note: genlab could not record the training step as CUDA graphs ({why}); each kernel is "
                     f"launched instead (--no-cuda-graphs skips the recording)")
            return  # and no second try: refresh() records only over a recording
        finally:
            with torch.no_grad():
                for live, saved in buffers:
                    live.copy_(saved)
        self._graphed, self.layout, self.key = graphed, list(loss.layout), self.model.graph_key()

    def refresh(self) -> None:
        if self._graphed is not None and self.model.graph_key() != self.key:
            self._record()

    def steps(self, x: torch.Tensor):
        outputs = self._graphed(x)
        yield "model", {name: outputs[index] for name, index in self.layout}


@contextmanager
def _capturing_on(device: torch.device):
    """Make ``device`` the current one, and the stream PyTorch captures on by default a stream of it: PyTorch
    makes that stream once per process, on the device current then, and a capture for a model on another GPU
    would run there unrecorded, leaving an empty graph (a warning, and replays that compute nothing)."""
    if device.type != "cuda":
        yield
        return
    with torch.cuda.device(device):
        stream = torch.cuda.graph.default_capture_stream
        if stream is not None and stream.device != device:
            torch.cuda.graph.default_capture_stream = None  # made again by the next capture, on this device
        yield


def _recovered(device: torch.device) -> bool:
    """Whether this process can still draw random numbers on ``device`` after a failed capture. PyTorch versions
    that mark the generator as capturing unmark it only when a capture ends well, so first one small capture
    that does; then one draw (in a forked stream, so the run's own is untouched) tells."""
    if device.type != "cuda":
        return True
    try:
        graph = torch.cuda.CUDAGraph()
        with _capturing_on(device), torch.cuda.graph(graph):
            torch.ones(1, device=device).add_(1)
        del graph
    except RuntimeError:
        pass  # the draw below says whether it mattered
    try:
        with torch.random.fork_rng(devices=[device]):
            torch.randn(1, device=device)
        torch.cuda.synchronize(device)
        return True
    except RuntimeError:
        return False


def for_training(model, cfg: TrainConfig, ctx, images_u8: torch.Tensor, say) -> GraphedLoss | None:
    """The recorded loss for this run, or None where the loop launches each kernel: off (``--no-cuda-graphs``),
    not one CUDA process, not float32, a model that is not ``graph_safe`` or is conditional, or fewer images
    than one batch. ``images_u8``: the training images on the device; the first batch is the recording's sample.
    Call it with the model in training mode: that is the mode recorded. ``say``: where a note goes."""
    if not (cfg.cuda_graphs and ctx.device.type == "cuda" and ctx.world == 1 and cfg.precision == "fp32"
            and model.graph_safe and not model.conditional and len(images_u8) >= cfg.batch_size):
        return None
    return GraphedLoss(model, to_pixels(images_u8[:cfg.batch_size], model.pixel_range), say)
