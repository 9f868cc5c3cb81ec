"""Sweeps through Optuna and MLflow, end to end on tiny specs (real SQLite study storage, real MLflow store)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from conftest import CHILD_WARNINGS, child_env, make_spec, trial_params, tree, write_spec
from mlflow import MlflowClient
from optuna.trial import TrialState

from harness.spec import spec_from_dict
from harness.sweep import run_sweep
from harness.testing import faults

TEXT = (
    "From fairest creatures we desire increase, that thereby beauty's rose might never die,\n"
    "But as the riper should by time decease, his tender heir might bear his memory:\n"
    "But thou contracted to thine own bright eyes, feed'st thy light's flame with self-substantial fuel,\n"
) * 8


def base_spec(tmp: Path, **sweep) -> dict:
    """A 3-point lr grid over 20-step runs on TEXT; ``sweep`` keys replace those of the sweep section."""
    corpus = tmp / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    return make_spec(corpus, name="tinysweep", seed=3, steps=20, eval_every=5, experiment="sweeps", train={"optimizer": {"lr": 3e-3}},
                     sweep={"sampler": "grid", "params": {"train.optimizer.lr": [1e-2, 3e-3, 1e-5]}, **sweep})


@pytest.fixture
def work(tmp_path):
    """The test's folder: conftest's _isolate works there, with the MLflow store in mlruns/ and studies in studies/."""
    return tmp_path


def client(tmp: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{tmp}/mlruns/mlflow.db")


def all_runs(tmp: Path, experiment: str = "sweeps"):
    c = client(tmp)
    exp = c.get_experiment_by_name(experiment)
    return [] if exp is None else c.search_runs([exp.experiment_id], max_results=1000)


def split_runs(runs):
    parents = [r for r in runs if r.data.tags.get("harness.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("harness.role") == "trial"]
    return parents, children


def load_study(tmp: Path, name: str = "tinysweep") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp}/studies/{name}.db")


def test_grid_sweep_end_to_end(work):
    result = run_sweep(spec_from_dict(base_spec(work)))
    parents, children = split_runs(all_runs(work))
    assert len(parents) == 1 and len(children) == 3
    parent = parents[0]
    assert result.parent_run_id == parent.info.run_id and parent.info.status == "FINISHED"
    assert type(result.best["params"]["train.optimizer.lr"]) is float, "plain values: the summary prints them"
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert sorted(float(c.data.params["train.optimizer.lr"]) for c in children) == [1e-5, 3e-3, 1e-2]
    assert {c.data.tags["harness.study"] for c in children} == {"tinysweep"}
    assert sorted(int(c.data.tags["harness.trial"]) for c in children) == [0, 1, 2]
    assert all(c.info.status == "FINISHED" and c.data.tags["stop_reason"] == "completed" for c in children)
    study = load_study(work)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert {t.user_attrs["mlflow_run_id"] for t in trials} == {c.info.run_id for c in children}
    assert study.user_attrs["mlflow_parent_run_id"] == parent.info.run_id
    # the objective is the best val/loss of the trial's run
    c = client(work)
    for t in trials:
        vals = [m.value for m in c.get_metric_history(t.user_attrs["mlflow_run_id"], "val/loss")]
        assert t.value == pytest.approx(min(vals))
    table = result.table
    assert len(table) == 3
    assert {"trial", "train.optimizer.lr", "best_val_loss", "final_val_loss", "final_train_loss", "steps", "steps_per_epoch",
            "wall_time_s", "stop_reason", "verdict", "run_id"} <= set(table.columns)
    assert set(table["steps"]) == {20}
    assert table.loc[table["train.optimizer.lr"] == 1e-5, "verdict"].item() == "barely moved"
    arts = {a.path for a in c.list_artifacts(parent.info.run_id)}
    assert {"trials.csv", "best_params.json", "plots"} <= arts
    plots = {a.path for a in c.list_artifacts(parent.info.run_id, "plots")}
    assert "plots/curves.png" in plots and "plots/objective_vs_train_optimizer_lr.png" in plots
    pm = c.get_run(parent.info.run_id).data.metrics
    assert pm["n_complete"] == 3 and pm["n_failed"] == 0 and pm["best_value"] == pytest.approx(study.best_value)


def test_rerun_resumes_and_fresh_restarts(work):
    spec = spec_from_dict(base_spec(work))
    first = run_sweep(spec)
    again = run_sweep(spec)  # nothing left to do: no new trials, same parent
    assert again.parent_run_id == first.parent_run_id
    assert len(load_study(work).get_trials()) == 3
    assert len(split_runs(all_runs(work))[1]) == 3
    fresh = run_sweep(spec, fresh=True)
    assert fresh.parent_run_id != first.parent_run_id
    assert len(load_study(work).get_trials()) == 3


def test_killed_sweep_resumes_each_point_exactly_once(work):
    spec_path = write_spec(work, base_spec(work), name="sweep.yaml")
    env = child_env(HARNESS_KILL_AT="step:27")  # trial 0 takes 20 steps: die inside trial 1
    proc = subprocess.run([sys.executable, "-m", "harness", "run", str(spec_path), "-q"], cwd=work, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -9, proc.stderr
    states = [t.state for t in load_study(work).get_trials()]
    assert states == [TrialState.COMPLETE, TrialState.RUNNING]
    proc = subprocess.run([sys.executable, "-m", "harness", "run", str(spec_path), "-q"], cwd=work, env=child_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    study = load_study(work)
    trials = study.get_trials()
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(trial_params(study, t)["train.optimizer.lr"] for t in done) == [1e-5, 3e-3, 1e-2]  # each point once
    crashed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(crashed) == 1 and crashed[0].user_attrs["stop_reason"] == "crashed"
    runs = all_runs(work)
    parents, children = split_runs(runs)
    assert len(parents) == 1, "the parent run must be re-attached, not duplicated"
    assert len(children) == 3, "the crashed trial's MLflow run is resumed, not duplicated"
    assert not [r for r in runs if r.info.status == "RUNNING"]
    # the retried trial continued the crashed trial's MLflow run, and its history has every step once
    retried = next(t for t in done if t.system_attrs.get("failed_trial") is not None)
    assert retried.user_attrs["mlflow_run_id"] == crashed[0].user_attrs["mlflow_run_id"]
    steps = [m.step for m in client(work).get_metric_history(retried.user_attrs["mlflow_run_id"], "train/loss")]
    assert sorted(steps) == list(range(20))


def test_two_workers_share_the_grid(work, monkeypatch):
    raw = base_spec(work, params={"train.optimizer.lr": [1e-2, 3e-3], "seed": [1, 2]})
    # Each worker waits at its first trial until both have claimed one: both take trials, whatever the scheduling.
    barrier = work / "barrier"
    monkeypatch.setenv("HARNESS_BARRIER_AT", f"trial_start:2:{barrier}")
    monkeypatch.setenv("PYTHONWARNINGS", CHILD_WARNINGS)  # the spawned workers treat warnings as errors too
    result = run_sweep(spec_from_dict(raw), workers=2)
    study = load_study(work)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    points = sorted((trial_params(study, t)["train.optimizer.lr"], trial_params(study, t)["seed"]) for t in trials)
    assert points == sorted([(1e-2, 1), (1e-2, 2), (3e-3, 1), (3e-3, 2)])
    pids = {t.user_attrs["pid"] for t in trials}
    assert len(pids) == 2, "both worker processes took trials"
    assert faults.arrived(barrier) == sorted(str(p) for p in pids)
    parents, children = split_runs(all_runs(work))
    assert len(parents) == 1 and len(children) == 4
    assert len(result.table) == 4


def test_pruning_stops_bad_trials_and_states_agree(work):
    raw = base_spec(work, params={"train.optimizer.lr": [1e-2, 1e-6], "seed": [1, 2]},
                    pruner={"name": "median", "n_startup_trials": 2, "n_warmup_steps": 0})
    raw["train"]["max_steps"] = 30
    run_sweep(spec_from_dict(raw))
    trials = load_study(work).get_trials()
    states = [t.state for t in trials]
    assert states[:2] == [TrialState.COMPLETE] * 2
    assert states[2:] == [TrialState.PRUNED] * 2
    c = client(work)
    for t in trials[2:]:
        run = c.get_run(t.user_attrs["mlflow_run_id"])
        assert run.info.status == "KILLED" and run.data.tags["stop_reason"] == "pruned"
        assert t.user_attrs["stop_reason"] == "pruned"
        assert int(run.data.tags["harness.steps"]) < 30


def test_diverging_trial_fails_and_the_sweep_goes_on(work):
    raw = base_spec(work, params={"train.optimizer.lr": [100.0, 1e-3]})
    raw["train"]["optimizer"] = {"name": "sgd", "lr": 1e-3}
    raw["train"]["max_steps"] = 40
    result = run_sweep(spec_from_dict(raw))
    trials = load_study(work).get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert trials[0].user_attrs["stop_reason"] == "diverged"
    run = client(work).get_run(trials[0].user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED" and run.data.tags["stop_reason"] == "diverged"
    assert result.counts["failed"] == 1 and result.counts["complete"] == 1
    assert result.table.loc[result.table["trial"] == 0, "verdict"].item() == "diverged"


def test_invalid_sampled_value_fails_only_that_trial(work):
    raw = base_spec(work, sampler="random", n_trials=6, seed=0, params={"model.n_heads": {"int": [1, 4]}})
    run_sweep(spec_from_dict(raw))
    trials = load_study(work).get_trials()
    bad = [t for t in trials if t.params["model.n_heads"] == 3]
    good = [t for t in trials if t.params["model.n_heads"] != 3]
    assert bad, "seed 0 should sample n_heads=3 at least once; pick another seed if optuna changed"
    assert all(t.state == TrialState.FAIL and "model.n_heads" in t.user_attrs["fail_reason"] for t in bad)
    assert all(t.state == TrialState.COMPLETE for t in good)
    assert len(split_runs(all_runs(work))[1]) == len(good)  # no MLflow run for a spec that never validated


def test_bad_swept_path_is_refused_before_any_trial(work):
    raw = base_spec(work, params={"train.optimizer.lrr": [1e-3]})
    spec_path = write_spec(work, raw, name="bad.yaml")
    before = tree(work)
    proc = subprocess.run([sys.executable, "-m", "harness", "run", str(spec_path)], cwd=work, env=child_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert "sweep.params.train.optimizer.lrr" in proc.stderr and "did you mean train.optimizer.lr" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert tree(work) == before, f"created {sorted(tree(work) - before)}"


def test_grid_values_are_checked_up_front(work):
    from harness import SpecError
    from harness.data import validate_data

    raw = base_spec(work, params={"train.batch_size": [4, 100000]})
    with pytest.raises(SpecError) as err:
        validate_data(spec_from_dict(raw))  # the schema allows 100000; the data has fewer windows
    assert any(i.path == "sweep.params.train.batch_size" for i in err.value.issues)
    raw = base_spec(work, params={"train.optimizer.lr": []})
    with pytest.raises(SpecError) as err:
        spec_from_dict(raw)
    assert "empty grid" in str(err.value)
    raw = base_spec(work, sampler="tpe", n_trials=2, params={"train.optimizer.lr": {"float": [1e-2, 1e-4], "log": True}})
    with pytest.raises(SpecError, match="inverted"):
        spec_from_dict(raw)
    raw = base_spec(work, sampler="tpe", n_trials=2, params={"train.optimizer.lr": {"float": [0.0, 1e-2], "log": True}})
    with pytest.raises(SpecError, match="log range needs low > 0"):
        spec_from_dict(raw)


def test_a_sweep_that_breaks_ends_its_parent_run_failed_with_the_error(work, monkeypatch):
    """Not a trial failing (that FAILs the trial), the sweep itself: here the study's storage starts refusing reads after
    the first trial. The error reaches the caller, and the parent run is not left RUNNING."""
    import harness.sweep.claim as claim

    real, calls = claim.reap, []

    def storage_gone(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise OSError("the study's database went away")
        return real(*args, **kwargs)

    monkeypatch.setattr(claim, "reap", storage_gone)
    with pytest.raises(OSError, match="went away"):
        run_sweep(spec_from_dict(base_spec(work)))
    [parent], children = split_runs(all_runs(work))
    assert parent.info.status == "FAILED"
    assert parent.data.tags["stop_reason"] == "failed" and "went away" in parent.data.tags["harness.message"]
    assert [c.info.status for c in children] == ["FINISHED"], "the trial that finished before the error stays finished"
