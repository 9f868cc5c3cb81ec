"""Which parameters a finetuning run trains: all of them, only the head, or the head and the last k blocks.

Frozen parameters get ``requires_grad = False``, so they get no gradient, the optimizer never holds them (it is
built from the trainable ones), weight decay never touches them, and they stay bit-identical through training.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["freeze", "trainable_count"]


def freeze(model: torch.nn.Module, how: Any) -> None:
    """Apply ``how``: ``"none"``, ``"all_but_head"``, or an object with ``last_n_blocks`` (the head, the final layer
    norm and the last k transformer blocks train)."""
    if how == "none":
        return
    for p in model.parameters():
        p.requires_grad_(False)
    keep: list[torch.nn.Module] = [model.head]  # type: ignore[list-item]
    k = getattr(how, "last_n_blocks", None)
    if k is not None:
        keep.append(model.ln_f)  # type: ignore[arg-type]
        if k > 0:
            keep += list(model.blocks)[-k:]  # type: ignore[arg-type]
    elif how != "all_but_head":
        raise ValueError(f"unknown freezing {how!r}")
    for module in keep:
        for p in module.parameters():
            p.requires_grad_(True)


def trainable_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
