"""One run on several processes (PyTorch DDP under ``torchrun``).

Every rank builds the same data, sampler and model (same seed), draws the same global batch and keeps its own
disjoint shard of it; DistributedDataParallel averages the gradients, so every rank applies the same update and the
weights stay identical. Rank 0 alone talks to MLflow and writes checkpoints; a resumed run's state reaches the other
ranks from rank 0. Decisions that must agree (stop now, after Ctrl-C on any rank) are all-reduced.

Backends: gloo on CPU, nccl on CUDA. ``torchrun`` sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from typing import Any

import torch

from harness.errors import HarnessError

__all__ = ["Distributed"]


@dataclass(frozen=True)
class Distributed:
    rank: int
    world_size: int
    local_rank: int

    @classmethod
    def from_env(cls) -> Distributed | None:
        """The process's place in a torchrun group, or None when it runs alone."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return None
        return cls(rank=int(os.environ["RANK"]), world_size=world, local_rank=int(os.environ.get("LOCAL_RANK", "0")))

    @staticmethod
    def is_follower() -> bool:
        """Whether this process is a torchrun rank other than 0 (it trains, but prints and tracks nothing)."""
        return int(os.environ.get("WORLD_SIZE", "1")) > 1 and int(os.environ.get("RANK", "0")) != 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def start(self, device: torch.device) -> torch.device:
        """Join the process group (gloo on CPU, nccl on CUDA); returns this rank's device."""
        import torch.distributed as dist

        if device.type == "cuda":
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            # with CUDA present, both: the group serves CPU tensors (a cpu-device spec, broadcast objects) and GPU ones
            dist.init_process_group(backend="cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
        return device

    def stop(self) -> None:
        """Leave the group after a run that ended normally on every rank. (After an error, leave without this: the
        process exits non-zero and torchrun stops the other ranks.)"""
        import torch.distributed as dist

        if dist.is_initialized():
            # A DDP wrapper still alive (in a reference cycle) when the group is gone aborts the process when it is
            # collected at exit: collect it first.
            gc.collect()
            # Every rank leaves together: a rank that tears its group down while another still holds work in it
            # aborts ("terminate called without an active exception") when the process exits.
            dist.barrier()
            dist.destroy_process_group()

    def per_rank_batch(self, batch_size: int) -> int:
        if batch_size % self.world_size:
            raise HarnessError(f"train.batch_size {batch_size} is the global batch; it must divide evenly over the "
                               f"{self.world_size} processes (it does not)")
        return batch_size // self.world_size

    def shard(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's rows of a global batch: a contiguous, disjoint slice."""
        b = x.shape[0] // self.world_size
        rows = slice(self.rank * b, (self.rank + 1) * b)
        return x[rows], y[rows]

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        # DDP broadcasts rank 0's parameters at construction, so every rank starts from the same weights.
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def sum(self, value: float, device: torch.device) -> float:
        """The sum of ``value`` over the ranks."""
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return float(t.item())

    def mean(self, value: float, device: torch.device) -> float:
        """The mean of ``value`` over the ranks (e.g. each rank's loss on its shard)."""
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return float(t.item()) / self.world_size

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank when it is true on any (a stop request must stop all ranks at the same step)."""
        import torch.distributed as dist

        t = torch.tensor([1 if flag else 0], dtype=torch.int64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (a checkpoint's state, a resumed run's spec)."""
        import torch.distributed as dist

        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def divergence(self, model: torch.nn.Module, device: torch.device) -> float:
        """The largest difference between this rank's parameters and rank 0's, maximised over the ranks: 0 when DDP
        kept every replica identical."""
        import torch.distributed as dist

        worst = torch.zeros(1, dtype=torch.float64, device=device)
        for p in model.parameters():
            ref = p.detach().clone()
            dist.broadcast(ref, src=0)
            worst = torch.maximum(worst, (p.detach() - ref).abs().max().to(torch.float64).reshape(1))
        dist.all_reduce(worst, op=dist.ReduceOp.MAX)
        return float(worst.item())
