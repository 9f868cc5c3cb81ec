"""One run's MLflow work in a helper process, so that ``harness run`` never waits for MLflow to start.

``import mlflow`` and opening a SQLite store are about 1.5 s of pure Python, a tenth of the chapter's run, and one
CPU does them while the other idles. :meth:`TrackingProcess.start` forks a helper while the command is still small
(before torch is imported, with one thread). The helper imports MLflow, checks the store and reaps stale runs while the
training process imports torch and builds the model, then serves one run: :class:`RemoteTracker` has
:class:`~harness.tracking.tracker.MlflowTracker`'s interface and sends each call over a pipe, in order, and waits for
its answer. Metric points wait in the training process and travel with the next call (a flush, at the latest), so a
training step never wakes the helper. The training process never imports MLflow.

Failures keep their in-process meaning. An error in the helper (a store that refused a write, or stayed unreachable
through the retries) is raised in the training process as the same exception. A helper that died is a
:class:`~harness.tracking.store.TrackingError`, which stops a run as a store outage does. A training process that
dies leaves the helper reading end-of-file: it exits without touching the run, whose owner tags name the training
process, so the next harness command marks it crashed. The helper ignores SIGINT and SIGTERM: the training process
decides how a run stops, and tells the store through the helper.

The conversation is hand-written on ``multiprocessing``'s ``Pipe``: a ``multiprocessing`` manager's proxies would carry
the calls, but one cannot be left running while this process goes on (the plots are drawn during the sample) without
a thread of its own here, and answers must be matched to their calls after a Ctrl-C cut one short.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from harness.tracking.store import TrackingError
from harness.tracking.tracker import checkpoint_dir_for, local_artifact_dir, write_pending

__all__ = ["RemoteTracker", "TrackingProcess", "helper_wanted"]

_DISABLE = "HARNESS_TRACKING_PROCESS"  # "0": keep MLflow in the training process


def helper_wanted() -> bool:
    """Whether a helper can pay here: on Linux (macOS's system libraries do not promise a usable child after a bare
    fork), in a process that has not imported torch or MLflow yet (once either is loaded the start-up is already
    paid, and a process with threads must not fork), unless ``HARNESS_TRACKING_PROCESS=0``."""
    return (sys.platform.startswith("linux") and os.environ.get(_DISABLE, "1") != "0" and "torch" not in sys.modules
            and "mlflow" not in sys.modules and threading.active_count() == 1)


class TrackingProcess:
    """The helper process and the training process's end of its pipe."""

    def __init__(self, pid: int, conn: Any, uri: str):
        self.pid = pid
        self.conn = conn
        self.uri = uri
        self._seq = 0
        self._waiting: set[int] = set()  # submitted calls whose answers are still to be read
        self._answers: dict[int, tuple[bool, Any]] = {}
        self.dead: str | None = None  # why the helper cannot be reached any more

    @classmethod
    def start(cls, uri: str) -> TrackingProcess:
        """Fork the helper; it starts on the store at once. Call only where :func:`helper_wanted` says so."""
        from multiprocessing import Pipe

        ours, theirs = Pipe()
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()  # the child must not write out the parent's buffered output again
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the helper
            ours.close()
            code = 0
            try:
                _serve(theirs, uri, parent)
            except BaseException:
                code = 1
            finally:
                os._exit(code)  # never the parent's exit handlers or buffers
        theirs.close()
        return cls(pid, ours, uri)

    # -- the conversation --------------------------------------------------------------------------------------------
    def send(self, op: str, *args: Any, points: list[tuple[str, float, int, int]] | None = None) -> int:
        if self.dead:
            raise TrackingError(f"the tracking process is gone ({self.dead})")
        self._seq += 1
        try:
            self.conn.send((self._seq, op, args, points or []))
        except (OSError, EOFError) as exc:
            self.dead = f"{type(exc).__name__}: {exc}"
            raise TrackingError(f"the tracking process is gone ({self.dead})") from None
        return self._seq

    def answer(self, seq: int) -> Any:
        """Wait for the answer to request ``seq``; raise what the helper raised. Answers to other submitted requests
        are kept for them; answers nobody waits for any more (a call interrupted by Ctrl-C) are dropped."""
        while seq not in self._answers:
            try:
                got, ok, value = self.conn.recv()
            except (OSError, EOFError) as exc:
                self.dead = self.dead or f"it exited ({type(exc).__name__})"
                raise TrackingError(f"the tracking process is gone ({self.dead})") from None
            if got == seq or got in self._waiting:
                self._answers[got] = (ok, value)
        self._waiting.discard(seq)
        ok, value = self._answers.pop(seq)
        if not ok:
            raise value
        return value

    def request(self, op: str, *args: Any, points: list[tuple[str, float, int, int]] | None = None) -> Any:
        return self.answer(self.send(op, *args, points=points))

    def submit(self, op: str, *args: Any, points: list[tuple[str, float, int, int]] | None = None) -> int:
        seq = self.send(op, *args, points=points)
        self._waiting.add(seq)
        return seq

    def close(self) -> None:
        """End the conversation and wait for the helper to exit (its writes are done when this returns)."""
        if self.pid is None:
            return
        if not self.dead:
            try:
                self.conn.send((0, "close", (), []))
            except (OSError, EOFError):
                pass
        self.conn.close()
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass
        self.pid = None  # type: ignore[assignment]

    # -- the run -----------------------------------------------------------------------------------------------------
    def open_run(self, *, experiment: str, run_name: str, tags: Mapping[str, str], parent_run_id: str | None = None,
                 run_id: str | None = None) -> RemoteTracker:
        """Ask for the run (created, or ``run_id`` adopted) without waiting: the tracker waits for it when first asked
        something only the store knows (the run id, its artifact folder)."""
        seq = self.submit("open", experiment, run_name, dict(tags), parent_run_id, run_id)
        return RemoteTracker(self, seq)


class _Client:
    """What callers read from ``tracker.client`` besides the run: the store's URI. Other attributes are the helper's
    ``MlflowClient`` methods, called there."""

    def __init__(self, proc: TrackingProcess):
        self.tracking_uri = proc.uri
        self._proc = proc

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *args, **kwargs: self._proc.request("client", name, args, kwargs)


class _Pending:
    """A call submitted to the helper; ``result()`` waits for it and raises what it raised."""

    def __init__(self, proc: TrackingProcess, seq: int):
        self._proc, self._seq = proc, seq

    def result(self) -> Any:
        return self._proc.answer(self._seq)


class RemoteTracker:
    """:class:`~harness.tracking.tracker.MlflowTracker`'s interface for a run kept by a :class:`TrackingProcess`."""

    def __init__(self, proc: TrackingProcess, open_seq: int, *, flush_every: int = 500):
        self.proc = proc
        self.client = _Client(proc)
        self.flush_every = flush_every
        self._open_seq: int | None = open_seq
        self._info: dict[str, str] = {}
        self._open_error: BaseException | None = None
        self._points: list[tuple[str, float, int, int]] = []
        self._offline = False

    @property
    def helper_pids(self) -> tuple[int, ...]:
        return (self.proc.pid,) if self.proc.pid else ()

    # -- what the store knows ------------------------------------------------------------------------------------------
    def _run_info(self) -> dict[str, str]:
        if self._open_seq is not None:
            try:
                self._info = self.proc.answer(self._open_seq)
            except KeyboardInterrupt:
                raise  # still coming: a later call waits for it again
            except BaseException as exc:
                self._open_seq, self._open_error = None, exc
                raise
            self._open_seq = None
        if self._open_error is not None:
            raise self._open_error  # every later call fails as the open did (the store said why)
        return self._info

    @property
    def run_id(self) -> str:
        return self._run_info()["run_id"]

    @property
    def experiment_id(self) -> str:
        return self._run_info()["experiment_id"]

    @property
    def artifact_uri(self) -> str:
        return self._run_info()["artifact_uri"]

    @property
    def local_artifacts(self) -> Path | None:
        return local_artifact_dir(self.artifact_uri)

    def checkpoint_dir(self) -> Path:
        return checkpoint_dir_for(self.run_id, self.local_artifacts)

    @property
    def offline(self) -> bool:
        return self._offline

    @offline.setter
    def offline(self, value: bool) -> None:
        self._offline = bool(value)
        if not self.proc.dead:  # (a helper that is gone has nothing left to stop)
            self._call("set_offline", self._offline)

    # -- calls ---------------------------------------------------------------------------------------------------------
    def _call(self, op: str, *args: Any) -> Any:
        self._run_info()  # an open that failed raises its error here, before anything else is asked
        points, self._points = self._points, []
        try:
            return self.proc.request(op, *args, points=points)
        except TrackingError:
            if self.proc.dead:  # kept for spill: whatever the helper got of them may be lost, and a replay skips
                self._points = points + self._points  # the steps the store has already
            raise

    def log_metric(self, key: str, value: float, step: int) -> None:
        self._points.append((key, float(value), int(time.time() * 1000), int(step)))

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        for k, v in metrics.items():
            self.log_metric(k, v, step)

    def maybe_flush(self) -> None:
        if len(self._points) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        if self._offline:
            return  # the store is away: the points wait here (see spill), as MlflowTracker keeps them in its buffer
        self._call("flush")

    def spill(self, folder: Path) -> int:
        if self.proc.dead:  # the points still here are all that is left to keep; the helper's unwritten ones died with it
            points, self._points = self._points, []
            return write_pending(folder, points)
        return int(self._call("spill", folder))

    def end(self, status: str) -> None:
        self._call("end", status)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if self._offline:
            return
        self._call("set_tags", {k: str(v) for k, v in tags.items()})

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._call("log_params", {k: str(v) for k, v in params.items()})

    def log_text(self, text: str, artifact_file: str) -> None:
        self._call("log_text", text, artifact_file)

    def log_dict(self, data: Any, artifact_file: str) -> None:
        self._call("log_dict", data, artifact_file)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if self._offline:
            return
        self._call("log_artifact", Path(path), artifact_path)

    def download(self, artifact_path: str, dst: Path) -> Path:
        return Path(self._call("download", artifact_path, Path(dst)))

    def discard_staging(self) -> None:
        self._call("discard_staging")

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(tracker, *args)`` in the helper, with its tracker (``fn`` must be a module-level function)."""
        return self._call("call", fn, *args)

    def submit(self, fn: Callable[..., Any], *args: Any) -> _Pending:
        """:meth:`call` without waiting: the helper works on it while this process goes on."""
        self._run_info()
        points, self._points = self._points, []
        return _Pending(self.proc, self.proc.submit("call", fn, *args, points=points))


# ------------------------------------------------------------------------------------------------------------ helper


def _serve(conn: Any, uri: str, parent: int) -> None:
    """The helper's life: open the store, then answer requests in order until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from harness.testing import faults

    faults.act_for(parent)  # a fault point reached here kills the training process, as it would in-process
    client: Any = None
    failed: BaseException | None = None
    try:
        from harness.tracking.liveness import reap_stale_runs
        from harness.tracking.store import check_store, client_for

        check_store(uri)
        client = client_for(uri)
        reap_stale_runs(client)
    except BaseException as exc:
        failed = exc
    finally:
        from harness import collector

        collector.resume()
    tracker: Any = None
    while True:
        try:
            seq, op, args, points = conn.recv()
        except (EOFError, OSError):
            return  # the training process is gone (or done): leave the run as it is
        if op == "close" or (op == "open" and os.getppid() != parent):
            return  # (the process that asked for the run died while this one was starting: make none)
        try:
            if failed is not None:
                raise failed
            if points:
                tracker.buffer(points)
            if op == "open":
                tracker = _open(client, *args)
                value: Any = {"run_id": tracker.run_id, "experiment_id": tracker.experiment_id, "artifact_uri": tracker.artifact_uri}
            elif op == "client":
                name, a, k = args
                value = getattr(client, name)(*a, **k)
            elif op == "call":
                value = args[0](tracker, *args[1:])
            elif op == "set_offline":
                tracker.offline = args[0]
                value = None
            else:
                value = getattr(tracker, op)(*args)
            answer: tuple[int, bool, Any] = (seq, True, value)
        except BaseException as exc:
            if op == "open":
                failed = exc  # no run: every later request fails the same way
            answer = (seq, False, _portable(exc))
        try:
            conn.send(answer)
        except (OSError, EOFError):
            return
        except Exception as exc:  # an answer that does not pickle
            conn.send((seq, False, TrackingError(f"tracking: {op} gave an answer that cannot be sent back ({exc})")))


def _open(client: Any, experiment: str, run_name: str, tags: dict[str, str], parent_run_id: str | None, run_id: str | None) -> Any:
    from harness.tracking.tracker import MlflowTracker

    if run_id is not None:
        return MlflowTracker.attach(client, run_id, tags=tags)
    return MlflowTracker.start(client, experiment=experiment, run_name=run_name, tags=tags, parent_run_id=parent_run_id)


def _portable(exc: BaseException) -> BaseException:
    """The exception itself when it survives pickling, else a TrackingError that says what it was."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return TrackingError(f"{type(exc).__name__}: {exc}")
