"""Repeated seeds (sweep.repeats / --repeats): every configuration under the same seeds, judged by its mean with a
95 % interval, the paired rule that stops a clearly worse configuration, and the exactly-once, kill -9 and
multi-machine guarantees, which hold per seed run."""

from __future__ import annotations

import math
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import optuna
import pytest
from conftest import child_env, make_spec, write_spec

from harness import results
from harness.cli import main
from harness.spec import spec_from_dict
from harness.sweep import run_sweep
from harness.sweep.repeats import Repeats
from harness.sweep.study import queue_name

LRS = [1e-2, 1e-3, 1e-6]


def _client(tmp_path: Path):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlruns/mlflow.db")


def _runs(client, experiment: str) -> list:
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], max_results=1000, order_by=["attributes.start_time ASC"]) if exp else []


def _seed_runs(client, experiment: str) -> list:
    return [r for r in _runs(client, experiment) if r.data.tags.get("harness.config_id")]


def _by_config(runs: list) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for r in sorted(runs, key=lambda r: int(r.data.tags["harness.repeat"])):
        out.setdefault(r.data.tags["harness.config_id"], []).append(int(r.data.tags["harness.seed"]))
    return out


def test_a_repeated_grid_shares_one_seed_list_and_stops_the_clearly_worse(tmp_path, tiny_corpus):
    raw = make_spec(tiny_corpus, name="rg", seed=0, steps=12, eval_every=4,
                    sweep={"params": {"train.optimizer.lr": LRS}, "repeats": 3, "pruner": "paired"})
    out = run_sweep(spec_from_dict(raw), workers=1)
    client = _client(tmp_path)

    # One configuration per grid point; the best ran every seed, the two clearly worse were stopped after two.
    cfg = out.configs.set_index("config_id")
    assert list(cfg["config_state"]) == ["COMPLETE", "PRUNED", "PRUNED"], out.configs
    assert list(cfg["n"]) == [3, 2, 2]
    assert all("paired t-test" in cfg.loc[c, "note"] for c in ("c001", "c002"))
    assert out.best["config_id"] == "c000" and out.best["n"] == 3 and out.counts["complete"] == 1 and out.counts["pruned"] == 2

    # Every configuration ran under the same seeds (0, 1, 2 from seed 0), in the same order: paired comparisons.
    runs = _seed_runs(client, "rg")
    assert _by_config(runs) == {"c000": [0, 1, 2], "c001": [0, 1], "c002": [0, 1]}
    for r in runs:
        assert r.data.params["seed"] == r.data.tags["harness.seed"], "a seed run trains under its own seed"
        assert r.data.tags["harness.config"] == "lr=" + {"c000": "0.01", "c001": "0.001", "c002": "1e-06"}[r.data.tags["harness.config_id"]]
        assert r.info.run_name == f"rg-{r.data.tags['harness.config_id']}-s{r.data.tags['harness.seed']}"
    # Seed-major order: each configuration's first seed, then each one's second, so the rule could compare after two.
    assert [(r.data.tags["harness.config_id"], r.data.tags["harness.seed"]) for r in runs][:6] == [
        ("c000", "0"), ("c001", "0"), ("c002", "0"), ("c000", "1"), ("c001", "1"), ("c002", "1")]

    # The study: one trial per configuration, its value the mean of its seeds' objectives.
    study = optuna.load_study(study_name="rg-3seeds", storage=out.storage)
    best_values = [float(r.data.metrics["val/loss"]) for r in runs if r.data.tags["harness.config_id"] == "c000"]
    assert study.best_trial.value == pytest.approx(sum(best_values) / 3)
    assert len(optuna.load_study(study_name=queue_name("rg-3seeds"), storage=out.storage).get_trials()) == 7

    # The parent run holds the aggregates: mean, interval and n per configuration, and configs.csv.
    parent = client.get_run(out.parent_run_id)
    assert parent.data.tags["harness.best_config"] == "c000"
    assert parent.data.metrics["c000/n"] == 3 and parent.data.metrics["c001/n"] == 2
    assert parent.data.metrics["c000/objective/mean"] == pytest.approx(study.best_trial.value)
    assert parent.data.metrics["c000/objective/ci_low"] < parent.data.metrics["c000/objective/mean"] < parent.data.metrics["c000/objective/ci_high"]
    assert {a.path for a in client.list_artifacts(out.parent_run_id)} >= {"configs.csv", "trials.csv", "best_params.json", "plots"}

    # pandas reads the same table back from MLflow alone.
    back = results.configs("rg").set_index("config_id")
    assert list(back["n"]) == [3, 2, 2] and list(back["verdict"]) == ["best", "worse", "worse"]
    assert back.loc["c000", "objective_mean"] == pytest.approx(study.best_trial.value)
    per_run = results.runs("rg")
    assert per_run["seed"].dtype.name == "Int64" and set(per_run["config_id"]) == {"c000", "c001", "c002"}

    # Running it again runs nothing twice.
    assert main(["run", str(write_spec(tmp_path, raw, name="rg.yaml")), "-q"]) == 0
    assert len(_seed_runs(client, "rg")) == 7


def _scheduler(tmp_path: Path, corpus: Path, *, sampler: str = "grid", pruner: str = "paired"):
    params = {"train.optimizer.lr": [1e-3, 2e-3]} if sampler == "grid" else {"train.optimizer.lr": {"float": [1e-4, 1e-2], "log": True}}
    raw = make_spec(corpus, name="sched", seed=7, sweep={"sampler": sampler, "params": params, "repeats": 3, "pruner": pruner,
                                                        "n_trials": 2})
    base = spec_from_dict(raw)
    storage = optuna.storages.InMemoryStorage()
    from harness.sweep.trial import make_pruner, make_sampler

    configs = optuna.create_study(study_name="sched", storage=storage, sampler=make_sampler(base), pruner=make_pruner(base))
    queue = optuna.create_study(study_name=queue_name("sched"), storage=storage)
    return Repeats(storage, configs, queue, base, total=2), configs, queue


def _take_all(rep: Repeats, values: dict[tuple[int, int], float] | None = None) -> list[tuple[int, int, int]]:
    """Take every seed run (telling each its value at once when ``values`` has it), as one worker would."""
    taken = []
    while (t := rep.next_trial(None)) is not None:
        c, k, s = (t.user_attrs[a] for a in ("harness.config", "harness.repeat", "harness.seed"))
        taken.append((c, k, s))
        if values is not None:
            rep.queue.tell(t, values[(c, k)])
    return taken


def test_a_grid_is_handed_out_seed_by_seed_and_a_sampler_config_by_config(tmp_path, tiny_corpus):
    rep, _, _ = _scheduler(tmp_path, tiny_corpus)
    assert _take_all(rep) == [(0, 0, 7), (1, 0, 7), (0, 1, 8), (1, 1, 8), (0, 2, 9), (1, 2, 9)]
    rep, configs, _ = _scheduler(tmp_path, tiny_corpus, sampler="random", pruner="none")
    assert _take_all(rep) == [(0, 0, 7), (0, 1, 8), (0, 2, 9), (1, 0, 7), (1, 1, 8), (1, 2, 9)]
    (a, b) = configs.get_trials()
    assert a.params != b.params, "the sampler picked each configuration once; its seeds share it"


def test_the_best_configuration_is_the_best_mean_not_the_best_seed(tmp_path, tiny_corpus):
    rep, configs, _ = _scheduler(tmp_path, tiny_corpus, pruner="none")
    # configuration 0 has the best single seed (1.0) but the worse mean (2.33); configuration 1 the best mean (2.0)
    _take_all(rep, {(0, 0): 1.0, (0, 1): 3.0, (0, 2): 3.0, (1, 0): 2.0, (1, 1): 2.1, (1, 2): 1.9})
    rep.settle()
    assert [t.state.name for t in configs.get_trials()] == ["COMPLETE", "COMPLETE"]
    assert configs.best_trial.number == 1 and configs.best_trial.value == pytest.approx(2.0)
    assert configs.get_trials()[0].intermediate_values == {0: 1.0, 1: 3.0, 2: 3.0}


def test_a_stopped_configuration_gets_no_more_seeds_and_its_running_seeds_hear_why(tmp_path, tiny_corpus):
    rep, configs, queue = _scheduler(tmp_path, tiny_corpus)
    first = [rep.next_trial(None) for _ in range(4)]  # (c0, s7), (c1, s7), (c0, s8), (c1, s8)
    for t, v in zip(first, [2.70, 2.95, 2.72, 2.97]):
        queue.tell(t, v)
    assert rep.stopped(1) is None
    nxt = rep.next_trial(None)  # settling first: configuration 1 is clearly worse on two shared seeds
    assert [t.state.name for t in configs.get_trials()] == ["RUNNING", "PRUNED"]
    assert "paired t-test" in rep.stopped(1) and rep.stopped(0) is None
    assert (nxt.user_attrs["harness.config"], nxt.user_attrs["harness.seed"]) == (0, 9)
    assert rep.next_trial(None) is None, "no seed is handed out for the stopped configuration"


def test_a_repeated_run_is_a_group_and_two_groups_compare_paired(tmp_path, tiny_corpus, capsys):
    specs = {}
    for name, lr in (("ga", 1e-2), ("gb", 1e-4)):
        specs[name] = write_spec(tmp_path, make_spec(tiny_corpus, name=name, seed=3, steps=8, eval_every=4, train={"optimizer": {"lr": lr}}),
                                 name=f"{name}.yaml")
        assert main(["run", str(specs[name]), "--repeats", "3", "-q"]) == 0
    client = _client(tmp_path)
    for name in specs:
        runs = _seed_runs(client, name)
        assert sorted(r.info.run_name for r in runs) == [f"{name}-s3", f"{name}-s4", f"{name}-s5"]
        parent = client.get_run(runs[0].data.tags["mlflow.parentRunId"])
        assert parent.data.tags["harness.role"] == "sweep" and parent.info.status == "FINISHED"
    capsys.readouterr()
    assert main(["compare", "ga", "gb"]) == 0
    text = capsys.readouterr().out
    assert "paired on the seeds both ran (3, 4, 5)" in text
    cmp = results.compare_groups("ga", "gb")
    row = cmp.table.loc["best/val/loss"]
    assert row["test"] == "paired t, 3 seeds" and row["difference"] < 0 and row["verdict"] == "a better", cmp.table
    assert row["ci_low"] < row["difference"] < row["ci_high"] < 0
    capsys.readouterr()
    assert main(["results", "ga"]) == 0
    assert "± " in capsys.readouterr().out


def test_a_seed_list_runs_on_forked_workers_and_its_resolved_spec_loads_again(tmp_path, tiny_corpus):
    """sweep.seeds reaches each worker and each seed run's spec.yaml as the resolved spec; both load it again (the
    resolved spec once carried repeats: 1 beside the seeds, and every worker refused it: give repeats or seeds)."""
    from harness.spec import read_yaml

    raw = make_spec(tiny_corpus, name="sl", seed=0, steps=4, eval_every=2,
                    sweep={"params": {"train.optimizer.lr": [1e-3, 2e-3]}, "seeds": [11, 4]})
    assert main(["run", str(write_spec(tmp_path, raw, name="sl.yaml")), "--workers", "2", "-q"]) == 0
    client = _client(tmp_path)
    runs = _seed_runs(client, "sl")
    assert _by_config(runs) == {"c000": [11, 4], "c001": [11, 4]}
    for r in runs:
        spec_yaml = client.download_artifacts(r.info.run_id, "spec.yaml", str(tmp_path))
        again = spec_from_dict(read_yaml(Path(spec_yaml)))
        assert again.seed == int(r.data.tags["harness.seed"])
        assert again.sweep is None or again.sweep.seeds == [11, 4]


def test_a_repeated_grid_on_three_machines_runs_every_seed_run_once(pg_server, mlflow_server, tmp_path):
    from mlflow import MlflowClient

    name = f"rep-{uuid.uuid4().hex[:6]}"
    raw = make_spec("shakespeare/sonnets", name=name, seed=5, steps=6, eval_every=3, experiment=name, data={"max_chars": 3000},
                    train={"threads": 1}, sweep={"params": {"train.optimizer.lr": [1e-3, 3e-3]}, "repeats": 3})
    procs, logs = [], []
    for i in range(3):
        work = tmp_path / f"m{i}"
        work.mkdir()
        env = {k: v for k, v in child_env().items() if not k.startswith("MLFLOW_")}
        env.update(HOME=str(work), TMPDIR=str(work), MLFLOW_TRACKING_URI=mlflow_server.uri)
        logs.append(work / "log")
        with open(logs[-1], "w") as log:
            procs.append(subprocess.Popen([sys.executable, "-m", "harness", "run", str(write_spec(work, raw)), "-q", "--workers", "1",
                                           "--storage", pg_server.url("harness")], cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT))
    try:
        codes = [p.wait(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert codes == [0, 0, 0], "\n\n".join(log.read_text() for log in logs)

    client = MlflowClient(tracking_uri=mlflow_server.uri)
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], max_results=100)
    seeds = Counter((r.data.tags["harness.config_id"], r.data.tags["harness.seed"]) for r in runs if r.data.tags.get("harness.config_id"))
    assert seeds == Counter({(c, s): 1 for c in ("c000", "c001") for s in ("5", "6", "7")}), seeds
    parents = [r for r in runs if r.data.tags.get("harness.role") == "sweep"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert math.isfinite(parents[0].data.metrics["c001/objective/mean"])
    rdb = optuna.storages.RDBStorage(pg_server.url("harness"))
    try:
        configs = optuna.load_study(study_name=f"{name}-3seeds", storage=rdb).get_trials()
        queue = optuna.load_study(study_name=queue_name(f"{name}-3seeds"), storage=rdb).get_trials()
    finally:
        rdb.engine.dispose()
    assert [t.state.name for t in configs] == ["COMPLETE", "COMPLETE"]
    assert len(queue) == 6 and {t.state.name for t in queue} == {"COMPLETE"}
    assert len({t.user_attrs["pid"] for t in queue}) >= 2, "the machines shared the seed runs"
