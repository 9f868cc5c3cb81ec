"""The study lock belongs to the storage, not to the way a machine spells its URL (issue 20, defect 2): one
PostgreSQL database reached by address, as localhost, through a second address or with an explicit driver is one lock;
one SQLite or journal file reached by a relative path, an absolute path or a symlink is one lock."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import pytest

from harness.sweep.claim import lock_file, study_lock


def _waiting_advisory_locks(admin_url: str, database: str) -> int:
    """Sessions waiting (not yet granted) for an advisory lock in ``database``, as PostgreSQL itself reports them."""
    import sqlalchemy as sa

    engine = sa.create_engine(admin_url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text(
                "select count(*) from pg_locks l join pg_database d on d.oid = l.database "
                "where l.locktype = 'advisory' and not l.granted and d.datname = :db"), {"db": database}).scalar())
    finally:
        engine.dispose()


def _until(condition, timeout: float) -> bool:
    """Poll ``condition`` (a state another process reports, not a guess at timing) until it holds or time is up."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_one_postgres_database_spelled_three_ways_is_one_study_lock(pg_server):
    from servers import require_second_loopback

    second = require_second_loopback(pg_server)
    port, db = pg_server.port, "harness"
    spellings = [f"postgresql://harness@127.0.0.1:{port}/{db}", f"postgresql://harness@localhost:{port}/{db}",
                 f"postgresql+psycopg://harness@{second}:{port}/{db}"]
    name = f"lock-{uuid.uuid4().hex[:8]}"
    entered: list[str] = []

    def take(url: str) -> None:
        with study_lock(url, name):
            entered.append(url)

    others = [threading.Thread(target=take, args=(url,), daemon=True) for url in spellings[1:]]
    with study_lock(spellings[0], name):
        for t in others:
            t.start()
        # Both others wait inside PostgreSQL for the lock this block holds.
        assert _until(lambda: _waiting_advisory_locks(pg_server.url("postgres"), db) == 2 or bool(entered), 30), "no one waits"
        assert entered == [], "another spelling of the same database took the lock while it was held"
    for t in others:
        t.join(timeout=60)
    assert sorted(entered) == sorted(spellings[1:])


def test_two_studies_in_one_database_do_not_wait_for_each_other(pg_server):
    url = pg_server.url("harness")
    token = uuid.uuid4().hex[:8]
    entered = threading.Event()

    def take() -> None:
        with study_lock(url, f"b-{token}"):
            entered.set()

    with study_lock(url, f"a-{token}"):
        other = threading.Thread(target=take, daemon=True)
        other.start()
        assert entered.wait(timeout=60), "a different study's lock waited for this one"
    other.join(timeout=60)


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_one_study_file_spelled_three_ways_is_one_lock(tmp_path, monkeypatch, kind):
    from filelock import FileLock, Timeout

    real = tmp_path / "real" / "studies"
    real.mkdir(parents=True)
    (tmp_path / "link").symlink_to(real)
    monkeypatch.chdir(tmp_path / "real")
    if kind == "sqlite":
        spellings = [f"sqlite:///{real}/s.db", "sqlite:///studies/s.db", f"sqlite:///{tmp_path}/link/s.db"]
    else:
        spellings = [f"journal:{real}/s.log", "studies/s.log", f"{tmp_path}/link/s.log"]
    files = {lock_file(url, "s") for url in spellings}
    assert len(files) == 1 and files.pop().parent == real
    assert lock_file(spellings[0], "other") != lock_file(spellings[0], "s")
    with study_lock(spellings[1], "s"):
        for url in (spellings[0], spellings[2]):
            with pytest.raises(Timeout):  # the file each other spelling would lock is the one held
                with FileLock(str(lock_file(url, "s")), timeout=0):
                    pass


def test_a_database_server_has_no_lock_file():
    assert lock_file("postgresql://u:pw@db-host/optuna", "s") is None
