"""One run on several processes (``torchrun``): rank 0 is the run, every other rank follows it.

Rank 0 does everything a single-process run does (finds an init source, checks the data, creates or re-opens the
MLflow run, writes checkpoints, prints). It then sends the followers what they cannot find alone: the resolved spec,
the tokenizer and label map a finetuned run inherited, whether a checkpoint is being resumed. Each follower builds the
same trainer from that (no store access, no output), trains its shard of every batch in step with rank 0, and ends
when rank 0's loop ends. When rank 0 fails before it can send, it sends the error instead, so no rank waits forever.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from harness.errors import HarnessError
from harness.job.outcome import RunOutcome
from harness.spec import spec_from_dict, spec_to_dict

if TYPE_CHECKING:
    from harness.train.distributed import Distributed

__all__ = ["Announcer", "follow"]


class Announcer:
    """Rank 0's side of the hand-over: ``send`` once, or ``fail`` with the error that stopped it first."""

    def __init__(self, dist: Distributed | None):
        self.dist = dist
        self.sent = False

    def send(self, spec: Any, *, run_id: str, tokenizer: Any = None, labels: list[str] | None = None, resuming: bool = False) -> None:
        if self.dist is None or self.sent:
            return
        self.sent = True
        self.dist.broadcast({"spec": spec_to_dict(spec), "run_id": run_id, "labels": labels, "resuming": resuming,
                             "tokenizer": tokenizer.to_dict() if tokenizer is not None else None})

    def fail(self, exc: BaseException) -> None:
        if self.dist is None or self.sent:
            return
        self.sent = True
        self.dist.broadcast({"error": f"{type(exc).__name__}: {exc}".strip()})


def follow(dist: Distributed) -> RunOutcome:
    """A follower rank's whole run (see the module docstring); returns what it trained, for the caller's exit code."""
    from harness.data.tokenizers import tokenizer_from_dict
    from harness.job.build import build

    got: dict[str, Any] = _receive(dist)
    if "error" in got:
        dist.stop()
        raise HarnessError(f"rank {dist.rank}: rank 0 stopped before training ({got['error']})")
    spec = spec_from_dict(got["spec"])
    tokenizer = tokenizer_from_dict(got["tokenizer"]) if got["tokenizer"] is not None else None
    built = build(spec, None, [], tokenizer=tokenizer, labels=got["labels"], dist=dist)
    if got["resuming"]:  # what rank 0 continues from (runner._share_start), then its state
        start = _receive(dist)
        if start == "checkpoint":
            built.trainer.load(None)
        elif start == "source":
            built.trainer.model.load_state_dict(_receive(dist))
    result = built.trainer.fit()
    del built  # the DDP wrapper goes before its process group
    dist.stop()
    return RunOutcome(run_id=got["run_id"], experiment=spec.experiment, experiment_id="", tracking_uri="", status="FINISHED",
                      stop_reason=result.stop_reason, steps=result.steps, epochs=result.epochs, wall_time_s=result.wall_time_s,
                      message=result.message, signal=result.signal)


def _receive(dist: Distributed) -> Any:
    """What rank 0 broadcasts next (a follower's own argument to broadcast is never sent, so it passes None)."""
    received: Any = dist.broadcast(None)
    return received
