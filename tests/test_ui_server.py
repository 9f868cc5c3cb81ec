"""A real `mlflow server`, started the way `harness ui` starts it, on a free loopback port against the tiny sweep's
store: its REST API shows the sweep's parent and child runs, their metric histories and their artifacts. The server
is stopped by its pid (its whole process group) in a finally block."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import urllib.parse
import urllib.request
from types import SimpleNamespace
from typing import Any

import pytest
from test_results import EXPERIMENT, STEPS, tiny_sweep_store

from harness import results, serve


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    return tiny_sweep_store(tmp_path_factory)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(base: str, endpoint: str, **params: Any) -> Any:
    url = f"{base}{endpoint}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.loads(resp.read())


def _post(base: str, endpoint: str, body: dict[str, Any]) -> Any:
    req = urllib.request.Request(f"{base}{endpoint}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_mlflow_server_shows_sweep_runs_metrics_and_artifacts(sweep: SimpleNamespace, monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Any) -> None:
    monkeypatch.chdir(sweep.dir)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sweep.uri)
    plan = serve.ui_plan(host="127.0.0.1", port=_free_port())
    assert plan.argv is not None and plan.argv[plan.argv.index("--workers") + 1] == "1"
    log = open(tmp_path / "server.log", "wb")
    proc = serve.start(plan, stdout=log, stderr=subprocess.STDOUT)
    try:
        if not serve.wait_ready(plan.url, proc, timeout=150):
            log.flush()
            pytest.fail(f"mlflow server did not come up (exit {proc.poll()}):\n{(tmp_path / 'server.log').read_text()[-3000:]}")
        base = plan.url
        exp = _get(base, "/api/2.0/mlflow/experiments/get-by-name", experiment_name=EXPERIMENT)["experiment"]
        found = _post(base, "/api/2.0/mlflow/runs/search", {"experiment_ids": [exp["experiment_id"]], "max_results": 100})["runs"]
        tags = {r["info"]["run_id"]: {t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in found}
        assert set(tags) == {sweep.parent, *sweep.trials.values()}
        assert tags[sweep.parent]["harness.role"] == "sweep"
        for n, rid in sweep.trials.items():
            assert tags[rid]["mlflow.parentRunId"] == sweep.parent
            assert tags[rid]["harness.trial"] == str(n) and tags[rid]["stop_reason"] == "completed"
        rid = sweep.trials[0]
        hist = _get(base, "/api/2.0/mlflow/metrics/get-history", run_id=rid, metric_key="train/loss")["metrics"]
        assert sorted(m["step"] for m in hist) == list(range(STEPS))
        val = _get(base, "/api/2.0/mlflow/metrics/get-history", run_id=rid, metric_key="val/loss")["metrics"]
        assert len(val) >= 2 and all(m["value"] > 0 for m in val)
        files = {f["path"] for f in _get(base, "/api/2.0/mlflow/artifacts/list", run_id=rid).get("files", [])}
        assert {"spec.yaml", "tokenizer.json", "checkpoints", "plots"} <= files
        ckpts = {f["path"] for f in _get(base, "/api/2.0/mlflow/artifacts/list", run_id=rid, path="checkpoints")["files"]}
        assert {"checkpoints/best.pt", "checkpoints/last.pt"} <= ckpts
        parent_files = {f["path"] for f in _get(base, "/api/2.0/mlflow/artifacts/list", run_id=sweep.parent).get("files", [])}
        assert {"trials.csv", "best_params.json", "spec.yaml", "plots"} <= parent_files
        # the artifact bytes are served too (what the UI's artifact viewer fetches)
        with urllib.request.urlopen(f"{base}/get-artifact?{urllib.parse.urlencode({'run_id': rid, 'path': 'spec.yaml'})}", timeout=30) as r:
            assert b"name: tsweep" in r.read()
    finally:
        serve.stop(proc)
        log.close()
    assert proc.poll() is not None
    assert not _group_alive(proc.pid), "a server worker outlived the stop"


def test_stop_ends_a_process_group(tmp_path: Any) -> None:
    """stop() ends the child a server would leave behind (cheap check, no MLflow)."""
    plan = serve.ServerPlan(argv=["sh", "-c", "sleep 60 & sleep 60"], url="http://127.0.0.1:9")
    proc = serve.start(plan)
    try:
        assert _group_alive(proc.pid)
    finally:
        serve.stop(proc, timeout=5)
    assert proc.returncode == -signal.SIGTERM or proc.returncode is not None
    assert not _group_alive(proc.pid)
