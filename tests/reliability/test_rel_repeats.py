"""kill -9 in the middle of a repeated sweep (sweep.repeats): on the re-run every seed run exists once, and the killed
one resumes exactly."""

from __future__ import annotations

from collections import Counter

import optuna
import pytest
import rel_helpers as H
from conftest import write_spec

from harness.cli import main
from harness.job import run
from harness.spec import spec_from_dict


def _seed_runs(client, experiment: str) -> list:
    return [r for r in H.runs(client, experiment) if r.data.tags.get("harness.config_id")]


@pytest.mark.slow
def test_kill_9_in_a_repeated_sweep_resumes_each_seed_run_exactly_once(tmp_path, tiny_corpus):
    H.warm_killer()
    H.seed_store(tmp_path)
    raw = H.rel_spec(tiny_corpus, "rk", checkpoint_every=6, sweep={"params": {"train.optimizer.lr": [3e-3, 1e-2]}, "repeats": 2})
    spec_file = write_spec(tmp_path, raw, name="rk.yaml")
    client = H.store(tmp_path)
    # 12 steps per seed run, seed-major order: step 19 is the second seed run (c001, seed 11) at its step 7
    code, log = H.killed(["run", str(spec_file), "-q", "--workers", "1"], tmp_path, kill_at="step:19")
    assert code == -9, log
    assert main(["run", str(spec_file), "-q", "--workers", "1"]) == 0

    runs = _seed_runs(client, "rk")
    assert Counter((r.data.tags["harness.config_id"], r.data.tags["harness.seed"]) for r in runs) == Counter(
        {("c000", "11"): 1, ("c000", "12"): 1, ("c001", "11"): 1, ("c001", "12"): 1}), "each seed run exists once"
    assert {r.info.status for r in runs} == {"FINISHED"}
    killed = next(r for r in runs if (r.data.tags["harness.config_id"], r.data.tags["harness.seed"]) == ("c001", "11"))
    assert 0 < int(killed.data.tags["harness.resumed_from_step"]) < 7, "it resumed from a checkpoint before the kill at step 7"
    # the resumed seed run is bit-identical to an uninterrupted run of the same configuration and seed
    one = {k: v for k, v in raw.items() if k != "sweep"}
    one["train"] = {**one["train"], "optimizer": {"name": "adamw", "lr": 1e-2}}
    one["tracking"] = {**one["tracking"], "experiment": "reference"}
    ref = run(spec_from_dict(one))
    for key in ("train/loss", "val/loss"):
        assert H.history(client, killed.info.run_id, key) == H.history(client, ref.run_id, key), key
    trials = optuna.load_study(study_name="rk", storage=f"sqlite:///{tmp_path}/studies/rk.db").get_trials()
    assert Counter(t.state.name for t in trials) == Counter({"COMPLETE": 4, "FAIL": 1}), "four seed runs and the killed attempt"
