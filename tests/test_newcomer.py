"""What a newcomer stumbled on, each reproduced: a second store from a subfolder, short run ids, --set suggestions,
the results order, the progress line at 80 columns, and an interrupted trial's verdict."""

from __future__ import annotations

import collections
import io
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import child_env, write_spec

from harness.cli import main
from harness.job import run
from harness.spec import spec_from_dict
from harness.sweep import run_sweep

ROOT = Path(__file__).resolve().parents[1]


def test_a_run_from_a_subfolder_uses_the_projects_store_and_leaves_git_status_clean(tmp_path, tiny_spec_dict):
    """From experiments/, the nearest folder above that holds mlruns/ is the project: no second store appears."""
    project = tmp_path / "project"
    (project / "experiments").mkdir(parents=True)
    (project / "mlruns").mkdir()
    (project / "studies").mkdir()
    shutil.copy(ROOT / ".gitignore", project / ".gitignore")
    for keep in ("mlruns", "studies"):
        (project / keep / ".gitkeep").write_text("")
    spec = dict(tiny_spec_dict, sweep={"sampler": "grid", "params": {"train.optimizer.lr": [1e-3, 2e-3]}})
    write_spec(project / "experiments", spec, name="s.yaml")
    env = {k: v for k, v in child_env().items() if not k.startswith("MLFLOW_")}
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], cwd=project, check=True)
    subprocess.run([*git, "add", "-A"], cwd=project, check=True)
    subprocess.run([*git, "commit", "-qm", "init"], cwd=project, check=True)

    out = subprocess.run([sys.executable, "-m", "harness", "run", "s.yaml", "-q"], cwd=project / "experiments", env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert (project / "mlruns" / "mlflow.db").is_file() and (project / "studies" / "tiny.db").is_file()
    assert not (project / "experiments" / "mlruns").exists() and not (project / "experiments" / "studies").exists()
    assert f"tracking: sqlite:///{project.resolve() / 'mlruns' / 'mlflow.db'}" in out.stdout, "the summary names the store"
    status = subprocess.run(["git", "status", "--porcelain"], cwd=project, capture_output=True, text=True, check=True)
    assert status.stdout == ""


@pytest.fixture
def three_runs(tiny_spec_dict):
    return [run(spec_from_dict(dict(tiny_spec_dict, name=f"r{i}", tracking={"experiment": "short", "sample_tokens": 0}))).run_id
            for i in range(3)]


def test_short_run_ids_work_wherever_a_run_id_does(three_runs, tmp_path, capsys):
    a, b, _ = three_runs
    assert main(["compare", a[:8], b[:8], "--no-plot"]) == 0
    assert main(["plot", a[:8], "--kind", "loss", "--out", str(tmp_path / "loss.png")]) == 0
    assert main(["generate", a[:8], "--max-tokens", "5"]) == 0
    capsys.readouterr()
    assert main(["results", a[:8]]) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith(a[:8])
    # resume takes a prefix too: a finished run is refused by its full id, not as an unknown id
    assert main(["resume", a[:8]]) == 2
    assert f"run {a} already finished" in capsys.readouterr().err


def test_an_ambiguous_run_id_prefix_lists_the_matches(tiny_spec_dict, capsys):
    from harness.tracking import client_for

    client = client_for()
    exp = client.create_experiment("many")
    # Runs until two share a first character that is a letter: a digit-only selector such as "1" names an experiment
    # id first (as the summaries print them), so it would not test the prefix (6 of 16 first characters are letters).
    ids: list[str] = []
    while not any(n > 1 for c, n in collections.Counter(i[0] for i in ids).items() if c in "abcdef"):
        ids.append(client.create_run(exp).info.run_id)
    first = next(c for c, n in collections.Counter(i[0] for i in ids).most_common() if c in "abcdef" and n > 1)
    assert main(["compare", first, first]) == 2
    err = capsys.readouterr().err
    assert f"the run id prefix '{first}' is ambiguous" in err
    assert all(i in err for i in ids if i.startswith(first))


@pytest.mark.parametrize("path", ["train.lr", "lr", "learning_rate"])
def test_set_errors_blame_the_option_and_suggest_the_field(path, tmp_path, tiny_spec_dict, write_spec, capsys):
    spec = write_spec(tmp_path, tiny_spec_dict)
    assert main(["run", str(spec), "--set", f"{path}=1e-3", "-q"]) == 2
    err = capsys.readouterr().err
    assert "1 problem in --set:" in err
    assert f"1 problem in --set:\n  - {path}: unknown field path '{path}'; did you mean train.optimizer.lr?" in err
    assert str(spec) not in err


def test_results_of_a_sweep_list_the_best_trial_first_and_say_so(tiny_spec_dict, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    raw = dict(tiny_spec_dict, sweep={"sampler": "grid", "params": {"train.optimizer.lr": [1e-5, 3e-3, 1e-4]}})
    result = run_sweep(spec_from_dict(raw))
    best = result.best["run_id"]
    capsys.readouterr()
    assert main(["results", "tiny"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line[:8].strip() and len(line.split()[0]) == 8 and best.startswith(line.split()[0][:8])
            or (line.split() and len(line.split()[0]) == 8 and line.split()[1].startswith("tiny"))]
    assert rows[0].split()[0] == best[:8], "run ids as the other tables print them (issue 29.9)"
    table = out.split("\n\n")[0].splitlines()
    assert max(map(len, table)) <= 120, "the table fits the terminal (issue 29.9)"
    assert "sorted by best/val/loss, the sweep's objective (lowest first)" in out
    assert "store: sqlite:///" in out


@pytest.mark.parametrize("interactive", [True, False])
def test_progress_fits_80_columns_with_step_loss_val_and_eta(interactive):
    from harness.cli.progress import Progress
    from harness.train.events import EvalEnd, StepEnd

    buf = io.StringIO()
    progress = Progress(total=600, label="lr_sweep-t000", stream=buf, interactive=interactive, width=80, every_s=0)
    for step in range(130):
        progress(StepEnd(step=step, epoch=3, loss=1.23456, lr=3e-4, grad_norm=1.0, clipped=False, tokens_per_sec=41234.0))
    progress(EvalEnd(step=130, epoch=4, metrics={"val/loss": 2.3456}, improved=True, best=2.3))
    progress.close()
    lines = [line for line in buf.getvalue().replace("\r", "\n").splitlines() if line.strip()]
    assert lines and max(len(line) for line in lines) <= 80
    assert "130/600" in lines[-1] and "loss 1.2346" in lines[-1] and "val 2.3456" in lines[-1] and "eta " in lines[-1]


def test_ctrl_c_is_announced_at_once():
    from harness.cli.progress import Progress
    from harness.train.events import StepEnd, StopReason, Stopping

    buf = io.StringIO()
    progress = Progress(total=50, label="tiny", stream=buf, interactive=True, width=80)
    progress(StepEnd(step=0, epoch=0, loss=1.0, lr=1e-3, grad_norm=1.0, clipped=False, tokens_per_sec=1.0))
    progress(Stopping(step=7, reason=StopReason.INTERRUPTED, doing="saving a checkpoint, then writing the buffered metrics"))
    assert buf.getvalue().splitlines()[-1] == "[tiny] stopping at step 7: saving a checkpoint, then writing the buffered metrics"


class _InterruptAt:
    """A trial's progress callback that sends this process SIGINT during one trial, as Ctrl-C in a terminal would."""

    def __init__(self, label: str):
        self.label = label

    def __call__(self, event) -> None:
        from harness.train.events import StepEnd

        if self.label == "trial 1" and isinstance(event, StepEnd) and event.step == 2:
            os.kill(os.getpid(), signal.SIGINT)


def test_an_interrupted_trial_gets_no_verdict(tiny_spec_dict, sigint_guard):
    raw = dict(tiny_spec_dict, sweep={"sampler": "grid", "params": {"train.optimizer.lr": [1e-3, 2e-3, 3e-3]}})
    result = run_sweep(spec_from_dict(raw), progress=_InterruptAt)
    assert result.interrupted and result.signal == signal.SIGINT
    rows = {r["trial"]: r for r in result.table.to_dict("records")}
    interrupted = [r for r in rows.values() if r["stop_reason"] == "interrupted"]
    assert len(interrupted) == 1
    assert interrupted[0]["verdict"] == "interrupted" and interrupted[0]["objective"] != interrupted[0]["objective"]  # NaN
    assert rows[0]["verdict"] != "interrupted" and rows[0]["state"] == "COMPLETE"


def test_a_bad_step_cap_is_refused_before_a_run_exists(tmp_path, tiny_spec_dict, write_spec, monkeypatch, capsys):
    """HARNESS_MAX_STEPS (smoke runs) must be a positive whole number; anything else is exit 2 with nothing made."""
    from mlflow import MlflowClient

    from harness.cli import main

    monkeypatch.setenv("HARNESS_MAX_STEPS", "two")
    assert main(["run", str(write_spec(tmp_path, tiny_spec_dict)), "-q"]) == 2
    assert "HARNESS_MAX_STEPS must be a positive whole number of steps, not 'two'" in capsys.readouterr().err
    client = MlflowClient()
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []


def test_the_last_step_is_printed_once_with_its_own_evaluation():
    """Issue 29.7: `step 300/300 ... val 1.4959` (the previous evaluation's), then `... val 1.1711`."""
    from harness.cli.progress import Progress
    from harness.train.events import EvalEnd, StepEnd

    buf = io.StringIO()
    progress = Progress(total=6, label="t", stream=buf, interactive=False, width=80, every_s=0)
    for step in range(6):
        progress(StepEnd(step=step, epoch=0, loss=1.0, lr=1e-3, grad_norm=1.0, clipped=False, tokens_per_sec=10.0))
        if step in (2, 5):
            progress(EvalEnd(step=step + 1, epoch=0, metrics={"val/loss": 2.0 if step == 2 else 1.5}, improved=True, best=1.5))
    progress.close()
    last = [line for line in buf.getvalue().splitlines() if "6/6" in line]
    assert len(last) == 1 and "val 1.5000" in last[0], buf.getvalue()


def test_a_resumed_runs_first_line_has_no_eta_from_one_untimed_step():
    """Issue 29.6: a resumed run's first progress line said `eta 00:00`."""
    from harness.cli.progress import Progress
    from harness.train.events import StepEnd

    buf = io.StringIO()
    progress = Progress(total=1000, label="resume", stream=buf, interactive=False, width=80, every_s=0)
    progress(StepEnd(step=161, epoch=0, loss=1.0, lr=1e-3, grad_norm=1.0, clipped=False, tokens_per_sec=10.0))
    progress.close()
    assert buf.getvalue().splitlines()[0].endswith("eta ?"), buf.getvalue()


def test_a_classifiers_summary_shows_its_accuracy_and_what_trains_and_a_resume_labels_its_grad_scope(capsys):
    """Issue 29.4 and 29.6: the summary printed val/loss and 106,560 parameters though 128 trained, and a resume's
    `steps 1000` beside `clipped 0/839 steps` (the resumed part's)."""
    from harness.cli.output import print_run_summary
    from harness.job.outcome import RunOutcome
    from harness.train.events import StopReason

    out = RunOutcome(run_id="r" * 32, experiment="e", experiment_id="1", tracking_uri="sqlite:///x.db", status="FINISHED",
                     stop_reason=StopReason.COMPLETED, steps=1000, epochs=0, wall_time_s=1.0, best_metric=1.2, best_step=900,
                     final={"val/loss": 1.3, "val/accuracy": 0.77}, facts={"n_parameters": 106560, "trainable_parameters": 128},
                     resumed_from="checkpoints/step_161.pt", grad={"max": 1.0, "mean": 0.5, "final": 0.4, "clipped": 0, "steps": 839})
    print_run_summary(out)
    text = capsys.readouterr().out
    assert "val/accuracy final 0.7700" in text
    assert "106,560 parameters (128 train)" in text
    assert "clipped 0/839 steps (0.0%) (the 839 steps since the resume)" in text


def test_compare_shows_bits_per_character_and_leaves_system_metrics_out(tiny_spec_dict, capsys):
    """Issue 29.10: per-token losses of a char run and a BPE run side by side with no word; system/* rows by default."""
    import math

    from harness import results
    from harness.job import run

    a = run(spec_from_dict(dict(tiny_spec_dict, name="ca")))
    b = run(spec_from_dict(dict(tiny_spec_dict, name="cb", train={**tiny_spec_dict["train"], "optimizer": {"name": "adamw", "lr": 1e-2}})))
    cmp = results.compare([a.run_id, b.run_id], out=None)
    assert "bpc/val/loss" in cmp.metrics.index and not any(str(i).startswith("system/") for i in cmp.metrics.index)
    val = cmp.metrics.loc["val/loss"].tolist()
    assert cmp.metrics.loc["bpc/val/loss"].tolist() == [v / math.log(2) for v in val], "a char run: one token per character"
    capsys.readouterr()
    assert main(["compare", a.run_id, b.run_id, "--no-plot"]) == 0
    assert "bits per character" in capsys.readouterr().out
