"""The processes a run trains on, as the loop sees them: :class:`Ranks`, implemented by :class:`OneProcess` (a run
alone, where every operation is the identity) and :class:`Distributed` (one rank of a PyTorch DDP run under
``torchrun``). The loop calls the same methods either way, so it has one path.

DDP: every rank builds the same data, sampler and model (same seed), draws the same global batch and keeps its own
disjoint shard of it; DistributedDataParallel averages the gradients, so every rank applies the same update and the
weights stay identical. Rank 0 alone talks to MLflow and writes checkpoints; a resumed run's state reaches the other
ranks from rank 0. Decisions that must agree (stop now, after Ctrl-C on any rank) are all-reduced.

Backends: gloo on CPU, nccl on CUDA. ``torchrun`` sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import torch

from harness.data.prepare import PAD_TARGET
from harness.errors import HarnessError
from harness.train.loss import cross_entropy

__all__ = ["Distributed", "OneProcess", "Ranks"]

T = TypeVar("T")


class Ranks(Protocol):
    """What the training loop asks of the processes it runs on."""

    @property
    def is_main(self) -> bool:
        """Whether this process writes checkpoints and hears the callbacks (rank 0; a run alone)."""
        ...

    @property
    def world_size(self) -> int: ...

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """What forward and backward run through."""
        ...

    def shard(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This process's rows of the global batch."""
        ...

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, float]:
        """The tensor to call backward on, and the mean loss over the whole global batch's graded targets."""
        ...

    def any(self, flag: bool, device: torch.device) -> bool:
        """Whether ``flag`` is true on any process."""
        ...

    def broadcast(self, obj: T) -> T:
        """The main process's ``obj``, on every process."""
        ...

    def agree_on_eval(self, metrics: dict[str, float], model: torch.nn.Module, device: torch.device) -> dict[str, float]:
        """The evaluation every process acts on."""
        ...


@dataclass(frozen=True)
class OneProcess:
    """A run in one process: the whole batch is its own, and every collective operation is the identity."""

    @property
    def is_main(self) -> bool:
        return True

    @property
    def world_size(self) -> int:
        return 1

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        return model

    def shard(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, y

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, float]:
        loss = cross_entropy(logits, y)
        return loss, loss.item()

    def any(self, flag: bool, device: torch.device) -> bool:
        return flag

    def broadcast(self, obj: T) -> T:
        return obj

    def agree_on_eval(self, metrics: dict[str, float], model: torch.nn.Module, device: torch.device) -> dict[str, float]:
        return metrics


@dataclass(frozen=True)
class Distributed:
    """One rank of a DDP run: the loop's :class:`Ranks`, and joining and leaving the process group (for the job)."""

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

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, float]:
        """This rank's share of the global batch's mean loss, and that mean. Ranks can hold different numbers of
        graded targets (instruct responses differ in length), so each rank's sum is divided by the global count; DDP
        then averages the gradients over the ranks, hence the factor world_size."""
        graded = self.sum(float((y != PAD_TARGET).sum()), logits.device)
        loss_sum = cross_entropy(logits, y, reduction="sum")
        global_mean = self.sum(loss_sum.item(), logits.device) / max(graded, 1.0)
        return loss_sum * (self.world_size / max(graded, 1.0)), global_mean

    def agree_on_eval(self, metrics: dict[str, float], model: torch.nn.Module, device: torch.device) -> dict[str, float]:
        """Rank 0's figures, with ``ddp/param_divergence`` added. DDP keeps the replicas identical; the divergence shows
        it (0.0), or shows that it did not. Rank 0's figures decide best and patience on every rank: float results can
        differ in the last bits between devices, and ranks that disagreed about stopping would wait for each other
        forever."""
        metrics = {**metrics, "ddp/param_divergence": self.divergence(model, device)}
        return self.broadcast(metrics)

    def sum(self, value: float, device: torch.device) -> float:
        """The sum of ``value`` over the ranks."""
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return float(t.item())

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank when it is true on any (a stop request must stop all ranks at the same step)."""
        import torch.distributed as dist

        t = torch.tensor([1 if flag else 0], dtype=torch.int64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank (a checkpoint's state, a resumed run's spec)."""
        import torch.distributed as dist

        box: list[Any] = [obj if self.is_main else None]
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
