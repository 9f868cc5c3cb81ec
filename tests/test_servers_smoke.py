"""The real-server fixtures work: PostgreSQL through SQLAlchemy (psycopg 3) and Optuna's RDBStorage, and an
``mlflow server`` on a PostgreSQL backend store whose artifacts go through the server."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from servers import MlflowServer, PostgresServer, ServerUnavailable, find_postgres_binaries, start_postgres




def test_postgres_select_1(pg_server: PostgresServer) -> None:
    import sqlalchemy as sa

    url = pg_server.url("harness")
    assert url == f"postgresql+psycopg://harness@127.0.0.1:{pg_server.port}/harness"
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("select 1")).scalar() == 1
            assert conn.execute(sa.text("select current_database(), current_user")).one() == ("harness", "harness")
            assert conn.execute(sa.text("select inet_server_addr()::text")).scalar().startswith("127.0.0.1")
        assert engine.dialect.driver == "psycopg"
    finally:
        engine.dispose()
    assert pg_server.alive()


def test_optuna_study_on_postgres(pg_server: PostgresServer) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = pg_server.url("harness")
    name = f"smoke-{uuid.uuid4().hex[:8]}"
    storage = optuna.storages.RDBStorage(url)
    try:
        study = optuna.create_study(study_name=name, storage=storage, direction="minimize", sampler=optuna.samplers.RandomSampler(seed=0))
        study.optimize(lambda t: (t.suggest_float("x", -1.0, 1.0) - 0.25) ** 2, n_trials=3)
        best = study.best_value
    finally:
        storage.engine.dispose()

    storage2 = optuna.storages.RDBStorage(url)  # read it back through a fresh connection
    try:
        loaded = optuna.load_study(study_name=name, storage=storage2)
        assert [t.state for t in loaded.trials] == [optuna.trial.TrialState.COMPLETE] * 3
        assert loaded.best_value == best
        assert name in optuna.get_all_study_names(storage=storage2)
    finally:
        storage2.engine.dispose()


def test_mlflow_server_run_metric_and_proxied_artifact(mlflow_server: MlflowServer, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server.uri)
    exp_id = client.create_experiment(f"smoke-{uuid.uuid4().hex[:8]}")
    run = client.create_run(exp_id)
    run_id = run.info.run_id
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/"), run.info.artifact_uri  # proxied by the server

    client.log_metric(run_id, "loss", 0.5, step=1)
    client.log_text(run_id, "hello from the smoke test\n", "notes/hello.txt")
    client.set_terminated(run_id)

    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")] == [(1, 0.5)]
    assert client.get_run(run_id).info.status == "FINISHED"
    assert [f.path for f in client.list_artifacts(run_id, "notes")] == ["notes/hello.txt"]

    dst = tmp_path / "download"
    dst.mkdir()
    local = Path(client.download_artifacts(run_id, "notes/hello.txt", str(dst)))
    assert local.read_text() == "hello from the smoke test\n"
    # The bytes live in the server's --artifacts-destination, not in anything this process wrote.
    stored = list(mlflow_server.artifacts_dir.rglob("hello.txt"))
    assert len(stored) == 1 and run_id in str(stored[0])


def test_missing_postgres_binaries_are_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HARNESS_PG_BIN", str(tmp_path / "nonexistent"))
    with pytest.raises(ServerUnavailable) as info:
        find_postgres_binaries()
    msg = str(info.value)
    assert "initdb, pg_ctl, postgres" in msg and "apt-get update && apt-get install -y postgresql" in msg
    with pytest.raises(ServerUnavailable):
        start_postgres(tmp_path / "pg")
