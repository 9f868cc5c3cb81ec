"""A sweep's results: one row per seed run (its current attempt, from the study and its MLflow run), one row per
configuration with its verdict against the best when the sweep repeats seeds, and the parent run's final tables,
plots and metrics."""

from __future__ import annotations

import json
import math
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from harness.spec import ObjectiveSpec, ParamRange, Spec
from harness.sweep.attempts import REPEAT, SEED, Attempts
from harness.sweep.claim import study_lock
from harness.sweep.schedule import Configuration, Scheduler, configurations
from harness.sweep.study import OpenStudy
from harness.tracking import MlflowTracker, client_for
from harness.tracking.liveness import pid_alive
from harness.tracking.records import DESCRIPTION, markdown_table
from harness.tracking.redact import redact_text

__all__ = ["SweepResult", "configs_table", "fail_parent", "finalize", "trials_table", "verdict"]


@dataclass
class SweepResult:
    study_name: str
    storage: str
    parent_run_id: str
    experiment: str
    table: Any  # pandas.DataFrame, one row per trial
    best: dict[str, Any] | None
    interrupted: bool = False
    counts: dict[str, int] = field(default_factory=dict)
    objective: str = "val/loss"
    configs: Any = None  # a repeated sweep: pandas.DataFrame, one row per configuration (mean, interval, verdict)
    seeds: list[int] | None = None  # a repeated sweep's seed list
    procedure: str = ""  # a repeated sweep: which procedure made the verdicts
    tracking_uri: str = ""
    artifacts: list[str] = field(default_factory=list)  # what the parent run received from this invocation
    signal: int | None = None  # the signal that interrupted the sweep (SIGINT, SIGTERM)
    still_running: int = 0  # trials other workers were still running when this invocation finished


def verdict(final_loss: float | None, ln_vocab: float | None, stop_reason: str | None) -> str:
    """Classify a finished run from its numbers: diverged, learned, partly learned or barely moved (vs ln(vocab))."""
    if stop_reason == "diverged":
        return "diverged"
    if final_loss is None:
        return "-"
    if not math.isfinite(final_loss):
        return "diverged"
    if ln_vocab is None or ln_vocab <= 0:
        return "-"
    ratio = final_loss / ln_vocab
    if ratio > 1.1:
        return "diverged"
    if ratio >= 0.9:
        return "barely moved"
    if ratio <= 0.75:
        return "learned"
    return "partly learned"


def _slug(metric: str) -> str:
    return metric.replace("/", "_")


def trials_table(configs: Sequence[Configuration], *, objective: ObjectiveSpec, uri: str, repeated: bool) -> Any:
    """One row per seed run, in the order they were first taken (a retried attempt is replaced by its retry): its
    configuration and seed (a repeated sweep), the swept values, the objective, the best and final value of the
    objective metric, the final train loss, steps, steps/epoch, wall time, stop_reason, verdict and run id."""
    import pandas as pd

    client = client_for(uri)
    runs = [(c, t) for c in configs for t in c.runs.values()]
    runs.sort(key=lambda ct: (ct[0].order, ct[1].number) if repeated else (ct[1].number,))
    return pd.DataFrame([_row(client, t, c, objective, repeated) for c, t in runs])


def _row(client: Any, t: Any, c: Configuration, objective: ObjectiveSpec, repeated: bool) -> dict[str, Any]:
    metric = objective.metric
    row: dict[str, Any] = {"trial": t.number}
    if repeated:
        row.update({"config_id": c.cid, "repeat": int(t.user_attrs.get(REPEAT, 0)), "seed": int(t.user_attrs[SEED])})
    row.update({"state": t.state.name, **c.params, "objective": t.value})
    run_id = t.user_attrs.get("mlflow_run_id")
    metrics: dict[str, float] = {}
    params: dict[str, str] = {}
    tags: dict[str, str] = {}
    if run_id:
        try:
            run = client.get_run(run_id)
            metrics, params, tags = run.data.metrics, run.data.params, run.data.tags
        except Exception:
            pass
        if repeated and tags and "harness.config_id" not in tags:
            # a run of the single-seed study this one grew from (more seeds): now a seed run of its configuration
            MlflowTracker(client, run_id).set_tags({"harness.config_id": c.cid, "harness.config": c.label,
                                                    "harness.repeat": str(t.user_attrs.get(REPEAT, 0)),
                                                    "harness.seed": str(t.user_attrs[SEED])})
    history = [m.value for m in client.get_metric_history(run_id, metric) if math.isfinite(m.value)] if metric in metrics else []
    row[f"best_{_slug(metric)}"] = (min(history) if objective.direction == "minimize" else max(history)) if history else None
    row[f"final_{_slug(metric)}"] = metrics.get(f"summary/final_{_slug(metric)}", metrics.get(metric))
    if metric != "val/accuracy" and "val/accuracy" in metrics:  # a classifier: its accuracy next to any objective
        acc = [m.value for m in client.get_metric_history(run_id, "val/accuracy") if math.isfinite(m.value)]
        row["best_val_accuracy"] = max(acc) if acc else None
    # The textbook's "final loss" is the mean training loss of the last epoch; use it when epochs are used.
    row["final_train_loss"] = metrics.get("train/loss_epoch", metrics.get("summary/final_train_loss", metrics.get("train/loss")))
    row["final_train_loss_step"] = metrics.get("summary/final_train_loss", metrics.get("train/loss"))
    row["steps"] = int(metrics["summary/steps"]) if "summary/steps" in metrics else None
    row["steps_per_epoch"] = int(params["derived.steps_per_epoch"]) if "derived.steps_per_epoch" in params else None
    row["wall_time_s"] = metrics.get("summary/wall_time_s")
    stop = t.user_attrs.get("stop_reason") or tags.get("stop_reason")
    row["stop_reason"] = stop
    # chance level: ln(vocabulary) for a language model, ln(number of labels) for a classifier
    ln_key = "derived.ln_labels" if "derived.ln_labels" in params else "derived.ln_vocab"
    ln_v = float(params[ln_key]) if ln_key in params else None
    row["verdict"] = _trial_verdict(t.state.name, stop, row["final_train_loss"], ln_v, bool(run_id))
    row["ln_vocab"] = ln_v
    row["run_id"] = run_id
    reason = t.user_attrs.get("fail_reason")
    row["fail_reason"] = redact_text(reason) if isinstance(reason, str) else reason  # a study written before redaction, too
    return row


def _trial_verdict(state: str, stop: str | None, final_train_loss: float | None, ln_vocab: float | None, has_run: bool) -> str:
    """A verdict is only given for a trial that ran to an end; an unfinished one says why it has none."""
    if state in ("WAITING", "RUNNING"):
        return "interrupted" if stop == "interrupted" else "not run yet" if state == "WAITING" else "running"
    if stop == "diverged":
        return verdict(float("nan"), ln_vocab, stop)
    if not has_run or stop in ("invalid", "failed", "crashed"):
        return "-"
    return verdict(final_train_loss, ln_vocab, stop)


def configs_table(spec: Spec, table: Any, configs: Sequence[Configuration]) -> Any:
    """A repeated sweep, one row per configuration: its swept values, state, the mean, standard deviation and 95 % t
    interval over its finished seed runs of the objective and the headline metrics, and the comparison with the best
    configuration (:func:`harness.stats.summarize_groups`: Holm over every pair, family-wise 5 %). A configuration
    the paired rule stopped says so, with the rule's evidence as its note."""
    import pandas as pd

    from harness.stats import procedure, summarize_groups

    sw = spec.sweep
    assert sw is not None
    seeds = sw.seed_list(spec.seed)
    lower = sw.objective.direction == "minimize"
    slug = _slug(sw.objective.metric)
    columns = {"objective": lower, f"best_{slug}": lower, f"final_{slug}": lower, "final_train_loss": True, "best_val_accuracy": False}
    done = table[(table["state"] == "COMPLETE") & table["seed"].isin(seeds)] if "state" in table else table.iloc[0:0]
    stopped = [c.cid for c in configs if c.stopped is not None]
    if done.empty:
        out = pd.DataFrame({"config_id": pd.Series(dtype=object), "n": pd.Series(dtype=int)})
    else:
        out = summarize_groups(done, group="config_id", pair="seed", columns={c: v for c, v in columns.items() if c in table},
                               objective="objective", stopped=stopped)
    meta = []
    for c in configs:
        failed = c.failed()
        note = c.stopped or (failed.user_attrs.get("fail_reason") if failed is not None else None)
        note = redact_text(note) if isinstance(note, str) else note
        meta.append({"config_id": c.cid, "config": c.label, **c.params, "config_state": c.state(seeds), "note": note})
    if not meta:
        return out
    merged = pd.DataFrame(meta).merge(out, on="config_id", how="left")
    merged["n"] = merged["n"].fillna(0).astype(int)
    merged["verdict"] = merged["verdict"].fillna("no finished seed run") if "verdict" in merged else "no finished seed run"
    merged.loc[merged["config_id"].isin(stopped), "verdict"] = "stopped"
    merged.attrs["best"] = out.attrs.get("best")
    merged.attrs["procedure"] = out.attrs.get("procedure", procedure(len(configs)))
    return merged


def finalize(spec: Spec, opened: OpenStudy, *, uri: str, interrupted: bool) -> SweepResult:
    """The result tables; and, when no seed run is left to run or running anywhere, the parent run's final artifacts,
    metrics and status (so the parent of a study shared by several invocations ends once, when the study ends).

    A plain sweep's counts and best are its trials'; a repeated sweep's are its configurations', and ``configs`` holds
    one row per configuration."""
    sw = spec.sweep
    assert sw is not None
    seeds = sw.seed_list(spec.seed)
    with study_lock(opened.url, opened.name):  # fold in what the last seed runs left (stops are written once)
        configs = Scheduler(Attempts(opened.study, opened.storage), spec, opened.total).settle()
    table = trials_table(configs, objective=sw.objective, uri=uri, repeated=sw.repeated)
    config_rows = configs_table(spec, table, configs) if sw.repeated else None
    with study_lock(opened.url, opened.name):
        configs = configurations(opened.study)
        live = [t for c in configs for t in c.runs.values()]
        running_elsewhere = sum(t.state.name == "RUNNING" for t in live)
        unfinished = sum(t.state.name in ("RUNNING", "WAITING") for t in live)
        states = [c.state(seeds) for c in configs]
        counts = {"complete": states.count("COMPLETE"), "pruned": states.count("PRUNED"), "failed": states.count("FAIL"),
                  "running": states.count("RUNNING")}
        if sw.repeated:
            counts["seed_runs"] = sum(t.state.name == "COMPLETE" for t in live)
        best = _best(spec, table, config_rows)
        artifacts: list[str] = []
        if running_elsewhere == 0 and (interrupted or unfinished == 0):
            artifacts = _close_parent(spec, opened, table, best, counts, uri=uri, interrupted=interrupted, configs=config_rows,
                                      stopped={c.cid: c.stopped for c in configs if c.stopped})
    return SweepResult(study_name=opened.name, storage=opened.url, parent_run_id=opened.parent_run_id, experiment=spec.experiment,
                       table=table, best=best, interrupted=interrupted, counts=counts, objective=sw.objective.metric,
                       configs=config_rows, seeds=seeds if sw.repeated else None, tracking_uri=uri, artifacts=artifacts,
                       still_running=running_elsewhere,
                       procedure=config_rows.attrs.get("procedure", "") if config_rows is not None else "")


def _best(spec: Spec, table: Any, configs: Any) -> dict[str, Any] | None:
    """A plain sweep's best trial. A repeated sweep's best configuration (the best mean among those that ran the most
    seeds, as its verdicts are judged), with its interval and the run of its best seed (what ``harness generate`` and
    ``init.from`` take from the parent). None while nothing has finished."""
    sw = spec.sweep
    assert sw is not None
    lower = sw.objective.direction == "minimize"
    done = table[(table["state"] == "COMPLETE") & table["objective"].notna()] if "state" in table else table.iloc[0:0]
    if done.empty:
        return None
    if configs is None:
        top = done.sort_values("objective", ascending=lower, kind="stable").iloc[0]
        return {"trial": int(top["trial"]), "value": float(top["objective"]), "params": {p: _plain(top[p]) for p in sw.params if p in top},
                "run_id": top["run_id"]}
    cid = configs.attrs.get("best")
    if cid is None:
        return None
    row = configs[configs["config_id"] == cid].iloc[0]
    runs = done[done["config_id"] == cid]
    top = runs.sort_values("objective", ascending=lower, kind="stable").iloc[0]
    return {"trial": int(top["trial"]), "value": float(row["objective_mean"]), "params": {p: _plain(row[p]) for p in sw.params if p in row},
            "config_id": cid, "config": row.get("config"), "n": int(row["n"]),
            "ci": [float(row.get("objective_ci_low", math.nan)), float(row.get("objective_ci_high", math.nan))],
            "run_id": top["run_id"], "seed": int(top["seed"])}


def _plain(v: Any) -> Any:
    """A value out of a DataFrame cell as plain Python (numpy's scalars print as np.float64(...) and do not serialise)."""
    return v.item() if hasattr(v, "item") and not isinstance(v, (list, dict, str)) else v


def fail_parent(opened: OpenStudy, *, uri: str, error: BaseException) -> bool:
    """The sweep itself broke (not a trial: those FAIL on their own): end the parent run FAILED with the error, unless
    a worker elsewhere still runs a trial of the study (it closes the parent when it ends). Returns whether it did.
    Never raises: the original error is what the user must see."""
    from optuna.trial import TrialState

    def still_running(t: Any) -> bool:  # by a worker other than this process, and not one that died on this host
        if t.state != TrialState.RUNNING:
            return False
        pid, host = t.user_attrs.get("pid"), t.user_attrs.get("host")
        if host != socket.gethostname() or pid is None:
            return True
        return int(pid) != os.getpid() and pid_alive(int(pid))

    try:
        with study_lock(opened.url, opened.name):
            if any(still_running(t) for t in opened.study.get_trials(deepcopy=False)):
                return False
            tracker = MlflowTracker(client_for(uri), opened.parent_run_id)
            tracker.set_tags({"stop_reason": "failed", "harness.message": redact_text(f"{type(error).__name__}: {error}")[:5000]})
            tracker.end("FAILED")
        return True
    except Exception:
        return False


def _close_parent(spec: Spec, opened: OpenStudy, table: Any, best: dict[str, Any] | None, counts: dict[str, int], *, uri: str,
                  interrupted: bool, configs: Any = None, stopped: dict[str, str] | None = None) -> list[str]:
    """trials.csv, best_params.json, the curves and objective plots, the count metrics; then end the parent run.
    A repeated sweep adds configs.csv and, per configuration, the mean, std, interval and n of the objective and the
    headline metrics (``c001/objective/mean``, ...)."""
    sw = spec.sweep
    assert sw is not None
    tracker = MlflowTracker(client_for(uri), opened.parent_run_id)
    tracker.log_text(table.to_csv(index=False), "trials.csv")
    tracker.log_dict(best or {}, "best_params.json")
    artifacts = ["trials.csv", "best_params.json"]
    metrics: dict[str, float] = {"n_complete": counts["complete"], "n_pruned": counts["pruned"], "n_failed": counts["failed"]}
    tags = {"harness.best_trial": best["trial"] if best else "-", "harness.best_run_id": (best or {}).get("run_id") or "",
            "stop_reason": "interrupted" if interrupted else "completed"}
    if configs is not None:
        tracker.log_text(configs.to_csv(index=False), "configs.csv")
        artifacts.append("configs.csv")
        metrics.update(_config_metrics(configs))
        metrics["n_seed_runs"] = counts.get("seed_runs", 0)
        tags["harness.best_config"] = (best or {}).get("config_id") or "-"
        tags["harness.procedure"] = configs.attrs.get("procedure", "")
        if stopped:  # the paired rule's evidence, per stopped configuration
            tags["harness.stopped"] = json.dumps(stopped)[:5000]
    artifacts += _log_parent_plots(spec, tracker, table, opened.name)
    tags[DESCRIPTION] = _description(spec, opened.name, table, configs, counts)
    if best is not None and best.get("run_id"):
        tracker.adopt_records(best["run_id"])  # the sweep's run lists its best trial's data (the Dataset column) and model
    if best is not None:
        metrics["best_value"] = best["value"]
    for k, v in metrics.items():
        tracker.log_metric(k, float(v), step=len(table))
    tracker.set_tags(tags)
    tracker.end("KILLED" if interrupted else "FINISHED")
    return artifacts


def _description(spec: Spec, study_name: str, table: Any, configs: Any, counts: dict[str, int]) -> str:
    """The parent run's description in the MLflow UI (Markdown): what was swept, and the trial (or configuration)
    table, best first."""
    sw = spec.sweep
    assert sw is not None
    lower = sw.objective.direction == "minimize"
    head = (f"Sweep `{study_name}` of `{spec.name}` over {', '.join(f'`{p}`' for p in sw.params)}: {counts['complete']} complete, "
            f"{counts['pruned']} pruned, {counts['failed']} failed; objective {sw.objective.metric} ({sw.objective.direction}).")
    if configs is not None and "objective_mean" in configs:
        frame, key = configs, "objective_mean"
        columns = ["config_id", "config", "n", "objective_mean", "objective_ci_low", "objective_ci_high", "verdict"]
    else:
        frame, key = table, "objective"
        columns = ["trial", *[p for p in sw.params if p in table], "objective", "stop_reason", "verdict", "run_id"]
    if key in frame:
        frame = frame.sort_values(key, ascending=lower, na_position="last")
    rows = [{c: (row.get(c)[:8] if c == "run_id" and isinstance(row.get(c), str) else row.get(c)) for c in columns}
            for row in frame.to_dict("records")]
    return head + "\n\n" + markdown_table(rows, [c for c in columns if c in frame], rest="configs.csv" if configs is not None else "trials.csv")


def _config_metrics(configs: Any) -> dict[str, float]:
    """``<config id>/<column>/<mean|std|ci_low|ci_high>`` and ``<config id>/n`` for every finite aggregate."""
    out: dict[str, float] = {}
    for _, row in configs.iterrows():
        cid = row["config_id"]
        out[f"{cid}/n"] = float(row["n"])
        for col in row.index:
            for stat in ("mean", "std", "ci_low", "ci_high"):
                if col.endswith(f"_{stat}") and not col.startswith("vs_best"):
                    v = row[col]
                    if v is not None and isinstance(v, (int, float)) and math.isfinite(v):
                        out[f"{cid}/{col[: -len(stat) - 1]}/{stat}"] = float(v)
    return out


def _log_parent_plots(spec: Spec, tracker: MlflowTracker, table: Any, study_name: str) -> list[str]:
    """Every trial's objective curve, and the objective against each swept param. A failed plot is tagged, never fatal."""
    from harness import plots

    sw = spec.sweep
    assert sw is not None
    metric = sw.objective.metric
    out: list[str] = []
    try:
        curves: dict[str, Any] = {}
        groups: dict[str, list[Any]] = {}
        for _, row in table.iterrows():
            if row.get("run_id"):
                values = ", ".join(f"{k.split('.')[-1]}={_short(row[k])}" for k in sw.params if k in row)
                hist = tracker.client.get_metric_history(row["run_id"], metric)
                curve = ([m.step for m in hist], [m.value for m in hist])
                if "config_id" in row and isinstance(row["config_id"], str):  # a repeated sweep: one band per configuration
                    groups.setdefault(f"{row['config_id']}: {values or study_name}", []).append(curve)
                else:
                    curves[f"t{row['trial']}: {values}"] = curve
        if groups:
            tracker.log_figure(plots.overlay(_means(groups), metric=metric, bands=_bands(groups),
                                             title=f"{study_name}: {metric}, mean and 95 % interval over seeds"), "plots/curves.png")
        else:
            tracker.log_figure(plots.overlay(curves, metric=metric, title=f"{study_name}: {metric} per trial"), "plots/curves.png")
        out.append("plots/curves.png")
        done = table[table["objective"].notna()] if "objective" in table else table.iloc[0:0]
        for path, space in sw.params.items():
            if path not in done or done.empty:
                continue
            xs = list(done[path])
            log_x = (isinstance(space, ParamRange) and space.log) or _spans_decades(xs)
            name = f"plots/objective_vs_{path.replace('.', '_')}.png"
            labels = list(done["config_id"]) if "config_id" in done else [f"t{n}" for n in done["trial"]]
            fig = plots.objective_vs_param(xs, list(done["objective"]), param=path, objective=f"{sw.objective.summary} {metric}",
                                           log_x=log_x, labels=labels)
            tracker.log_figure(fig, name)
            out.append(name)
    except Exception as exc:
        tracker.set_tags({"harness.plot_error": str(exc)[:500]})
    return out


def _means(groups: dict[str, list[Any]]) -> dict[str, Any]:
    from harness.stats import band

    out = {}
    for label, curves in groups.items():
        steps, mean, _, _ = band(curves)
        out[f"{label} (n={len(curves)})"] = (steps, mean) if steps else curves[0]
    return out


def _bands(groups: dict[str, list[Any]]) -> dict[str, Any]:
    from harness.stats import band

    out = {}
    for label, curves in groups.items():
        steps, _, low, high = band(curves)
        if steps:
            out[f"{label} (n={len(curves)})"] = (steps, low, high)
    return out


def _spans_decades(xs: list[Any]) -> bool:
    nums = [x for x in xs if isinstance(x, (int, float)) and not isinstance(x, bool)]
    return bool(nums) and min(nums) > 0 and max(nums) / min(nums) >= 100


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)
