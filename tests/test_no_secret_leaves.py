"""No secret leaves the machine (issue 27): a lab's credential channels, each with a distinct planted secret, through
a sweep with a failing trial, wrong passwords, ``harness results``, ``harness resume`` and ``harness ui``; then every
byte harness wrote or sent is searched for each secret.

The servers are real: PostgreSQL with SCRAM password authentication (tests/servers.py: every role but the
superuser logs in with its password) and an ``mlflow server --app-name basic-auth`` (MLflow's own login). The git
origin of the project carries a token. The test skips only when a server cannot be started (PostgreSQL binaries, or
MLflow's auth extras: ``pip install "mlflow[auth]"``), and fails then under ``HARNESS_REQUIRE_SERVERS=1``.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
from conftest import child_env, make_spec, write_spec
from servers import ServerUnavailable, _unavailable, free_port, start_mlflow_server


def _auth_extras() -> None:
    import importlib.util

    if importlib.util.find_spec("flask_wtf") is None:  # what mlflow[auth] adds to mlflow (the app imports it)
        raise ServerUnavailable("MLflow's basic-auth app needs Flask-WTF; install it with: pip install \"mlflow[auth]\"")


def _request(url: str, user: str, password: str, body: dict[str, Any]) -> int:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json", "Authorization": f"Basic {token}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _git(folder: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args], cwd=folder, check=True, capture_output=True)


@pytest.fixture(scope="module")
def lab(pg_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """A password database for the study, a basic-auth tracking server (admin by MLFLOW_TRACKING_PASSWORD, a second
    user by a user:password in the tracking URI), a password database for `harness ui`'s store, a project whose git
    origin holds a token. Each secret is distinct and long enough to find anywhere."""
    tok = uuid.uuid4().hex[:8]
    secrets = {
        "storage password": f"St'dy {tok}Pw",  # a quote and a space: any character SQLAlchemy reads in a password
        "ui store password": f"Ui{tok}StorePw",
        "MLFLOW_TRACKING_PASSWORD": f"Ml{tok}AdminPw1",
        "tracking URI password": f"Ur{tok}BobPassWd",
        "git token": f"ghp_{tok}GitToken",
        "wrong storage password": f"Wr{tok}StudyPw",
        "wrong MLflow password": f"Wr{tok}MlflowPw",
    }
    missing: ServerUnavailable | None = None
    try:
        _auth_extras()
    except ServerUnavailable as exc:
        missing = exc
    if missing is not None:
        _unavailable(missing)
    base = tmp_path_factory.mktemp("lab")
    role, study_db, ui_db, track_db = f"lab_{tok}", f"study_{tok}", f"uistore_{tok}", f"track_{tok}"
    pg_server.create_role(role, secrets["storage password"])
    pg_server.create_database(study_db, owner=role)
    ui_role = f"ui_{tok}"
    pg_server.create_role(ui_role, secrets["ui store password"])
    pg_server.create_database(ui_db, owner=ui_role)
    pg_server.create_database(track_db)
    ini = base / "auth.ini"
    ini.write_text("[mlflow]\ndefault_permission = MANAGE\n"
                   f"database_uri = sqlite:///{base}/auth.db\nadmin_username = admin\n"
                   f"admin_password = {secrets['MLFLOW_TRACKING_PASSWORD']}\n"
                   "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n", encoding="utf-8")
    server = start_mlflow_server(base / "server", pg_server.url(track_db), app_name="basic-auth",
                                 extra_env={"MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_FLASK_SERVER_SECRET_KEY": uuid.uuid4().hex})
    try:
        made = _request(f"{server.uri}/api/2.0/mlflow/users/create", "admin", secrets["MLFLOW_TRACKING_PASSWORD"],
                        {"username": "bob", "password": secrets["tracking URI password"]})
        assert made == 200, f"creating the second MLflow user answered {made}"
        project = base / "project"
        project.mkdir()
        corpus = project / "tiny.txt"
        from conftest import TINY_TEXT

        corpus.write_text(TINY_TEXT, encoding="utf-8")
        # SGD at lr 100 diverges: that trial fails (its reason is stored in the study and printed)
        spec = make_spec(corpus, name=f"lab{tok}", steps=40, eval_every=20, experiment=f"lab{tok}",
                         train={"optimizer": {"name": "sgd", "lr": 1e-3}},
                         sweep={"sampler": "grid", "params": {"train.optimizer.lr": [100.0, 1e-3]}})
        spec_file = write_spec(project, spec, name="sweep.yaml")
        _git(project, "init", "-q", "-b", "main")
        _git(project, "add", "-A")
        _git(project, "commit", "-q", "-m", "lab")
        _git(project, "remote", "add", "origin", f"https://{secrets['git token']}@github.com/lab/project.git")
        tmp = base / "tmp"  # the staging and cache folders harness makes: inside what is searched
        tmp.mkdir()
        host = f"127.0.0.1:{pg_server.port}"
        yield SimpleNamespace(
            secrets=secrets, server=server, cmdlines=[], project=project, spec=spec_file, study=f"lab{tok}", tmp=tmp, pg=pg_server,
            dbs=(study_db, ui_db, track_db),
            storage=f"postgresql+psycopg://{role}:{secrets['storage password']}@{host}/{study_db}",
            storage_no_password=f"postgresql+psycopg://{role}@{host}/{study_db}",
            wrong_storage=f"postgresql+psycopg://{role}:{secrets['wrong storage password']}@{host}/{study_db}",
            ui_store=f"postgresql+psycopg://{ui_role}:{quote(secrets['ui store password'])}@{host}/{ui_db}",
            bob_uri=server.uri.replace("http://", f"http://bob:{quote(secrets['tracking URI password'], safe='')}@"),
        )
    finally:
        server.stop()


def _env(lab: SimpleNamespace, **extra: str) -> dict[str, str]:
    env = child_env(MLFLOW_TRACKING_URI=lab.server.uri, MLFLOW_TRACKING_USERNAME="admin",
                    MLFLOW_TRACKING_PASSWORD=lab.secrets["MLFLOW_TRACKING_PASSWORD"], TMPDIR=str(lab.tmp),
                    HARNESS_TRACKING_RETRIES="1", HARNESS_TRACKING_TIMEOUT="10")
    env.pop("PGPASSWORD", None)
    env.update(extra)
    return {k: v for k, v in env.items() if v != ""}


def _harness(lab: SimpleNamespace, printed: list[str], *args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run a harness command; its output, and the command line of every process it starts (read while it runs), go
    into ``printed`` and ``lab.cmdlines``."""
    out, err = lab.tmp.parent / "out.txt", lab.tmp.parent / "err.txt"
    with open(out, "w") as fo, open(err, "w") as fe:
        proc = subprocess.Popen([sys.executable, "-m", "harness", *args], cwd=lab.project, env=env or _env(lab), stdout=fo, stderr=fe,
                                text=True)
        deadline = time.monotonic() + timeout
        while proc.poll() is None:
            lab.cmdlines += [_cmdline(p) for p in _descendants(proc.pid)]
            if time.monotonic() > deadline:
                proc.kill()
            time.sleep(0.1)
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out.read_text(), err.read_text())
    printed.append(done.stdout + done.stderr)  # what harness printed (not the test's own command line)
    return done


def _descendants(pid: int) -> list[int]:
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            raw = stat.read_text()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(raw[raw.rfind(")") + 2:].split()[1])
    found, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        found += kids
        frontier += kids
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def _serve_ui(lab: SimpleNamespace, printed: list[str], cmdlines: list[str]) -> None:
    """`harness ui` on a password database: its server's command line, and every process it starts, seen while it
    runs; then Ctrl-C."""
    port = free_port()
    env = _env(lab, MLFLOW_TRACKING_URI=lab.ui_store, PYTHONWARNINGS="")  # a third-party server: its warnings are not errors
    dry = _harness(lab, printed, "ui", "--port", str(port), "--dry-run", env=env)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    proc = subprocess.Popen([sys.executable, "-m", "harness", "ui", "--port", str(port)], cwd=lab.project, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        ready = False
        while time.monotonic() < deadline and proc.poll() is None:
            cmdlines += [_cmdline(p) for p in [proc.pid, *_descendants(proc.pid)]]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
                    ready = resp.status == 200
            except (urllib.error.URLError, OSError):
                pass
            if ready:
                cmdlines += [_cmdline(p) for p in [proc.pid, *_descendants(proc.pid)]]
                break
            time.sleep(0.5)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
        printed.append(out)
    assert ready, f"harness ui never became ready:\n{out}"


def _dump(lab: SimpleNamespace, db: str) -> str:
    """Every row of every table in ``db``, as text (each row as PostgreSQL renders it), read as the superuser."""
    import psycopg
    from psycopg import sql

    rows = []
    with psycopg.connect(lab.pg.libpq_url(db)) as conn:
        tables = conn.execute("select table_schema, table_name from information_schema.tables "
                              "where table_schema not in ('pg_catalog', 'information_schema')").fetchall()
        for schema, table in tables:
            query = sql.SQL("select t::text from {}.{} t").format(sql.Identifier(schema), sql.Identifier(table))
            rows += [f"{schema}.{table}: {r[0]}" for r in conn.execute(query)]
    assert rows, f"database {db} holds nothing"
    return "\n".join(rows)


def _spellings(secret: str) -> set[str]:
    return {secret, quote(secret, safe=""), quote_plus(secret), quote(secret), base64.b64encode(secret.encode()).decode()}


def test_no_planted_secret_is_printed_stored_or_on_a_command_line(lab: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    import re

    printed: list[str] = []
    cmdlines: list[str] = lab.cmdlines
    s = lab.secrets

    # a sweep with a failing trial, its storage password in the URL, MLflow's password in MLFLOW_TRACKING_PASSWORD
    swept = _harness(lab, printed, "run", "sweep.yaml", "--storage", lab.storage)
    assert swept.returncode == 0, swept.stdout + swept.stderr
    assert "1 complete, 0 pruned, 1 failed" in swept.stdout, swept.stdout

    # a wrong study password, a wrong MLflow password: a clear error (exit 2) that does not repeat the password
    wrong = _harness(lab, printed, "run", "sweep.yaml", "--storage", lab.wrong_storage)
    assert wrong.returncode == 2 and "password authentication failed" in wrong.stderr, wrong.stdout + wrong.stderr
    refused = _harness(lab, printed, "run", "sweep.yaml", "--storage", lab.storage,
                       env=_env(lab, MLFLOW_TRACKING_PASSWORD=s["wrong MLflow password"]))
    assert refused.returncode == 2 and "refused the credentials" in refused.stderr, refused.stdout + refused.stderr

    # the results, as a user:password in the tracking URI; the study through --storage, then through PGPASSWORD
    as_bob = _env(lab, MLFLOW_TRACKING_URI=lab.bob_uri, MLFLOW_TRACKING_USERNAME="", MLFLOW_TRACKING_PASSWORD="")
    shown = _harness(lab, printed, "results", lab.study, "--storage", lab.storage, "--csv", "trials.csv", env=as_bob)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert re.search(r"trial \d failed", shown.stdout) and "postgresql+psycopg://lab_" in shown.stdout, shown.stdout
    by_pgpass = _harness(lab, printed, "results", lab.study, "--storage", lab.storage_no_password,
                         env=_env(lab, PGPASSWORD=s["storage password"]))
    assert by_pgpass.returncode == 0 and re.search(r"trial \d failed", by_pgpass.stdout), by_pgpass.stdout + by_pgpass.stderr
    # a usage error quotes the command line: not its password
    usage = _harness(lab, printed, "results", lab.study, "--storage", lab.storage, "--no-such-option")
    assert usage.returncode == 2 and "unrecognized arguments" in usage.stderr, usage.stderr

    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", s["MLFLOW_TRACKING_PASSWORD"])
    client = MlflowClient(tracking_uri=lab.server.uri)
    runs = client.search_runs([client.get_experiment_by_name(lab.study).experiment_id])
    assert all("***" in r.data.tags["mlflow.source.name"] for r in runs), [r.data.tags["mlflow.source.name"] for r in runs]
    assert {r.data.tags.get("mlflow.source.git.repoURL") for r in runs} == {"https://***@github.com/lab/project.git"}
    trial = next(r for r in runs if r.data.tags.get("harness.role") != "sweep")
    _harness(lab, printed, "resume", trial.info.run_id)

    _serve_ui(lab, printed, cmdlines)
    assert any("mlflow server" in c for c in cmdlines), cmdlines

    # every byte: the output, the command lines, the project folder (not .git: the user put the token there), the
    # staging folders, the tracking server's artifacts and database, the study database, harness ui's store
    places: dict[str, bytes] = {f"output {i}": p.encode() for i, p in enumerate(printed)}
    places.update({f"command line {i}": c.encode() for i, c in enumerate(cmdlines)})
    for folder in (lab.project, lab.tmp, lab.server.artifacts_dir):
        for f in folder.rglob("*"):
            if f.is_file() and ".git" not in f.relative_to(folder).parts:
                places[str(f)] = f.read_bytes()
    for db in lab.dbs:
        places[f"database {db}"] = _dump(lab, db).encode()
    assert (lab.project / "trials.csv").is_file()
    leaks = [f"{name} in {where}" for name, secret in s.items() for where, data in places.items()
             if any(sp.encode() in data for sp in _spellings(secret))]
    assert not leaks, "\n".join(leaks)
