"""Results as pandas DataFrames, plots on demand, and the commands behind ``harness ui`` / ``harness dashboard``.

::

    from harness import results
    runs = results.runs("lr_sweep")                  # one row per run: typed params, final/best metrics, status, ...
    hist = results.history("lr_sweep", metrics=["train/loss", "val/loss"])   # long form: run_id, metric, step, value
    study = results.study("lr_sweep")                # Optuna's trials, joined to their MLflow runs

A *selector* is an experiment name, a sweep's parent run id (its trials), a run id, an experiment id, or a study name
(the runs tagged ``harness.study``); a list of selectors selects their union. The tracking store is
``MLFLOW_TRACKING_URI`` or ``sqlite:///mlruns/mlflow.db`` (relative to the working directory), or ``uri=``.
"""

from __future__ import annotations

import math
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import _results as R
from harness._errors import HarnessError, UsageError

__all__ = [
    "Comparison",
    "DashboardPlan",
    "ServerPlan",
    "compare",
    "dashboard_plan",
    "export",
    "history",
    "params_of",
    "parse_value",
    "plot",
    "runs",
    "serve",
    "serve_dashboard",
    "start",
    "stop",
    "study",
    "ui_plan",
    "wait_ready",
]

Selector = str | Sequence[str]
parse_value = R.parse_value

INFO_COLUMNS = ["run_id", "run_name", "experiment", "status", "stop_reason", "role", "study", "trial", "parent_run_id",
                "start_time", "end_time", "wall_time_s", "steps"]


# ----------------------------------------------------------------------------------------------------------- runs


def runs(selector: Selector, *, uri: str | None = None, include_parents: bool = False, best: bool = True) -> Any:
    """One row per run, oldest first.

    Columns: ``run_id, run_name, experiment, status, stop_reason, role, study, trial (Int64), parent_run_id,
    start_time, end_time (UTC datetimes), wall_time_s, steps (Int64)``; then each metric's final value under its own
    key (``val/loss``, ``train/loss``, ``summary/best_val_loss``, ...); with ``best``, ``best/<key>`` and
    ``best_step/<key>`` for the evaluation losses (minimum over the history); then every param under its dotted path
    (``train.optimizer.lr``, ``derived.n_parameters``, ...) with its real dtype: Int64, float64, boolean, or object
    for strings and lists; a param that is None in every run takes its type from the spec schema (e.g.
    ``train.epochs`` is an all-<NA> Int64 column for step-limited runs).

    Sweep parent runs (no training metrics) are left out unless ``include_parents``.
    """
    client, uri = R.open_store(uri)
    selected = R.select_runs(client, selector, uri=uri, include_parents=include_parents)
    return _runs_frame(client, selected, best=best)


def _runs_frame(client: Any, selected: Sequence[Any], *, best: bool = True) -> Any:
    import pandas as pd

    exp_names = R.experiment_names(client, selected)
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
            "trial": int(trial) if trial is not None and str(trial).lstrip("-").isdigit() else None,
            "parent_run_id": tags.get("mlflow.parentRunId"),
            "start_time": r.info.start_time,
            "end_time": r.info.end_time,
            "wall_time_s": wall,
            "steps": int(float(steps)) if steps is not None else None,
        }
        for c in INFO_COLUMNS:
            info[c].append(row[c])
    cols: dict[str, Any] = {}
    for c in ("run_id", "run_name", "experiment", "status", "stop_reason", "role", "study", "parent_run_id"):
        cols[c] = pd.Series(info[c], dtype=object)
    cols["trial"] = pd.Series(info["trial"], dtype="Int64")
    for c in ("start_time", "end_time"):
        cols[c] = pd.to_datetime(pd.Series([v if v else None for v in info[c]], dtype="float64"), unit="ms", utc=True)
    cols["wall_time_s"] = pd.Series([math.nan if v is None else float(v) for v in info["wall_time_s"]], dtype="float64")
    cols["steps"] = pd.Series(info["steps"], dtype="Int64")
    for key in R.metric_order({k for r in selected for k in r.data.metrics}):
        cols[key] = pd.Series([r.data.metrics.get(key, math.nan) for r in selected], dtype="float64")
    if best:
        keys = [k for k in R.BEST_KEYS if any(k in r.data.metrics for r in selected)]
        if keys:
            found = R.best_by_run(R.load_metrics(client, ids, keys))
            for k in keys:
                cols[f"best/{k}"] = pd.Series([found.get((i, k), (math.nan, None))[0] for i in ids], dtype="float64")
                cols[f"best_step/{k}"] = pd.Series([found.get((i, k), (math.nan, None))[1] for i in ids], dtype="Int64")
    parsed = [{k: R.parse_value(v) for k, v in r.data.params.items()} for r in selected]
    for key in _param_order(parsed):
        if key in cols:
            continue
        cols[key] = R.typed_series([p.get(key) for p in parsed], hint=R.schema_hint(key))
    df = pd.DataFrame(cols)
    df.attrs["params"] = [k for k in _param_order(parsed) if k in df.columns]
    return df


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


# ----------------------------------------------------------------------------------------------------------- history


def history(selector: Selector, metrics: str | Sequence[str] | None = None, *, params: str | Sequence[str] | None = "changed",
            uri: str | None = None, bulk: bool = True) -> Any:
    """Every logged point of ``metrics`` (default: all per-step and eval metrics, not ``summary/*``) for the selected
    runs, in long form: ``run_id, run_name, metric, step, value, timestamp`` (epoch ms) plus param columns.

    ``params="changed"`` adds the params that differ between the runs (and a sweep's swept params), typed as in
    :func:`runs`; a list adds those params; None adds none. On a SQL store the points come from one query per batch of
    500 runs; ``bulk=False`` forces the per-run, per-metric ``get_metric_history`` path (for comparison).
    """
    import pandas as pd

    client, uri = R.open_store(uri)
    selected = R.select_runs(client, selector, uri=uri)
    available = {k for r in selected for k in r.data.metrics}
    if metrics is None:
        keys = [k for k in R.metric_order(available) if not k.startswith("summary/")]
    else:
        keys = [metrics] if isinstance(metrics, str) else list(metrics)
        missing = [k for k in keys if k not in available]
        if missing and len(missing) == len(keys):
            raise UsageError(f"no selected run logged {', '.join(missing)}; metrics there: {', '.join(R.metric_order(available))}")
    ids = [r.info.run_id for r in selected]
    hist = R.load_metrics(client, ids, keys, bulk=bulk)
    names = {r.info.run_id: r.info.run_name for r in selected}
    hist.insert(1, "run_name", hist["run_id"].map(names))
    if params is None or (not isinstance(params, str) and not params):
        return hist
    parsed = {r.info.run_id: {k: R.parse_value(v) for k, v in r.data.params.items()} for r in selected}
    if isinstance(params, str):
        if params != "changed":
            raise UsageError(f"params must be 'changed', a list of param names, or None (got {params!r})")
        chosen = R.changed_params(list(parsed.values()), R.swept_params(client, selected))
    else:
        chosen = list(params)
    if not chosen:
        return hist
    table = pd.DataFrame({"run_id": pd.Series(ids, dtype=object)})
    for k in chosen:
        table[k] = R.typed_series([parsed[i].get(k) for i in ids], hint=R.schema_hint(k))
    return hist.merge(table, on="run_id", how="left")


# ----------------------------------------------------------------------------------------------------------- study


def study(target: str, *, storage: str | None = None, uri: str | None = None) -> Any:
    """The Optuna study of a sweep (by study name, sweep spec path, or sweep parent run id) as
    ``study.trials_dataframe()`` (``number, value, datetime_*, duration, params_*, user_attrs_*, state``) joined to
    MLflow: ``run_id``, ``run_name``, ``mlflow_status`` and ``stop_reason`` (the trial's, else its run's tag), and
    ``superseded`` (True for a crashed/interrupted attempt whose retry continued the same MLflow run)."""
    import pandas as pd

    from harness._sweep import _retried_numbers

    ref = R.resolve_study(target, storage=storage, uri=uri)
    st = R.load_study(ref)
    df = st.trials_dataframe()
    trials = st.get_trials(deepcopy=False)
    if df.empty:
        df = pd.DataFrame({"number": pd.Series(dtype="int64")})
    retried = _retried_numbers(trials)
    by_number = {t.number: t for t in trials}
    run_ids = [by_number[n].user_attrs.get("mlflow_run_id") if n in by_number else None for n in df["number"]]
    mlflow_runs: dict[str, Any] = {}
    wanted = {r for r in run_ids if r}
    try:
        client = R.open_store(uri)[0] if wanted else None
    except HarnessError:
        client = None  # no MLflow store here: the study alone still answers
    if client is not None:
        try:  # one search for the study's runs, then single lookups for any that it missed
            for run in R.select_runs(client, ref.name):
                mlflow_runs[run.info.run_id] = run
        except HarnessError:
            pass
        for rid in wanted - set(mlflow_runs):
            run = R.get_run(client, rid)
            if run is not None:
                mlflow_runs[rid] = run
    df["run_id"] = pd.Series(run_ids, dtype=object, index=df.index)
    df["run_name"] = pd.Series([mlflow_runs[r].info.run_name if r in mlflow_runs else None for r in run_ids], dtype=object, index=df.index)
    df["mlflow_status"] = pd.Series([mlflow_runs[r].info.status if r in mlflow_runs else None for r in run_ids], dtype=object, index=df.index)
    stops = []
    for n, r in zip(df["number"], run_ids):
        t = by_number.get(n)
        s = t.user_attrs.get("stop_reason") if t is not None else None
        if s is None and r in mlflow_runs:
            s = mlflow_runs[r].data.tags.get("stop_reason")
        stops.append(s)
    df["stop_reason"] = pd.Series(stops, dtype=object, index=df.index)
    df["superseded"] = pd.Series([int(n) in retried for n in df["number"]], dtype=bool, index=df.index)
    df.attrs.update({"study": ref.name, "storage": ref.storage, "parent_run_id": ref.parent_run_id})
    return df


# ----------------------------------------------------------------------------------------------------------- compare


@dataclass
class Comparison:
    runs: Any  # the runs() frame of the compared runs
    params: Any  # index: params that differ; columns: run labels
    metrics: Any  # index: status, stop_reason, steps, wall time, final and best metrics; columns: run labels
    labels: list[str]
    plot: Path | None = None


def _labels(df: Any) -> list[str]:
    names = list(df["run_name"].fillna(""))
    dup = {n for n in names if names.count(n) > 1 or not n}
    return [f"{n} ({rid[:8]})" if n in dup else n for n, rid in zip(names, df["run_id"])]


def compare(selectors: Selector, *, out: str | Path | None = "compare.png", metrics: Sequence[str] = ("train/loss", "val/loss"),
            uri: str | None = None) -> Comparison:
    """Two or more runs side by side: the params that differ, final and best metrics, and (``out``) one PNG with a
    panel per metric and one curve per run."""
    import pandas as pd

    from harness import _plots

    client, uri = R.open_store(uri)
    selected = R.select_runs(client, selectors, uri=uri)
    if len(selected) < 2:
        raise UsageError(f"compare needs at least two runs; {_fmt_sel(selectors)} selects {len(selected)}")
    df = _runs_frame(client, selected)
    labels = _labels(df)
    pcols = [c for c in params_of(df) if c not in R.NOT_CHANGES]
    diff = [c for c in pcols if len({R.hashable(_plain(v)) for v in df[c]}) > 1]
    ptable = pd.DataFrame({lab: [_plain(df.at[i, c]) for c in diff] for i, lab in zip(df.index, labels)}, index=pd.Index(diff, name="param"))
    rows = ["status", "stop_reason", "steps", "wall_time_s"]
    allp = set(params_of(df))
    mcols = [c for c in df.columns if c not in INFO_COLUMNS and c not in allp and not c.startswith("summary/")]
    rows += mcols
    mtable = pd.DataFrame({lab: [_plain(df.at[i, c]) for c in rows] for i, lab in zip(df.index, labels)}, index=pd.Index(rows, name="metric"))
    path = None
    if out is not None:
        keys = [k for k in metrics if k in df.columns]
        if keys:
            hist = R.load_metrics(client, list(df["run_id"]), keys)
            panels: dict[str, dict[str, tuple[list[int], list[float]]]] = {}
            for k in keys:
                panels[k] = {}
                for rid, lab in zip(df["run_id"], labels):
                    h = hist[(hist["run_id"] == rid) & (hist["metric"] == k)]
                    panels[k][lab] = (h["step"].tolist(), h["value"].tolist())
            names = dict(zip(labels, _curve_labels(df, labels, diff)))
            panels = {k: {names[lab]: c for lab, c in v.items()} for k, v in panels.items()}
            path = _plots.overlay_panels(panels, Path(out), title=f"{len(labels)} runs compared")
    return Comparison(runs=df, params=ptable, metrics=mtable, labels=labels, plot=path)


def _curve_labels(df: Any, labels: Sequence[str], params: Sequence[str], limit: int = 3) -> list[str]:
    """Legend entries: the run label plus the values of up to ``limit`` differing params (``lr=0.001``)."""
    out = []
    for i, lab in enumerate(labels):
        bits = [f"{p.split('.')[-1]}={R.short(_plain(df[p].iloc[i]))}" for p in list(params)[:limit]]
        out.append(f"{lab}: {', '.join(bits)}" if bits else lab)
    return out


def _plain(v: Any) -> Any:
    try:
        import pandas as pd

        if v is pd.NA or v is pd.NaT:
            return None
    except ImportError:  # pragma: no cover
        pass
    if hasattr(v, "item") and not isinstance(v, (list, dict, str)):
        try:
            return v.item()
        except (ValueError, AttributeError):
            return v
    return v


def _fmt_sel(sel: Selector) -> str:
    return repr(sel) if isinstance(sel, str) else " ".join(sel)


# ----------------------------------------------------------------------------------------------------------- plots


PLOT_KINDS = ("loss", "grad_norm", "lr", "overlay", "objective")


def plot(selector: Selector, kind: str = "loss", *, out: str | Path | None = None, metric: str | None = None,
         uri: str | None = None) -> Path:
    """Draw one figure and return its path (default ``<kind>.png``).

    * ``loss``: train and val loss of one run; ``grad_norm``: gradient norm with the clip threshold; ``lr``: the LR
      schedule (all three for one run);
    * ``overlay``: one curve per selected run for ``metric`` (default ``val/loss``);
    * ``objective``: a sweep's objective against each swept param (one panel per param).
    """
    from harness import _plots

    if kind not in PLOT_KINDS:
        raise UsageError(f"unknown plot kind '{kind}'; choose one of {', '.join(PLOT_KINDS)}")
    path = Path(out) if out is not None else Path(f"{kind}.png")
    client, uri = R.open_store(uri)
    selected = R.select_runs(client, selector, uri=uri)
    if kind in ("loss", "grad_norm", "lr"):
        if len(selected) != 1:
            raise UsageError(f"--kind {kind} draws one run, and {_fmt_sel(selector)} selects {len(selected)}; pass one run id, "
                             "or use --kind overlay")
        run = selected[0]
        rid = run.info.run_id
        title = f"{run.info.run_name} ({rid[:8]})"
        keys = {"loss": ["train/loss", "train/loss_eval", "val/loss"], "grad_norm": ["grad_norm"], "lr": ["lr"]}[kind]
        hist = R.load_metrics(client, [rid], keys)
        curves = {k: (g["step"].tolist(), g["value"].tolist()) for k, g in hist.groupby("metric", sort=False)}
        if not curves:
            raise UsageError(f"run {rid} has no {' or '.join(keys)} history to plot")
        if kind == "loss":
            return _plots.loss_curve(curves, path, title=title)
        if kind == "grad_norm":
            clip = R.parse_value(run.data.params.get("train.clip_grad_norm"))
            return _plots.grad_norm(curves["grad_norm"], path, clip=clip if isinstance(clip, (int, float)) else None, title=title)
        return _plots.lr_schedule(curves["lr"], path, title=title)
    df = _runs_frame(client, selected)
    labels = _labels(df)
    if kind == "overlay":
        key = metric or "val/loss"
        hist = R.load_metrics(client, list(df["run_id"]), [key])
        if hist.empty:
            raise UsageError(f"no selected run logged {key}")
        changed = R.swept_params(client, selected) or R.changed_params([{k: _plain(df.at[i, k]) for k in params_of(df)} for i in df.index])
        labels = _curve_labels(df, labels, changed)
        curves = {}
        for rid, lab in zip(df["run_id"], labels):
            h = hist[hist["run_id"] == rid]
            curves[lab] = (h["step"].tolist(), h["value"].tolist())
        return _plots.overlay(curves, path, metric=key, title=f"{_fmt_sel(selector)}: {key} per run")
    # objective
    parent = next((R.get_run(client, p) for p in df["parent_run_id"].dropna().unique()), None)
    objective = metric or (parent.data.params.get("sweep.objective.metric") if parent else None) or "val/loss"
    summary = (parent.data.params.get("sweep.objective.summary") if parent else None) or "best"
    col = f"best/{objective}" if summary == "best" and f"best/{objective}" in df else objective
    if col not in df:
        raise UsageError(f"no selected run logged {objective}")
    swept = R.swept_params(client, selected) or R.changed_params([{k: _plain(df.at[i, k]) for k in params_of(df)} for i in df.index])
    if not swept:
        raise UsageError("these runs share all their params; there is nothing to plot the objective against")
    rows = [i for i in range(len(df)) if not math.isnan(float(df[col].iloc[i]))]
    if not rows:
        raise UsageError(f"no selected run has a finite {col}")
    points = {p: [_plain(df[p].iloc[i]) for i in rows] for p in swept if p in df}
    log_x = {p: _log_param(parent, p, xs) for p, xs in points.items()}
    trials = [_plain(df["trial"].iloc[i]) for i in rows]
    labs = [f"t{t}" if t is not None else labels[i] for t, i in zip(trials, rows)]
    ys = [float(df[col].iloc[i]) for i in rows]
    return _plots.objective_panels(points, ys, path, objective=f"{summary} {objective}", log_x=log_x, labels=labs)


def _log_param(parent: Any, path: str, xs: Sequence[Any]) -> bool:
    if parent is not None and R.sweep_space(parent).get(path, {}).get("log"):
        return True
    nums = [x for x in xs if isinstance(x, (int, float)) and not isinstance(x, bool)]
    return bool(nums) and min(nums) > 0 and max(nums) / min(nums) >= 100


# ----------------------------------------------------------------------------------------------------------- servers


@dataclass
class ServerPlan:
    """A server to start: the command, its environment, and what to tell the user."""

    argv: list[str] | None
    url: str
    env: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    store: str = ""
    artifacts: str = ""

    @property
    def command(self) -> str:
        return shlex.join(self.argv) if self.argv else ""


def _exposed_warning(host: str, what: str) -> str:
    return (f"WARNING: {what} will listen on {host}, not on loopback: anyone who can reach this machine on that address "
            f"can read, change and delete what it serves. It has no login. Use --host 127.0.0.1 unless you mean it.")


def ui_plan(*, host: str = "127.0.0.1", port: int = 5000, uri: str | None = None, workers: int = 1) -> ServerPlan:
    """The ``mlflow server`` command for this project's store: one worker, no background job runner, artifacts
    served from the store's ``mlruns`` folder, bound to ``host`` (loopback by default).

    A store that is already a tracking server (``http://...``) needs no UI process: ``argv`` is None and ``url`` is
    that server."""
    from harness._tracking import tracking_uri

    uri = tracking_uri(uri)
    if uri.startswith(("http://", "https://")):
        return ServerPlan(argv=None, url=uri, store=uri)
    path = R.store_path(uri)
    if path is not None and not path.exists():
        raise UsageError(f"no MLflow store at {path} (tracking URI {uri}); run an experiment here first, cd to the project "
                         "folder, or set MLFLOW_TRACKING_URI")
    if uri.startswith("sqlite:///") and path is not None:
        backend = f"sqlite:///{path.resolve()}"
        artifacts = path.resolve().parent
    elif path is not None:  # a file store folder
        backend = path.resolve().as_uri()
        artifacts = path.resolve()
    else:  # postgresql://, mysql://: artifacts live where the runs say; new experiments go to ./mlruns
        backend = uri
        artifacts = (Path.cwd() / "mlruns").resolve()
    if not (1 <= port <= 65535):
        raise UsageError(f"--port must be between 1 and 65535 (got {port})")
    if not R.port_free(host, port):
        raise UsageError(f"port {port} on {host} is already in use (another `harness ui`?); pick another with --port")
    argv = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend, "--default-artifact-root", str(artifacts),
            "--serve-artifacts", "--artifacts-destination", str(artifacts), "--host", host, "--port", str(port),
            "--workers", str(workers)]
    # MLflow 3 starts a job runner with a pool of Huey consumers next to the server (for GenAI jobs we never use):
    # a dozen processes on a 2-core laptop. Turn it off.
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    warnings = [] if R.is_loopback(host) else [_exposed_warning(host, "the MLflow UI")]
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    url = f"http://[{shown}]:{port}" if ":" in shown else f"http://{shown}:{port}"
    return ServerPlan(argv=argv, url=url, env=env, warnings=warnings, store=backend, artifacts=str(artifacts))


def wait_ready(url: str, proc: subprocess.Popen[Any] | None = None, *, timeout: float = 120.0, path: str = "/health") -> bool:
    """Poll ``url + path`` until it answers 200; False when ``proc`` exits first or ``timeout`` passes."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url.rstrip("/") + path, timeout=2) as resp:
                if resp.status == 200:
                    return True
        except (urllib.error.URLError, OSError, ValueError):
            pass
        time.sleep(0.25)
    return False


def start(plan: ServerPlan, **popen: Any) -> subprocess.Popen[Any]:
    """Start the planned server in its own process group (so :func:`stop` ends its workers too)."""
    if not plan.argv:
        raise UsageError("nothing to start")
    env = {**os.environ, **plan.env}
    return subprocess.Popen(plan.argv, env=env, start_new_session=True, **popen)


def stop(proc: subprocess.Popen[Any], *, timeout: float = 15.0) -> None:
    """SIGTERM the server's process group (the server and the workers it started), SIGKILL after ``timeout``."""
    import signal

    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=5)
    # Workers that outlived their parent still belong to its group: TERM them, then KILL what is left.
    deadline = time.monotonic() + timeout
    sig = signal.SIGTERM
    while True:
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        if time.monotonic() > deadline:
            sig = signal.SIGKILL
        time.sleep(0.1)


def serve(plan: ServerPlan, *, on_ready: Callable[[], None] | None = None, ready_timeout: float = 180.0) -> int:
    """Run the planned server in the foreground until it exits or Ctrl-C; returns its exit status (0 after Ctrl-C)."""
    import signal
    import threading

    def _interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    # The server runs in its own session (Ctrl-C in the terminal does not reach it), so whatever ends *this* process
    # (Ctrl-C, SIGTERM, a closed terminal) must end the server too.
    old: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            old[sig] = signal.signal(sig, _interrupt)
    proc = start(plan)
    try:
        if wait_ready(plan.url, proc, timeout=ready_timeout):
            if on_ready:
                on_ready()
        elif proc.poll() is not None:
            raise HarnessError(f"the server exited with status {proc.returncode} before it was ready; command: {plan.command}")
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        stop(proc)
        for sig, handler in old.items():
            signal.signal(sig, handler)


@dataclass
class DashboardPlan:
    study: str
    storage: str
    url: str
    host: str
    port: int
    installed: bool
    command: str
    install: str = 'pip install "optuna-dashboard>=0.20"'
    warnings: list[str] = field(default_factory=list)


def _absolute_storage(url: str) -> str:
    if url.startswith("sqlite:///"):
        rest = url[len("sqlite:///") :]
        if not rest.startswith("/"):
            return f"sqlite:///{Path(rest).resolve()}"
    return url


def dashboard_plan(target: str, *, storage: str | None = None, host: str = "127.0.0.1", port: int = 8080,
                   uri: str | None = None) -> DashboardPlan:
    """optuna-dashboard for the study of a sweep spec, a study name or a sweep parent run id."""
    import importlib.util

    ref = R.resolve_study(target, storage=storage, uri=uri)
    R.load_study(ref)  # fail here, with the studies that do exist, rather than in a browser
    url_storage = _absolute_storage(ref.storage)
    installed = importlib.util.find_spec("optuna_dashboard") is not None
    if installed and not R.port_free(host, port):
        raise UsageError(f"port {port} on {host} is already in use; pick another with --port")
    command = shlex.join(["optuna-dashboard", url_storage, "--host", host, "--port", str(port)])
    warnings = [] if R.is_loopback(host) else [_exposed_warning(host, "optuna-dashboard")]
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return DashboardPlan(study=ref.name, storage=url_storage, url=f"http://{shown}:{port}/dashboard/studies", host=host, port=port,
                         installed=installed, command=command, warnings=warnings)


def serve_dashboard(plan: DashboardPlan) -> int:
    """Serve optuna-dashboard in this process until Ctrl-C (``optuna_dashboard.run_server``)."""
    if not plan.installed:
        raise HarnessError(f"optuna-dashboard is not installed; install it with: {plan.install}")
    import optuna_dashboard

    from harness._sweep import _storage

    try:
        optuna_dashboard.run_server(_storage(plan.storage), host=plan.host, port=plan.port)
    except KeyboardInterrupt:
        return 0
    return 0


# ----------------------------------------------------------------------------------------------------------- export


def export(df: Any, path: str | Path) -> Path:
    """Write a results frame to ``.csv`` or ``.parquet`` (lists, dicts and mixed columns become JSON text in parquet)."""
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
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
