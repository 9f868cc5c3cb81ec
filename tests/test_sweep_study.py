"""A sweep's study: its lock is the same for every process, it belongs to one base spec, and its table reports the
objective the spec asks for."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys

import pytest

from harness import SpecError, UsageError
from harness.cli import main
from harness.job import run
from harness.spec import spec_from_dict
from harness.sweep import run_sweep
from harness.sweep.claim import study_lock


def _sweep(spec: dict, **sweep) -> dict:
    spec["sweep"] = {"sampler": "grid", "params": {"train.optimizer.lr": [1e-3, 3e-3]}, **sweep}
    return spec


def test_the_study_lock_is_the_same_in_every_process():
    """Python salts hash() per process; a lock named with it protected nothing between spawned workers."""
    code = ("from harness.sweep.claim import _lock_key; "
            "print(_lock_key('lr_sweep'), _lock_key('a'))")
    keys = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": str(seed)}).stdout for seed in (1, 2, 3)}
    assert len(keys) == 1
    assert all(0 <= int(k) < 2**63 for k in keys.pop().split())


def test_the_sqlite_study_lock_is_a_file_next_to_the_study(tmp_path):
    url = f"sqlite:///{tmp_path}/studies/s.db"
    with study_lock(url, "s"):
        assert (tmp_path / "studies" / ".s.db.s.lock").exists()


def test_running_a_sweep_spec_as_one_run_names_the_function_that_exists(tiny_spec_dict):
    spec = spec_from_dict(_sweep(tiny_spec_dict))
    with pytest.raises(UsageError) as err:
        run(spec)
    dotted = re.search(r"run it with ([\w.]+)", str(err.value)).group(1)
    module, _, name = dotted.rpartition(".")
    assert callable(getattr(importlib.import_module(module), name))


def test_the_trial_table_reports_the_objective_the_spec_names(tiny_spec_dict):
    raw = _sweep(tiny_spec_dict, objective={"metric": "train/loss_eval", "direction": "minimize", "summary": "last"})
    result = run_sweep(spec_from_dict(raw))
    table = result.table
    assert {"best_train_loss_eval", "final_train_loss_eval"} <= set(table.columns)
    assert "best_val_loss" not in table.columns
    # summary: last -> the objective is the last evaluated train/loss_eval, which is also the final value
    assert list(table["objective"]) == pytest.approx(list(table["final_train_loss_eval"]))
    assert (table["best_train_loss_eval"] <= table["final_train_loss_eval"] + 1e-12).all()


def test_a_changed_spec_is_refused_against_an_existing_study(tmp_path, tiny_spec_dict, write_spec, capsys):
    path = write_spec(tmp_path, _sweep(tiny_spec_dict))
    assert main(["run", str(path), "-q"]) == 0
    capsys.readouterr()
    assert main(["run", str(path), "-q", "--set", "train.max_steps=3"]) == 2
    err = capsys.readouterr().err
    assert "study 'tiny' was made from a different spec" in err
    assert "train.max_steps: 6 -> 3" in err
    assert "--fresh" in err and "--study" in err
    # A field that cannot change a result does not count, and the study resumes (nothing left to run).
    assert main(["run", str(path), "-q", "--set", "tracking.sample_tokens=5"]) == 0
    # Either way out works.
    assert main(["run", str(path), "-q", "--set", "train.max_steps=3", "--study", "tiny_short"]) == 0
    assert main(["run", str(path), "-q", "--set", "train.max_steps=3", "--fresh"]) == 0


def _tamper_spec_yaml(run_id: str, text: str) -> None:
    from harness.tracking import client_for
    from harness.tracking.tracker import local_artifact_dir

    client = client_for()
    folder = local_artifact_dir(client.get_run(run_id).info.artifact_uri)
    (folder / "spec.yaml").write_text(text, encoding="utf-8")


def test_a_runs_stored_spec_is_read_with_the_hardened_loader(tiny_spec_dict, capsys):
    """A duplicate key in a run's spec.yaml is refused (plain yaml.safe_load keeps the last value silently)."""
    from harness.job import resume

    out = run(spec_from_dict(tiny_spec_dict))
    _tamper_spec_yaml(out.run_id, "name: tiny\nname: other\n")
    with pytest.raises(SpecError, match="duplicate key"):
        resume(out.run_id, allow_finished=True)
    assert main(["generate", out.run_id, "--max-tokens", "3"]) == 2
    assert "duplicate key" in capsys.readouterr().err
