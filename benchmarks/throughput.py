"""Training images/s of genlab's loop against a plain PyTorch loop over the same networks, in one run.

On a CPU (the default) the baseline is what torchvision's MNIST with ToTensor does: every uint8 image becomes
a PIL image, then a float tensor, one sample at a time (batch as genlab's, shuffled, no workers), on the same
model and loss with the plain ``torch.optim.Adam(model.parameters(), lr)`` such a script uses: ``ratio`` is
genlab against that. ``ratio_same_optimizer`` gives the baseline genlab's own optimiser (fused Adam where
PyTorch has it), so it isolates the data path and the loop. genlab's number is its real training loop
(``genlab.train.train``, one epoch, figures off). ``--rounds`` (3) repeats all three, alternating, and
reports medians with the range of the rounds' ratios.

With ``--device cuda`` every model is measured at the lecture's batch size and at a GPU-sized one, against
the best plain loop over genlab's own networks: the data on the GPU, a shuffled index per epoch, fused Adam,
each player's loss from ``model.steps`` (with the labels, for a conditional model) and no host synchronisation.
After one epoch to warm up, the plain loop runs whole epochs for at least 4 seconds and genlab's real training
loop as many epochs. ``--rounds`` (1 on a GPU) repeats both, alternating, and reports medians. Each line also
gives both sides' epoch times and how long genlab's loop rests between epochs (evaluating, checkpointing,
logging: outside the timed steps); ``--idle-between-epochs S`` makes the plain loop rest S seconds too.
genlab's loop runs with its defaults: on one GPU it replays the recorded step of the models that allow it
(genlab.graphs); ``--no-cuda-graphs`` launches each kernel, as the plain loop does.

    python benchmarks/throughput.py [--models ae dae vae] [--limit N] [--rounds R] [--json]
    python benchmarks/throughput.py --device cuda [--models ae dae vae ebgan dcgan cvae cdcgan] [--rounds R] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image

from genlab import config as cfgmod
from genlab.data import load_dataset
from genlab.errors import GenlabError, one_line_errors
from genlab.models import MODELS, build
from genlab.train import Callback, default_train_config, make_optimizer, train

# model -> (batch size, model config overrides): the lecture's settings.
CASES = {"ae": (256, {"latent_dim": 30}), "dae": (256, {"latent_dim": 500}), "vae": (128, {})}
# On a GPU, every model at the lecture's batch size and at one that fills the card.
GPU_CASES = {"ae": ((256, 2048), {"latent_dim": 30}), "dae": ((256, 2048), {"latent_dim": 500}),
             "vae": ((128, 1024), {}), "ebgan": ((64, 512), {}), "dcgan": ((64, 512), {}),
             "cvae": ((128, 1024), {}), "cdcgan": ((64, 512), {})}


class TorchvisionStyleMNIST(torch.utils.data.Dataset):
    """torchvision.datasets.MNIST's per-sample path, step for step: the uint8 image becomes a PIL image, then
    ``Compose([ToTensor(), Normalize((0.5,), (0.5,))])`` (the lecture's [-1, 1] pixels) or ``ToTensor()`` alone
    ([0, 1] pixels) makes it a float tensor; the label is returned as a Python int."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, pixel_range: str):
        self.images, self.labels = images, labels
        self.transforms = [to_tensor] + ([normalize_half] if pixel_range == "tanh" else [])

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        img, target = self.images[index], int(self.labels[index])
        img = Image.fromarray(img.numpy(), mode="L")
        for transform in self.transforms:
            img = transform(img)
        return img, target


def to_tensor(pic: Image.Image) -> torch.Tensor:
    """What ``transforms.ToTensor`` does to an 8-bit PIL image: H x W x C bytes -> C x H x W floats / 255."""
    if not isinstance(pic, Image.Image):
        raise TypeError(f"expected a PIL image, got {type(pic)}")
    img = torch.from_numpy(np.array(pic, np.uint8, copy=True))
    img = img.view(pic.size[1], pic.size[0], len(pic.getbands())).permute((2, 0, 1)).contiguous()
    return img.to(dtype=torch.get_default_dtype()).div(255)


def normalize_half(tensor: torch.Tensor) -> torch.Tensor:
    """What ``transforms.Normalize((0.5,), (0.5,))`` does (not in place): (x - mean) / std, per channel."""
    tensor = tensor.clone()
    mean = torch.as_tensor((0.5,), dtype=tensor.dtype, device=tensor.device)
    std = torch.as_tensor((0.5,), dtype=tensor.dtype, device=tensor.device)
    if (std == 0).any():
        raise ValueError("std evaluated to zero")
    return tensor.sub_(mean.view(-1, 1, 1)).div_(std.view(-1, 1, 1))


def dataloader_rate(name: str, images: torch.Tensor, labels: torch.Tensor, batch: int, overrides: dict, genlab_optimizer: bool) -> float:
    torch.manual_seed(0)
    model = build(name, MODELS[name].Config(**overrides)).train()
    lr = default_train_config(name).lr
    opt = make_optimizer(default_train_config(name), list(model.parameters()), {}) if genlab_optimizer \
        else torch.optim.Adam(model.parameters(), lr=lr)
    loader = torch.utils.data.DataLoader(TorchvisionStyleMNIST(images, labels, model.pixel_range), batch_size=batch, shuffle=True)
    start, seen = time.perf_counter(), 0
    for x, _ in loader:
        loss = model.loss(x)["loss"].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += len(x)
    return seen / (time.perf_counter() - start)


class _EpochClock(Callback):
    """When each epoch's checkpoint and log line were written (``on_epoch``), by the wall clock."""

    def __init__(self):
        self.stamps: list[float] = []

    def on_epoch(self, run, epoch: int, record: dict) -> None:
        self.stamps.append(time.perf_counter())


def genlab_rate(name: str, images_limit: int, batch: int, overrides: dict, dataset: str, device: str = "cpu",
                epochs: int = 1, durations: list | None = None, precision: str = "fp32",
                rests: list | None = None, cuda_graphs: bool = True) -> float:
    """images/s of ``genlab.train.train``: over its last epoch, or with ``epochs`` > 1 over every epoch but the
    first (which warms the device up). ``durations``, when given, receives those epochs' seconds; ``rests``
    the seconds between them that the loop spent outside its steps (evaluating, checkpointing, logging)."""
    clock = _EpochClock()
    with tempfile.TemporaryDirectory() as out:
        tcfg = cfgmod.from_dict(cfgmod.TrainConfig, {**cfgmod.to_dict(default_train_config(name)), "epochs": epochs,
                                "batch_size": batch, "limit": images_limit, "eval_limit": 1000, "device": device,
                                "figures": False, "progress": False, "out": out, "dataset": dataset,
                                "precision": precision, "cuda_graphs": cuda_graphs})
        run_dir = train(name, MODELS[name].Config(**overrides), tcfg, callbacks=[clock])
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    if epochs == 1:
        return records[-1]["images_per_s"]
    n = len(load_dataset(dataset, "train").images)
    n = min(images_limit, n) if images_limit else n
    steps = [b["seconds"] - a["seconds"] for a, b in zip(records, records[1:])]
    if durations is not None:
        durations += steps
    if rests is not None:  # wall time from one epoch's end to the next's, less the next epoch's steps
        rests += [(b - a) - took for a, b, took in zip(clock.stamps, clock.stamps[1:], steps)]
    return n * (epochs - 1) / (records[-1]["seconds"] - records[0]["seconds"])  # "seconds" is cumulative


def plain_rate(name: str, images: torch.Tensor, labels: torch.Tensor, batch: int, overrides: dict,
               device: str = "cuda", min_seconds: float = 4.0, idle: float = 0.0,
               durations: list | None = None, precision: str = "fp32") -> tuple[float, int]:
    """images/s of the best plain loop over genlab's networks on ``device`` and the epochs it took: one epoch
    to warm up, then whole epochs until ``min_seconds`` of them have passed (a window long enough to measure).
    A conditional model gets each batch's ``labels``. ``idle``: seconds the loop rests between epochs, out of
    the timing, as genlab's loop does while it evaluates and checkpoints (does a resting GPU start the next
    epoch slower?). ``durations``, when given, receives the timed epochs' seconds. ``precision`` "bf16": each
    player's forward pass under bfloat16 autocast, as genlab's ``--precision bf16``."""
    from contextlib import nullcontext

    from genlab.data.batching import to_pixels

    torch.manual_seed(0)
    device = torch.device(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    model = build(name, MODELS[name].Config(**overrides)).to(device).train()
    cfg = default_train_config(name)
    opts = {p: torch.optim.Adam(model.player_parameters(p), lr=cfg.lr, fused=True, **model.optimizer_options(p))
            for p in model.players}
    data, targets = images.to(device), labels.to(device)
    n = len(data)

    def epoch():
        perm = torch.randperm(n, device=device)
        for i in range(0, n, batch):
            idx = perm[i:i + batch]
            x = to_pixels(data.index_select(0, idx), model.pixel_range)
            cond = (targets.index_select(0, idx),) if model.conditional else ()
            turns = model.steps(x, *cond)
            while True:
                with torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext():
                    turn = next(turns, None)  # the player's forward pass runs here, as in genlab's step
                if turn is None:
                    break
                player, terms = turn
                loss = terms["loss"].mean()
                opts[player].zero_grad(set_to_none=True)
                loss.backward()
                opts[player].step()
                model.after_step(player)

    epoch()
    sync()
    busy, epochs = 0.0, 0
    while busy < min_seconds:
        began = time.perf_counter()
        epoch()
        sync()
        took = time.perf_counter() - began
        busy += took
        epochs += 1
        if durations is not None:
            durations.append(took)
        time.sleep(idle)
    return n * epochs / busy, epochs


def gpu_main(args, dataset: str, images: torch.Tensor, labels: torch.Tensor, device: str = "cuda") -> dict:
    """Every model at the lecture's and a GPU-sized batch: the plain loop over a window of several seconds,
    then genlab's loop over as many epochs (after one to warm up); ``args.rounds`` times, alternating, with
    the medians reported (a slow spell of the machine then hits both sides)."""
    results = {}
    where = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    name_of_device = f"{where}, PyTorch {torch.__version__}" + (", bf16 autocast" if args.precision == "bf16" else "")
    name_of_device += "" if args.cuda_graphs else ", genlab without CUDA graphs"
    for name in args.models:
        batches, overrides = GPU_CASES[name]
        for batch in (b for b in batches if not args.batch_sizes or b in args.batch_sizes):
            rounds, genlab_epochs, plain_epochs, rests = [], [], [], []
            for _ in range(args.rounds):
                plain, epochs = plain_rate(name, images, labels, batch, overrides, device, args.min_seconds,
                                           args.idle_between_epochs, durations=plain_epochs,
                                           precision=args.precision)
                fast = genlab_rate(name, len(images), batch, overrides, dataset, device=device, epochs=1 + epochs,
                                   durations=genlab_epochs, precision=args.precision, rests=rests,
                                   cuda_graphs=args.cuda_graphs)
                rounds.append((fast, plain, fast / plain, epochs))
            fast, plain, ratio, epochs = (statistics.median(column) for column in zip(*rounds))
            spread = (min(r[2] for r in rounds), max(r[2] for r in rounds))
            # Is genlab's every epoch slower (a cost per step), or only some (a cost per epoch, a slow start)?
            epoch_ms = {side: [round(1e3 * min(d), 2), round(1e3 * statistics.median(d), 2), round(1e3 * max(d), 2)]
                        for side, d in (("genlab", genlab_epochs), ("plain", plain_epochs))}
            results[f"{name} b{batch}"] = {"genlab": round(fast), "plain": round(plain), "ratio": round(ratio, 3),
                                           "ratio_range": [round(x, 3) for x in spread], "epochs": epochs,
                                           "epoch_ms_min_median_max": epoch_ms,
                                           "genlab_rest_ms_median": round(1e3 * statistics.median(rests), 2)}
            if not args.json:
                over = f"rounds {spread[0]:.2f}-{spread[1]:.2f}" if args.rounds > 1 else f"over {epochs} epochs"
                ms = "   epoch ms min/median/max: genlab {}, plain {}".format(
                    *("/".join(f"{x:.1f}" for x in epoch_ms[side]) for side in ("genlab", "plain")))
                ms += f"; genlab rests {1e3 * statistics.median(rests):.1f} ms between epochs"
                print(f"{name:<6} batch {batch:<5} genlab {fast:>9.0f} img/s   plain loop {plain:>9.0f} img/s   "
                      f"ratio {ratio:5.2f}x   {over}{ms}   ({name_of_device})", flush=True)
    return {"device": name_of_device, "results": results}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=[m for m in CASES if m in MODELS])
    parser.add_argument("--dataset", default="auto", help="auto: full MNIST when found, else mnist-5k")
    parser.add_argument("--limit", type=int, default=20000, help="training images per measurement")
    parser.add_argument("--rounds", type=int, help="measurement rounds, medians reported (default 3; 1 with "
                        "--device cuda)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--batch-sizes", type=int, nargs="+", help="with --device cuda: only these batch sizes")
    parser.add_argument("--min-seconds", type=float, default=4.0, help="with --device cuda: the shortest window")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                        help="with --device cuda: both loops in this precision (bf16: under autocast)")
    parser.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=True,
                        help="with --device cuda: genlab's loop replays the recorded step of ae, dae and vae (its "
                             "default); --no-cuda-graphs launches each kernel, as the plain loop does")
    parser.add_argument("--idle-between-epochs", type=float, default=0.0, metavar="SECONDS",
                        help="with --device cuda: the plain loop rests this long between epochs, untimed")
    args = parser.parse_args()
    cases = GPU_CASES if args.device == "cuda" else CASES
    unknown = sorted(set(args.models) - set(cases))
    if unknown:
        parser.error(f"--models: no {args.device} case for {', '.join(unknown)}; choose from {', '.join(cases)}")
    for flag, value in (("--limit", args.limit), ("--rounds", args.rounds)):
        if value is not None and value < 1:
            parser.error(f"{flag} must be at least 1, got {value}")
    if args.device == "cpu" and args.precision != "fp32":
        parser.error("--precision applies with --device cuda (on a CPU both loops run in float32)")
    if not args.min_seconds > 0 or not args.idle_between_epochs >= 0:
        parser.error("--min-seconds must be above 0 and --idle-between-epochs at least 0")

    from genlab.data import resolve_dataset_name
    dataset = resolve_dataset_name(args.dataset, None)
    train_split = load_dataset(dataset, "train")
    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise GenlabError("--device cuda: no CUDA GPU here")
        models = args.models if args.models != parser.get_default("models") else list(GPU_CASES)
        args.models, args.rounds = models, args.rounds or 1
        n = args.limit or len(train_split.images)
        out = gpu_main(args, dataset, train_split.images[:n], train_split.labels[:n])
        if args.json:
            print(json.dumps(out))
        return 0
    args.rounds = args.rounds or 3
    images, labels = train_split.images[:args.limit], train_split.labels[:args.limit]
    results = {}
    for name in args.models:
        batch, overrides = CASES[name]
        # Rounds alternate the three measurements, so a slow spell of a shared machine hits both sides; each
        # figure is the median over rounds, each ratio the median of the rounds' ratios.
        rounds = []
        for _ in range(args.rounds):
            fast = genlab_rate(name, args.limit, batch, overrides, dataset)
            slow = dataloader_rate(name, images, labels, batch, overrides, genlab_optimizer=False)
            same = dataloader_rate(name, images, labels, batch, overrides, genlab_optimizer=True)
            rounds.append((fast, slow, same, fast / slow, fast / same))
        fast, slow, same, ratio, ratio_same = (statistics.median(column) for column in zip(*rounds))
        results[name] = {"genlab": round(fast, 1), "dataloader": round(slow, 1), "ratio": round(ratio, 2),
                         "dataloader_same_optimizer": round(same, 1), "ratio_same_optimizer": round(ratio_same, 2),
                         "ratio_range": [round(min(r[3] for r in rounds), 2), round(max(r[3] for r in rounds), 2)]}
        if not args.json:
            print(f"{name:<5} batch {batch:<4} genlab {fast:>9.0f} img/s   DataLoader {slow:>8.0f} img/s   "
                  f"ratio {ratio:5.2f}x (rounds {results[name]['ratio_range'][0]:.2f}-"
                  f"{results[name]['ratio_range'][1]:.2f})   (same optimiser: {same:>8.0f} img/s, {ratio_same:5.2f}x)",
                  flush=True)
    if args.json:
        print(json.dumps(results))
    print(f"({dataset}, {len(images)} training images per measurement, {args.rounds} rounds, "
          f"{torch.get_num_threads()} threads)",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(one_line_errors(main, "throughput.py"))
