"""A worker: take the next seed run's attempt, run it behind the fence, tell the study, until nothing is left.

Several workers (processes on this machine, or invocations on other machines) share one study. What runs next is the
scheduler's (:mod:`harness.sweep.schedule`), decided and taken under the study lock (:mod:`harness.sweep.claim`);
dead workers' attempts are reaped and retried there (:mod:`harness.sweep.attempts`), and a retry resumes the same
MLflow run from its last checkpoint. The fence (:mod:`harness.sweep.fence`) stops a trial that this worker may no
longer own. A worker process also stops when its driver process is gone (:func:`_die_with_driver`).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import multiprocessing.connection
import os
import signal
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

from harness import collector
from harness.errors import HarnessError
from harness.spec import Spec, spec_from_dict
from harness.sweep.attempts import Attempts
from harness.sweep.claim import study_lock, take
from harness.sweep.fence import Fence
from harness.sweep.pruning import make_pruner
from harness.sweep.sampling import make_sampler
from harness.sweep.schedule import Scheduler, seed_run
from harness.sweep.storage import close_storage, make_storage
from harness.sweep.trial import RunLookupFailed, TrialInterrupted, TrialOutcome, TrialSettings, run_trial
from harness.testing import faults
from harness.tracking.redact import redact_text, redact_url
from harness.train.events import StopReason

__all__ = ["WorkerPlan", "run_workers", "start_workers_early", "work"]


@dataclass(frozen=True)
class WorkerPlan:
    """Everything a worker needs (picklable: spawned worker processes receive it)."""

    spec_dict: dict[str, Any]
    storage_url: str
    total: int  # configurations the study runs in all
    deadline: float | None  # stop taking trials after this time (time.time())
    trials: TrialSettings
    # The driver's environment and working folder: a worker forked by a forkserver started earlier (by an earlier
    # sweep in the same process) would otherwise keep the ones the forkserver started with.
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    cwd: str = field(default_factory=os.getcwd)


def work(plan: WorkerPlan) -> int:
    """Take and run trials until none is left. Returns 0, or 128 + the signal (130, 143) when interrupted."""

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
    study = optuna.load_study(study_name=name, storage=storage, sampler=make_sampler(base),
                              pruner=make_pruner(base, configurations=plan.total))
    attempts = Attempts(study, storage, lock=lambda: study_lock(plan.storage_url, name))
    scheduler = Scheduler(attempts, base, plan.total, deadline=plan.deadline)
    while True:
        trial = take(plan.storage_url, name, attempts, scheduler.next, tracking_uri=plan.trials.tracking_uri)
        if trial is None:
            return 0
        fence = Fence(attempts, trial.number)
        try:
            with fence.beating():
                outcome = run_trial(plan.trials, trial, base, seed_run(study, trial), watch=fence)
        except TrialInterrupted as stop:
            if stop.signum is None:  # not a signal: this worker may no longer own the trial (the fence, or the pruning callback)
                _hand_back(attempts, trial.number, fence.why or "the trial was ended by another worker", plan.storage_url)
                continue  # it is queued again (or another worker's retry has it): on to the next trial
            attempts.end(trial.number, stop_reason=StopReason.INTERRUPTED)
            return 128 + (stop.signum or signal.SIGINT)
        except RunLookupFailed:
            # Queued again as if its worker had died: the retry keeps the trial's mlflow_run_id and resumes that run.
            attempts.end(trial.number, stop_reason=StopReason.CRASHED)
            raise
        except BaseException:
            with contextlib.suppress(Exception):
                trial.set_user_attr("stop_reason", StopReason.FAILED.value)
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        faults.point("trial_end")
        _tell(study, trial, outcome)


def _tell(study: Any, trial: Any, outcome: TrialOutcome) -> None:
    """Tell the study how the trial went. Nothing to tell when another worker has ended the trial meanwhile (it
    judged this worker dead): the retry it queued owns the trial, finds the run ended and reports it."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    try:
        if outcome.stop_reason is not None:
            trial.set_user_attr("stop_reason", outcome.stop_reason.value)
        if outcome.fail_reason:
            trial.set_user_attr("fail_reason", redact_text(outcome.fail_reason))
        if outcome.state == "COMPLETE":
            study.tell(trial, outcome.value, skip_if_finished=True)
        else:
            study.tell(trial, state=TrialState[outcome.state], skip_if_finished=True)
    except UpdateFinishedTrialError:
        pass


def _hand_back(attempts: Attempts, number: int, why: str, url: str) -> None:
    """Queue a fenced trial again (FAIL, interrupted, with a retry that resumes its run); nothing to do when another
    worker has ended it (its retry has the run). When the study database is still away, stop this worker with a clear
    error: the trial stays RUNNING under this worker's pid, and the next invocation (or, after the grace, any worker)
    reaps it and resumes the run from the checkpoint just written."""
    try:
        attempts.end(number, stop_reason=StopReason.INTERRUPTED)  # False: another worker did
    except Exception as exc:
        while exc.__cause__ is not None and isinstance(exc.__cause__, Exception):  # Optuna wraps the driver's error
            exc = exc.__cause__
        detail = redact_text(str(exc).strip().splitlines()[0])[:300] if str(exc).strip() else type(exc).__name__
        raise HarnessError(f"{why}; so trial {number} stopped, with a checkpoint (its run ended KILLED, interrupted). The study "
                           f"storage {redact_url(url)} still does not answer ({detail}). Once it does, run the same command again: "
                           "the trial resumes from that checkpoint.") from None


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
