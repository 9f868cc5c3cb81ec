"""Fault injection for the reliability tests: make this process die, or a write fail, at a named point.

``HARNESS_KILL_AT="<point>:<n>"`` sends SIGKILL to the current process the n-th time (1-based) execution passes
``point``. Points: ``step`` (after an optimizer step), ``eval`` (inside an evaluation), ``checkpoint_write`` (after the
temp file is written, before the rename), ``flush`` (after a metric batch is written), ``run_setup`` (the MLflow run
exists but is not set up yet), and in sweeps ``trial_start`` (a trial is claimed in the study, before its MLflow run
exists) and ``trial_end`` (the trial's run has ended, before the study is told).

``HARNESS_FAIL_AT="checkpoint_write:<n>"`` makes the n-th checkpoint write run out of disk space part-way through:
the stream that ``torch.save`` writes to raises ``OSError(ENOSPC)`` after a few bytes, as a full disk would.

Unset, each costs one dict lookup per call.
"""

from __future__ import annotations

import errno
import os
import signal
from typing import Any

__all__ = ["point", "writer"]

_counts: dict[str, int] = {}
_fail_counts: dict[str, int] = {}


def _target(var: str) -> tuple[str, int] | None:
    raw = os.environ.get(var)
    if not raw:
        return None
    name, _, n = raw.partition(":")
    return name, int(n or 1)


def point(name: str) -> None:
    target = _target("HARNESS_KILL_AT")
    if target is None or target[0] != name:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] == target[1]:
        os.kill(os.getpid(), signal.SIGKILL)


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
