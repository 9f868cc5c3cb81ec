"""DDP under torchrun, with real processes (gloo on the CPU): two ranks train one run whose weights equal a
single process's on the same global batch, rank 0 alone tracks it, and a run killed on every rank resumes exactly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import child_env, make_spec, write_spec

from harness.tracking import client_for
from harness.tracking.tracker import local_artifact_dir

pytestmark = pytest.mark.slow


def _spec(corpus: Path) -> dict:
    # dropout 0: each rank would draw its own masks for its half of the batch, which one process cannot mirror
    return make_spec(corpus, name="ddp", seed=5, steps=8, eval_every=4, experiment="ddp",
                     model={"dropout": 0.0}, train={"batch_size": 8, "threads": 1})


def _env(**extra: str) -> dict[str, str]:
    env = child_env(**extra)
    env.pop("MLFLOW_TRACKING_URI", None)  # each project's own store (project/mlruns)
    return env


def _torchrun(project: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "harness", *args, "-q"]
    return subprocess.run(cmd, cwd=project, env=_env(**env), capture_output=True, text=True, timeout=300)


def _project(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    (folder / "mlruns").mkdir(parents=True)
    return folder


def _runs(project: Path) -> list:
    client = client_for(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def _weights(run) -> dict[str, torch.Tensor]:
    folder = local_artifact_dir(run.info.artifact_uri)
    return torch.load(folder / "checkpoints" / "last.pt", weights_only=True)["model"]


def test_two_ranks_train_the_same_weights_as_one_process(tmp_path, tiny_corpus):
    spec = write_spec(tmp_path, _spec(tiny_corpus), "ddp.yaml")
    ddp, single = _project(tmp_path, "ddp"), _project(tmp_path, "single")
    out = _torchrun(ddp, "run", str(spec))
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("finished: stop_reason=completed") == 1, "rank 0 alone prints the summary"
    one = subprocess.run([sys.executable, "-m", "harness", "run", str(spec), "-q"], cwd=single, env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr

    [run_ddp], [run_one] = _runs(ddp), _runs(single)  # one MLflow run: the followers track nothing
    assert run_ddp.data.params["derived.world_size"] == "2" and run_ddp.data.params["derived.batch_size_per_rank"] == "4"
    assert run_ddp.data.metrics["ddp/param_divergence"] == 0.0, "every rank holds rank 0's weights"
    a, b = _weights(run_ddp), _weights(run_one)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6), k
    client = client_for(f"sqlite:///{ddp / 'mlruns' / 'mlflow.db'}")
    losses = [m.value for m in sorted(client.get_metric_history(run_ddp.info.run_id, "train/loss"), key=lambda m: m.step)]
    ref = client_for(f"sqlite:///{single / 'mlruns' / 'mlflow.db'}")
    expected = [m.value for m in sorted(ref.get_metric_history(run_one.info.run_id, "train/loss"), key=lambda m: m.step)]
    assert losses == pytest.approx(expected, rel=1e-5), "train/loss is the whole global batch's, averaged over the ranks"


def test_a_ddp_run_killed_on_every_rank_resumes_exactly(tmp_path, tiny_corpus):
    spec = write_spec(tmp_path, _spec(tiny_corpus), "ddp.yaml")
    whole, killed = _project(tmp_path, "whole"), _project(tmp_path, "killed")
    assert _torchrun(whole, "run", str(spec)).returncode == 0
    dead = _torchrun(killed, "run", str(spec), HARNESS_KILL_AT="step:6")  # both ranks die after step 6 (checkpoint: 4)
    assert dead.returncode != 0
    [run] = _runs(killed)
    out = _torchrun(killed, "resume", run.info.run_id)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "(step 4)" in out.stdout, out.stdout
    [resumed], [reference] = _runs(killed), _runs(whole)
    assert resumed.info.status == "FINISHED"
    a, b = _weights(resumed), _weights(reference)
    assert all(torch.equal(a[k], b[k]) for k in a), "the resumed run ends with the uninterrupted run's weights"


def test_a_sweep_is_refused_under_torchrun(tmp_path, tiny_corpus):
    raw = _spec(tiny_corpus) | {"sweep": {"sampler": "grid", "params": {"train.optimizer.lr": [1e-3, 3e-3]}}}
    spec = write_spec(tmp_path, raw, "sweep.yaml")
    out = _torchrun(_project(tmp_path, "p"), "run", str(spec))
    assert out.returncode != 0
    assert "a sweep runs its trials as separate processes" in out.stderr


def test_a_batch_that_does_not_split_over_the_ranks_is_refused_before_a_run_exists(tmp_path, tiny_corpus):
    raw = _spec(tiny_corpus)
    raw["train"]["batch_size"] = 7
    project = _project(tmp_path, "p")
    out = _torchrun(project, "run", str(write_spec(tmp_path, raw, "odd.yaml")))
    assert out.returncode != 0
    assert "train.batch_size 7 is the global batch; it must divide evenly over the 2 processes" in out.stderr
    assert _runs(project) == [], "nothing is created"
