"""Tracker parity: every tracker implementation, on every kind of store it supports, leaves the same run behind.

The same work runs once per store (a local SQLite store, and an ``mlflow server`` over HTTP with proxied artifacts,
the remote kind: checkpoints staged on this machine and uploaded): a language model, a classifier and an instruction
tuned model (both finetuned from the language model, so the source is read through the store), a sweep (its parent
run and its one trial), a run interrupted and then resumed (on the server with its staging folder removed, as on
another machine: the checkpoint comes back from the server), and a run interrupted during set-up (deleted). The runs
must agree on params, tag keys, metric histories and artifact lists.

Runs are deterministic (fixed seeds, one torch thread), so metric values must agree exactly, except the two that
measure time. Values that name the store (run ids, folders) are compared with those replaced by placeholders.
"""

from __future__ import annotations

import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import TINY_TEXT, _clear_harness_env, make_spec
from mlflow import MlflowClient
from mlflow.entities import ViewType

from harness.job import resume, run
from harness.spec import spec_from_dict
from harness.sweep import run_sweep
from harness.tracking.protocol import IMPLEMENTATIONS
from harness.tracking.tracker import MlflowTracker
from harness.train.events import StepEnd, StopReason, StopTraining

TIMED = {"tokens_per_sec", "summary/wall_time_s"}  # wall-clock measurements: their steps must agree, not their values
# The copy of the previous last.pt that the trainer keeps beside it, in case last.pt turns out unreadable on resume.
# A local store's artifact folder is where the trainer writes, so it holds it; a remote store receives the checkpoints
# (periodic, best, last), and the copy stays in the staging folder on this machine.
LOCAL_ONLY = {"checkpoints/prev.pt"}
CASES = ("lm", "classify", "instruct", "sweep", "trial", "resumed")


@dataclass
class Record:
    status: str
    params: dict[str, str]
    tag_keys: set[str]
    metrics: dict[str, list[tuple[int, float]]]
    artifacts: set[str]


def _artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    out: set[str] = set()
    for a in client.list_artifacts(run_id, path):
        out |= _artifacts(client, run_id, a.path) if a.is_dir else {a.path}
    return out


def _record(client: MlflowClient, run_id: str, folder: Path) -> Record:
    r = client.get_run(run_id)

    def plain(value: str) -> str:  # what names this store: the test's folder, run ids
        return re.sub(r"\b[0-9a-f]{32}\b", "<run id>", value.replace(str(folder), "<folder>"))

    # system/*: samples of the machine's load while the run trained, as many as its wall time holds (none on a short run)
    metrics = {k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k)) for k in r.data.metrics if not k.startswith("system/")}
    return Record(r.info.status, {k: plain(v) for k, v in r.data.params.items()}, set(r.data.tags), metrics, _artifacts(client, run_id))


class _StopAt:
    """Interrupts the run after ``step``, as Ctrl-C does (StopReason.INTERRUPTED: KILLED, resumable)."""

    def __init__(self, step: int):
        self.step = step

    def __call__(self, event: Any) -> None:
        if isinstance(event, StepEnd) and event.step == self.step:
            raise StopTraining(StopReason.INTERRUPTED, "stopped by the test")


class _CtrlCInSetUp:
    """A progress display that the user interrupts while the run is being set up (before its spec.yaml is stored)."""

    def bind(self, run_id: str) -> None:
        raise KeyboardInterrupt


def _scenario(uri: str, folder: Path, corpus: Path, tag: str) -> dict[str, Any]:
    """Every case on one store; returns a Record per case, and what the interrupted set-up left."""
    folder.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=uri)
    lm = make_spec(corpus, name=f"lm_{tag}", seed=3, steps=6, eval_every=3, checkpoint_every=3, experiment=f"lm_{tag}",
                   data={"seq_len": 96}, model={"dropout": 0.1}, tracking={"sample_tokens": 8})
    source = run(spec_from_dict(lm))
    assert source.status == "FINISHED", source.message
    finetune = {"seed": 4, "data": {"val_fraction": 0.2},
                "train": {"max_steps": 4, "batch_size": 8, "optimizer": {"name": "adamw", "lr": 3e-3}, "eval": {"every_steps": 2, "batches": 2},
                          "device": "cpu"}}
    classify = {"name": f"cls_{tag}", "init": {"from": source.run_id}, "task": {"kind": "classify", "dataset": "names_by_sex"},
                **finetune, "data": {"seq_len": 12, "val_fraction": 0.2}, "tracking": {"experiment": f"cls_{tag}", "sample_tokens": 0}}
    instruct = {"name": f"ins_{tag}", "init": {"from": source.run_id}, "task": {"kind": "instruct", "dataset": "play_instruct"},
                **finetune, "data": {"seq_len": 96, "val_fraction": 0.05}, "tracking": {"experiment": f"ins_{tag}", "sample_tokens": 8}}
    out = {"lm": source.run_id, "classify": run(spec_from_dict(classify)).run_id, "instruct": run(spec_from_dict(instruct)).run_id}

    sweep = make_spec(corpus, name=f"sw_{tag}", seed=5, steps=4, eval_every=2, experiment=f"sw_{tag}",
                      sweep={"sampler": "grid", "params": {"train.optimizer.lr": [2e-3]}})
    swept = run_sweep(spec_from_dict(sweep))
    assert swept.counts["complete"] == 1, swept.table
    out["sweep"], out["trial"] = swept.parent_run_id, swept.table.iloc[0]["run_id"]

    stopped = make_spec(corpus, name=f"re_{tag}", seed=6, steps=8, eval_every=2, checkpoint_every=2, experiment=f"re_{tag}")
    first = run(spec_from_dict(stopped), callbacks=[_StopAt(4)])
    assert (first.status, first.steps) == ("KILLED", 5)
    staging = folder / "staging" / first.run_id
    if MlflowTracker(client, first.run_id).local_artifacts is None:
        assert (staging / "checkpoints" / "last.pt").is_file()
        shutil.rmtree(staging)  # as on another machine: resume fetches last.pt from the server
    resumed = resume(first.run_id)
    assert resumed.status == "FINISHED" and resumed.resumed_from, resumed.message
    out["resumed"] = first.run_id

    records = {case: _record(client, run_id, folder) for case, run_id in out.items()}

    setup = make_spec(corpus, name=f"su_{tag}", experiment=f"su_{tag}")
    with pytest.raises(KeyboardInterrupt):
        run(spec_from_dict(setup), progress=_CtrlCInSetUp())
    exp = client.get_experiment_by_name(f"su_{tag}")
    left = [(r.info.lifecycle_stage, r.info.status) for r in client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL)]
    return {"records": records, "setup_interrupted": left}


@pytest.fixture(scope="module")
def stores(mlflow_server: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """The scenario on each store kind, with the same names and the same corpus file."""
    tag = uuid.uuid4().hex[:8]  # the server is shared by the session: names of its own
    shared = tmp_path_factory.mktemp("parity")
    corpus = shared / "tiny.txt"
    corpus.write_text(TINY_TEXT, encoding="utf-8")
    results = {}
    for kind in ("sqlite", "http"):
        folder = shared / kind
        uri = f"sqlite:///{folder}/mlruns/mlflow.db" if kind == "sqlite" else mlflow_server.uri
        with pytest.MonkeyPatch.context() as mp:
            _clear_harness_env(mp)
            folder.mkdir()
            mp.chdir(folder)  # studies/ and the SQLite store go here
            mp.setenv("MLFLOW_TRACKING_URI", uri)
            mp.setenv("HARNESS_STAGING", str(folder / "staging"))
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                results[kind] = _scenario(uri, folder, corpus, tag)
            finally:
                torch.set_num_threads(threads)
    return results


def test_every_tracker_implementation_is_covered():
    # This test drives MlflowTracker, the one implementation harness.job creates; another one must join the scenario.
    assert IMPLEMENTATIONS == (MlflowTracker,)


@pytest.mark.parametrize("case", CASES)
def test_runs_agree_on_params_and_tags(stores, case):
    local, remote = stores["sqlite"]["records"][case], stores["http"]["records"][case]
    assert local.status == remote.status
    assert local.params == remote.params
    assert local.tag_keys == remote.tag_keys


@pytest.mark.parametrize("case", CASES)
def test_runs_agree_on_metric_histories(stores, case):
    local, remote = stores["sqlite"]["records"][case], stores["http"]["records"][case]
    assert sorted(local.metrics) == sorted(remote.metrics)
    for key, points in local.metrics.items():
        other = remote.metrics[key]
        assert [s for s, _ in points] == [s for s, _ in other], f"{key}: steps differ"
        if key not in TIMED:
            assert [v for _, v in points] == [v for _, v in other], f"{key}: values differ"


@pytest.mark.parametrize("case", CASES)
def test_runs_agree_on_artifacts(stores, case):
    local, remote = stores["sqlite"]["records"][case].artifacts, stores["http"]["records"][case].artifacts
    assert local - LOCAL_ONLY == remote


def test_each_case_recorded_what_makes_it_that_case(stores):
    """The comparisons above are not vacuous: each store's runs hold what their kind must."""
    for kind, got in stores.items():
        rec = got["records"]
        assert all(r.status == "FINISHED" for r in rec.values()), (kind, {c: r.status for c, r in rec.items()})
        assert {"sample.txt", "spec.yaml", "tokenizer.json", "plots/loss_curve.png", "checkpoints/last.pt"} <= rec["lm"].artifacts, kind
        assert {"confusion_matrix.png", "confusion_matrix.csv", "labels.json"} <= rec["classify"].artifacts, kind
        assert "val/accuracy" in rec["classify"].metrics and "harness.init_from" in rec["classify"].tag_keys, kind
        assert "derived.supervised_fraction" in rec["instruct"].params and "harness.init_from" in rec["instruct"].tag_keys, kind
        assert {"trials.csv", "best_params.json"} <= rec["sweep"].artifacts and "harness.trial" in rec["trial"].tag_keys, kind
        assert "harness.resumes" in rec["resumed"].tag_keys, kind
        assert [s for s, _ in rec["resumed"].metrics["train/loss"]] == list(range(8)), kind  # each step once
        assert got["setup_interrupted"] == [("deleted", "KILLED")], kind  # not resumable, so not left behind
