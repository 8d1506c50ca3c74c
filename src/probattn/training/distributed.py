"""Process groups, data sharding and seeding that make N processes compute what one process computes.

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
:func:`setup` sees them and joins the group (``nccl`` on CUDA, ``gloo`` on CPU).

Sharding: each epoch's example order is a seeded permutation (a function of ``(seed, epoch)`` only). Step
``s`` takes the next ``batch_size`` examples (the global batch) and cuts them into ``world_size x grad_accum``
equal micro-batches; rank ``r`` gets micro-batches ``r*grad_accum ... (r+1)*grad_accum - 1``. So the
micro-batches of one process with ``grad_accum = G`` are exactly those of ``G`` processes with
``grad_accum = 1``. (``torch.utils.data.DistributedSampler`` interleaves examples across ranks instead, which
does not line up with gradient accumulation.) Random numbers (dropout) are re-seeded per micro-batch from
``(seed, step, micro-batch)``, so they do not depend on the number of processes either, and a resumed run
draws the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

CPU = torch.device("cpu")

__all__ = ["Distributed", "assert_in_sync", "epoch_order", "micro_batches", "seed_for", "setup"]


@dataclass(frozen=True)
class Distributed:
    """Where this process stands: ``rank`` of ``world_size``, its ``device``; ``owns_group`` = we created it."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = CPU
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """Average ``tensor`` over the processes (in place) and return it."""
        if self.enabled:
            on_device = tensor.to(self.device)  # nccl reduces CUDA tensors only
            dist.all_reduce(on_device)
            tensor.copy_(on_device / self.world_size)
        return tensor

    def broadcast_object(self, value):
        """Rank 0's ``value`` on every rank."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def _device(preference: str, local_rank: int) -> torch.device:
    if preference == "auto":
        preference = "cuda" if torch.cuda.is_available() else "cpu"
    if preference.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {preference}: CUDA is not available on this machine; use --device cpu")
        return torch.device("cuda", local_rank) if preference == "cuda" else torch.device(preference)
    return torch.device(preference)


def setup(device: str = "auto") -> Distributed:
    """Join the torchrun process group if the environment describes one (or reuse an initialized one)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1 and not dist.is_initialized():
        return Distributed(device=_device(device, 0))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    chosen = _device(device, local_rank)
    owns = False
    if not dist.is_initialized():
        if chosen.type == "cuda":
            torch.cuda.set_device(chosen)
        dist.init_process_group(backend="nccl" if chosen.type == "cuda" else "gloo")
        owns = True
    return Distributed(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                       device=chosen, owns_group=owns)


def epoch_order(num_examples: int, *, seed: int, epoch: int) -> np.ndarray:
    """The example order of ``epoch``: a permutation that depends on ``(seed, epoch)`` only."""
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def micro_batches(order: np.ndarray, step_in_epoch: int, *, batch_size: int, grad_accum: int, world_size: int,
                  rank: int) -> list[list[int]]:
    """This rank's ``grad_accum`` micro-batches (lists of example indices) for one step (see module doc)."""
    parts = world_size * grad_accum
    if batch_size % parts:
        raise ValueError(f"--batch-size {batch_size} must be divisible by processes x --grad-accum = {parts}")
    size = batch_size // parts
    start = step_in_epoch * batch_size
    chunk = order[start:start + batch_size]
    return [chunk[(rank * grad_accum + j) * size:(rank * grad_accum + j + 1) * size].tolist()
            for j in range(grad_accum)]


def seed_for(seed: int, step: int, slot: int) -> int:
    """A 63-bit seed for ``(seed, step, slot)``; slot = global micro-batch index, or -1 for the optimizer step."""
    return int(np.random.SeedSequence([seed, step, slot + 1]).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


def assert_in_sync(ctx: Distributed, model: torch.nn.Module) -> None:
    """Raise ``RuntimeError`` if the processes' parameters differ (compares float64 per-tensor sums)."""
    if not ctx.enabled:
        return
    with torch.no_grad():
        mine = torch.stack([p.detach().double().sum() for p in model.parameters()]).to(ctx.device)
    gathered = [torch.empty_like(mine) for _ in range(ctx.world_size)]
    dist.all_gather(gathered, mine)
    differing = [rank for rank, other in enumerate(gathered) if not torch.equal(other, gathered[0])]
    if differing:
        raise RuntimeError(f"parameters of ranks {differing} differ from rank 0's; the processes diverged")
