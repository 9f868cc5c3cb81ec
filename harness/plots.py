"""The figures: each function draws one matplotlib figure and returns it (Agg backend: no display needed).

Callers save it (:func:`save`) or upload it to a run (``MlflowTracker.log_figure``). This module imports nothing
from harness.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["confusion_matrix", "grad_norm", "loss_curve", "lr_schedule", "objective_panels", "objective_vs_param", "overlay", "overlay_panels", "save"]

Curve = tuple[Sequence[float], Sequence[float]]


def _figure(*args: Any, figsize: tuple[float, float], **kwargs: Any) -> tuple[Any, Any]:
    """(figure, axes) drawn off-screen. A plain ``Figure`` needs no pyplot and no backend switch, so drawing here
    never changes a notebook's or an application's matplotlib backend, and nothing has to be closed."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*args, **kwargs)


def save(fig: Any, path: str | Path) -> Path:
    """Write ``fig`` as a PNG (creating the folder) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def _done(fig: Any) -> Any:
    fig.tight_layout()
    return fig


def loss_curve(curves: Mapping[str, Curve], *, title: str = "") -> Any:
    """Train and val loss against step (log y: losses span orders of magnitude early on)."""
    fig, ax = _figure(figsize=(7, 4.2))
    styles: dict[str, dict[str, Any]] = {"train/loss": dict(alpha=0.45, lw=1), "train/loss_eval": dict(marker=".", lw=1.5),
                                         "val/loss": dict(marker=".", lw=1.8)}
    for key in ("train/loss", "train/loss_eval", "val/loss"):
        if key in curves and len(curves[key][0]):
            ax.plot(curves[key][0], curves[key][1], label=key, **styles[key])
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss (nats)")
    _maybe_log(ax, [v for k in ("train/loss", "val/loss") if k in curves for v in curves[k][1]])
    ax.set_title(title or "loss")
    ax.grid(alpha=0.3)
    ax.legend()
    return _done(fig)


def _maybe_log(ax: Any, values: Sequence[float]) -> None:
    finite = [v for v in values if v == v and v not in (float("inf"), float("-inf")) and v > 0]
    if finite and max(finite) / min(finite) > 20:
        ax.set_yscale("log")


def grad_norm(curve: Curve, *, clip: float | None, title: str = "") -> Any:
    fig, ax = _figure(figsize=(7, 4.2))
    ax.plot(curve[0], curve[1], lw=0.8, label="grad norm (before clipping)")
    if clip is not None:
        ax.axhline(clip, color="tab:red", ls="--", lw=1.2, label=f"clip threshold {clip:g}")
    ax.set_xlabel("step")
    ax.set_ylabel("global gradient L2 norm")
    ax.set_yscale("log")
    ax.set_title(title or "gradient norm")
    ax.grid(alpha=0.3)
    ax.legend()
    return _done(fig)


def lr_schedule(curve: Curve, *, title: str = "") -> Any:
    fig, ax = _figure(figsize=(7, 3.5))
    ax.plot(curve[0], curve[1], lw=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.set_title(title or "learning-rate schedule")
    ax.grid(alpha=0.3)
    return _done(fig)


def overlay(curves: Mapping[str, Curve], *, metric: str, title: str = "",
            bands: Mapping[str, tuple[Sequence[float], Sequence[float], Sequence[float]]] | None = None) -> Any:
    """One line per run (label = run name) for one metric; with ``bands`` (label -> steps, low, high), a shaded
    interval around the line of the same label (a configuration's mean over its seeds)."""
    fig, ax = _figure(figsize=(8, 4.8))
    values: list[float] = []
    for label, (steps, vals) in curves.items():
        if len(steps):
            (line,) = ax.plot(steps, vals, lw=1.2, label=label)
            values += list(vals)
            if bands and label in bands:
                bs, lo, hi = bands[label]
                ax.fill_between(bs, lo, hi, color=line.get_color(), alpha=0.2, lw=0)
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    _maybe_log(ax, values)
    ax.set_title(title or metric)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize=8, ncol=1 if len(curves) < 8 else 2)
    return _done(fig)


def objective_vs_param(xs: Sequence[Any], ys: Sequence[float], *, param: str, objective: str, log_x: bool,
                       labels: Sequence[str] | None = None) -> Any:
    fig, ax = _figure(figsize=(6, 4.2))
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
    return _done(fig)


def overlay_panels(panels: Mapping[str, Mapping[str, Curve]], *, title: str = "") -> Any:
    """One panel per metric (``panels[metric][run label] = (steps, values)``), one line per run, the same colour for a
    run in every panel and one shared legend of run names."""
    keys = [k for k in panels if any(len(c[0]) for c in panels[k].values())] or list(panels)[:1]
    n = max(len(keys), 1)
    fig, axes = _figure(1, n, figsize=(6.2 * n, 4.4), squeeze=False)
    labels: list[str] = []
    for k in keys:
        labels += [lab for lab in panels[k] if lab not in labels]
    colours = {lab: f"C{i % 10}" for i, lab in enumerate(labels)}
    handles: dict[str, Any] = {}
    for ax, key in zip(axes[0], keys):
        values: list[float] = []
        for label, (steps, vals) in panels[key].items():
            if len(steps):
                marker = "." if len(steps) <= 30 else None
                (line,) = ax.plot(steps, vals, lw=1.2, marker=marker, color=colours[label], label=label)
                handles.setdefault(label, line)
                values += list(vals)
        ax.set_xlabel("step")
        ax.set_ylabel(key + (" (nats)" if "loss" in key else ""))
        _maybe_log(ax, values)
        ax.set_title(key)
        ax.grid(alpha=0.3)
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(len(handles), 4), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title)
    rows = (len(handles) + 3) // 4
    fig.tight_layout(rect=(0, min(0.06 * rows + 0.02, 0.4), 1, 1))
    return fig


def objective_panels(points: Mapping[str, Sequence[Any]], ys: Sequence[float], *, objective: str,
                     log_x: Mapping[str, bool] | None = None, labels: Sequence[str] | None = None) -> Any:
    """A sweep's objective against each swept param: one panel per param (``points[param]`` are the x values, in the
    order of ``ys``), a log x axis where ``log_x[param]``, each point labelled (e.g. with its trial number)."""
    params = list(points)
    n = max(len(params), 1)
    fig, axes = _figure(1, n, figsize=(5.2 * n, 4.2), squeeze=False, sharey=True)
    for ax, param in zip(axes[0], params):
        xs = list(points[param])
        numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
        pos = xs if numeric else [str(x) for x in xs]
        ax.scatter(pos, ys, s=36)
        if labels:
            for x, y, lab in zip(pos, ys, labels):
                ax.annotate(lab, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        log = bool(numeric and (log_x or {}).get(param))
        if log:
            ax.set_xscale("log")
        ax.set_xlabel(param + (" (log scale)" if log else ""))
        ax.set_title(f"{objective} vs {param}", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(objective)
    _maybe_log(axes[0][0], list(ys))
    return _done(fig)


def confusion_matrix(counts: Sequence[Sequence[int]], labels: Sequence[str], *, title: str = "") -> Any:
    """Rows: the true label; columns: the predicted one; each cell its count, shaded by its share of the row."""
    n = len(labels)
    fig, ax = _figure(figsize=(1.2 * n + 2.5, 1.0 * n + 2.0))
    totals = [max(sum(row), 1) for row in counts]
    shares = [[c / t for c in row] for row, t in zip(counts, totals)]
    ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(counts[i][j]), ha="center", va="center", color="white" if shares[i][j] > 0.5 else "black")
    ax.set_xticks(range(n), labels, rotation=30, ha="right")
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix")
    return _done(fig)
