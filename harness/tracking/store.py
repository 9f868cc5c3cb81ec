"""Where runs are stored: the tracking URI, one parser for store and study URLs, the fail-fast check, the client.

Store URLs come in four kinds: ``sqlite:///path.db`` (the default: ``mlruns/mlflow.db`` in the project root), another SQL database
(``postgresql://``, ``mysql://``; parsed with SQLAlchemy's :func:`~sqlalchemy.engine.make_url`), ``http(s)://`` (an
``mlflow server``), and a local folder (a plain path or ``file:`` URI: MLflow's file store, or an Optuna journal).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal
from urllib.parse import unquote, urlparse

from harness.errors import HarnessError
from harness.tracking.redact import redact_text, redact_url

__all__ = [
    "STORE_DIR",
    "StoreURL",
    "TrackingError",
    "check_store",
    "client_for",
    "local_lock",
    "parse_store_url",
    "project_root",
    "quiet_mlflow",
    "require_store",
    "tracking_uri",
]

STORE_DIR = "mlruns"  # a project's MLflow store: <project root>/mlruns/mlflow.db (SQLite) and its artifacts
POSTGRES_INSTALL = 'pip install -e ".[postgres]"'


class TrackingError(HarnessError):
    """The tracking store cannot be reached or written."""


def project_root(start: Path | None = None) -> Path:
    """Where a project's runs and studies live: the nearest folder, from the working directory up, that already holds
    an ``mlruns/`` folder; else the working directory. So a command run from a subfolder (``experiments/``) uses the
    project's store instead of starting a second one there."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / STORE_DIR).is_dir():
            return folder
    return here


def tracking_uri(uri: str | None = None) -> str:
    """``uri``, else ``MLFLOW_TRACKING_URI``, else the project's SQLite store (an absolute path; see project_root)."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / STORE_DIR / 'mlflow.db'}"


# ----------------------------------------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class StoreURL:
    """A parsed store (or study storage) URL."""

    url: str
    kind: Literal["sqlite", "sql", "http", "local"]
    path: Path | None = None  # the SQLite file or the local folder/file; None for in-memory SQLite and remote stores

    @property
    def is_remote(self) -> bool:
        return self.kind in ("sql", "http")

    def absolute(self) -> str:
        """The URL with a relative local path made absolute (so it means the same from any folder)."""
        if self.path is None or self.kind not in ("sqlite", "local"):
            return self.url
        resolved = self.path.resolve()
        return f"sqlite:///{resolved}" if self.kind == "sqlite" else str(resolved)


def parse_store_url(url: str) -> StoreURL:
    """Classify ``url``. A SQL URL goes through SQLAlchemy's parser, so drivers (``postgresql+psycopg``), credentials and
    query strings are read the way the engine will read them."""
    scheme = urlparse(url).scheme.lower()
    if scheme in ("http", "https"):
        return StoreURL(url, "http")
    if scheme in ("", "file"):
        raw = unquote(urlparse(url).path) if scheme == "file" else url
        return StoreURL(url, "local", Path(raw) if raw else None)
    if scheme == "journal":
        return StoreURL(url, "local", Path(url[len("journal:") :]))
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise TrackingError(redact_text(f"cannot parse the store URL {url!r}: {exc}")) from None
    if parsed.get_backend_name() == "sqlite":
        db = parsed.database
        return StoreURL(url, "sqlite", Path(db) if db and db != ":memory:" else None)
    return StoreURL(url, "sql")


# ----------------------------------------------------------------------------------------------------------- checking


def require_store(uri: str) -> None:
    """For reading: a local store must exist already (reading never creates an empty store in whatever folder the
    user happens to be in)."""
    from harness.errors import UsageError

    store = parse_store_url(uri)
    if store.kind in ("sqlite", "local") and store.path is not None and not store.path.exists():
        raise UsageError(f"no MLflow store at {store.path} (tracking URI {uri}); run an experiment here first "
                         "(harness run SPEC), cd to the project folder, or set MLFLOW_TRACKING_URI")


def check_store(uri: str) -> None:
    """Fail fast, before anything is created, when the store cannot be used.

    * SQLite file or local folder: it must be creatable and writable (nothing is created here);
    * another SQL database: the driver must be installed and the server must accept a connection;
    * http(s): the tracking server must answer its health check.
    """
    store = parse_store_url(uri)
    if store.kind in ("sqlite", "local") and store.path is not None:
        _check_local(uri, store.path, is_file=store.kind == "sqlite")
    elif store.kind == "sql":
        _check_sql(uri)
    elif store.kind == "http":
        _check_http(uri)


def _check_local(uri: str, path: Path, *, is_file: bool) -> None:
    folder = path.parent if is_file else path
    probe = folder if str(folder) else Path(".")
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if is_file and path.is_dir():
        raise TrackingError(f"the MLflow store {uri} is not usable: {path.resolve()} is a folder, not a database file")
    if not is_file and path.exists() and not path.is_dir():
        raise TrackingError(f"the MLflow store {uri} is not usable: {path.resolve()} is a file, not a folder")
    if not probe.is_dir():
        raise TrackingError(f"the MLflow store {uri} cannot be created: {probe.resolve()} is a file, not a folder")
    if not _can_write_in(probe) or (is_file and path.exists() and not os.access(path, os.W_OK)):
        raise TrackingError(f"the MLflow store {uri} is not writable (check permissions on {probe.resolve()})")


def _can_write_in(folder: Path) -> bool:
    """Try it (an unnamed temp file, gone on close): permission bits alone say nothing for root or read-only mounts."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def _check_sql(uri: str) -> None:
    from sqlalchemy import create_engine, text

    try:
        engine = create_engine(uri, pool_pre_ping=False)
    except ImportError as exc:
        raise TrackingError(f"the database driver for {redact_url(uri)} is not installed ({exc}); install it with: {POSTGRES_INSTALL}") from None
    except Exception as exc:
        raise TrackingError(f"cannot use the store {redact_url(uri)}: {redact_text(str(exc).splitlines()[0])[:300]}") from None
    try:
        with engine.connect() as conn:
            conn.execute(text("select 1"))
    except Exception as exc:
        reason = redact_text(str(getattr(exc, "orig", exc)).strip().splitlines()[0])[:300]
        raise TrackingError(f"the database {redact_url(uri)} is not reachable ({reason}); start it or fix the URL") from None
    finally:
        engine.dispose()


def _check_http(uri: str) -> None:
    """The server answers its health check, and takes this process's credentials (a search of one experiment): a
    wrong password is said here, once, rather than as the first write's error deep in a run.

    The credentials are MLflow's: a ``user:password@`` in the URI (urllib cannot open such a URL: they go into an
    Authorization header, as ``requests`` does for MLflow's client), else ``MLFLOW_TRACKING_USERNAME`` /
    ``MLFLOW_TRACKING_PASSWORD``, else ``MLFLOW_TRACKING_TOKEN`` (a bearer token)."""
    import urllib.error
    import urllib.request

    base, headers = _http_auth(uri)
    timeout = float(os.environ.get("HARNESS_TRACKING_TIMEOUT", "5"))
    shown = redact_url(uri)
    try:
        with urllib.request.urlopen(urllib.request.Request(base + "/health", headers=headers), timeout=timeout) as resp:
            resp.read(64)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = redact_text(str(getattr(exc, "reason", exc)))
        raise TrackingError(f"the MLflow tracking server at {shown} is not reachable ({reason}); start it or set MLFLOW_TRACKING_URI") from None
    probe = urllib.request.Request(base + "/api/2.0/mlflow/experiments/search?max_results=1", headers=headers)
    try:
        with urllib.request.urlopen(probe, timeout=timeout) as resp:
            resp.read(64)
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            given = "the user and password in MLFLOW_TRACKING_URI" if "Authorization" in headers and "@" in uri.partition("://")[2].split("/", 1)[0] \
                else "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD" if os.environ.get("MLFLOW_TRACKING_USERNAME") \
                else "MLFLOW_TRACKING_TOKEN" if os.environ.get("MLFLOW_TRACKING_TOKEN") else None
            what = (f"refused the credentials in {given} (HTTP {exc.code})" if given else
                    f"asks for a login (HTTP {exc.code}); set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD")
            raise TrackingError(f"the MLflow tracking server at {shown} {what}") from None
        # another answer (an old server without the search API, a proxy's page): the run's own calls will say more
    except (urllib.error.URLError, OSError, ValueError):
        pass


def _http_auth(uri: str) -> tuple[str, dict[str, str]]:
    """``uri`` without its user part, and the Authorization header MLflow's client would send to it."""
    import base64
    from urllib.parse import unquote, urlsplit, urlunsplit

    parts = urlsplit(uri.rstrip("/"))
    headers: dict[str, str] = {}
    user, password = None, None
    try:
        user, password = parts.username, parts.password
        host = parts.netloc.rpartition("@")[2]
    except ValueError:
        host = parts.netloc.rpartition("@")[2]
    base = urlunsplit((parts.scheme, host, parts.path, parts.query, ""))
    if user is None and os.environ.get("MLFLOW_TRACKING_USERNAME"):
        user, password = os.environ["MLFLOW_TRACKING_USERNAME"], os.environ.get("MLFLOW_TRACKING_PASSWORD", "")
    if user is not None:
        pair = f"{unquote(user)}:{unquote(password or '')}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
    elif os.environ.get("MLFLOW_TRACKING_TOKEN"):
        headers["Authorization"] = f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"
    return base, headers


# ----------------------------------------------------------------------------------------------------------- client


@contextlib.contextmanager
def local_lock(path: Path, *, timeout: float = -1) -> Iterator[None]:
    """An exclusive lock between processes on this machine, held for the ``with`` block (``filelock``)."""
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path), timeout=timeout):
        yield


def quiet_mlflow() -> None:
    """MLflow and alembic log every schema migration and store detail at INFO; keep the terminal for the run."""
    for name in ("mlflow", "alembic", "mlflow.store.db.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)


_READY_STORES: set[str] = set()


def client_for(uri: str | None = None) -> Any:
    """An ``MlflowClient`` for the store.

    Retries: :class:`~harness.tracking.tracker.MlflowTracker` is the one retry layer for every store, so MLflow's own
    HTTP retries are switched off here (they would otherwise multiply: 7 MLflow retries inside each of ours).
    """
    quiet_mlflow()
    from mlflow import MlflowClient

    uri = tracking_uri(uri)
    store = parse_store_url(uri)
    if store.kind == "http":
        os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    if store.kind != "sqlite" or store.path is None or str(store.path.resolve()) in _READY_STORES:
        return MlflowClient(tracking_uri=uri)
    # Processes that open a new SQLite store at the same moment race to create its tables (alembic errors): the first
    # creates them under a lock (the client creates its store on construction), the others then find them.
    db = store.path.resolve()
    with local_lock(db.with_name(f".{db.name}.lock")):
        client = MlflowClient(tracking_uri=uri)
        client.search_experiments(max_results=1)
    _READY_STORES.add(str(db))
    return client
