"""One trial: sampled values -> run spec -> the job (a new MLflow run, or the resumed one of a retried trial) ->
the objective. Also the sampler and pruner a sweep spec asks for."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from harness.errors import HarnessError, SpecError
from harness.spec import Spec, variant
from harness.sweep.repeats import CONFIG, REPEAT, SEED, PairedPruner, config_id, config_label
from harness.sweep.study import suggest
from harness.testing import faults
from harness.tracking import TrackingError, client_for
from harness.tracking.liveness import run_is_set_up
from harness.tracking.redact import redact_url
from harness.tracking.tracker import retrying
from harness.train.events import EvalEnd, Event, StopReason, StopTraining

__all__ = ["RunLookupFailed", "TrialOutcome", "TrialInterrupted", "make_pruner", "make_sampler", "run_trial"]


def make_sampler(spec: Spec) -> Any:
    """The Optuna sampler, seeded by ``sweep.seed`` (else the spec's seed). A grid's points are queued with fixed
    values, so its sampler never picks; random covers anything left."""
    import optuna

    sw = spec.sweep
    assert sw is not None
    seed = sw.seed if sw.seed is not None else spec.seed
    if sw.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if sw.sampler == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed)
    if sw.sampler == "qmc":
        return optuna.samplers.QMCSampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def make_pruner(spec: Spec) -> Any:
    import optuna

    p = spec.sweep.pruner  # type: ignore[union-attr]
    if p.name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)
    if p.name == "percentile":
        return optuna.pruners.PercentilePruner(percentile=p.percentile, n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)
    if p.name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=p.min_resource, reduction_factor=p.reduction_factor)
    if p.name == "hyperband":  # Optuna's own type hint says int, but it takes "auto" as SuccessiveHalvingPruner does
        return optuna.pruners.HyperbandPruner(min_resource=p.min_resource, reduction_factor=p.reduction_factor)  # type: ignore[arg-type]
    if p.name == "paired":
        return PairedPruner(p_threshold=p.p_threshold)
    return optuna.pruners.NopPruner()


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
    parent_run_id: str
    tracking_uri: str
    spec_file: str
    threads: int | None  # torch threads per trial (workers share the machine's cores)
    progress: Callable[[str], Any] | None  # label -> a trainer callback that shows progress, or None


def run_trial(settings: TrialSettings, trial: Any, base: Spec, *, stopped: Callable[[int], str | None] | None = None,
              watch: Callable[[Event], None] | None = None) -> TrialOutcome:
    """Run one trial to its end and say how it went. Raises TrialInterrupted on Ctrl-C or SIGTERM (or when ``watch``, a
    trainer callback of the worker's, stops it as interrupted), and RunLookupFailed when a retry cannot find out
    whether its run exists.

    A seed run of a repeated sweep (its trial carries its configuration, repeat and seed) runs under its seed, with
    its configuration in its tags; ``stopped(configuration)`` says why that configuration wants no more seed runs
    (the paired rule stopped it), and the run then stops at its next evaluation."""
    import signal

    sw = base.sweep
    assert sw is not None
    params = {path: suggest(trial, path, space) for path, space in sw.params.items()}
    seed_run = _SeedRun.of(trial, base, params)
    try:
        spec = _trial_spec(settings, base, params, trial.number, seed_run)
    except SpecError as exc:
        return TrialOutcome("FAIL", stop_reason=StopReason.INVALID, fail_reason=exc.render()[:2000])
    label = f"trial {trial.number}" if seed_run is None else seed_run.progress_label
    progress = settings.progress(label) if settings.progress else None
    callbacks: list[Any] = [_Pruning(trial, sw.objective.metric)]
    if seed_run is not None and stopped is not None:
        callbacks.append(_ConfigWatch(lambda: stopped(seed_run.config)))  # type: ignore[union-attr]
    if watch is not None:
        callbacks.append(watch)
    faults.point("trial_start")
    try:
        outcome = _execute(settings, trial, spec, callbacks, progress, seed_run)
    except KeyboardInterrupt:
        raise TrialInterrupted(signal.SIGINT) from None
    except RunLookupFailed:
        raise  # not this trial's failure: the worker queues it again
    except HarnessError as exc:
        return TrialOutcome("FAIL", stop_reason=StopReason.FAILED, fail_reason=str(exc)[:2000])
    finally:
        if progress is not None and hasattr(progress, "close"):
            progress.close()
    run_id, stop, status, message, signum = outcome
    if stop is StopReason.INTERRUPTED:
        raise TrialInterrupted(signum)
    if stop is StopReason.PRUNED:
        return TrialOutcome("PRUNED", stop_reason=stop)
    if status != "FINISHED":
        return TrialOutcome("FAIL", stop_reason=stop, fail_reason=message or stop.value)
    value = _objective_value(client_for(settings.tracking_uri), run_id, sw.objective.metric, summary=sw.objective.summary,
                             direction=sw.objective.direction)
    if value is None:
        return TrialOutcome("FAIL", stop_reason=stop, fail_reason=f"the objective metric {sw.objective.metric} was never logged")
    return TrialOutcome("COMPLETE", value=value, stop_reason=stop)


@dataclass(frozen=True)
class _SeedRun:
    """What a repeated sweep's seed run knows of itself (from its trial's user attributes)."""

    config: int  # its configuration's trial number
    repeat: int
    seed: int
    label: str  # the configuration's swept values, readable
    run_name: str

    @classmethod
    def of(cls, trial: Any, base: Spec, params: dict[str, Any]) -> _SeedRun | None:
        attrs = trial.user_attrs
        if CONFIG not in attrs:
            return None
        config, repeat, seed = int(attrs[CONFIG]), int(attrs[REPEAT]), int(attrs[SEED])
        name = f"{base.name}-{config_id(config)}-s{seed}" if params else f"{base.name}-s{seed}"
        return cls(config, repeat, seed, config_label(params, base.name), name)

    @property
    def progress_label(self) -> str:
        return f"{config_id(self.config)} seed {self.seed}"

    def tags(self) -> dict[str, str]:
        return {"harness.config_id": config_id(self.config), "harness.config": self.label, "harness.repeat": str(self.repeat),
                "harness.seed": str(self.seed)}


def _trial_spec(settings: TrialSettings, base: Spec, params: dict[str, Any], number: int, seed_run: _SeedRun | None) -> Spec:
    values = dict(params)
    if settings.threads:
        values["train.threads"] = settings.threads
    name = f"{base.name}-t{number:03d}"
    if seed_run is not None:
        values["seed"] = seed_run.seed
        name = seed_run.run_name
    return variant(base, values, file=f"{settings.spec_file} (trial {number})", run_name=name)


def _execute(settings: TrialSettings, trial: Any, spec: Spec, callbacks: list[Any], progress: Any,
             seed_run: _SeedRun | None = None) -> tuple[str, StopReason, str, str, int | None]:
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
                      tags={"harness.role": "trial", "harness.trial": str(trial.number), "harness.study": settings.study_name,
                            **(seed_run.tags() if seed_run is not None else {})},
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
            raise StopTraining(StopReason.PRUNED, f"pruned by {type(self.trial.study.pruner).__name__} at step {event.step}")


def _study_unreachable() -> tuple[type[BaseException], ...]:
    """What a study storage raises when its database cannot be reached (Optuna wraps SQLAlchemy's errors; a journal
    file raises OSError). A trainer callback that meets one goes on: a sweep's outage must not end a run as failed,
    which no retry would resume; the worker's fence (worker.py) stops the run, resumable, if the outage lasts."""
    from optuna.exceptions import StorageInternalError
    from sqlalchemy.exc import SQLAlchemyError

    return (StorageInternalError, SQLAlchemyError, OSError)


class _ConfigWatch:
    """Trainer callback for a seed run: stop at an evaluation once its configuration wants no more seed runs."""

    def __init__(self, why: Callable[[], str | None]):
        self.why = why

    def __call__(self, event: Event) -> None:
        if isinstance(event, EvalEnd) and event.step > 0:
            try:
                reason = self.why()
            except _study_unreachable():
                return  # asked again at the next evaluation (see _study_unreachable)
            if reason is not None:
                raise StopTraining(StopReason.PRUNED, f"its configuration stopped: {reason}")


def _objective_value(client: Any, run_id: str, metric: str, *, summary: str, direction: str) -> float | None:
    """The trial's score: the best (or last) finite value of ``metric`` in its run's history."""
    history = [m for m in client.get_metric_history(run_id, metric) if math.isfinite(m.value)]
    if not history:
        return None
    if summary == "last":
        return max(history, key=lambda m: (m.step, m.timestamp)).value
    values = [m.value for m in history]
    return min(values) if direction == "minimize" else max(values)
