"""End to end: `harness run` / `resume` as a user runs them, checked through MLflow's own client."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import child_env, make_spec, tree, write_spec
from mlflow import MlflowClient

TEXT = (
    "Shall I compare thee to a summer's day? Thou art more lovely and more temperate.\n"
    "Rough winds do shake the darling buds of May, and summer's lease hath all too short a date.\n"
    "Sometime too hot the eye of heaven shines, and often is his gold complexion dimm'd;\n"
    "And every fair from fair sometime declines, by chance or nature's changing course untrimm'd.\n"
) * 6


def _spec(tmp: Path, **train) -> dict:
    """A 24-step run on TEXT with a warmup-cosine schedule, clipping, dropout and periodic checkpoints; ``train`` keys
    replace those of the train section."""
    corpus = tmp / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    spec = make_spec(corpus, seed=7, steps=24, eval_every=6, checkpoint_every=8, experiment="e2e", model={"dropout": 0.1},
                     train={"optimizer": {"lr": 3e-3, "weight_decay": 0.01}, "clip_grad_norm": 1.0,
                            "schedule": {"name": "warmup_cosine", "warmup_steps": 4, "min_lr": 1e-4}},
                     tracking={"sample_tokens": 20})
    spec["train"].update(train)
    return spec


def _harness(args: list[str], cwd: Path, env_extra: dict | None = None, timeout: int = 240) -> subprocess.CompletedProcess:
    """``python -m harness`` as a user runs it (the store is mlruns/ in ``cwd``), with warnings as errors."""
    env = child_env(**(env_extra or {}))
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _client(tmp: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{tmp}/mlruns/mlflow.db")


def _runs(tmp: Path, experiment: str = "e2e"):
    c = _client(tmp)
    exp = c.get_experiment_by_name(experiment)
    return [] if exp is None else c.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


def _history(c: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in c.get_metric_history(run_id, key))


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the default store, mlruns/mlflow.db in the cwd
    return tmp_path


def test_run_end_to_end_logs_params_metrics_artifacts_and_status(work):
    spec = write_spec(work, _spec(work))
    proc = _harness(["run", str(spec), "--set", "train.max_steps=12"], work)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "stop_reason=completed" in proc.stdout
    assert "ln(vocab)" in proc.stdout  # the step-0 sanity check is printed
    (run,) = _runs(work)
    c = _client(work)
    assert run.info.status == "FINISHED"
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    assert tags["stop_reason"] == "completed"
    assert tags["device"] == "cpu" and tags["torch_version"]
    # params: the flattened resolved spec (with the override applied) plus derived facts
    assert params["train.max_steps"] == "12"
    assert params["model.d_model"] == "16"
    assert int(params["derived.vocab_size"]) == len(set(TEXT))
    assert int(params["derived.n_parameters"]) > 0
    assert params["derived.tokens_per_step"] == str(4 * 16)
    # every step logged exactly once for each per-step metric
    for key in ("train/loss", "lr", "grad_norm", "clipped", "tokens_per_sec"):
        steps = [s for s, _ in _history(c, run.info.run_id, key)]
        assert steps == list(range(12)), key
    val_steps = [s for s, _ in _history(c, run.info.run_id, "val/loss")]
    assert val_steps == [0, 6, 12]
    assert [s for s, _ in _history(c, run.info.run_id, "train/loss_eval")] == [0, 6, 12]
    # step-0 loss is near ln(vocab)
    first = _history(c, run.info.run_id, "train/loss")[0][1]
    assert abs(first - math.log(int(params["derived.vocab_size"]))) < 0.5
    assert "summary/final_val_loss" in metrics
    arts = {a.path for a in c.list_artifacts(run.info.run_id)}
    assert {"spec.yaml", "tokenizer.json", "checkpoints", "plots", "sample.txt"} <= arts
    ckpts = {a.path for a in c.list_artifacts(run.info.run_id, "checkpoints")}
    assert {"checkpoints/best.pt", "checkpoints/last.pt", "checkpoints/step-00000008.pt"} <= ckpts
    plots = {a.path for a in c.list_artifacts(run.info.run_id, "plots")}
    assert "plots/loss_curve.png" in plots
    resolved = yaml.safe_load(Path(c.download_artifacts(run.info.run_id, "spec.yaml", str(work / "dl"))).read_text())
    assert resolved["train"]["max_steps"] == 12


def test_bad_spec_exits_2_and_creates_nothing(work):
    bad = _spec(work)
    bad["train"]["optimizer"]["lr"] = -1
    bad["model"]["n_heads"] = 3
    bad["model"]["colour"] = "red"
    spec = write_spec(work, bad)
    before = tree(work)
    proc = _harness(["run", str(spec)], work)
    assert proc.returncode == 2
    err = proc.stderr
    assert "Traceback" not in err
    assert "spec.yaml" in err
    for path in ("train.optimizer.lr", "model.n_heads", "model.colour"):
        assert path in err, err
    assert tree(work) == before, f"created {sorted(tree(work) - before)}"


def test_unknown_override_path_suggests_the_closest(work):
    spec = write_spec(work, _spec(work))
    proc = _harness(["validate", str(spec), "--set", "train.optimizer.lrr=0.1"], work)
    assert proc.returncode == 2
    assert "did you mean train.optimizer.lr" in proc.stdout + proc.stderr


def test_divergence_is_an_outcome_not_a_crash(work):
    spec = write_spec(work, _spec(work, optimizer={"name": "sgd", "lr": 100.0}, clip_grad_norm=None, max_steps=40))
    proc = _harness(["run", str(spec)], work)
    assert proc.returncode == 1, proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr
    assert "stop_reason=diverged" in proc.stdout
    (run,) = _runs(work)
    assert run.info.status == "FAILED"
    assert run.data.tags["stop_reason"] == "diverged"
    losses = _history(_client(work), run.info.run_id, "train/loss")
    assert not math.isfinite(losses[-1][1])  # the non-finite loss is recorded at the step it happened
    assert int(run.data.tags["harness.steps"]) < 40


@pytest.mark.parametrize("kill_at", ["step:11", "eval:3", "checkpoint_write:2", "flush:2"])
def test_kill_and_resume_is_bit_identical(work, kill_at):
    spec = write_spec(work, _spec(work))
    ref = _harness(["run", str(spec), "--set", "tracking.experiment=reference"], work)
    assert ref.returncode == 0, ref.stderr
    killed = _harness(["run", str(spec)], work, {"HARNESS_KILL_AT": kill_at})
    assert killed.returncode == -9, killed.stderr  # SIGKILL: no chance to clean up
    (run,) = _runs(work)
    assert run.info.status == "RUNNING"  # stale: nobody ended it
    resumed = _harness(["resume", run.info.run_id], work)
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout
    c = _client(work)
    (ref_run,) = _runs(work, "reference")
    run = c.get_run(run.info.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["stop_reason"] == "completed"
    for key in ("train/loss", "val/loss", "grad_norm", "lr"):
        got, want = _history(c, run.info.run_id, key), _history(c, ref_run.info.run_id, key)
        assert [s for s, _ in got] == [s for s, _ in want], f"{key}: steps missing or duplicated"
        assert [v for _, v in got] == [v for _, v in want], f"{key}: values differ after resume"
