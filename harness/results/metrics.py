"""Metric histories of many runs as one long DataFrame.

MLflow's client has no call that returns many runs' histories at once (mlflow/mlflow#7365), and
``MlflowClient.get_metric_history`` is one query (or HTTP request) per run per metric. On a SQL tracking store
(SQLite, PostgreSQL, MySQL) we read MLflow's ``metrics`` table directly: one SELECT per batch of runs, built from
MLflow's own ORM table (``SqlMetric.__table__``) and run on our own engine for the tracking URI. That is the one place
harness reads MLflow's schema rather than its API (measured in bench/bench_history.py: about 15x faster). Any other
store (an ``http://`` server, a file store) uses ``get_metric_history``.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable, Sequence
from typing import Any

from harness.tracking import parse_store_url

__all__ = ["BEST_KEYS", "HIGHER_IS_BETTER", "best_by_run", "load_metrics", "metric_order"]

SQL_BATCH = 500  # run ids per SELECT (well under SQLite's bound-parameter limit)

#: Metrics whose per-run best (minimum; maximum for HIGHER_IS_BETTER) ``runs()`` reports as ``best/<key>``.
BEST_KEYS = ("val/loss", "train/loss_eval", "train/loss_epoch", "val/accuracy")
#: Metrics where more is better: their best/ value is the maximum.
HIGHER_IS_BETTER = ("val/accuracy",)
_FIRST_METRICS = ("val/loss", "val/accuracy", "train/loss", "train/loss_eval", "train/loss_epoch")


def _empty_history() -> Any:
    import pandas as pd

    return pd.DataFrame({"run_id": pd.Series(dtype=object), "metric": pd.Series(dtype=object), "step": pd.Series(dtype="int64"),
                         "value": pd.Series(dtype="float64"), "timestamp": pd.Series(dtype="int64")})


def load_metrics(client: Any, run_ids: Sequence[str], keys: Sequence[str] | None, *, bulk: bool = True) -> Any:
    """Metric points of ``run_ids`` as a long DataFrame (run_id, metric, step, value, timestamp), sorted by run (in the
    given order), metric, step and timestamp. ``keys=None`` loads every metric. One SELECT per batch of runs on a SQL
    store; otherwise (or with ``bulk=False``) one ``get_metric_history`` call per run per metric."""
    import numpy as np
    import pandas as pd

    run_ids = list(dict.fromkeys(run_ids))
    if not run_ids or (keys is not None and not keys):
        return _empty_history()
    engine = _sql_engine(str(client.tracking_uri)) if bulk else None
    rows = None
    # Hundreds of thousands of small tuples would trigger many full garbage collections (none of them cyclic).
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        if engine is not None:
            try:
                rows = _load_sql(engine, run_ids, keys)
            except Exception:  # an unexpected schema or driver: the per-run API still works
                rows = None
        if rows is None:
            rows = _load_per_run(client, run_ids, keys)
        if not rows:
            return _empty_history()
        run_col, metric_col, step_col, value_col, ts_col, nan_col = zip(*rows)
        del rows
    finally:
        if gc_was_on:
            gc.enable()
    position = {r: i for i, r in enumerate(run_ids)}
    run_code = np.fromiter((position[r] for r in run_col), dtype=np.int64, count=len(run_col))
    metric_names = sorted(set(metric_col))
    mpos = {m: i for i, m in enumerate(metric_names)}
    metric_code = np.fromiter((mpos[m] for m in metric_col), dtype=np.int64, count=len(metric_col))
    step = np.asarray(step_col, dtype=np.int64)
    ts = np.asarray(ts_col, dtype=np.int64)
    value = np.asarray(value_col, dtype=np.float64)
    nan = np.asarray(nan_col, dtype=bool)
    if nan.any():  # a SQL store keeps NaN as 0 with is_nan set
        value[nan] = np.nan
    order = np.lexsort((ts, step, metric_code, run_code))
    run_arr, metric_arr = np.asarray(run_ids, dtype=object), np.asarray(metric_names, dtype=object)
    return pd.DataFrame({
        "run_id": pd.Series(run_arr[run_code[order]]).astype(str),
        "metric": pd.Series(metric_arr[metric_code[order]]).astype(str),
        "step": step[order],
        "value": value[order],
        "timestamp": ts[order],
    })


def _sql_engine(uri: str) -> Any | None:
    """A SQLAlchemy engine on the tracking store's database (no pool: its connection closes after the read), or None
    when the store is not SQL."""
    if parse_store_url(uri).kind not in ("sqlite", "sql"):
        return None
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    return create_engine(uri, poolclass=NullPool)


def _load_sql(engine: Any, run_ids: list[str], keys: Sequence[str] | None) -> list[tuple[Any, ...]]:
    """One SELECT on MLflow's ``metrics`` table per batch of runs; rows are
    (run_id, key, step, value, timestamp, is_nan).

    The statement is built from MLflow's ORM table (``SqlMetric.__table__``), compiled for the store's dialect with the
    run ids and keys rendered as escaped literals, and run on the DB-API cursor: plain tuples load about 3x faster
    than SQLAlchemy ``Row`` objects for a few hundred thousand points.
    """
    from mlflow.store.tracking.dbmodels.models import SqlMetric
    from sqlalchemy import select

    t = SqlMetric.__table__
    out: list[tuple[Any, ...]] = []
    with engine.connect() as conn:
        for i in range(0, len(run_ids), SQL_BATCH):
            batch = run_ids[i : i + SQL_BATCH]
            q = select(t.c.run_uuid, t.c.key, t.c.step, t.c.value, t.c.timestamp, t.c.is_nan).where(t.c.run_uuid.in_(batch))
            if keys is not None:
                q = q.where(t.c.key.in_(list(keys)))
            try:
                sql = str(q.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
            except Exception:  # a dialect that cannot render literals: SQLAlchemy's own execution
                out.extend(tuple(r) for r in conn.execute(q).all())
                continue
            cur = conn.connection.cursor()
            try:
                cur.execute(sql)
                out.extend(cur.fetchall())
            finally:
                cur.close()
    return out


def _load_per_run(client: Any, run_ids: list[str], keys: Sequence[str] | None) -> list[tuple[Any, ...]]:
    pairs: list[tuple[str, str]] = []
    for rid in run_ids:
        if keys is None:
            run = client.get_run(rid)
            pairs += [(rid, k) for k in run.data.metrics]
        else:
            pairs += [(rid, k) for k in keys]

    def fetch(pair: tuple[str, str]) -> list[tuple[Any, ...]]:
        rid, key = pair
        return [(rid, key, m.step, m.value, m.timestamp, False) for m in client.get_metric_history(rid, key)]

    uri = str(getattr(client, "tracking_uri", "") or "")
    if uri.startswith(("http://", "https://")) and len(pairs) > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(8, len(pairs))) as ex:
            chunks = list(ex.map(fetch, pairs))
    else:
        chunks = [fetch(p) for p in pairs]
    return [row for chunk in chunks for row in chunk]


def best_by_run(hist: Any) -> dict[tuple[str, str], tuple[float, int]]:
    """(run_id, metric) -> (best value, its first step): the minimum, or the maximum for HIGHER_IS_BETTER metrics;
    NaN and inf ignored."""
    import numpy as np

    if hist.empty:
        return {}
    h = hist[np.isfinite(hist["value"].to_numpy())].copy()
    if h.empty:
        return {}
    higher = h["metric"].isin(HIGHER_IS_BETTER).to_numpy()
    h["score"] = np.where(higher, -h["value"].to_numpy(), h["value"].to_numpy())  # the best is the lowest score
    idx = h.groupby(["run_id", "metric"], sort=False)["score"].idxmin()
    best = h.loc[idx.to_numpy()]
    return {(r, m): (float(v), int(s)) for r, m, v, s in zip(best["run_id"], best["metric"], best["value"], best["step"])}


def metric_order(keys: Iterable[str]) -> list[str]:
    ks = set(keys)
    first = [k for k in _FIRST_METRICS if k in ks]
    summary = sorted(k for k in ks if k.startswith("summary/"))
    rest = sorted(k for k in ks if k not in first and k not in summary)
    return first + rest + summary
