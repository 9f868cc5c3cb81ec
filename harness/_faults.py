"""Fault injection for the reliability tests: make this process kill itself at a named point.

``HARNESS_KILL_AT="<point>:<n>"`` sends SIGKILL to the current process the n-th time (1-based) execution passes
``point``. Points: ``step`` (after an optimizer step), ``eval`` (inside an evaluation), ``checkpoint_write`` (after the
temp file is written, before the rename) and ``flush`` (after a metric batch is written). Unset, it costs one dict
lookup per call.
"""

from __future__ import annotations

import os
import signal

__all__ = ["point"]

_counts: dict[str, int] = {}


def _target() -> tuple[str, int] | None:
    raw = os.environ.get("HARNESS_KILL_AT")
    if not raw:
        return None
    name, _, n = raw.partition(":")
    return name, int(n or 1)


def point(name: str) -> None:
    target = _target()
    if target is None or target[0] != name:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] == target[1]:
        os.kill(os.getpid(), signal.SIGKILL)
