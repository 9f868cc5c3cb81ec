"""Several processes on one SQLite study and one MLflow SQLite store: nothing runs twice, nothing is lost, no locks.

* 4 worker processes (`harness run spec --workers 4`) on a 16-point grid.
* Two `harness run` invocations of one sweep spec, started together on a fresh folder (no store, no study yet): they
  join one study and one parent run and complete the grid together.

A barrier (HARNESS_BARRIER_AT, see harness.testing.faults) holds each worker at its first trial until all of them
have claimed one, so every worker provably runs trials at the same time as the others, whatever the scheduling.
"""

from __future__ import annotations

import re
import subprocess
import time

import pytest
import rel_helpers as H
from conftest import CHILD_WARNINGS, trial_params, write_spec
from optuna.trial import TrialState

from harness.cli import main
from harness.testing import faults

LOCKED = re.compile(r"database is locked|OperationalError|Traceback|internal error", re.I)


def _grid_spec(corpus, name: str, lrs: list[float], seeds: list[int], steps: int = 10) -> dict:
    return H.rel_spec(corpus, name, steps=steps, eval_every=5, d_model=8, train={"eval": {"batches": 1}},
                      sweep={"sampler": "grid", "params": {"train.optimizer.lr": lrs, "seed": seeds}})


def _check_sweep(folder, name: str, points: set[tuple], steps: int) -> dict:
    """Every point complete exactly once, in exactly one MLflow child run, with every step logged once."""
    study = H.study(folder, name)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * len(points), [(t.number, t.state.name, t.user_attrs) for t in trials]
    got = [(trial_params(study, t)["train.optimizer.lr"], trial_params(study, t)["seed"]) for t in trials]
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
def test_four_workers_share_a_16_point_grid(tmp_path, tiny_corpus, capfd, monkeypatch):
    H.seed_store(tmp_path)
    lrs, seeds = [1e-3, 3e-3, 1e-2, 3e-2], [1, 2, 3, 4]
    spec = write_spec(tmp_path, _grid_spec(tiny_corpus, "grid16", lrs, seeds), name="grid16.yaml")
    barrier = tmp_path / "barrier"
    monkeypatch.setenv("HARNESS_BARRIER_AT", f"trial_start:4:{barrier}")  # the spawned workers inherit it
    monkeypatch.setenv("PYTHONWARNINGS", CHILD_WARNINGS)  # and treat warnings as errors
    assert main(["run", str(spec), "--workers", "4", "-q"]) == 0
    out, err = capfd.readouterr()  # at the descriptor level: the spawned workers' output is in here too
    assert not LOCKED.search(out + err), out + err
    facts = _check_sweep(tmp_path, "grid16", {(lr, s) for lr in lrs for s in seeds}, steps=10)
    assert len(facts["pids"]) == 4, "every worker process took trials"
    assert faults.arrived(barrier) == sorted(str(p) for p in facts["pids"])


@pytest.mark.slow
def test_two_invocations_started_together_join_one_study(tmp_path, tiny_corpus):
    (tmp_path / "mlruns").rmdir()  # a fresh folder: both processes race to create the store and the study
    lrs, seeds = [1e-3, 1e-2, 3e-2], [1, 2]
    spec = write_spec(tmp_path, _grid_spec(tiny_corpus, "twin", lrs, seeds), name="twin.yaml")
    # Both invocations meet before either opens the store or the study (so they race to create both), and again at
    # their first trial (so each has claimed one before either can run the grid alone).
    opening, barrier = tmp_path / "opening", tmp_path / "barrier"
    procs = []
    try:
        for i in range(2):
            procs.append(H.harness_popen(["run", str(spec), "-q"], tmp_path, tmp_path / f"twin-{i}.log",
                                         MLFLOW_TRACKING_URI="sqlite:///mlruns/mlflow.db", HARNESS_BARRIER_AT=f"sweep_open:2:{opening};trial_start:2:{barrier}"))
        deadline = time.monotonic() + 240
        for p in procs:
            p.wait(timeout=max(1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pytest.fail("the two invocations did not finish in 240 s:\n" + "\n".join(
            (tmp_path / f"twin-{i}.log").read_text()[-3000:] for i in range(len(procs))))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    logs = [(tmp_path / f"twin-{i}.log").read_text() for i in range(2)]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log
        assert not LOCKED.search(log), log
    facts = _check_sweep(tmp_path, "twin", {(lr, s) for lr in lrs for s in seeds}, steps=10)
    assert facts["pids"] == {p.pid for p in procs}, "both invocations ran trials"
    assert faults.arrived(barrier) == sorted(str(p.pid) for p in procs)
    assert faults.arrived(opening) == sorted(str(p.pid) for p in procs)
    for log in logs:  # both invocations report the same parent run: they joined, they did not fork the study
        assert f"parent run {facts['parent']}" in log, log
