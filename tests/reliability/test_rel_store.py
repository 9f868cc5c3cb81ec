"""The tracking store goes missing: before a run (exit 2, nothing created) and during one, with a real `mlflow server`.

The server test freezes the server until a tracking write has failed (the run retries with backoff and goes on), kills
it for good in the
middle of a run (the run stops with a checkpoint and a clear message, keeping what it could not write), restarts it
(`harness resume` writes what was missed and finishes), and resumes a run whose local staging copy is gone (the
checkpoint comes back from the server). Every metric history ends up identical to an uninterrupted run's.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
import time

import pytest
import rel_helpers as H
from conftest import tree, write_spec
from mlflow import MlflowClient
from servers import free_port

from harness.cli import main
from harness.cli.output import print_run_summary
from harness.job import run
from harness.spec import spec_from_dict
from harness.tracking.tracker import MlflowTracker
from harness.train import StepEnd

STEPS, EVAL = 16, 4
KEYS = ("train/loss", "val/loss", "grad_norm", "lr")


def test_unusable_store_at_start_exits_2_and_creates_nothing(tmp_path, tiny_corpus, monkeypatch, capsys):
    single = write_spec(tmp_path, H.rel_spec(tiny_corpus, "single"), name="single.yaml")
    sweep = write_spec(tmp_path, {**H.rel_spec(tiny_corpus, "swept"), "sweep": {"params": {"seed": [1, 2]}}}, name="sweep.yaml")
    monkeypatch.setenv("HARNESS_STAGING", str(tmp_path / "staging"))
    (tmp_path / "blocked").write_text("a file where the store's folder should be")
    # Refused up front: nothing waits, backs off or retries (every sleep is recorded, and none may happen).
    sleeps: list[float] = []
    monkeypatch.setattr(time, "sleep", sleeps.append)
    port = free_port()  # nothing listens there
    stores = {
        f"http://127.0.0.1:{port}": f"the MLflow tracking server at http://127.0.0.1:{port} is not reachable",
        f"sqlite:///{tmp_path}/blocked/mlflow.db": f"{tmp_path}/blocked is a file, not a folder",
        f"sqlite:///{tmp_path}/mlruns": "is a folder, not a database file",
    }
    before = tree(tmp_path)
    for uri, says in stores.items():
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        for argv in (["run", str(single)], ["run", str(sweep)], ["resume", "0123456789abcdef0123456789abcdef"]):
            capsys.readouterr()
            assert main(argv) == 2, (uri, argv)
            err = capsys.readouterr().err
            assert says in err and "Traceback" not in err and "internal error" not in err, (uri, argv, err)
            assert sleeps == [], f"{uri} {argv}: waited {sleeps} before giving up"
            assert tree(tmp_path) == before, f"{uri} {argv}: created {tree(tmp_path) - before}"


def _references(server_url: str, raw: dict) -> dict:
    out = run(spec_from_dict({**raw, "tracking": {**raw["tracking"], "experiment": "reference"}}))
    assert out.status == "FINISHED"
    client = MlflowClient(tracking_uri=server_url)
    return {k: H.history(client, out.run_id, k) for k in KEYS}


def _assert_matches(client, run_id: str, reference: dict) -> None:
    r = client.get_run(run_id)
    assert (r.info.status, r.data.tags["stop_reason"]) == ("FINISHED", "completed"), r.data.tags
    for key, want in reference.items():
        got = H.history(client, run_id, key)
        assert [s for s, _ in got] == [s for s, _ in want], f"{key}: a step is missing or logged twice"
        assert [v for _, v in got] == [v for _, v in want], f"{key}: values differ from the uninterrupted run"


def _at_step(step: int, action):
    def cb(event):
        if isinstance(event, StepEnd) and event.step == step:
            action()

    return cb


@pytest.mark.slow
def test_server_outages_during_a_run(tmp_path, tiny_corpus, monkeypatch, capsys, sigint_guard):
    staging = tmp_path / "staging"
    monkeypatch.setenv("HARNESS_STAGING", str(staging))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # harness's own retries are under test
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")
    monkeypatch.setenv("HARNESS_TRACKING_BACKOFF", "0.5")
    raw = H.rel_spec(tiny_corpus, "outage", steps=STEPS, eval_every=EVAL, checkpoint_every=6)

    # Every tracking attempt that fails (each is retried by MlflowTracker._retry until one goes through), counted.
    failed_attempts: list[str] = []
    first_failure = threading.Event()
    real_retry = MlflowTracker._retry

    def counting_retry(self, what, fn, *args, **kwargs):
        def attempt(*a, **k):
            try:
                return fn(*a, **k)
            except Exception:
                failed_attempts.append(what)
                first_failure.set()
                raise

        return real_retry(self, what, attempt, *args, **kwargs)

    monkeypatch.setattr(MlflowTracker, "_retry", counting_retry)
    with H.mlflow_server(tmp_path / "server") as server:
        server.start()
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
        client = MlflowClient(tracking_uri=server.url)
        reference = _references(server.url, raw)
        spec = spec_from_dict(raw)

        # 1. The server stops answering until a tracking write has failed: the flush at the next evaluation times out, is
        #    retried with backoff and goes through. A batch the server received before the client gave up is not stored
        #    twice.
        monkeypatch.setenv("HARNESS_TRACKING_RETRIES", "6")
        thawers: list[threading.Thread] = []

        def freeze():
            pgid = server.proc.pid
            os.killpg(pgid, signal.SIGSTOP)

            def thaw():
                first_failure.wait(timeout=120)  # the outage has been felt (or it never will be: the test fails below)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGCONT)

            thawers.append(threading.Thread(target=thaw, name="thaw", daemon=True))
            thawers[-1].start()

        failed_attempts.clear()
        try:
            out = run(spec, callbacks=[_at_step(5, freeze)])
        finally:
            first_failure.set()  # whatever happened, let the server go on
            for t in thawers:
                t.join()
        assert len(thawers) == 1
        assert failed_attempts, "no tracking attempt failed while the server was frozen"
        assert out.status == "FINISHED", out.message  # so a retry after the failed attempt went through
        _assert_matches(client, out.run_id, reference)

        # 2. The server dies at step 5 and stays down: the run stops at its next flush with a checkpoint and a clear
        #    message, and keeps the metric points it could not write next to the checkpoint.
        monkeypatch.setenv("HARNESS_TRACKING_RETRIES", "2")
        out = run(spec, callbacks=[_at_step(5, server.stop)])
        capsys.readouterr()
        print_run_summary(out)
        summary = capsys.readouterr().out
        assert (out.status, out.stop_reason) == ("FAILED", "failed")
        assert "tracking store unreachable" in summary and f"harness resume {out.run_id}" in summary, summary
        folder = staging / out.run_id / "checkpoints"
        assert str(folder) in summary and (folder / "last.pt").is_file()
        assert (folder / "pending_metrics.jsonl").is_file(), "the points logged while the server was down are kept"
        server.start()  # same port, same database
        assert main(["resume", out.run_id, "-q"]) == 0
        stdout = capsys.readouterr().out
        assert "metric points that could not be written before the run stopped" in stdout, stdout
        assert not (folder / "pending_metrics.jsonl").exists()
        _assert_matches(client, out.run_id, reference)
        assert "checkpoints/last.pt" in {a.path for a in client.list_artifacts(out.run_id, "checkpoints")}

        # 3. A run interrupted here and resumed where the staging folder is gone: the checkpoint comes from the server.
        out = run(spec, callbacks=[_at_step(9, lambda: os.kill(os.getpid(), signal.SIGINT))])
        assert (out.status, out.stop_reason) == ("KILLED", "interrupted")
        shutil.rmtree(staging / out.run_id)
        assert main(["resume", out.run_id, "-q"]) == 0
        stdout = capsys.readouterr().out
        assert f"resuming from {staging / out.run_id / 'checkpoints' / 'last.pt'}" in stdout, stdout
        _assert_matches(client, out.run_id, reference)
