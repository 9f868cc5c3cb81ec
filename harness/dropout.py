"""Dropout on the CPU from one NumPy random stream per model, instead of ``F.dropout``.

``F.dropout`` on the CPU draws 64 random bits per element, one locked mt19937 call per element; in the chapter's
small model that made dropout a large share of each training step (bench/RESULTS.md, section 2). :class:`MaskStream`
draws each mask from bulk random bytes with the exact drop probability, and :class:`Dropout` applies it. A model
owns one stream and every checkpoint carries its state, so a resumed run draws the masks an uninterrupted one draws.
On other devices torch's own (fused) dropout is used.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["Dropout", "MaskStream"]

_MASK_56 = (1 << 56) - 1


class MaskStream:
    """The random stream behind every dropout mask of one model: a NumPy PCG64 generator, separate from torch's.

    A mask element is dropped when a uniform 64-bit integer ``r`` is below ``T = floor(p * 2**64)``, so the drop
    probability is ``T / 2**64``: exactly ``p`` for every double ``p >= 2**-11``, and within ``2**-64`` below that.
    Only the top byte of ``r`` is drawn for every element; it decides alone unless it equals the top byte of ``T``
    (probability 1/256), and only those elements draw the remaining 56 bits. That is 8.2 random bits per element on
    average, against torch's 64, and every pass over the mask runs on bytes or vectorised floats.
    """

    def __init__(self, seed: int = 0):
        self.seed(seed)

    def seed(self, seed: int) -> None:
        self.rng = np.random.Generator(np.random.PCG64(seed))

    def state_dict(self) -> dict[str, Any]:
        return dict(self.rng.bit_generator.state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state

    def drop_threshold(self, p: float) -> int:
        """``floor(p * 2**64)``: a draw below it is dropped. ``p * 2**64`` is exact in floating point (a power of two)."""
        return min(int(p * 2.0**64), 2**64 - 1)

    def keep(self, shape: tuple[int, ...] | torch.Size, p: float) -> torch.Tensor:
        """A float32 CPU tensor of ``shape`` holding 0 where an element is dropped and 1 where it is kept."""
        n = math.prod(shape)
        t = self.drop_threshold(p)
        t_hi, t_lo = t >> 56, t & _MASK_56
        # one random byte per element: whole 64-bit words from the generator, viewed as bytes (one draw per 8 elements)
        top = self.rng.bit_generator.random_raw((n + 7) // 8).view(np.uint8)
        kept = top > t_hi  # decided by the top byte alone, except where it equals T's top byte
        ties = _ties(top, t_hi, n)
        if ties.size:  # ties: the low 56 bits decide, drawn for those elements only, in order
            low = self.rng.bit_generator.random_raw(ties.size) & np.uint64(_MASK_56)
            kept[ties[low >= np.uint64(t_lo)]] = True
        # through uint8, not bool: torch converts uint8 to float32 with vectorised code, bool element by element
        return torch.from_numpy(kept[:n].view(np.uint8)).to(torch.float32).view(shape)

    def scaled_keep(self, shape: tuple[int, ...] | torch.Size, p: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """A CPU tensor of ``shape`` holding 0 where an element is dropped and ``1 / (1 - p)`` where it is kept."""
        return self.keep(shape, p).mul_(1.0 / (1.0 - p)).to(dtype)


def _ties(top: np.ndarray, t_hi: int, n: int) -> np.ndarray:
    """Ascending positions below ``n`` where the byte array ``top`` (whole 8-byte words) equals ``t_hi``.

    About one byte in 256 ties, so about one word in 32 holds one: finding those words first (8 flags read as one
    word) and then the bytes inside them scans 8x fewer elements than np.flatnonzero over every byte."""
    eq = top == t_hi
    words = np.flatnonzero(eq.view(np.uint64) != 0)
    inside = np.flatnonzero(eq.reshape(-1, 8)[words])  # row-major over (word, byte): ascending positions
    ties = words[inside >> 3] * 8 + (inside & 7)
    return ties[: np.searchsorted(ties, n)]


class Dropout(nn.Module):
    """Dropout with the model's :class:`MaskStream` on CPU (torch's elsewhere). Identity in eval mode or at p = 0."""

    def __init__(self, p: float, stream: MaskStream):
        super().__init__()
        self.p = p
        self.stream = stream

    @property
    def active(self) -> bool:
        return self.training and self.p > 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        return x * self.stream.scaled_keep(x.shape, self.p, x.dtype)

    def residual(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """``x + dropout(h)``, in one op on CPU (x + h * mask): one pass over the activations instead of two."""
        if not self.active or h.device.type != "cpu":
            return x + self(h)
        return torch.addcmul(x, h, self.stream.scaled_keep(h.shape, self.p, h.dtype))

    def extra_repr(self) -> str:
        return f"p={self.p}"
