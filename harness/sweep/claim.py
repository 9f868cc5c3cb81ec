"""The exactly-once claim: under one lock that every worker on every machine shares, reap the dead, decide what runs
next, queue it and take it.

Why by hand: Optuna's ``Study.ask`` pops one queued trial atomically, but nothing in Optuna decides *which* seed run
to queue next across processes; two workers deciding at once would queue the same one twice. So deciding, queueing
and asking are one step under the study lock, and the taker writes itself down as the trial's owner (pid, host, a
first heartbeat) before the lock is released, so that no reaper can take a trial whose owner is not written yet.

The lock lives where the study lives: a PostgreSQL advisory lock (or MySQL ``GET_LOCK``) in the study database
itself, so it holds across machines; a file lock next to a SQLite or journal file, which only one machine can share
anyway. It depends on what the storage is, not on how a machine spells its URL: machines that reach one database as
``127.0.0.1``, ``localhost`` or another address, with or without an explicit driver, take one lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator

from harness.errors import UsageError
from harness.sweep.attempts import Attempts, reap
from harness.sweep.fence import beat
from harness.sweep.storage import is_journal
from harness.testing import faults
from harness.tracking.store import local_lock, parse_store_url

__all__ = ["lock_file", "study_lock", "take"]


def take(url: str, study_name: str, attempts: Attempts, decide: Callable[[], Any | None], *, tracking_uri: str) -> Any | None:
    """Under the study lock: reap dead workers' attempts, then ``decide()`` (ask for the trial to run next, or None)
    and own what it returned."""
    with study_lock(url, study_name):
        reap(attempts, tracking_uri)
        trial = decide()
        if trial is not None:
            trial.set_user_attr("pid", os.getpid())
            trial.set_user_attr("host", socket.gethostname())
            beat(attempts, trial.number)
    return trial


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
    if is_journal(url):
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
