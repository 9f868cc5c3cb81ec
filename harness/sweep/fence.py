"""The fence that keeps one run to one trainer: a running trial's heartbeat, and the trainer callback that stops the
trial when this worker may no longer own it.

Why by hand: Optuna records heartbeats only inside ``Study.optimize``, which asks for its trials itself, outside the
study lock that the exactly-once claim needs (:mod:`harness.sweep.claim`); and nothing in Optuna stops a trial whose
worker has lost its storage. A worker that is wrongly judged dead must not keep training beside the retry that
resumes its run (one run, one checkpoint folder, two trainers). So a worker beats for its trial itself (the storage's
``record_heartbeat``, as Optuna's own heartbeat thread does) and stops its trainer at the next step, as an interrupt
does (a checkpoint; the run ends KILLED/interrupted; the trial is handed back, or left to the retry), when

* no heartbeat has been recorded for FENCE_S: the study database is away (or its calls hang). After GRACE_S any
  worker may fail the trial and resume its run, so this one stops first, with time left for its checkpoint;
* a recorded heartbeat finds the trial no longer RUNNING: another worker failed it already (this one was stopped, or
  cut off, past the grace) and queued the retry that continues the run.

Without heartbeats (a journal storage: one machine, dead pids only) it never stops anything.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any, Iterator

from harness.sweep.attempts import Attempts
from harness.sweep.storage import periods
from harness.testing import faults
from harness.train.events import Event, StopReason, StopTraining

__all__ = ["Fence", "beat", "beats"]


def beats(storage: Any) -> bool:
    """Whether the storage records heartbeats (an RDB storage; a journal file does not)."""
    return hasattr(storage, "record_heartbeat") and storage.get_heartbeat_interval() is not None


def beat(attempts: Attempts, number: int) -> None:
    if beats(attempts.storage):
        attempts.storage.record_heartbeat(attempts.trial_id(number))


class Fence:
    """Beats every HEARTBEAT_S for trial ``number`` from a thread (:meth:`beating`); as a trainer callback (main
    thread, every event) it raises StopTraining(interrupted) once :attr:`why` is set."""

    def __init__(self, attempts: Attempts, number: int):
        self.attempts = attempts
        self.number = number
        self.periods = periods()
        self.active = beats(attempts.storage)
        self.last_ok = time.monotonic()  # the trial was taken with a heartbeat, under the study lock
        self.why: str | None = None  # set once: why the trial must stop

    def _stop(self, why: str) -> None:
        if self.why is None:
            self.why = why
            faults.point("fence")

    def beat(self) -> None:
        started = time.monotonic()  # a heartbeat written by this call is no older than this
        try:
            beat(self.attempts, self.number)
            state = self.attempts.frozen(self.number).state
        except Exception:
            return  # the storage did not answer: __call__ sees how long that has lasted
        self.last_ok = started
        if state.name != "RUNNING":
            self._stop(f"trial {self.number} was ended ({state.name}) by another worker, which took this worker for dead; the retry it "
                       "queued continues this run")

    def __call__(self, event: Event) -> None:
        if self.active and self.why is None:
            silent = time.monotonic() - self.last_ok
            if silent > self.periods.fence:
                self._stop(f"no heartbeat of trial {self.number} could be recorded in the study storage for {silent:.0f} s (after "
                           f"{self.periods.grace:.0f} s another worker may take the trial over)")
        if self.why is not None:
            raise StopTraining(StopReason.INTERRUPTED, self.why)

    @contextlib.contextmanager
    def beating(self) -> Iterator[None]:
        if not self.active:
            yield
            return
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(self.periods.heartbeat):
                self.beat()

        thread = threading.Thread(target=loop, daemon=True, name="harness-heartbeat")
        thread.start()
        try:
            yield
        finally:
            stop.set()
            # not longer: a beat stuck in a storage call that never returns must not hold the worker (it is harmless)
            thread.join(timeout=min(5.0, self.periods.heartbeat))
