"""Repeated seeds (sweep.repeats / --repeats): every configuration under the same seeds, judged by its mean with a
95 % interval and a family-wise verdict, the paired rule that stops a clearly worse configuration, the scheduler
that decides what runs next, and the exactly-once, kill -9 and multi-machine guarantees, which hold per seed run."""

from __future__ import annotations

import json
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
from harness.sweep.attempts import CONFIG, CRASHES, MAX_CRASHES, SEED, Attempts, Retry, current, gave_up, reap
from harness.sweep.pruning import make_pruner
from harness.sweep.sampling import make_sampler
from harness.sweep.schedule import Scheduler, configurations
from harness.train.events import StopReason

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
                    sweep={"params": {"train.optimizer.lr": LRS}, "repeats": 4, "pruner": "paired"})
    out = run_sweep(spec_from_dict(raw), workers=1)
    client = _client(tmp_path)

    # One configuration per grid point; the best ran every seed, the clearly worse were stopped before their last.
    cfg = out.configs.set_index("config_id")
    assert cfg.loc["c000", "config_state"] == "COMPLETE" and cfg.loc["c000", "n"] == 4, out.configs
    stopped = [c for c in ("c001", "c002") if cfg.loc[c, "config_state"] == "PRUNED"]
    assert "c002" in stopped, out.configs  # lr 1e-6 barely moves: clearly worse than lr 1e-2 on every seed
    for c in stopped:
        assert cfg.loc[c, "n"] < 4 and cfg.loc[c, "verdict"] == "stopped"
        assert "paired rule" in cfg.loc[c, "note"] and "spread over every look" in cfg.loc[c, "note"]
    assert out.best["config_id"] == "c000" and out.best["n"] == 4 and out.counts["complete"] == 3 - len(stopped)
    assert out.procedure.startswith("verdicts: Holm over all 3 pairs of the 3 configurations")

    # Every configuration ran under the same seeds (0, 1, ... from seed 0), in the same order: paired comparisons.
    runs = _seed_runs(client, "rg")
    by = _by_config(runs)
    assert by["c000"] == [0, 1, 2, 3] and all(by[c] == [0, 1, 2, 3][: len(by[c])] for c in by)
    for r in runs:
        assert r.data.params["seed"] == r.data.tags["harness.seed"], "a seed run trains under its own seed"
        assert r.data.tags["harness.config"] == "lr=" + {"c000": "0.01", "c001": "0.001", "c002": "1e-06"}[r.data.tags["harness.config_id"]]
        assert r.info.run_name == f"rg-{r.data.tags['harness.config_id']}-s{r.data.tags['harness.seed']}"
        assert r.data.tags["harness.study_id"] == out_study_id(out)
    # Seed-major order: each configuration's first seed, then each one's second, so the rule could compare after two.
    assert [(r.data.tags["harness.config_id"], r.data.tags["harness.seed"]) for r in runs][:3] == [("c000", "0"), ("c001", "0"), ("c002", "0")]
    assert {r.data.tags["harness.seed"] for r in runs[3:6]} == {"1"}

    # One study, one trial per seed run; the stop and its evidence are in the study and on the parent run.
    study = optuna.load_study(study_name="rg", storage=out.storage)
    assert len(study.get_trials()) == len(runs)
    parent = client.get_run(out.parent_run_id)
    assert set(json.loads(parent.data.tags["harness.stopped"])) == set(stopped)
    assert parent.data.tags["harness.best_config"] == "c000"
    assert parent.data.metrics["c000/n"] == 4
    best_values = [float(r.data.metrics["sweep/objective"]) for r in runs if r.data.tags["harness.config_id"] == "c000"]
    assert parent.data.metrics["c000/objective/mean"] == pytest.approx(sum(best_values) / 4)
    assert parent.data.metrics["c000/objective/ci_low"] < parent.data.metrics["c000/objective/mean"] < parent.data.metrics["c000/objective/ci_high"]
    assert {a.path for a in client.list_artifacts(out.parent_run_id)} >= {"configs.csv", "trials.csv", "best_params.json", "plots"}

    # pandas reads the same table back from MLflow alone, with the same verdicts.
    back = results.configs("rg").set_index("config_id")
    assert list(back["n"]) == list(cfg["n"]) and list(back["verdict"]) == list(cfg["verdict"])
    assert back.loc["c000", "objective_mean"] == pytest.approx(sum(best_values) / 4)
    per_run = results.runs("rg")
    assert per_run["seed"].dtype.name == "Int64" and set(per_run["config_id"]) == {"c000", "c001", "c002"}

    # Running it again runs nothing twice.
    assert main(["run", str(write_spec(tmp_path, raw, name="rg.yaml")), "-q"]) == 0
    assert len(_seed_runs(client, "rg")) == len(runs)


def out_study_id(out) -> str:
    return optuna.load_study(study_name=out.study_name, storage=out.storage).user_attrs["harness.study_id"]


# ----------------------------------------------------------------------------------------------------- the scheduler


def _scheduler(corpus: Path, *, sampler: str = "grid", pruner: str = "paired", storage=None, repeats: int = 3, name: str = "sched",
               seed: int = 7):
    params = {"train.optimizer.lr": [1e-3, 2e-3]} if sampler == "grid" else {"train.optimizer.lr": {"float": [1e-4, 1e-2], "log": True}}
    raw = make_spec(corpus, name=name, seed=seed, sweep={"sampler": sampler, "params": params, "repeats": repeats, "pruner": pruner,
                                                        "n_trials": 2})
    base = spec_from_dict(raw)
    storage = storage or optuna.storages.InMemoryStorage()
    study = optuna.create_study(study_name=name, storage=storage, sampler=make_sampler(base), pruner=make_pruner(base, configurations=2),
                                load_if_exists=True)
    return Scheduler(Attempts(study, storage), base, total=2), study


def _take_all(sched: Scheduler, values: dict[tuple[str, int], float] | None = None) -> list[tuple[str, int]]:
    """Take every seed run (telling each its value at once when ``values`` has it), as one worker would."""
    taken = []
    while (t := sched.next()) is not None:
        key = (t.user_attrs[CONFIG], t.user_attrs[SEED])
        taken.append(key)
        if values is not None:
            sched.study.tell(t, values[key])
    return taken


def test_a_grid_is_handed_out_seed_by_seed_and_a_sampler_config_by_config(tiny_corpus):
    sched, _ = _scheduler(tiny_corpus)
    assert _take_all(sched) == [("c000", 7), ("c001", 7), ("c000", 8), ("c001", 8), ("c000", 9), ("c001", 9)]
    sched, study = _scheduler(tiny_corpus, sampler="random", pruner="none")
    assert _take_all(sched) == [("c000", 7), ("c000", 8), ("c000", 9), ("c001", 7), ("c001", 8), ("c001", 9)]
    a, b = configurations(study)
    assert a.params != b.params, "the sampler picked each configuration once; its seeds share it"
    assert {t.params["train.optimizer.lr"] for t in study.get_trials() if t.user_attrs[CONFIG] == "c000"} == {a.params["train.optimizer.lr"]}


def test_the_best_configuration_is_the_best_mean_not_the_best_seed(tiny_corpus):
    from harness.sweep.report import configs_table

    sched, study = _scheduler(tiny_corpus, pruner="none")
    # c000 has the best single seed (1.0) but the worse mean (2.33); c001 the best mean (2.0)
    values = {("c000", 7): 1.0, ("c000", 8): 3.0, ("c000", 9): 3.0, ("c001", 7): 2.0, ("c001", 8): 2.1, ("c001", 9): 1.9}
    _take_all(sched, values)
    import pandas as pd

    table = pd.DataFrame([{"config_id": t.user_attrs[CONFIG], "seed": t.user_attrs[SEED], "state": t.state.name, "objective": t.value}
                          for t in study.get_trials()])
    cfg = configs_table(sched.base, table, configurations(study))
    assert cfg.attrs["best"] == "c001" and list(cfg["config_state"]) == ["COMPLETE", "COMPLETE"]


def test_a_stopped_configuration_gets_no_more_seeds_and_its_running_seeds_hear_why(tiny_corpus):
    sched, study = _scheduler(tiny_corpus)
    first = [sched.next() for _ in range(4)]  # (c000, 7), (c001, 7), (c000, 8), (c001, 8)
    for t, v in zip(first, [2.70, 2.95, 2.72, 2.98]):
        study.tell(t, v)
    assert sched.stopped("c001") is None
    nxt = sched.next()  # settling first: c001 is clearly worse on two shared seeds, at the rule's corrected level
    assert "paired rule" in sched.stopped("c001") and sched.stopped("c000") is None
    assert (nxt.user_attrs[CONFIG], nxt.user_attrs[SEED]) == ("c000", 9)
    assert study.pruner.prune(study, nxt) is False
    assert study.pruner.why(study, first[1]) == sched.stopped("c001"), "a running seed of c001 is pruned at its next evaluation"
    assert sched.next() is None, "no seed is handed out for the stopped configuration"


def test_zero_spread_on_two_seeds_stops_nothing(tiny_corpus):
    """Identical per-seed differences (quantised metrics) are not certainty: no stop from two seeds of zero spread."""
    sched, study = _scheduler(tiny_corpus)
    for t, v in zip([sched.next() for _ in range(4)], [0.75, 0.5, 0.5, 0.25]):
        study.tell(t, v)
    sched.next()
    assert sched.stopped("c000") is None and sched.stopped("c001") is None


def test_two_same_seeded_workers_never_propose_the_same_configuration(tmp_path, tiny_corpus):
    """Defect: every worker built its sampler with the sweep's seed, so two workers (or machines) on one study drew the
    same learning rate for their first trials. Each trial is now drawn from the sweep's seed and its own number."""
    for sampler in ("tpe", "random"):
        url = f"sqlite:///{tmp_path}/{sampler}.db"
        a, _ = _scheduler(tiny_corpus, sampler=sampler, pruner="none", storage=optuna.storages.RDBStorage(url), repeats=1, name=sampler)
        b, _ = _scheduler(tiny_corpus, sampler=sampler, pruner="none", storage=optuna.storages.RDBStorage(url), repeats=1, name=sampler)
        ta, tb = a.next(), b.next()  # each worker's own sampler object, as in two processes
        assert ta.params["train.optimizer.lr"] != tb.params["train.optimizer.lr"], sampler
        # and a seeded sweep is reproducible: the same trial number draws the same value in a new study
        c, _ = _scheduler(tiny_corpus, sampler=sampler, pruner="none", storage=optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/{sampler}2.db"),
                          repeats=1, name=sampler)
        assert c.next().params == ta.params


def test_an_attempt_ended_without_its_retry_is_retried_once_and_a_duplicate_retry_never_runs(tiny_corpus):
    """Defect: between a trial's FAIL and its queued retry another worker saw the seed run as free and started it
    afresh, and both finished. Now an ended attempt's seed run stays taken; the scheduler queues the missing retry (a
    worker died between the two), and of two retries of one seed run only the newer runs."""
    sched, study = _scheduler(tiny_corpus, repeats=2)
    t = sched.next()
    t.set_user_attr("mlflow_run_id", "run-a")
    study.tell(t, state=optuna.trial.TrialState.FAIL)  # ended, crashed, and its worker died before queueing the retry
    retry = sched.next()
    assert (retry.user_attrs[CONFIG], retry.user_attrs[SEED]) == ("c000", 7) and retry.user_attrs["mlflow_run_id"] == "run-a"
    assert sched.attempts.frozen(retry.number).system_attrs["failed_trial"] == t.number and retry.user_attrs[CRASHES] == 1
    # two retries of one seed run (as a second reaper would queue): the older is put away, the newer runs
    attempts = sched.attempts
    assert attempts.fail_and_retry(retry.number, stop_reason=StopReason.CRASHED)
    Retry()(study, attempts.frozen(retry.number))  # a second reaper's retry of the same attempt
    waiting = [x for x in study.get_trials() if x.state.name == "WAITING"]
    assert len(waiting) == 2
    taken = sched.next()
    assert taken.number == max(w.number for w in waiting)
    older = attempts.frozen(min(w.number for w in waiting))
    assert older.state.name == "FAIL" and "second retry" in older.user_attrs["fail_reason"]
    keys = Counter((x.user_attrs[CONFIG], x.user_attrs[SEED]) for x in current(study.get_trials()).values())
    assert keys[("c000", 7)] == 1


def test_the_crash_budget_counts_crashes_not_interrupts(tiny_corpus):
    """Defect: five Ctrl-C/resume cycles and one crash gave a seed run up. Interrupts and fence hand-backs are not
    crashes; MAX_CRASHES crashes are, and then Optuna's own stale check gets no retry either."""
    sched, study = _scheduler(tiny_corpus, repeats=2)
    attempts = sched.attempts
    t = sched.next()
    for _ in range(MAX_CRASHES + 2):
        assert attempts.fail_and_retry(t.number, stop_reason=StopReason.INTERRUPTED)
        t = sched.next()
    assert t.user_attrs.get(CRASHES, 0) == 0, "interrupts do not count"
    for k in range(MAX_CRASHES):
        assert attempts.fail_and_retry(t.number, stop_reason=StopReason.CRASHED)
        t = sched.next()
        assert t.user_attrs[CRASHES] == k + 1 and (t.user_attrs[CONFIG], t.user_attrs[SEED]) == ("c000", 7)
    assert attempts.fail_and_retry(t.number, stop_reason=StopReason.CRASHED)
    last = attempts.frozen(t.number)
    assert gave_up(last), "past the budget: given up"
    assert not [x for x in study.get_trials() if x.state.name == "WAITING"], "no retry past the budget"
    cfg = configurations(study)[0]
    assert cfg.failed() is not None and cfg.state(sched.seeds) == "FAIL"
    # the seed run that gave up takes no more seeds; the next configuration goes on
    nxt = sched.next()
    assert nxt.user_attrs[CONFIG] == "c001"


def test_a_stale_trial_past_the_budget_is_given_up_not_restarted(tmp_path, tiny_corpus, monkeypatch):
    """Defect: a retry whose stop_reason was inherited while Optuna's stale check gave up was read as 'retry pending'
    and started from step 0 without limit. Optuna's check now goes through the same budget."""
    monkeypatch.setenv("HARNESS_HEARTBEAT_S", "1")
    monkeypatch.setenv("HARNESS_GRACE_S", "3")
    from harness.sweep.storage import make_storage

    storage = make_storage(f"sqlite:///{tmp_path}/stale.db")
    sched, study = _scheduler(tiny_corpus, repeats=2, storage=storage)
    t = sched.next()
    attempts = sched.attempts
    attempts.storage.set_trial_user_attr(attempts.trial_id(t.number), CRASHES, MAX_CRASHES)
    attempts.storage.record_heartbeat(attempts.trial_id(t.number))
    # a heartbeat older than the grace period: rewind it in the database instead of waiting
    with storage.engine.begin() as conn:
        from sqlalchemy import text

        conn.execute(text("update trial_heartbeats set heartbeat = :old"), {"old": "2000-01-01 00:00:00"})
    assert reap(attempts, tracking_uri="unused") == [], "no dead pid here: Optuna's own check fails it"
    frozen = attempts.frozen(t.number)
    assert frozen.state.name == "FAIL" and gave_up(frozen)
    assert not [x for x in study.get_trials() if x.state.name == "WAITING"]
    storage.engine.dispose()


# ------------------------------------------------------------------------------------------ the study across time


def test_fresh_starts_a_new_study_whose_table_never_mixes_with_the_old(tmp_path, tiny_corpus, capsys):
    """Defect: --fresh deleted the Optuna studies but the old seed runs kept the study name and config ids, so
    `harness results <study>` counted every seed twice and the old grid values shared rows with the new."""
    raw = make_spec(tiny_corpus, name="fr", seed=0, steps=4, eval_every=2, sweep={"params": {"train.optimizer.lr": [1e-2, 1e-3]}, "repeats": 2})
    path = write_spec(tmp_path, raw, name="fr.yaml")
    assert main(["run", str(path), "-q"]) == 0
    raw["sweep"]["params"]["train.optimizer.lr"] = [3e-3, 1e-4]
    raw["train"]["max_steps"] = 6
    path = write_spec(tmp_path, raw, name="fr.yaml")
    assert main(["run", str(path), "-q", "--fresh"]) == 0
    cfg = results.configs("fr")
    assert list(cfg["n"]) == [2, 2], cfg
    assert sorted(cfg["train.optimizer.lr"]) == [1e-4, 3e-3], "only the new study's grid"
    capsys.readouterr()
    assert main(["results", "fr"]) == 0
    text = capsys.readouterr().out
    assert "lr=0.01" not in text and "lr=0.003" in text
    old = results.configs("fr", superseded=True)
    assert sorted(Counter(old["sweep_run_id"]).values()) == [2, 2], "the old study is still there, as its own table"


def test_a_grid_grows_and_more_seeds_reuse_every_finished_run(tmp_path, tiny_corpus):
    """Issue 29.3: adding a grid value or seeds to a finished study runs only what is new."""
    raw = make_spec(tiny_corpus, name="gr", seed=0, steps=4, eval_every=2, sweep={"params": {"train.optimizer.lr": [1e-2, 1e-3]}, "repeats": 2})
    client = _client(tmp_path)
    assert main(["run", str(write_spec(tmp_path, raw, name="gr.yaml")), "-q"]) == 0
    first = {r.info.run_id for r in _seed_runs(client, "gr")}
    assert len(first) == 4
    raw["sweep"]["params"]["train.optimizer.lr"] = [1e-2, 1e-3, 3e-3]
    assert main(["run", str(write_spec(tmp_path, raw, name="gr.yaml")), "-q"]) == 0
    runs = _seed_runs(client, "gr")
    assert first <= {r.info.run_id for r in runs} and len(runs) == 6
    assert _by_config(runs)["c002"] == [0, 1]
    assert main(["run", str(write_spec(tmp_path, raw, name="gr.yaml")), "-q", "--repeats", "3"]) == 0
    runs = _seed_runs(client, "gr")
    assert len(runs) == 9 and all(seeds == [0, 1, 2] for seeds in _by_config(runs).values())
    cfg = results.configs("gr")
    assert list(cfg["n"]) == [3, 3, 3] and cfg["sweep_run_id"].nunique() == 1
    # a change that alters a finished run is still refused, with what changed
    raw["train"]["max_steps"] = 5
    assert main(["run", str(write_spec(tmp_path, raw, name="gr.yaml")), "-q", "--repeats", "3"]) == 2


def test_a_plain_sweep_grows_into_a_repeated_one(tmp_path, tiny_corpus):
    """--repeats on a sweep that ran with one seed reuses its runs as every configuration's first seed."""
    raw = make_spec(tiny_corpus, name="pg", seed=0, steps=4, eval_every=2, sweep={"params": {"train.optimizer.lr": [1e-2, 1e-3]}})
    path = write_spec(tmp_path, raw, name="pg.yaml")
    assert main(["run", str(path), "-q"]) == 0
    client = _client(tmp_path)
    plain = {r.info.run_id for r in _runs(client, "pg") if r.data.tags.get("harness.role") == "trial"}
    assert len(plain) == 2
    assert main(["run", str(path), "-q", "--repeats", "2"]) == 0
    runs = _seed_runs(client, "pg")
    assert len(runs) == 4 and plain <= {r.info.run_id for r in runs}
    assert _by_config(runs) == {"c000": [0, 1], "c001": [0, 1]}
    assert list(results.configs("pg")["n"]) == [2, 2]


def test_a_capped_smoke_run_never_stands_in_for_the_full_study(tmp_path, tiny_corpus, monkeypatch, capsys):
    """Issue 29.1/29.2: HARNESS_MAX_STEPS runs in a study of its own, and results never judge one study's
    configurations against another's."""
    raw = make_spec(tiny_corpus, name="cap", seed=0, steps=8, eval_every=2, sweep={"params": {"train.optimizer.lr": [1e-2, 1e-3]}, "repeats": 2})
    path = write_spec(tmp_path, raw, name="cap.yaml")
    monkeypatch.setenv("HARNESS_MAX_STEPS", "2")
    assert main(["run", str(path), "-q"]) == 0
    monkeypatch.delenv("HARNESS_MAX_STEPS")
    assert main(["run", str(path), "-q"]) == 0
    client = _client(tmp_path)
    runs = _seed_runs(client, "cap")
    assert Counter(r.data.tags["harness.study"] for r in runs) == Counter({"cap-max2steps": 4, "cap": 4})
    assert {int(r.data.metrics["summary/steps"]) for r in runs if r.data.tags["harness.study"] == "cap"} == {8}
    capsys.readouterr()
    assert main(["results", "cap"]) == 0
    text = capsys.readouterr().out
    assert text.count("verdicts: Holm") == 2 and "2 studies: each table compares its own configurations only" in text
    cfg = results.configs("cap")
    assert sorted(Counter(cfg["study"]).items()) == [("cap", 2), ("cap-max2steps", 2)]
    assert (cfg["verdict"] == "best").sum() == 2, "one best per study"


def test_a_repeated_sweep_with_no_finished_seed_run_ends_cleanly(tmp_path, tiny_corpus, capsys):
    """Defect: every first-round seed diverging (or a Ctrl-C in the first seconds) ended in KeyError: 'n' and the
    parent run FAILED. It reports what there is."""
    raw = make_spec(tiny_corpus, name="nd", seed=0, steps=20, eval_every=5,
                    train={"optimizer": {"name": "sgd", "lr": 1e-3}}, sweep={"params": {"train.optimizer.lr": [60.0, 100.0]}, "repeats": 2})
    capsys.readouterr()
    assert main(["run", str(write_spec(tmp_path, raw, name="nd.yaml")), "-q"]) == 0
    text = capsys.readouterr().out
    assert "no finished seed run" in text and "2 failed" in text
    out = run_sweep(spec_from_dict(raw))
    assert out.best is None and list(out.configs["verdict"]) == ["no finished seed run"] * 2
    assert _client(tmp_path).get_run(out.parent_run_id).info.status == "FINISHED"


def test_train_loss_objective_reads_the_same_in_results_as_in_the_sweep(tmp_path, tiny_corpus):
    """Defect: results scored a train/loss objective by its final value (there is no best/train/loss) while the sweep
    scored the minimum, so harness results and configs.csv disagreed."""
    raw = make_spec(tiny_corpus, name="tl", seed=0, steps=8, eval_every=2,
                    sweep={"params": {"train.optimizer.lr": [3e-2, 1e-3]}, "repeats": 2,
                           "objective": {"metric": "train/loss", "direction": "minimize", "summary": "best"}})
    out = run_sweep(spec_from_dict(raw))
    back = results.configs("tl").set_index("config_id")
    for cid, row in out.configs.set_index("config_id").iterrows():
        assert back.loc[cid, "objective_mean"] == pytest.approx(row["objective_mean"]), cid


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
        trials = optuna.load_study(study_name=name, storage=rdb).get_trials()
    finally:
        rdb.engine.dispose()
    assert len(trials) == 6 and {t.state.name for t in trials} == {"COMPLETE"}
    assert len({t.user_attrs["pid"] for t in trials}) >= 2, "the machines shared the seed runs"


def test_validate_counts_configurations_times_seeds(tmp_path, tiny_corpus, capsys):
    """Issue 29.8: `harness validate` said "sweep of 3 trials" for a 3-point grid with repeats: 3 (9 runs)."""
    raw = make_spec(tiny_corpus, name="vc", sweep={"params": {"train.optimizer.lr": LRS}, "repeats": 3})
    assert main(["validate", str(write_spec(tmp_path, raw, name="vc.yaml"))]) == 0
    assert "sweep of 3 configurations × 3 seeds = 9 runs" in capsys.readouterr().out


def test_compare_says_why_one_shared_seed_is_not_paired(tmp_path, tiny_corpus, capsys):
    """Defect 7: one shared seed was reported as "no shared seeds"."""
    for name, seed, repeats in (("oa", 3, 2), ("ob", 4, 2)):  # seeds 3, 4 and 4, 5: one shared
        spec = write_spec(tmp_path, make_spec(tiny_corpus, name=name, seed=seed, steps=4, eval_every=2), name=f"{name}.yaml")
        assert main(["run", str(spec), "--repeats", str(repeats), "-q"]) == 0
    capsys.readouterr()
    assert main(["compare", "oa", "ob"]) == 0
    text = capsys.readouterr().out
    assert "one shared seed (4): too few to pair, so Welch's t-test" in text and "no shared seeds" not in text
    assert "one comparison that you chose" in text
