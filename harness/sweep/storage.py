"""Where a study lives (an Optuna storage URL) and the lock that serialises study set-up and trial hand-out.

* Storage: ``--storage`` or ``sweep.storage``, else ``HARNESS_STUDY_STORAGE``, else ``studies/<study>.db`` (SQLite) in
  the project root. Any Optuna RDB
  URL works (PostgreSQL for several machines), and a path ending in ``.log`` (or ``journal:<path>``) is a journal file.
* The study lock is held while a study is created or joined (so Optuna creates its tables in a fresh database once)
  and while a worker takes its next trial. It lives where the study lives: a PostgreSQL advisory lock (or MySQL
  ``GET_LOCK``) in the study database itself, so it holds across machines; a file lock next to a SQLite or journal
  file, which only one machine can share anyway. It depends on what the storage is, not on how a machine spells its
  URL: machines that reach one database as ``127.0.0.1``, ``localhost`` or another address, with or without an
  explicit driver (``postgresql+psycopg://``), take one lock (see :func:`study_lock`).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import tempfile
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, NamedTuple

from harness.errors import UsageError
from harness.testing import faults
from harness.tracking.store import local_lock, parse_store_url, project_root, quiet_mlflow

__all__ = ["FENCE_S", "GRACE_S", "HEARTBEAT_S", "MAX_CRASH_RETRIES", "Periods", "TrialStore", "close_storage", "lock_file",
           "make_storage", "periods", "retried_numbers", "storage_url", "study_lock"]

HEARTBEAT_S = 20  # a running trial records a heartbeat this often
GRACE_S = 90  # a trial whose heartbeat is older than this is stale: its worker died (on any machine)
# A worker whose heartbeats have not been recorded for this long stops its trial (a checkpoint, then the trial is
# queued again): well before GRACE_S, after which another worker may fail the trial and resume its run, so that one
# run never has two trainers. Half the grace leaves the worker 45 s to finish its step and write the checkpoint.
FENCE_S = GRACE_S / 2
MAX_CRASH_RETRIES = 5  # a trial whose worker dies this many times (an out-of-memory kill, say) is not tried again
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


def _is_journal(url: str) -> bool:
    return url.startswith("journal:") or url.endswith(".log")


def make_storage(url: str) -> Any:
    """An Optuna storage for ``url``: RDB (with heartbeats, and a retry of every trial whose heartbeat went stale) or
    a journal file."""
    import optuna

    quiet_mlflow()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if _is_journal(url):
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
    with warnings.catch_warnings():
        # Heartbeats and the retry callback are marked experimental; they are Optuna's answer to worker failures.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_CRASH_RETRIES)
        # Optuna takes whole seconds; it beats only under Study.optimize, which harness does not use (see worker.py)
        beat, _, grace = periods()
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=max(1, math.ceil(beat)),
                                          grace_period=max(1, math.ceil(grace)), heartbeat_stale_trial_callback=retry)


def close_storage(storage: Any) -> None:
    """Close a database storage's pooled connections (psycopg warns about connections left to the garbage collector)."""
    engine = getattr(storage, "engine", None)
    if engine is not None:
        engine.dispose()


def retried_numbers(trials: list[Any]) -> set[int]:
    """Numbers of trials that were retried (a crashed or interrupted attempt): each has a newer copy that continues
    its MLflow run, so it no longer counts."""
    import optuna

    out: set[int] = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for t in trials:
            out.update(optuna.storages.RetryHeartbeatStaleTrialCallback.retry_history(t))
    return out


class TrialStore:
    """The per-trial storage operations that Optuna's Study API does not offer with ask/tell: a trial's storage id, its
    heartbeat, and failing a trial that another process left RUNNING. They exist only on Optuna's storage classes;
    every use of those in harness is here."""

    def __init__(self, storage: Any, study_name: str):
        self.storage = storage
        self.study_id = storage.get_study_id_from_name(study_name)

    def trial_id(self, number: int) -> int:
        return self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)

    def frozen(self, number: int) -> Any:
        """Trial ``number`` as it is in the storage now (a FrozenTrial)."""
        return self.storage.get_trial(self.trial_id(number))

    def report(self, number: int, step: int, value: float) -> None:
        """An intermediate value of trial ``number``, written by any process (Trial.report needs the trial's own
        process): a repeated sweep's seed runs report into their configuration's trial this way."""
        self.storage.set_trial_intermediate_value(self.trial_id(number), step, value)

    def set_attr(self, number: int, key: str, value: Any) -> None:
        self.storage.set_trial_user_attr(self.trial_id(number), key, value)

    def beats(self) -> bool:
        return hasattr(self.storage, "record_heartbeat") and self.storage.get_heartbeat_interval() is not None

    def beat(self, number: int) -> None:
        if self.beats():
            self.storage.record_heartbeat(self.trial_id(number))

    def fail(self, study: Any, number: int, *, stop_reason: str, retry: bool) -> bool:
        """Mark RUNNING trial ``number`` FAIL with ``stop_reason``, and (``retry``) queue a copy that continues its MLflow
        run. False when another process ended it first (so one retry at most is ever queued)."""
        import optuna

        tid = self.trial_id(number)
        try:
            self.storage.set_trial_user_attr(tid, "stop_reason", stop_reason)
            if not self.storage.set_trial_state_values(tid, state=optuna.trial.TrialState.FAIL):
                return False
        except (RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
            return False
        if retry:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.RetryHeartbeatStaleTrialCallback()(study, self.storage.get_trial(tid))
        return True


def _lock_key(study_name: str) -> int:
    """A stable 63-bit advisory-lock key for a study: the same in every process and on every machine. It depends on the
    study alone: PostgreSQL scopes an advisory lock to the database it is taken in, so the database needs no part in
    it (and the URL's spelling, which differs from machine to machine, must have none)."""
    digest = hashlib.sha256(f"harness-study|{study_name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def lock_file(url: str, study_name: str) -> Path | None:
    """The file :func:`study_lock` locks for a journal or SQLite storage: next to the storage's file, found by its real
    path (a relative path, a symlink and the absolute path name one file, so they name one lock). None for a database
    server, whose lock lives in the database."""
    if _is_journal(url):
        path = Path(os.path.realpath(url.removeprefix("journal:")))
        return path.with_name(f".{path.name}.{study_name}.lock")
    store = parse_store_url(url)
    if store.kind != "sqlite":
        return None
    db = Path(os.path.realpath(store.path)) if store.path is not None else Path(tempfile.gettempdir()) / "harness-memory.db"
    return db.with_name(f".{db.name}.{study_name}.lock")


@contextlib.contextmanager
def study_lock(url: str, study_name: str) -> Iterator[None]:
    """Exclusive access to the study's set-up and trial hand-out, for every process that uses this storage, however
    it spells the storage's URL."""
    faults.point("study_lock")  # tests hold every process here at once: a fresh database's schema creation then races
    path = lock_file(url, study_name)
    if path is not None:
        with local_lock(path):
            yield
        return
    with _database_lock(url, study_name):
        yield


@lru_cache(maxsize=4)
def _lock_engine(url: str) -> Any:
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    return create_engine(url, poolclass=NullPool)


@contextlib.contextmanager
def _database_lock(url: str, study_name: str) -> Iterator[None]:
    """A session-level lock in the database: PostgreSQL's advisory lock or MySQL's GET_LOCK (held on its own
    connection, released when the block ends or the connection dies with its process)."""
    from sqlalchemy import text

    engine = _lock_engine(url)
    dialect = engine.dialect.name
    # AUTOCOMMIT: a session lock held by a connection idle in a transaction could be cut by idle-transaction timeouts
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        if dialect == "postgresql":
            key: int | str = _lock_key(study_name)
            conn.execute(text("select pg_advisory_lock(:k)"), {"k": key})
            release = text("select pg_advisory_unlock(:k)")
        elif dialect in ("mysql", "mariadb"):
            # GET_LOCK's names are server-wide: the database, as the server names it, keeps two databases' studies apart
            database = conn.execute(text("select database()")).scalar()
            key = "harness-" + hashlib.sha256(f"{database}|{study_name}".encode()).hexdigest()[:40]
            conn.execute(text("select get_lock(:k, -1)"), {"k": key})
            release = text("select release_lock(:k)")
        else:
            raise UsageError(f"sweeps on {dialect} storages are not supported (no cross-machine lock); use PostgreSQL, MySQL or SQLite")
        try:
            yield
        finally:
            conn.execute(release, {"k": key})
