"""Batches for the trainer: vectorized gathers from one array (the token file's memory map), with a resumable position.

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

__all__ = ["PERM_LIMIT", "Batches", "eval_batches", "feistel", "make_batches"]


def _stable_hash(*keys: int) -> int:
    h = 1469598103934665603
    for k in keys:
        h = ((h ^ (int(k) & 0xFFFF_FFFF_FFFF_FFFF)) * 1099511628211) & 0x7FFF_FFFF_FFFF_FFFF
    return h


def _seeded(*keys: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(_stable_hash(*keys))
    return g


# Up to this many windows an epoch's order is torch.randperm's (8 bytes a window, made once per epoch: the order
# every earlier run trained in); past it a Feistel permutation, which holds nothing the size of the corpus.
PERM_LIMIT = 1 << 22


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 (wrapping arithmetic): a cheap, well-mixed round function."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def feistel(i: np.ndarray, n: int, key: int, rounds: int = 6) -> np.ndarray:
    """Positions ``i`` (in ``0..n-1``) of a keyed pseudo-random permutation of ``0..n-1``, computed one position at
    a time: a balanced Feistel network over the smallest even-bit domain that holds n, cycle-walked back into range.

    Why Feistel rather than shuffling blocks of windows: it permutes every window over the whole corpus (no
    neighbouring windows in neighbouring steps), costs O(batch) per batch and nothing per epoch, and any position is
    computed directly, so a checkpoint's (epoch, cursor) is its whole state and a resumed run draws the same windows.
    """
    half = max((int(n - 1).bit_length() + 1) // 2, 1)
    mask = np.uint64((1 << half) - 1)
    keys = [np.uint64(_stable_hash(key, r)) for r in range(rounds)]

    def once(x: np.ndarray) -> np.ndarray:
        left, right = x >> np.uint64(half), x & mask
        for k in keys:
            left, right = right, left ^ (_mix(right ^ k) & mask)
        return (left << np.uint64(half)) | right

    out = once(np.asarray(i, dtype=np.uint64))
    bad = out >= np.uint64(n)
    while bad.any():  # the domain is under 4n, so a few walks at most
        out[bad] = once(out[bad])
        bad = out >= np.uint64(n)
    return out.astype(np.int64)


class Batches:
    """Training batches in one of two layouts.

    * stream: ``data`` is 1-D (a view of the token file's memory map, or any array); example i is
      ``data[i * stride : i * stride + T + 1]``, gathered for a batch alone, so nothing corpus-sized is ever made.
    * rows: ``data`` is 2-D ``(N, T + 1)`` with -1 padding; example i is row i.

    ``mode`` is ``epoch`` (each example once per epoch, shuffled, drop_last) or ``random`` (independent draws).
    """

    def __init__(self, data: np.ndarray | torch.Tensor, *, seq_len: int, stride: int, batch_size: int, seed: int, mode: str, pad_input: int = 0):
        self.data = data.numpy() if isinstance(data, torch.Tensor) else data
        self.seq_len = seq_len
        self.stride = stride
        self.batch_size = batch_size
        self.seed = seed
        self.mode = mode
        self.pad_input = pad_input
        if self.data.ndim == 1:
            n = count_windows(len(self.data), seq_len, stride)
            self._offsets = np.arange(seq_len + 1, dtype=np.int64)
        else:
            n = self.data.shape[0]
        self.n_examples = n
        self.steps_per_epoch = max(n // batch_size, 1) if mode == "random" else n // batch_size
        self.epoch = 0
        self.cursor = 0  # batches already drawn in this epoch
        self.step = 0  # batches drawn in total
        self._perm: torch.Tensor | None = None

    @property
    def starts(self) -> torch.Tensor:
        """Where each example starts (stream) or its row (rows): for inspection; the sampler never builds it."""
        return torch.arange(self.n_examples, dtype=torch.long) * (self.stride if self.data.ndim == 1 else 1)

    # -- position ------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "cursor": self.cursor, "step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.cursor, self.step = int(state["epoch"]), int(state["cursor"]), int(state["step"])
        self._perm = None

    # -- drawing -------------------------------------------------------------------------------------------------
    def _epoch_indices(self, a: int, b: int) -> torch.Tensor:
        """Positions a..b-1 of this epoch's order."""
        if self.n_examples > PERM_LIMIT:
            key = _stable_hash(self.seed, 1, self.epoch)
            return torch.from_numpy(feistel(np.arange(a, b, dtype=np.int64), self.n_examples, key))
        if self._perm is None:
            self._perm = torch.randperm(self.n_examples, generator=_seeded(self.seed, 1, self.epoch))
        return self._perm[a:b]

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next (x, y) batch, each ``(B, T)``; advances the position."""
        B = self.batch_size
        if self.mode == "random":
            idx = torch.randint(0, self.n_examples, (B,), generator=_seeded(self.seed, 2, self.step))
        else:
            idx = self._epoch_indices(self.cursor * B, (self.cursor + 1) * B)
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

    def gather(self, idx: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Examples ``idx`` as int64 (x, y) in one indexing op (only their pages of a memory map are read); padded
        targets become -100 so the loss skips them."""
        i = idx.numpy() if isinstance(idx, torch.Tensor) else np.asarray(idx)
        if self.data.ndim == 1:
            chunk = torch.from_numpy(self.data[(i.astype(np.int64) * self.stride)[:, None] + self._offsets[None, :]].astype(np.int64))
            return chunk[:, :-1], chunk[:, 1:]
        rows = torch.from_numpy(np.asarray(self.data[i], dtype=np.int64))  # (B, T+1) with -1 padding
        x = rows[:, :-1].clamp_min(0)
        x = torch.where(rows[:, :-1] < 0, torch.full_like(x, self.pad_input), x)
        y = rows[:, 1:].masked_fill(rows[:, 1:] < 0, PAD_TARGET)
        return x, y


def _examples_mode(spec: DataSpec) -> str:
    return "random" if spec.sampling == "random" else "epoch"


def make_batches(prep: Prepared, spec: DataSpec, *, batch_size: int, seed: int) -> Batches:
    pad = prep.tokenizer.bos_id if prep.tokenizer.bos_id is not None else 0
    return Batches(
        prep.train,
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
    b = Batches(data, seq_len=spec.seq_len, stride=window_stride(spec),
                batch_size=batch_size, seed=0, mode="epoch", pad_input=pad)
    if b.n_examples == 0:
        return []
    idx = torch.from_numpy(spread(b.n_examples, n_batches * batch_size))  # integers: no float index (see spread)
    return [b.gather(chunk) for chunk in idx.split(batch_size)]
