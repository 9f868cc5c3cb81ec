"""The optimizer and the learning-rate schedule a train spec asks for."""

from __future__ import annotations

import math
from typing import Callable

import torch

from harness.spec.schema import TrainSpec

__all__ = ["lr_lambda", "make_optimizer", "make_scheduler", "resolve_implementation"]


def make_optimizer(model: torch.nn.Module, spec: TrainSpec) -> torch.optim.Optimizer:
    """AdamW, Adam or SGD over the trainable parameters, on the device the model is on. Only matrices decay: biases
    and norm gains are not regularised (common GPT practice)."""
    opt = spec.optimizer
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": opt.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    kernels = _kernels(opt.implementation, next(model.parameters()).device)
    if opt.name == "adamw":
        return torch.optim.AdamW(groups, lr=opt.lr, betas=opt.betas, eps=opt.eps, **kernels)
    if opt.name == "adam":
        return torch.optim.Adam(groups, lr=opt.lr, betas=opt.betas, eps=opt.eps, **kernels)
    return torch.optim.SGD(groups, lr=opt.lr, momentum=opt.momentum, **kernels)


def resolve_implementation(name: str, device: torch.device) -> str:
    """What ``optimizer.implementation`` means on ``device``: ``auto`` is fused on CUDA, foreach elsewhere."""
    if name != "auto":
        return name
    return "fused" if device.type == "cuda" else "foreach"


def _kernels(name: str, device: torch.device) -> dict[str, bool]:
    # foreach: one multi-tensor kernel per operation instead of a Python loop over the parameters. torch picks it on
    # CUDA by itself but not on the CPU, where it makes AdamW's step faster with bit-identical results.
    # fused: the whole update in one kernel per parameter group, faster again on the CPU, but it rounds differently,
    # which moves the last printed digits of the README's figures, all measured with foreach (the figures: README's
    # Performance section, bench/). On CUDA it is the fast path nanoGPT uses, hence auto.
    if resolve_implementation(name, device) == "fused":
        return {"fused": True}
    return {"foreach": True}


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
