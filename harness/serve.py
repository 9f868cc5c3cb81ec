"""The browsing servers: the MLflow UI (``mlflow server`` on this project's store) and optuna-dashboard on a study.

Each has a *plan* (the command, its environment and warnings: what ``--dry-run`` prints) and a way to run it in the
foreground until Ctrl-C, stopping the whole process group it started.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import HarnessError, UsageError
from harness.tracking.records import EXPERIMENT_KIND, TRAINING_KIND

__all__ = ["DashboardPlan", "ServerPlan", "dashboard_plan", "is_loopback", "newest_experiments", "port_free", "serve", "serve_dashboard",
           "start", "stop", "training_view", "ui_plan", "wait_ready"]


@dataclass
class ServerPlan:
    """A server to start: the command, its environment, and what to tell the user."""

    argv: list[str] | None
    url: str
    env: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    store: str = ""
    artifacts: str = ""

    @property
    def command(self) -> str:
        return shlex.join(self.argv) if self.argv else ""


def _exposed_warning(host: str, what: str) -> str:
    return (f"WARNING: {what} will listen on {host}, not on loopback: anyone who can reach this machine on that address "
            f"can read, change and delete what it serves. It has no login. Use --host 127.0.0.1 unless you mean it.")


def ui_plan(*, host: str = "127.0.0.1", port: int = 5000, uri: str | None = None, workers: int = 1) -> ServerPlan:
    """The ``mlflow server`` command for this project's store: one worker, no background job runner, artifacts
    served from the store's ``mlruns`` folder, bound to ``host`` (loopback by default).

    A store that is already a tracking server (``http://...``) needs no UI process: ``argv`` is None and ``url`` is
    that server."""
    from harness.tracking import parse_store_url, tracking_uri
    from harness.tracking.store import require_store

    uri = tracking_uri(uri)
    store = parse_store_url(uri)
    if store.kind == "http":
        return ServerPlan(argv=None, url=uri, store=uri)
    require_store(uri)
    path = store.path
    if store.kind == "sqlite" and path is not None:
        backend = store.absolute()
        artifacts = path.resolve().parent
    elif path is not None:  # a file store folder
        backend = path.resolve().as_uri()
        artifacts = path.resolve()
    else:  # postgresql://, mysql://: artifacts live where the runs say; new experiments go to ./mlruns
        backend = uri
        artifacts = (Path.cwd() / "mlruns").resolve()
    if not (1 <= port <= 65535):
        raise UsageError(f"--port must be between 1 and 65535 (got {port})")
    if not port_free(host, port):
        raise UsageError(f"port {port} on {host} is already in use (another `harness ui`?); pick another with --port")
    # The backend store goes through the environment (MLflow's --backend-store-uri reads MLFLOW_BACKEND_STORE_URI), not
    # argv: every local user reads a process's command line (ps, /proc/PID/cmdline), only its owner its environment.
    argv = [sys.executable, "-m", "mlflow", "server", "--default-artifact-root", str(artifacts),
            "--serve-artifacts", "--artifacts-destination", str(artifacts), "--host", host, "--port", str(port),
            "--workers", str(workers)]
    if host not in _MLFLOW_DEFAULT_HOSTS:
        # MLflow answers only requests whose Host header is localhost or a private address, and takes POSTs only from
        # a localhost page (its defences against DNS rebinding and cross-site requests): on any other address it
        # listens on, 127.0.0.2 included, the UI would get "Invalid Host header", then 403 for every search.
        bound = f"[{host}]" if ":" in host else host
        argv += ["--allowed-hosts", ",".join([*_LOCAL_HOSTS, bound, f"{bound}:{port}"]),
                 "--cors-allowed-origins", f"http://{bound}:{port}"]
    # MLflow 3 starts a job runner with a pool of Huey consumers next to the server (for GenAI jobs we never use):
    # a dozen processes on a 2-core laptop. Turn it off.
    # Each uvicorn worker imports starlette.middleware.wsgi, which warns that it is deprecated (MLflow's business, not
    # the user's): one StarletteDeprecationWarning per worker on every start. Filter that one message.
    quiet = "ignore:starlette.middleware.wsgi is deprecated:UserWarning"
    inherited = os.environ.get("PYTHONWARNINGS")
    env = {"MLFLOW_BACKEND_STORE_URI": backend, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
           "PYTHONWARNINGS": f"{inherited},{quiet}" if inherited else quiet}
    warnings = [] if is_loopback(host) else [_exposed_warning(host, "the MLflow UI")]
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    url = f"http://[{shown}]:{port}" if ":" in shown else f"http://{shown}:{port}"
    return ServerPlan(argv=argv, url=url, env=env, warnings=warnings, store=backend, artifacts=str(artifacts))


_LOCAL_HOSTS = ("localhost", "localhost:*", "127.0.0.1", "127.0.0.1:*", "[::1]", "[::1]:*")
_MLFLOW_DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1", "0.0.0.0", "::", "")  # served under MLflow's default allowed hosts
BEST_FIRST = "summary/best_val_loss"  # the metric the printed addresses sort an experiment's runs by
TRAINING_VIEW = "workflowType=machine_learning"  # the MLflow UI's "Model training" view (its default is the GenAI one)


def training_view(url: str, experiment_id: str | None = None, *, sort_by: str | None = None) -> str:
    """The address of the MLflow UI's training view: an experiment's runs (``sort_by``: a metric, lowest first, which
    also lists a sweep's trials one per row instead of folded under their sweep), or the list of experiments.

    MLflow 3.17's UI opens every experiment on its GenAI overview unless the address asks for the training view (or
    the browser remembers a click on "Model training"); the experiment's kind tag alone does not change that."""
    from urllib.parse import quote

    base = url.rstrip("/")
    if experiment_id is None:
        return f"{base}/#/experiments?{TRAINING_VIEW}"
    query = TRAINING_VIEW
    if sort_by:
        query += f"&orderByKey={quote(f'metrics.`{sort_by}`', safe='')}&orderByAsc=true"
    return f"{base}/#/experiments/{experiment_id}/runs?{query}"


def newest_experiments(url: str, *, limit: int = 3, timeout: float = 10.0) -> list[tuple[str, str]]:
    """(id, name) of the experiments harness made on the running server at ``url``, most recently changed first:
    asked over its REST API, so the command that serves the UI never imports MLflow. [] when it cannot say."""
    import json
    import urllib.error
    import urllib.request

    body = json.dumps({"max_results": 50, "order_by": ["last_update_time DESC"]}).encode()
    req = urllib.request.Request(url.rstrip("/") + "/api/2.0/mlflow/experiments/search", data=body,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            found = json.loads(resp.read()).get("experiments", [])
    except (urllib.error.URLError, OSError, ValueError):
        return []
    made = [(e["experiment_id"], e["name"]) for e in found
            if {"key": EXPERIMENT_KIND, "value": TRAINING_KIND} in e.get("tags", [])]
    return made[:limit]


def wait_ready(url: str, proc: subprocess.Popen[Any] | None = None, *, timeout: float = 120.0, path: str = "/health") -> bool:
    """Poll ``url + path`` until it answers 200; False when ``proc`` exits first or ``timeout`` passes."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url.rstrip("/") + path, timeout=2) as resp:
                if resp.status == 200:
                    return True
        except (urllib.error.URLError, OSError, ValueError):
            pass
        time.sleep(0.25)
    return False


def start(plan: ServerPlan, **popen: Any) -> subprocess.Popen[Any]:
    """Start the planned server in its own process group (so :func:`stop` ends its workers too), told to end when
    the process that started it ends, however that ends (see :func:`_ends_with_parent`)."""
    if not plan.argv:
        raise UsageError("nothing to start")
    env = {**os.environ, **plan.env}
    return subprocess.Popen(plan.argv, env=env, start_new_session=True, preexec_fn=_ends_with_parent(), **popen)


def _ends_with_parent() -> Callable[[], None] | None:
    """For the child, between fork and exec: SIGTERM it when its parent dies. A server in its own session hears no
    Ctrl-C, and :func:`stop` runs only if its parent lives to run it: a ``harness ui`` killed with SIGKILL (or by a
    test's timeout) left ``mlflow server`` holding its port. mlflow server passes SIGTERM on to its uvicorn workers.

    Linux's ``PR_SET_PDEATHSIG`` through ctypes: ``os`` has no ``prctl`` and no maintained library wraps it. Elsewhere,
    None (only :func:`stop`). Linux sends the signal when the *thread* that started the server ends: call
    :func:`start` from a thread that lives as long as the server (harness ui: the main thread)."""
    import signal

    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork: the child only calls it
    parent = os.getpid()
    pr_set_pdeathsig = 1

    def child() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the call above: nobody would send the signal
            os.kill(os.getpid(), signal.SIGTERM)

    return child


def stop(proc: subprocess.Popen[Any], *, timeout: float = 15.0) -> None:
    """SIGTERM the server's process group (the server and the workers it started), SIGKILL after ``timeout``."""
    import signal

    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=5)
    # Workers that outlived their parent still belong to its group: TERM them, then KILL what is left.
    deadline = time.monotonic() + timeout
    sig = signal.SIGTERM
    while True:
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        if time.monotonic() > deadline:
            sig = signal.SIGKILL
        time.sleep(0.1)


def serve(plan: ServerPlan, *, on_ready: Callable[[], None] | None = None, ready_timeout: float = 180.0) -> int:
    """Run the planned server in the foreground until it exits or Ctrl-C; returns its exit status (0 after Ctrl-C)."""
    import signal
    import threading

    def _interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    # The server runs in its own session (Ctrl-C in the terminal does not reach it), so whatever ends *this* process
    # (Ctrl-C, SIGTERM, a closed terminal) must end the server too. SIGINT is handled here as well: a process started
    # in the background by a non-interactive shell (a CI script's `cmd &`) inherits SIGINT ignored, and Python then
    # raises no KeyboardInterrupt, so Ctrl-C or `kill -INT` would leave the server running.
    old: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            old[sig] = signal.signal(sig, _interrupt)
    proc = start(plan)
    try:
        if wait_ready(plan.url, proc, timeout=ready_timeout):
            if on_ready:
                on_ready()
        elif proc.poll() is not None:
            raise HarnessError(f"the server exited with status {proc.returncode} before it was ready; command: {plan.command}")
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        stop(proc)
        for signum, handler in old.items():
            signal.signal(signum, handler)


@dataclass
class DashboardPlan:
    study: str
    storage: str
    url: str
    host: str
    port: int
    installed: bool
    command: str
    install: str = 'pip install "optuna-dashboard>=0.20"'
    warnings: list[str] = field(default_factory=list)


def dashboard_plan(target: str, *, storage: str | None = None, host: str = "127.0.0.1", port: int = 8080,
                   uri: str | None = None) -> DashboardPlan:
    """optuna-dashboard for the study of a sweep spec, a study name or a sweep parent run id."""
    import importlib.util

    from harness.results.studies import load_study, resolve_study
    from harness.tracking import parse_store_url

    ref = resolve_study(target, storage=storage, uri=uri)
    with load_study(ref):  # fail here, with the studies that do exist, rather than in a browser
        pass
    url_storage = parse_store_url(ref.storage).absolute()
    installed = importlib.util.find_spec("optuna_dashboard") is not None
    if installed and not port_free(host, port):
        raise UsageError(f"port {port} on {host} is already in use; pick another with --port")
    command = shlex.join(["optuna-dashboard", url_storage, "--host", host, "--port", str(port)])
    warnings = [] if is_loopback(host) else [_exposed_warning(host, "optuna-dashboard")]
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return DashboardPlan(study=ref.name, storage=url_storage, url=f"http://{shown}:{port}/dashboard/studies", host=host, port=port,
                         installed=installed, command=command, warnings=warnings)


def serve_dashboard(plan: DashboardPlan) -> int:
    """Serve optuna-dashboard in this process until Ctrl-C (``optuna_dashboard.run_server``)."""
    if not plan.installed:
        raise HarnessError(f"optuna-dashboard is not installed; install it with: {plan.install}")
    import optuna_dashboard

    from harness.sweep.storage import make_storage

    try:
        optuna_dashboard.run_server(make_storage(plan.storage), host=plan.host, port=plan.port)
    except KeyboardInterrupt:
        return 0
    return 0


def port_free(host: str, port: int) -> bool:
    """Whether a server could listen on ``host:port`` now: no socket listens there. Connections a stopped server
    left in TIME_WAIT (a minute on Linux) do not count, as they do not for uvicorn, which binds with SO_REUSEADDR."""
    import socket

    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def is_loopback(host: str) -> bool:
    import ipaddress

    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
