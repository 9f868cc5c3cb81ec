"""What a run records in MLflow's own conventions, so the MLflow UI shows it where it looks (issue 21), on a local
SQLite store and on PostgreSQL behind an ``mlflow server`` (proxied artifacts, so the model is downloaded):

* an experiment harness creates is a model-training experiment (``mlflow.experimentKind``); one a user made is left
  as it is;
* the source: the command, the git commit and branch, and whether tracked files had changes;
* the training and validation data as dataset inputs (name, content digest, source, schema, profile, context): the
  same text gives the same digest on both stores, other text another;
* the best checkpoint as a logged model, with its val metric linked, loadable as ``models:/<id>`` by ``harness
  generate`` and ``init.from`` (the finetuned run names it as its input) and by ``mlflow.pyfunc.load_model``;
* CPU and memory samples (``system/*``) while the run trains, off with MLflow's own switch;
* a one-line description, and a sweep parent's description holding its trial table.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from conftest import TINY_TEXT, _clear_harness_env, make_spec, write_spec
from mlflow import MlflowClient

from harness.generate import generate
from harness.job import run
from harness.spec import load_spec

OTHER_TEXT = TINY_TEXT.replace("lighthouse", "windmill").replace("baker", "potter")


def _git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args], cwd=folder, check=True,
                          capture_output=True, text=True).stdout.strip()


def _scenario(folder: Path, uri: str, tag: str) -> SimpleNamespace:
    """In a git repository: a run, the same spec again on other text (after a tracked file changed), a run finetuned
    from the first run's logged model into an experiment a user made, and a run with system metrics switched off."""
    client = MlflowClient(tracking_uri=uri)
    (folder / "a.txt").write_text(TINY_TEXT, encoding="utf-8")
    (folder / "b.txt").write_text(OTHER_TEXT, encoding="utf-8")
    exp = f"conv_{tag}"
    write_spec(folder, make_spec("a.txt", name="conv", steps=40, eval_every=10, experiment=exp, seed=1), "a.yaml")
    write_spec(folder, make_spec("b.txt", name="conv", steps=40, eval_every=10, experiment=exp, seed=1), "b.yaml")
    _git(folder, "init", "-q", "-b", "main")
    _git(folder, "add", "a.txt", "b.txt", "a.yaml", "b.yaml")
    _git(folder, "commit", "-qm", "corpora and specs")
    commit = _git(folder, "rev-parse", "HEAD")
    first = run(load_spec(folder / "a.yaml"))
    (folder / "b.yaml").write_text((folder / "b.yaml").read_text() + "# changed\n", encoding="utf-8")  # a tracked file changes
    second = run(load_spec(folder / "b.yaml"))
    model_id = client.get_run(first.run_id).outputs.model_outputs[0].model_id
    assert first.model_id == model_id  # the outcome names the model the run made
    mine = client.create_experiment(f"mine_{tag}")  # the user's own experiment: no kind
    ft = make_spec("a.txt", name="conv_ft", steps=6, eval_every=3, experiment=f"mine_{tag}")
    del ft["model"]
    ft["init"] = {"from": f"models:/{model_id}"}
    write_spec(folder, ft, "ft.yaml")
    tuned = run(load_spec(folder / "ft.yaml"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")
        quiet = run(load_spec(folder / "a.yaml"))
    for out in (first, second, tuned, quiet):
        assert out.status == "FINISHED", out.message
    return SimpleNamespace(client=client, uri=uri, folder=folder, commit=commit, exp=exp, mine=mine, model_id=model_id,
                           first=client.get_run(first.run_id), second=client.get_run(second.run_id),
                           tuned=client.get_run(tuned.run_id), quiet=client.get_run(quiet.run_id))


@pytest.fixture(scope="module", params=["sqlite", "server"])
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    folder = tmp_path_factory.mktemp(f"conventions-{request.param}")
    uri = (f"sqlite:///{folder}/mlruns/mlflow.db" if request.param == "sqlite"
           else request.getfixturevalue("mlflow_server").uri)  # PostgreSQL behind an mlflow server
    with pytest.MonkeyPatch.context() as mp:
        _clear_harness_env(mp)
        (folder / "mlruns").mkdir()
        mp.chdir(folder)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("HARNESS_STAGING", str(folder / "staging"))
        mp.setenv("TMPDIR", str(folder))  # the downloaded-model cache: this test's own
        mp.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.1")  # samples within a second-long run
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return _scenario(folder, uri, uuid.uuid4().hex[:8])
        finally:
            torch.set_num_threads(threads)


def test_harness_marks_its_experiments_for_training_and_leaves_a_users_alone(store):
    made = store.client.get_experiment_by_name(store.exp)
    assert made.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "mlflow.experimentKind" not in store.client.get_experiment(store.mine).tags
    assert store.tuned.info.experiment_id == store.mine


def test_source_is_the_command_and_the_git_state(store):
    tags = store.first.data.tags
    assert tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.source.name"]
    assert tags["mlflow.source.git.commit"] == store.commit and tags["mlflow.source.git.branch"] == "main"
    assert tags["harness.git_dirty"] == "false"
    assert store.second.data.tags["harness.git_dirty"] == "true"  # b.yaml differed from the commit


def _inputs(r: Any) -> dict[str, Any]:
    return {next(t.value for t in d.tags if t.key == "mlflow.data.context"): d.dataset for d in r.inputs.dataset_inputs}


def test_datasets_name_the_corpus_with_a_digest_of_its_content(store):
    first, second = _inputs(store.first), _inputs(store.second)
    assert set(first) == {"train", "validation"}
    train = first["train"]
    assert (train.name, train.source_type, json.loads(train.source)["uri"]) == ("a.txt", "local", str(store.folder / "a.txt"))
    profile = json.loads(train.profile)
    assert profile["tokenizer"] == "char" and profile["tokens"] > profile["examples"] > 0
    assert json.loads(train.schema)["mlflow_colspec"][0]["name"] == "text"
    assert first["train"].digest != first["validation"].digest
    assert second["train"].name == "b.txt" and second["train"].digest != train.digest  # other text, another digest
    assert _inputs(store.quiet)["train"].digest == train.digest  # the same text and split: the same digest


def test_the_digest_is_of_the_data_as_prepared(store):
    """The same text, split and tokenizer give the same digest whatever the store (the digest is computed here, again,
    from the prepared data alone)."""
    from harness.data.prepare import prepare
    from harness.job.records import datasets

    spec = load_spec(store.folder / "a.yaml")
    prep = prepare(spec.data)
    expected = {d.context: d.digest for d in datasets(spec, prep.tokenizer, prep, None)}
    assert {k: v.digest for k, v in _inputs(store.first).items()} == expected
    assert all(len(d) == 8 for d in expected.values())


def test_the_best_checkpoint_is_a_logged_model_with_its_val_metric(store):
    model = store.client.get_logged_model(store.model_id)
    assert str(model.status).endswith("READY") and model.source_run_id == store.first.info.run_id
    assert model.model_type == "harness-gpt" and model.params["task"] == "lm"
    best = store.first.data.metrics["summary/best_val_loss"]
    linked = {m.key: m for m in model.metrics}
    assert linked["summary/best_val_loss"].value == pytest.approx(best)
    assert linked["summary/best_val_loss"].dataset_digest == _inputs(store.first)["validation"].digest
    names = {a.path for a in store.client.list_logged_model_artifacts(store.model_id)}
    assert {"MLmodel", "model.pt", "spec.yaml", "tokenizer.json"} <= names


def test_harness_generate_reads_the_model_by_its_uri(store):
    by_uri = generate(f"models:/{store.model_id}", "The ", max_tokens=24, seed=3, uri=store.uri)
    by_run = generate(store.first.info.run_id, "The ", max_tokens=24, seed=3, uri=store.uri)
    assert by_uri.text == by_run.text and len(by_uri.tokens) == 24  # the model holds the run's best weights
    assert by_uri.run_id == store.first.info.run_id


def test_init_from_a_model_uri_records_the_model_as_the_runs_input(store):
    tags, params = store.tuned.data.tags, store.tuned.data.params
    assert [m.model_id for m in store.tuned.inputs.model_inputs] == [store.model_id]
    assert tags["harness.init_model"] == store.model_id and tags["harness.init_from"] == store.first.info.run_id
    assert params["init.from"] == params["init.source_uri"] == f"models:/{store.model_id}"
    assert f"model `{store.model_id}`" in tags["mlflow.note.content"]


def test_system_metrics_are_sampled_while_a_run_trains_unless_switched_off(store):
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(store.first.data.metrics)
    assert not [k for k in store.quiet.data.metrics if k.startswith("system/")]


def test_a_run_describes_itself_in_one_line(store):
    note = store.first.data.tags["mlflow.note.content"]
    assert "\n" not in note and "`a.txt`" in note and "language model" in note and "lr 0.001" in note


def test_a_logged_model_loads_with_mlflow_pyfunc(store, monkeypatch):
    if store.uri.startswith("http"):
        pytest.skip("one store is enough: the files are the same (the server's are checked through harness generate)")
    import warnings

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)  # mlflow.pyfunc finds models:/ in the default store

    with warnings.catch_warnings():  # MLflow's own modules warn as mlflow.pyfunc imports them (a type hint of theirs)
        warnings.simplefilter("ignore")
        import mlflow.pyfunc

        loaded = mlflow.pyfunc.load_model(f"models:/{store.model_id}")
    out = loaded.predict(["The ", "A"], params={"max_tokens": 12, "seed": 3})
    expected = [generate(f"models:/{store.model_id}", p, max_tokens=12, seed=3, uri=store.uri).completion for p in ("The ", "A")]
    assert out == expected


def test_sweep_trials_and_parent_describe_themselves(in_sweep):
    client = MlflowClient(tracking_uri=in_sweep.uri)
    parent = client.get_run(in_sweep.parent).data.tags["mlflow.note.content"]
    lines = parent.splitlines()
    assert lines[0].startswith(f"Sweep `{in_sweep.study}`") and "| trial | train.optimizer.lr |" in parent
    rows = [ln for ln in lines if ln.startswith("| ") and not ln.startswith("| trial")]
    assert len(rows) == len(in_sweep.lrs)
    assert rows[0].split("|")[2].strip() == "0.01"  # best first: the largest lr learns most in 20 steps
    for number, run_id in in_sweep.trials.items():
        assert f"Trial {number} of sweep `{in_sweep.study}`" in client.get_run(run_id).data.tags["mlflow.note.content"]


def test_a_sweeps_run_shows_its_best_trials_data_and_model(in_sweep):
    client = MlflowClient(tracking_uri=in_sweep.uri)
    parent = client.get_run(in_sweep.parent)
    best = client.get_run(parent.data.tags["harness.best_run_id"])
    assert [o.model_id for o in parent.outputs.model_outputs] == [o.model_id for o in best.outputs.model_outputs] != []
    assert client.get_logged_model(parent.outputs.model_outputs[0].model_id).source_run_id == best.info.run_id  # still the trial's
    digests = sorted((d.dataset.name, d.dataset.digest) for d in parent.inputs.dataset_inputs)
    assert digests == sorted((d.dataset.name, d.dataset.digest) for d in best.inputs.dataset_inputs) and len(digests) == 2


def _log_dataset_at_once(barrier: Any, uri: str, run_id: str, queue: Any) -> None:
    from harness.tracking import client_for
    from harness.tracking.records import DatasetRecord
    from harness.tracking.tracker import MlflowTracker

    tracker = MlflowTracker(client_for(uri), run_id)
    record = DatasetRecord("same.txt", "0123abcd", "local", {"uri": "/data/same.txt"}, {}, {"tokens": 1}, "train")
    barrier.wait()  # every process asks the store at the same moment
    try:
        tracker.log_inputs([record])
        queue.put("ok")
    except Exception as exc:
        queue.put(f"{type(exc).__name__}: {exc}")


@pytest.mark.filterwarnings("ignore:.*use of fork\\(\\) may lead to deadlocks:DeprecationWarning")
def test_runs_that_start_together_on_the_same_data_all_record_it(tmp_path):
    """A sweep's trials start together on the same data: MLflow looks the dataset up, then inserts it, so all but one
    collided on the store's unique key and their runs failed in set-up (seen under load in the browser test)."""
    import multiprocessing

    from harness.tracking import client_for
    from harness.tracking.tracker import MlflowTracker

    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    client = client_for(uri)
    runs = [MlflowTracker.start(client, experiment="together", run_name=f"r{i}").run_id for i in range(4)]
    ctx = multiprocessing.get_context("fork")  # the store's client and harness are loaded already
    barrier, queue = ctx.Barrier(len(runs)), ctx.Queue()
    procs = [ctx.Process(target=_log_dataset_at_once, args=(barrier, uri, run_id, queue)) for run_id in runs]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert results == ["ok"] * len(runs)
    for run_id in runs:
        assert [(d.dataset.name, d.dataset.digest) for d in client.get_run(run_id).inputs.dataset_inputs] == [("same.txt", "0123abcd")]
