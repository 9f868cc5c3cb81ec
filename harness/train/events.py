"""What the training loop tells the outside world: events during the run, why it stopped, and what it returns.

Callbacks (the MLflow logger, the Optuna pruner, the progress display) receive these events; they never reach into
the loop. A callback ends the run early by raising :class:`StopTraining`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

__all__ = ["BestRestored", "Callback", "CheckpointSaved", "EpochEnd", "EvalEnd", "Event", "StepEnd", "StopReason", "StopTraining", "Stopping", "TrainResult"]


class StopReason(str, enum.Enum):
    """Why a run ended. The value is what the ``stop_reason`` tag in MLflow says."""

    COMPLETED = "completed"  # ran its steps or epochs
    EARLY_STOPPED = "early_stopped"  # patience ran out
    DIVERGED = "diverged"  # a non-finite loss or gradient norm
    INTERRUPTED = "interrupted"  # Ctrl-C or SIGTERM; resumable
    PRUNED = "pruned"  # a sweep trial stopped by the pruner
    FAILED = "failed"  # an error (tracking store gone, disk full, a bug)
    CRASHED = "crashed"  # its process died (kill -9, power loss), found later
    INVALID = "invalid"  # a sweep trial whose sampled values make no valid spec

    def __str__(self) -> str:
        return self.value

    @property
    def status(self) -> str:
        """The MLflow run status this ends in."""
        if self in (StopReason.COMPLETED, StopReason.EARLY_STOPPED):
            return "FINISHED"
        if self in (StopReason.INTERRUPTED, StopReason.PRUNED):
            return "KILLED"
        return "FAILED"

    @staticmethod
    def is_retry(value: str | None) -> bool:
        """Whether a trial that stopped for this reason is run again (resuming its MLflow run), not counted as done."""
        return value in (StopReason.INTERRUPTED.value, StopReason.CRASHED.value)


@dataclass(frozen=True)
class Event:
    step: int


@dataclass(frozen=True)
class StepEnd(Event):
    """One optimizer step: ``step`` is the number of updates before it (the loss is that batch's)."""

    epoch: int
    loss: float
    lr: float
    grad_norm: float  # before clipping
    clipped: bool
    tokens_per_sec: float


@dataclass(frozen=True)
class EvalEnd(Event):
    """An evaluation after ``step`` updates."""

    epoch: int
    metrics: dict[str, float]  # "val/loss", "train/loss_eval", and "val/accuracy" for a classifier
    improved: bool
    best: float | None


@dataclass(frozen=True)
class BestRestored(Event):
    """Early stopping put back the weights of ``best_step`` at the end of a run of ``step`` updates; ``metrics`` is
    their evaluation, the run's final one (the EvalEnd before it described the weights that were dropped)."""

    best_step: int
    metrics: dict[str, float]


@dataclass(frozen=True)
class EpochEnd(Event):
    epoch: int  # epochs completed
    train_loss: float  # mean train/loss over the epoch


@dataclass(frozen=True)
class CheckpointSaved(Event):
    path: Path
    kind: str  # "last", "best", "periodic"


@dataclass(frozen=True)
class Stopping(Event):
    """The run noticed Ctrl-C or SIGTERM after ``step`` updates and is stopping; ``doing`` says what it does first."""

    reason: StopReason
    doing: str


class Callback(Protocol):
    def __call__(self, event: Event) -> None: ...


class StopTraining(Exception):
    """Raised by a callback to end the run early with ``reason`` (e.g. PRUNED)."""

    def __init__(self, reason: StopReason, message: str = ""):
        super().__init__(message or str(reason))
        self.reason = StopReason(reason)
        self.message = message


@dataclass(frozen=True)
class TrainResult:
    """How a call to :meth:`Trainer.fit` ended."""

    stop_reason: StopReason
    steps: int
    epochs: int
    best_metric: float | None
    best_step: int | None
    last_eval: dict[str, float]
    last_train_loss: float | None
    wall_time_s: float
    message: str = ""
    signal: int | None = None  # the signal that interrupted the run
