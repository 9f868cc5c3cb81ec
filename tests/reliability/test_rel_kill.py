"""kill -9 inside a sweep at six named points, one after another, then finish it by running the same command again.

test_e2e.py kills a single run at step/eval/checkpoint_write/flush and test_sweep.py kills a sweep at a step. This test
kills one sweep at every other point: inside an evaluation, during a checkpoint write (a torn write), after a metric
flush, when a trial has just been claimed, when its MLflow run has just been created, and after the run has finished
but before the study was told. Between kills it checks that the next harness command reaps what the dead process left
RUNNING. At the end every grid point has completed exactly once, in exactly one MLflow run, with every metric step
logged once and bit-identical to an uninterrupted run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import rel_helpers as H
from conftest import trial_params, write_spec
from optuna.trial import TrialState

from harness.cli import main
from harness.job import run
from harness.spec import spec_from_dict
from harness.train.checkpoint import load_checkpoint, resume_candidates

LRS = [3e-3, 1e-2, 3e-2]
STEPS, EVAL, CKPT = 12, 4, 6

# (HARNESS_KILL_AT, where that lands in this sweep). Each is a fresh process, so counts start again at 1.
KILLS = [
    ("eval:6", "trial 0, inside the evaluation at step 4 (4 eval batches per evaluation)"),
    ("checkpoint_write:3", "trial 0 resumed from step 0: after best+last at step 4, inside the periodic write at step 6"),
    ("flush:2", "trial 0 resumed again: the second metric batch written (the evaluation at step 8)"),
    ("trial_end:1", "trial 0's MLflow run is FINISHED but the study was never told"),
    ("trial_start:2", "trial 0's retry is closed from MLflow; trial 1 is claimed and dies before its run exists"),
    ("run_setup:1", "trial 1's retry has created its MLflow run and dies before setting it up"),
]


def _sweep_spec(corpus: Path) -> dict:
    return H.rel_spec(corpus, "gauntlet", steps=STEPS, eval_every=EVAL, checkpoint_every=CKPT,
                      sweep={"sampler": "grid", "params": {"train.optimizer.lr": LRS}})


def _ckpt_dir(client, run_id: str) -> Path:
    return Path(client.get_run(run_id).info.artifact_uri) / "checkpoints"


@pytest.mark.slow
def test_sweep_survives_kill_9_at_six_points(tmp_path, tiny_corpus):
    H.warm_killer()  # its imports overlap with the reference runs below
    H.seed_store(tmp_path)
    raw = _sweep_spec(tiny_corpus)
    spec_file = write_spec(tmp_path, raw, name="sweep.yaml")
    client = H.store(tmp_path)

    # Uninterrupted references, one per grid point, in their own experiment.
    reference = {}
    for lr in LRS:
        one = {k: v for k, v in raw.items() if k != "sweep"}
        one["train"] = {**one["train"], "optimizer": {"name": "adamw", "lr": lr}}
        one["tracking"] = {**one["tracking"], "experiment": "reference"}
        out = run(spec_from_dict(one))
        assert out.status == "FINISHED"
        reference[lr] = {k: H.history(client, out.run_id, k) for k in ("train/loss", "val/loss", "grad_norm")}

    for n, (kill_at, where) in enumerate(KILLS):
        code, log = H.killed(["run", str(spec_file), "-q"], tmp_path, kill_at=kill_at)
        assert code == -9, f"{kill_at} ({where}) did not kill the sweep (exit {code}):\n{log}"
        trials = H.study(tmp_path, "gauntlet").get_trials()
        assert [t for t in trials if t.state == TrialState.RUNNING], f"after {kill_at}: a trial should be left RUNNING"
        if n == 0:
            # The next harness command on this store (here: an unrelated single run) reaps the dead sweep's runs.
            stale = [r for r in H.runs(client, "gauntlet") if r.info.status == "RUNNING"]
            assert {r.data.tags.get("harness.role") for r in stale} == {"sweep", "trial"}
            other = {k: v for k, v in raw.items() if k != "sweep"} | {"name": "other", "tracking": {"experiment": "other", "sample_tokens": 0}}
            assert main(["run", str(write_spec(tmp_path, other, name="other.yaml")), "-q"]) == 0
            for r in stale:
                r = client.get_run(r.info.run_id)
                if r.data.tags.get("harness.role") == "sweep":
                    # The parent run belongs to the study, which any later invocation (or machine) continues: it stays
                    # open until the study ends.
                    assert r.info.status == "RUNNING", r.data.tags
                else:
                    assert (r.info.status, r.data.tags.get("stop_reason")) == ("FAILED", "crashed"), r.data.tags
        if kill_at.startswith("checkpoint_write"):
            # The torn write left a temp file behind, and the newest checkpoint is still whole.
            (t0,) = [t for t in trials if t.state == TrialState.RUNNING]
            folder = _ckpt_dir(client, t0.user_attrs["mlflow_run_id"])
            assert list(folder.glob(".*.tmp")), "the kill should have interrupted a checkpoint write"
            newest = resume_candidates(folder)[0]
            assert load_checkpoint(newest)["trainer"]["step"] >= EVAL
        if n > 0:
            # The sweep command reaped the previous victim: FAIL with stop_reason=crashed, and queued a retry of it.
            failed = [t for t in trials if t.state == TrialState.FAIL]
            assert len(failed) == n and all(t.user_attrs.get("stop_reason") == "crashed" for t in failed)
            retried = {x for t in trials for x in t.system_attrs.get("retry_history", [])}
            assert {t.number for t in failed} <= retried

    # Running the same command again finishes the sweep.
    assert main(["run", str(spec_file), "-q"]) == 0

    study = H.study(tmp_path, "gauntlet")
    trials = study.get_trials()
    states = [t.state for t in trials]
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(trial_params(study, t)["train.optimizer.lr"] for t in complete) == LRS, "every grid point completes exactly once"
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == len(KILLS) and {t.user_attrs["stop_reason"] for t in failed} == {"crashed"}
    retried = {x for t in trials for x in t.system_attrs.get("retry_history", [])}
    assert {t.number for t in failed} <= retried, "every crashed trial was retried"

    everything = H.runs(client)
    assert not [r for r in everything if r.info.status == "RUNNING"], "nothing stays RUNNING"
    sweep_runs = H.runs(client, "gauntlet")
    parents = [r for r in sweep_runs if r.data.tags.get("harness.role") == "sweep"]
    children = [r for r in sweep_runs if r.data.tags.get("harness.role") == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == len(sweep_runs) - 1 == len(LRS), [(r.info.run_id, r.info.status, r.data.tags.get("stop_reason")) for r in sweep_runs]
    assert {t.user_attrs["mlflow_run_id"] for t in complete} == {r.info.run_id for r in children}
    for child in children:
        assert child.info.status == "FINISHED" and child.data.tags["stop_reason"] == "completed"
        lr = float(child.data.params["train.optimizer.lr"])
        for key, want in reference[lr].items():
            got = H.history(client, child.info.run_id, key)
            assert [s for s, _ in got] == [s for s, _ in want], f"lr={lr} {key}: a step is missing or logged twice"
            assert [v for _, v in got] == [v for _, v in want], f"lr={lr} {key}: values differ from the uninterrupted run"
        assert H.steps(client, child.info.run_id, "train/loss") == list(range(STEPS))
        assert H.steps(client, child.info.run_id, "val/loss") == list(range(0, STEPS + 1, EVAL))
