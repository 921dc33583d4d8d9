"""Where the training loop runs: one process, `torchrun` (env:// from RANK/WORLD_SIZE), or a Ray Train worker.

`Dist` is all the loop knows about it: its rank, the world size, its device, and the two collectives it needs
(a sum all-reduce for the loss normalisers and metrics, a barrier around checkpoints). Ray Train sets up the
process group itself (gloo on CPU, NCCL on GPU) and the same loop runs inside `TorchTrainer`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.distributed as torch_dist

from annotate.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """`auto` = the GPU when there is one; `cuda` without one is a config error (never a silent CPU fallback)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"device: {name!r} is not a torch device (cpu, cuda, cuda:N, auto)") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} but torch sees no CUDA device (use device=cpu or device=auto)")
    return device


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    report: Optional[Callable[[dict], None]] = None  # Ray Train's report (every rank calls it), else None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def all_reduce(self, values: torch.Tensor, on_device: bool = False) -> torch.Tensor:
        """Sum over ranks (a no-op in one process). gloo and NCCL both take float64 on their own device.
        `on_device`: return the backend's tensor as it is (with NCCL, on the GPU: no wait for the result)."""
        if not self.distributed:
            return values
        backend_device = self.device if torch_dist.get_backend() == "nccl" else torch.device("cpu")
        out = values.detach().to(backend_device, torch.float64)
        torch_dist.all_reduce(out, op=torch_dist.ReduceOp.SUM)
        return out if on_device else out.to(values.device)

    def barrier(self) -> None:
        if self.distributed:
            if torch_dist.get_backend() == "nccl":
                torch_dist.barrier(device_ids=[self.device.index or 0])
            else:
                torch_dist.barrier()


def local_dist(device_name: str) -> Dist:
    """One process, or one of `torchrun`'s: env:// initialisation from RANK, WORLD_SIZE, MASTER_ADDR/PORT."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not torch_dist.is_initialized():
        torch_dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", init_method="env://")
    return Dist(rank=rank, world_size=world, local_rank=local_rank, device=device)


def ray_worker_dist() -> Dist:
    """Inside a Ray Train worker: the process group is up; RANK/WORLD_SIZE also go to the env for the data splits."""
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    os.environ.setdefault("RANK", str(rank))
    os.environ.setdefault("WORLD_SIZE", str(world))
    device = ray.train.torch.get_device()
    return Dist(rank=rank, world_size=world, local_rank=ctx.get_local_rank(), device=device,
                report=lambda metrics: ray.train.report(metrics))


def close(dist: Dist) -> None:
    if dist.distributed and dist.report is None and torch_dist.is_initialized():
        torch_dist.destroy_process_group()
