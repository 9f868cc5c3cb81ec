"""The MLflow UI as a person sees it, in a real browser (headless Chromium): ``harness ui`` on a store that holds the
quick start's learning-rate sweep (cut to a few steps) and a run finetuned from its best trial's logged model, both
made by the ``harness`` command in a git repository.

The runs page at the address ``harness ui`` prints is the training view (not MLflow's GenAI overview) and shows each
trial with its dataset, source and model; the finetuned run's page shows its description, dataset, source commit and
model. The server listens on a second loopback address (127.0.0.2: MLflow's UI opens its assistant panel on
localhost only, and the address checks ``harness ui`` must pass are exercised too).

One store for the module (a sweep, a finetuned run, one server). The runs page's screenshot is written to the test's
folder, and also to $HARNESS_UI_SCREENSHOT when set (how docs/mlflow-runs.png is made). Without Chromium the tests
skip, naming what is missing; under HARNESS_REQUIRE_SERVERS=1 (CI) they fail instead.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from conftest import child_env
from servers import SECOND_LOOPBACK, ServerUnavailable, _unavailable, free_port
from mlflow import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT = os.environ.get("HARNESS_UI_SCREENSHOT")  # read at import: the test fixtures clear HARNESS_* variables
STEPS = "30"  # HARNESS_MAX_STEPS for the sweep: one epoch of the quick start's 20
BROWSER_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    _unavailable(ServerUnavailable("Chromium is not installed, so the MLflow UI cannot be checked in a browser; on Debian or "
                                   "Ubuntu: apt-get install chromium (.ci/run installs it)"))
    raise AssertionError("unreachable")


def _host() -> str:
    """127.0.0.2 where this machine routes it (Linux routes all of 127.0.0.0/8 to lo), else 127.0.0.1."""
    with socket.socket() as s:
        try:
            s.bind((SECOND_LOOPBACK, 0))
        except OSError:
            return "127.0.0.1"
    return SECOND_LOOPBACK


def _command() -> list[str]:
    """The ``harness`` command as a person types it (the runs' Source then reads "harness run ..."), else python -m harness."""
    script = Path(sys.executable).with_name("harness")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "harness"]


def _harness(args: list[str], folder: Path, env: dict[str, str], timeout: float = 300) -> str:
    out = subprocess.run([*_command(), *args], cwd=folder, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"harness {' '.join(args)} exited {out.returncode}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


def _git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args], cwd=folder, check=True,
                          capture_output=True, text=True).stdout.strip()


def _start_ui(folder: Path, env: dict[str, str], host: str) -> tuple[subprocess.Popen[str], list[str]]:
    """``harness ui`` in its own process group; returns it and what it printed up to its last address line."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "harness", "ui", "--host", host, "--port", str(port)], cwd=folder, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip())
        if "keeps the training view" in line:
            return proc, lines
    _stop(proc)
    raise AssertionError("harness ui did not print its addresses:\n" + "\n".join(lines[-40:]))


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # harness ui stops the mlflow server's whole process group, then exits
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    if proc.stdout is not None:
        proc.stdout.close()


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Any:
    chromium = _chromium()
    folder = tmp_path_factory.mktemp("ui-browser")
    (folder / "mlruns").mkdir()
    shutil.copy(ROOT / "experiments" / "lr_sweep.yaml", folder / "lr_sweep.yaml")
    _git(folder, "init", "-q", "-b", "main")
    _git(folder, "add", "lr_sweep.yaml")
    _git(folder, "commit", "-qm", "the quick start's sweep")
    uri = f"sqlite:///{folder}/mlruns/mlflow.db"
    env = child_env(MLFLOW_TRACKING_URI=uri, HARNESS_MAX_STEPS=STEPS, TMPDIR=str(folder))
    _harness(["run", "lr_sweep.yaml", "-q"], folder, env)
    client = MlflowClient(tracking_uri=uri)
    sweep = client.get_experiment_by_name("lr_sweep")
    parent = client.search_runs([sweep.experiment_id], "tags.`harness.role` = 'sweep'")[0]
    best = client.get_run(parent.data.tags["harness.best_run_id"])
    model_id = best.outputs.model_outputs[0].model_id
    finetune = {"name": "lr_sweep_ft", "seed": 7, "init": {"from": f"models:/{model_id}"},
                "data": {"corpus": "shakespeare/sonnets", "max_chars": 1207, "seq_len": 64, "val_fraction": 0.15},
                "train": {"max_steps": 10, "batch_size": 16, "optimizer": {"name": "adamw", "lr": 1.0e-4}, "eval": {"every_steps": 5, "batches": 2}},
                "tracking": {"experiment": "lr_sweep_finetune", "sample_tokens": 0}}
    (folder / "finetune.yaml").write_text(yaml.safe_dump(finetune, sort_keys=False), encoding="utf-8")
    _git(folder, "add", "finetune.yaml")
    _git(folder, "commit", "-qm", "a finetuned run")
    _harness(["run", "finetune.yaml", "-q"], folder, env)
    tuned_exp = client.get_experiment_by_name("lr_sweep_finetune")
    tuned = client.search_runs([tuned_exp.experiment_id])[0]
    proc, printed = _start_ui(folder, child_env(python_warnings=None, MLFLOW_TRACKING_URI=uri, TMPDIR=str(folder)), _host())
    try:
        yield SimpleNamespace(chromium=chromium, folder=folder, client=client, printed=printed, sweep=sweep, parent=parent, best=best,
                              model_id=model_id, tuned=tuned, tuned_exp=tuned_exp, commit=_git(folder, "rev-parse", "HEAD"),
                              source=best.data.tags["mlflow.source.name"],
                              trials=client.search_runs([sweep.experiment_id], "tags.`harness.role` = 'trial'"))
    finally:
        _stop(proc)


def _browse(ui: Any, url: str, *, ready: str, models: frozenset[str] | set[str] = frozenset(), screenshot: Path | None = None,
            size: str = "1400,640") -> tuple[str, str]:
    """The page at ``url`` as headless Chromium renders it: (its DOM, its visible text). The page is loaded again with
    more virtual time when ``ready`` is not in its text yet, or a link to one of ``models`` is not in it (the UI fetches
    runs, then their models, after it draws its frame)."""
    for budget in (20000, 45000):
        profile = tempfile.mkdtemp(prefix="chromium-", dir=ui.folder)
        try:
            flags = [ui.chromium, *BROWSER_FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget}", f"--window-size={size}"]
            dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=180).stdout
            text = html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S))))
            if ready in text and all(f"/models/{m}" in dom for m in models):
                if screenshot is not None:
                    subprocess.run([*flags, f"--screenshot={screenshot}", url], capture_output=True, timeout=180, check=True)
                return dom, text
        finally:
            shutil.rmtree(profile, ignore_errors=True)
    raise AssertionError(f"{url} never showed {ready!r}; it showed: {text[:1500]}")


def _address(ui: Any, experiment: str) -> str:
    line = next((ln for ln in ui.printed if ln.strip().startswith(experiment + " ")), None)
    assert line is not None, "harness ui did not print the experiment's address:\n" + "\n".join(ui.printed)
    return line.split()[-1]


def test_harness_ui_prints_the_training_view_of_each_experiment(ui):
    url = _address(ui, "lr_sweep")
    assert "workflowType=machine_learning" in url and f"/#/experiments/{ui.sweep.experiment_id}/runs?" in url
    assert any("ready: open" in ln and "workflowType=machine_learning" in ln for ln in ui.printed)
    assert ui.client.get_experiment(ui.sweep.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"


def test_the_server_answers_the_ui_on_its_address(ui):
    """On 127.0.0.2 MLflow refused the page (Invalid Host header, 400) and the UI's searches (cross-origin, 403) until
    harness ui named the address (--allowed-hosts, --cors-allowed-origins)."""
    import json
    import urllib.error
    import urllib.request

    base = _address(ui, "lr_sweep").split("/#/")[0]

    def status(req: urllib.request.Request) -> int:
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    assert status(urllib.request.Request(base + "/")) == 200
    search = urllib.request.Request(base + "/ajax-api/2.0/mlflow/experiments/search", method="POST", data=json.dumps({"max_results": 5}).encode(),
                                    headers={"Content-Type": "application/json", "Origin": base})
    assert status(search) == 200


def test_the_runs_page_shows_trials_datasets_sources_and_models(ui, tmp_path):
    shot = tmp_path / "mlflow-runs.png"
    made = {o.model_id for t in ui.trials for o in ui.client.get_run(t.info.run_id).outputs.model_outputs}
    assert len(made) == len(ui.trials)  # every trial finished and made its model
    dom, text = _browse(ui, _address(ui, "lr_sweep"), ready="lr_sweep-t002", models=made, screenshot=shot)
    assert text.lstrip().startswith("Runs - Experiment") and "Run Name" in text  # the training view's runs table
    assert "No data available" not in text and "Token Usage" not in text  # not the GenAI overview
    for t in ui.trials:
        assert t.info.run_name in text
    train = next(d.dataset for d in ui.best.inputs.dataset_inputs if any(tag.value == "train" for tag in d.tags))
    assert f"shakespeare/sonnets ({train.digest})" in text
    assert " run lr_sweep.yaml" in dom and ui.source.startswith(("harness run", "python -m harness run"))  # the Source column
    links = set(re.findall(rf'href="#/experiments/{ui.sweep.experiment_id}/models/(m-[0-9a-f]+)"', dom))
    assert links == made  # every trial's model, linked
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if SCREENSHOT:
        shutil.copy(shot, SCREENSHOT)


def test_a_finetuned_runs_page_shows_what_it_is_and_where_it_came_from(ui):
    url = f"{_address(ui, 'lr_sweep_finetune').split('/#/')[0]}/#/experiments/{ui.tuned_exp.experiment_id}/runs/{ui.tuned.info.run_id}?workflowType=machine_learning"
    dom, text = _browse(ui, url, ready="Logged models", size="1280,1000")
    assert f"Finetuned from model {ui.model_id}" in text  # the description, rendered
    assert f"Source {ui.tuned.data.tags['mlflow.source.name']} main {ui.commit[:7]}" in text  # the command, branch and commit
    train = next(d.dataset for d in ui.tuned.inputs.dataset_inputs if any(tag.value == "train" for tag in d.tags))
    assert f"Datasets shakespeare/sonnets ({train.digest}) train" in text  # its training data, named, with its digest
    own = ui.tuned.outputs.model_outputs[0].model_id
    assert "Logged models (1)" in text and f'models/{own}"' in dom  # the model it made, linked
