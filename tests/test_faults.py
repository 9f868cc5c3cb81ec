"""The test-only barrier of harness.testing.faults (HARNESS_BARRIER_AT), which the concurrency tests rely on."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import child_env

from harness.testing import faults


def test_a_barrier_holds_the_nth_pass_until_every_party_has_arrived(tmp_path, monkeypatch):
    folder = tmp_path / "barrier"
    monkeypatch.setenv("HARNESS_BARRIER_AT", f"step@2:2:{folder}")
    faults.point("step")  # the first pass is not the barrier's
    faults.point("eval")  # nor is another point
    assert faults.arrived(folder) == []
    faults.arrive(folder, "test")  # the other party is already there: the second pass goes straight through
    faults.point("step")
    assert faults.arrived(folder) == sorted([str(os.getpid()), "test"])
    faults.point("step")  # later passes do not wait again


def test_a_barrier_nobody_else_reaches_times_out(tmp_path, monkeypatch):
    folder = tmp_path / "barrier"
    monkeypatch.setenv("HARNESS_BARRIER_AT", f"trial_start:2:{folder}")
    monkeypatch.setenv("HARNESS_BARRIER_TIMEOUT", "0.2")
    with pytest.raises(faults.BarrierTimeout, match="1 of 2 parties arrived"):
        faults.point("trial_start")


def test_two_processes_meet_at_a_barrier(tmp_path):
    """Each of two real processes is held until the other has arrived: neither passes before both are there."""
    folder = tmp_path / "barrier"
    code = ("import sys; from harness.testing import faults; faults.point('trial_start'); "
            f"print(len(faults.arrived({str(folder)!r})))")
    env = child_env(HARNESS_BARRIER_AT=f"trial_start:2:{folder}", HARNESS_BARRIER_TIMEOUT="60")
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        outs = [p.communicate(timeout=90)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert [p.returncode for p in procs] == [0, 0]
    assert outs == ["2\n", "2\n"]
    assert faults.arrived(folder) == sorted(str(p.pid) for p in procs)
