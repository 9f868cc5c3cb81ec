"""A real `mlflow server`, started the way `harness ui` starts it, on a free loopback port against the tiny sweep's
store: its REST API shows the sweep's parent and child runs, their metric histories and their artifacts. The server
is stopped by its pid (its whole process group) in a finally block, and every process of that group is then gone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import pytest
from servers import free_port

from harness import serve


def _get(base: str, endpoint: str, **params: Any) -> Any:
    url = f"{base}{endpoint}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.loads(resp.read())


def _post(base: str, endpoint: str, body: dict[str, Any]) -> Any:
    req = urllib.request.Request(f"{base}{endpoint}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def _group(pgid: int) -> list[psutil.Process]:
    """The live processes of process group ``pgid``."""
    members = []
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                members.append(p)
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass
    return members


def _wait_for_group(pgid: int, ready: Callable[[list[psutil.Process]], bool], timeout: float = 30) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    while True:
        members = _group(pgid)
        if ready(members):
            return members
        if time.monotonic() > deadline:
            raise AssertionError(f"process group {pgid} never got ready: {[(p.pid, p.name()) for p in members]}")
        time.sleep(0.05)


def _gone(p: psutil.Process) -> bool:
    """The process has exited (is_running() also tells a reused pid from the process we recorded)."""
    try:
        return not p.is_running() or p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_mlflow_server_shows_sweep_runs_metrics_and_artifacts(in_sweep: SimpleNamespace, tmp_path: Path) -> None:
    plan = serve.ui_plan(host="127.0.0.1", port=free_port())
    assert plan.argv is not None and plan.argv[plan.argv.index("--workers") + 1] == "1"
    log_path = tmp_path / "server.log"
    members: list[psutil.Process] = []
    with open(log_path, "wb") as log:
        proc = serve.start(plan, stdout=log, stderr=subprocess.STDOUT)
        try:
            if not serve.wait_ready(plan.url, proc, timeout=150):
                log.flush()
                pytest.fail(f"mlflow server did not come up (exit {proc.poll()}):\n{log_path.read_text()[-3000:]}")
            # The server answers through the worker it started: the group holds the server and at least that worker.
            members = _wait_for_group(proc.pid, lambda ms: any(p.pid != proc.pid for p in ms))
            base = plan.url
            exp = _get(base, "/api/2.0/mlflow/experiments/get-by-name", experiment_name=in_sweep.experiment)["experiment"]
            found = _post(base, "/api/2.0/mlflow/runs/search", {"experiment_ids": [exp["experiment_id"]], "max_results": 100})["runs"]
            tags = {r["info"]["run_id"]: {t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in found}
            assert set(tags) == {in_sweep.parent, *in_sweep.trials.values()}
            assert tags[in_sweep.parent]["harness.role"] == "sweep"
            for n, rid in in_sweep.trials.items():
                assert tags[rid]["mlflow.parentRunId"] == in_sweep.parent
                assert tags[rid]["harness.trial"] == str(n) and tags[rid]["stop_reason"] == "completed"
            rid = in_sweep.trials[0]
            hist = _get(base, "/api/2.0/mlflow/metrics/get-history", run_id=rid, metric_key="train/loss")["metrics"]
            assert sorted(m["step"] for m in hist) == list(range(in_sweep.steps))
            val = _get(base, "/api/2.0/mlflow/metrics/get-history", run_id=rid, metric_key="val/loss")["metrics"]
            assert len(val) >= 2 and all(m["value"] > 0 for m in val)
            files = {f["path"] for f in _get(base, "/api/2.0/mlflow/artifacts/list", run_id=rid).get("files", [])}
            assert {"spec.yaml", "tokenizer.json", "checkpoints", "plots"} <= files
            ckpts = {f["path"] for f in _get(base, "/api/2.0/mlflow/artifacts/list", run_id=rid, path="checkpoints")["files"]}
            assert {"checkpoints/best.pt", "checkpoints/last.pt"} <= ckpts
            parent_files = {f["path"] for f in _get(base, "/api/2.0/mlflow/artifacts/list", run_id=in_sweep.parent).get("files", [])}
            assert {"trials.csv", "best_params.json", "spec.yaml", "plots"} <= parent_files
            # the artifact bytes are served too (what the UI's artifact viewer fetches)
            with urllib.request.urlopen(f"{base}/get-artifact?{urllib.parse.urlencode({'run_id': rid, 'path': 'spec.yaml'})}", timeout=30) as r:
                assert b"name: tsweep" in r.read()
        finally:
            serve.stop(proc)
    alive = [(p.pid, p.name()) for p in members if not _gone(p)]
    assert not alive, f"server processes outlived the stop: {alive}"


def test_stop_ends_a_process_group() -> None:
    """stop() ends the children a server would leave behind (cheap check, no MLflow)."""
    plan = serve.ServerPlan(argv=["sh", "-c", "sleep 60 & sleep 60"], url="http://127.0.0.1:9")
    proc = serve.start(plan)
    try:
        # sh and its two sleeps: stop only once the whole group exists, or it could end the group before sh forks
        members = _wait_for_group(proc.pid, lambda ms: sum(p.name() == "sleep" for p in ms) == 2)
        assert len(members) == 3, [(p.pid, p.name()) for p in members]
    finally:
        serve.stop(proc, timeout=5)
    assert proc.returncode == -signal.SIGTERM
    alive = [(p.pid, p.name()) for p in members if not _gone(p)]
    assert not alive, f"outlived the stop: {alive}"


def test_a_server_ends_when_the_process_that_started_it_is_killed(tmp_path: Path) -> None:
    """The server runs in its own session, out of reach of Ctrl-C; if the command that started it dies without its
    finally block (SIGKILL), the server still ends instead of holding its port (failed before: it kept running)."""
    import sys

    code = ("import sys, time; from harness import serve; "
            "p = serve.start(serve.ServerPlan(argv=['sleep', '300'], url='http://127.0.0.1:9')); "
            "print(p.pid, flush=True); time.sleep(300)")
    starter = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        server = psutil.Process(int(starter.stdout.readline()))  # type: ignore[union-attr]
        assert server.name() == "sleep" and os.getpgid(server.pid) == server.pid, "a session of its own"
        starter.kill()
        starter.wait(timeout=30)
        deadline = time.monotonic() + 30
        while not _gone(server):  # exited, or a zombie nobody has reaped yet
            assert time.monotonic() < deadline, f"the server outlived the process that started it: {server}"
            time.sleep(0.05)
    finally:
        if starter.poll() is None:
            starter.kill()
        starter.stdout.close()  # type: ignore[union-attr]


def test_a_port_is_free_once_its_server_stops_though_its_connections_linger() -> None:
    """A stopped server's connections stay in TIME_WAIT for a minute; harness ui must not call the port taken then
    (failed before: 'port ... is already in use' right after a UI was stopped), while a listening port is taken."""
    import socket

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    conn, _ = listener.accept()
    assert not serve.port_free("127.0.0.1", port), "a listening socket holds the port"
    conn.close()  # the server's side closes first: its end of the connection goes to TIME_WAIT on this port
    client.close()
    listener.close()
    assert serve.port_free("127.0.0.1", port)


def test_harness_ui_started_with_sigint_ignored_still_stops_on_it_and_ends_its_server(tmp_path: Path) -> None:
    """A command a non-interactive shell starts in the background (`harness ui &` in a script, as CI runs the README)
    inherits SIGINT ignored, and Python then raises no KeyboardInterrupt: harness ui must still stop on SIGINT, exit 0
    and end its server (failed before: it ran on until killed, and its server outlived it)."""
    import sys

    from conftest import child_env
    from mlflow import MlflowClient

    MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlruns/mlflow.db").create_experiment("x")
    port = free_port()
    ui = subprocess.Popen([sys.executable, "-m", "harness", "ui", "--port", str(port)], cwd=tmp_path, env=child_env(python_warnings=None),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    lines: list[str] = []
    try:
        for line in ui.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if "ready: open" in line:
                break
        assert "ready: open" in "".join(lines), "".join(lines)
        os.killpg(ui.pid, signal.SIGINT)
        assert ui.wait(timeout=60) == 0, "".join(lines)
    finally:
        if ui.poll() is None:
            os.killpg(ui.pid, signal.SIGKILL)
            ui.wait()
        ui.stdout.close()  # type: ignore[union-attr]
    deadline = time.monotonic() + 30
    while not serve.port_free("127.0.0.1", port):  # the server's worker ends a moment after the server
        assert time.monotonic() < deadline, f"the MLflow server still listens on {port} after harness ui stopped"
        time.sleep(0.1)
