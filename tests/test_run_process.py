"""``harness run`` as a real process, the way a user starts it: what the run in the store holds at the end."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import child_env, make_spec, write_spec
from mlflow import MlflowClient

from harness.job import resume
from harness.testing import faults

# names_gender_control.yaml, shrunk: a classifier trained from random weights (no `init`), through the command.
CONTROL = {
    "name": "control",
    "seed": 1337,
    "task": {"kind": "classify", "dataset": "names_by_sex", "freeze": "all_but_head"},
    "data": {"seq_len": 12, "val_fraction": 0.2},
    "model": {"d_model": 16, "n_heads": 2, "n_layers": 1, "d_ff": 32, "dropout": 0.1},
    "train": {"max_steps": 4, "batch_size": 16, "optimizer": {"lr": 3e-3}, "eval": {"every_steps": 2, "batches": 2},
              "device": "cpu", "early_stopping": {"metric": "val/accuracy", "patience": 4}},
    "tracking": {"experiment": "control", "sample_tokens": 0},
}


def _harness(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=cwd, env=child_env(), capture_output=True, text=True,
                          timeout=300)


def _client(folder: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{folder}/mlruns/mlflow.db")


def _wait_for(condition, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_a_classifier_run_by_the_command_keeps_its_confusion_matrix(tmp_path):
    """Defect 1 of issue 20: under `harness run` the classification report failed (the tracking helper's tracker had
    no log_figure), so the run ended without confusion_matrix.png and with a harness.finish_error tag."""
    spec = write_spec(tmp_path, CONTROL, name="control.yaml")
    out = _harness(["run", str(spec), "-q"], tmp_path)
    assert out.returncode == 0, out.stderr
    client = _client(tmp_path)
    (run,) = client.search_runs([client.get_experiment_by_name("control").experiment_id])
    assert run.info.status == "FINISHED"
    assert "harness.finish_error" not in run.data.tags, run.data.tags["harness.finish_error"]
    files = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"confusion_matrix.csv", "confusion_matrix.png", "labels.json"} <= files, files
    assert {"val/precision/female", "val/recall/male"} <= set(run.data.metrics)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_while_the_run_finishes_ends_it_killed_and_resume_finishes_it(tmp_path, tiny_corpus, sig):
    """Defect 8 of issue 20: Ctrl-C or SIGTERM after training, while the run writes its summary, plots, sample and
    uploads, left it RUNNING (later reaped as crashed). It ends KILLED with stop_reason=interrupted, exit 128+signal,
    and `harness resume` finishes it."""
    spec = write_spec(tmp_path, make_spec(tiny_corpus, name="fin", steps=6, eval_every=3, experiment="fin", tracking={"sample_tokens": 20}))
    barrier = tmp_path / "barrier"
    proc = subprocess.Popen([sys.executable, "-m", "harness", "run", str(spec), "-q"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=child_env(HARNESS_BARRIER_AT=f"finish:2:{barrier}"))
    try:
        # the run has trained and waits where its finishing work begins, until the test has sent the signal
        _wait_for(lambda: str(proc.pid) in faults.arrived(barrier) or proc.poll() is not None, "the run to reach its finish")
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(sig)
        faults.arrive(barrier, "test")
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + sig, stderr
    client = _client(tmp_path)
    (run,) = client.search_runs([client.get_experiment_by_name("fin").experiment_id])
    assert (run.info.status, run.data.tags.get("stop_reason")) == ("KILLED", "interrupted"), (run.info.status, run.data.tags)
    assert "harness resume" in run.data.tags.get("harness.message", "")

    assert resume(run.info.run_id).status == "FINISHED"  # (in this process: the same store)
    run = client.get_run(run.info.run_id)
    assert (run.info.status, run.data.tags["stop_reason"]) == ("FINISHED", "completed")
    assert {"sample.txt", "plots/loss_curve.png"} <= {a.path for a in client.list_artifacts(run.info.run_id)} | {
        a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == list(range(6))  # each step once
