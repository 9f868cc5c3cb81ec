"""The sweep driver: open (or join) the study, run workers until no trial is left, report.

It only makes specs and calls the job; it never touches the model. Reads top-down in :func:`run_sweep`.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from typing import Any, Callable

from harness.errors import UsageError
from harness.spec import Spec, spec_to_dict
from harness.sweep.report import SweepResult, finalize
from harness.sweep.storage import storage_url
from harness.sweep.study import open_study, total_trials
from harness.sweep.trial import TrialSettings
from harness.sweep.worker import WorkerPlan, run_workers, work
from harness.testing import faults
from harness.tracking import check_store, tracking_uri
from harness.tracking.liveness import reap_stale_runs

__all__ = ["SweepStart", "run_sweep"]


@dataclass(frozen=True)
class SweepStart:
    """What a sweep is about to do (for a caller that wants to say so before the trials start)."""

    study_name: str
    storage: str
    parent_run_id: str
    experiment: str
    total: int
    sampler: str
    workers: int


def run_sweep(
    spec: Spec,
    *,
    fresh: bool = False,
    study_name: str | None = None,
    workers: int | None = None,
    n_trials: int | None = None,
    storage: str | None = None,
    spec_file: str = "<spec>",
    uri: str | None = None,
    progress: Callable[[str], Any] | None = None,
    on_start: Callable[[SweepStart], None] | None = None,
) -> SweepResult:
    """Run (or resume) the sweep that ``spec.sweep`` describes and return its trial table.

    ``workers``, ``n_trials`` and ``storage`` (an Optuna storage URL) override the spec's; ``progress`` makes a trial's progress display from its label
    (it must be picklable, e.g. a class, when workers > 1); ``on_start`` hears what is about to run."""
    from harness.data.checks import validate_data
    from harness.tracking import client_for

    if spec.sweep is None:
        raise UsageError("this spec has no sweep section; run it as a single experiment (harness.job.run)")
    sw = spec.sweep
    n_workers = workers or sw.workers
    if n_workers < 1:
        raise UsageError("--workers must be at least 1")
    total = total_trials(spec, n_trials, file=spec_file)
    uri = tracking_uri(uri)
    faults.point("sweep_open")
    check_store(uri)
    validate_data(spec, file=spec_file)
    name = study_name or spec.name
    url = storage_url(storage or sw.storage, name)  # a SQLite file under studies/ is created only once the inputs are known good
    reap_stale_runs(client_for(uri))
    opened = open_study(spec, name=name, url=url, fresh=fresh, uri=uri, total=total)
    if on_start is not None:
        on_start(SweepStart(study_name=name, storage=url, parent_run_id=opened.parent_run_id, experiment=spec.experiment,
                            total=total, sampler=sw.sampler, workers=n_workers))
    plan = WorkerPlan(
        spec_dict=spec_to_dict(spec),
        storage_url=url,
        total=total,
        deadline=time.time() + sw.timeout_s if sw.timeout_s else None,
        trials=TrialSettings(study_name=name, parent_run_id=opened.parent_run_id, tracking_uri=uri, spec_file=spec_file,
                             threads=_threads_per_worker(n_workers), progress=progress),
    )
    try:
        signum = _run(plan, n_workers)
        result = finalize(spec, opened, uri=uri, interrupted=signum is not None)
    finally:
        engine = getattr(opened.storage, "engine", None)  # an RDB storage's connections: closed, not left to the GC
        if engine is not None:
            engine.dispose()
    result.signal = signum
    return result


def _threads_per_worker(n_workers: int) -> int | None:
    """Workers share the machine's cores: each gets its share (None: torch's default, for one worker)."""
    return max(1, (os.cpu_count() or 1) // n_workers) if n_workers > 1 else None


def _run(plan: WorkerPlan, n_workers: int) -> int | None:
    """Run the workers (in this process when there is one); returns the signal that interrupted them, if any."""
    if n_workers > 1:
        return run_workers(plan, n_workers)
    try:
        code = work(plan)
    except KeyboardInterrupt:
        return signal.SIGINT
    return code - 128 if code > 128 else None
