"""The end of a run: summary metrics, tags, plots, a text sample, checkpoint uploads, and the final status."""

from __future__ import annotations

from typing import Any

from harness.job.build import Built, sample_text
from harness.job.outcome import RunOutcome
from harness.spec import Spec
from harness.tracking import MlflowTracker
from harness.train.events import StopReason, TrainResult

__all__ = ["finish"]

_PLOTTED = ("train/loss", "val/loss", "train/loss_eval", "grad_norm", "lr")


def finish(spec: Spec, tracker: MlflowTracker, built: Built, result: TrainResult, *, resumed_from: str | None) -> RunOutcome:
    """Record how the run ended and close it in the store. When the store went away during the run, keep what
    could not be written next to the checkpoint instead."""
    if built.logger is not None and built.logger.offline_error is not None:
        return _finish_offline(spec, tracker, built, result, resumed_from=resumed_from)
    facts = dict(built.facts)
    if built.logger is not None and built.logger.initial_loss is not None:
        facts["initial_loss"] = built.logger.initial_loss
    _log_summary(tracker, result, built.trainer.watch)
    _tag_outcome(tracker, result, facts)
    # An interrupted run ends quickly (the user is waiting): its plots and sample come when it is resumed and ends.
    if result.stop_reason is not StopReason.INTERRUPTED:
        _log_plots(spec, tracker)
        if result.stop_reason not in (StopReason.DIVERGED, StopReason.FAILED):
            sample = sample_text(spec, built)
            if sample:
                tracker.log_text(sample, "sample.txt")
    _upload_checkpoints(spec, tracker, built)
    tracker.end(result.stop_reason.status)
    return _outcome(spec, tracker, built, result, facts, resumed_from=resumed_from)


def _log_summary(tracker: MlflowTracker, result: TrainResult, watch: str) -> None:
    """``summary/*`` metrics: steps, wall time, best and final values, logged at the last step."""
    summary: dict[str, float] = {"summary/steps": float(result.steps), "summary/wall_time_s": result.wall_time_s}
    if result.best_metric is not None:
        summary[f"summary/best_{watch.replace('/', '_')}"] = result.best_metric
    for k, v in result.last_eval.items():
        summary[f"summary/final_{k.replace('/', '_')}"] = v
    if result.last_train_loss is not None:
        summary["summary/final_train_loss"] = result.last_train_loss
    tracker.log_metrics(summary, result.steps)
    tracker.flush()


def _tag_outcome(tracker: MlflowTracker, result: TrainResult, facts: dict[str, Any]) -> None:
    tags: dict[str, Any] = {"stop_reason": result.stop_reason.value, "harness.steps": result.steps}
    if "initial_loss" in facts:
        tags["harness.sanity"] = f"step-0 loss {facts['initial_loss']:.4f} vs ln(vocab) {facts['ln_vocab']:.4f}"
    if result.message:
        tags["harness.message"] = result.message[:5000]
    tracker.set_tags(tags)


def _log_plots(spec: Spec, tracker: MlflowTracker) -> None:
    """Loss curve, gradient norm and lr schedule from the run's whole history (earlier sessions of a resumed run
    included). Plots are a convenience: a failure is tagged, never allowed to lose the run's status."""
    from harness import plots

    try:
        hist = {k: tracker.client.get_metric_history(tracker.run_id, k) for k in _PLOTTED}
        curves = {k: ([m.step for m in v], [m.value for m in v]) for k, v in hist.items() if v}
        tracker.log_figure(plots.loss_curve(curves, title=f"{spec.name} ({tracker.run_id[:8]})"), "plots/loss_curve.png")
        if "grad_norm" in curves:
            tracker.log_figure(plots.grad_norm(curves["grad_norm"], clip=spec.train.clip_grad_norm, title=spec.name), "plots/grad_norm.png")
        if "lr" in curves:
            tracker.log_figure(plots.lr_schedule(curves["lr"], title=spec.name), "plots/lr_schedule.png")
    except Exception as exc:
        tracker.set_tags({"harness.plot_error": str(exc)[:500]})


def _upload_checkpoints(spec: Spec, tracker: MlflowTracker, built: Built) -> None:
    """A remote artifact store gets the final last.pt and best.pt (a local one already holds them)."""
    if tracker.local_artifacts is not None or not spec.tracking.log_checkpoints:
        return
    for name in ("last.pt", "best.pt"):
        p = built.trainer.checkpoint_dir / name
        if p.is_file():
            tracker.log_artifact(p, "checkpoints")


def _outcome(spec: Spec, tracker: MlflowTracker, built: Built, result: TrainResult, facts: dict[str, Any], *,
             resumed_from: str | None, status: str | None = None, message: str | None = None) -> RunOutcome:
    final = dict(result.last_eval)
    if result.last_train_loss is not None:
        final["train/loss"] = result.last_train_loss
    logger = built.logger
    return RunOutcome(
        run_id=tracker.run_id,
        experiment=spec.experiment,
        experiment_id=tracker.experiment_id,
        tracking_uri=str(tracker.client.tracking_uri),
        status=status or result.stop_reason.status,
        stop_reason=result.stop_reason,
        steps=result.steps,
        epochs=result.epochs,
        wall_time_s=result.wall_time_s,
        message=result.message if message is None else message,
        best_metric=result.best_metric,
        best_step=result.best_step,
        watch=built.trainer.watch,
        final=final,
        facts=facts,
        signal=result.signal,
        resumed_from=resumed_from,
        grad=logger.grad_stats() if logger else {},
        epoch_losses=list(logger.epoch_losses) if logger else [],
    )


def _finish_offline(spec: Spec, tracker: MlflowTracker, built: Built, result: TrainResult, *, resumed_from: str | None) -> RunOutcome:
    """The store is unreachable: keep what could not be written next to the checkpoint and say how to go on.

    The run stays RUNNING in the unreachable store; the next harness command there marks it crashed (dead pid)."""
    ckpt = built.trainer.checkpoint_dir
    pending = tracker.spill(ckpt)
    message = (f"{result.message}; stopped at step {result.steps} with a checkpoint in {ckpt} and {pending} unwritten metric "
               f"points saved beside it; when the store is back, run: harness resume {tracker.run_id}")
    return _outcome(spec, tracker, built, result, dict(built.facts), resumed_from=resumed_from, status="FAILED", message=message)
