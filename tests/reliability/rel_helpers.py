"""Helpers shared by the reliability tests (imported by the test modules; pytest does not collect this file).

Specs are written with conftest's ``write_spec``; free ports come from ``servers.free_port``.

* ``rel_spec(corpus, name, ...)``: conftest's ``make_spec`` with the reliability tests' settings (12 steps, dropout,
  lr 3e-3, one thread): small enough that a process spends its time starting, not training.
* ``seed_store(tmp)``: copy a ready MLflow SQLite store into ``tmp/mlruns`` (creating one runs ~4 s of migrations).
* ``killed(argv, cwd, kill_at=...)``: run ``harness <argv>`` in a child process that SIGKILLs itself at a fault point.
  Children are forked from a forkserver that has already imported harness, torch, MLflow and Optuna, so a kill costs
  a fork instead of a ~10 s interpreter start. The child is a real process: its pid is recorded, it dies by SIGKILL
  with no cleanup, and the next command finds it dead.
* ``child_env(**extra)``: conftest's environment for a harness child (no HARNESS_* knobs but ``extra``, warnings as
  errors).
* ``harness_popen(args, cwd, log)``: ``python -m harness ...`` as a subprocess, its output in ``log``.
* ``MlflowServer``: a real ``mlflow server`` on a free loopback port, started, stopped and restarted by pid.
* ``store(tmp)`` / ``runs`` / ``steps`` / ``study``: read back what MLflow and Optuna hold.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from conftest import CHILD_WARNINGS, child_env, make_spec
from servers import free_port

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
REPO = TESTS.parent


def rel_spec(corpus: Path | str, name: str, *, steps: int = 12, eval_every: int = 4, d_model: int = 16, **kw: Any) -> dict[str, Any]:
    """``make_spec`` as the reliability tests run it: seed 11, experiment ``name``, dropout 0.1, lr 3e-3, one thread.
    ``kw`` goes to make_spec (``checkpoint_every``, ``sweep``, sections to merge)."""
    train = {"optimizer": {"lr": 3e-3}, "threads": 1, **kw.pop("train", {})}
    return make_spec(corpus, name=name, seed=11, steps=steps, eval_every=eval_every, experiment=kw.pop("experiment", name),
                     model={"d_model": d_model, "d_ff": 2 * d_model, "dropout": 0.1, **kw.pop("model", {})}, train=train, **kw)


# ----------------------------------------------------------------------------------------------------------- stores

_TEMPLATE: Path | None = None


def seed_store(tmp: Path) -> str:
    """Put a migrated, empty MLflow SQLite store at ``tmp/mlruns/mlflow.db``; returns its tracking URI."""
    global _TEMPLATE
    if _TEMPLATE is None:
        import atexit
        import tempfile

        from mlflow import MlflowClient

        folder = Path(tempfile.mkdtemp(prefix="harness-rel-store-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        MlflowClient(tracking_uri=f"sqlite:///{folder}/mlflow.db").search_experiments()
        _TEMPLATE = folder / "mlflow.db"
    (tmp / "mlruns").mkdir(exist_ok=True)
    shutil.copyfile(_TEMPLATE, tmp / "mlruns" / "mlflow.db")
    return f"sqlite:///{tmp}/mlruns/mlflow.db"


def store(tmp: Path) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{tmp}/mlruns/mlflow.db")


def runs(client: Any, experiment: str | None = None) -> list[Any]:
    """Every run (all experiments, or one), oldest first."""
    exps = [client.get_experiment_by_name(experiment)] if experiment else client.search_experiments()
    ids = [e.experiment_id for e in exps if e is not None]
    return client.search_runs(ids, max_results=5000, order_by=["attributes.start_time ASC"]) if ids else []


def steps(client: Any, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def history(client: Any, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def study(tmp: Path, name: str) -> Any:
    import optuna

    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp}/studies/{name}.db")


# ----------------------------------------------------------------------------------------------------------- processes


def harness_popen(args: list[str], cwd: Path, log: Path, **env: str) -> subprocess.Popen:
    fh = open(log, "w")
    try:
        return subprocess.Popen([sys.executable, "-m", "harness", *args], cwd=cwd, env=child_env(**env), stdout=fh, stderr=subprocess.STDOUT)
    finally:
        fh.close()  # the child holds its own copy of the descriptor


_PRELOAD = ["torch", "torch._dynamo", "numpy", "yaml", "pydantic", "mlflow", "mlflow.store.tracking.sqlalchemy_store", "optuna",
            "matplotlib", "harness.cli", "harness.job.runner", "harness.sweep.driver", "harness.train.loop", "harness.model",
            "harness.data.batches", "harness.plots", "harness.cli.progress", "rel_helpers"]
_forkserver: Any = None


def _killer() -> Any:
    """The forkserver context, started once per test session with the heavy modules already imported."""
    global _forkserver
    if _forkserver is None:
        from multiprocessing import forkserver

        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(_PRELOAD)
        # The forkserver imports rel_helpers (which imports conftest) and runs with the children's warning filters:
        # its forked children inherit both.
        started_with = {"PYTHONPATH": os.pathsep.join(p for p in (str(HERE), str(TESTS), str(REPO), os.environ.get("PYTHONPATH")) if p),
                        "PYTHONWARNINGS": CHILD_WARNINGS}
        old = {k: os.environ.get(k) for k in started_with}
        os.environ.update(started_with)
        try:
            forkserver.ensure_running()
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        _forkserver = ctx
    return _forkserver


def warm_killer() -> None:
    """Start the forkserver now (its imports then overlap with the caller's own work)."""
    _killer()


def _child(argv: list[str], cwd: str, env: dict[str, str], log: str) -> None:
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # the forkserver ignores SIGINT; a harness process does not
    import torch

    torch.set_num_threads(1)
    from harness.cli import main

    code = main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    raise SystemExit(code)


def killed(argv: list[str], cwd: Path, *, kill_at: str | None = None, timeout: float = 180, **env: str) -> tuple[int, str]:
    """Run ``harness <argv>`` in a forked child with ``HARNESS_KILL_AT=kill_at``; returns (exit code, its output).
    The exit code is -9 when it killed itself."""
    log = Path(cwd) / f"child-{time.monotonic_ns()}.log"
    extra = dict(env)
    if kill_at:
        extra["HARNESS_KILL_AT"] = kill_at
    proc = _killer().Process(target=_child, args=(argv, str(cwd), child_env(**extra), str(log)))
    proc.start()
    proc.join(timeout)
    if proc.is_alive():
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        raise AssertionError(f"harness {' '.join(argv)} did not finish in {timeout}s:\n{log.read_text()}")
    return proc.exitcode, log.read_text() if log.exists() else ""


# ----------------------------------------------------------------------------------------------------------- mlflow server


class MlflowServer:
    """``mlflow server`` with a SQLite backend and proxied artifacts in ``folder``, on 127.0.0.1:``port``.

    Started in its own process group so that stopping it (SIGKILL to that group, by the pid we started) also ends the
    uvicorn worker it spawns."""

    def __init__(self, folder: Path, port: int | None = None):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self, timeout: float = 150) -> None:
        self.starts += 1
        cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{self.folder}/server.db",
               "--artifacts-destination", str(self.folder / "artifacts"), "--host", "127.0.0.1", "--port", str(self.port),
               "--workers", "1"]
        with open(self.folder / f"server-{self.starts}.log", "w") as log:  # the server keeps its own copy of the descriptor
            # MLflow's server is third-party code: it runs with Python's default warning filters
            self.proc = subprocess.Popen(cmd, cwd=self.folder, env=child_env(python_warnings=None), stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"mlflow server exited with {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(self.url + "/health", timeout=2) as resp:
                    if resp.status == 200:
                        return
            time.sleep(0.25)
        self.stop()
        raise AssertionError(f"mlflow server did not answer /health within {timeout}s:\n{self.log()}")

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # the group we created with start_new_session (pgid == our pid)
        self.proc.wait(timeout=30)
        self.proc = None

    def log(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted(self.folder.glob("server-*.log")))


@contextlib.contextmanager
def mlflow_server(folder: Path) -> Iterator[MlflowServer]:
    server = MlflowServer(folder)
    try:
        yield server
    finally:
        server.stop()
