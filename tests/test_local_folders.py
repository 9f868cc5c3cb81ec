"""The folders harness keeps on this machine for a remote store (issue 20, defect 11): checkpoint staging and the
cache of downloaded source models live under the shared temp folder, so they must be this user's own; an unfinished
source run's download does not leave a new folder behind at every use; and a store error while looking for crashed
runs is said, not swallowed."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import pytest
from conftest import make_spec
from mlflow import MlflowClient
from servers import free_port

from harness.errors import UsageError
from harness.job import run
from harness.job.source import find_model
from harness.spec import spec_from_dict
from harness.tracking import TrackingError, client_for
from harness.tracking.liveness import reap_stale_runs
from harness.tracking.tracker import checkpoint_dir_for
from harness.train.events import StepEnd, StopReason, StopTraining


@pytest.fixture
def temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's own machine temp folder (what tempfile.gettempdir() answers)."""
    folder = tmp_path / "machine-tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def _default(temp: Path, name: str) -> Path:
    """Where harness keeps ``name`` under the temp folder, for this user."""
    (found,) = [p for p in temp.iterdir() if p.name.startswith(name)]
    return found


# ----------------------------------------------------------------------------------------------------------- staging


def test_staging_is_a_private_folder_of_this_user(temp):
    ckpt = checkpoint_dir_for("a" * 32, None)
    root = _default(temp, "harness-staging")
    assert ckpt == root / ("a" * 32) / "checkpoints"
    assert root.stat().st_uid == os.getuid() and stat.S_IMODE(root.stat().st_mode) & 0o077 == 0


@pytest.mark.parametrize("how", ["world-writable", "a link", "another user's"])
def test_a_staging_folder_others_control_is_refused(temp, tmp_path, monkeypatch, how):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    if how == "world-writable":
        theirs.chmod(0o777)
        monkeypatch.setenv("HARNESS_STAGING", str(theirs))
        says = "other users can write to it"
    elif how == "a link":
        (tmp_path / "link").symlink_to(theirs)
        monkeypatch.setenv("HARNESS_STAGING", str(tmp_path / "link"))
        says = "symbolic link"
    else:
        if os.getuid() != 0:
            pytest.skip("giving a folder to another user needs root")
        os.chown(theirs, 65534, 65534)
        monkeypatch.setenv("HARNESS_STAGING", str(theirs))
        says = "belongs to uid 65534"
    with pytest.raises(UsageError, match=says):
        checkpoint_dir_for("b" * 32, None)
    assert list(theirs.iterdir()) == []  # nothing was put there


def test_a_remote_run_with_an_unsafe_staging_folder_is_refused_before_it_exists(temp, tmp_path, tiny_corpus, monkeypatch, mlflow_server):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv("HARNESS_STAGING", str(shared))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    experiment = f"unsafe_staging_{os.getpid()}_{tmp_path.name}"
    with pytest.raises(UsageError, match="other users can write to it"):
        run(spec_from_dict(make_spec(tiny_corpus, name="unsafe", experiment=experiment)))
    assert MlflowClient(tracking_uri=mlflow_server.uri).get_experiment_by_name(experiment) is None
    assert list(shared.iterdir()) == []


# ----------------------------------------------------------------------------------------------------------- models


class _StopAt:
    def __init__(self, step: int):
        self.step = step

    def __call__(self, event) -> None:
        if isinstance(event, StepEnd) and event.step == self.step:
            raise StopTraining(StopReason.INTERRUPTED, "stopped by the test")


@pytest.fixture
def unfinished_remote_run(temp, tmp_path, tiny_corpus, monkeypatch, mlflow_server) -> str:
    """A KILLED (unfinished) run on the mlflow server, with uploaded checkpoints."""
    monkeypatch.setenv("HARNESS_STAGING", str(tmp_path / "staging"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    out = run(spec_from_dict(make_spec(tiny_corpus, name="src", steps=4, eval_every=2, experiment=f"src_{os.getpid()}_{tmp_path.name}")),
              callbacks=[_StopAt(2)])
    assert out.status == "KILLED"
    return out.run_id


def test_an_unfinished_source_run_is_fetched_into_one_folder(temp, unfinished_remote_run):
    """Before: every use of a source run still going made a new mkdtemp folder, never removed."""
    first = find_model(unfinished_remote_run)
    left = sorted(p.name for p in temp.iterdir())
    second = find_model(unfinished_remote_run)
    assert sorted(p.name for p in temp.iterdir()) == left
    assert first.checkpoint == second.checkpoint and second.checkpoint.is_file()
    root = _default(temp, "harness-models")
    assert second.checkpoint.is_relative_to(root)
    assert stat.S_IMODE(root.stat().st_mode) & 0o077 == 0


def test_a_model_cache_others_can_write_to_is_refused(temp, unfinished_remote_run):
    root = temp / f"harness-models-{os.getuid()}"
    root.mkdir()
    root.chmod(0o777)  # made by someone else first, for everyone to fill
    with pytest.raises(UsageError, match="other users can write to it"):
        find_model(unfinished_remote_run)
    assert list(root.iterdir()) == []


# ----------------------------------------------------------------------------------------------------------- reaping


def test_reaping_says_when_the_store_cannot_be_searched(monkeypatch):
    """Before: a store error while looking for crashed runs was swallowed (no runs reaped, nothing said)."""
    monkeypatch.setenv("HARNESS_TRACKING_RETRIES", "0")
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(TrackingError, match="crashed runs"):
        reap_stale_runs(client_for(url))
