"""Training past one process: the one module that knows about ranks.

Launched by ``torchrun --nproc_per_node N -m trainer train CONFIG``, every process reads
RANK / WORLD_SIZE / LOCAL_RANK from the environment and joins one process group (gloo on
CPU, nccl when the trainer runs on CUDA). Without those variables :class:`Dist` is a
single process and every collective here is a no-op, so the trainer calls them
unconditionally.

The contract the trainer keeps with it:

- ``optim.batch_size`` is the global batch: every step, each rank takes the strided share
  ``batch[rank::world]`` of the same seeded permutation (DistributedSampler's layout), so
  one epoch still visits every vector once across the ranks.
- DDP averages the gradients; anything updated outside autograd (EMA codebooks, dead-code
  re-seeding, k-means init, loss-balancing weights, the critic) is reduced or broadcast
  here so every rank holds the same numbers.
- Only rank 0 (``is_main``) evaluates, writes checkpoints, history and plots, and logs.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Iterable

import numpy as np
import torch
import torch.distributed as td
from torch import nn

log = logging.getLogger(__name__)


def backend_for(device: str) -> str:
    return "nccl" if device.startswith("cuda") else "gloo"


class Dist:
    """Rank, world size and the few collectives the trainer needs; a no-op for one process."""

    def __init__(self, rank: int = 0, world: int = 1, local_rank: int = 0) -> None:
        self.rank, self.world, self.local_rank = rank, world, local_rank

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: nn.Module, find_unused: bool = False) -> nn.Module:
        """DDP around the model. ``find_unused``: some trainable parameters sit idle in some steps
        (gradient-trained codebooks during the warm-up), which DDP must be told about."""
        if not self.enabled:
            return model
        return nn.parallel.DistributedDataParallel(model, find_unused_parameters=find_unused)

    def shard(self, indices: np.ndarray) -> np.ndarray:
        """This rank's strided share of a global batch's indices."""
        return indices[self.rank :: self.world] if self.enabled else indices

    def broadcast_(self, *tensors: torch.Tensor) -> None:
        """Overwrite every rank's tensors with rank 0's, in place."""
        if self.enabled:
            for t in tensors:
                td.broadcast(t.data, src=0)

    def all_reduce_sum_(self, *tensors: torch.Tensor) -> None:
        if self.enabled:
            for t in tensors:
                td.all_reduce(t, op=td.ReduceOp.SUM)

    def average_grads_(self, params: Iterable[nn.Parameter]) -> None:
        """Mean gradient over ranks for parameters that live outside the DDP module."""
        if not self.enabled:
            return
        for p in params:
            if p.grad is not None:
                td.all_reduce(p.grad, op=td.ReduceOp.SUM)
                p.grad.div_(self.world)

    def any(self, flag: bool) -> bool:
        """True on every rank if it is true on any: decisions such as skipping a step must agree."""
        if not self.enabled:
            return flag
        t = torch.tensor([1.0 if flag else 0.0])
        td.all_reduce(t, op=td.ReduceOp.MAX)
        return bool(t.item() > 0)

    def barrier(self) -> None:
        if self.enabled:
            td.barrier()

    def params_in_sync(self, model: nn.Module) -> bool:
        """Whether every rank holds bit-identical parameters (sum and max of |Δ| against rank 0)."""
        if not self.enabled:
            return True
        flat = torch.cat([p.detach().reshape(-1).double() for p in model.parameters()])
        ref = flat.clone()
        td.broadcast(ref, src=0)
        return not self.any(bool((flat != ref).any()))


def init_from_env(device: str = "cpu", timeout_s: float = 1800.0) -> Dist:
    """Join the process group torchrun describes in the environment; one process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not td.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not td.is_initialized():
        backend = backend_for(device)
        td.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
        log.info("rank %d of %d joined the %s process group", rank, world, backend)
    return Dist(rank, world, local)


def cleanup() -> None:
    """Leave the process group (end of ``monolith-train train`` under torchrun)."""
    if td.is_available() and td.is_initialized():
        td.destroy_process_group()
