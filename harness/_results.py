"""Reading runs back out of the tracking store: selectors, typed params, bulk metric histories, study lookup.

Public entry points live in :mod:`harness.results`; this module holds the mechanics.

Bulk histories: MLflow's client has no call that returns many runs' histories at once (mlflow/mlflow#7365), and
``MlflowClient.get_metric_history`` is one query (or one HTTP request) per run per metric. For a SQL tracking store
(SQLite, PostgreSQL, MySQL) the client's ``SqlAlchemyStore`` already holds a SQLAlchemy engine, and MLflow's own ORM
model (``SqlMetric``) names the ``metrics`` table and its columns, so we issue one SELECT per batch of runs through
that engine. Any other store (an ``http://`` tracking server, a file store) falls back to ``get_metric_history``.
"""

from __future__ import annotations

import ast
import gc
import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from harness._errors import HarnessError, UsageError

RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_INT = re.compile(r"^[+-]?\d+$")
_FLOAT = re.compile(r"^[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?$|^[+-]?(nan|inf|infinity)$", re.IGNORECASE)
SQL_BATCH = 500  # run ids per SELECT (well under SQLite's bound-parameter limit)

#: Metrics whose per-run minimum is reported by ``runs()`` as ``best/<key>`` (evaluation metrics: few points each).
BEST_KEYS = ("val/loss", "train/loss_eval", "train/loss_epoch")
_FIRST_METRICS = ("val/loss", "train/loss", "train/loss_eval", "train/loss_epoch")
NOT_CHANGES = ("tracking.run_name",)


# ----------------------------------------------------------------------------------------------------------- store


def store_path(uri: str) -> Path | None:
    """The file a local store lives in (SQLite database or file-store folder), else None."""
    if uri.startswith("sqlite:///"):
        rest = unquote(uri[len("sqlite:///") :]).split("?", 1)[0]
        return None if rest in ("", ":memory:") else Path(rest)
    parsed = urlparse(uri)
    if parsed.scheme == "file" or ("://" not in uri and not uri.startswith("sqlite:")):
        return Path(unquote(parsed.path if parsed.scheme == "file" else uri))
    return None


def open_store(uri: str | None = None) -> tuple[Any, str]:
    """(MlflowClient, uri) for an existing store. A local store that does not exist yet is an error here: reading
    must not create an empty ``mlruns/mlflow.db`` in whatever folder the user happens to be in."""
    from harness._tracking import MlflowTracker, tracking_uri

    uri = tracking_uri(uri)
    path = store_path(uri)
    if path is not None and not path.exists():
        raise UsageError(f"no MLflow store at {path} (tracking URI {uri}); run an experiment here first "
                         "(harness run SPEC), cd to the project folder, or set MLFLOW_TRACKING_URI")
    return MlflowTracker.client_for(uri), uri


def sql_store(client: Any) -> Any | None:
    """The client's SqlAlchemyStore when the store is a SQL database, else None."""
    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    if store is not None and hasattr(store, "engine") and hasattr(store, "ManagedSessionMaker"):
        return store
    return None


def _search(client: Any, experiment_ids: list[str], filter_string: str = "") -> list[Any]:
    from mlflow.entities import ViewType

    out: list[Any] = []
    token = None
    while True:
        page = client.search_runs(experiment_ids, filter_string, run_view_type=ViewType.ACTIVE_ONLY, max_results=1000,
                                  order_by=["attributes.start_time ASC"], page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


def _all_experiment_ids(client: Any) -> list[str]:
    return [e.experiment_id for e in client.search_experiments()]


def get_run(client: Any, run_id: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException:
        return None
    return None if run.info.lifecycle_stage == "deleted" else run


def role(run: Any) -> str | None:
    return run.data.tags.get("harness.role")


def children(client: Any, parent: Any) -> list[Any]:
    return _search(client, [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")


def _quote_ok(s: str) -> bool:
    return "'" not in s and "\\" not in s


def select_runs(client: Any, selector: str | Sequence[str], *, uri: str = "", include_parents: bool = False) -> list[Any]:
    """The runs a selector names, oldest first.

    A selector is a run id, a sweep's parent run id (its trials), an experiment name (its runs), an experiment id, or a
    study name (the trials tagged ``harness.study``); a list of selectors is their union. Sweep parent runs carry no
    training metrics, so they are left out unless ``include_parents``.
    """
    if not isinstance(selector, str):
        seen: dict[str, Any] = {}
        for s in selector:
            for r in select_runs(client, s, uri=uri, include_parents=include_parents):
                seen.setdefault(r.info.run_id, r)
        if not seen:
            raise UsageError("no runs selected")
        return list(seen.values())
    sel = selector.strip()
    if not sel:
        raise UsageError("empty selector: give an experiment name, run id or study name")
    keep = (lambda r: True) if include_parents else (lambda r: role(r) != "sweep")
    if RUN_ID.match(sel):
        run = get_run(client, sel)
        if run is not None:
            if role(run) == "sweep":
                kids = children(client, run)
                return ([run] if include_parents else []) + kids
            return [run]
    exp = client.get_experiment_by_name(sel)
    if exp is None and sel.isdigit() and not RUN_ID.match(sel):
        from mlflow.exceptions import MlflowException

        try:
            exp = client.get_experiment(sel)
        except MlflowException:
            exp = None
    if exp is not None and exp.lifecycle_stage != "deleted":
        return [r for r in _search(client, [exp.experiment_id]) if keep(r)]
    if _quote_ok(sel):
        tagged = _search(client, _all_experiment_ids(client), f"tags.`harness.study` = '{sel}'")
        if tagged:
            return [r for r in tagged if keep(r)]
    raise UsageError(_unknown(client, sel, uri))


def _unknown(client: Any, sel: str, uri: str) -> str:
    import difflib

    if RUN_ID.match(sel):
        return f"no run with id '{sel}' in the tracking store {uri}"
    names = sorted(e.name for e in client.search_experiments())
    msg = f"no experiment, run id or study '{sel}' in the tracking store {uri}"
    close = difflib.get_close_matches(sel, names, n=3)
    if close:
        msg += f"; did you mean {', '.join(repr(c) for c in close)}?"
    elif names:
        shown = ", ".join(names[:12]) + (" ..." if len(names) > 12 else "")
        msg += f"; experiments there: {shown}"
    else:
        msg += " (it has no experiments yet)"
    return msg


def experiment_names(client: Any, runs: Iterable[Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for r in runs:
        eid = r.info.experiment_id
        if eid not in out:
            try:
                out[eid] = client.get_experiment(eid).name
            except Exception:
                out[eid] = eid
    return out


# ----------------------------------------------------------------------------------------------------------- params


def parse_value(text: Any) -> Any:
    """MLflow stores every param as ``str(value)``; undo that: ``"1e-06"`` -> 1e-06, ``"True"`` -> True,
    ``"None"`` -> None, ``"[0.9, 0.999]"`` -> [0.9, 0.999], ``"{}"`` -> {}. Anything else stays a string."""
    if not isinstance(text, str):
        return text
    s = text.strip()
    if s == "None":
        return None
    if s in ("True", "False"):
        return s == "True"
    if _INT.match(s):
        return int(s)
    if _FLOAT.match(s):
        return float(s)
    if s[:1] in "[{(" and s[-1:] in "]})":
        try:
            v = json.loads(s)
        except ValueError:
            try:
                v = ast.literal_eval(s)
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                return text
        return list(v) if isinstance(v, tuple) else v
    return text


_HINTS: dict[str, type] | None = None


def schema_hint(path: str) -> type | None:
    """int, float or bool when the spec schema declares ``path`` as one of those (optionally None), else None."""
    global _HINTS
    if _HINTS is None:
        import types
        import typing

        from harness._spec import field_paths

        hints: dict[str, type] = {}
        for p, ann in field_paths().items():
            args = [a for a in typing.get_args(ann) if a is not type(None)] if typing.get_origin(ann) in (typing.Union, types.UnionType) else [ann]
            if len(args) == 1 and args[0] in (int, float, bool):
                hints[p] = args[0]
        _HINTS = hints
    return _HINTS.get(path)


def typed_series(values: Sequence[Any], index: Any = None, *, hint: type | None = None) -> Any:
    """A pandas Series with the narrowest honest dtype: Int64, float64, boolean, or object. ``hint`` (the schema's
    type) decides for a column that holds only None, and makes a float field float64 even when it holds ints."""
    import numpy as np
    import pandas as pd

    present = [v for v in values if v is not None]
    kinds = {type(v) for v in present}
    if hint is bool and kinds <= {bool}:
        return pd.Series(list(values), index=index, dtype="boolean")
    if hint is int and kinds <= {int}:
        return pd.Series(list(values), index=index, dtype="Int64")
    if hint is float and kinds <= {int, float}:
        return pd.Series([np.nan if v is None else float(v) for v in values], index=index, dtype="float64")
    if not present:
        return pd.Series(list(values), index=index, dtype=object)
    if kinds == {bool}:
        return pd.Series(list(values), index=index, dtype="boolean")
    if kinds == {int}:
        return pd.Series(list(values), index=index, dtype="Int64")
    if kinds <= {int, float}:
        return pd.Series([np.nan if v is None else float(v) for v in values], index=index, dtype="float64")
    return pd.Series(list(values), index=index, dtype=object)


def hashable(v: Any) -> str:
    return json.dumps(v, sort_keys=True, default=str)


def changed_params(param_rows: Sequence[dict[str, Any]], swept: Iterable[str] = ()) -> list[str]:
    """Params whose value differs between the runs (plus the sweep's own params), in a stable order; derived facts
    and the run name are left out, since they follow from the others."""
    keys: list[str] = []
    for row in param_rows:
        for k in row:
            if k not in keys:
                keys.append(k)
    out = [k for k in swept if k in keys]
    for k in keys:
        if k in out or k in NOT_CHANGES or k.startswith("derived."):
            continue
        if len({hashable(row.get(k)) for row in param_rows}) > 1:
            out.append(k)
    return out


def sweep_space(parent: Any) -> dict[str, dict[str, Any]]:
    """Swept param path -> {"log": bool} from a sweep parent run's ``sweep.params.*`` params. A grid logs one param
    per path (its values); a range is flattened into ``<path>.choices/.int/.float/.log/.step``."""
    prefix = "sweep.params."
    params = {k[len(prefix) :]: v for k, v in parent.data.params.items() if k.startswith(prefix)}
    ranged = {k.rsplit(".", 1)[0] for k in params if k.endswith(".choices") and k.rsplit(".", 1)[0] + ".float" in params}
    out: dict[str, dict[str, Any]] = {}
    for k, v in params.items():
        base = k.rsplit(".", 1)[0]
        if base in ranged:
            entry = out.setdefault(base, {"log": False})
            if k.endswith(".log"):
                entry["log"] = parse_value(v) is True
        else:
            out.setdefault(k, {"log": False})
    return out


def swept_params(client: Any, runs: Sequence[Any]) -> list[str]:
    """Param paths swept by the parents of these runs."""
    out: list[str] = []
    parents = sorted({r.data.tags.get("mlflow.parentRunId") for r in runs} - {None})  # type: ignore[type-var]
    for pid in parents:
        parent = get_run(client, pid)  # type: ignore[arg-type]
        if parent is not None:
            out += [k for k in sweep_space(parent) if k not in out]
    return out


# ----------------------------------------------------------------------------------------------------------- metrics


HISTORY_COLUMNS = ["run_id", "metric", "step", "value", "timestamp"]


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
    store = sql_store(client) if bulk else None
    rows = None
    # Hundreds of thousands of small tuples would trigger many full garbage collections (none of them cyclic).
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        if store is not None:
            try:
                rows = _load_sql(store, run_ids, keys)
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


def _load_sql(store: Any, run_ids: list[str], keys: Sequence[str] | None) -> list[tuple[Any, ...]]:
    """One SELECT on MLflow's ``metrics`` table per batch of runs, through the store's own engine; rows are
    (run_id, key, step, value, timestamp, is_nan).

    The statement is built from MLflow's ORM table (``SqlMetric.__table__``), compiled for the store's dialect with the
    run ids and keys rendered as escaped literals, and run on the DB-API cursor: plain tuples load about 3x faster
    than SQLAlchemy ``Row`` objects for a few hundred thousand points.
    """
    from mlflow.store.tracking.dbmodels.models import SqlMetric
    from sqlalchemy import select

    t = SqlMetric.__table__
    out: list[tuple[Any, ...]] = []
    with store.engine.connect() as conn:
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
    """(run_id, metric) -> (min value, its first step), NaN and inf ignored."""
    import numpy as np

    if hist.empty:
        return {}
    h = hist[np.isfinite(hist["value"].to_numpy())]
    if h.empty:
        return {}
    idx = h.groupby(["run_id", "metric"], sort=False)["value"].idxmin()
    best = h.loc[idx.to_numpy()]
    return {(r, m): (float(v), int(s)) for r, m, v, s in zip(best["run_id"], best["metric"], best["value"], best["step"])}


def metric_order(keys: Iterable[str]) -> list[str]:
    ks = set(keys)
    first = [k for k in _FIRST_METRICS if k in ks]
    summary = sorted(k for k in ks if k.startswith("summary/"))
    rest = sorted(k for k in ks if k not in first and k not in summary)
    return first + rest + summary


# ----------------------------------------------------------------------------------------------------------- studies


@dataclass
class StudyRef:
    name: str
    storage: str
    parent_run_id: str | None = None
    notes: list[str] = field(default_factory=list)


def _sqlite_file(url: str) -> Path | None:
    if url.startswith("sqlite:///"):
        rest = unquote(url[len("sqlite:///") :]).split("?", 1)[0]
        return Path(rest) if rest and rest != ":memory:" else None
    return None


def _usable_storage(url: str) -> bool:
    db = _sqlite_file(url)
    if db is not None:
        return db.is_file()
    if url.endswith(".log") or url.startswith("journal:"):
        return Path(url[len("journal:") :] if url.startswith("journal:") else url).is_file()
    return True


def _is_spec_path(target: str) -> bool:
    return target.endswith((".yaml", ".yml")) or Path(target).is_file()


def resolve_study(target: str, *, storage: str | None = None, uri: str | None = None) -> StudyRef:
    """Which study (name and storage URL) a sweep spec path, study name or sweep parent run id refers to.

    Storage, first that applies: ``storage``; the spec's ``sweep.storage``; the ``harness.storage`` tag of the sweep's
    parent MLflow run; ``HARNESS_STUDY_STORAGE``; ``sqlite:///studies/<name>.db``.
    """
    from harness._tracking import tracking_uri

    parent_id = None
    candidates: list[str] = []
    if _is_spec_path(target):
        from harness._errors import SpecError
        from harness._spec import load_spec

        if not Path(target).is_file():
            raise UsageError(f"spec file not found: {target}")
        try:
            spec = load_spec(target, check_data=False)
        except SpecError as exc:
            raise UsageError(f"{target}: {exc}") from None
        if spec.sweep is None:
            raise UsageError(f"{target} has no sweep section, so it has no Optuna study")
        name = spec.name
        if spec.sweep.storage:
            candidates.append(spec.sweep.storage)
    else:
        name = target
    # The sweep's parent MLflow run records the storage it used.
    uri = tracking_uri(uri)
    path = store_path(uri)
    if path is None or path.exists():
        try:
            client, _ = open_store(uri)
            if RUN_ID.match(name):
                run = get_run(client, name)
                if run is not None and role(run) == "sweep":
                    parent_id = run.info.run_id
                    name = run.data.tags.get("harness.study", name)
                    candidates.append(run.data.tags.get("harness.storage", ""))
            if parent_id is None and _quote_ok(name):
                parents = _search(client, _all_experiment_ids(client), f"tags.`harness.study` = '{name}' and tags.`harness.role` = 'sweep'")
                if parents:
                    parent_id = parents[-1].info.run_id
                    candidates.append(parents[-1].data.tags.get("harness.storage", ""))
        except HarnessError:
            pass
    if os.environ.get("HARNESS_STUDY_STORAGE"):
        candidates.append(os.environ["HARNESS_STUDY_STORAGE"])
    candidates.append(f"sqlite:///studies/{name}.db")
    if storage:
        candidates = [storage]
    tried = []
    for url in dict.fromkeys(c for c in candidates if c):
        if _usable_storage(url):
            return StudyRef(name=name, storage=url, parent_run_id=parent_id)
        tried.append(url)
    raise UsageError(f"no Optuna study '{name}' found (looked in {', '.join(tried)}); run the sweep first, cd to the project "
                     "folder, or pass --storage URL")


def load_study(ref: StudyRef) -> Any:
    import optuna

    from harness._sweep import _storage

    storage = _storage(ref.storage)
    try:
        return optuna.load_study(study_name=ref.name, storage=storage)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        hint = f"; studies there: {', '.join(names)}" if names else " (it holds no studies)"
        raise UsageError(f"no study named '{ref.name}' in {ref.storage}{hint}") from None


# ----------------------------------------------------------------------------------------------------------- misc


def short(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:.4g}"
    if v is None:
        return "-"
    return str(v)


def port_free(host: str, port: int) -> bool:
    import socket

    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def is_loopback(host: str) -> bool:
    import ipaddress

    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
