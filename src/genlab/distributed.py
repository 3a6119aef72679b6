"""Data parallelism under ``torchrun``: one process per rank, each player's parameters in PyTorch's own
DistributedDataParallel (gloo on a CPU, nccl on CUDA), so gradient all-reduces overlap the backward pass.

A model's players (one for the autoencoders, discriminator and generator for the GANs) each get a
``PlayerStep``: a small module that owns that player's parameters and whose forward advances the model's
``steps`` generator to that player's turn. Wrapped in DDP, the player's backward pass all-reduces exactly its
own gradients; the model itself, its ``state_dict`` and its checkpoints are untouched by the wrapping.

Each rank's loss is its shard's sum divided by the *global* batch size, times the number of processes: DDP
averages gradients over the processes, so the result equals a one-process run's gradient of the global mean.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from contextlib import ExitStack, contextmanager
from typing import Callable, ContextManager, Iterator, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from genlab.errors import GenlabError, first_line

T = TypeVar("T")


@dataclass
class Context:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def usable_cpus() -> int:
    """The CPU cores this process may run on (its affinity, where the system has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def resolve_device(device: str = "auto") -> torch.device:
    """"auto" -> CUDA when present, else CPU; a device that is not there is one line naming those that are."""
    from genlab.config import check_device

    check_device(device)
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)


def setup(device: str = "auto", deterministic: bool = False) -> Context:
    """Join the process group when launched by torchrun (gloo on CPU, nccl on CUDA); else a single process.

    ``deterministic``: PyTorch's deterministic algorithms only (cuBLAS needs its workspace setting before its
    first use in the process, so it is set here), which makes GPU runs repeat bit for bit.
    """
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)  # an op without one warns, never fails a run
    dev = resolve_device(device)
    world, rank = launch_env()
    if world == 1:
        return Context(device=dev)
    local_rank = _whole(os.environ.get("LOCAL_RANK", "0"), "LOCAL_RANK", 0)
    if dev.type == "cuda":
        # One GPU per process (nccl refuses two ranks on one GPU). Every rank of the machine sees the same
        # counts, so all of them stop with the same line before any of them waits for another.
        here = _whole(os.environ.get("LOCAL_WORLD_SIZE", str(local_rank + 1)), "LOCAL_WORLD_SIZE", 1)
        gpus = torch.cuda.device_count()
        if max(here, local_rank + 1) > gpus:
            raise GenlabError(f"torchrun started {here} processes on this machine, which has {gpus} GPU"
                              f"{'' if gpus == 1 else 's'}; each process needs a GPU of its own: use "
                              f"--nproc-per-node {gpus}, or train on the CPU with --device cpu")
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if os.environ.get("TORCHELASTIC_RUN_ID"):  # torchrun: its agents have met, and it holds the store
            dist.init_process_group(backend)
        else:
            dist.init_process_group(backend, store=_meet_by_hand(world, rank), rank=rank, world_size=world)
    return Context(rank, world, dev)


MEET_SECONDS = 300  # how long processes started by hand wait for each other before giving up, in one line


def _meet_by_hand(world: int, rank: int) -> dist.Store:
    """The store of processes started by hand (WORLD_SIZE, RANK, MASTER_ADDR, MASTER_PORT set without torchrun),
    once all ``world`` of them have reached it. PyTorch's own rendezvous waited 30 minutes inside C++ for a
    process that was never started, deaf to Ctrl-C and SIGTERM; here the main thread waits in Python, so a
    signal ends the wait with genlab's line, and after ``MEET_SECONDS`` so does one line naming the address."""
    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    where = f"MASTER_ADDR:MASTER_PORT {host}:{port}"
    try:
        socket.getaddrinfo(host, port)
    except (OSError, UnicodeError) as e:
        raise GenlabError(f"{where}: the address does not resolve ({getattr(e, 'strerror', None) or e}); set "
                          "MASTER_ADDR to rank 0's machine, or start data-parallel runs with torchrun") from None
    started, said = time.monotonic(), []

    def wait_for(whom: str) -> None:  # a moment of waiting; the deadline and one note on the way
        waited = time.monotonic() - started
        if waited > MEET_SECONDS:
            raise GenlabError(f"{where}: {whom} did not come in {MEET_SECONDS:g} s; start every process of the run "
                              "(RANK 0 to WORLD_SIZE - 1) with the same MASTER_ADDR and MASTER_PORT, or use "
                              "torchrun, which does")
        if waited > 10 and not said:
            print(f"genlab: waiting at {host}:{port} for {whom} (Ctrl-C stops)", file=sys.stderr)
            said.append(whom)
        time.sleep(0.2)

    if rank > 0:  # knock on process 0's port in Python first (PyTorch's own tries log a stack trace each)
        while not _answers(host, port):
            wait_for("process 0")
    try:
        # In a thread of its own: a client that reached something other than a genlab run's store waits in C++.
        store = _in_a_thread(lambda: dist.TCPStore(host, port, world, is_master=rank == 0, wait_for_workers=False,
                                                   timeout=timedelta(seconds=MEET_SECONDS)),
                             lambda: wait_for("process 0's answer"))
    except RuntimeError as e:  # DistNetworkError, DistStoreError
        why = ("in use by another program, or not an address of this machine" if rank == 0 else
               "what answers there is not process 0 of a genlab run")
        raise GenlabError(f"{where}: {why} ({first_line(e)}); start every process of the run with the same "
                          "MASTER_ADDR and a free MASTER_PORT, or use torchrun") from None
    # Each process claims its own rank: a count of arrivals let a rank started twice stand in for a missing one,
    # and the group then waited inside PyTorch for ever, deaf to signals.
    if store.add(f"genlab/rank/{rank}", 1) > 1:
        raise GenlabError(f"{where}: a process with RANK={rank} is already there; give each process of the run "
                          "its own RANK (0 to WORLD_SIZE - 1), or use torchrun, which does")
    ranks = [f"genlab/rank/{r}" for r in range(world)]
    try:
        while not store.check(ranks):
            missing = [r for r in range(world) if not store.check([ranks[r]])]
            wait_for(f"RANK {', '.join(map(str, missing))} of WORLD_SIZE={world}")
    except RuntimeError as e:  # DistNetworkError: process 0, which holds the store, has gone
        raise GenlabError(f"{where}: process 0 went away while the processes met ({first_line(e)}); start every "
                          "process of the run again, or use torchrun") from None
    return store


_LEFT: list[threading.Thread] = []  # threads given up on by ``_in_a_thread``, perhaps still inside C++


def threads_left_in_cpp() -> bool:
    """Whether a thread given up on is still at work: the interpreter's exit then aborted the process ("terminate
    called without an active exception") after genlab's last line, so the command ends at once instead."""
    return any(thread.is_alive() for thread in _LEFT)


def _in_a_thread(work: Callable[[], T], wait: Callable[[], None]) -> T:
    """``work()`` in a daemon thread while this one calls ``wait()`` until it is done (``wait`` sleeps a moment,
    and raises to give up: the thread is then left to end with the process)."""
    done: list = []

    def run() -> None:
        try:
            done.append((work(), None))
        except BaseException as e:  # noqa: BLE001 - handed to the waiting thread
            done.append((None, e))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    _LEFT.append(thread)  # until it is done: a wait that raises leaves it there
    while not done:
        wait()
    _LEFT.remove(thread)
    result, error = done[0]
    if error is not None:
        raise error
    return result


def _answers(host: str, port: int) -> bool:
    """Whether something accepts connections at ``host``:``port``."""
    try:
        socket.create_connection((host, port), timeout=1).close()
        return True
    except OSError:
        return False


def launch_env() -> tuple[int, int]:
    """(world size, rank) from the variables torchrun sets; (1, 0) without them. Variables set by hand that
    cannot describe a process group are one line each (they gave tracebacks, or a wait of 30 minutes for a
    rank 0 that never comes)."""
    raw = os.environ.get("WORLD_SIZE")
    if raw is None:
        return 1, 0
    world = _whole(raw, "WORLD_SIZE", 1)
    if world == 1:
        return 1, 0
    if "RANK" not in os.environ:
        raise GenlabError(f"WORLD_SIZE is {world} but RANK is not set; start data-parallel runs with torchrun "
                          "--nproc-per-node N -m genlab.cli train ..., or unset WORLD_SIZE")
    rank = _whole(os.environ["RANK"], "RANK", 0)
    if rank >= world:
        raise GenlabError(f"RANK is {rank} but WORLD_SIZE is {world}: ranks run from 0 to {world - 1}; start "
                          "data-parallel runs with torchrun, which sets both")
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
    if missing:
        raise GenlabError(f"WORLD_SIZE is {world} but {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
                          "not set; start data-parallel runs with torchrun, which sets them")
    port = os.environ["MASTER_PORT"]
    if not (port.strip().isdigit() and 1 <= int(port) <= 65535):
        raise GenlabError(f"MASTER_PORT={port!r} is not a port number (1 to 65535); start data-parallel runs with "
                          "torchrun, which sets it")
    return world, rank


def _whole(raw: str, name: str, least: int) -> int:
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or value < least:
        raise GenlabError(f"{name}={raw!r} must be a whole number of at least {least}; start data-parallel runs "
                          f"with torchrun, which sets it, or unset it")
    return value


def teardown(ctx: Context, finished: bool = False) -> None:
    """Leave the process group. ``finished``: every rank got here the same way, so wait at a barrier first;
    no rank then tears its group down while another still has a collective in flight, whose pending work
    would otherwise be freed during interpreter shutdown (a rare SIGABRT at exit on a loaded machine). After a
    failure the ranks may not all arrive, so they leave at once."""
    if ctx.world > 1 and dist.is_initialized():
        if finished:  # nccl's barrier at this process's own GPU (else PyTorch guesses it, and warns)
            on_gpu = ctx.device.type == "cuda"
            dist.barrier(device_ids=[ctx.device.index] if on_gpu else None)
        elif dist.get_backend() == "nccl" and hasattr(dist.distributed_c10d, "_abort_process_group"):
            # After a failure of this rank's alone (a full disk at its checkpoint), its peers wait in a
            # collective it will never join: nccl's shutdown (destroy_process_group) waits for the work in
            # flight, so the error line would come after nccl's own timeout, if ever. Abort instead (PyTorch's
            # way out of a failed nccl group; gloo's destroy returns at once).
            try:
                dist.distributed_c10d._abort_process_group()
            except (RuntimeError, ValueError):  # the group is already gone: nothing left to leave
                pass
            return
        dist.destroy_process_group()


MESSAGE_BYTES = 1024  # the longest error line one rank passes to the others


def agree(ctx: Context, work: Callable[[], T]) -> T:
    """Run ``work`` on every rank; if it raises a GenlabError on any rank, raise one on every rank, with the
    first failing rank's own message.

    Without this, a user error found by one rank (a run directory that already holds a run, say) would leave
    the other ranks waiting in their next collective until the launcher kills them with a traceback. Every
    rank says the reason, because the launcher stops the others as soon as one exits, and the rank that
    found it may be stopped before it has said it.
    """
    error = None
    try:
        result = work()
    except GenlabError as e:
        error = e
    if ctx.world > 1:
        failed = torch.tensor([float(error is not None)], device=ctx.device)
        dist.all_reduce(failed)
        if failed.item() > 0:
            text = str(error).encode()[:MESSAGE_BYTES] if error is not None else b""
            mine = torch.zeros(MESSAGE_BYTES + 1, dtype=torch.uint8)
            mine[0] = error is not None
            if text:
                mine[1:1 + len(text)] = torch.frombuffer(bytearray(text), dtype=torch.uint8)
            parts = [torch.empty_like(mine, device=ctx.device) for _ in range(ctx.world)]
            dist.all_gather(parts, mine.to(ctx.device))
            if error is None:
                rank, part = next((r, p.cpu()) for r, p in enumerate(parts) if p[0])
                said = bytes(part[1:].tolist()).rstrip(b"\0").decode(errors="replace")
                raise GenlabError(f"rank {rank}: {said}")
    if error is not None:
        raise error
    return result


def check_same(ctx: Context, text: str, what: str, fix: str, show: bool = True) -> None:
    """A GenlabError on every rank, saying ``fix``, unless every rank passes the same ``text`` (a description of
    ``what``, shown in the line where ``show``)."""
    if ctx.world == 1:
        return
    digest = int.from_bytes(hashlib.sha256(text.encode(errors="surrogateescape")).digest()[:7], "big")
    extremes = torch.tensor([digest, -digest], dtype=torch.int64, device=ctx.device)
    dist.all_reduce(extremes, op=dist.ReduceOp.MAX)
    if extremes[0].item() != -extremes[1].item():
        raise GenlabError(f"rank {ctx.rank}: the processes see different {what}{f' (here: {text})' if show else ''}; "
                          f"{fix}")


# How a collective says that another process of the group went away: gloo's and the store's connection closed
# or reset; nccl's watchdog, which aborts the communicator when a collective waits past the group's timeout.
PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "remote process exited",
             "communicator was aborted", "Watchdog caught collective operation timeout")


def is_peer_failure(error: BaseException) -> bool:
    """Whether ``error`` is a collective that failed because another process of the group went away, as opposed
    to a failure of this process's own."""
    return isinstance(error, RuntimeError) and any(words in str(error) for words in PEER_GONE)


@contextmanager
def agreed(ctx: Context, manager: ContextManager[T]) -> Iterator[T]:
    """Enter ``manager`` on every rank as ``agree`` runs work: a GenlabError entering it on any rank is raised
    on every rank (and the ranks that did enter leave it again)."""
    with ExitStack() as stack:
        yield agree(ctx, lambda: stack.enter_context(manager))


def sum_across(values: torch.Tensor, ctx: Context) -> torch.Tensor:
    """The element-wise sum of a 1-D tensor over all ranks (the tensor itself on one process)."""
    if ctx.world > 1:
        values = values.to(ctx.device)
        dist.all_reduce(values)
    return values


def broadcast_buffers(module: nn.Module, ctx: Context) -> None:
    """Make every rank start from rank 0's buffers (DDP broadcasts the parameters itself)."""
    if ctx.world > 1:
        for t in module.buffers():
            dist.broadcast(t.data, src=0)


class PlayerStep(nn.Module):
    """One player's parameters as a module whose forward returns that player's loss terms.

    ``forward(turns)`` takes the iterator of the model's ``steps(x)`` and advances it to this player's turn,
    so the player's computation runs inside DDP's forward. The parameters are the model's own (shared).
    """

    def __init__(self, player: str, parameters: list[nn.Parameter]):
        super().__init__()
        self.player = player
        self.params = nn.ParameterList(parameters)

    def forward(self, turns: Iterator[tuple[str, dict[str, torch.Tensor]]]) -> dict[str, torch.Tensor]:
        player, terms = next(turns)
        if player != self.player:
            raise RuntimeError(f"the model's steps yielded player {player!r} where {self.player!r} was expected")
        return terms


def player_steps(model, ctx: Context) -> dict[str, nn.Module]:
    """A ``PlayerStep`` per player, wrapped in DistributedDataParallel when there is more than one process."""
    steps: dict[str, nn.Module] = {}
    for player in model.players:
        step = PlayerStep(player, model.player_parameters(player))
        if ctx.world > 1:
            ids = [ctx.device.index] if ctx.device.type == "cuda" else None
            step = nn.parallel.DistributedDataParallel(step, device_ids=ids)  # no buffers of its own
        steps[player] = step
    return steps


def gather_rng(ctx: Context) -> dict[str, list[torch.Tensor]]:
    """Every rank's random-number states in rank order: {"cpu": [...], "cuda": [...]} (CUDA only on a GPU).

    The states travel through the process group on the group's device (nccl only moves CUDA tensors) and
    come back as CPU uint8 tensors.
    """
    states = {"cpu": torch.get_rng_state()}
    if ctx.device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(ctx.device)
    if ctx.world == 1:
        return {kind: [state] for kind, state in states.items()}
    gathered = {}
    for kind, state in states.items():
        local = state.to(ctx.device)
        parts = [torch.empty_like(local) for _ in range(ctx.world)]
        dist.all_gather(parts, local)
        gathered[kind] = [p.cpu() for p in parts]
    return gathered
