"""The tracking store: one URL parser, a fail-fast check for every kind of store, and one layer of retries."""

from __future__ import annotations

import http.server
import threading

import pytest
from conftest import tree
from servers import free_port

from harness.cli import main
from harness.tracking import MlflowTracker, TrackingError, check_store, client_for, parse_store_url


@pytest.mark.parametrize(
    ("url", "kind", "path"),
    [
        ("sqlite:///mlruns/mlflow.db", "sqlite", "mlruns/mlflow.db"),
        ("sqlite:////abs/store.db", "sqlite", "/abs/store.db"),
        ("sqlite://", "sqlite", None),
        ("postgresql://u:pw@db:5432/harness", "sql", None),
        ("postgresql+psycopg://u@127.0.0.1/h?sslmode=disable", "sql", None),
        ("mysql+pymysql://u@h/db", "sql", None),
        ("http://127.0.0.1:5000", "http", None),
        ("file:///tmp/mlruns", "local", "/tmp/mlruns"),
        ("./mlruns", "local", "mlruns"),
        ("journal:studies/x.log", "local", "studies/x.log"),
    ],
)
def test_one_parser_classifies_every_store_url(url, kind, path):
    parsed = parse_store_url(url)
    assert parsed.kind == kind
    assert (str(parsed.path) if parsed.path is not None else None) == path


def test_absolute_store_url_means_the_same_from_any_folder(tmp_path):
    assert parse_store_url("sqlite:///mlruns/mlflow.db").absolute() == f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    assert parse_store_url("postgresql://u@h/db").absolute() == "postgresql://u@h/db"


def test_check_store_fails_fast_for_an_unreachable_postgresql_server():
    port = free_port()
    with pytest.raises(TrackingError, match=rf"database postgresql\+psycopg://harness:\*\*\*@127.0.0.1:{port}/x is not reachable"):
        check_store(f"postgresql+psycopg://harness:secret@127.0.0.1:{port}/x")


def test_check_store_fails_fast_for_an_unwritable_file_store(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the store folder should be")
    with pytest.raises(TrackingError, match="is a file, not a folder"):
        check_store(blocker.as_uri())
    with pytest.raises(TrackingError, match="cannot be created"):
        check_store((blocker / "mlruns").as_uri())


def test_cli_run_against_an_unreachable_postgresql_store_exits_2_and_creates_nothing(tmp_path, tiny_spec_dict, write_spec, monkeypatch, capsys):
    spec = write_spec(tmp_path, tiny_spec_dict)
    before = tree(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"postgresql+psycopg://harness@127.0.0.1:{free_port()}/x")
    assert main(["run", str(spec), "-q"]) == 2
    assert "is not reachable" in capsys.readouterr().err
    assert tree(tmp_path) == before


class _Outage(http.server.BaseHTTPRequestHandler):
    """A tracking server in an outage: every request gets 503, and is counted."""

    count = 0
    lock = threading.Lock()

    def _fail(self) -> None:
        with _Outage.lock:
            _Outage.count += 1
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = _fail

    def log_message(self, *args) -> None:  # keep the test output clean
        pass


def test_one_layer_of_retries_during_a_server_outage(tmp_path, monkeypatch):
    """Against a server that answers 503, a write is attempted exactly retries + 1 times: MLflow's own HTTP retries
    (7 by default, each with backoff) do not multiply harness's. The environment keeps MLflow's default."""
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    healthy = client_for(f"sqlite:///{tmp_path}/store.db")
    run_id = healthy.create_run(healthy.create_experiment("outage")).info.run_id
    tracker = MlflowTracker(healthy, run_id, retries=2, backoff_s=0.01)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Outage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        tracker.client = client_for(f"http://127.0.0.1:{server.server_address[1]}")
        _Outage.count = 0
        with pytest.raises(TrackingError, match="after 3 attempts"):
            tracker.set_tags({"a": "b"})
        assert _Outage.count == 3
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_refused_request_is_not_retried(tmp_path):
    """A write the store rejects as invalid (a 4xx: here, changing a logged param) fails at once: retrying cannot help."""
    from mlflow.entities import Param

    client = client_for(f"sqlite:///{tmp_path}/store.db")
    run_id = client.create_run(client.create_experiment("x")).info.run_id
    client.log_param(run_id, "k", "1")
    tracker = MlflowTracker(client, run_id, retries=5, backoff_s=30.0)  # a retry would take minutes
    calls = []

    def log_batch(*args, **kwargs):
        calls.append(1)
        return client.log_batch(*args, **kwargs)

    with pytest.raises(TrackingError, match="the store refused it"):
        tracker._retry("log params", log_batch, run_id, params=[Param("k", "2")])
    assert calls == [1]
