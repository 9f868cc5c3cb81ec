"""Fault injection for the reliability tests: make this process die, or a write fail, at a named point.

``HARNESS_KILL_AT="<point>:<n>"`` sends SIGKILL to the current process the n-th time (1-based) execution passes
``point``. Points: ``step`` (after an optimizer step), ``eval`` (inside an evaluation), ``checkpoint_write`` (after the
temp file is written, before the rename), ``flush`` (after a metric batch is written), ``run_setup`` (the MLflow run
exists but is not set up yet), ``finish`` (training is over; the run's summary, plots, sample and uploads begin), and
in sweeps ``trial_start`` (a trial is claimed in the study, before its MLflow run exists), ``trial_end`` (the
trial's run has ended, before the study is told), ``fence`` (a worker decided to stop its trial: no heartbeat
recorded for the fence period, or its trial was ended by another worker), ``driver_gone`` (a worker process noticed
its driver is gone, after sending itself SIGTERM) and ``study_lock`` (a process is about to take the study lock).

``HARNESS_FAIL_AT="checkpoint_write:<n>"`` makes the n-th checkpoint write run out of disk space part-way through:
the stream that ``torch.save`` writes to raises ``OSError(ENOSPC)`` after a few bytes, as a full disk would.

``HARNESS_BARRIER_AT="<point>:<parties>:<folder>"`` holds each process the first time it passes ``point`` (or the
n-th time, with ``<point>@<n>``) until ``parties`` have arrived there: on arrival a process writes a file named after
its pid into ``folder`` (see :func:`arrive`), then waits until ``folder`` holds ``parties`` files. It makes a
concurrency test deterministic: with ``trial_start:2:DIR`` and two sweep workers, both workers have each claimed a
trial before either runs one. A test can itself be a party: it calls ``arrive(folder, "test")`` once it has done what
the waiting processes must see (e.g. sent them a signal). Every other pass goes straight on. Several barriers are
separated by ``;``. A barrier not complete within ``HARNESS_BARRIER_TIMEOUT`` seconds (default 120) raises
:class:`BarrierTimeout`.

Unset, each costs one dict lookup per call.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from pathlib import Path
from typing import Any

__all__ = ["BarrierTimeout", "arrive", "arrived", "point", "wait_at_barrier", "writer"]

_counts: dict[str, int] = {}
_fail_counts: dict[str, int] = {}
_barrier_counts: dict[tuple[int, str], int] = {}  # (pid, barrier spec) -> passes: a forked child starts afresh


class BarrierTimeout(RuntimeError):
    """A ``HARNESS_BARRIER_AT`` barrier was not complete in time: the other parties never arrived."""


def _target(var: str) -> tuple[str, int] | None:
    raw = os.environ.get(var)
    if not raw:
        return None
    name, _, n = raw.partition(":")
    return name, int(n or 1)


def point(name: str) -> None:
    _barrier(name)
    target = _target("HARNESS_KILL_AT")
    if target is None or target[0] != name:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] == target[1]:
        os.kill(os.getpid(), signal.SIGKILL)


def _barrier(name: str) -> None:
    raw = os.environ.get("HARNESS_BARRIER_AT")
    if not raw:
        return
    for spec in raw.split(";"):
        where, _, rest = spec.partition(":")
        at, _, nth = where.partition("@")
        if at != name:
            continue
        parties, _, folder = rest.partition(":")
        key = (os.getpid(), spec)
        _barrier_counts[key] = _barrier_counts.get(key, 0) + 1
        if _barrier_counts[key] == int(nth or 1):
            wait_at_barrier(Path(folder), int(parties), str(os.getpid()))


def arrive(folder: str | Path, me: str) -> None:
    """Mark ``me`` as arrived at the barrier in ``folder``, without waiting (how a test joins a barrier)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{me}.tmp"
    tmp.write_text(str(time.time()))
    tmp.replace(folder / me)  # a party appears whole or not at all


def arrived(folder: str | Path) -> list[str]:
    """The parties that have arrived at the barrier in ``folder`` (process ids, or the names tests gave themselves)."""
    folder = Path(folder)
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) if folder.is_dir() else []


def wait_at_barrier(folder: str | Path, parties: int, me: str, timeout: float | None = None) -> None:
    """Arrive at the barrier in ``folder`` as ``me`` and wait until ``parties`` have arrived (see the module doc)."""
    arrive(folder, me)
    limit = timeout if timeout is not None else float(os.environ.get("HARNESS_BARRIER_TIMEOUT", "120"))
    deadline = time.monotonic() + limit
    while True:
        here = arrived(folder)
        if len(here) >= parties:
            return
        if time.monotonic() > deadline:
            raise BarrierTimeout(f"barrier {folder}: {len(here)} of {parties} parties arrived in {limit:.0f}s ({here})")
        time.sleep(0.02)


class _DiskFull:
    """A write stream that accepts ``budget`` bytes and then fails like a full disk."""

    def __init__(self, fh: Any, budget: int = 512):
        self._fh = fh
        self._left = budget

    def write(self, data: Any) -> int:
        data = bytes(data)
        if len(data) > self._left:
            self._fh.write(data[: self._left])
            self._left = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._left -= len(data)
        return self._fh.write(data)

    def flush(self) -> None:
        self._fh.flush()


def writer(fh: Any, name: str) -> Any:
    """``fh`` itself, or (the n-th time ``HARNESS_FAIL_AT`` names ``name``) a stream that fails with ENOSPC."""
    target = _target("HARNESS_FAIL_AT")
    if target is None or target[0] != name:
        return fh
    _fail_counts[name] = _fail_counts.get(name, 0) + 1
    return _DiskFull(fh) if _fail_counts[name] == target[1] else fh
