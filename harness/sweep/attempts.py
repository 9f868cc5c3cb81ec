"""A sweep's trials are *attempts* at seed runs: the first attempt of (configuration, seed), and, after a crash or an
interrupt, the retry that resumes the same MLflow run. What Optuna provides is used as it is:

* a trial's identity (its configuration, its seed) and its MLflow run are user attributes, which Optuna's
  ``RetryHeartbeatStaleTrialCallback`` copies to the retry, so the newest trial with an identity is the current
  attempt and every older one is superseded (no bookkeeping of retry chains);
* a worker that died on another machine is found by Optuna's heartbeat check (``fail_stale_trials``); one that died on
  this host is found at once, by its pid; a worker that was interrupted (Ctrl-C, SIGTERM, a fence hand-back) hands its
  trial back itself. All three end the attempt FAIL and queue the retry through :class:`Retry`.

The crash budget counts crashes only: an interrupt is the user's, a hand-back the fence's, and neither says the seed
run cannot finish. After :data:`MAX_CRASHES` crashes the seed run is given up (no retry is made) and counts as failed.
"""

from __future__ import annotations

import contextlib
import copy
import os
import socket
import time
import warnings
from typing import Any, Callable, ContextManager

from harness.train.events import StopReason

__all__ = ["CONFIG", "CRASHES", "MAX_CRASHES", "REPEAT", "SEED", "Attempts", "Retry", "current", "gave_up", "identity", "reap",
           "superseded"]

CONFIG = "harness.config"  # user attribute: the seed run's configuration id (c000)
SEED = "harness.seed"  # user attribute: its seed
REPEAT = "harness.repeat"  # user attribute: its index in the sweep's seed list when it was made
CRASHES = "harness.crashes"  # user attribute: how many earlier attempts of this seed run crashed
MAX_CRASHES = 5  # a seed run whose worker dies this many times (an out-of-memory kill, say) is not tried again
# What an attempt says of itself; a retry starts without them (they would otherwise be read as the retry's own).
_OWN = ("pid", "host", "stop_reason", "fail_reason")


def identity(trial: Any) -> tuple[str, int] | None:
    """(configuration, seed) of a seed run's attempt; None for a trial that is no seed run (a worker died while it
    proposed it)."""
    attrs = trial.user_attrs
    return (str(attrs[CONFIG]), int(attrs[SEED])) if CONFIG in attrs and SEED in attrs else None


def current(trials: list[Any]) -> dict[tuple[str, int], Any]:
    """(configuration, seed) -> its newest attempt."""
    out: dict[tuple[str, int], Any] = {}
    for t in sorted(trials, key=lambda t: t.number):
        key = identity(t)
        if key is not None:
            out[key] = t
    return out


def superseded(trials: list[Any]) -> set[int]:
    """Numbers of attempts that a newer attempt of the same seed run replaced (each continued the same MLflow run)."""
    newest = {t.number for t in current(trials).values()}
    return {t.number for t in trials if identity(t) is not None and t.number not in newest}


def _crashed(trial: Any) -> bool:
    """An ended attempt that its worker did not hand back itself."""
    return trial.user_attrs.get("stop_reason") != StopReason.INTERRUPTED.value


def gave_up(trial: Any) -> bool:
    """A failed attempt that gets no retry: it failed for good (diverged, invalid, an error), or it crashed once more
    than the budget allows. Whatever else is FAIL is waiting for its retry."""
    if trial.state.name != "FAIL":
        return False
    stop = trial.user_attrs.get("stop_reason")
    if stop is not None and not StopReason.is_retry(stop):
        return True
    return int(trial.user_attrs.get(CRASHES, 0)) + _crashed(trial) > MAX_CRASHES


def _base_callback() -> type:
    import optuna

    return optuna.storages.RetryHeartbeatStaleTrialCallback  # type: ignore[no-any-return]


class Retry(_base_callback()):  # type: ignore[misc]
    """Optuna's retry of a stale (or interrupted, or reaped) trial, for seed runs: the copy keeps the identity and the
    MLflow run (user attributes), counts crashes (:data:`CRASHES`), starts without the failed attempt's own facts, and
    is not made for a seed run that has used up its crash budget, or for a trial that is no seed run."""

    def __init__(self) -> None:
        with warnings.catch_warnings():
            import optuna

            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            super().__init__(max_retry=None)

    def __call__(self, study: Any, trial: Any) -> None:
        if identity(trial) is None or gave_up(trial):
            return
        attempt = copy.copy(trial)
        attrs = {k: v for k, v in trial.user_attrs.items() if k not in _OWN}
        attrs[CRASHES] = int(trial.user_attrs.get(CRASHES, 0)) + _crashed(trial)
        attempt.user_attrs = attrs
        with warnings.catch_warnings():
            import optuna

            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            super().__call__(study, attempt)


class Attempts:
    """A study's attempts by number, for any process (``Trial`` objects only work in the process that asked for
    them): through the storage's own methods (``optuna.storages.BaseStorage``), the only ones that take a trial id."""

    def __init__(self, study: Any, storage: Any, *, lock: Callable[[], ContextManager[Any]] | None = None):
        self.study = study
        self.storage = storage
        self.study_id = storage.get_study_id_from_name(study.study_name)
        self.lock = lock or contextlib.nullcontext  # the study lock (harness.sweep.claim), for ending attempts by hand

    def trial_id(self, number: int) -> int:
        return int(self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number))

    def frozen(self, number: int) -> Any:
        """Attempt ``number`` as the storage has it now (a FrozenTrial)."""
        return self.storage.get_trial(self.trial_id(number))

    def fail_and_retry(self, number: int, *, stop_reason: StopReason) -> bool:
        """End RUNNING attempt ``number`` FAIL with ``stop_reason`` (crashed or interrupted) and queue its retry,
        which resumes its MLflow run. False when another process ended it first (so one retry at most is queued)."""
        import optuna

        tid = self.trial_id(number)
        try:
            self.storage.set_trial_user_attr(tid, "stop_reason", stop_reason.value)
            if not self.storage.set_trial_state_values(tid, state=optuna.trial.TrialState.FAIL):
                return False
        except (RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
            return False
        Retry()(self.study, self.storage.get_trial(tid))
        return True

    def end(self, number: int, *, stop_reason: StopReason) -> bool:
        """:meth:`fail_and_retry` under the study lock: no scheduler may see the attempt ended and its retry not yet
        queued (it would queue a second retry, and two workers would resume one run)."""
        with self.lock():
            return self.fail_and_retry(number, stop_reason=stop_reason)


def reap(attempts: Attempts, tracking_uri: str) -> list[int]:
    """Attempts whose worker died, ended FAIL (crashed) and retried (within the crash budget); their MLflow runs end
    FAILED/crashed. Three ways to find them:

    * on this host, RUNNING with a dead pid: at once;
    * on any host, RUNNING with no owner written a grace period after it started (its worker died taking it);
    * on any host, a stale heartbeat: Optuna's own check, after the grace period.

    Returns the numbers of the attempts reaped here by pid or owner."""
    import optuna
    from optuna.trial import TrialState

    from harness.sweep.storage import periods
    from harness.tracking import client_for
    from harness.tracking.liveness import mark_run_crashed

    reaped: list[int] = []
    host = socket.gethostname()
    study = attempts.study
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not _dead(t, host, periods().grace):
            continue
        if not attempts.fail_and_retry(t.number, stop_reason=StopReason.CRASHED):
            continue  # another process got there first
        reaped.append(t.number)
        run_id, pid = t.user_attrs.get("mlflow_run_id"), t.user_attrs.get("pid")
        if run_id:
            mark_run_crashed(client_for(tracking_uri), run_id, owner=int(pid) if pid is not None else None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    return reaped


def _dead(t: Any, host: str, grace: float) -> bool:
    """A RUNNING attempt whose worker is known to be gone."""
    from harness.tracking.liveness import pid_alive

    pid, thost = t.user_attrs.get("pid"), t.user_attrs.get("host")
    if pid is None:
        started = t.datetime_start.timestamp() if t.datetime_start is not None else time.time()
        return time.time() - started > grace
    return thost == host and int(pid) != os.getpid() and not pid_alive(int(pid))
