"""Credentials never leave a URL's owner: one function redacts a storage URL or tracking URI for every print, tag and
param, and every printed error passes through it (issue 20, defect 3)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import child_env, make_spec, write_spec

from harness.tracking.redact import is_redacted, redact_text, redact_url


@pytest.mark.parametrize("url, shown", [
    ("postgresql://u:pw@127.0.0.1:5432/db", "postgresql://u:***@127.0.0.1:5432/db"),
    ("postgresql+psycopg://u:pw@localhost/db", "postgresql+psycopg://u:***@localhost/db"),
    ("postgresql://u:p%40ss%2Fw@db-host/db", "postgresql://u:***@db-host/db"),  # an escaped @ and / in the password
    ("postgresql://db-host/db?password=pw&sslmode=require", "postgresql://db-host/db?password=%2A%2A%2A&sslmode=require"),
    ("mysql+pymysql://root:pw@db:3306/optuna", "mysql+pymysql://root:***@db:3306/optuna"),
    ("https://alice:pw@mlflow.example.com:8443/base?x=1", "https://alice:***@mlflow.example.com:8443/base?x=1"),
    ("http://mlflow.example.com/?token=pw", "http://mlflow.example.com/?token=***"),
])
def test_a_password_is_shown_as_stars(url, shown):
    assert redact_url(url) == shown
    assert "pw" not in shown and is_redacted(shown) and not is_redacted(url)


@pytest.mark.parametrize("url", [
    "postgresql://harness@127.0.0.1:5432/harness", "sqlite:////tmp/studies/a.db", "sqlite:///studies/a.db",
    "journal:/tmp/a.log", "/tmp/studies/a.log", "http://127.0.0.1:5000", "file:///tmp/mlruns",
])
def test_a_url_without_a_password_is_left_as_it_is(url):
    assert redact_url(url) == url and not is_redacted(url)


def test_every_url_in_a_message_is_redacted_and_the_rest_kept():
    msg = ("study 's' in 'postgresql://u:pw@h/db' was made elsewhere (tracking https://a:pw@m.example.com/x), "
           "see postgresql+psycopg://u:pw@10.0.0.2/db.")
    assert redact_text(msg) == ("study 's' in 'postgresql://u:***@h/db' was made elsewhere (tracking https://a:***@m.example.com/x), "
                                "see postgresql+psycopg://u:***@10.0.0.2/db.")
    assert redact_text("nothing to hide: sqlite:///a.db") == "nothing to hide: sqlite:///a.db"


def test_a_tracking_uri_with_a_password_is_not_printed_when_the_server_is_down(tmp_path, tiny_corpus):
    """The fail-fast store check names the server it could not reach, without the password in its URI."""
    path = write_spec(tmp_path, make_spec(tiny_corpus))
    env = child_env(MLFLOW_TRACKING_URI="http://alice:Pw0rdSecret@127.0.0.1:9/", HARNESS_TRACKING_TIMEOUT="2")
    done = subprocess.run([sys.executable, "-m", "harness", "run", str(path)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "http://alice:***@127.0.0.1:9/" in done.stderr
    assert "Pw0rdSecret" not in done.stdout + done.stderr


def test_a_study_storage_with_a_password_is_not_printed_when_the_database_is_down(tmp_path, tiny_corpus):
    spec = make_spec(tiny_corpus, sweep={"sampler": "grid", "params": {"train.optimizer.lr": [1e-3]}})
    path = write_spec(tmp_path, spec)
    url = "postgresql://u:Pw0rdSecret@127.0.0.1:9/optuna"
    done = subprocess.run([sys.executable, "-m", "harness", "run", str(path), "--storage", url], cwd=tmp_path, env=child_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "postgresql://u:***@127.0.0.1:9/optuna" in done.stderr
    assert "Pw0rdSecret" not in done.stdout + done.stderr


def test_a_lookup_in_a_password_protected_tracking_database_does_not_echo_the_password(pg_server):
    """MLflow's tracking store may be a database URL; a run that is not there is reported without its password (the
    message can end up in a trial's fail_reason and the sweep's trials.csv, not only on the terminal)."""
    import uuid

    from harness.errors import UsageError
    from harness.job.source import find_model

    token = uuid.uuid4().hex[:8]
    role, password, db = f"tracker_{token}", f"Pw{token}Secret", f"mlflow_{token}"
    pg_server.create_role(role, password)
    pg_server.create_database(db, owner=role)
    uri = f"postgresql://{role}:{password}@127.0.0.1:{pg_server.port}/{db}"
    for target in ("0123456789abcdef0123456789abcdef", "no_such_experiment"):
        with pytest.raises(UsageError) as err:
            find_model(target, uri=uri)
        assert f"{role}:***@" in str(err.value) and password not in str(err.value), str(err.value)


def test_a_broken_sweeps_parent_run_keeps_the_error_without_a_password(tmp_path, tiny_spec_dict):
    """The parent run's harness.message tag holds whatever error broke the sweep; a URL in it is redacted."""
    import os

    from harness.errors import HarnessError
    from harness.spec import spec_from_dict
    from harness.sweep.report import fail_parent
    from harness.sweep.study import open_study
    from harness.tracking import client_for

    raw = dict(tiny_spec_dict, sweep={"sampler": "grid", "params": {"train.optimizer.lr": [1e-3]}})
    uri = os.environ["MLFLOW_TRACKING_URI"]
    opened = open_study(spec_from_dict(raw), name="broken", url=f"sqlite:///{tmp_path}/studies/broken.db", fresh=False, uri=uri, total=1)
    try:
        error = HarnessError("the study database postgresql://u:Pw0rdSecret@db-host/optuna went away")
        assert fail_parent(opened, uri=uri, error=error)
    finally:
        opened.storage.engine.dispose()
    run = client_for(uri).get_run(opened.parent_run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["harness.message"] == "HarnessError: the study database postgresql://u:***@db-host/optuna went away"


# -- issue 27: every shape a secret takes in a URL, and secrets harness was handed wherever they appear ----------------


@pytest.mark.parametrize("url, shown", [
    ("https://ghp_Tok3nSecret@github.com/org/repo.git", "https://***@github.com/org/repo.git"),  # a token as the user part
    ("https://x-access-token:ghp_Tok3nSecret@github.com/o/r.git", "https://x-access-token:***@github.com/o/r.git"),
    ("git+https://ghp_Tok3nSecret@github.com/o/r.git", "git+https://***@github.com/o/r.git"),
    ("https://ghp_Tok3nSecret@mlflow.example.com:8443/", "https://***@mlflow.example.com:8443/"),
    ("postgresql://u:pa'ss\"Secret@h/db", "postgresql://u:***@h/db"),  # quotes in the password
    ("postgresql://u:pa ssSecret@h/db", "postgresql://u:***@h/db"),  # white space: SQLAlchemy reads it
    ("postgresql://u:pa/ssSecret@h/db", "postgresql://u:***@h/db"),  # a raw slash: SQLAlchemy reads it
    ("postgresql://u:p@ssSecret@h/db", "postgresql://u:***@h/db"),  # a raw @: hidden up to the last one
    ("postgresql+psycopg://u:p%27w%20Secret@h:5432/db", "postgresql+psycopg://u:***@h:5432/db"),
    ("https://a:pa'ssSecret@m.example.com/", "https://a:***@m.example.com/"),
    ("redis://:pwSecret@h:6379/0", "redis://:***@h:6379/0"),
    ("postgresql://h/db?sslpassword=pwSecret&sslmode=require", "postgresql://h/db?sslmode=require&sslpassword=%2A%2A%2A"),  # SQLAlchemy sorts
    ("https://h/api?access_token=pwSecret&x=1", "https://h/api?access_token=***&x=1"),
    ("https://h/api?api_key=pwSecret", "https://h/api?api_key=***"),
    ("https://bucket.s3.amazonaws.com/k?X-Amz-Signature=pwSecret&X-Amz-Expires=60", "https://bucket.s3.amazonaws.com/k?X-Amz-Signature=***&X-Amz-Expires=60"),
])
def test_every_secret_in_a_url_is_hidden(url, shown):
    assert redact_url(url) == shown
    assert "Secret" not in shown and "Tok3n" not in shown and is_redacted(shown) and not is_redacted(url)
    assert redact_url(shown) == shown  # redacting twice changes nothing


@pytest.mark.parametrize("url", ["ssh://git@github.com/org/repo.git", "git+ssh://git@github.com/o/r.git", "postgresql://harness@h/db",
                                 "mysql://root@h/db", "https://github.com/org/repo.git"])
def test_a_login_name_is_not_a_secret(url):
    assert redact_url(url) == url and not is_redacted(url)


def test_a_password_with_a_quote_is_hidden_inside_a_message():
    msg = "cannot open 'postgresql://u:pa'ssSecret@h/db': refused; origin https://ghp_Tok3nSecret@github.com/o/r.git"
    shown = redact_text(msg)
    assert shown == "cannot open 'postgresql://u:***@h/db': refused; origin https://***@github.com/o/r.git"


def test_a_secret_harness_was_handed_is_hidden_wherever_it_appears(monkeypatch):
    """The secrets of the command line's URLs and of the credential variables are replaced anywhere in a text: in
    a URL cut short, after a word, percent-encoded."""
    from harness.tracking.redact import remember

    monkeypatch.setattr(sys, "argv", ["harness", "run", "x.yaml", "--storage", "postgresql://u:Arg v'Secret@h/db"])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "EnvPassSecret")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "EnvTokenSecret")
    monkeypatch.setenv("PGPASSWORD", "PgPassSecret")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://bob:UriPw%40Secret@m.example.com")
    remember("https://ghp_OriginSecret@github.com/o/r.git")
    text = ("failed: password 'Arg v'Secret' for postgresql://u:Arg%20v%27Secret@h/d (cut), EnvPassSecret/EnvTokenSecret, "
            "PgPassSecret, UriPw@Secret, ghp_OriginSecret")
    shown = redact_text(text)
    assert "Secret" not in shown, shown
    assert redact_text("nothing secret here") == "nothing secret here"


def test_a_command_line_is_stored_without_its_secrets():
    from harness.tracking.redact import redact_argv

    argv = ["harness", "run", "s.yaml", "--storage", "postgresql://u:pa ss'Secret@h/db", "--storage=mysql://r:pwSecret@h/db", "-q"]
    assert redact_argv(argv) == ["harness", "run", "s.yaml", "--storage", "postgresql://u:***@h/db", "--storage=mysql://r:***@h/db", "-q"]
