"""Data parallelism under ``torchrun``: one process per rank, gradients averaged by all-reduce.

genlab averages gradients itself (one flat all-reduce per optimiser step) rather than wrapping the model in
DistributedDataParallel: two-player models step two optimisers on two losses per batch, which DDP's
forward-hook bookkeeping does not fit, and one explicit all-reduce is easy to read and to check. Each rank's
loss is its shard's sum divided by the *global* batch size, so the summed gradients equal a one-process run's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Context:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str = "auto") -> Context:
    """Join the process group when launched by torchrun (gloo on CPU, nccl on CUDA); else a single process."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Context(device=torch.device(device))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Context(rank, world, dev)


def teardown(ctx: Context) -> None:
    if ctx.world > 1 and dist.is_initialized():
        dist.destroy_process_group()


def sum_grads_and(params: list[torch.nn.Parameter], extra: torch.Tensor, ctx: Context) -> torch.Tensor:
    """All-reduce (sum) the gradients of ``params`` and the 1-D tensor ``extra`` in one message; return ``extra``."""
    if ctx.world == 1:
        return extra
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads] + [extra.to(grads[0].dtype if grads else extra.dtype)])
    dist.all_reduce(flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()
    return flat[offset:]


def broadcast_parameters(module: torch.nn.Module, ctx: Context) -> None:
    """Make every rank start from rank 0's weights and buffers."""
    if ctx.world > 1:
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)


def gather_rng(ctx: Context) -> list[torch.Tensor]:
    """Every rank's CPU random-number state (rank order), for exact resumption."""
    state = torch.get_rng_state()
    if ctx.world == 1:
        return [state]
    states = [torch.empty_like(state) for _ in range(ctx.world)]
    dist.all_gather(states, state)
    return states
