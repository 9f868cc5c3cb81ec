"""The training objective: cross-entropy over the graded targets."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from harness.data.prepare import PAD_TARGET

__all__ = ["cross_entropy"]


def cross_entropy(logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """The loss over the graded targets: (B, T, V) against (B, T), flattened to (B*T, V); PAD_TARGET (-100) targets
    (padding, an instruction's prompt) do not count. Computed in fp32 even under bf16 autocast, where a log-softmax
    loses too much."""
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1), ignore_index=PAD_TARGET, reduction=reduction)
