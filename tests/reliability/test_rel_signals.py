"""SIGTERM and Ctrl-C (SIGINT) sent to real `harness run` processes in the middle of training.

Three processes run at once, each on its own store: a run that gets SIGTERM, a run that gets SIGINT and a sweep that
gets SIGTERM. Each must checkpoint, flush its metrics, end its MLflow run KILLED with stop_reason=interrupted and exit
128+signal. `harness resume` (or the same sweep command again) then finishes with every step logged once.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import rel_helpers as H
from optuna.trial import TrialState

from harness.train.checkpoint import load_checkpoint
from harness.cli import main

STEPS, EVAL = 200, 40


def test_sigterm_and_sigint_checkpoint_end_killed_and_resume(tmp_path, tiny_corpus, monkeypatch, capsys):
    procs = {}
    for sig in (signal.SIGTERM, signal.SIGINT, "sweep"):
        name = sig if sig == "sweep" else sig.name.lower()
        folder = tmp_path / name
        folder.mkdir()
        H.seed_store(folder)
        raw = H.tiny_spec(tiny_corpus, name=name, max_steps=STEPS, eval_every=EVAL, checkpoint_every=10)
        if sig == "sweep":
            raw["sweep"] = {"params": {"train.optimizer.lr": [3e-3, 1e-2]}}
        spec = H.write_yaml(folder / "spec.yaml", raw)
        procs[sig] = (folder, H.harness_popen(["run", str(spec), "-q"], folder, folder / "out.log",
                                              MLFLOW_TRACKING_URI=f"sqlite:///{folder}/mlruns/mlflow.db"))
        # Below this test's priority: on a busy box the poll below still sees each checkpoint as soon as it appears,
        # long before that process could finish training.
        os.setpriority(os.PRIO_PROCESS, procs[sig][1].pid, 10)
    try:
        # The periodic checkpoint of step 10: the process is training (its signal handler is in place). Signal each
        # process as soon as it gets there.
        waiting = dict(procs)
        deadline = time.monotonic() + 180
        while waiting and time.monotonic() < deadline:
            for sig, (folder, proc) in list(waiting.items()):
                if list(folder.glob("mlruns/*/*/artifacts/checkpoints/step-00000010.pt")):
                    proc.send_signal(signal.SIGTERM if sig == "sweep" else sig)
                    del waiting[sig]
                else:
                    assert proc.poll() is None, f"{sig}: harness exited ({proc.returncode}) before training started"
            time.sleep(0.02)
        assert not waiting, f"{list(waiting)} never started training"
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
        assert 10 <= stopped < STEPS
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
    assert {(r.data.tags["harness.role"], r.info.status, r.data.tags["stop_reason"]) for r in runs} == {
        ("sweep", "KILLED", "interrupted"), ("trial", "KILLED", "interrupted")}
    (victim,) = [t for t in H.study(sweep_folder, "sweep").get_trials() if t.state == TrialState.FAIL]
    assert victim.user_attrs["stop_reason"] == "interrupted"
    monkeypatch.chdir(sweep_folder)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{sweep_folder}/mlruns/mlflow.db")
    assert main(["run", str(sweep_folder / "spec.yaml"), "-q"]) == 0
    trials = H.study(sweep_folder, "sweep").get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(t.params["train.optimizer.lr"] for t in complete) == [3e-3, 1e-2]
    assert victim.user_attrs["mlflow_run_id"] in {t.user_attrs["mlflow_run_id"] for t in complete}, "the retry resumed the run"
    children = [r for r in H.runs(client, "sweep") if r.data.tags["harness.role"] == "trial"]
    assert len(children) == 2 and all(r.info.status == "FINISHED" for r in children)
    for r in children:
        assert H.steps(client, r.info.run_id, "train/loss") == list(range(STEPS))
