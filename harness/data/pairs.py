"""Batches of finetuning examples: each example is an input row and its own target row (see
:mod:`harness.data.tasks`), drawn like any other examples: each once per epoch, shuffled by (seed, epoch), and
resumable from the same few integers."""

from __future__ import annotations

import numpy as np
import torch

from harness.data.batches import Batches
from harness.data.prepare import spread

__all__ = ["PairBatches", "pair_eval_batches"]


class PairBatches(Batches):
    """Training batches over (input row, target row) pairs; the epoch logic and position are :class:`Batches`'."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, *, batch_size: int, seed: int):
        if x.shape != y.shape or x.dim() != 2:
            raise ValueError(f"inputs {tuple(x.shape)} and targets {tuple(y.shape)} must be the same (N, T) shape")
        super().__init__(x, seq_len=x.shape[1], stride=1, batch_size=batch_size, seed=seed, mode="epoch")
        self.inputs, self.targets = x, y

    def gather(self, idx: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        i = torch.as_tensor(idx)
        return self.inputs[i], self.targets[i]  # (B, T) each


def pair_eval_batches(x: torch.Tensor, y: torch.Tensor, *, batch_size: int, n_batches: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A fixed set of evaluation batches spread evenly over the split: the same at every evaluation, drawn from no RNG."""
    n = x.shape[0]
    if n == 0:
        return []
    idx = torch.from_numpy(spread(n, n_batches * batch_size))  # integers: no float index
    return [(x[chunk], y[chunk]) for chunk in idx.split(batch_size)]
