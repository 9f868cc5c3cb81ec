"""``harness run`` as a real process, the way a user starts it: what the run in the store holds at the end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import child_env, write_spec
from mlflow import MlflowClient

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


def test_a_classifier_run_by_the_command_keeps_its_confusion_matrix(tmp_path):
    """Defect 1 of issue 20: under `harness run` the classification report failed (the tracking helper's tracker had
    no log_figure), so the run ended without confusion_matrix.png and with a harness.finish_error tag."""
    spec = write_spec(tmp_path, CONTROL, name="control.yaml")
    out = _harness(["run", str(spec), "-q"], tmp_path)
    assert out.returncode == 0, out.stderr
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("control").experiment_id])
    assert run.info.status == "FINISHED"
    assert "harness.finish_error" not in run.data.tags, run.data.tags["harness.finish_error"]
    files = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"confusion_matrix.csv", "confusion_matrix.png", "labels.json"} <= files, files
    assert {"val/precision/female", "val/recall/male"} <= set(run.data.metrics)
