"""Figures on demand from stored runs: one run's loss, gradient norm or lr curve; an overlay of many runs; a sweep's
objective against each swept param."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.errors import UsageError
from harness.results.compare import fmt_selector, curve_labels, plain, run_labels
from harness.results.frames import Selector, params_of, runs_frame
from harness.results.metrics import load_metrics
from harness.results.store import get_run, open_store, select_runs
from harness.results.values import changed_params, parse_value, sweep_space, swept_params

__all__ = ["PLOT_KINDS", "plot"]


PLOT_KINDS = ("loss", "grad_norm", "lr", "overlay", "objective")


def plot(selector: Selector, kind: str = "loss", *, out: str | Path | None = None, metric: str | None = None,
         uri: str | None = None) -> Path:
    """Draw one figure and return its path (default ``<kind>.png``).

    * ``loss``: train and val loss of one run; ``grad_norm``: gradient norm with the clip threshold; ``lr``: the LR
      schedule (all three for one run);
    * ``overlay``: one curve per selected run for ``metric`` (default ``val/loss``);
    * ``objective``: a sweep's objective against each swept param (one panel per param).
    """
    from harness import plots

    if kind not in PLOT_KINDS:
        raise UsageError(f"unknown plot kind '{kind}'; choose one of {', '.join(PLOT_KINDS)}")
    path = Path(out) if out is not None else Path(f"{kind}.png")
    client, uri = open_store(uri)
    selected = select_runs(client, selector, uri=uri)
    if kind in ("loss", "grad_norm", "lr"):
        if len(selected) != 1:
            raise UsageError(f"--kind {kind} draws one run, and {fmt_selector(selector)} selects {len(selected)}; pass one run id, "
                             "or use --kind overlay")
        run = selected[0]
        rid = run.info.run_id
        title = f"{run.info.run_name} ({rid[:8]})"
        keys = {"loss": ["train/loss", "train/loss_eval", "val/loss"], "grad_norm": ["grad_norm"], "lr": ["lr"]}[kind]
        hist = load_metrics(client, [rid], keys)
        curves = {k: (g["step"].tolist(), g["value"].tolist()) for k, g in hist.groupby("metric", sort=False)}
        if not curves:
            raise UsageError(f"run {rid} has no {' or '.join(keys)} history to plot")
        if kind == "loss":
            return plots.save(plots.loss_curve(curves, title=title), path)
        if kind == "grad_norm":
            clip = parse_value(run.data.params.get("train.clip_grad_norm"))
            return plots.save(plots.grad_norm(curves["grad_norm"], clip=clip if isinstance(clip, (int, float)) else None, title=title), path)
        return plots.save(plots.lr_schedule(curves["lr"], title=title), path)
    df = runs_frame(client, selected)
    labels = run_labels(df)
    if kind == "overlay":
        key = metric or "val/loss"
        hist = load_metrics(client, list(df["run_id"]), [key])
        if hist.empty:
            raise UsageError(f"no selected run logged {key}")
        if df["config_id"].notna().any():
            return plots.save(_config_bands(df, hist, key, title=f"{fmt_selector(selector)}: {key}, mean and 95 % interval over seeds"), path)
        changed = swept_params(client, selected) or changed_params([{k: plain(df.at[i, k]) for k in params_of(df)} for i in df.index])
        labels = curve_labels(df, labels, changed)
        curves = {}
        for rid, lab in zip(df["run_id"], labels):
            h = hist[hist["run_id"] == rid]
            curves[lab] = (h["step"].tolist(), h["value"].tolist())
        return plots.save(plots.overlay(curves, metric=key, title=f"{fmt_selector(selector)}: {key} per run"), path)
    # objective
    parent = next((get_run(client, p) for p in df["parent_run_id"].dropna().unique()), None)
    objective = metric or (parent.data.params.get("sweep.objective.metric") if parent else None) or "val/loss"
    summary = (parent.data.params.get("sweep.objective.summary") if parent else None) or "best"
    col = f"best/{objective}" if summary == "best" and f"best/{objective}" in df else objective
    if col not in df:
        raise UsageError(f"no selected run logged {objective}")
    swept = swept_params(client, selected) or changed_params([{k: plain(df.at[i, k]) for k in params_of(df)} for i in df.index])
    if not swept:
        raise UsageError("these runs share all their params; there is nothing to plot the objective against")
    rows = [i for i in range(len(df)) if not math.isnan(float(df[col].iloc[i]))]
    if not rows:
        raise UsageError(f"no selected run has a finite {col}")
    points = {p: [plain(df[p].iloc[i]) for i in rows] for p in swept if p in df}
    log_x = {p: _log_param(parent, p, xs) for p, xs in points.items()}
    trials = [plain(df["trial"].iloc[i]) for i in rows]
    labs = [f"t{t}" if t is not None else labels[i] for t, i in zip(trials, rows)]
    ys = [float(df[col].iloc[i]) for i in rows]
    return plots.save(plots.objective_panels(points, ys, objective=f"{summary} {objective}", log_x=log_x, labels=labs), path)


def _config_bands(df: Any, hist: Any, key: str, *, title: str) -> Any:
    """Repeated seeds: one line per configuration (the mean over its seed runs at each step) and its 95 % t band; runs
    without repeats keep a line of their own."""
    from harness import plots
    from harness.stats import band

    curves: dict[str, Any] = {}
    bands: dict[str, Any] = {}
    groups: dict[str, list[Any]] = {}
    names: dict[str, str] = {}
    for _, row in df.iterrows():
        h = hist[hist["run_id"] == row["run_id"]]
        curve = (h["step"].tolist(), h["value"].tolist())
        if isinstance(row["config_id"], str):
            k = f"{row['study']}/{row['config_id']}"
            groups.setdefault(k, []).append(curve)
            names[k] = f"{row['config_id']}: {row['config']}" if df["study"].nunique() <= 1 else f"{row['study']} {row['config_id']}: {row['config']}"
        else:
            curves[str(row["run_name"])] = curve
    for k, runs in groups.items():
        steps, mean, low, high = band(runs)
        label = f"{names[k]} (n={len(runs)})"
        curves[label] = (steps, mean) if steps else runs[0]
        if steps:
            bands[label] = (steps, low, high)
    return plots.overlay(curves, metric=key, title=title, bands=bands)


def _log_param(parent: Any, path: str, xs: Sequence[Any]) -> bool:
    if parent is not None and sweep_space(parent).get(path, {}).get("log"):
        return True
    nums = [x for x in xs if isinstance(x, (int, float)) and not isinstance(x, bool)]
    return bool(nums) and min(nums) > 0 and max(nums) / min(nums) >= 100
