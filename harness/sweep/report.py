"""A sweep's results: one row per trial (from the study and each trial's MLflow run), a verdict per trial, and the
parent run's final table, plots and metrics."""

from __future__ import annotations

import math
import os
import socket
from dataclasses import dataclass, field
from typing import Any

from harness.spec import ObjectiveSpec, ParamRange, Spec
from harness.sweep.storage import retried_numbers
from harness.sweep.study import OpenStudy, from_optuna
from harness.sweep.storage import study_lock
from harness.tracking import MlflowTracker, client_for
from harness.tracking.liveness import pid_alive

__all__ = ["SweepResult", "fail_parent", "finalize", "trials_table", "verdict"]


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


def trials_table(study: Any, *, objective: ObjectiveSpec, uri: str) -> Any:
    """One row per trial (a retried attempt is replaced by its retry): params, the objective, the best and final value
    of the objective metric, the final train loss, steps, steps/epoch, wall time, stop_reason, verdict and run id."""
    import pandas as pd

    client = client_for(uri)
    trials = study.get_trials(deepcopy=False)
    retried = retried_numbers(trials)
    rows = [_row(client, t, objective) for t in trials if t.number not in retried]
    return pd.DataFrame(rows)


def _row(client: Any, t: Any, objective: ObjectiveSpec) -> dict[str, Any]:
    metric = objective.metric
    row: dict[str, Any] = {"trial": t.number, "state": t.state.name, **from_optuna(t.params), "objective": t.value}
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
    history = [m.value for m in client.get_metric_history(run_id, metric) if math.isfinite(m.value)] if metric in metrics else []
    row[f"best_{_slug(metric)}"] = (min(history) if objective.direction == "minimize" else max(history)) if history else None
    row[f"final_{_slug(metric)}"] = metrics.get(f"summary/final_{_slug(metric)}", metrics.get(metric))
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
    row["fail_reason"] = t.user_attrs.get("fail_reason")
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


def finalize(spec: Spec, opened: OpenStudy, *, uri: str, interrupted: bool) -> SweepResult:
    """The result table; and, when no trial is left to run or running anywhere, the parent run's final artifacts,
    metrics and status (so the parent of a study shared by several invocations ends once, when the study ends)."""
    from optuna.trial import TrialState

    sw = spec.sweep
    assert sw is not None
    study = opened.study
    table = trials_table(study, objective=sw.objective, uri=uri)
    with study_lock(opened.url, opened.name):
        trials = study.get_trials(deepcopy=False)
        retried = retried_numbers(trials)
        live = [t for t in trials if t.number not in retried]
        counts = {
            "complete": sum(t.state == TrialState.COMPLETE for t in live),
            "pruned": sum(t.state == TrialState.PRUNED for t in live),
            "failed": sum(t.state == TrialState.FAIL for t in live),
            "running": sum(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in live),
        }
        best = None
        if counts["complete"]:
            bt = study.best_trial
            best = {"trial": bt.number, "value": bt.value, "params": from_optuna(bt.params), "run_id": bt.user_attrs.get("mlflow_run_id")}
        running_elsewhere = sum(t.state == TrialState.RUNNING for t in live)
        artifacts: list[str] = []
        if running_elsewhere == 0 and (interrupted or counts["running"] == 0):
            artifacts = _close_parent(spec, opened, table, best, counts, uri=uri, interrupted=interrupted)
    return SweepResult(study_name=opened.name, storage=opened.url, parent_run_id=opened.parent_run_id, experiment=spec.experiment,
                       table=table, best=best, interrupted=interrupted, counts=counts, objective=sw.objective.metric,
                       tracking_uri=uri, artifacts=artifacts, still_running=running_elsewhere)


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
            tracker.set_tags({"stop_reason": "failed", "harness.message": f"{type(error).__name__}: {error}"[:5000]})
            tracker.end("FAILED")
        return True
    except Exception:
        return False


def _close_parent(spec: Spec, opened: OpenStudy, table: Any, best: dict[str, Any] | None, counts: dict[str, int], *, uri: str,
                  interrupted: bool) -> list[str]:
    """trials.csv, best_params.json, the curves and objective plots, the count metrics; then end the parent run."""
    sw = spec.sweep
    assert sw is not None
    tracker = MlflowTracker(client_for(uri), opened.parent_run_id)
    tracker.log_text(table.to_csv(index=False), "trials.csv")
    tracker.log_dict(best or {}, "best_params.json")
    artifacts = ["trials.csv", "best_params.json"] + _log_parent_plots(spec, tracker, table, opened.name)
    metrics = {"n_complete": counts["complete"], "n_pruned": counts["pruned"], "n_failed": counts["failed"]}
    if best is not None:
        metrics["best_value"] = best["value"]
    for k, v in metrics.items():
        tracker.log_metric(k, float(v), step=len(table))
    tracker.set_tags({"harness.best_trial": best["trial"] if best else "-", "harness.best_run_id": (best or {}).get("run_id") or "",
                      "stop_reason": "interrupted" if interrupted else "completed"})
    tracker.end("KILLED" if interrupted else "FINISHED")
    return artifacts


def _log_parent_plots(spec: Spec, tracker: MlflowTracker, table: Any, study_name: str) -> list[str]:
    """Every trial's objective curve, and the objective against each swept param. A failed plot is tagged, never fatal."""
    from harness import plots

    sw = spec.sweep
    assert sw is not None
    metric = sw.objective.metric
    out: list[str] = []
    try:
        curves = {}
        for _, row in table.iterrows():
            if row.get("run_id"):
                label = f"t{row['trial']}: " + ", ".join(f"{k.split('.')[-1]}={_short(row[k])}" for k in sw.params if k in row)
                hist = tracker.client.get_metric_history(row["run_id"], metric)
                curves[label] = ([m.step for m in hist], [m.value for m in hist])
        tracker.log_figure(plots.overlay(curves, metric=metric, title=f"{study_name}: {metric} per trial"), "plots/curves.png")
        out.append("plots/curves.png")
        done = table[table["objective"].notna()] if "objective" in table else table.iloc[0:0]
        for path, space in sw.params.items():
            if path not in done or done.empty:
                continue
            xs = list(done[path])
            log_x = (isinstance(space, ParamRange) and space.log) or _spans_decades(xs)
            name = f"plots/objective_vs_{path.replace('.', '_')}.png"
            fig = plots.objective_vs_param(xs, list(done["objective"]), param=path, objective=f"{sw.objective.summary} {metric}",
                                           log_x=log_x, labels=[f"t{n}" for n in done["trial"]])
            tracker.log_figure(fig, name)
            out.append(name)
    except Exception as exc:
        tracker.set_tags({"harness.plot_error": str(exc)[:500]})
    return out


def _spans_decades(xs: list[Any]) -> bool:
    nums = [x for x in xs if isinstance(x, (int, float)) and not isinstance(x, bool)]
    return bool(nums) and min(nums) > 0 and max(nums) / min(nums) >= 100


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)
