"""Runs and metric histories as pandas DataFrames, and their export to CSV or parquet."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.errors import HarnessError, UsageError
from harness.results.metrics import BEST_KEYS, best_by_run, load_metrics, metric_order
from harness.results.store import experiment_names, get_run, open_store, select_runs
from harness.tracking.lookup import resolve_run_id
from harness.results.values import changed_params, parse_value, schema_hint, swept_params, typed_series

__all__ = ["INFO_COLUMNS", "Selector", "export", "history", "objective_order", "params_of", "runs", "runs_frame"]

Selector = str | Sequence[str]

INFO_COLUMNS = ["run_id", "run_name", "experiment", "status", "stop_reason", "role", "study", "study_id", "trial", "config_id", "config",
                "repeat", "seed", "parent_run_id", "init_from", "start_time", "end_time", "wall_time_s", "steps"]


def runs(selector: Selector, *, uri: str | None = None, include_parents: bool = False, best: bool = True,
         init_from: str | None = None) -> Any:
    """One row per run, oldest first.

    Columns: ``run_id, run_name, experiment, status, stop_reason, role, study, study_id (the study instance: a study
    started over with --fresh gets a new one), trial (Int64), config_id, config,
    repeat, seed (Int64; a repeated sweep's seed runs: their configuration's id and values, their index and seed), parent_run_id,
    init_from (the run a finetuned run started from), start_time, end_time (UTC datetimes), wall_time_s,
    steps (Int64)``; then each metric's final value under its own
    key (``val/loss``, ``train/loss``, ``summary/best_val_loss``, ...); with ``best``, ``best/<key>`` and
    ``best_step/<key>`` for the evaluation losses (minimum over the history); then every param under its dotted path
    (``train.optimizer.lr``, ``derived.n_parameters``, ...) with its real dtype: Int64, float64, boolean, or object
    for strings and lists; a param that is None in every run takes its type from the spec schema (e.g.
    ``train.epochs`` is an all-<NA> Int64 column for step-limited runs).

    Sweep parent runs (no training metrics) are left out unless ``include_parents``. ``init_from`` (a run id or a
    unique prefix) keeps only the runs finetuned from that run.
    """
    client, uri = open_store(uri)
    selected = select_runs(client, selector, uri=uri, include_parents=include_parents)
    if init_from is not None:
        source = resolve_run_id(client, init_from, uri=uri) or init_from
        selected = [r for r in selected if r.data.tags.get("harness.init_from") == source]
    return runs_frame(client, selected, best=best)


def runs_frame(client: Any, selected: Sequence[Any], *, best: bool = True) -> Any:
    import pandas as pd

    exp_names = experiment_names(client, selected)
    ids = [r.info.run_id for r in selected]
    info: dict[str, list[Any]] = {c: [] for c in INFO_COLUMNS}
    for r in selected:
        tags, m = r.data.tags, r.data.metrics
        trial = tags.get("harness.trial")
        wall = m.get("summary/wall_time_s")
        if wall is None and r.info.end_time and r.info.start_time:
            wall = (r.info.end_time - r.info.start_time) / 1000.0
        steps = m.get("summary/steps", tags.get("harness.steps"))
        row = {
            "run_id": r.info.run_id,
            "run_name": r.info.run_name,
            "experiment": exp_names.get(r.info.experiment_id, r.info.experiment_id),
            "status": r.info.status,
            "stop_reason": tags.get("stop_reason"),
            "role": tags.get("harness.role"),
            "study": tags.get("harness.study"),
            "study_id": tags.get("harness.study_id"),
            "trial": _int(trial),
            "config_id": tags.get("harness.config_id"),
            "config": tags.get("harness.config"),
            "repeat": _int(tags.get("harness.repeat")),
            "seed": _int(tags.get("harness.seed")),
            "parent_run_id": tags.get("mlflow.parentRunId"),
            "init_from": tags.get("harness.init_from"),
            "start_time": r.info.start_time,
            "end_time": r.info.end_time,
            "wall_time_s": wall,
            "steps": int(float(steps)) if steps is not None else None,
        }
        for c in INFO_COLUMNS:
            info[c].append(row[c])
    cols: dict[str, Any] = {}
    for c in ("run_id", "run_name", "experiment", "status", "stop_reason", "role", "study", "study_id", "config_id", "config", "parent_run_id", "init_from"):
        cols[c] = pd.Series(info[c], dtype=object)
    for c in ("trial", "repeat", "seed"):
        cols[c] = pd.Series(info[c], dtype="Int64")
    cols = {c: cols[c] for c in INFO_COLUMNS if c in cols}
    for c in ("start_time", "end_time"):
        cols[c] = pd.to_datetime(pd.Series([v if v else None for v in info[c]], dtype="float64"), unit="ms", utc=True)
    cols["wall_time_s"] = pd.Series([math.nan if v is None else float(v) for v in info["wall_time_s"]], dtype="float64")
    cols["steps"] = pd.Series(info["steps"], dtype="Int64")
    for key in metric_order({k for r in selected for k in r.data.metrics}):
        cols[key] = pd.Series([r.data.metrics.get(key, math.nan) for r in selected], dtype="float64")
    if best:
        keys = [k for k in BEST_KEYS if any(k in r.data.metrics for r in selected)]
        if keys:
            found = best_by_run(load_metrics(client, ids, keys))
            for k in keys:
                cols[f"best/{k}"] = pd.Series([found.get((i, k), (math.nan, None))[0] for i in ids], dtype="float64")
                cols[f"best_step/{k}"] = pd.Series([found.get((i, k), (math.nan, None))[1] for i in ids], dtype="Int64")
    parsed = [{k: parse_value(v) for k, v in r.data.params.items()} for r in selected]
    for key in _param_order(parsed):
        if key in cols:
            continue
        cols[key] = typed_series([p.get(key) for p in parsed], hint=schema_hint(key))
    df = pd.DataFrame(cols)
    df.attrs["params"] = [k for k in _param_order(parsed) if k in df.columns]
    df.attrs["objective"] = _sweep_objective(client, selected)
    return df


def _int(v: Any) -> int | None:
    return int(v) if v is not None and str(v).lstrip("-").isdigit() else None


def _sweep_objective(client: Any, selected: Sequence[Any]) -> tuple[str, str, str] | None:
    """(metric, direction, summary) of the sweep these runs are trials of, when they come from one sweep."""
    parents = {r.data.tags.get("mlflow.parentRunId") for r in selected if r.data.tags.get("harness.role") == "trial"}
    if len(parents) != 1:
        return None
    parent = get_run(client, parents.pop())  # type: ignore[arg-type]
    if parent is None:
        return None
    params = parent.data.params
    return (params.get("sweep.objective.metric", "val/loss"), params.get("sweep.objective.direction", "minimize"),
            params.get("sweep.objective.summary", "best"))


def objective_order(df: Any) -> tuple[str, bool] | None:
    """(column, ascending) that ranks a :func:`runs` frame of one sweep's trials by the sweep's objective: the best
    value of its metric, in its direction. None for runs that are not one sweep's trials."""
    objective = df.attrs.get("objective")
    if not objective:
        return None
    metric, direction, summary = objective
    # best/ is the best in the metric's own sense; a sweep scored by the last value ranks by the final one
    column = f"best/{metric}" if summary == "best" and f"best/{metric}" in df.columns else metric
    return (column, direction == "minimize") if column in df.columns else None


def _param_order(parsed: Sequence[dict[str, Any]]) -> list[str]:
    keys: list[str] = []
    seen: set[str] = set()
    for p in parsed:
        for k in p:
            if k not in seen:
                seen.add(k)
                keys.append(k)
    first = [k for k in keys if not k.startswith(("derived.", "sweep."))]
    return sorted(first) + sorted(k for k in keys if k.startswith("derived.")) + sorted(k for k in keys if k.startswith("sweep."))


def params_of(df: Any) -> list[str]:
    """The param columns of a :func:`runs` frame."""
    return list(df.attrs.get("params", []))


def history(selector: Selector, metrics: str | Sequence[str] | None = None, *, params: str | Sequence[str] | None = "changed",
            uri: str | None = None, bulk: bool = True) -> Any:
    """Every logged point of ``metrics`` (default: all per-step and eval metrics, not ``summary/*``) for the selected
    runs, in long form: ``run_id, run_name, metric, step, value, timestamp`` (epoch ms) plus param columns.

    ``params="changed"`` adds the params that differ between the runs (and a sweep's swept params), typed as in
    :func:`runs`; a list adds those params; None adds none. On a SQL store the points come from one query per batch of
    500 runs; ``bulk=False`` forces the per-run, per-metric ``get_metric_history`` path (for comparison).
    """
    import pandas as pd

    client, uri = open_store(uri)
    selected = select_runs(client, selector, uri=uri)
    available = {k for r in selected for k in r.data.metrics}
    if metrics is None:
        keys = [k for k in metric_order(available) if not k.startswith("summary/")]
    else:
        keys = [metrics] if isinstance(metrics, str) else list(metrics)
        missing = [k for k in keys if k not in available]
        if missing and len(missing) == len(keys):
            raise UsageError(f"no selected run logged {', '.join(missing)}; metrics there: {', '.join(metric_order(available))}")
    ids = [r.info.run_id for r in selected]
    hist = load_metrics(client, ids, keys, bulk=bulk)
    names = {r.info.run_id: r.info.run_name for r in selected}
    hist.insert(1, "run_name", hist["run_id"].map(names))
    if params is None or (not isinstance(params, str) and not params):
        return hist
    parsed = {r.info.run_id: {k: parse_value(v) for k, v in r.data.params.items()} for r in selected}
    if isinstance(params, str):
        if params != "changed":
            raise UsageError(f"params must be 'changed', a list of param names, or None (got {params!r})")
        chosen = changed_params(list(parsed.values()), swept_params(client, selected))
    else:
        chosen = list(params)
    if not chosen:
        return hist
    table = pd.DataFrame({"run_id": pd.Series(ids, dtype=object)})
    for k in chosen:
        table[k] = typed_series([parsed[i].get(k) for i in ids], hint=schema_hint(k))
    return hist.merge(table, on="run_id", how="left")


def export(df: Any, path: str | Path) -> Path:
    """Write a results frame to ``.csv`` or ``.parquet`` (lists, dicts and mixed columns become JSON text in parquet)."""
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    df = _redacted(df)
    if path.suffix.lower() == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise HarnessError('writing parquet needs pyarrow; install it with: pip install "pyarrow>=14"') from None
        _for_parquet(df).to_parquet(path, index=False)
    elif path.suffix.lower() in (".csv", ".txt", ""):
        df.to_csv(path, index=False)
    else:
        raise UsageError(f"{path}: export as .csv or .parquet")
    return path


def _redacted(df: Any) -> Any:
    """``df`` with every text cell redacted (a trial's fail_reason, a configuration's note quote error messages, which
    may name a URL with its password): an export is a file in the project folder, shared and committed."""
    from harness.tracking.redact import redact_value

    text = [c for c in df.columns if df[c].dtype == object]
    if not text:
        return df
    out = df.copy()
    for c in text:
        out[c] = [redact_value(v) for v in out[c]]
    return out


def _for_parquet(df: Any) -> Any:
    import json

    out = df.copy()
    for c in out.columns:
        if out[c].dtype != object:
            continue
        vals = [v for v in out[c] if v is not None]
        if all(isinstance(v, str) for v in vals):
            continue
        out[c] = [None if v is None else json.dumps(v, default=str) for v in out[c]]
    return out
