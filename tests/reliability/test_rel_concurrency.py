"""Several processes on one SQLite study and one MLflow SQLite store: nothing runs twice, nothing is lost, no locks.

* 4 worker processes (`harness run spec --workers 4`) on a 16-point grid.
* Two `harness run` invocations of one sweep spec, started at the same moment on a fresh folder (no store, no study
  yet): they join one study and one parent run and complete the grid together.
"""

from __future__ import annotations

import re
import time

import pytest
import rel_helpers as H
from optuna.trial import TrialState

from harness.cli import main

LOCKED = re.compile(r"database is locked|OperationalError|Traceback|internal error", re.I)


def _grid_spec(corpus, name: str, lrs: list[float], seeds: list[int], steps: int = 10) -> dict:
    spec = H.tiny_spec(corpus, name=name, max_steps=steps, eval_every=5, d_model=8)
    spec["train"]["eval"]["batches"] = 1
    spec["sweep"] = {"sampler": "grid", "params": {"train.optimizer.lr": lrs, "seed": seeds}}
    return spec


def _check_sweep(folder, name: str, points: set[tuple], steps: int) -> dict:
    """Every point complete exactly once, in exactly one MLflow child run, with every step logged once."""
    trials = H.study(folder, name).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * len(points), [(t.number, t.state.name, t.user_attrs) for t in trials]
    got = [(t.params["train.optimizer.lr"], t.params["seed"]) for t in trials]
    assert sorted(got) == sorted(points), "each grid point exactly once"
    client = H.store(folder)
    runs = H.runs(client, name)
    parents = [r for r in runs if r.data.tags.get("harness.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("harness.role") == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED", "exactly one parent run"
    assert len(children) == len(runs) - 1 == len(points), "no duplicate (or stray) MLflow child run"
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert {t.user_attrs["mlflow_run_id"] for t in trials} == {c.info.run_id for c in children}
    for c in children:
        assert c.info.status == "FINISHED" and c.data.tags["stop_reason"] == "completed", c.data.tags
        assert not LOCKED.search(c.data.tags.get("harness.message", ""))
        assert H.steps(client, c.info.run_id, "train/loss") == list(range(steps))
    return {"parent": parents[0].info.run_id, "pids": {t.user_attrs["pid"] for t in trials}}


@pytest.mark.slow
def test_four_workers_share_a_16_point_grid(tmp_path, tiny_corpus, capfd):
    H.seed_store(tmp_path)
    lrs, seeds = [1e-3, 3e-3, 1e-2, 3e-2], [1, 2, 3, 4]
    spec = H.write_yaml(tmp_path / "grid16.yaml", _grid_spec(tiny_corpus, "grid16", lrs, seeds))
    assert main(["run", str(spec), "--workers", "4", "-q"]) == 0
    out, err = capfd.readouterr()  # at the descriptor level: the spawned workers' output is in here too
    assert not LOCKED.search(out + err), out + err
    facts = _check_sweep(tmp_path, "grid16", {(lr, s) for lr in lrs for s in seeds}, steps=10)
    assert len(facts["pids"]) >= 2, "the trials were shared between worker processes"


@pytest.mark.slow
def test_two_invocations_started_together_join_one_study(tmp_path, tiny_corpus):
    (tmp_path / "mlruns").rmdir()  # a fresh folder: both processes race to create the store and the study
    lrs, seeds = [1e-3, 1e-2, 3e-2], [1, 2]
    spec = H.write_yaml(tmp_path / "twin.yaml", _grid_spec(tiny_corpus, "twin", lrs, seeds))
    procs = [H.harness_popen(["run", str(spec), "-q"], tmp_path, tmp_path / f"twin-{i}.log", MLFLOW_TRACKING_URI="sqlite:///mlruns/mlflow.db")
             for i in range(2)]
    deadline = time.monotonic() + 240
    for p in procs:
        p.wait(timeout=max(1, deadline - time.monotonic()))
    logs = [(tmp_path / f"twin-{i}.log").read_text() for i in range(2)]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log
        assert not LOCKED.search(log), log
    facts = _check_sweep(tmp_path, "twin", {(lr, s) for lr in lrs for s in seeds}, steps=10)
    for log in logs:  # both invocations report the same parent run: they joined, they did not fork the study
        assert f"parent run {facts['parent']}" in log, log
