"""Tracking: a small protocol and its MLflow implementation.

``MlflowTracker`` uses ``MlflowClient`` with explicit run ids (never the fluent run stack), buffers metrics and writes
them with ``log_batch``. After a resume it drops metric points at or below the last step already stored for that
key, so a replayed stretch of steps (bit-identical values) appears exactly once in the history.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Iterator, Protocol
from urllib.parse import unquote, urlparse

from harness import _faults
from harness._errors import HarnessError

__all__ = ["DEFAULT_TRACKING_URI", "MlflowTracker", "Tracker", "TrackingError", "tracking_uri"]

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
_PARAM_LIMIT = 6000
PENDING = "pending_metrics.jsonl"


class TrackingError(HarnessError):
    """The tracking store cannot be reached or written."""


def tracking_uri(uri: str | None = None) -> str:
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def _quiet_mlflow() -> None:
    for name in ("mlflow", "alembic", "mlflow.store.db.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)


class Tracker(Protocol):
    """What the job needs from a tracking backend."""

    run_id: str

    def log_params(self, params: Mapping[str, Any]) -> None: ...
    def log_metric(self, key: str, value: float, step: int) -> None: ...
    def flush(self) -> None: ...
    def set_tags(self, tags: Mapping[str, Any]) -> None: ...
    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None: ...
    def end(self, status: str) -> None: ...


def check_store(uri: str) -> None:
    """Fail fast, before anything is created, when the store cannot be used.

    For a SQLite URI, the folder must be creatable and writable; for http(s), the server must answer.
    """
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        db = Path(unquote(uri[len("sqlite:///") :])) if uri.startswith("sqlite:///") else None
        if db is None:
            return
        folder = db.parent if str(db.parent) else Path(".")
        probe = folder
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if db.is_dir():
            raise TrackingError(f"the MLflow store {uri} is not usable: {db.resolve()} is a folder, not a database file")
        if not probe.is_dir():
            raise TrackingError(f"the MLflow store {uri} cannot be created: {probe.resolve()} is a file, not a folder")
        if not _can_write_in(probe) or (db.exists() and not os.access(db, os.W_OK)):
            raise TrackingError(f"the MLflow store {uri} is not writable (check permissions on {folder.resolve()})")
    elif parsed.scheme in ("http", "https"):
        import urllib.error
        import urllib.request

        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=float(os.environ.get("HARNESS_TRACKING_TIMEOUT", "5"))) as resp:
                resp.read(64)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TrackingError(f"the MLflow tracking server at {uri} is not reachable ({reason}); start it or set MLFLOW_TRACKING_URI") from None


_READY_STORES: set[str] = set()


def _sqlite_file(uri: str) -> Path | None:
    name = unquote(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else ""
    return Path(name).resolve() if name and name != ":memory:" else None


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes on this machine (flock), held for the ``with`` block."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _can_write_in(folder: Path) -> bool:
    """Try it (an unnamed temp file, gone on close): permission bits alone say nothing for root or read-only mounts."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def _local_path(uri: str) -> Path | None:
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return Path(unquote(parsed.path))
    return None


class MlflowTracker:
    """One MLflow run, written through MlflowClient with buffered metrics."""

    def __init__(self, client: Any, run_id: str, *, flush_every: int = 500, retries: int | None = None, backoff_s: float = 0.5):
        self.client = client
        self.run_id = run_id
        self.flush_every = flush_every
        self.retries = retries if retries is not None else int(os.environ.get("HARNESS_TRACKING_RETRIES", "5"))
        self.backoff_s = float(os.environ.get("HARNESS_TRACKING_BACKOFF", backoff_s))
        self._buffer: list[Any] = []
        self.offline = False  # set when the store stayed unreachable: stop talking to it, keep buffering
        self._skip: dict[str, int] = {}
        run = client.get_run(run_id)
        self.experiment_id = run.info.experiment_id
        self.artifact_uri = run.info.artifact_uri
        self.local_artifacts = _local_path(self.artifact_uri)

    # -- construction ----------------------------------------------------------------------------------------------
    @staticmethod
    def client_for(uri: str | None = None) -> Any:
        _quiet_mlflow()
        from mlflow import MlflowClient

        uri = tracking_uri(uri)
        db = _sqlite_file(uri)
        if db is None or str(db) in _READY_STORES:
            return MlflowClient(tracking_uri=uri)
        # Processes that open a new SQLite store at the same moment race to create its tables (alembic errors): the
        # first creates them under a lock (the client creates its store on construction), the others then find them.
        with _file_lock(db.with_name(f".{db.name}.lock")):
            client = MlflowClient(tracking_uri=uri)
            client.search_experiments(max_results=1)
        _READY_STORES.add(str(db))
        return client

    @classmethod
    def ensure_experiment(cls, client: Any, name: str) -> str:
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                client.restore_experiment(exp.experiment_id)
            return exp.experiment_id
        try:
            return client.create_experiment(name)
        except Exception:  # another process created it between our two calls
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    @classmethod
    def start(cls, client: Any, *, experiment: str, run_name: str, tags: Mapping[str, str] | None = None, parent_run_id: str | None = None) -> MlflowTracker:
        exp_id = cls.ensure_experiment(client, experiment)
        all_tags = dict(tags or {})
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = client.create_run(exp_id, run_name=run_name, tags=all_tags)
        return cls(client, run.info.run_id)

    @classmethod
    def attach(cls, client: Any, run_id: str) -> MlflowTracker:
        """Re-open an existing run; metric points already stored are not written again."""
        tracker = cls(client, run_id)
        run = client.get_run(run_id)
        if run.info.status != "RUNNING":
            client.update_run(run_id, status="RUNNING")
        for key in run.data.metrics:
            history = client.get_metric_history(run_id, key)
            if history:
                tracker._skip[key] = max(m.step for m in history)
        return tracker

    # -- writing ---------------------------------------------------------------------------------------------------
    def _retry(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            try:
                return fn(*args, **kwargs)
            except Exception as exc:  # MLflow raises many types for transport failures
                if attempt == self.retries:
                    raise TrackingError(f"could not {what} after {self.retries + 1} attempts: {str(exc).splitlines()[0][:300]}") from None
                time.sleep(delay)
                delay = min(delay * 2, 30.0)
        return None

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        existing = self.client.get_run(self.run_id).data.params
        items = [Param(k, str(v)[:_PARAM_LIMIT]) for k, v in params.items() if k not in existing]
        for i in range(0, len(items), 100):
            self._retry("log params", self.client.log_batch, self.run_id, params=items[i : i + 100])

    def log_metric(self, key: str, value: float, step: int) -> None:
        from mlflow.entities import Metric

        if step <= self._skip.get(key, -1):
            return
        self._buffer.append(Metric(key, float(value), int(time.time() * 1000), int(step)))

    def maybe_flush(self) -> None:
        """Flush once enough points are buffered (call between events, so an event's points go together)."""
        if len(self._buffer) >= self.flush_every:
            self.flush()

    def spill(self, folder: Path) -> int:
        """Write the unflushed metrics to ``folder/pending_metrics.jsonl`` (appending); returns how many."""
        if not self._buffer:
            return 0
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / PENDING, "a", encoding="utf-8") as fh:
            for m in self._buffer:
                fh.write(json.dumps({"key": m.key, "value": m.value, "timestamp": m.timestamp, "step": m.step}) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        n = len(self._buffer)
        self._buffer.clear()
        return n

    def replay_pending(self, folder: Path) -> int:
        """Log metrics a previous session could not write (see spill), then remove the file. Returns how many."""
        from mlflow.entities import Metric

        path = folder / PENDING
        if not path.is_file():
            return 0
        n = 0
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            try:
                d = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line from a crash mid-write
            if d["step"] > self._skip.get(d["key"], -1):
                self._buffer.append(Metric(d["key"], float(d["value"]), int(d["timestamp"]), int(d["step"])))
                n += 1
        self.flush()
        path.unlink()
        return n

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        for k, v in metrics.items():
            self.log_metric(k, v, step)

    def flush(self) -> None:
        if self.offline:
            return
        while self._buffer:
            chunk = self._buffer[:1000]
            self._retry("write metrics", self.client.log_batch, self.run_id, metrics=chunk)
            del self._buffer[: len(chunk)]
            _faults.point("flush")

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        if self.offline:
            return
        items = [RunTag(k, str(v)) for k, v in tags.items()]
        if items:
            self._retry("set tags", self.client.log_batch, self.run_id, tags=items)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Upload a file, unless it already lives in this run's local artifact folder."""
        if self.offline:
            return
        if self.local_artifacts is not None:
            dest = self.local_artifacts / (artifact_path or "") / Path(path).name
            if Path(path).resolve() == dest.resolve():
                return
        self._retry("upload an artifact", self.client.log_artifact, self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self._retry("upload an artifact", self.client.log_text, self.run_id, text, artifact_file)

    def download(self, artifact_path: str, dst: Path) -> Path:
        if self.local_artifacts is not None:
            return self.local_artifacts / artifact_path
        dst.mkdir(parents=True, exist_ok=True)
        return Path(self._retry("download an artifact", self.client.download_artifacts, self.run_id, artifact_path, str(dst)))

    def end(self, status: str) -> None:
        self.flush()
        self._retry("end the run", self.client.set_terminated, self.run_id, status=status)

    def checkpoint_dir(self) -> Path:
        """Where the trainer writes checkpoints: inside the artifact folder when it is local, else a staging folder."""
        if self.local_artifacts is not None:
            return self.local_artifacts / "checkpoints"
        staging = Path(os.environ.get("HARNESS_STAGING", Path(tempfile.gettempdir()) / "harness-staging"))
        return staging / self.run_id / "checkpoints"

    def discard_staging(self) -> None:
        if self.local_artifacts is None:
            shutil.rmtree(self.checkpoint_dir().parent, ignore_errors=True)
