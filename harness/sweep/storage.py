"""Where a study lives: the storage URL, the Optuna storage object (with Optuna's heartbeats and retries), and the
heartbeat periods.

* Storage: ``--storage`` or ``sweep.storage``, else ``HARNESS_STUDY_STORAGE``, else ``studies/<study>.db`` (SQLite) in
  the project root. Any Optuna RDB URL works (PostgreSQL for several machines), and a path ending in ``.log`` (or
  ``journal:<path>``) is a journal file (one machine; no heartbeats, so only dead pids on this host are reaped).
* An RDB storage records heartbeats; a trial whose heartbeat is older than the grace period is failed by Optuna's own
  check (``optuna.storages.fail_stale_trials``) and retried by :class:`harness.sweep.attempts.Retry`, Optuna's
  ``RetryHeartbeatStaleTrialCallback`` kept for seed runs.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any, NamedTuple

from harness.errors import UsageError
from harness.tracking.store import parse_store_url, project_root, quiet_mlflow

__all__ = ["FENCE_S", "GRACE_S", "HEARTBEAT_S", "Periods", "close_storage", "is_journal", "make_storage", "periods", "storage_url"]

HEARTBEAT_S = 20  # a running trial records a heartbeat this often
GRACE_S = 90  # a trial whose heartbeat is older than this is stale: its worker died (on any machine)
# A worker whose heartbeats have not been recorded for this long stops its trial (a checkpoint, then the trial is
# queued again): well before GRACE_S, after which another worker may fail the trial and resume its run, so that one
# run never has two trainers. Half the grace leaves the worker 45 s to finish its step and write the checkpoint.
FENCE_S = GRACE_S / 2
# Tests only: HARNESS_HEARTBEAT_S and HARNESS_GRACE_S (seconds) shorten the two periods; the fence stays half the
# grace. Every process on one study must see the same grace, or one reaps what another still calls alive.


class Periods(NamedTuple):
    heartbeat: float
    fence: float
    grace: float


def periods() -> Periods:
    """HEARTBEAT_S, FENCE_S and GRACE_S, or the test knobs above (read when a storage or a trial starts)."""
    beat = float(os.environ.get("HARNESS_HEARTBEAT_S", HEARTBEAT_S))
    grace = float(os.environ.get("HARNESS_GRACE_S", GRACE_S))
    if not 0 < beat < grace / 2:
        raise UsageError(f"HARNESS_HEARTBEAT_S ({beat:g}) must be positive and below half of HARNESS_GRACE_S ({grace:g})")
    return Periods(beat, grace / 2, grace)


def storage_url(configured: str | None, study_name: str) -> str:
    """The study's storage URL: ``configured`` (``--storage`` or the spec's), else ``HARNESS_STUDY_STORAGE``, else a
    SQLite file ``studies/<study>.db`` in the project root (next to ``mlruns/``; see
    :func:`harness.tracking.store.project_root`)."""
    if configured:
        return configured
    env = os.environ.get("HARNESS_STUDY_STORAGE")
    if env:
        return env
    return f"sqlite:///{project_root() / 'studies' / f'{study_name}.db'}"


def is_journal(url: str) -> bool:
    return url.startswith("journal:") or url.endswith(".log")


def make_storage(url: str) -> Any:
    """An Optuna storage for ``url``: RDB (with heartbeats, and a retry of every trial whose heartbeat went stale) or
    a journal file."""
    import optuna

    from harness.sweep.attempts import Retry

    quiet_mlflow()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if is_journal(url):
        from optuna.storages.journal import JournalFileBackend

        path = url.removeprefix("journal:")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(path))
    store = parse_store_url(url)
    kwargs: dict[str, Any] = {}
    if store.kind == "sqlite":
        if store.path is not None:
            store.path.parent.mkdir(parents=True, exist_ok=True)
        # Several workers write the same file: wait for SQLite's lock instead of failing with "database is locked".
        kwargs["connect_args"] = {"timeout": 120}
    if store.kind == "local":
        raise UsageError(f"the study storage {url!r} is a plain path: use sqlite:///{url} for a SQLite file, or a path ending in "
                         ".log (or journal:<path>) for an Optuna journal file")
    beat, _, grace = periods()
    with warnings.catch_warnings():
        # Heartbeats and the retry callback are marked experimental; they are Optuna's answer to worker failures.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # Optuna takes whole seconds; the beats themselves come from harness.sweep.fence (see there why)
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=max(1, math.ceil(beat)),
                                          grace_period=max(1, math.ceil(grace)), heartbeat_stale_trial_callback=Retry())


def close_storage(storage: Any) -> None:
    """Close a database storage's pooled connections (psycopg warns about connections left to the garbage collector)."""
    engine = getattr(storage, "engine", None)
    if engine is not None:
        engine.dispose()
