"""Batches for the trainer: vectorized gathers from one tensor, with a resumable position.

Every sampler's position is a couple of integers, and each epoch's shuffle (or each step's random draw) comes from a
generator seeded by ``(seed, epoch)`` (or ``(seed, step)``). So a checkpoint only needs those integers to replay the
exact batch stream, and the stream never depends on how many evaluations happened in between.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from harness.data.prepare import PAD_TARGET, Prepared, count_windows, spread, window_stride
from harness.spec.schema import DataSpec

__all__ = ["Batches", "eval_batches", "make_batches"]


def _stable_hash(*keys: int) -> int:
    h = 1469598103934665603
    for k in keys:
        h = ((h ^ (int(k) & 0xFFFF_FFFF_FFFF_FFFF)) * 1099511628211) & 0x7FFF_FFFF_FFFF_FFFF
    return h


def _seeded(*keys: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(_stable_hash(*keys))
    return g


class Batches:
    """Training batches in one of three layouts.

    * stream: ``data`` is 1-D; example i is ``data[start_i : start_i + T + 1]``.
    * rows: ``data`` is 2-D ``(N, T + 1)`` with -1 padding; example i is row i.

    ``mode`` is ``epoch`` (each example once per epoch, shuffled, drop_last) or ``random`` (independent draws).
    """

    def __init__(self, data: torch.Tensor, *, seq_len: int, stride: int, batch_size: int, seed: int, mode: str, pad_input: int = 0):
        self.data = data
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.seed = seed
        self.mode = mode
        self.pad_input = pad_input
        if data.dim() == 1:
            n = count_windows(len(data), seq_len, stride)
            self.starts = torch.arange(n, dtype=torch.long) * stride
            self._offsets = torch.arange(seq_len + 1, dtype=torch.long)
        else:
            n = data.shape[0]
            self.starts = torch.arange(n, dtype=torch.long)
        self.n_examples = n
        self.steps_per_epoch = max(n // batch_size, 1) if mode == "random" else n // batch_size
        self.epoch = 0
        self.cursor = 0  # batches already drawn in this epoch
        self.step = 0  # batches drawn in total
        self._perm: torch.Tensor | None = None

    # -- position ------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "cursor": self.cursor, "step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.cursor, self.step = int(state["epoch"]), int(state["cursor"]), int(state["step"])
        self._perm = None

    # -- drawing -------------------------------------------------------------------------------------------------
    def _epoch_perm(self) -> torch.Tensor:
        if self._perm is None:
            self._perm = torch.randperm(self.n_examples, generator=_seeded(self.seed, 1, self.epoch))
        return self._perm

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next (x, y) batch, each ``(B, T)``; advances the position."""
        B = self.batch_size
        if self.mode == "random":
            idx = torch.randint(0, self.n_examples, (B,), generator=_seeded(self.seed, 2, self.step))
        else:
            perm = self._epoch_perm()
            idx = perm[self.cursor * B : (self.cursor + 1) * B]
        self.step += 1
        self.cursor += 1
        if self.cursor >= self.steps_per_epoch:
            self.epoch += 1
            self.cursor = 0
            self._perm = None
        return self.gather(idx)

    @property
    def at_epoch_start(self) -> bool:
        return self.cursor == 0

    def gather(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Examples ``idx`` as (x, y) in one indexing op; padded targets become -100 so the loss skips them."""
        if self.data.dim() == 1:
            chunk = self.data[self.starts[idx, None] + self._offsets[None, :]]  # (B, T+1)
            return chunk[:, :-1], chunk[:, 1:]
        rows = self.data[idx]  # (B, T+1) with -1 padding
        x = rows[:, :-1].clamp_min(0)
        x = torch.where(rows[:, :-1] < 0, torch.full_like(x, self.pad_input), x)
        y = rows[:, 1:].masked_fill(rows[:, 1:] < 0, PAD_TARGET)
        return x, y


def _examples_mode(spec: DataSpec) -> str:
    return "random" if spec.sampling == "random" else "epoch"


def make_batches(prep: Prepared, spec: DataSpec, *, batch_size: int, seed: int) -> Batches:
    pad = prep.tokenizer.bos_id if prep.tokenizer.bos_id is not None else 0
    return Batches(
        torch.from_numpy(np.ascontiguousarray(prep.train)),
        seq_len=spec.seq_len,
        stride=window_stride(spec),
        batch_size=batch_size,
        seed=seed,
        mode=_examples_mode(spec),
        pad_input=pad,
    )


def eval_batches(prep: Prepared, spec: DataSpec, *, split: str, batch_size: int, n_batches: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A fixed set of evaluation batches: examples spread evenly over the split, the same at every evaluation.

    Fixed examples make successive evaluations comparable and draw nothing from any RNG, so evaluating never
    changes the training stream.
    """
    data = prep.train if split == "train" else prep.val
    pad = prep.tokenizer.bos_id if prep.tokenizer.bos_id is not None else 0
    b = Batches(torch.from_numpy(np.ascontiguousarray(data)), seq_len=spec.seq_len, stride=window_stride(spec),
                batch_size=batch_size, seed=0, mode="epoch", pad_input=pad)
    if b.n_examples == 0:
        return []
    idx = torch.from_numpy(spread(b.n_examples, n_batches * batch_size))  # integers: no float index (see spread)
    return [b.gather(chunk) for chunk in idx.split(batch_size)]
