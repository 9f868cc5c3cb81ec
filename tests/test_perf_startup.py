"""Start-up: the paused garbage collector (harness.collector) and sweep workers forked from a preloaded server."""

from __future__ import annotations

import gc
import re
import sys

import pytest
from conftest import CHILD_WARNINGS
from test_sweep import all_runs, base_spec, load_study, split_runs

from harness import collector
from harness.job import run
from harness.spec import spec_from_dict
from harness.sweep import run_sweep
from harness.sweep.worker import start_workers_early


@pytest.fixture
def restore_gc():
    """This test process's collector as it was: enabled, nothing frozen by the test."""
    enabled = gc.isenabled()
    yield
    collector.resume()
    gc.unfreeze()
    if enabled:
        gc.enable()


def test_resume_without_pause_changes_nothing(restore_gc):
    before = (gc.isenabled(), gc.get_freeze_count(), collector.paused())
    collector.resume()  # a library caller's run: nothing paused, so nothing frozen or switched
    assert (gc.isenabled(), gc.get_freeze_count(), collector.paused()) == before


def test_pause_stops_automatic_collection_until_resume(restore_gc):
    gc.enable()
    collector.pause()
    assert not gc.isenabled() and collector.paused()
    collector.pause()  # already off: still one resume away
    collector.resume()
    assert gc.isenabled() and not collector.paused() and gc.get_freeze_count() > 0


def test_a_run_started_paused_sets_up_without_collections_and_trains_with_them(tiny_spec_dict, monkeypatch, restore_gc):
    """What the harness command does: pause at start; the job resumes before the first step, freezing the start-up
    heap, and training (whose garbage must go) runs with the collector on."""
    collections: list[int] = []
    at_resume: list[int] = []
    at_step: list[tuple[bool, bool, int]] = []
    real_resume = collector.resume

    def resume() -> None:
        at_resume.append(len(collections))
        real_resume()

    def counted(phase: str, info: dict) -> None:
        if phase == "start":
            collections.append(info["generation"])

    def on_event(ev: object) -> None:
        if type(ev).__name__ == "StepEnd" and not at_step:
            at_step.append((gc.isenabled(), collector.paused(), gc.get_freeze_count()))

    monkeypatch.setattr(collector, "resume", resume)
    gc.enable()
    gc.callbacks.append(counted)
    try:
        collector.pause()
        out = run(spec_from_dict(tiny_spec_dict), callbacks=[on_event])
    finally:
        gc.callbacks.remove(counted)
    assert out.status == "FINISHED"
    assert at_resume[:1] == [0], "no automatic collection while the run was set up"
    enabled, paused, frozen = at_step[0]
    assert enabled and not paused and frozen > 0, "training runs with the collector on, the start-up heap frozen"


# Every command of the harness command line, with the arguments it needs to parse.
COMMANDS = {"run": ["x.yaml"], "resume": ["x"], "validate": ["x.yaml"], "corpora": [], "schema": [], "results": ["x"],
            "compare": ["x", "y"], "plot": ["x"], "ui": [], "dashboard": ["x"], "generate": ["x"], "prepare": ["x.yaml"],
            "cache": ["list"]}


def test_the_command_table_here_is_every_command():
    from harness.cli import build_parser

    help_text = build_parser().format_help()
    listed = re.findall(r"^    ([a-z]+)(?:\s|$)", help_text, flags=re.M)
    assert sorted(listed) == sorted(COMMANDS)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_the_harness_command_pauses_the_collector_only_to_set_up_a_run(command, monkeypatch, restore_gc):
    """`harness ui` and `harness dashboard` serve for hours, and every other command that trains nothing runs to its
    end: none runs with the collector paused. run and resume set up a run with it paused (the job resumes it)."""
    import harness.cli

    seen: list[bool] = []
    monkeypatch.setattr(harness.cli, "_main", lambda args: seen.append(gc.isenabled()) or 0)  # instead of the command
    monkeypatch.setattr(sys, "argv", ["harness", command, *COMMANDS[command]])
    gc.enable()
    assert harness.cli.main() == 0  # as the harness script: no argv
    assert seen == [command not in ("run", "resume")], f"harness {command}: collector {'on' if seen[0] else 'paused'}"
    assert gc.isenabled(), "the collector stays paused after the command"


def test_forked_workers_run_in_the_drivers_folder_and_environment(tmp_path, tmp_path_factory, monkeypatch):
    """The forkserver outlives a sweep: one started earlier, from another folder with other variables (here on
    purpose), still gives this sweep workers that write into this folder's store with this environment."""
    work = tmp_path
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{elsewhere}/mlflow.db")
    monkeypatch.setenv("PYTHONWARNINGS", CHILD_WARNINGS)  # the workers treat warnings as errors too
    start_workers_early()
    monkeypatch.chdir(work)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{work}/mlruns/mlflow.db")
    monkeypatch.setenv("HARNESS_MAX_STEPS", "4")  # read by each trial: proves the worker saw this environment
    run_sweep(spec_from_dict(base_spec(work)), workers=2)
    trials = load_study(work, "tinysweep-max4steps").get_trials()  # a step cap runs in a study of its own
    assert len(trials) == 3 and len({t.user_attrs["pid"] for t in trials}) >= 1
    parents, children = split_runs(all_runs(work))
    assert len(parents) == 1 and len(children) == 3
    assert sorted(r.data.tags["harness.steps"] for r in children) == ["4", "4", "4"]
    assert not (elsewhere / "mlruns").exists() and not (elsewhere / "studies").exists() and not (elsewhere / "mlflow.db").exists()
