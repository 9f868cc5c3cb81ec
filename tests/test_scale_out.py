"""Several machines on one PostgreSQL study and one MLflow tracking server, with real servers.

Each "machine" is a separate `harness run` process with its own working directory, TMPDIR and HOME, so the workers
share nothing but the two servers: checkpoints reach another worker only through the server's artifact store. (The
test's barrier folder, HARNESS_BARRIER_AT, is the one exception: it holds each machine at its first trial until all of
them have claimed one, so every machine provably takes part.)
"""

from __future__ import annotations

import copy
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import pytest
from conftest import child_env, make_spec, trial_params, write_spec

from harness.testing import faults

STEPS, EVAL = 6, 2


def _spec(name: str, lrs: list[float], **sweep) -> dict:
    """A tiny char model on a slice of the sonnets (a shipped corpus, so the machines share no file)."""
    return make_spec("shakespeare/sonnets", name=name, seed=5, steps=STEPS, eval_every=EVAL, experiment=name, data={"max_chars": 3000},
                     train={"threads": 1}, sweep={"sampler": "grid", "params": {"train.optimizer.lr": lrs}, **sweep})


class Machine:
    """A worker with nothing in common with the others but the servers."""

    def __init__(self, root: Path, name: str, tracking_uri: str):
        self.dir = root / name
        for sub in ("home", "tmp", "work"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self.env = {k: v for k, v in child_env().items() if not k.startswith("MLFLOW_")}  # warnings are errors here too
        self.env.update(HOME=str(self.dir / "home"), TMPDIR=str(self.dir / "tmp"), MLFLOW_TRACKING_URI=tracking_uri)
        self.log = self.dir / "harness.log"

    def start(self, spec: dict, storage: str | None, *args: str, quiet: bool = True, **env: str) -> subprocess.Popen:
        """``harness run`` on ``spec`` with ``--storage storage`` (None: the spec's ``sweep.storage``)."""
        path = write_spec(self.dir / "work", spec)
        flags = (["--storage", storage] if storage else []) + (["-q"] if quiet else [])
        with open(self.log, "a") as log:
            return subprocess.Popen([sys.executable, "-m", "harness", "run", str(path), *flags, *args],
                                    cwd=self.dir / "work", env={**self.env, **env}, stdout=log, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


def _wait(procs: list[subprocess.Popen], machines: list[Machine], timeout: float = 300) -> list[int]:
    codes = []
    try:
        for p in procs:
            codes.append(p.wait(timeout=timeout))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return codes


def _trials(storage: str, name: str) -> list:
    """The study's trials, read on a connection that is closed again (psycopg warns about one left open)."""
    import optuna

    rdb = optuna.storages.RDBStorage(storage)
    try:
        study = optuna.load_study(study_name=name, storage=rdb)
        trials = study.get_trials()
        for t in trials:  # a grid's values live in the study's registry, not in Optuna's params
            t.params = trial_params(study, t)
        return trials
    finally:
        rdb.engine.dispose()


@pytest.fixture
def servers(pg_server, mlflow_server, tmp_path):
    from mlflow import MlflowClient

    return pg_server.url("harness"), mlflow_server.uri, MlflowClient(tracking_uri=mlflow_server.uri)


def test_three_machines_run_a_12_point_grid_exactly_once(servers, tmp_path):
    storage, uri, client = servers
    name = f"grid12-{uuid.uuid4().hex[:6]}"
    lrs = [round(1e-3 * (i + 1), 6) for i in range(12)]
    machines = [Machine(tmp_path, f"m{i}", uri) for i in range(3)]
    barrier = tmp_path / "barrier"
    procs = [m.start(_spec(name, lrs), storage, HARNESS_BARRIER_AT=f"trial_start:3:{barrier}") for m in machines]
    codes = _wait(procs, machines)
    assert codes == [0, 0, 0], "\n\n".join(m.output() for m in machines)

    trials = _trials(storage, name)
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert sorted(t.params["train.optimizer.lr"] for t in complete) == lrs, "every point completes exactly once"
    assert len(trials) == 12
    assert {t.user_attrs["pid"] for t in complete} == {p.pid for p in procs}, "every machine ran trials"
    assert faults.arrived(barrier) == sorted(str(p.pid) for p in procs)

    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("harness.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("harness.role") == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 12 and {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert {r.info.status for r in children} == {"FINISHED"}
    # Every artifact comes back through the server (no machine's disk is reachable from here).
    table = client.download_artifacts(parents[0].info.run_id, "trials.csv", str(tmp_path / "parent"))
    assert len(Path(table).read_text().strip().splitlines()) == 13  # header + 12 trials
    for child in children:
        assert child.info.artifact_uri.startswith("mlflow-artifacts:/")
        folder = tmp_path / "dl" / child.info.run_id
        for artifact in ("spec.yaml", "tokenizer.json", "checkpoints/last.pt", "checkpoints/best.pt"):
            assert Path(client.download_artifacts(child.info.run_id, artifact, str(folder))).stat().st_size > 0


def test_a_killed_machines_trial_is_resumed_elsewhere_from_the_artifact_store(servers, tmp_path):
    storage, uri, client = servers
    name = f"kill-{uuid.uuid4().hex[:6]}"
    spec = _spec(name, [1e-3, 2e-3])
    victim, rescuer = Machine(tmp_path, "victim", uri), Machine(tmp_path, "rescuer", uri)
    # The victim dies by SIGKILL after step 4 of its first trial: its checkpoint at the evaluation of step 4 is uploaded.
    (code,) = _wait([victim.start(spec, storage, HARNESS_KILL_AT="step:5")], [victim])
    assert code == -9, victim.output()
    trials = _trials(storage, name)
    (killed,) = [t for t in trials if t.state.name == "RUNNING"]
    run_id = killed.user_attrs["mlflow_run_id"]

    (code,) = _wait([rescuer.start(spec, storage)], [rescuer])
    assert code == 0, rescuer.output()

    trials = _trials(storage, name)
    states = Counter((t.params.get("train.optimizer.lr"), t.state.name) for t in trials)
    assert states == Counter({(1e-3, "FAIL"): 1, (1e-3, "COMPLETE"): 1, (2e-3, "COMPLETE"): 1}), states
    failed = next(t for t in trials if t.state.name == "FAIL")
    assert failed.number == killed.number and failed.user_attrs["stop_reason"] == "crashed"
    retry = next(t for t in trials if t.state.name == "COMPLETE" and t.params["train.optimizer.lr"] == 1e-3)
    assert retry.user_attrs["mlflow_run_id"] == run_id, "the retry continues the same MLflow run"

    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["harness.resumes"] == "1"
    # it went on from the checkpoint the victim uploaded at step 4, not from step 0 (a replay gives the same history)
    assert run.data.tags["harness.resumed_from_step"] == "4", run.data.tags.get("harness.resume_warnings")
    steps = [m.step for m in client.get_metric_history(run_id, "train/loss")]
    assert sorted(steps) == list(range(STEPS)), "no step logged twice, none missing"
    assert not [r for r in client.search_runs([run.info.experiment_id]) if r.info.status == "RUNNING"]


def test_two_invocations_of_a_tpe_study_run_exactly_n_trials(servers, tmp_path):
    storage, uri, client = servers
    name = f"tpe-{uuid.uuid4().hex[:6]}"
    spec = copy.deepcopy(_spec(name, []))
    spec["train"]["max_steps"] = 2
    spec["sweep"] = {"sampler": "tpe", "n_trials": 10, "params": {"train.optimizer.lr": {"float": [1e-4, 1e-2], "log": True}}}
    machines = [Machine(tmp_path, f"t{i}", uri) for i in range(2)]
    barrier = tmp_path / "barrier"
    procs = [m.start(spec, storage, HARNESS_BARRIER_AT=f"trial_start:2:{barrier}") for m in machines]
    codes = _wait(procs, machines)
    assert codes == [0, 0], "\n\n".join(m.output() for m in machines)
    trials = _trials(storage, name)
    assert len(trials) == 10 and all(t.state.name == "COMPLETE" for t in trials)
    assert {t.user_attrs["pid"] for t in trials} == {p.pid for p in procs}, "both invocations ran trials"
    runs = client.search_runs([client.get_experiment_by_name(name).experiment_id], max_results=100)
    assert sum(r.data.tags.get("harness.role") == "trial" for r in runs) == 10


def test_three_machines_spelling_one_password_database_three_ways_share_one_lock_and_keep_the_password(pg_server, mlflow_server,
                                                                                                        tmp_path):
    """Separate machines name one database the way they reach it: by address, as localhost, through another address
    and with an explicit driver. All three start together on a fresh database (the barrier releases them at their first
    study lock at once, so Optuna's schema creation races) and must hold one lock: no crash, every grid point once.
    The password reaches no tag, param, artifact, study attribute or printed line (issue 20, defects 2 and 3)."""
    from mlflow import MlflowClient

    from harness.errors import UsageError
    from harness.results import study as study_frame
    from servers import require_second_loopback

    second = require_second_loopback(pg_server)
    token = uuid.uuid4().hex[:8]
    role, password, db = f"sweeper_{token}", f"Pw{token}Secret", f"fresh_{token}"  # unique: any match is a leak
    pg_server.create_role(role, password)
    pg_server.create_database(db, owner=role)
    port = pg_server.port
    spellings = [f"postgresql://{role}:{password}@127.0.0.1:{port}/{db}",
                 f"postgresql://{role}:{password}@localhost:{port}/{db}",
                 f"postgresql+psycopg://{role}:{password}@{second}:{port}/{db}"]
    uri, client = mlflow_server.uri, MlflowClient(tracking_uri=mlflow_server.uri)
    name = f"spell-{token}"
    lrs = [1e-3, 2e-3, 3e-3, 4e-3]
    machines = [Machine(tmp_path, f"s{i}", uri) for i in range(3)]
    barrier = tmp_path / "barrier"
    # Each machine's spec names the database (sweep.storage), so the parent run's params and spec.yaml carry it too.
    procs = [m.start(_spec(name, lrs, storage=url), None, quiet=False, HARNESS_BARRIER_AT=f"study_lock:3:{barrier}")
             for m, url in zip(machines, spellings)]
    codes = _wait(procs, machines)
    outputs = [m.output() for m in machines]
    assert codes == [0, 0, 0], "\n\n".join(outputs)
    assert faults.arrived(barrier) == sorted(str(p.pid) for p in procs), "all three met at the study lock"

    trials = _trials(spellings[2], name)
    assert len(trials) == len(lrs)
    assert sorted(t.params["train.optimizer.lr"] for t in trials if t.state.name == "COMPLETE") == lrs
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("harness.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("harness.role") == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(float(r.data.params["train.optimizer.lr"]) for r in children) == lrs
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}

    # Where the storage URL is still shown, it is shown without its password.
    shown = {url.replace(password, "***") for url in spellings}
    assert parents[0].data.tags["harness.storage"] in shown
    assert parents[0].data.params["sweep.storage"] in shown
    spec_yaml = Path(client.download_artifacts(parents[0].info.run_id, "spec.yaml", str(tmp_path / "spec"))).read_text()
    assert f"{role}:***@" in spec_yaml
    assert all(f"{role}:***@" in out for out in outputs), outputs

    leaks = [f"output of {m.dir.name}" for m, out in zip(machines, outputs) if password in out]
    for run in runs:
        rid = run.info.run_id
        leaks += [f"run {rid} tag {k}" for k, v in run.data.tags.items() if password in k or password in v]
        leaks += [f"run {rid} param {k}" for k, v in run.data.params.items() if password in k or password in v]
        folder = Path(client.download_artifacts(rid, "", str(tmp_path / "artifacts" / rid)))
        files = [f for f in folder.rglob("*") if f.is_file()]
        assert files, f"run {rid} has no artifacts"
        leaks += [f"run {rid} artifact {f.relative_to(folder)}" for f in files if password.encode() in f.read_bytes()]
    for t in trials:
        leaks += [f"trial {t.number} attribute {k}" for k, v in {**t.user_attrs, **t.system_attrs}.items() if password in str(v)]
    import optuna

    rdb = optuna.storages.RDBStorage(spellings[0])
    try:
        attrs = {**rdb.get_study_user_attrs(rdb.get_study_id_from_name(name)), **rdb.get_study_system_attrs(rdb.get_study_id_from_name(name))}
        leaks += [f"study attribute {k}" for k, v in attrs.items() if password in str(v)]
    finally:
        rdb.engine.dispose()
    assert not leaks, leaks

    # The parent run keeps the storage without its password: looking the study up by name says how to give it.
    with pytest.raises(UsageError, match="--storage") as missing:
        study_frame(name, uri=uri)
    assert password not in str(missing.value) and f"{role}:***@" in str(missing.value)
    assert len(study_frame(name, storage=spellings[1], uri=uri)) == len(lrs)


# ------------------------------------------------------------------------------------ the README's block, as written


def _readme_block(heading: str) -> list[str]:
    """The command lines of the first bash block after ``heading`` in the README, continuation lines joined."""
    import re

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = text[text.index(heading):]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, f"no bash block after {heading!r}"
    return [line for line in block.group(1).replace("\\\n", " ").splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_the_readme_scaling_out_block_runs_as_written(tmp_path, pg_server):
    """Every line of "A sweep on several machines", in order: a PostgreSQL cluster made by initdb/pg_ctl, the two
    databases, an mlflow server on it, and the sweep on both (two-step trials). Only the ports are changed (to free
    ones), and as root the PostgreSQL commands run as an unprivileged user, as the README asks."""
    import os
    import shlex
    import shutil
    import signal
    import tempfile

    from servers import _drop_privileges_prefix, _wait_until, find_postgres_binaries, free_port

    del pg_server  # requested for its skip/require logic only: the block makes its own cluster
    lines = _readme_block("### A sweep on several machines")
    assert [shlex.split(line)[0] for line in lines] == ["initdb", "pg_ctl", "psql", "mlflow", "export", "harness"]
    pg_port, ml_port = free_port(), free_port()
    lines = [line.replace("5432", str(pg_port)).replace("5000", str(ml_port)) for line in lines]

    run_as: list[str] = []
    work = Path(tempfile.mkdtemp(prefix="readme-scale-", dir="/tmp"))  # reachable by the unprivileged user
    env = {k: v for k, v in child_env().items() if not k.startswith("PG")}
    env.pop("MLFLOW_TRACKING_URI", None)
    env["PATH"] = f"{find_postgres_binaries()}{os.pathsep}{env['PATH']}"
    if os.geteuid() == 0:
        user = os.environ.get("HARNESS_PG_USER") or "nobody"
        run_as = _drop_privileges_prefix(user)
        import pwd

        os.chown(work, pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid)
    shutil.copytree(Path(__file__).resolve().parents[1] / "experiments", work / "experiments")
    (work / "mlruns").mkdir()
    server = None
    try:
        for line in lines[:3]:  # initdb, pg_ctl start, psql
            pg_env = {**env, "HOME": str(work), "TMPDIR": str(work), "LC_ALL": "C", "LANG": "C"}
            done = subprocess.run(run_as + ["bash", "-c", line], cwd=work, env=pg_env, capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, f"{line}\n{done.stdout}\n{done.stderr}"
        mlflow_line = lines[3].rstrip("& ")
        log = open(tmp_path / "mlflow.log", "wb")  # noqa: SIM115 - closed in finally
        server = subprocess.Popen(["bash", "-c", f"exec {mlflow_line}"], cwd=work, env=child_env(python_warnings=None),
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        import urllib.request

        def healthy() -> bool:
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{ml_port}/health", timeout=2).status == 200
            except OSError:
                return False

        assert _wait_until(lambda: healthy() or server.poll() is not None, 180) and healthy(), \
            "mlflow server did not come up:\n" + (tmp_path / "mlflow.log").read_text(errors="replace")[-3000:]
        name, _, value = lines[4].removeprefix("export ").partition("=")
        env[name] = value
        sweep = subprocess.run(shlex.split(lines[5]), cwd=work, env={**env, "HARNESS_MAX_STEPS": "2"}, capture_output=True, text=True,
                               timeout=600)
        assert sweep.returncode == 0, sweep.stdout + sweep.stderr
        assert "3 complete" in sweep.stdout, sweep.stdout
        assert f"postgresql://harness@127.0.0.1:{pg_port}/harness" in sweep.stdout
    finally:
        if server is not None:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
            log.close()
        subprocess.run(run_as + ["bash", "-c", "pg_ctl -D pg stop -m fast"], cwd=work, env={**env, "HOME": str(work)},
                       capture_output=True, timeout=60)
        shutil.rmtree(work, ignore_errors=True)
