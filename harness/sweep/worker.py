"""A worker: take the next queued trial, run it with a heartbeat, tell the study, until nothing is queued.

Several workers (processes on this machine, or invocations on other machines) share one study. Taking a trial
happens under the study lock, after reaping the trials whose worker died: a dead pid on this host at once, a stale
heartbeat from any host after the grace period. A reaped trial is queued again and its retry resumes the same MLflow
run from its last checkpoint.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import socket
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterator

from harness import collector
from harness.errors import HarnessError
from harness.spec import Spec, spec_from_dict
from harness.sweep.storage import GRACE_S, HEARTBEAT_S, MAX_CRASH_RETRIES, TrialStore, close_storage, make_storage, retried_numbers, study_lock
from harness.sweep.repeats import Repeats, queue_name
from harness.sweep.study import GRID_POINT, from_optuna, grid_points, point_key, to_optuna
from harness.sweep.trial import TrialInterrupted, TrialOutcome, TrialSettings, make_pruner, make_sampler, run_trial
from harness.testing import faults
from harness.tracking import client_for
from harness.tracking.liveness import mark_run_crashed, pid_alive
from harness.train.events import StopReason

__all__ = ["WorkerPlan", "run_workers", "start_workers_early", "work"]


@dataclass(frozen=True)
class WorkerPlan:
    """Everything a worker needs (picklable: spawned worker processes receive it)."""

    spec_dict: dict[str, Any]
    storage_url: str
    total: int  # trials the study runs in all
    deadline: float | None  # stop taking trials after this time (time.time())
    trials: TrialSettings
    # The driver's environment and working folder: a worker forked by a forkserver started earlier (by an earlier
    # sweep in the same process) would otherwise keep the ones the forkserver started with.
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    cwd: str = field(default_factory=os.getcwd)


def work(plan: WorkerPlan) -> int:
    """Take and run trials until none is queued. Returns 0, or 128 + the signal (130, 143) when interrupted."""

    if plan.trials.threads:
        import torch

        torch.set_num_threads(plan.trials.threads)
    base = spec_from_dict(plan.spec_dict, file=plan.trials.spec_file)
    storage = make_storage(plan.storage_url)
    try:
        return _take_trials(plan, base, storage)
    finally:
        close_storage(storage)


def _take_trials(plan: WorkerPlan, base: Spec, storage: Any) -> int:
    import optuna

    name = plan.trials.study_name
    study = optuna.load_study(study_name=name, storage=storage, sampler=make_sampler(base), pruner=make_pruner(base))
    repeats: Repeats | None = None
    if base.sweep.repeated:  # type: ignore[union-attr]
        # the trials a worker runs are the seed runs; the study's own trials are their configurations
        queue = optuna.load_study(study_name=queue_name(name), storage=storage, pruner=optuna.pruners.NopPruner())
        repeats = Repeats(storage, study, queue, base, plan.total)
        study = queue
    trials = TrialStore(storage, study.study_name)
    while True:
        with study_lock(plan.storage_url, name):
            reap_stale(study, trials, plan.trials.tracking_uri)
            if repeats is not None:
                trial = repeats.next_trial(plan.deadline)
            else:
                trial = _next_trial(study, base, plan.total, plan.deadline)
            if trial is not None:
                # Owned before the lock is released: no reaper can take a trial whose owner is not written yet.
                trial.set_user_attr("pid", os.getpid())
                trial.set_user_attr("host", socket.gethostname())
                trials.beat(trial.number)
        if trial is None:
            return 0
        try:
            with _heartbeat(trials, trial.number):
                outcome = run_trial(plan.trials, trial, base, stopped=repeats.stopped if repeats is not None else None)
        except TrialInterrupted as stop:
            trials.fail(study, trial.number, stop_reason=StopReason.INTERRUPTED.value, retry=True)
            return 128 + stop.signum
        except BaseException:
            with contextlib.suppress(Exception):
                trial.set_user_attr("stop_reason", StopReason.FAILED.value)
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        faults.point("trial_end")
        _tell(study, trial, outcome)


def _next_trial(study: Any, base: Spec, total: int, deadline: float | None) -> Any | None:
    """Under the study lock: the next trial to run, or None when the sweep has nothing left (or time is up).

    A queued retry of a crashed or interrupted trial goes first (it continues where it stopped). Otherwise a grid
    queues its next point that no trial holds yet; another sampler asks for a new trial while fewer than ``total``
    exist (a retried attempt and its retry count once)."""
    from optuna.trial import TrialState

    if deadline is not None and time.time() > deadline:
        return None
    trials = study.get_trials(deepcopy=False)
    if not any(t.state == TrialState.WAITING for t in trials):
        if base.sweep.sampler == "grid":  # type: ignore[union-attr]
            point = _free_grid_point(base, trials, total)
            if point is None:
                return None
            study.enqueue_trial({k: to_optuna(v) for k, v in point.items()}, user_attrs={GRID_POINT: point_key(point)}, skip_if_exists=False)
        elif len(trials) - len(retried_numbers(trials)) >= total:
            return None
    with warnings.catch_warnings():
        # We beat the heartbeat ourselves (see _heartbeat); Optuna warns that it expects Study.optimize to do it.
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
        return study.ask()


def _free_grid_point(base: Spec, trials: list[Any], total: int) -> dict[str, Any] | None:
    """The first of the grid's first ``total`` points that no trial holds. A crashed or interrupted attempt does not
    hold its point when no retry of it was queued."""
    from optuna.trial import TrialState

    retried = retried_numbers(trials)
    taken = set()
    for t in trials:
        if t.number in retried or (t.state == TrialState.FAIL and StopReason.is_retry(t.user_attrs.get("stop_reason"))):
            continue
        # the point it was queued with (a retry copies it): its params are written one at a time, outside the lock
        taken.add(t.user_attrs.get(GRID_POINT) or point_key(from_optuna(t.params)))
    return next((p for p in grid_points(base)[:total] if point_key(p) not in taken), None)


def _tell(study: Any, trial: Any, outcome: TrialOutcome) -> None:
    from optuna.trial import TrialState

    if outcome.stop_reason is not None:
        trial.set_user_attr("stop_reason", outcome.stop_reason.value)
    if outcome.fail_reason:
        trial.set_user_attr("fail_reason", outcome.fail_reason)
    if outcome.state == "COMPLETE":
        study.tell(trial, outcome.value)
    else:
        study.tell(trial, state=TrialState[outcome.state])


@contextlib.contextmanager
def _heartbeat(trials: TrialStore, number: int) -> Iterator[None]:
    """Record the trial's heartbeat every HEARTBEAT_S seconds while it runs, so other machines can tell it is alive."""
    if not trials.beats():
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            with contextlib.suppress(Exception):
                trials.beat(number)

    thread = threading.Thread(target=beat, daemon=True, name="harness-heartbeat")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def reap_stale(study: Any, trials: TrialStore, tracking_uri: str) -> list[int]:
    """Trials whose worker died, marked FAIL with stop_reason=crashed and queued again (their retry resumes the same
    MLflow run), up to MAX_CRASH_RETRIES times; their MLflow runs end FAILED/crashed. Found three ways:

    * on this host, RUNNING with a dead pid (at once);
    * on any host, RUNNING with no owner written GRACE_S after it started (its worker died while taking it);
    * on any host, a stale heartbeat (Optuna's own check, after GRACE_S; Optuna marks it FAIL and queues the retry).

    Returns the numbers of the trials reaped here."""
    import optuna
    from optuna.trial import TrialState

    reaped: list[int] = []
    host = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not _dead(t, host):
            continue
        retry = len(retried_numbers([t]) | {t.number}) <= MAX_CRASH_RETRIES
        # After MAX_CRASH_RETRIES deaths the trial is given up: FAILED, which holds its grid point for good.
        reason = StopReason.CRASHED if retry else StopReason.FAILED
        if not trials.fail(study, t.number, stop_reason=reason.value, retry=retry):
            continue  # another process got there first
        reaped.append(t.number)
        run_id = t.user_attrs.get("mlflow_run_id")
        if run_id:
            pid = t.user_attrs.get("pid")
            mark_run_crashed(client_for(tracking_uri), run_id, owner=int(pid) if pid is not None else None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # Optuna's own answer to dead workers
        optuna.storages.fail_stale_trials(study)
    return reaped


def _dead(t: Any, host: str) -> bool:
    """A RUNNING trial whose worker is known to be gone."""
    pid, thost = t.user_attrs.get("pid"), t.user_attrs.get("host")
    if pid is None:
        started = t.datetime_start.timestamp() if t.datetime_start is not None else time.time()
        return time.time() - started > GRACE_S
    return thost == host and int(pid) != os.getpid() and not pid_alive(int(pid))


# ----------------------------------------------------------------------------------------------------------- processes


def _worker_entry(plan: WorkerPlan) -> None:
    """A worker process. It leaves the terminal's process group, so a Ctrl-C reaches it once, forwarded by the parent
    (a second would mean "stop at once, no checkpoint"). A problem the user can fix is said in one line."""
    os.setpgid(0, 0)
    collector.pause()  # spawned (no forkserver): its start-up imports, as in the harness command
    if os.environ != plan.env:
        os.environ.clear()
        os.environ.update(plan.env)
    os.chdir(plan.cwd)
    try:
        code = work(plan)
    except KeyboardInterrupt:
        code = 130
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        code = 2
    raise SystemExit(code)


PRELOAD = "harness.sweep.preload"


def _context() -> Any:
    """Workers are forked by a forkserver that has imported :mod:`harness.sweep.preload` where the platform has one
    (Linux, macOS); elsewhere each is spawned. Never plain fork: the driver holds store connections and may have
    started torch's threads."""
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload([PRELOAD])
        return ctx
    return mp.get_context("spawn")


def start_workers_early() -> None:
    """Start the forkserver now, so that its imports run on another CPU while this process opens the study; the first
    worker would otherwise wait for them. Nothing to do without a forkserver, or when it already runs."""
    if _context().get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()


def run_workers(plan: WorkerPlan, n: int) -> int | None:
    """Run ``n`` worker processes to the end; returns the signal that interrupted them, if one did."""
    ctx = _context()
    procs = [ctx.Process(target=_worker_entry, args=(plan,), name=f"harness-worker-{i}") for i in range(n)]
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
            p.join()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    codes = [p.exitcode for p in procs]
    if any(c not in (0, 130, 143) for c in codes) and received is None:
        said = " (it said why, above)" if 2 in codes else "; see its output above"
        raise HarnessError(f"a sweep worker stopped (exit codes {codes}){said}")
    return received or next((c - 128 for c in codes if c in (130, 143)), None)
