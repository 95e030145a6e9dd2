"""Multi-process runs launched by ``torchrun``: process group set-up, rank facts, barriers.

``torchrun`` (single node, multi-node rendezvous, or under SLURM via ``srun torchrun ...``) sets
``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`setup` reads them
and initialises ``torch.distributed`` with gloo on CPU or nccl on CUDA. Without them a run is a single
process and nothing is initialised. Rank 0 is the only one that writes shared outputs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from stfusion.errors import StfusionError

if TYPE_CHECKING:  # torch is imported by the functions that use it: a single process never needs it
    from torch import nn


@dataclass(frozen=True)
class Context:
    """Where this process stands: ``rank`` of ``world_size``; ``device`` to put its model on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        """True on the process that writes checkpoints, logs and joined outputs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    """True when the environment of a torchrun worker with more than one process is present."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def setup(device: str = "cpu") -> Context:
    """Initialise the process group when launched by torchrun (idempotent); else a single process.

    ``device`` ``cuda`` becomes ``cuda:<LOCAL_RANK>`` (one GPU per process, nccl backend); any other
    device uses the gloo backend.
    """
    if not launched_by_torchrun():
        return Context(device=device)
    import torch
    import torch.distributed as dist

    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    on_cuda = device.startswith("cuda")
    if on_cuda:
        if not torch.cuda.is_available():
            raise StfusionError(f"--device {device}: CUDA is not available on this node")
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if on_cuda else "gloo")
    return Context(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def barrier(context: Context) -> None:
    """Wait for every process (no-op for a single process)."""
    if context.distributed:
        import torch.distributed as dist

        dist.barrier()


def teardown(context: Context) -> None:
    """Destroy the process group this module created (no-op for a single process)."""
    if context.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


# --------------------------------------------------------------------------------------------------
# data-parallel training pieces


def broadcast_module(module: nn.Module, context: Context) -> None:
    """Copy rank 0's parameters and buffers to every rank."""
    if context.distributed:
        import torch.distributed as dist

        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=0)


def average_gradients(module: nn.Module, context: Context) -> None:
    """Average the parameters' gradients over ranks (one flat all-reduce); no-op for one process.

    Each rank's loss must already be scaled so that the average is the global batch's gradient.
    """
    if not context.distributed:
        return
    import torch
    import torch.distributed as dist

    params = [p for p in module.parameters() if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= context.world_size
    offset = 0
    for param, grad in zip(params, grads, strict=True):
        size = grad.numel()
        param.grad = flat[offset : offset + size].view_as(grad).clone()
        offset += size


def sum_over_ranks(values: dict[str, float], context: Context) -> dict[str, float]:
    """Sum each named float over ranks (for global loss means); unchanged for one process."""
    if not context.distributed or not values:
        return dict(values)
    import torch
    import torch.distributed as dist

    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(tensor)
    return {k: float(v) for k, v in zip(keys, tensor.tolist(), strict=True)}
