"""A run's final logged evaluation describes the weights it keeps: after early stopping restores the best weights,
their evaluation is the last point of val/loss (and of val/accuracy for a classifier), which MLflow shows as the
run's value and `harness results` as its final one."""

from __future__ import annotations

from mlflow import MlflowClient

from harness.job import run
from harness.spec import spec_from_dict


def test_the_last_logged_evaluation_is_of_the_restored_best_weights(tiny_spec_dict, tmp_path):
    # min_delta larger than any gain: step 0 stays the best, patience runs out at step 6, the weights of step 0 return
    tiny_spec_dict["train"].update(max_steps=60, eval={"every_steps": 2, "batches": 2}, optimizer={"name": "adamw", "lr": 1e-2},
                                   early_stopping={"metric": "val/loss", "patience": 3, "min_delta": 100.0, "restore_best": True})
    out = run(spec_from_dict(tiny_spec_dict))
    assert (out.stop_reason, out.steps, out.best_step) == ("early_stopped", 6, 0)
    assert out.final["val/loss"] == out.best_metric  # the kept weights' evaluation

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    history = sorted(client.get_metric_history(out.run_id, "val/loss"), key=lambda m: (m.step, m.timestamp))
    assert history[-1].value == out.best_metric, "the last val/loss logged is of weights the run did not keep"
    assert history[-2].step == 6 and history[-2].value != out.best_metric  # the evaluation that ended patience, kept too
    assert client.get_run(out.run_id).data.metrics["val/loss"] == out.best_metric
