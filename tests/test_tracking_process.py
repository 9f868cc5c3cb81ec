"""``harness run`` keeps MLflow in a helper process (harness.tracking.remote): the same run in the store as with MLflow
in-process, a training process that never imports MLflow, and the failure cases of two processes: the training
process killed (its helper goes with it, and resume continues the run), the helper killed (the run stops as for a
store outage and resumes once the store is back), a store that cannot be used (a clear error, nothing created)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import child_env, make_spec, write_spec
from mlflow import MlflowClient

from harness.testing import faults

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the helper runs on Linux only")

TEXT = "the quick brown fox jumps over the lazy dog. " * 60
_SHOW = "import sys, harness.cli; rc = harness.cli.main(sys.argv[1:]); print('MLFLOW_IMPORTED', 'mlflow' in sys.modules); sys.exit(rc)"


def _spec(tmp: Path, name: str = "proc", **kw) -> Path:
    corpus = tmp / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    raw = make_spec(corpus, name=name, seed=3, steps=12, eval_every=4, checkpoint_every=4, experiment=name,
                    model={"dropout": 0.1}, tracking={"sample_tokens": 10}, **kw)
    return write_spec(tmp, raw, name=f"{name}.yaml")


def _harness(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    e = child_env(**env)
    e.pop("MLFLOW_TRACKING_URI", None)  # the default store: mlruns/mlflow.db in cwd
    return subprocess.run([sys.executable, "-c", _SHOW, *args], cwd=cwd, env=e, capture_output=True, text=True, timeout=300)


def _client(folder: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{folder}/mlruns/mlflow.db")


def _one_run(folder: Path, experiment: str):
    c = _client(folder)
    runs = c.search_runs([c.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1
    return c, runs[0]


def _history(c: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in c.get_metric_history(run_id, key))


def _processes_running(needle: str) -> list[int]:
    """Pids of live (not zombie) processes whose command line contains ``needle``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if needle in cmd and state != "Z":
            found.append(int(entry.name))
    return found


def _wait_for(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_the_run_is_the_same_with_and_without_the_helper(tmp_path):
    spec = _spec(tmp_path)
    runs = {}
    for mode in ("1", "0"):
        folder = tmp_path / f"mode{mode}"
        (folder / "mlruns").mkdir(parents=True)  # this folder's own store
        out = _harness(["run", str(spec), "-q"], folder, HARNESS_TRACKING_PROCESS=mode)
        assert out.returncode == 0, out.stderr
        # with the helper, the training process never imports MLflow; without it, it does
        assert f"MLFLOW_IMPORTED {mode == '0'}" in out.stdout
        runs[mode] = _one_run(folder, "proc")
    (c1, r1), (c0, r0) = runs["1"], runs["0"]
    assert r1.info.status == r0.info.status == "FINISHED"
    assert r1.data.tags["stop_reason"] == r0.data.tags["stop_reason"] == "completed"
    assert r1.data.tags["harness.pid"] != str(os.getpid())
    strip = ("harness.pid", "mlflow.", "harness.host")
    assert {k: v for k, v in r1.data.params.items()} == {k: v for k, v in r0.data.params.items()}
    assert sorted(k for k in r1.data.tags if not k.startswith(strip)) == sorted(k for k in r0.data.tags if not k.startswith(strip))
    for key in ("train/loss", "val/loss", "train/loss_eval", "grad_norm", "lr"):
        assert _history(c1, r1.info.run_id, key) == _history(c0, r0.info.run_id, key), key
    assert sorted(r1.data.metrics) == sorted(r0.data.metrics)

    def files(c, r, path=None):
        return sorted(a.path for a in c.list_artifacts(r.info.run_id, path))

    assert files(c1, r1) == files(c0, r0)
    assert files(c1, r1, "plots") == ["plots/grad_norm.png", "plots/loss_curve.png", "plots/lr_schedule.png"]
    assert "sample.txt" in files(c1, r1) and "spec.yaml" in files(c1, r1)
    assert files(c1, r1, "checkpoints") == files(c0, r0, "checkpoints")


def test_a_killed_training_process_takes_its_helper_with_it_and_resumes(tmp_path):
    spec = _spec(tmp_path)
    # the kill point `flush` is passed in the helper, which kills the training process for it (faults.act_for)
    out = _harness(["run", str(spec), "-q"], tmp_path, HARNESS_KILL_AT="flush:2")
    assert out.returncode == -signal.SIGKILL, out.stderr
    # the helper reads end-of-file and exits: no process of that command is left
    _wait_for(lambda: not _processes_running(str(spec)), "the helper to exit")
    c, run = _one_run(tmp_path, "proc")
    assert run.info.status == "RUNNING"  # until the next harness command finds its owner dead
    done = _harness(["resume", run.info.run_id, "-q"], tmp_path)
    assert done.returncode == 0, done.stderr
    c, run = _one_run(tmp_path, "proc")
    assert run.info.status == "FINISHED" and run.data.tags["stop_reason"] == "completed"
    steps = [s for s, _ in _history(c, run.info.run_id, "train/loss")]
    assert steps == list(range(12))  # every step logged exactly once


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        kids += [int(k) for k in text]
    return kids


def test_a_killed_helper_stops_the_run_like_a_store_outage(tmp_path):
    spec = _spec(tmp_path)
    barrier = tmp_path / "barrier"
    e = child_env(HARNESS_BARRIER_AT=f"step@6:2:{barrier}")
    e.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen([sys.executable, "-c", _SHOW, "run", str(spec), "-q"], cwd=tmp_path, env=e,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # the training process waits at step 6 until the test arrives too; meanwhile its helper is killed
        _wait_for(lambda: str(proc.pid) in faults.arrived(barrier), "the training process to reach step 6", timeout=120)
        helpers = _children(proc.pid)
        assert len(helpers) == 1
        os.kill(helpers[0], signal.SIGKILL)
        faults.arrive(barrier, "test")
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, stderr
    assert "tracking process is gone" in stdout + stderr
    assert "harness resume" in stdout + stderr
    c, run = _one_run(tmp_path, "proc")
    ckpt = Path(c.get_run(run.info.run_id).info.artifact_uri) / "checkpoints"
    assert (ckpt / "last.pt").is_file()
    pending = [json.loads(line) for line in (ckpt / "pending_metrics.jsonl").read_text().splitlines()]
    assert {p["key"] for p in pending} >= {"train/loss", "val/loss"}  # what the training process still held
    # the store is fine: resume reaps the run (its owner is dead), logs what was kept, and finishes it
    done = _harness(["resume", run.info.run_id, "-q"], tmp_path)
    assert done.returncode == 0, done.stderr
    c, run = _one_run(tmp_path, "proc")
    assert run.info.status == "FINISHED"
    assert [s for s, _ in _history(c, run.info.run_id, "train/loss")] == list(range(12))


def test_an_unusable_store_is_a_clear_error_and_nothing_is_created(tmp_path):
    spec = _spec(tmp_path)
    (tmp_path / "mlruns").mkdir(exist_ok=True)
    (tmp_path / "mlruns" / "mlflow.db").mkdir()  # a folder where the database file should be
    out = _harness(["run", str(spec), "-q"], tmp_path)
    assert out.returncode == 2
    assert "is a folder, not a database file" in out.stderr
    assert sorted(p.name for p in (tmp_path / "mlruns").iterdir()) == ["mlflow.db"]
    assert not _processes_running(str(spec))
