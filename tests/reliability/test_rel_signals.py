"""SIGTERM and Ctrl-C (SIGINT) sent to real `harness run` processes in the middle of training.

Three processes run at once, each on its own store: a run that gets SIGTERM, a run that gets SIGINT and a sweep that
gets SIGTERM. Each must checkpoint, flush its metrics, end its MLflow run KILLED with stop_reason=interrupted and exit
128+signal. `harness resume` (or the same sweep command again) then finishes with every step logged once.

Each process waits at a barrier (HARNESS_BARRIER_AT, see harness.testing.faults) right after its SIGNAL_AT-th
optimizer step, with its signal handler in place; the test sends the signal and then releases it. So every process is
signalled at exactly that step, however busy the machine is.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from pathlib import Path

import rel_helpers as H
from conftest import trial_params, write_spec
from optuna.trial import TrialState

from harness.cli import main
from harness.testing import faults
from harness.train.checkpoint import load_checkpoint

STEPS, EVAL, SIGNAL_AT = 200, 40, 10


def test_sigterm_and_sigint_checkpoint_end_killed_and_resume(tmp_path, tiny_corpus, monkeypatch, capsys):
    procs = {}
    for sig in (signal.SIGTERM, signal.SIGINT, "sweep"):
        name = sig if sig == "sweep" else sig.name.lower()
        folder = tmp_path / name
        folder.mkdir()
        H.seed_store(folder)
        raw = H.rel_spec(tiny_corpus, name, steps=STEPS, eval_every=EVAL, checkpoint_every=10)
        if sig == "sweep":
            raw["sweep"] = {"params": {"train.optimizer.lr": [3e-3, 1e-2]}}
        spec = write_spec(folder, raw)
        # Held after step SIGNAL_AT until the test (the second party) has sent the signal.
        procs[sig] = (folder, H.harness_popen(["run", str(spec), "-q"], folder, folder / "out.log",
                                              MLFLOW_TRACKING_URI=f"sqlite:///{folder}/mlruns/mlflow.db",
                                              HARNESS_BARRIER_AT=f"step@{SIGNAL_AT}:2:{folder / 'barrier'}"))
    try:
        waiting = dict(procs)
        deadline = time.monotonic() + 180
        while waiting and time.monotonic() < deadline:
            for sig, (folder, proc) in list(waiting.items()):
                if faults.arrived(folder / "barrier"):  # the process is at the barrier: training, its handler in place
                    assert faults.arrived(folder / "barrier") == [str(proc.pid)]
                    proc.send_signal(signal.SIGTERM if sig == "sweep" else sig)
                    faults.arrive(folder / "barrier", "test")
                    del waiting[sig]
                else:
                    assert proc.poll() is None, f"{sig}: harness exited ({proc.returncode}) before training started"
            time.sleep(0.02)
        assert not waiting, f"{list(waiting)} never reached step {SIGNAL_AT}"
        codes = {sig: proc.wait(timeout=120) for sig, (folder, proc) in procs.items()}
    finally:
        for folder, proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    sweep_folder, sweep_code = procs.pop("sweep")[0], codes.pop("sweep")
    for sig, (folder, proc) in procs.items():
        out = (folder / "out.log").read_text()
        assert codes[sig] == 128 + sig, f"{sig.name}: exit {codes[sig]}\n{out}"
        assert "Traceback" not in out and "stop_reason=interrupted" in out, out
        client = H.store(folder)
        (r,) = H.runs(client, sig.name.lower())
        assert (r.info.status, r.data.tags["stop_reason"]) == ("KILLED", "interrupted")
        assert f"harness resume {r.info.run_id}" in out
        stopped = int(r.data.tags["harness.steps"])
        assert stopped == SIGNAL_AT, "the run stops at the first step boundary after the signal"
        ckpt = load_checkpoint(Path(r.info.artifact_uri) / "checkpoints" / "last.pt")
        assert ckpt["trainer"]["step"] == stopped, "the checkpoint is taken where the run stopped"
        assert H.steps(client, r.info.run_id, "train/loss") == list(range(stopped)), "metrics were flushed before exiting"

        monkeypatch.chdir(folder)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder}/mlruns/mlflow.db")
        capsys.readouterr()
        assert main(["resume", r.info.run_id, "-q"]) == 0
        assert "resuming from" in capsys.readouterr().out
        r = client.get_run(r.info.run_id)
        assert (r.info.status, r.data.tags["stop_reason"]) == ("FINISHED", "completed")
        assert H.steps(client, r.info.run_id, "train/loss") == list(range(STEPS))
        assert H.steps(client, r.info.run_id, "val/loss") == list(range(0, STEPS + 1, EVAL))

    # The sweep: exit 143, the trial's run and the parent run KILLED/interrupted, the trial queued again; the same
    # command then finishes the sweep, continuing the interrupted trial's MLflow run.
    out = (sweep_folder / "out.log").read_text()
    assert sweep_code == 143, f"sweep: exit {sweep_code}\n{out}"
    assert "Traceback" not in out and "run the same command again to resume" in out, out
    client = H.store(sweep_folder)
    runs = H.runs(client, "sweep")
    assert Counter((r.data.tags["harness.role"], r.info.status, r.data.tags["stop_reason"]) for r in runs) == Counter({
        ("sweep", "KILLED", "interrupted"): 1, ("trial", "KILLED", "interrupted"): 1})
    (victim,) = [t for t in H.study(sweep_folder, "sweep").get_trials() if t.state == TrialState.FAIL]
    assert victim.user_attrs["stop_reason"] == "interrupted"
    monkeypatch.chdir(sweep_folder)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{sweep_folder}/mlruns/mlflow.db")
    assert main(["run", str(sweep_folder / "spec.yaml"), "-q"]) == 0
    study = H.study(sweep_folder, "sweep")
    trials = study.get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(trial_params(study, t)["train.optimizer.lr"] for t in complete) == [3e-3, 1e-2]
    assert victim.user_attrs["mlflow_run_id"] in {t.user_attrs["mlflow_run_id"] for t in complete}, "the retry resumed the run"
    children = [r for r in H.runs(client, "sweep") if r.data.tags["harness.role"] == "trial"]
    assert len(children) == 2 and all(r.info.status == "FINISHED" for r in children)
    for r in children:
        assert H.steps(client, r.info.run_id, "train/loss") == list(range(STEPS))
