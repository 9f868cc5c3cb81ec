"""Real servers for tests: a throwaway PostgreSQL cluster and an ``mlflow server``, both on 127.0.0.1.

Importable helpers (no pytest needed):

* ``start_postgres(base_dir) -> PostgresServer``: ``initdb`` a fresh cluster under ``base_dir`` (superuser
  ``harness``, no password), start it with ``pg_ctl`` on a free port of two loopback addresses (127.0.0.1 and
  ``SECOND_LOOPBACK``, 127.0.0.2: Linux routes all of 127/8 to ``lo``, so one server looks like two hosts), create the
  databases ``harness`` and ``mlflow``. ``.url(db)`` is a SQLAlchemy URL for psycopg 3
  (``postgresql+psycopg://harness@127.0.0.1:PORT/db``); ``.pid`` is the postmaster's pid, ``.port`` its port;
  ``.stop()`` stops it by pid (idempotent). Host connections of the superuser are trusted; every other role logs in
  with its password (SCRAM): ``.create_role(name, password)`` and ``.create_database(name, owner=)`` make them.
* ``start_mlflow_server(base_dir, backend_store_uri) -> MlflowServer``: ``python -m mlflow server`` with proxied
  artifacts under ``base_dir/artifacts``, one worker, in its own process group; ready when ``GET /health`` is 200.
  ``.uri`` is ``http://127.0.0.1:PORT``; ``.stop()`` stops the whole process group by pid (idempotent).
* ``ServerUnavailable``: raised when PostgreSQL's server binaries are missing; the message says which and how to
  install them.

Pytest fixtures (session-scoped): ``pg_server`` and ``mlflow_server`` (the latter on a PostgreSQL backend store).
Use them with ``pytest_plugins = ["servers"]`` (in ``tests/conftest.py`` to share one instance of each server across
all test modules). When the binaries are missing they skip, or fail when ``HARNESS_REQUIRE_SERVERS=1``.

PostgreSQL refuses to run as root: as root, ``initdb``/``pg_ctl`` run as ``nobody`` (or ``$HARNESS_PG_USER``) via
``setpriv`` (or ``runuser``). The cluster then has to live in a directory that user can reach; pytest's base temp
(``/tmp/pytest-of-root``) is mode 0700, so in that case the cluster goes into a fresh directory under the first
reachable one of ``$HARNESS_SERVERS_TMP``, ``$TMPDIR``, ``/tmp``, ``/var/tmp``, and ``stop()`` removes it again
(after copying the server log into ``base_dir``).

Environment overrides: ``HARNESS_PG_BIN`` (look for the binaries only in this directory), ``HARNESS_PG_USER``
(the unprivileged user when running as root), ``HARNESS_SERVERS_TMP`` (see above), ``HARNESS_REQUIRE_SERVERS``.
"""

from __future__ import annotations

import atexit
import glob
import grp
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "MlflowServer",
    "PG_HBA",
    "PostgresServer",
    "SECOND_LOOPBACK",
    "ServerUnavailable",
    "find_postgres_binaries",
    "free_port",
    "require_second_loopback",
    "start_mlflow_server",
    "start_postgres",
]

PG_TOOLS = ("initdb", "pg_ctl", "postgres")
INSTALL_HINT = "apt-get update && apt-get install -y postgresql"
PG_USER = "harness"  # the cluster's superuser (initdb -U); nothing to do with the OS user that runs the server
DATABASES = ("harness", "mlflow")
SECOND_LOOPBACK = "127.0.0.2"  # the server's second address: another "host name" for the same database
# The superuser (the fixtures' URLs) connects without a password; every other role must give its password, as on a
# real server, so a test can check where a password in a URL ends up.
PG_HBA = """\
# written by tests/servers.py
local all all            trust
host  all harness 127.0.0.0/8  trust
host  all harness ::1/128      trust
host  all all     127.0.0.0/8  scram-sha-256
host  all all     ::1/128      scram-sha-256
"""
_MAX_SOCKET_PATH = 100  # sun_path is 108 bytes on Linux; keep a margin


class ServerUnavailable(Exception):
    """A server cannot be started because something it needs is not installed. The message says what and how."""


# --------------------------------------------------------------------------------------------------------- helpers


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (bind port 0, read it back, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (index 0 is the state), or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode("ascii", "replace")
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:
        return None
    return raw[raw.rfind(")") + 2 :].split()


def _start_time(pid: int) -> str | None:
    fields = _proc_stat(pid)
    return fields[19] if fields and len(fields) > 19 else None  # field 22 of stat: starttime


def _pid_alive(pid: int, start_time: str | None = None) -> bool:
    """True if PID runs (a zombie counts as dead; with ``start_time``, a recycled pid counts as dead too)."""
    if os.path.isdir("/proc/self"):
        fields = _proc_stat(pid)
        if fields is None or fields[0] in ("Z", "X"):
            return False
        return start_time is None or (len(fields) > 19 and fields[19] == start_time)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group PGID."""
    if not os.path.isdir("/proc/self"):
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return []
        return [pgid]
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _proc_stat(int(entry))
        if fields and len(fields) > 3 and fields[0] not in ("Z", "X") and fields[3] == str(pgid):
            members.append(int(entry))
    return members


def _children(pid: int) -> list[int]:
    out = []
    if os.path.isdir("/proc/self"):
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                fields = _proc_stat(int(entry))
                if fields and len(fields) > 1 and fields[1] == str(pid) and fields[0] not in ("Z", "X"):
                    out.append(int(entry))
    return out


def _wait_until(pred: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def _tail(path: Path, n: int = 40) -> str:
    try:
        lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        return f"(no log at {path}: {exc})"
    return "\n".join(lines[-n:]) if lines else f"(log {path} is empty)"


_live: set[object] = set()
_live_lock = threading.Lock()


def _register(server: object) -> None:
    with _live_lock:
        _live.add(server)


def _unregister(server: object) -> None:
    with _live_lock:
        _live.discard(server)


@atexit.register
def _stop_leftovers() -> None:  # a last resort; fixtures and callers stop their servers themselves
    with _live_lock:
        servers = list(_live)
    for server in servers:
        try:
            server.stop()  # type: ignore[attr-defined]
        except Exception as exc:  # noqa: BLE001 - at exit, report and go on with the next server
            print(f"servers.py: could not stop {server!r}: {exc}", file=sys.stderr)


# -------------------------------------------------------------------------------------------------------- postgres


def _version_key(path: str) -> tuple:
    m = re.search(r"/postgresql/([0-9.]+)/bin", path)
    return tuple(int(p) for p in m.group(1).split(".") if p) if m else ()


def _has_tools(d: str) -> list[str]:
    return [t for t in PG_TOOLS if os.path.isfile(os.path.join(d, t)) and os.access(os.path.join(d, t), os.X_OK)]


def find_postgres_binaries() -> Path:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``: ``$HARNESS_PG_BIN`` if set (and nothing else),
    else the first PATH entry that has all three, else the newest ``/usr/lib/postgresql/*/bin``. Raises
    :class:`ServerUnavailable` naming what is missing and how to install it."""
    override = os.environ.get("HARNESS_PG_BIN")
    if override:
        candidates = [override]
        searched = f"HARNESS_PG_BIN={override}"
    else:
        path_dirs = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d]
        versioned = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
        candidates = path_dirs + versioned
        searched = "PATH and /usr/lib/postgresql/*/bin"
    found: dict[str, str] = {}
    for d in candidates:
        have = _has_tools(d)
        if len(have) == len(PG_TOOLS):
            return Path(d)
        for t in have:
            found.setdefault(t, d)
    missing = [t for t in PG_TOOLS if t not in found]
    if missing:
        what = f"PostgreSQL server binaries not found: {', '.join(missing)} (searched {searched})"
    else:  # each exists somewhere, but never all three together
        what = f"PostgreSQL server binaries initdb, pg_ctl and postgres not found together in one directory (searched {searched})"
    raise ServerUnavailable(f"{what}. Install them with: {INSTALL_HINT}")


def _drop_privileges_prefix(user: str) -> list[str]:
    """argv prefix that runs a command as USER (we are root)."""
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise ServerUnavailable(
            f"PostgreSQL refuses to run as root and the user {user!r} (HARNESS_PG_USER, default nobody) does not exist"
        ) from None
    setpriv = shutil.which("setpriv")
    if setpriv:
        return [setpriv, f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups", "--"]
    runuser = shutil.which("runuser")
    if runuser:
        return [runuser, "-u", user, "--"]
    raise ServerUnavailable(
        "PostgreSQL refuses to run as root and neither setpriv nor runuser was found to drop privileges. "
        "Install them with: apt-get update && apt-get install -y util-linux"
    )


def _traversable_by(path: Path, uid: int, gids: set[int]) -> bool:
    """Whether USER (uid, gids) can reach PATH: search permission on it and on every ancestor."""
    p = Path(os.path.abspath(path))
    for d in [p, *p.parents]:
        try:
            st = os.stat(d)
        except OSError:
            return False
        if st.st_uid == uid:
            bit = 0o100
        elif st.st_gid in gids:
            bit = 0o010
        else:
            bit = 0o001
        if not st.st_mode & bit:
            return False
    return True


class PostgresServer:
    """A running throwaway cluster. Stop it with :meth:`stop` (idempotent)."""

    def __init__(
        self,
        *,
        bin_dir: Path,
        root: Path,
        data_dir: Path,
        socket_dir: Path,
        log_path: Path,
        port: int,
        run_as: list[str],
        env: dict[str, str],
        base_dir: Path,
        owned_dirs: list[Path],
    ):
        self.bin_dir = bin_dir
        self.root = root  # the cluster's own directory (data/, postgres.log, maybe sock/)
        self.data_dir = data_dir
        self.socket_dir = socket_dir
        self.log_path = log_path
        self.port = port
        self.host = "127.0.0.1"
        self.user = PG_USER
        self.pid: int | None = None
        self.startup_s: float | None = None
        self._pid_start: str | None = None
        self._run_as = run_as
        self._env = env
        self._base_dir = base_dir
        self._owned_dirs = owned_dirs  # directories outside base_dir that stop() removes
        self._lock = threading.Lock()
        self._stopped = False

    def url(self, db: str = "harness") -> str:
        """SQLAlchemy URL for database DB, psycopg 3 driver."""
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{db}"

    def libpq_url(self, db: str = "harness") -> str:
        """Plain libpq connection string (for psql, psycopg.connect)."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{db}"

    def _admin(self, statement: Any) -> None:
        import psycopg

        with psycopg.connect(self.libpq_url("postgres"), autocommit=True) as conn:  # CREATE DATABASE needs autocommit
            conn.execute(statement)

    def create_role(self, name: str, password: str) -> None:
        """A login role that authenticates with ``password`` (SCRAM) on host connections."""
        from psycopg import sql

        self._admin(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(name), sql.Literal(password)))

    def create_database(self, name: str, *, owner: str | None = None) -> None:
        """A new, empty database (owned by ``owner``, else the superuser)."""
        from psycopg import sql

        stmt = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if owner is not None:
            stmt = sql.SQL("{} OWNER {}").format(stmt, sql.Identifier(owner))
        self._admin(stmt)

    def alive(self) -> bool:
        return self.pid is not None and _pid_alive(self.pid, self._pid_start)

    def __repr__(self) -> str:
        return f"PostgresServer(port={self.port}, pid={self.pid}, data_dir={str(self.data_dir)!r})"

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the postmaster by pid: SIGINT (fast shutdown: disconnects clients), then SIGQUIT, then SIGKILL, each
        with a deadline. Then remove the directories created outside ``base_dir``. Safe to call more than once."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        try:
            pid = self.pid
            if pid is not None and _pid_alive(pid, self._pid_start):
                for sig, wait in ((signal.SIGINT, timeout), (signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0)):
                    if sig == signal.SIGKILL:  # the backends would notice the postmaster's death, but not at once
                        for child in _children(pid):
                            _signal(child, signal.SIGKILL)
                    _signal(pid, sig)
                    if _wait_until(lambda: not _pid_alive(pid, self._pid_start), wait):
                        break
        finally:
            _unregister(self)
            self._cleanup_dirs()

    def _cleanup_dirs(self) -> None:
        if not self._owned_dirs:
            return
        try:  # keep the server log with the test's files
            shutil.copyfile(self.log_path, self._base_dir / f"postgres-{self.port}.log")
        except OSError:
            pass
        for d in self._owned_dirs:
            shutil.rmtree(d, ignore_errors=True)
        self._owned_dirs = []


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def start_postgres(base_dir: Path, *, timeout: float = 60.0, databases: tuple[str, ...] = DATABASES) -> PostgresServer:
    """``initdb`` a fresh cluster under BASE_DIR and start it on 127.0.0.1:<free port>; create DATABASES.

    Raises :class:`ServerUnavailable` if the binaries are missing, RuntimeError (with the log tail) if the cluster
    does not come up. Whatever was started is stopped again on failure."""
    base_dir = Path(base_dir).resolve()
    base_dir.mkdir(parents=True, exist_ok=True)
    bin_dir = find_postgres_binaries()

    run_as: list[str] = []
    uid, gid = os.geteuid(), os.getegid()
    gids = set(os.getgroups()) | {gid}
    if uid == 0:
        user = os.environ.get("HARNESS_PG_USER") or "nobody"
        run_as = _drop_privileges_prefix(user)
        pw = pwd.getpwnam(user)
        uid, gid = pw.pw_uid, pw.pw_gid
        gids = {gid} if run_as[0].endswith("setpriv") else {gid, *(g.gr_gid for g in grp.getgrall() if user in g.gr_mem)}

    # Where the cluster lives: under base_dir when the server's user can reach it, else a fresh dir elsewhere.
    owned: list[Path] = []
    parents = [base_dir]
    if uid != os.geteuid():
        parents += [Path(p) for p in (os.environ.get("HARNESS_SERVERS_TMP"), tempfile.gettempdir(), "/tmp", "/var/tmp") if p]
    parent = next((p for p in parents if p.is_dir() and _traversable_by(p, uid, gids)), None)
    if parent is None:
        raise RuntimeError(
            f"no directory reachable by uid {uid} for the PostgreSQL cluster (tried {', '.join(map(str, parents))}); "
            "set HARNESS_SERVERS_TMP to a directory with mode 1777"
        )
    root = Path(tempfile.mkdtemp(prefix="pg-", dir=parent))
    if parent != base_dir:
        owned.append(root)
    server: PostgresServer | None = None
    try:
        os.chmod(root, 0o700)
        socket_dir = root / "sock"
        socket_dir.mkdir()
        if len(str(socket_dir)) + len("/.s.PGSQL.65535") > _MAX_SOCKET_PATH:
            socket_dir.rmdir()
            socket_dir = Path(tempfile.mkdtemp(prefix="pgs-", dir="/tmp"))
            owned.append(socket_dir)
        if run_as:
            for p in (root, socket_dir):
                os.chown(p, uid, gid)
        data_dir = root / "data"
        log_path = root / "postgres.log"

        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", LANG="C", TZ="UTC")
        if run_as:  # nobody cannot use root's HOME or TMPDIR
            env["HOME"] = env["TMPDIR"] = str(root)

        def run(argv: list[str], what: str, tmo: float = 120.0) -> None:
            try:
                proc = subprocess.run(
                    run_as + argv,
                    cwd=root,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    timeout=tmo,
                    check=False,
                )
            except subprocess.TimeoutExpired as exc:
                raise RuntimeError(
                    f"{what} timed out after {tmo:.0f}s: {shlex.join(argv)}\n"
                    f"{(exc.output or b'').decode(errors='replace')}\n{_tail(log_path)}"
                ) from None
            if proc.returncode != 0:
                raise RuntimeError(
                    f"{what} failed (exit {proc.returncode}): {shlex.join(argv)}\n"
                    f"{proc.stdout.decode(errors='replace')}\n--- {log_path}:\n{_tail(log_path)}"
                )

        t0 = time.monotonic()
        run(
            [str(bin_dir / "initdb"), "-D", str(data_dir), "-U", PG_USER, "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"], "initdb"
        )
        if databases:  # single-user mode: needs neither a client program nor a Python driver
            _create_databases(run_as, env, root, bin_dir, data_dir, databases)
        # Overwritten in place, so it keeps the owner and mode initdb gave it (the server's user reads it).
        (data_dir / "pg_hba.conf").write_text(PG_HBA)

        server = PostgresServer(
            bin_dir=bin_dir,
            root=root,
            data_dir=data_dir,
            socket_dir=socket_dir,
            log_path=log_path,
            port=0,
            run_as=run_as,
            env=env,
            base_dir=base_dir,
            owned_dirs=owned,
        )
        _register(server)
        for attempt in range(3):  # a free port can be taken between free_port() and the bind: retry with another
            port = server.port = free_port()
            opts = (
                # An address that cannot be bound (no 127.0.0.2 outside Linux) is only a warning: 127.0.0.1 still serves.
                f"-p {port} -k {shlex.quote(str(socket_dir))} -c listen_addresses=127.0.0.1,{SECOND_LOOPBACK} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            )
            try:
                run(
                    [str(bin_dir / "pg_ctl"), "-D", str(data_dir), "-l", str(log_path), "-o", opts, "-w", "-t", str(int(timeout)), "start"],
                    "pg_ctl start",
                    tmo=timeout + 30,
                )
                break
            except RuntimeError:
                _adopt_postmaster(server)  # pg_ctl may have given up on a postmaster that still came up
                if server.pid is not None:
                    raise
                if attempt == 2 or "already in use" not in _tail(log_path, 15):
                    raise
        _adopt_postmaster(server)
        if server.pid is None:
            raise RuntimeError(f"pg_ctl start returned but {data_dir}/postmaster.pid names no live process\n{_tail(log_path)}")

        server.startup_s = time.monotonic() - t0
        return server
    except BaseException:
        if server is not None:
            server.stop(timeout=10)
        else:
            for d in owned:
                shutil.rmtree(d, ignore_errors=True)
        raise


def _adopt_postmaster(server: PostgresServer) -> None:
    """Read the postmaster's pid from DATA/postmaster.pid (first line) if that process is alive."""
    try:
        first = (server.data_dir / "postmaster.pid").read_text().splitlines()[0].strip()
        pid = int(first)
    except (OSError, ValueError, IndexError):
        return
    start = _start_time(pid)
    if _pid_alive(pid):
        server.pid, server._pid_start = pid, start


def _create_databases(run_as: list[str], env: dict[str, str], cwd: Path, bin_dir: Path, data_dir: Path, databases: tuple[str, ...]) -> None:
    """CREATE DATABASE each of DATABASES with ``postgres --single`` (before the server starts). Single-user mode exits
    0 even when a statement fails, so its output is checked for ERROR/FATAL."""
    for db in databases:
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", db):
            raise ValueError(f"database name {db!r}: use lower-case letters, digits and _")
    script = "".join(f"CREATE DATABASE {db};\n" for db in databases).encode()
    argv = [str(bin_dir / "postgres"), "--single", "-D", str(data_dir), "-c", "fsync=off", "postgres"]
    proc = subprocess.run(
        run_as + argv, input=script, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120, check=False
    )
    out = proc.stdout.decode(errors="replace")
    if proc.returncode != 0 or re.search(r"\b(ERROR|FATAL|PANIC):", out):
        raise RuntimeError(f"creating databases {', '.join(databases)} failed (exit {proc.returncode}): {shlex.join(argv)}\n{out}")


# ---------------------------------------------------------------------------------------------------------- mlflow


class MlflowServer:
    """A running ``mlflow server`` (its own process group). Stop it with :meth:`stop` (idempotent)."""

    def __init__(self, proc: subprocess.Popen, port: int, log_path: Path, artifacts_dir: Path, backend_store_uri: str):
        self.proc = proc
        self.pid = proc.pid  # also the process group id (start_new_session=True)
        self.port = port
        self.uri = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self.artifacts_dir = artifacts_dir
        self.backend_store_uri = backend_store_uri
        self.startup_s: float | None = None
        self._lock = threading.Lock()
        self._stopped = False

    def __repr__(self) -> str:
        return f"MlflowServer(uri={self.uri!r}, pid={self.pid})"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the process group, wait with a deadline, then SIGKILL the group. Safe to call more than once."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        try:
            pgid = self.pid
            for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
                if self.proc.poll() is not None and not _group_members(pgid):
                    break
                try:
                    os.killpg(pgid, sig)
                except ProcessLookupError:
                    pass
                if _wait_until(lambda: self.proc.poll() is not None and not _group_members(pgid), wait):
                    break
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        finally:
            _unregister(self)


def _http_status(url: str, timeout: float = 2.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError, ValueError):
        return None


def start_mlflow_server(base_dir: Path, backend_store_uri: str, *, timeout: float = 180.0, app_name: str | None = None,
                        extra_env: dict[str, str] | None = None) -> MlflowServer:
    """Start ``python -m mlflow server`` on 127.0.0.1:<free port> with proxied artifacts in BASE_DIR/artifacts and
    wait until ``GET /health`` answers 200. RuntimeError with the log tail if it exits or the deadline passes.

    ``app_name`` is ``mlflow server --app-name`` (``basic-auth``: MLflow's login, configured by the file in
    ``extra_env["MLFLOW_AUTH_CONFIG_PATH"]``); ``extra_env`` is added to the server's environment."""
    base_dir = Path(base_dir).resolve()
    base_dir.mkdir(parents=True, exist_ok=True)
    artifacts_dir = base_dir / "artifacts"
    artifacts_dir.mkdir(exist_ok=True)

    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)  # the tests point this at their own stores; the server has no use for it
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no Huey job-runner processes
    env["PYTHONUNBUFFERED"] = "1"
    # Each uvicorn worker imports mlflow.server.fastapi_app, which imports starlette.middleware.wsgi and so prints a
    # StarletteDeprecationWarning (a UserWarning subclass). No mlflow flag avoids that import; filter it by message.
    quiet = "ignore:starlette.middleware.wsgi is deprecated:UserWarning"
    env["PYTHONWARNINGS"] = f"{env['PYTHONWARNINGS']},{quiet}" if env.get("PYTHONWARNINGS") else quiet
    env.update(extra_env or {})

    last_error: BaseException | None = None
    for attempt in range(3):  # retry only when the port was taken between free_port() and uvicorn's bind
        port = free_port()
        log_path = base_dir / f"mlflow-server-{port}.log"
        argv = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            backend_store_uri,
            "--serve-artifacts",
            "--artifacts-destination",
            str(artifacts_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            *(["--app-name", app_name] if app_name else []),
        ]
        t0 = time.monotonic()
        with open(log_path, "ab") as log:
            log.write(f"$ {shlex.join(argv)}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                argv, cwd=base_dir, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        server = MlflowServer(proc, port, log_path, artifacts_dir, backend_store_uri)
        _register(server)
        try:
            deadline = time.monotonic() + timeout
            while True:
                if _http_status(f"{server.uri}/health") == 200:
                    server.startup_s = time.monotonic() - t0
                    return server
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"mlflow server exited with code {proc.returncode} before it was ready\n--- {log_path}:\n{_tail(log_path)}"
                    )
                if time.monotonic() >= deadline:
                    raise RuntimeError(
                        f"mlflow server not ready after {timeout:.0f}s (GET {server.uri}/health)\n--- {log_path}:\n{_tail(log_path)}"
                    )
                time.sleep(0.2)
        except RuntimeError as exc:
            server.stop(timeout=10)
            last_error = exc
            if attempt == 2 or "address already in use" not in _tail(log_path, 20).lower():
                raise
        except BaseException:
            server.stop(timeout=10)
            raise
    raise RuntimeError(str(last_error))  # not reached


# --------------------------------------------------------------------------------------------------------- fixtures

try:
    import pytest
except ImportError:  # the helpers above work without pytest
    pytest = None  # type: ignore[assignment]


def servers_required() -> bool:
    return os.environ.get("HARNESS_REQUIRE_SERVERS", "").strip().lower() in ("1", "true", "yes")


def _unavailable(exc: ServerUnavailable) -> None:
    if servers_required():
        pytest.fail(f"{exc} [HARNESS_REQUIRE_SERVERS=1: a missing server is a failure, not a skip]", pytrace=False)
    pytest.skip(str(exc))


def _require_driver() -> None:
    """``PostgresServer.url()`` names the psycopg 3 driver; without it every client (SQLAlchemy, Optuna, the mlflow
    server) fails with an ImportError. Say so up front."""
    import importlib.util

    if importlib.util.find_spec("psycopg") is None:
        raise ServerUnavailable(
            "the PostgreSQL driver psycopg (version 3) is not installed, so postgresql+psycopg:// URLs cannot connect. "
            "Install it with: pip install -e '.[postgres]' (or pip install 'psycopg[binary]>=3.1')"
        )


def require_second_loopback(server: PostgresServer) -> str:
    """``SECOND_LOOPBACK`` when ``server`` answers there (a second "host" for one database); else skip, or fail under
    ``HARNESS_REQUIRE_SERVERS=1``, saying what is missing."""
    try:
        socket.create_connection((SECOND_LOOPBACK, server.port), timeout=5).close()
    except OSError as exc:
        _unavailable(ServerUnavailable(
            f"PostgreSQL does not answer on the second loopback address {SECOND_LOOPBACK}:{server.port} ({exc}). Linux routes "
            f"all of 127.0.0.0/8 to lo; elsewhere add the address first (macOS: sudo ifconfig lo0 alias {SECOND_LOOPBACK} up)"))
    return SECOND_LOOPBACK


if pytest is not None:

    @pytest.fixture(scope="session")
    def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
        """A PostgreSQL cluster for the whole session, with databases ``harness`` and ``mlflow``."""
        missing: ServerUnavailable | None = None
        try:
            _require_driver()
            server = start_postgres(tmp_path_factory.mktemp("postgres"))
        except ServerUnavailable as exc:
            missing = exc
        if missing is not None:  # outside the except block: no "during handling of the above exception" noise
            _unavailable(missing)
        try:
            yield server
        finally:
            server.stop()

    @pytest.fixture(scope="session")
    def mlflow_server(pg_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
        """An ``mlflow server`` for the whole session, backend store ``pg_server.url("mlflow")``, proxied artifacts."""
        server = start_mlflow_server(tmp_path_factory.mktemp("mlflow-server"), pg_server.url("mlflow"))
        try:
            yield server
        finally:
            server.stop()
