"""The optimizer and the learning-rate schedule a train spec asks for."""

from __future__ import annotations

import math
from typing import Callable

import torch

from harness.spec.schema import TrainSpec

__all__ = ["lr_lambda", "make_optimizer", "make_scheduler"]


def make_optimizer(model: torch.nn.Module, spec: TrainSpec) -> torch.optim.Optimizer:
    """AdamW, Adam or SGD over the trainable parameters. Only matrices decay: biases and norm gains are not
    regularised (common GPT practice)."""
    opt = spec.optimizer
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": opt.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # foreach: one multi-tensor kernel per operation instead of a Python loop over the parameters. torch picks it on
    # CUDA by itself but not on the CPU, where it makes AdamW's step 1.5x faster with bit-identical results.
    # (fused=True would be 4x faster still, but it rounds differently and would move every figure in the README.)
    if opt.name == "adamw":
        return torch.optim.AdamW(groups, lr=opt.lr, betas=opt.betas, eps=opt.eps, foreach=True)
    if opt.name == "adam":
        return torch.optim.Adam(groups, lr=opt.lr, betas=opt.betas, eps=opt.eps, foreach=True)
    return torch.optim.SGD(groups, lr=opt.lr, momentum=opt.momentum, foreach=True)


def lr_lambda(spec: TrainSpec, total_steps: int) -> Callable[[int], float]:
    """Multiplier of the peak lr at each step for the configured schedule."""
    sched = spec.schedule
    floor = sched.min_lr / spec.optimizer.lr
    warm = sched.warmup_steps

    def f(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if sched.name == "constant":
            return 1.0
        progress = min(1.0, (step - warm) / max(1, total_steps - warm))
        if sched.name == "linear":
            return floor + (1.0 - floor) * (1.0 - progress)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


def make_scheduler(optimizer: torch.optim.Optimizer, spec: TrainSpec, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(spec, total_steps))
