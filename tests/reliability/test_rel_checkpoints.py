"""Checkpoints under attack: a full disk, an unwritable folder, truncated and corrupt files, a pickle payload."""

from __future__ import annotations

import errno
import os
import signal
import zipfile
from pathlib import Path

import pytest
import rel_helpers as H
import torch
from conftest import write_spec

from harness.cli import main
from harness.job import run
from harness.spec import spec_from_dict
from harness.testing import faults as _faults
from harness.train import StepEnd
from harness.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

STEPS = 12


@pytest.fixture
def fresh_faults(monkeypatch):
    monkeypatch.setattr(_faults, "_counts", {})
    monkeypatch.setattr(_faults, "_fail_counts", {})
    monkeypatch.delenv("HARNESS_FAIL_AT", raising=False)


def _state(step: int) -> dict:
    return {"model": {"w": torch.full((3,), float(step))}, "trainer": {"step": step}}


def _interrupt_at(step: int):
    """A trainer callback that sends this process a real SIGINT after ``step`` steps (the trainer's handler takes it)."""

    def cb(event):
        if isinstance(event, StepEnd) and event.step == step - 1:
            os.kill(os.getpid(), signal.SIGINT)

    return cb


def _interrupted_run(raw: dict, experiment: str, at: int = 9) -> tuple[str, Path]:
    one = {**raw, "tracking": {**raw["tracking"], "experiment": experiment}}
    out = run(spec_from_dict(one), callbacks=[_interrupt_at(at)])
    assert (out.status, out.stop_reason, out.steps) == ("KILLED", "interrupted", at)
    client = H.store(Path.cwd())
    return out.run_id, Path(client.get_run(out.run_id).info.artifact_uri) / "checkpoints"


def _reference(raw: dict) -> dict:
    out = run(spec_from_dict({**raw, "tracking": {**raw["tracking"], "experiment": "reference"}}))
    client = H.store(Path.cwd())
    return {k: H.history(client, out.run_id, k) for k in ("train/loss", "val/loss", "grad_norm")}


def _assert_matches(run_id: str, reference: dict) -> None:
    client = H.store(Path.cwd())
    r = client.get_run(run_id)
    assert (r.info.status, r.data.tags["stop_reason"]) == ("FINISHED", "completed")
    for key, want in reference.items():
        got = H.history(client, run_id, key)
        assert [s for s, _ in got] == [s for s, _ in want], f"{key}: a step is missing or logged twice"
        assert [v for _, v in got] == [v for _, v in want], f"{key}: values differ from the uninterrupted run"


class _Payload:
    """Unpickling this runs ``touch <marker>``: what a malicious checkpoint would do under a plain torch.load."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ----------------------------------------------------------------------------------------------------------- writes


def test_full_disk_mid_write_is_a_clear_error_and_keeps_the_previous_checkpoint(tmp_path, fresh_faults, monkeypatch):
    path = tmp_path / "ckpt" / "last.pt"
    save_checkpoint(_state(1), path, keep_previous=True)
    save_checkpoint(_state(2), path, keep_previous=True)
    before = {p.name: p.read_bytes() for p in path.parent.iterdir()}
    monkeypatch.setenv("HARNESS_FAIL_AT", "checkpoint_write:1")
    with pytest.raises(CheckpointError) as err:
        save_checkpoint(_state(3), path, keep_previous=True)
    assert str(path) in str(err.value) and os.strerror(errno.ENOSPC) in str(err.value)
    assert {p.name: p.read_bytes() for p in path.parent.iterdir()} == before, "last.pt and prev.pt untouched, no temp file left"
    assert load_checkpoint(path)["trainer"]["step"] == 2


def test_unwritable_checkpoint_folder_is_a_clear_error(tmp_path, fresh_faults):
    blocker = tmp_path / "checkpoints"
    blocker.write_text("a regular file where the checkpoint folder should be")
    with pytest.raises(CheckpointError, match="cannot create checkpoint folder"):
        save_checkpoint(_state(1), blocker / "last.pt")
    # The folder exists but the temp file cannot be created (a directory squats on its name): the old files stay.
    path = tmp_path / "ok" / "last.pt"
    save_checkpoint(_state(1), path, keep_previous=True)
    save_checkpoint(_state(2), path, keep_previous=True)
    before = {p.name: p.read_bytes() for p in path.parent.iterdir() if p.is_file()}
    (path.parent / f".last.pt.{os.getpid()}.tmp").mkdir()
    with pytest.raises(CheckpointError, match=r"cannot write checkpoint .*last\.pt.*previous checkpoint is untouched"):
        save_checkpoint(_state(3), path, keep_previous=True)
    assert {p.name: p.read_bytes() for p in path.parent.iterdir() if p.is_file()} == before
    assert load_checkpoint(path)["trainer"]["step"] == 2


def test_disk_full_during_a_run_exits_2_keeps_the_last_checkpoint_and_resume_finishes(tmp_path, tiny_corpus, fresh_faults, monkeypatch,
                                                                                    capsys):
    H.seed_store(tmp_path)
    raw = H.rel_spec(tiny_corpus, "diskfull", steps=STEPS, eval_every=4, checkpoint_every=6)
    spec_file = write_spec(tmp_path, raw)
    reference = _reference(raw)
    capsys.readouterr()
    # Writes: best+last at step 0, then best?/last at step 4: the 4th write is at step 4 or 6, never at step 0.
    monkeypatch.setenv("HARNESS_FAIL_AT", "checkpoint_write:4")
    assert main(["run", str(spec_file), "-q"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "internal error" not in err, err
    assert os.strerror(errno.ENOSPC) in err and "checkpoint" in err, err
    client = H.store(tmp_path)
    (r,) = H.runs(client, "diskfull")
    assert r.info.run_id in err and f"harness resume {r.info.run_id}" in err, "the message says which run and how to go on"
    assert (r.info.status, r.data.tags["stop_reason"]) == ("FAILED", "failed")
    folder = Path(r.info.artifact_uri) / "checkpoints"
    assert not list(folder.glob(".*.tmp")), "the failed write left no temp file"
    last = load_checkpoint(folder / "last.pt")  # intact, from before the failed write
    assert 0 <= last["trainer"]["step"] < 6
    monkeypatch.delenv("HARNESS_FAIL_AT")
    assert main(["resume", r.info.run_id, "-q"]) == 0
    _assert_matches(r.info.run_id, reference)


# ----------------------------------------------------------------------------------------------------------- reads


def test_resume_names_damaged_checkpoints_refuses_a_pickle_payload_and_falls_back(tmp_path, tiny_corpus, capsys, sigint_guard):
    H.seed_store(tmp_path)
    raw = H.rel_spec(tiny_corpus, "damaged", steps=STEPS, eval_every=4, checkpoint_every=3)
    reference = _reference(raw)
    marker = tmp_path / "PAYLOAD_RAN"

    # 1. last.pt truncated, prev.pt a pickle payload: resume says so for each and falls back to the periodic step-9.
    run_id, folder = _interrupted_run(raw, "damaged")
    assert {p.name for p in folder.glob("*.pt")} >= {"last.pt", "prev.pt", "step-00000009.pt"}
    data = (folder / "last.pt").read_bytes()
    (folder / "last.pt").write_bytes(data[: len(data) // 2])
    torch.save({"model": _Payload(marker), "trainer": {"step": 9}}, folder / "prev.pt")
    with zipfile.ZipFile(folder / "prev.pt") as z:  # it really is a payload: the pickle calls os.system
        pkl = next(n for n in z.namelist() if n.endswith("data.pkl"))
        assert b"system" in z.read(pkl)
    capsys.readouterr()
    assert main(["resume", run_id, "-q"]) == 0
    out = capsys.readouterr().out
    assert f"warning: {folder / 'last.pt'}: not a readable checkpoint (truncated or corrupt" in out, out
    assert f"warning: {folder / 'prev.pt'}: refused to load: it would import and call posix.system" in out, out
    assert f"resuming from {folder / 'step-00000009.pt'}" in out, out
    assert not marker.exists(), "the pickle payload ran"
    _assert_matches(run_id, reference)
    tags = H.store(tmp_path).get_run(run_id).data.tags
    assert "last.pt" in tags["harness.resume_warnings"] and "prev.pt" in tags["harness.resume_warnings"]

    # 2. Every checkpoint damaged: each is named with what is wrong, and resume says it starts over.
    run_id, folder = _interrupted_run(raw, "all-damaged")
    files = sorted(p for p in folder.glob("*.pt") if p.name != "best.pt")  # best.pt is never a resume candidate
    assert len(files) >= 5
    data = (folder / "last.pt").read_bytes()
    (folder / "last.pt").write_bytes(data[:100])
    (folder / "prev.pt").write_bytes(os.urandom(4096))
    (folder / "step-00000009.pt").write_bytes(b"")
    torch.save({"weights": torch.zeros(2)}, folder / "step-00000006.pt")  # a tensor file, not a harness checkpoint
    torch.save({"model": _Payload(marker)}, folder / "step-00000003.pt")
    for extra in set(files) - {folder / n for n in ("last.pt", "prev.pt", "step-00000009.pt", "step-00000006.pt", "step-00000003.pt")}:
        extra.write_bytes(b"junk")
    assert main(["resume", run_id, "-q"]) == 0
    out = capsys.readouterr().out
    for f in files:
        assert f"warning: {f}:" in out, f"{f.name} not named:\n{out}"
    assert "not a harness checkpoint (no model state)" in out and "refused to load" in out
    assert "no usable checkpoint" in out and "starting over from step 0" in out, out
    assert not marker.exists(), "the pickle payload ran"
    _assert_matches(run_id, reference)
