"""The trainer callback that writes a run's metrics through the tracker, and keeps the figures the summary needs."""

from __future__ import annotations

import math

from harness.tracking import TrackingError
from harness.tracking.protocol import Tracker
from harness.train.events import BestRestored, CheckpointSaved, EpochEnd, EvalEnd, Event, StepEnd, StopReason, StopTraining

__all__ = ["MetricLogger"]


class MetricLogger:
    """Trainer events -> tracker metrics: buffered per step, flushed at every evaluation and checkpoint."""

    def __init__(self, tracker: Tracker, *, upload_checkpoints: bool):
        self.tracker = tracker
        self.upload_checkpoints = upload_checkpoints  # to a remote artifact store (a local one holds them already)
        self.grad_norms: list[float] = []
        self.clipped = 0
        self.epoch_losses: list[float] = []
        self.initial_loss: float | None = None
        self.offline_error: str | None = None

    def __call__(self, event: Event) -> None:
        try:
            self._log(event)
        except TrackingError as exc:
            # The store went away and stayed away through the retries: stop cleanly. The trainer checkpoints, the job
            # spills the unwritten metrics next to the checkpoint, and `harness resume` logs them later.
            self.offline_error = str(exc)
            self.tracker.offline = True  # from now on metrics only accumulate in the buffer
            raise StopTraining(StopReason.FAILED, f"tracking store unreachable: {exc}") from None

    def _log(self, event: Event) -> None:
        t = self.tracker
        if isinstance(event, StepEnd):
            if event.step == 0:
                self.initial_loss = event.loss
            t.log_metric("train/loss", event.loss, event.step)
            t.log_metric("lr", event.lr, event.step)
            if math.isfinite(event.grad_norm):
                t.log_metric("grad_norm", event.grad_norm, event.step)
                t.log_metric("clipped", float(event.clipped), event.step)
                t.log_metric("tokens_per_sec", event.tokens_per_sec, event.step)
                self.grad_norms.append(event.grad_norm)
                self.clipped += int(event.clipped)
            t.maybe_flush()
        elif isinstance(event, (EvalEnd, BestRestored)):  # BestRestored: the final evaluation, of the kept weights
            t.log_metrics(event.metrics, event.step)
            t.flush()
        elif isinstance(event, EpochEnd):
            t.log_metric("train/loss_epoch", event.train_loss, event.step)
            t.log_metric("epoch", float(event.epoch), event.step)
            self.epoch_losses.append(event.train_loss)
        elif isinstance(event, CheckpointSaved):
            t.flush()
            if self.upload_checkpoints and t.local_artifacts is None:
                t.log_artifact(event.path, "checkpoints")

    def grad_stats(self) -> dict[str, float]:
        """max, mean and final gradient norm, and how many steps were clipped, over this session's steps."""
        norms = self.grad_norms
        if not norms:
            return {}
        return {"max": max(norms), "mean": sum(norms) / len(norms), "final": norms[-1], "clipped": float(self.clipped),
                "steps": float(len(norms))}
