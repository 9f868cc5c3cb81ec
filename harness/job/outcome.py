"""What one run reports back when it ends (or stops)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harness.train.events import StopReason

__all__ = ["RunOutcome"]


@dataclass
class RunOutcome:
    """The result of :func:`harness.job.run` or :func:`harness.job.resume`."""

    run_id: str
    experiment: str
    experiment_id: str
    tracking_uri: str
    status: str  # the MLflow status: FINISHED, FAILED or KILLED
    stop_reason: StopReason
    steps: int
    epochs: int
    wall_time_s: float
    message: str = ""
    best_metric: float | None = None
    best_step: int | None = None
    watch: str = "val/loss"  # the metric that best_metric is the best of
    final: dict[str, float] = field(default_factory=dict)  # final val/loss, train/loss_eval, train/loss (last step)
    facts: dict[str, Any] = field(default_factory=dict)  # vocab size, parameters, steps per epoch, step-0 loss, ...
    signal: int | None = None  # the signal that interrupted the run
    resumed_from: str | None = None  # the checkpoint a resumed run continued from
    grad: dict[str, float] = field(default_factory=dict)  # max, mean, final, clipped, steps
    epoch_losses: list[float] = field(default_factory=list)  # mean train loss of each epoch of this session
    notes: list[str] = field(default_factory=list)  # things the user should know (fallbacks, replayed metrics)
    model_id: str | None = None  # the MLflow logged model the run made (models:/<id>), when it finished

    @property
    def ok(self) -> bool:
        return self.status == "FINISHED"
