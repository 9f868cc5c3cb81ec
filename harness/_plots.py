"""Matplotlib figures saved as PNG (Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["grad_norm", "loss_curve", "lr_schedule", "objective_vs_param", "overlay"]

Curve = tuple[Sequence[float], Sequence[float]]


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


def loss_curve(curves: Mapping[str, Curve], path: Path, *, title: str = "") -> Path:
    """Train and val loss against step (log y: losses span orders of magnitude early on)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    styles = {"train/loss": dict(alpha=0.45, lw=1), "train/loss_eval": dict(marker=".", lw=1.5), "val/loss": dict(marker=".", lw=1.8)}
    for key in ("train/loss", "train/loss_eval", "val/loss"):
        if key in curves and len(curves[key][0]):
            ax.plot(curves[key][0], curves[key][1], label=key, **styles[key])
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss (nats)")
    _maybe_log(ax, [v for k in ("train/loss", "val/loss") if k in curves for v in curves[k][1]])
    ax.set_title(title or "loss")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def _maybe_log(ax: Any, values: Sequence[float]) -> None:
    finite = [v for v in values if v == v and v not in (float("inf"), float("-inf")) and v > 0]
    if finite and max(finite) / min(finite) > 20:
        ax.set_yscale("log")


def grad_norm(curve: Curve, path: Path, *, clip: float | None, title: str = "") -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(curve[0], curve[1], lw=0.8, label="grad norm (before clipping)")
    if clip is not None:
        ax.axhline(clip, color="tab:red", ls="--", lw=1.2, label=f"clip threshold {clip:g}")
    ax.set_xlabel("step")
    ax.set_ylabel("global gradient L2 norm")
    ax.set_yscale("log")
    ax.set_title(title or "gradient norm")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def lr_schedule(curve: Curve, path: Path, *, title: str = "") -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(curve[0], curve[1], lw=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.set_title(title or "learning-rate schedule")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def overlay(curves: Mapping[str, Curve], path: Path, *, metric: str, title: str = "") -> Path:
    """One line per run (label = run name) for one metric."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.8))
    values: list[float] = []
    for label, (steps, vals) in curves.items():
        if len(steps):
            ax.plot(steps, vals, lw=1.2, label=label)
            values += list(vals)
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    _maybe_log(ax, values)
    ax.set_title(title or metric)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize=8, ncol=1 if len(curves) < 8 else 2)
    return _save(fig, path)


def objective_vs_param(xs: Sequence[Any], ys: Sequence[float], path: Path, *, param: str, objective: str, log_x: bool,
                       labels: Sequence[str] | None = None) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
    pos = list(xs) if numeric else [str(x) for x in xs]
    ax.scatter(pos, ys, s=36)
    if labels:
        for x, y, lab in zip(pos, ys, labels):
            ax.annotate(lab, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if numeric and log_x:
        ax.set_xscale("log")
    ax.set_xlabel(param + (" (log scale)" if numeric and log_x else ""))
    ax.set_ylabel(objective)
    ax.set_title(f"{objective} vs {param}")
    ax.grid(alpha=0.3)
    return _save(fig, path)
