"""Sweeps: an Optuna study over copies of a run spec, one nested MLflow run per trial.

The driver only makes specs and calls the job: suggest -> overrides -> spec -> job. It never touches the model.

Study and worker mechanics:

* The study lives in an Optuna storage (default: a SQLite file under ``studies/``), so re-running the same spec
  resumes it and several workers (processes, or machines with a shared PostgreSQL URL) can share it.
* Workers take trials one at a time under a lock. For a grid, the worker enqueues the next unclaimed grid point and
  asks for it in the same locked section, so no point runs twice and none is missed.
* A trial whose worker died (kill -9, power loss) is found by a dead pid on this host or a stale Optuna heartbeat. It
  is marked FAIL (``stop_reason=crashed``, its MLflow run FAILED) and re-queued; the retry resumes the same MLflow run
  from its last checkpoint.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import multiprocessing as mp
import os
import signal
import socket
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from harness import _faults
from harness._errors import HarnessError, SpecError, UsageError
from harness._spec import ParamRange, Spec, set_path, spec_from_dict, spec_to_dict
from harness._tracking import _file_lock

__all__ = ["SweepResult", "print_sweep_summary", "run_sweep", "study_storage_url", "trials_table"]

RETRYABLE = ("interrupted", "crashed")
HEARTBEAT_S = 20
GRACE_S = 90


@dataclass
class SweepResult:
    study_name: str
    storage: str
    parent_run_id: str
    experiment: str
    table: Any  # pandas.DataFrame
    best: dict[str, Any] | None
    interrupted: bool = False
    counts: dict[str, int] = field(default_factory=dict)
    objective: str = "val/loss"
    tracking_uri: str = ""
    artifacts: list[str] = field(default_factory=list)
    signal: int | None = None  # the signal that interrupted the sweep (SIGINT, SIGTERM)


# ----------------------------------------------------------------------------------------------------------- storage


def study_storage_url(spec: Spec, study_name: str) -> str:
    assert spec.sweep is not None
    if spec.sweep.storage:
        return spec.sweep.storage
    env = os.environ.get("HARNESS_STUDY_STORAGE")
    if env:
        return env
    Path("studies").mkdir(exist_ok=True)
    return f"sqlite:///studies/{study_name}.db"


def _local_lock_path(storage: str, study_name: str) -> Path:
    if storage.startswith("sqlite:///"):
        db = Path(storage[len("sqlite:///") :])
        return db.with_name(f".{db.name}.{study_name}.lock")
    return Path(tempfile.gettempdir()) / f"harness-{abs(hash((storage, study_name)))}.lock"


def _storage(url: str) -> Any:
    import optuna

    from harness._tracking import _quiet_mlflow

    _quiet_mlflow()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # We drive trials with ask/tell and beat the heartbeat ourselves (see _heartbeat); these features are stable
    # enough for that, so their "experimental" and "use with optimize" warnings are noise for users.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    if url.startswith("sqlite") or url.startswith("postgresql") or url.startswith("mysql"):
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            # Several workers write the same file: wait for the lock instead of failing with "database is locked".
            kwargs["connect_args"] = {"timeout": 120}
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                                          heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback())
    if url.endswith(".log") or url.startswith("journal:"):
        path = url[len("journal:") :] if url.startswith("journal:") else url
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(path))
    return url


def _sampler(spec: Spec) -> Any:
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
    # grid points are enqueued with fixed params, so the sampler never picks them; random covers anything else
    return optuna.samplers.RandomSampler(seed=seed)


def _pruner(spec: Spec) -> Any:
    import optuna

    p = spec.sweep.pruner  # type: ignore[union-attr]
    if p.name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)
    if p.name == "percentile":
        return optuna.pruners.PercentilePruner(percentile=p.percentile, n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)
    if p.name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=p.min_resource, reduction_factor=p.reduction_factor)
    if p.name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1 if p.min_resource == "auto" else p.min_resource,
                                              reduction_factor=p.reduction_factor)
    return optuna.pruners.NopPruner()


def _grid_points(spec: Spec) -> list[dict[str, Any]]:
    import itertools

    sw = spec.sweep
    assert sw is not None
    keys = list(sw.params)
    values = [v if isinstance(v, list) else list(v.choices or []) for v in sw.params.values()]
    return [dict(zip(keys, combo)) for combo in itertools.product(*values)]


def _point_key(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, default=str)


# ----------------------------------------------------------------------------------------------------------- trials


def _suggest(trial: Any, path: str, space: list[Any] | ParamRange) -> Any:
    if isinstance(space, list):
        return trial.suggest_categorical(path, space)
    if space.choices is not None:
        return trial.suggest_categorical(path, space.choices)
    if space.int is not None:
        lo, hi = space.int
        return trial.suggest_int(path, lo, hi, step=int(space.step or 1), log=space.log)
    lo, hi = space.float  # type: ignore[misc]
    return trial.suggest_float(path, lo, hi, step=space.step, log=space.log)


class _Pruning:
    """Trainer callback: report the objective metric at every evaluation; stop the run when Optuna says prune."""

    def __init__(self, trial: Any, metric: str):
        self.trial = trial
        self.metric = metric

    def __call__(self, event: Any) -> None:
        from harness._trainer import EvalEnd, StopTraining

        if not isinstance(event, EvalEnd) or self.metric not in event.metrics:
            return
        value = event.metrics[self.metric]
        if not math.isfinite(value):
            return
        self.trial.report(value, step=event.step)
        if event.step > 0 and self.trial.should_prune():
            raise StopTraining("pruned", f"pruned by {type(self.trial.study.pruner).__name__} at step {event.step}")


def _objective_value(client: Any, run_id: str, metric: str, *, summary: str, direction: str) -> float | None:
    history = [m for m in client.get_metric_history(run_id, metric) if m.value == m.value]
    if not history:
        return None
    if summary == "last":
        return max(history, key=lambda m: (m.step, m.timestamp)).value
    values = [m.value for m in history]
    return min(values) if direction == "minimize" else max(values)


@dataclass
class _Ctx:
    """Everything a worker needs, picklable so spawned processes get it too."""

    spec_dict: dict[str, Any]
    spec_file: str
    study_name: str
    storage: str
    parent_run_id: str
    tracking_uri: str
    n_trials: int | None
    threads: int | None
    quiet: bool
    label_trials: bool
    deadline: float | None


def _make_trial_spec(ctx: _Ctx, params: dict[str, Any], trial_number: int) -> Spec:
    raw = copy.deepcopy(ctx.spec_dict)
    raw.pop("sweep", None)
    for path, value in params.items():
        set_path(raw, path, value)
    raw.setdefault("tracking", {})
    raw["tracking"]["run_name"] = f"{raw['name']}-t{trial_number:03d}"
    if ctx.threads:
        raw.setdefault("train", {})["threads"] = ctx.threads
    return spec_from_dict(raw, file=f"{ctx.spec_file} (trial {trial_number})")


class _TrialFailed(Exception):
    """A trial outcome that is a failure, not a crash of the sweep (diverged, invalid values, run error)."""


class _SweepInterrupted(Exception):
    def __init__(self, signum: int | None = None):
        super().__init__("interrupted")
        self.signum = signum or signal.SIGINT


def _run_trial(ctx: _Ctx, study: Any, trial: Any, base: Spec) -> tuple[str, float | None]:
    """Run one trial; returns (optuna state name, value). Raises _SweepInterrupted to stop the worker."""
    from harness import _job
    from harness._progress import Progress
    from harness._tracking import MlflowTracker

    sw = base.sweep
    assert sw is not None
    trial.set_user_attr("pid", os.getpid())
    trial.set_user_attr("host", socket.gethostname())
    params = {path: _suggest(trial, path, space) for path, space in sw.params.items()}
    try:
        spec = _make_trial_spec(ctx, params, trial.number)
    except SpecError as exc:
        trial.set_user_attr("stop_reason", "invalid")
        trial.set_user_attr("fail_reason", exc.render()[:2000])
        return "FAIL", None
    label = f"trial {trial.number}" if ctx.label_trials else spec.tracking.run_name or ""
    progress = None if ctx.quiet else Progress(label=label, interactive=False, every_s=15.0)
    callbacks = [_Pruning(trial, sw.objective.metric)]
    resume_id = trial.user_attrs.get("mlflow_run_id")
    _faults.point("trial_start")
    try:
        if resume_id and _run_status(ctx.tracking_uri, resume_id) == "FINISHED":
            outcome = None  # the run finished before its worker died; only the study was not told
        elif resume_id and _job.run_is_set_up(MlflowTracker.client_for(ctx.tracking_uri), resume_id):
            outcome = _job.resume(resume_id, uri=ctx.tracking_uri, callbacks=callbacks, progress=progress, assume_dead=True)
        else:
            # A new run, or (resume_id) one whose worker died while creating it: adopt that one, never a second run.
            outcome = _job.run(
                spec,
                run_id=resume_id,
                uri=ctx.tracking_uri,
                parent_run_id=ctx.parent_run_id,
                tags={"harness.role": "trial", "harness.trial": str(trial.number), "harness.study": ctx.study_name},
                callbacks=callbacks,
                on_start=lambda run_id: trial.set_user_attr("mlflow_run_id", run_id),
                progress=progress,
            )
    except KeyboardInterrupt:
        trial.set_user_attr("stop_reason", "interrupted")
        raise _SweepInterrupted(signal.SIGINT) from None
    except HarnessError as exc:
        trial.set_user_attr("stop_reason", "failed")
        trial.set_user_attr("fail_reason", str(exc)[:2000])
        return "FAIL", None
    finally:
        if progress:
            progress.close()
    client = MlflowTracker.client_for(ctx.tracking_uri)
    if outcome is None:
        run_id = resume_id
        stop_reason = client.get_run(run_id).data.tags.get("stop_reason", "completed")
    else:
        run_id, stop_reason = outcome.run_id, outcome.stop_reason
    trial.set_user_attr("stop_reason", stop_reason)
    if stop_reason == "interrupted":
        raise _SweepInterrupted(outcome.signal if outcome is not None else None)
    if stop_reason == "pruned":
        return "PRUNED", None
    if outcome is not None and outcome.status != "FINISHED":
        trial.set_user_attr("fail_reason", outcome.message or outcome.stop_reason)
        return "FAIL", None
    value = _objective_value(client, run_id, sw.objective.metric, summary=sw.objective.summary, direction=sw.objective.direction)
    if value is None:
        trial.set_user_attr("fail_reason", f"the objective metric {sw.objective.metric} was never logged")
        return "FAIL", None
    return "COMPLETE", value


def _run_status(uri: str, run_id: str) -> str | None:
    from harness._tracking import MlflowTracker

    try:
        return MlflowTracker.client_for(uri).get_run(run_id).info.status
    except Exception:
        return None


# ----------------------------------------------------------------------------------------------------------- reaping


def _retry(study: Any, frozen: Any) -> None:
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    RetryHeartbeatStaleTrialCallback()(study, frozen)


def _retried_numbers(trials: list[Any]) -> set[int]:
    out: set[int] = set()
    for t in trials:
        out.update(t.system_attrs.get("retry_history", []))
    return out


def reap_stale(study: Any, tracking: str) -> list[int]:
    """Mark RUNNING trials whose worker process is gone as FAIL (stop_reason=crashed), end their MLflow runs FAILED,
    and queue a retry that resumes the same MLflow run. Returns the reaped trial numbers."""
    import optuna
    from optuna.trial import TrialState

    from harness._job import pid_alive
    from harness._tracking import MlflowTracker

    reaped: list[int] = []
    host = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid, thost = t.user_attrs.get("pid"), t.user_attrs.get("host")
        if thost != host or pid is None or pid_alive(int(pid)) or int(pid) == os.getpid():
            continue
        storage = study._storage
        try:
            storage.set_trial_user_attr(t._trial_id, "stop_reason", "crashed")
            if not storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                continue
        except (RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
            continue  # another process got there first
        reaped.append(t.number)
        run_id = t.user_attrs.get("mlflow_run_id")
        if run_id:
            mark_run_crashed(MlflowTracker.client_for(tracking), run_id)
        _retry(study, study._storage.get_trial(t._trial_id))
    # Trials of other machines: Optuna's heartbeat finds those whose worker stopped beating.
    optuna.storages.fail_stale_trials(study)
    return reaped


def mark_run_crashed(client: Any, run_id: str) -> None:
    try:
        run = client.get_run(run_id)
    except Exception:
        return
    if run.info.status == "RUNNING":
        client.set_tag(run_id, "stop_reason", "crashed")
        client.set_terminated(run_id, status="FAILED")


# ----------------------------------------------------------------------------------------------------------- worker


def _done_count(trials: list[Any]) -> int:
    from optuna.trial import TrialState

    retried = _retried_numbers(trials)
    return sum(1 for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL) and t.number not in retried
               and t.user_attrs.get("stop_reason") not in RETRYABLE)


def _next_trial(ctx: _Ctx, study: Any, base: Spec) -> Any | None:
    """Under the study lock: the next trial to run, or None when the sweep is done."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    if ctx.n_trials is not None and _done_count(trials) + sum(t.state == TrialState.RUNNING for t in trials) >= ctx.n_trials:
        if not any(t.state == TrialState.WAITING for t in trials):
            return None
    if ctx.deadline is not None and time.time() > ctx.deadline:
        return None
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    if not waiting and base.sweep.sampler == "grid":  # type: ignore[union-attr]
        retried = _retried_numbers(trials)
        taken = set()
        for t in trials:
            if t.number in retried or (t.state == TrialState.FAIL and t.user_attrs.get("stop_reason") in RETRYABLE):
                continue
            # fixed_params first: the worker running an enqueued point writes its params one by one, outside the lock,
            # so params can be caught half-written (a point that looks free would then run twice)
            params = t.system_attrs.get("fixed_params") or t.params
            taken.add(_point_key(params))
        todo = [p for p in _grid_points(base) if _point_key(p) not in taken]
        if not todo:
            return None
        study.enqueue_trial(todo[0], skip_if_exists=False)
    return study.ask()


@contextlib.contextmanager
def _heartbeat(study: Any, trial: Any) -> Iterator[None]:
    storage = study._storage
    if not hasattr(storage, "record_heartbeat") or not getattr(storage, "is_heartbeat_enabled", lambda: False)():
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            with contextlib.suppress(Exception):
                storage.record_heartbeat(trial._trial_id)

    storage.record_heartbeat(trial._trial_id)
    th = threading.Thread(target=beat, daemon=True)
    th.start()
    try:
        yield
    finally:
        stop.set()
        th.join(timeout=5)


def _worker(ctx: _Ctx) -> int:
    """Take and run trials until the sweep is done. Returns 0, or 128 + the signal (130, 143) when interrupted."""
    import optuna
    from optuna.trial import TrialState

    if ctx.threads:
        import torch

        torch.set_num_threads(ctx.threads)
    base = spec_from_dict(ctx.spec_dict, file=ctx.spec_file, check_data=False)
    storage = _storage(ctx.storage)
    study = optuna.load_study(study_name=ctx.study_name, storage=storage, sampler=_sampler(base), pruner=_pruner(base))
    lock = _local_lock_path(ctx.storage, ctx.study_name)
    while True:
        with _file_lock(lock):
            reap_stale(study, ctx.tracking_uri)
            trial = _next_trial(ctx, study, base)
        if trial is None:
            return 0
        try:
            with _heartbeat(study, trial):
                state, value = _run_trial(ctx, study, trial, base)
        except _SweepInterrupted as stop:
            study.tell(trial, state=TrialState.FAIL)
            _retry(study, study._storage.get_trial(trial._trial_id))
            return 128 + stop.signum
        except BaseException:
            with contextlib.suppress(Exception):
                trial.set_user_attr("stop_reason", "failed")
                study.tell(trial, state=TrialState.FAIL)
            raise
        _faults.point("trial_end")
        if state == "COMPLETE":
            study.tell(trial, value)
        else:
            study.tell(trial, state=TrialState[state])


def _worker_entry(ctx: _Ctx, conn: Any = None) -> None:
    # Spawned workers: default SIGINT behaviour so Ctrl-C in the terminal reaches the trainer's handler.
    try:
        code = _worker(ctx)
    except KeyboardInterrupt:
        code = 130
    raise SystemExit(code)


# ----------------------------------------------------------------------------------------------------------- driver


def _parent_run(spec: Spec, study: Any, ctx_uri: str, study_name: str, storage_url: str, *, fresh: bool) -> str:
    """The sweep's parent MLflow run: created once per study, re-attached on every later invocation."""
    from harness._tracking import MlflowTracker

    client = MlflowTracker.client_for(ctx_uri)
    existing = study.user_attrs.get("mlflow_parent_run_id")
    if existing and not fresh:
        try:
            run = client.get_run(existing)
            if run.info.lifecycle_stage != "deleted":
                if run.info.status != "RUNNING":
                    client.update_run(existing, status="RUNNING")
                client.set_tag(existing, "harness.pid", str(os.getpid()))
                client.set_tag(existing, "harness.host", socket.gethostname())
                return existing
        except Exception:
            pass
    tracker = MlflowTracker.start(
        client,
        experiment=spec.experiment,
        run_name=f"{spec.name}-sweep",
        tags={**spec.tracking.tags, "harness.role": "sweep", "harness.study": study_name, "harness.spec_name": spec.name,
              "harness.storage": storage_url, "harness.pid": str(os.getpid()), "harness.host": socket.gethostname()},
    )
    from harness._spec import flatten

    sweep_params = {f"sweep.{k}": v for k, v in flatten(spec_to_dict(spec)["sweep"]).items()}
    tracker.log_params(sweep_params)
    tracker.log_text(yaml_dump(spec_to_dict(spec)), "spec.yaml")
    study.set_user_attr("mlflow_parent_run_id", tracker.run_id)
    return tracker.run_id


def yaml_dump(data: Any) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)


def run_sweep(
    spec: Spec,
    *,
    fresh: bool = False,
    study_name: str | None = None,
    workers: int | None = None,
    n_trials: int | None = None,
    spec_file: str = "<spec>",
    overrides: list[str] | None = None,
    uri: str | None = None,
    quiet: bool = False,
) -> SweepResult:
    """Run (or resume) the sweep that ``spec.sweep`` describes and return its trial table."""
    import optuna

    from harness._tracking import check_store, tracking_uri

    if spec.sweep is None:
        raise UsageError("this spec has no sweep section; run it as a single experiment")
    sw = spec.sweep
    n_workers = workers or sw.workers
    if n_workers < 1:
        raise UsageError("--workers must be at least 1")
    total = n_trials or sw.n_trials or (sw.grid_size() if sw.sampler == "grid" else None)
    if total is None:
        raise SpecError([_issue(spec_file, "sweep.n_trials", f"the {sw.sampler} sampler needs n_trials (only a grid has a natural size)")])
    uri = tracking_uri(uri)
    check_store(uri)
    name = study_name or spec.name
    storage_url = study_storage_url(spec, name)  # creates studies/: only once the inputs are known to be good
    direction = sw.objective.direction
    lock = _local_lock_path(storage_url, name)
    from harness._job import reap_stale_runs
    from harness._tracking import MlflowTracker

    with _file_lock(lock):
        # Under the lock, so invocations started together do not race to create the study storage: they join one study.
        storage = _storage(storage_url)
        reap_stale_runs(MlflowTracker.client_for(uri))
        if fresh:
            with contextlib.suppress(KeyError):
                optuna.delete_study(study_name=name, storage=storage)
        study = optuna.create_study(study_name=name, storage=storage, direction=direction, load_if_exists=True,
                                    sampler=_sampler(spec), pruner=_pruner(spec))
        if study.direction.name.lower() != direction:
            raise UsageError(f"study '{name}' in {storage_url} was created to {study.direction.name.lower()}; use --fresh or --study")
        parent = _parent_run(spec, study, uri, name, storage_url, fresh=fresh)
    cpus = os.cpu_count() or 1
    threads = max(1, cpus // n_workers) if n_workers > 1 else None
    ctx = _Ctx(
        spec_dict=spec_to_dict(spec), spec_file=spec_file, study_name=name, storage=storage_url, parent_run_id=parent,
        tracking_uri=uri, n_trials=total, threads=threads, quiet=quiet, label_trials=True,
        deadline=time.time() + sw.timeout_s if sw.timeout_s else None,
    )
    if not quiet:
        print(f"sweep {name}: {total} trials, sampler {sw.sampler}, {n_workers} worker{'s' if n_workers > 1 else ''}, storage {storage_url}")
        print(f"parent run {parent} in experiment '{spec.experiment}'")
    signum: int | None = None  # the signal that interrupted the sweep
    if n_workers == 1:
        try:
            code = _worker(ctx)
            signum = code - 128 if code > 128 else None
        except KeyboardInterrupt:
            signum = signal.SIGINT
    else:
        signum = _run_processes(ctx, n_workers)
    result = finalize(spec, study_name=name, storage_url=storage_url, parent_run_id=parent, uri=uri, interrupted=signum is not None)
    result.signal = signum
    return result


def _run_processes(ctx: _Ctx, n: int) -> int | None:
    """Run ``n`` worker processes to the end; returns the signal that interrupted them, if one did."""
    mpctx = mp.get_context("spawn")
    procs = [mpctx.Process(target=_worker_entry, args=(ctx,), name=f"harness-worker-{i}") for i in range(n)]
    for p in procs:
        p.start()
    received: int | None = None

    def forward(signum: int, frame: Any) -> None:
        nonlocal received
        received = signum
        for p in procs:
            if p.is_alive() and p.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGTERM if signum == signal.SIGTERM else signal.SIGINT)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for p in procs:
            while p.is_alive():
                p.join(timeout=0.5)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    codes = [p.exitcode for p in procs]
    if any(c not in (0, 130, 143) for c in codes) and received is None:
        raise HarnessError(f"a sweep worker failed (exit codes {codes}); see its output above")
    return received or next((c - 128 for c in codes if c in (130, 143)), None)


def _issue(file: str, path: str, msg: str) -> Any:
    from harness._errors import Issue

    return Issue(file, path, msg)


# ----------------------------------------------------------------------------------------------------------- results


def verdict(final_loss: float | None, ln_vocab: float | None, stop_reason: str | None) -> str:
    """Classify a run from its numbers: diverged, learned, partly learned or barely moved (relative to ln(vocab))."""
    if stop_reason == "diverged" or final_loss is None or not math.isfinite(final_loss):
        return "diverged" if stop_reason in ("diverged", None) or final_loss is not None else "-"
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


def trials_table(study_name: str, storage_url: str, *, uri: str | None = None, objective: str = "val/loss") -> Any:
    """One row per trial: params, best/final val loss, final train loss, steps, steps/epoch, wall time, stop_reason,
    verdict, MLflow run id. Values come from the study and from each trial's MLflow run."""
    import optuna
    import pandas as pd

    from harness._tracking import MlflowTracker, tracking_uri

    client = MlflowTracker.client_for(tracking_uri(uri))
    study = optuna.load_study(study_name=study_name, storage=_storage(storage_url))
    trials = study.get_trials(deepcopy=False)
    retried = _retried_numbers(trials)
    rows = []
    for t in trials:
        if t.number in retried:
            continue  # superseded by its retry, which continues the same MLflow run
        row: dict[str, Any] = {"trial": t.number, "state": t.state.name}
        row.update({k: v for k, v in t.params.items()})
        row["objective"] = t.value
        run_id = t.user_attrs.get("mlflow_run_id")
        metrics: dict[str, float] = {}
        params: dict[str, str] = {}
        tags: dict[str, str] = {}
        if run_id:
            with contextlib.suppress(Exception):
                run = client.get_run(run_id)
                metrics, params, tags = run.data.metrics, run.data.params, run.data.tags
        best_val = _best(client, run_id, "val/loss") if run_id and "val/loss" in metrics else None
        row["best_val_loss"] = best_val
        row["final_val_loss"] = metrics.get("summary/final_val_loss", metrics.get("val/loss"))
        # The textbook's "final loss" is the mean training loss of the last epoch; use it when epochs are used.
        row["final_train_loss"] = metrics.get("train/loss_epoch", metrics.get("summary/final_train_loss", metrics.get("train/loss")))
        row["final_train_loss_step"] = metrics.get("summary/final_train_loss", metrics.get("train/loss"))
        row["steps"] = int(metrics["summary/steps"]) if "summary/steps" in metrics else None
        row["steps_per_epoch"] = int(params["derived.steps_per_epoch"]) if "derived.steps_per_epoch" in params else None
        row["wall_time_s"] = metrics.get("summary/wall_time_s")
        stop = t.user_attrs.get("stop_reason") or tags.get("stop_reason")
        row["stop_reason"] = stop
        ln_v = float(params["derived.ln_vocab"]) if "derived.ln_vocab" in params else None
        loss_for_verdict = row["final_train_loss"]
        if stop == "diverged":
            loss_for_verdict = float("nan")
        row["verdict"] = verdict(loss_for_verdict, ln_v, stop) if (run_id or stop == "diverged") else "-"
        row["ln_vocab"] = ln_v
        row["run_id"] = run_id
        row["fail_reason"] = t.user_attrs.get("fail_reason")
        rows.append(row)
    df = pd.DataFrame(rows)
    return df


def _best(client: Any, run_id: str | None, key: str) -> float | None:
    if not run_id:
        return None
    vals = [m.value for m in client.get_metric_history(run_id, key) if m.value == m.value]
    return min(vals) if vals else None


def finalize(spec: Spec, *, study_name: str, storage_url: str, parent_run_id: str, uri: str, interrupted: bool) -> SweepResult:
    """Parent-run artifacts and metrics, and the result table."""
    import optuna
    from optuna.trial import TrialState

    from harness import _plots
    from harness._tracking import MlflowTracker

    sw = spec.sweep
    assert sw is not None
    client = MlflowTracker.client_for(uri)
    table = trials_table(study_name, storage_url, uri=uri, objective=sw.objective.metric)
    study = optuna.load_study(study_name=study_name, storage=_storage(storage_url))
    trials = study.get_trials(deepcopy=False)
    retried = _retried_numbers(trials)
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
        best = {"trial": bt.number, "value": bt.value, "params": bt.params, "run_id": bt.user_attrs.get("mlflow_run_id")}
    tracker = MlflowTracker(client, parent_run_id)
    artifacts: list[str] = []
    with tempfile.TemporaryDirectory(prefix="harness-sweep-") as tmp:
        tmpd = Path(tmp)
        csv = tmpd / "trials.csv"
        table.to_csv(csv, index=False)
        tracker.log_artifact(csv)
        artifacts.append("trials.csv")
        (tmpd / "best_params.json").write_text(json.dumps(best or {}, indent=2, default=str))
        tracker.log_artifact(tmpd / "best_params.json")
        artifacts.append("best_params.json")
        with contextlib.suppress(Exception):
            curves = {}
            for _, row in table.iterrows():
                if row.get("run_id"):
                    label = f"t{row['trial']}: " + ", ".join(f"{k.split('.')[-1]}={_short(row[k])}" for k in sw.params)
                    hist = client.get_metric_history(row["run_id"], sw.objective.metric)
                    curves[label] = ([m.step for m in hist], [m.value for m in hist])
            _plots.overlay(curves, tmpd / "curves.png", metric=sw.objective.metric, title=f"{study_name}: {sw.objective.metric} per trial")
            tracker.log_artifact(tmpd / "curves.png", "plots")
            artifacts.append("plots/curves.png")
            done = table[table["objective"].notna()] if "objective" in table else table.iloc[0:0]
            for path, space in sw.params.items():
                if path not in done or done.empty:
                    continue
                xs = list(done[path])
                log_x = (isinstance(space, ParamRange) and space.log) or _spans_decades(xs)
                fname = f"objective_vs_{path.replace('.', '_')}.png"
                _plots.objective_vs_param(xs, list(done["objective"]), tmpd / fname, param=path, objective=f"{sw.objective.summary} {sw.objective.metric}",
                                          log_x=log_x, labels=[f"t{n}" for n in done["trial"]])
                tracker.log_artifact(tmpd / fname, "plots")
                artifacts.append(f"plots/{fname}")
    metrics = {"n_complete": counts["complete"], "n_pruned": counts["pruned"], "n_failed": counts["failed"]}
    if best is not None:
        metrics["best_value"] = best["value"]
    for k, v in metrics.items():
        tracker.log_metric(k, float(v), step=len(live))
    tracker.set_tags({"harness.best_trial": best["trial"] if best else "-", "stop_reason": "interrupted" if interrupted else "completed"})
    tracker.end("KILLED" if interrupted else "FINISHED")
    return SweepResult(study_name=study_name, storage=storage_url, parent_run_id=parent_run_id, experiment=spec.experiment, table=table,
                       best=best, interrupted=interrupted, counts=counts, objective=sw.objective.metric, tracking_uri=uri, artifacts=artifacts)


def _spans_decades(xs: list[Any]) -> bool:
    nums = [x for x in xs if isinstance(x, (int, float)) and not isinstance(x, bool)]
    return bool(nums) and min(nums) > 0 and max(nums) / min(nums) >= 100


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def print_sweep_summary(result: SweepResult) -> None:
    import pandas as pd

    df = result.table
    print()
    if df.empty:
        print(f"sweep {result.study_name}: no trials")
        return
    cols = [c for c in df.columns if c not in ("ln_vocab", "fail_reason", "final_train_loss_step")]
    show = df[cols].copy()
    if "run_id" in show:
        show["run_id"] = show["run_id"].map(lambda r: r[:8] if isinstance(r, str) else "-")
    with pd.option_context("display.max_columns", 50, "display.width", 200, "display.float_format", lambda v: f"{v:.4g}"):
        print(show.to_string(index=False))
    c = result.counts
    print(f"\nsweep {result.study_name}: {c.get('complete', 0)} complete, {c.get('pruned', 0)} pruned, {c.get('failed', 0)} failed"
          + (f", {c['running']} unfinished" if c.get("running") else ""))
    if result.best:
        print(f"best trial {result.best['trial']}: {result.objective} = {result.best['value']:.4f} with {result.best['params']}")
    failed = df[df["fail_reason"].notna()] if "fail_reason" in df else df.iloc[0:0]
    for _, row in failed.iterrows():
        print(f"  trial {row['trial']} failed: {str(row['fail_reason']).splitlines()[0][:300]}")
    print(f"parent run {result.parent_run_id}; study '{result.study_name}' in {result.storage}")
    if result.interrupted:
        print("interrupted: run the same command again to resume the study")
