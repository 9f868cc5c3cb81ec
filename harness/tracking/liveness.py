"""Which runs are alive. Every run carries its owner's host and pid as tags from the moment it is created, so a
RUNNING run whose process is gone (kill -9, power loss) can be found and ended FAILED with ``stop_reason=crashed``."""

from __future__ import annotations

import os
import socket
from typing import Any

__all__ = ["mark_run_crashed", "owner_tags", "pid_alive", "reap_stale_runs", "run_is_live", "run_is_set_up"]


def owner_tags() -> dict[str, str]:
    """The tags that tie a run (or a sweep's parent run) to this process."""
    return {"harness.pid": str(os.getpid()), "harness.host": socket.gethostname()}


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _other_local_pid(tags: dict[str, str]) -> int | None:
    """The owner's pid when the run belongs to another process on this host, else None."""
    pid = tags.get("harness.pid")
    if tags.get("harness.host") != socket.gethostname() or not pid or not pid.isdigit() or int(pid) == os.getpid():
        return None
    return int(pid)


def run_is_live(run: Any) -> bool:
    """A RUNNING run whose process still exists. Another machine's run counts as live (its pid cannot be checked
    here); a run this process left RUNNING (the store went away) does not."""
    if run.info.status != "RUNNING":
        return False
    host = run.data.tags.get("harness.host")
    if host is not None and host != socket.gethostname():
        return True
    pid = _other_local_pid(run.data.tags)
    return pid is not None and pid_alive(pid)


def reap_stale_runs(client: Any) -> list[str]:
    """Runs still RUNNING whose harness process on this host is gone (kill -9, power loss) become FAILED with
    stop_reason=crashed. Returns their ids. Runs of other hosts are left alone. A store that cannot be searched (after
    the usual retries) is a TrackingError: skipping the search in silence would leave dead runs RUNNING unnoticed."""
    from harness.tracking.tracker import retrying

    what = "look for crashed runs in the store"
    exp_ids = retrying(what, lambda: [e.experiment_id for e in client.search_experiments()])
    if not exp_ids:
        return []
    running = retrying(what, lambda: client.search_runs(exp_ids, filter_string="attributes.status = 'RUNNING'", max_results=5000))
    reaped = []
    for r in running:
        pid = _other_local_pid(r.data.tags)
        if pid is None or pid_alive(pid):
            continue
        if mark_run_crashed(client, r.info.run_id, owner=pid):
            reaped.append(r.info.run_id)
    return reaped


def run_is_set_up(client: Any, run_id: str, *, unknown: bool = True) -> bool:
    """Whether the run got as far as storing its spec.yaml: only then can it be resumed. ``unknown`` is the answer
    when the store cannot tell (resume then tries, and says what is wrong)."""
    try:
        return any(a.path == "spec.yaml" for a in client.list_artifacts(run_id))
    except Exception:
        return unknown


def mark_run_crashed(client: Any, run_id: str, *, owner: int | None = None) -> bool:
    """End a RUNNING run FAILED with stop_reason=crashed; True when it did. Nothing happens to a run that has ended,
    or (``owner``) to one that another process has taken over since its owner was found dead."""
    try:
        run = client.get_run(run_id)
    except Exception:
        return False
    if run.info.status != "RUNNING":
        return False
    if owner is not None and run.data.tags.get("harness.pid") != str(owner):
        return False
    client.set_tag(run_id, "stop_reason", "crashed")
    client.set_terminated(run_id, status="FAILED")
    return True
