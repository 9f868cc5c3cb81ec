"""A worker: take the next queued trial, run it with a heartbeat, tell the study, until nothing is queued.

Several workers (processes on this machine, or invocations on other machines) share one study. Taking a trial
happens under the study lock, after reaping the trials whose worker died: a dead pid on this host at once, a stale
heartbeat from any host after the grace period. A reaped trial is queued again and its retry resumes the same MLflow
run from its last checkpoint.

A worker that is wrongly judged dead must not keep training beside that retry (one run, one checkpoint folder, two
trainers). So a worker fences itself (:class:`_Fence`): when its heartbeats have not been recorded for FENCE_S (the
study database is away), well before GRACE_S, or when a recorded heartbeat finds its trial no longer RUNNING (another
worker failed it), it stops its trainer at the next step, as an interrupt does: a checkpoint, the run ends
KILLED/interrupted, and the trial is handed back (or left to its retry). A worker process also stops when its driver
process is gone (:func:`_die_with_driver`).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import multiprocessing.connection
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
from harness.sweep.storage import MAX_CRASH_RETRIES, TrialStore, close_storage, make_storage, periods, retried_numbers, study_lock
from harness.sweep.repeats import Repeats, queue_name
from harness.sweep.study import GRID_POINT, from_optuna, grid_points, point_key, to_optuna
from harness.sweep.trial import RunLookupFailed, TrialInterrupted, TrialOutcome, TrialSettings, make_pruner, make_sampler, run_trial
from harness.testing import faults
from harness.tracking import client_for
from harness.tracking.liveness import mark_run_crashed, pid_alive
from harness.tracking.redact import redact_text, redact_url
from harness.train.events import Event, StopReason, StopTraining

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
        fence = _Fence(trials, trial.number)
        try:
            with fence.beating():
                outcome = run_trial(plan.trials, trial, base, stopped=repeats.stopped if repeats is not None else None, watch=fence)
        except TrialInterrupted as stop:
            if stop.signum is None:  # not a signal: this worker may no longer own the trial (the fence, or the pruning callback)
                _hand_back(study, trials, trial.number, fence.why or "the trial was ended by another worker", plan.storage_url)
                continue  # it is queued again (or another worker's retry has it): on to the next trial
            trials.fail(study, trial.number, stop_reason=StopReason.INTERRUPTED.value, retry=True)
            return 128 + (stop.signum or signal.SIGINT)
        except RunLookupFailed:
            # Queued again as if its worker had died: the retry keeps the trial's mlflow_run_id and resumes that run.
            trials.fail(study, trial.number, stop_reason=StopReason.CRASHED.value, retry=True)
            raise
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
    """Tell the study how the trial went. Nothing to tell when another worker has ended the trial meanwhile (it
    judged this worker dead): the retry it queued owns the trial, finds the run ended and reports it."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    try:
        if outcome.stop_reason is not None:
            trial.set_user_attr("stop_reason", outcome.stop_reason.value)
        if outcome.fail_reason:
            trial.set_user_attr("fail_reason", outcome.fail_reason)
        if outcome.state == "COMPLETE":
            study.tell(trial, outcome.value, skip_if_finished=True)
        else:
            study.tell(trial, state=TrialState[outcome.state], skip_if_finished=True)
    except UpdateFinishedTrialError:
        pass


class _Fence:
    """A running trial's heartbeat, and the trainer callback that stops the trial when this worker may no longer own it.

    The heartbeat is recorded every HEARTBEAT_S seconds by a thread. The trainer's callback (main thread, every event)
    stops the run as interrupted, at its next step, when

    * no heartbeat has been recorded for FENCE_S: the study database is away (or its calls hang). After GRACE_S any
      worker may fail the trial and resume its run, so this one stops first, with time left for its checkpoint;
    * a recorded heartbeat finds the trial no longer RUNNING: another worker has failed it already (this one was
      stopped, or cut off, past the grace) and queued the retry that continues the run. Stop at once.

    Without heartbeats (a journal storage: one machine, dead pids only) it never stops anything."""

    def __init__(self, trials: TrialStore, number: int):
        self.trials = trials
        self.number = number
        self.periods = periods()
        self.active = trials.beats()
        self.last_ok = time.monotonic()  # the trial was taken with a heartbeat, under the study lock
        self.why: str | None = None  # set once: why the trial must stop

    def _stop(self, why: str) -> None:
        if self.why is None:
            self.why = why
            faults.point("fence")

    def beat(self) -> None:
        started = time.monotonic()  # a heartbeat written by this call is no older than this
        try:
            self.trials.beat(self.number)
            state = self.trials.frozen(self.number).state
        except Exception:
            return  # the storage did not answer: __call__ sees how long that has lasted
        self.last_ok = started
        if state.name != "RUNNING":
            self._stop(f"trial {self.number} was ended ({state.name}) by another worker, which took this worker for dead; the retry it "
                       "queued continues this run")

    def __call__(self, event: Event) -> None:
        if self.active and self.why is None:
            silent = time.monotonic() - self.last_ok
            if silent > self.periods.fence:
                self._stop(f"no heartbeat of trial {self.number} could be recorded in the study storage for {silent:.0f} s (after "
                           f"{self.periods.grace:.0f} s another worker may take the trial over)")
        if self.why is not None:
            raise StopTraining(StopReason.INTERRUPTED, self.why)

    @contextlib.contextmanager
    def beating(self) -> Iterator[None]:
        if not self.active:
            yield
            return
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(self.periods.heartbeat):
                self.beat()

        thread = threading.Thread(target=loop, daemon=True, name="harness-heartbeat")
        thread.start()
        try:
            yield
        finally:
            stop.set()
            # not longer: a beat stuck in a storage call that never returns must not hold the worker (it is harmless)
            thread.join(timeout=min(5.0, self.periods.heartbeat))


def _hand_back(study: Any, trials: TrialStore, number: int, why: str, url: str) -> None:
    """Queue a fenced trial again (FAIL, interrupted, with a retry that resumes its run); nothing to do when another
    worker has ended it (its retry has the run). When the study database is still away, stop this worker with a clear
    error: the trial stays RUNNING under this worker's pid, and the next invocation (or, after the grace, any worker)
    reaps it and resumes the run from the checkpoint just written."""
    try:
        trials.fail(study, number, stop_reason=StopReason.INTERRUPTED.value, retry=True)  # False: another worker did
    except Exception as exc:
        while exc.__cause__ is not None and isinstance(exc.__cause__, Exception):  # Optuna wraps the driver's error
            exc = exc.__cause__
        detail = redact_text(str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__)
        raise HarnessError(f"{why}; so trial {number} stopped, with a checkpoint (its run ended KILLED, interrupted). The study "
                           f"storage {redact_url(url)} still does not answer ({detail}). Once it does, run the same command again: "
                           "the trial resumes from that checkpoint.") from None


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
        return time.time() - started > periods().grace
    return thost == host and int(pid) != os.getpid() and not pid_alive(int(pid))


# ----------------------------------------------------------------------------------------------------------- processes


def _worker_entry(plan: WorkerPlan) -> None:
    """A worker process. It leaves the terminal's process group, so a Ctrl-C reaches it once, forwarded by the parent
    (a second would mean "stop at once, no checkpoint"); so it must watch its driver itself (:func:`_die_with_driver`).
    A problem the user can fix is said in one line."""
    os.setpgid(0, 0)
    _die_with_driver()
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


def _die_with_driver() -> None:
    """Stop this worker, as SIGTERM does, once the driver process that started it is gone: killed (kill -9), or ended
    by a closed terminal's SIGHUP before it could forward anything. A training trial then checkpoints, its run ends
    KILLED/interrupted and the trial is queued again, so the next invocation resumes it; a worker between trials ends.

    It waits on multiprocessing's sentinel of the parent (the driver, also under a forkserver): a pipe that only the
    driver holds open, so its end-of-file says the driver's process is over, however it ended, even if that was before
    this thread started. Not PR_SET_PDEATHSIG: a forkserver's child has the forkserver as its parent, not the driver,
    and the signal is Linux only."""
    parent = mp.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        # raise_signal: this thread's C handler has run when it returns, so the main thread takes the signal at once
        signal.raise_signal(signal.SIGTERM)
        faults.point("driver_gone")

    threading.Thread(target=watch, daemon=True, name="harness-driver-watch").start()


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
    """Run ``n`` worker processes to the end; returns the signal that interrupted them, if one did. SIGINT is passed on
    to them; SIGTERM and SIGHUP (a closed terminal: the workers, in their own process groups, do not get it) reach them
    as SIGTERM, and this process waits for their checkpoints."""
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
                    os.kill(p.pid, signal.SIGINT if signum == signal.SIGINT else signal.SIGTERM)

    caught = [signal.SIGINT, signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
    old = {s: signal.signal(s, forward) for s in caught}
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
