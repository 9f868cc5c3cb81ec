"""The sweep driver: open (or join) the study, run workers until no trial is left, report.

It only makes specs and calls the job; it never touches the model. Reads top-down in :func:`run_sweep`.
"""

from __future__ import annotations

import math
import os
import signal
import time
from dataclasses import dataclass
from typing import Any, Callable

from harness import collector
from harness.errors import UsageError
from harness.spec import Spec, spec_to_dict
from harness.sweep.report import SweepResult, fail_parent, finalize
from harness.sweep.storage import storage_url
from harness.sweep.study import default_study_name, open_study, total_trials
from harness.sweep.trial import TrialSettings
from harness.sweep.worker import WorkerPlan, run_workers, start_workers_early, work
from harness.testing import faults
from harness.tracking import check_store, tracking_uri
from harness.tracking.liveness import reap_stale_runs
from harness.tracking.redact import redact_url, remember

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
    seeds: list[int] | None = None  # the seeds every configuration runs under (a repeated sweep)


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
    """Run (or resume, or extend) the sweep that ``spec.sweep`` describes and return its tables.

    ``workers``, ``n_trials`` and ``storage`` (an Optuna storage URL) override the spec's; ``progress`` makes a trial's progress display from its label
    (it must be picklable, e.g. a class, when workers > 1); ``on_start`` hears what is about to run."""
    from harness.data.checks import validate_data
    from harness.tracking import client_for

    if spec.sweep is None:
        raise UsageError("this spec has no sweep section; run it as a single experiment (harness.job.run)")
    sw = spec.sweep
    # --workers, else the spec's sweep.workers when it sets one, else chosen from the trials' size (auto_workers)
    asked = workers or (sw.workers if "workers" in sw.model_fields_set else None)
    if asked is not None and asked < 1:
        raise UsageError("--workers must be at least 1")
    total = total_trials(spec, n_trials, file=spec_file)
    uri = tracking_uri(uri)
    faults.point("sweep_open")
    check_store(uri)
    validate_data(spec, file=spec_file)
    name = study_name or default_study_name(spec)
    url = storage_url(storage or sw.storage, name)  # a SQLite file under studies/ is created only once the inputs are known good
    remember(url)  # its password, however it was given (the spec, the environment), is hidden wherever it would appear
    reap_stale_runs(client_for(uri))
    runs = total * sw.n_seeds  # a repeated sweep runs every configuration under each seed
    if (asked or auto_workers(spec, runs)) > 1:
        start_workers_early()  # their imports, on another CPU, while the study and the parent run are set up
    opened = open_study(spec, name=name, url=url, fresh=fresh, uri=uri, total=total)
    n_workers = asked or auto_workers(spec, _trials_left(opened.study, runs))
    if on_start is not None:
        on_start(SweepStart(study_name=name, storage=redact_url(url), parent_run_id=opened.parent_run_id, experiment=spec.experiment,
                            total=total, sampler=sw.sampler, workers=n_workers, seeds=sw.seed_list(spec.seed) if sw.repeated else None))
    plan = WorkerPlan(
        spec_dict=spec_to_dict(spec),
        storage_url=url,
        total=total,
        deadline=time.time() + sw.timeout_s if sw.timeout_s else None,
        trials=TrialSettings(study_name=name, study_id=opened.study_id, repeated=sw.repeated, parent_run_id=opened.parent_run_id, tracking_uri=uri, spec_file=spec_file,
                             threads=_threads_per_worker(n_workers), progress=progress),
    )
    try:
        try:
            signum = _run(plan, n_workers)
            result = finalize(spec, opened, uri=uri, interrupted=signum is not None)
        except Exception as exc:  # the sweep broke (a worker's error, the study's storage): its parent run says so
            fail_parent(opened, uri=uri, error=exc)
            raise
    finally:
        engine = getattr(opened.storage, "engine", None)  # an RDB storage's connections: closed, not left to the GC
        if engine is not None:
            engine.dispose()
    result.signal = signum
    return result


# auto_workers' thresholds. Measured on the 2-core development machine (torch 2.13 CPU): two 1-thread processes
# trained 1.13x (the chapter's d_model-64 model, 0.8 GFLOP forward per step) and 1.11x (nanoGPT's CPU example,
# d_model 128, 1.2 GFLOP) the tokens/s of one 2-thread process: small ops do not split well over threads, and each
# process's serial parts (Python, the dropout masks, the optimizer's per-tensor loop) then run side by side. Bigger
# matmuls split well, so the gain fades with size; past SMALL_STEP_FLOPS one process keeps the machine.
# Workers are forked from a server that imported torch, MLflow and harness once (harness.sweep.preload), on another
# CPU while the study opens, so a worker starts in milliseconds (spawned, each paid ~5 s of imports). The quick start
# (3 trials of ~22 s at 2 threads): 3 workers 60-64 s, 1 worker 74 s. Only trials of a few seconds stay in-process.
SMALL_STEP_FLOPS = 8e9  # forward FLOPs per optimizer step (2 x parameters x tokens)
MIN_TRIAL_S = 10.0  # estimated training time of one trial; shorter trials run one after another in this process
_CPU_FLOPS = 50e9  # training FLOP/s assumed for that estimate (the two models above reach 60-100 GFLOP/s here)


def auto_workers(spec: Spec, total: int, *, cpus: int | None = None) -> int:
    """Worker processes for a sweep that does not say: one per CPU (or one per trial, up to two per CPU, when that
    leaves no CPU idle in the last round) when the trials are small and long enough that N one-thread processes beat
    one N-thread process (see SMALL_STEP_FLOPS); otherwise 1, which trains in this process with every CPU."""
    cpus = cpus or _cpus()
    if total < 2 or cpus < 2 or spec.train.threads or spec.train.device not in ("auto", "cpu") or _has_accelerator(spec):
        return 1
    if spec.model is None:  # a finetuned spec takes its shape from its source: no estimate here
        return 1
    try:
        from harness.data.prepare import prepare
        from harness.spec import estimate_parameters

        prep = prepare(spec.data)  # cached: validate_data has just prepared it
        params = estimate_parameters(spec.model, vocab_size=prep.tokenizer.vocab_size, seq_len=spec.data.seq_len)
        steps_per_epoch = max(prep.train_examples // spec.train.batch_size, 1)
    except Exception:  # a task spec, or anything this estimate cannot read: keep one worker
        return 1
    tokens = spec.train.batch_size * spec.data.seq_len
    step_flops = 2.0 * params * tokens
    steps = spec.train.max_steps or (spec.train.epochs or 1) * steps_per_epoch
    if step_flops > SMALL_STEP_FLOPS or 3 * step_flops * steps / _CPU_FLOPS < MIN_TRIAL_S:
        return 1
    return workers_for(total, cpus)


def workers_for(total: int, cpus: int) -> int:
    """The worker count in [cpus, min(total, 2 * cpus)] that finishes ``total`` equal one-thread trials soonest:
    rounds of trials, each round slowed by cpus / workers when the workers outnumber the CPUs (ties: fewer workers).
    3 trials on 2 CPUs: 3 workers (one round at 2/3 speed, 1.5) beat 2 (two rounds, the second leaving a CPU idle, 2)."""
    if total <= cpus:
        return total
    best, best_time = cpus, math.inf
    for w in range(cpus, min(total, 2 * cpus) + 1):
        t = math.ceil(total / w) / min(1.0, cpus / w)
        if t < best_time - 1e-9:
            best, best_time = w, t
    return best


def _trials_left(study: Any, total: int) -> int:
    """Seed runs still to run when the sweep (re)starts: a resumed study has finished some already."""
    from harness.sweep.attempts import current

    done = sum(t.state.name in ("COMPLETE", "PRUNED") for t in current(study.get_trials(deepcopy=False)).values())
    return max(total - done, 0)


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _has_accelerator(spec: Spec) -> bool:
    if spec.train.device == "cpu":
        return False
    import torch

    mps = getattr(torch.backends, "mps", None)
    return bool(torch.cuda.is_available() or (mps is not None and mps.is_available()))


def _threads_per_worker(n_workers: int) -> int | None:
    """Workers share the machine's cores: each gets its share, at least one, pinned for the whole trial so its numbers
    do not depend on timing (None: one worker, whose trials' threads follow the CPUs free, see ThreadGovernor)."""
    return max(1, _cpus() // n_workers) if n_workers > 1 else None


def _run(plan: WorkerPlan, n_workers: int) -> int | None:
    """Run the workers (in this process when there is one); returns the signal that interrupted them, if any."""
    if n_workers > 1:
        collector.resume()  # this process's set-up is over: it only waits for its workers now (see harness.collector)
        return run_workers(plan, n_workers)
    try:
        code = work(plan)
    except KeyboardInterrupt:
        return signal.SIGINT
    return code - 128 if code > 128 else None
