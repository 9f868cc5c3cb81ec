"""One attempt at a seed run: its configuration's values and seed -> run spec -> the job (a new MLflow run, or the
resumed one of a retried attempt) -> the objective."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from harness.errors import HarnessError, SpecError
from harness.spec import Spec, variant
from harness.sweep.schedule import SeedRun
from harness.sweep.study import STUDY_ID
from harness.testing import faults
from harness.tracking import TrackingError, client_for
from harness.tracking.liveness import run_is_set_up
from harness.tracking.records import OBJECTIVE_METRIC
from harness.tracking.redact import redact_text, redact_url
from harness.tracking.tracker import retrying
from harness.train.events import EvalEnd, Event, StopReason, StopTraining

__all__ = ["RunLookupFailed", "TrialInterrupted", "TrialOutcome", "TrialSettings", "run_trial"]


@dataclass(frozen=True)
class TrialOutcome:
    state: str  # the Optuna state to tell: COMPLETE, PRUNED or FAIL
    value: float | None = None
    stop_reason: StopReason | None = None
    fail_reason: str | None = None


class TrialInterrupted(Exception):
    """Ctrl-C or SIGTERM during a trial (``signum``), or a trainer callback that stopped it as interrupted (None: the
    worker's fence, see worker.py): the run has checkpointed and ended KILLED, and can be resumed."""

    def __init__(self, signum: int | None):
        super().__init__("interrupted")
        self.signum = signum


class RunLookupFailed(TrackingError):
    """A retried trial's MLflow run could not be looked up: the store did not answer, even after the retries. The
    trial must not start a new run (its own run, with its checkpoints, would be orphaned and it would train again from
    step 0); the worker queues it again and stops."""


@dataclass(frozen=True)
class TrialSettings:
    """What every trial of one sweep shares (picklable: spawned workers receive it)."""

    study_name: str
    study_id: str  # the study instance (harness.study_id): a study started over with --fresh gets a new one
    repeated: bool  # the sweep runs every configuration under several seeds
    parent_run_id: str
    tracking_uri: str
    spec_file: str
    threads: int | None  # torch threads per trial (workers share the machine's cores)
    progress: Callable[[str], Any] | None  # label -> a trainer callback that shows progress, or None


def run_trial(settings: TrialSettings, trial: Any, base: Spec, run: SeedRun, *,
              watch: Callable[[Event], None] | None = None) -> TrialOutcome:
    """Run attempt ``trial`` at the seed run ``run`` to its end and say how it went. Raises TrialInterrupted on Ctrl-C
    or SIGTERM (or when ``watch``, a trainer callback of the worker's, stops it as interrupted), and RunLookupFailed
    when a retry cannot find out whether its run exists. The study's pruner (the paired rule too) is asked at every
    evaluation."""
    import signal

    sw = base.sweep
    assert sw is not None
    names = _Names(settings, trial.number, base, run)
    try:
        spec = _trial_spec(settings, base, run, names)
    except SpecError as exc:
        return TrialOutcome("FAIL", stop_reason=StopReason.INVALID, fail_reason=redact_text(exc.render())[:2000])
    progress = settings.progress(names.progress) if settings.progress else None
    callbacks: list[Any] = [_Pruning(trial, sw.objective.metric)]
    if watch is not None:
        callbacks.append(watch)
    faults.point("trial_start")
    try:
        outcome = _execute(settings, trial, spec, callbacks, progress, names.tags())
    except KeyboardInterrupt:
        raise TrialInterrupted(signal.SIGINT) from None
    except RunLookupFailed:
        raise  # not this trial's failure: the worker queues it again
    except HarnessError as exc:
        return TrialOutcome("FAIL", stop_reason=StopReason.FAILED, fail_reason=redact_text(str(exc))[:2000])
    finally:
        if progress is not None and hasattr(progress, "close"):
            progress.close()
    run_id, stop, status, message, signum = outcome
    if stop is StopReason.INTERRUPTED:
        raise TrialInterrupted(signum)
    if stop is StopReason.PRUNED:
        return TrialOutcome("PRUNED", stop_reason=stop)
    if status != "FINISHED":
        return TrialOutcome("FAIL", stop_reason=stop, fail_reason=redact_text(message) if message else stop.value)
    value = _objective_value(client_for(settings.tracking_uri), run_id, sw.objective.metric, summary=sw.objective.summary,
                             direction=sw.objective.direction)
    if value is None:
        return TrialOutcome("FAIL", stop_reason=stop, fail_reason=f"the objective metric {sw.objective.metric} was never logged")
    # The score the sweep judged the run by, on the run itself: results read the same number, whatever its summary
    # (the best train/loss has no metric of its own).
    retrying("log the objective", lambda: client_for(settings.tracking_uri).log_metric(run_id, OBJECTIVE_METRIC, value))
    return TrialOutcome("COMPLETE", value=value, stop_reason=stop)


@dataclass(frozen=True)
class _Names:
    """How an attempt's run is named and tagged. A plain sweep's runs are its trials (``lr_sweep-t003``); a repeated
    sweep's are seed runs of configurations (``lr_sweep-c001-s1338``), tagged so that results group them."""

    settings: TrialSettings
    number: int
    base: Spec
    run: SeedRun

    @property
    def run_name(self) -> str:
        if not self.settings.repeated:
            return f"{self.base.name}-t{self.number:03d}"
        return f"{self.base.name}-{self.run.cid}-s{self.run.seed}" if self.run.params else f"{self.base.name}-s{self.run.seed}"

    @property
    def progress(self) -> str:
        return f"{self.run.cid} seed {self.run.seed}" if self.settings.repeated else f"trial {self.number}"

    def tags(self) -> dict[str, str]:
        tags = {"harness.role": "trial", "harness.trial": str(self.number), "harness.study": self.settings.study_name,
                STUDY_ID: self.settings.study_id}
        if self.settings.repeated:
            tags.update({"harness.config_id": self.run.cid, "harness.config": self.run.label, "harness.repeat": str(self.run.repeat),
                         "harness.seed": str(self.run.seed)})
        return tags


def _trial_spec(settings: TrialSettings, base: Spec, run: SeedRun, names: _Names) -> Spec:
    values = dict(run.params)
    if settings.threads:
        values["train.threads"] = settings.threads
    if "seed" not in values:  # a plain sweep may sweep the seed itself
        values["seed"] = run.seed
    return variant(base, values, file=f"{settings.spec_file} (trial {names.number})", run_name=names.run_name)


def _execute(settings: TrialSettings, trial: Any, spec: Spec, callbacks: list[Any], progress: Any,
             tags: dict[str, str]) -> tuple[str, StopReason, str, str, int | None]:
    """The trial's MLflow run, to its end: (run id, stop reason, status, message, signal).

    A retried trial carries the MLflow run of its first attempt: a finished run is only reported (its worker died
    before telling the study); a set-up run is resumed from its last checkpoint; a run whose worker died while
    creating it is adopted and set up. A first attempt starts a new run under the sweep's parent run."""
    from harness import job

    client = client_for(settings.tracking_uri)
    run = _existing_run(client, trial.user_attrs.get("mlflow_run_id"), trial=trial.number, uri=settings.tracking_uri)
    stop = run.data.tags.get("stop_reason") if run is not None else None
    if run is not None and run.info.status in ("FINISHED", "FAILED", "KILLED") and stop is not None and not StopReason.is_retry(stop):
        # it ended (completed, early-stopped, pruned, diverged, failed) before its worker died: only the study was not told
        return run.info.run_id, StopReason(stop), run.info.status, run.data.tags.get("harness.message", ""), None
    if run is not None and run_is_set_up(client, run.info.run_id):
        out = job.resume(run.info.run_id, uri=settings.tracking_uri, callbacks=callbacks, progress=progress, assume_dead=True)
    else:
        out = job.run(spec, run_id=run.info.run_id if run is not None else None, uri=settings.tracking_uri,
                      parent_run_id=settings.parent_run_id, callbacks=callbacks, progress=progress,
                      tags=tags,
                      on_start=lambda run_id: trial.set_user_attr("mlflow_run_id", run_id))
    return out.run_id, out.stop_reason, out.status, out.message, out.signal


def _existing_run(client: Any, run_id: str | None, *, trial: int, uri: str) -> Any | None:
    """The MLflow run of an earlier attempt of this trial; None for a first attempt, or when the store says that run
    does not exist (or was deleted). Only that answer means "no run": any other error is tried again through the
    tracking layer's retries, and then raises RunLookupFailed."""
    from mlflow.exceptions import MlflowException

    if not run_id:
        return None

    def lookup() -> Any | None:
        try:
            return client.get_run(run_id)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise

    try:
        run = retrying(f"look up run {run_id}", lookup)
    except TrackingError as exc:
        raise RunLookupFailed(f"trial {trial} is a retry of MLflow run {run_id}, but the tracking store {redact_url(uri)} did not say "
                              f"whether that run exists ({exc}). The trial is queued again and continues that run when the "
                              "sweep runs again (the same command) once the store answers; it does not start a new run.") from None
    return None if run is None or run.info.lifecycle_stage == "deleted" else run


class _Pruning:
    """Trainer callback: report the objective metric at every evaluation; stop the run when Optuna says prune."""

    def __init__(self, trial: Any, metric: str):
        self.trial = trial
        self.metric = metric

    def __call__(self, event: Event) -> None:
        from optuna.exceptions import UpdateFinishedTrialError

        if not isinstance(event, EvalEnd) or self.metric not in event.metrics:
            return
        value = event.metrics[self.metric]
        if not math.isfinite(value):
            return
        try:
            self.trial.report(value, step=event.step)
            prune = event.step > 0 and self.trial.should_prune()
        except UpdateFinishedTrialError:
            # Another worker ended it (its heartbeat looked stale) and queued a retry, which continues this run:
            # stop writing to it, as the worker's fence does (see worker.py).
            raise StopTraining(StopReason.INTERRUPTED, f"trial {self.trial.number} was ended by another worker; its retry continues "
                                                       "this run") from None
        except _study_unreachable():
            return  # no verdict this time; the worker's fence stops the run if the study database stays away
        if prune:
            pruner = self.trial.study.pruner
            why = pruner.why(self.trial.study, self.trial) if hasattr(pruner, "why") else None
            raise StopTraining(StopReason.PRUNED, f"its configuration stopped: {why}" if why else
                               f"pruned by {type(pruner).__name__} at step {event.step}")


def _study_unreachable() -> tuple[type[BaseException], ...]:
    """What a study storage raises when its database cannot be reached (Optuna wraps SQLAlchemy's errors; a journal
    file raises OSError). A trainer callback that meets one goes on: a sweep's outage must not end a run as failed,
    which no retry would resume; the worker's fence (worker.py) stops the run, resumable, if the outage lasts."""
    from optuna.exceptions import StorageInternalError
    from sqlalchemy.exc import SQLAlchemyError

    return (StorageInternalError, SQLAlchemyError, OSError)


def _objective_value(client: Any, run_id: str, metric: str, *, summary: str, direction: str) -> float | None:
    """The trial's score: the best (or last) finite value of ``metric`` in its run's history."""
    history = [m for m in client.get_metric_history(run_id, metric) if math.isfinite(m.value)]
    if not history:
        return None
    if summary == "last":
        return max(history, key=lambda m: (m.step, m.timestamp)).value
    values = [m.value for m in history]
    return min(values) if direction == "minimize" else max(values)
