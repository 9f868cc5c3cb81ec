"""Sweep workers that outlive their place (issue 20, defects 4, 7 and 10), with real processes and real stores.

* Defect 7: the driver of a two-worker sweep is killed with SIGKILL while both workers train. The workers notice,
  checkpoint and hand their trials back; the next invocation resumes both runs, every grid point once.
* Defect 4: a worker whose study database goes away (a TCP relay to PostgreSQL that the test cuts) stops its trial
  before another worker may take it over; a worker whose trial another worker failed (its heartbeat looked stale)
  stops at once and leaves the run to the retry; and one whose trial was failed after its run ended does not die
  telling the study.
* Defect 10: a retried trial whose MLflow run cannot be looked up (a real HTTP proxy in front of a real
  ``mlflow server`` answers 503 to that lookup) tries again, and when the store stays away it is queued again with
  its run instead of starting a new run from step 0.

Processes wait at the fault points of harness.testing.faults (barriers) while the test acts, so every order of events
below is forced, never won by sleeping. Every "eventually" is a poll with a deadline.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, urlparse

import optuna
import psutil
import pytest
import rel_helpers as H
from conftest import CHILD_WARNINGS, child_env, trial_params, write_spec
from mlflow import MlflowClient
from optuna.trial import TrialState
from servers import free_port

from harness.cli import main
from harness.spec import spec_from_dict
from harness.sweep import run_sweep
from harness.sweep.attempts import Attempts
from harness.train.events import StopReason
from harness.sweep.storage import make_storage
from harness.testing import faults

STEPS = 12
# Short heartbeat periods for the children that need them (see harness.sweep.storage): a fence of 3 s, a grace of 6 s.
PERIODS = {"HARNESS_HEARTBEAT_S": "0.2", "HARNESS_GRACE_S": "6"}
FENCE_S, GRACE_S = 3.0, 6.0


# ----------------------------------------------------------------------------------------------------------- helpers


def _until(condition: Callable[[], Any], timeout: float, what: str, log: Path | None = None) -> Any:
    """Poll ``condition`` until it is truthy (returned) or ``timeout`` passes (the test fails saying ``what``)."""
    deadline = time.monotonic() + timeout
    while True:
        got = condition()
        if got:
            return got
        if time.monotonic() > deadline:
            tail = f"\n--- child output ---\n{log.read_text(errors='replace')[-4000:]}" if log is not None and log.exists() else ""
            raise AssertionError(f"{what} (waited {timeout:.0f} s){tail}")
        time.sleep(0.05)


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie that no one has reaped yet is not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _start(argv: list[str], cwd: Path, **env: str) -> tuple[Any, Path]:
    """``harness <argv>`` in a child forked from rel_helpers' preloaded forkserver, not waited for (as H.killed, but
    the test acts while it runs). Returns the process and its log."""
    log = Path(cwd) / f"child-{time.monotonic_ns()}.log"
    proc = H._killer().Process(target=H._child, args=(argv, str(cwd), child_env(**env), str(log)))
    proc.start()
    return proc, log


def _exit_code(proc: Any, log: Path, timeout: float, what: str) -> int:
    proc.join(timeout)
    if proc.is_alive():
        tail = log.read_text(errors="replace")[-4000:]
        raise AssertionError(f"{what} (still running after {timeout:.0f} s)\n--- child output ---\n{tail}")
    return int(proc.exitcode)


def _stop(proc: Any) -> None:
    """Cleanup: end a child this test started that is still alive (a failed assertion left it waiting)."""
    if proc is not None and proc.is_alive():
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(30)


def _arrived_pids(folder: Path) -> set[int]:
    return {int(p) for p in faults.arrived(folder) if p.isdigit()}


def _grid_spec(corpus: Path, name: str, lrs: list[float], **kw: Any) -> dict:
    return H.rel_spec(corpus, name, steps=STEPS, sweep={"sampler": "grid", "params": {"train.optimizer.lr": lrs}}, **kw)


RETRIED = [(TrialState.FAIL, "crashed"), (TrialState.COMPLETE, "completed")]  # an attempt failed by a reaper, and its retry


def _states(trials: list[Any]) -> list[tuple[TrialState, str | None]]:
    return [(t.state, t.user_attrs.get("stop_reason")) for t in trials]


def _trials(url: str, name: str) -> list[Any]:
    storage = make_storage(url)
    try:
        return optuna.load_study(study_name=name, storage=storage).get_trials()
    finally:
        engine = getattr(storage, "engine", None)
        if engine is not None:
            engine.dispose()


def _lrs(url: str, name: str, trials: list[Any]) -> list[float]:
    """The swept learning rates of ``trials``, sorted (from the study's configuration registry)."""
    storage = make_storage(url)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
        return sorted(trial_params(study, t)["train.optimizer.lr"] for t in trials)
    finally:
        storage.engine.dispose()


def _fail_as_another_worker(url: str, name: str, number: int) -> None:
    """What another worker's reaper does to a trial whose heartbeat it found stale: FAIL it (crashed) and queue a
    retry that continues its MLflow run (harness.sweep.attempts.reap, through the same Attempts call)."""
    storage = make_storage(url)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
        assert Attempts(study, storage).fail_and_retry(number, stop_reason=StopReason.CRASHED)
    finally:
        storage.engine.dispose()


def _child_runs(client: Any, experiment: str) -> list[Any]:
    return [r for r in H.runs(client, experiment) if r.data.tags.get("harness.role") == "trial"]


def _one_resumed_run(client: Any, experiment: str) -> Any:
    """The sweep's single trial run: FINISHED once, every step logged exactly once."""
    (run,) = _child_runs(client, experiment)
    assert (run.info.status, run.data.tags.get("stop_reason")) == ("FINISHED", "completed"), run.data.tags
    assert H.steps(client, run.info.run_id, "train/loss") == list(range(STEPS)), "a step is missing or logged twice"
    return run


# ----------------------------------------------------------------------------------------------------------- defect 7


@pytest.mark.slow
def test_workers_stop_when_their_driver_is_killed_and_the_next_invocation_resumes_them(tmp_path, tiny_corpus):
    """kill -9 of the driver: both workers (forked by its forkserver, in their own process group) checkpoint, hand
    their trials back and exit; the same command then finishes every grid point exactly once, resuming both runs."""
    H.seed_store(tmp_path)
    lrs = [3e-3, 1e-2]
    spec = write_spec(tmp_path, _grid_spec(tiny_corpus, "orphans", lrs), name="orphans.yaml")
    held, noticed = tmp_path / "held", tmp_path / "noticed"
    # Each worker waits after its 2nd step until the other worker and the test are there too; a worker that notices
    # its driver is gone marks it at the point driver_gone.
    driver, log = _start(["run", str(spec), "-q", "--workers", "2"], tmp_path,
                         HARNESS_BARRIER_AT=f"step@2:3:{held};driver_gone:1:{noticed}")
    workers: set[int] = set()
    try:
        _until(lambda: len(faults.arrived(held)) == 2 or not driver.is_alive(), 180, "both workers should be training", log)
        workers = _arrived_pids(held)
        assert len(workers) == 2, log.read_text()
        url = f"sqlite:///{tmp_path}/studies/orphans.db"
        owners = {int(t.user_attrs["pid"]) for t in _trials(url, "orphans") if t.state == TrialState.RUNNING}
        assert owners == workers and driver.pid not in workers, "the trials' pid attributes name the two worker processes"

        os.kill(driver.pid, signal.SIGKILL)
        driver.join(30)
        _until(lambda: _arrived_pids(noticed) >= workers, 30,
               f"the workers did not notice that their driver died (still running: {[p for p in workers if _running(p)]})")
        faults.arrive(held, "test")  # let them go on: each stops at its next step, as for SIGTERM
        _until(lambda: not any(_running(p) for p in workers), 60, "the workers should exit once their driver is gone", log)
    finally:
        _stop(driver)
        for pid in workers:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)  # processes this test started (through the driver); none is left behind

    trials = _trials(url, "orphans")
    assert _states(trials[:2]) == [(TrialState.FAIL, "interrupted")] * 2, \
        "each worker checkpointed and handed its trial back itself"
    assert [t.state for t in trials[2:]] == [TrialState.WAITING] * 2, "both queued again"

    assert main(["run", str(spec), "-q", "--workers", "1"]) == 0
    trials = _trials(url, "orphans")
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert _lrs(url, "orphans", complete) == lrs, "every grid point completes exactly once"
    assert len(trials) == 4
    client = H.store(tmp_path)
    runs = _child_runs(client, "orphans")
    assert len(runs) == 2 and {t.user_attrs["mlflow_run_id"] for t in complete} == {r.info.run_id for r in runs}
    for r in runs:
        assert (r.info.status, r.data.tags["stop_reason"]) == ("FINISHED", "completed")
        assert 2 <= int(r.data.tags["harness.resumed_from_step"]) < STEPS, "resumed from the checkpoint written on the stop"
        assert H.steps(client, r.info.run_id, "train/loss") == list(range(STEPS))


@pytest.mark.slow
def test_a_closed_terminal_stops_the_workers_through_their_driver(tmp_path, tiny_corpus, monkeypatch):
    """SIGHUP (the terminal closed) reaches the driver only: its workers left its process group. The driver passes it
    on as SIGTERM, waits for them, and the sweep ends as interrupted, nothing left running."""
    H.seed_store(tmp_path)
    training = tmp_path / "training"
    monkeypatch.setenv("HARNESS_BARRIER_AT", f"step@2:2:{training}")  # both workers have trained 2 steps
    monkeypatch.setenv("PYTHONWARNINGS", CHILD_WARNINGS)  # the workers treat warnings as errors too
    caught: list[int] = []
    old = signal.signal(signal.SIGHUP, lambda signum, frame: caught.append(signum))  # if harness does not take it

    def hang_up() -> None:
        _until(lambda: len(faults.arrived(training)) == 2, 120, "both workers should be training")
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGHUP)  # the driver waits in its main thread

    thread = threading.Thread(target=hang_up, daemon=True)
    thread.start()
    try:
        result = run_sweep(spec_from_dict(_grid_spec(tiny_corpus, "hangup", [3e-3, 1e-2])), workers=2)
    finally:
        signal.signal(signal.SIGHUP, old)
        thread.join(10)
    assert not caught, "SIGHUP reached no handler of harness: the driver would have died and left its workers training"
    assert result.interrupted and result.signal == signal.SIGHUP
    trials = _trials(f"sqlite:///{tmp_path}/studies/hangup.db", "hangup")
    assert not [t for t in trials if t.state == TrialState.RUNNING], "every worker ended its trial"
    assert {t.user_attrs.get("stop_reason") for t in trials if t.state == TrialState.FAIL} <= {"interrupted"}


# ----------------------------------------------------------------------------------------------------------- defect 4


class _Relay:
    """A TCP relay to a PostgreSQL server that the test can cut: every connection through it is closed and new ones
    are refused, as when the database's machine drops off the network; :meth:`restore` listens again."""

    def __init__(self, host: str, port: int):
        self.target = (host, port)
        self.port = free_port()
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        self.listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> _Relay:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.cut()

    def cut(self) -> None:
        if self.listener is not None:
            with contextlib.suppress(OSError):
                self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
            self.listener.close()
            self.listener = None
        with self.lock:
            for s in self.sockets:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self.sockets.clear()


@pytest.mark.slow
def test_a_worker_cut_off_from_its_study_database_stops_before_its_trial_can_be_taken_over(tmp_path, tiny_corpus, pg_server):
    """The study database becomes unreachable for a worker while it trains. Once its heartbeats have failed for the
    fence period it stops at its next step (a checkpoint; its run ends KILLED/interrupted), long before the grace after
    which another worker would fail the trial and resume the same run beside it; it exits with a clear error. The next
    invocation resumes the run from that checkpoint."""
    H.seed_store(tmp_path)
    db = f"fence_{uuid.uuid4().hex[:8]}"
    pg_server.create_database(db)
    with _Relay(pg_server.host, pg_server.port) as relay:
        _cut_off_and_back(tmp_path, tiny_corpus, relay, f"postgresql+psycopg://{pg_server.user}@127.0.0.1:{relay.port}/{db}")


def _cut_off_and_back(tmp_path: Path, tiny_corpus: Path, relay: _Relay, url: str) -> None:
    # the step the worker stops at (4) is evaluated in the outage too: no verdict of the pruner, but no failed run
    spec = write_spec(tmp_path, _grid_spec(tiny_corpus, "cutoff", [3e-3], eval_every=4), name="cutoff.yaml")
    held, later = tmp_path / "held", tmp_path / "later"
    worker, log = _start(["run", str(spec), "-q", "--workers", "1", "--storage", url], tmp_path, **PERIODS,
                         # held at step 3 until the test has cut the database off; a worker that trains on is held at 8
                         HARNESS_BARRIER_AT=f"step@3:2:{held};step@8:2:{later}")
    try:
        _until(lambda: faults.arrived(held) or not worker.is_alive(), 120, "the worker should be training", log)
        cut = time.time()  # no heartbeat of the worker's is recorded after this
        relay.cut()
        # The fence period elapsing is the condition under test: after it, the worker's next step must stop it.
        time.sleep(max(0.0, cut + FENCE_S + 0.3 - time.time()))
        faults.arrive(held, "test")
        code = _exit_code(worker, log, 60, "the worker trained on without its study database")
    finally:
        _stop(worker)
    out = log.read_text(errors="replace")
    assert code == 2, out
    assert "study" in out and "trial 0" in out and "run the same command again" in out, out
    assert not faults.arrived(later), "it stopped at its next step"
    client = H.store(tmp_path)
    (run,) = _child_runs(client, "cutoff")
    assert (run.info.status, run.data.tags["stop_reason"]) == ("KILLED", "interrupted"), run.data.tags
    stopped_after = run.info.end_time / 1000 - cut
    assert stopped_after < GRACE_S, f"its run ended {stopped_after:.1f} s into the outage: another worker could have taken it over by then"

    relay.restore()
    assert main(["run", str(spec), "-q", "--workers", "1", "--storage", url]) == 0
    trials = _trials(url, "cutoff")
    # the next invocation found the trial's worker dead (this host, its pid gone) and resumed the same run
    assert _states(trials) == RETRIED
    assert trials[0].user_attrs["mlflow_run_id"] == trials[1].user_attrs["mlflow_run_id"] == run.info.run_id
    assert _one_resumed_run(client, "cutoff").data.tags["harness.resumed_from_step"] == "4", "from the checkpoint of its stop"


@pytest.mark.slow
@pytest.mark.parametrize("noticed_by", ["heartbeat", "evaluation"])
def test_a_worker_whose_trial_another_worker_failed_stops_at_once_and_the_retry_continues_its_run(tmp_path, tiny_corpus, noticed_by):
    """Another worker judged this trial's worker dead (FAIL, crashed) and queued its retry while it still trained: the
    worker notices at its next heartbeat (or, with heartbeats far apart, when its evaluation is refused by the study),
    stops at its next step without telling the study anything, and the retry (taken here by the same worker) resumes
    the run from that step."""
    H.seed_store(tmp_path)
    by_heartbeat = noticed_by == "heartbeat"
    # heartbeat: evaluations only at the start and the end; evaluation: one at step 4, and the default 20 s heartbeat
    spec = write_spec(tmp_path, _grid_spec(tiny_corpus, "usurped", [3e-3], eval_every=STEPS if by_heartbeat else 4), name="usurped.yaml")
    held, fenced = tmp_path / "held", tmp_path / "fenced"

    def noticed(log: Path) -> None:
        if by_heartbeat:
            _until(lambda: faults.arrived(fenced), 30, "the worker did not notice that its trial was failed by another worker", log)

    trials = _fail_its_trial_while_held(tmp_path, spec, "usurped", held, f"step@3:2:{held};fence:1:{fenced}", "the worker should be training",
                                        then=noticed, **(PERIODS if by_heartbeat else {}))
    run = _one_resumed_run(H.store(tmp_path), "usurped")
    assert trials[0].user_attrs["mlflow_run_id"] == trials[1].user_attrs["mlflow_run_id"] == run.info.run_id
    assert run.data.tags["harness.resumed_from_step"] == "4", "it stopped at its next step"


def _fail_its_trial_while_held(tmp_path: Path, spec: Path, study: str, held: Path, barriers: str, waiting: str, *,
                               then: Callable[[Path], None] | None = None, **env: str) -> list:
    """Run the sweep's one worker until it waits at ``held``, fail its trial as another worker would, (``then``,) let it
    go on; the sweep must finish with exit 0 and the trial be failed once and retried. Returns the study's trials."""
    url = f"sqlite:///{tmp_path}/studies/{study}.db"
    worker, log = _start(["run", str(spec), "-q", "--workers", "1"], tmp_path, **env, HARNESS_BARRIER_AT=barriers)
    try:
        _until(lambda: faults.arrived(held) or not worker.is_alive(), 120, waiting, log)
        _fail_as_another_worker(url, study, 0)
        if then is not None:
            then(log)
        faults.arrive(held, "test")
        code = _exit_code(worker, log, 120, "the sweep should finish")
    finally:
        _stop(worker)
    assert code == 0, log.read_text()
    trials = _trials(url, study)
    assert _states(trials) == RETRIED
    return trials


@pytest.mark.slow
def test_a_trial_failed_by_another_worker_after_its_run_ended_does_not_end_the_sweep(tmp_path, tiny_corpus):
    """The trial's run has ended (completed) but the study is not told yet when another worker fails the trial and
    queues a retry. Telling the study then must not kill the sweep: the retry owns the trial, finds the finished run and
    reports it."""
    H.seed_store(tmp_path)
    spec = write_spec(tmp_path, _grid_spec(tiny_corpus, "late", [3e-3]), name="late.yaml")
    ended = tmp_path / "ended"
    trials = _fail_its_trial_while_held(tmp_path, spec, "late", ended, f"trial_end:2:{ended}", "the trial's run should have ended")
    run = _one_resumed_run(H.store(tmp_path), "late")
    assert "harness.resumed_from_step" not in run.data.tags, "the finished run was reported, not trained again"
    assert trials[1].user_attrs["mlflow_run_id"] == run.info.run_id


# ----------------------------------------------------------------------------------------------------------- defect 10


class _LookupProxy:
    """A real HTTP proxy in front of an ``mlflow server``. While armed it answers 503 to the lookups (GET runs/get) of
    one run: every time, or the next ``times`` times; everything else goes through."""

    def __init__(self, upstream: str):
        self.upstream = urlparse(upstream)
        self.run_id: str | None = None
        self.left: int | None = None
        self.refused = 0
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if proxy._refuse(self.command, self.path):
                    data = json.dumps({"error_code": "TEMPORARILY_UNAVAILABLE", "message": "the store is restarting"}).encode()
                    self.send_response(503)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=120)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection", "keep-alive")}
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                finally:
                    conn.close()
                self.send_response(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "keep-alive", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = relay

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def arm(self, run_id: str, times: int | None = None) -> None:
        with self.lock:
            self.run_id, self.left, self.refused = run_id, times, 0

    def _refuse(self, method: str, path: str) -> bool:
        parsed = urlparse(path)
        if method != "GET" or not parsed.path.endswith("/mlflow/runs/get"):
            return False
        query = parse_qs(parsed.query)
        with self.lock:
            if self.run_id is None or self.run_id not in (query.get("run_id", []) + query.get("run_uuid", [])):
                return False
            if self.left is not None:
                if self.left == 0:
                    return False
                self.left -= 1
            self.refused += 1
            return True

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def crashed_trial(tmp_path, tiny_corpus, mlflow_server):
    """A one-point sweep on a real ``mlflow server`` (through a proxy) whose trial was killed at step 6, after its
    checkpoint at step 4: the next invocation retries it and must resume that run. Yields (spec, proxy, run id,
    study URL, experiment, environment for the next invocation)."""
    proxy = _LookupProxy(mlflow_server.uri)
    name = f"lookup{uuid.uuid4().hex[:6]}"
    spec = write_spec(tmp_path, _grid_spec(tiny_corpus, name, [3e-3], checkpoint_every=4), name="lookup.yaml")
    env = {"MLFLOW_TRACKING_URI": proxy.url, "HARNESS_STAGING": str(tmp_path / "staging"), "HARNESS_TRACKING_RETRIES": "2",
           "HARNESS_TRACKING_BACKOFF": "0.05"}
    try:
        code, out = H.killed(["run", str(spec), "-q", "--workers", "1"], tmp_path, kill_at="step:6", **env)
        assert code == -9, out
        url = f"sqlite:///{tmp_path}/studies/{name}.db"
        (trial,) = _trials(url, name)
        yield spec, proxy, trial.user_attrs["mlflow_run_id"], url, name, env
    finally:
        proxy.close()


def _retry_with_lookup_refused(crashed: tuple, times: int | None) -> tuple[int, str]:
    """Run the sweep again; when its worker has taken the retry (held at trial_start), arm the proxy to refuse the
    run's lookup (``times`` times, or always); returns the exit code and output."""
    spec, proxy, run_id, _, _, env = crashed
    folder = Path(spec).parent
    taken = folder / f"taken-{time.monotonic_ns()}"
    proc, log = _start(["run", str(spec), "-q", "--workers", "1"], folder, **env, HARNESS_BARRIER_AT=f"trial_start:2:{taken}")
    try:
        _until(lambda: faults.arrived(taken) or not proc.is_alive(), 120, "the retry should have been taken", log)
        proxy.arm(run_id, times)
        faults.arrive(taken, "test")
        code = _exit_code(proc, log, 120, "the sweep should end")
    finally:
        _stop(proc)
    return code, log.read_text(errors="replace")


@pytest.mark.slow
def test_a_retried_trial_looks_its_run_up_again_after_a_transient_store_error(crashed_trial):
    spec, proxy, run_id, url, name, _ = crashed_trial
    code, out = _retry_with_lookup_refused(crashed_trial, times=2)
    assert code == 0, out
    assert proxy.refused == 2, "the lookup was refused twice, then answered"
    trials = _trials(url, name)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert trials[1].user_attrs["mlflow_run_id"] == run_id
    client = MlflowClient(tracking_uri=proxy.url)
    run = _one_resumed_run(client, name)
    assert run.info.run_id == run_id, "the retry resumed the trial's run instead of starting a new one"
    assert run.data.tags["harness.resumed_from_step"] == "4"


@pytest.mark.slow
def test_a_retried_trial_whose_run_cannot_be_looked_up_is_queued_again_not_restarted(crashed_trial):
    spec, proxy, run_id, url, name, _ = crashed_trial
    code, out = _retry_with_lookup_refused(crashed_trial, times=None)
    assert code == 2, out
    assert proxy.refused == 3, "the lookup was tried 1 + HARNESS_TRACKING_RETRIES times"
    assert run_id in out and "queued again" in out, out
    trials = _trials(url, name)
    # the killed attempt (reaped), the retry whose lookup failed (queued again with its run), and its queued retry
    assert _states(trials[:2]) == [(TrialState.FAIL, "crashed")] * 2
    assert trials[2].state == TrialState.WAITING
    assert {t.user_attrs["mlflow_run_id"] for t in trials} == {run_id}
    client = MlflowClient(tracking_uri=proxy.url)
    assert [r.info.run_id for r in _child_runs(client, name)] == [run_id], "no new run was started"

    proxy.arm(run_id, 0)  # the store is back
    code, out = H.killed(["run", str(spec), "-q", "--workers", "1"], Path(spec).parent, **crashed_trial[5])
    assert code == 0, out
    assert [t.state for t in _trials(url, name)][-1] == TrialState.COMPLETE
    assert _one_resumed_run(client, name).data.tags["harness.resumed_from_step"] == "4"
