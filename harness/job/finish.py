"""The end of a run: summary metrics, tags, plots, a text sample, checkpoint uploads, and the final status."""

from __future__ import annotations

import dataclasses
import signal
import threading
from types import FrameType
from typing import Any, Callable

from harness.job.build import Built, sample_text
from harness.job.outcome import RunOutcome
from harness.spec import Spec
from harness.testing import faults
from harness.tracking import TrackingError
from harness.tracking.protocol import Tracker
from harness.tracking.records import DatasetRecord
from harness.tracking.redact import redact_text
from harness.train.events import StopReason, TrainResult

__all__ = ["FinishSignals", "Interrupted", "finish"]

_PLOTTED = ("train/loss", "val/loss", "train/loss_eval", "grad_norm", "lr")


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM while a run finishes (see :class:`FinishSignals`)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class FinishSignals:
    """SIGINT and SIGTERM between the end of training and the run's end in the store.

    Entered before training (the trainer's own handlers take over while it trains, then hand back to these), it keeps
    a signal until the finishing work begins (:meth:`arm`); from then on a signal stops that work at once with
    :class:`Interrupted`: the user is waiting, so the run ends KILLED with stop_reason=interrupted, and ``harness
    resume`` finishes it later. Without this, Ctrl-C left the run RUNNING and SIGTERM killed the process outright.
    :meth:`disarm` puts the previous handlers back, so a second Ctrl-C while the run is being ended stops at once, as
    during training. Outside the main thread, where no handler can be installed, it does nothing."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._armed = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> FinishSignals:
        if threading.current_thread() is threading.main_thread():
            self._old = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum
        if self._armed:
            self._armed = False
            raise Interrupted(signum)

    def arm(self) -> None:
        """The finishing work begins: a signal already received stops it now, a later one when it comes."""
        if self.received is not None:
            raise Interrupted(self.received)
        self._armed = True

    def disarm(self) -> None:
        self._armed = False
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}

    def __exit__(self, *exc: Any) -> None:
        self.disarm()


def finish(spec: Spec, tracker: Tracker, built: Built, result: TrainResult, *, resumed_from: str | None,
           signals: FinishSignals | None = None) -> RunOutcome:
    """Record how the run ended and close it in the store. When the store went away during the run, keep what
    could not be written next to the checkpoint instead. ``signals`` (entered by the caller) lets SIGINT/SIGTERM
    stop the finishing work and end the run interrupted."""
    if built.logger is not None and built.logger.offline_error is not None:
        return _finish_offline(spec, tracker, built, result, resumed_from=resumed_from)
    facts = dict(built.facts)
    if built.logger is not None and built.logger.initial_loss is not None:
        facts["initial_loss"] = built.logger.initial_loss
    try:
        try:
            if signals is not None:
                signals.arm()
            faults.point("finish")
            try:
                model = _log_model(spec, tracker, built, result)
            except TrackingError:
                raise
            except Exception as exc:  # a convenience, like the plots: the run still ends with its status
                model = None
                tracker.set_tags({"harness.model_error": redact_text(f"{type(exc).__name__}: {exc}")[:2000]})
            _log_summary(tracker, result, built.trainer.watch, model=model)
            _tag_outcome(tracker, result, facts)
            _extras(spec, tracker, built, result)
            _upload_checkpoints(spec, tracker, built)
            tracker.end(result.stop_reason.status)
        finally:
            if signals is not None:
                signals.disarm()
    except Interrupted as stop:
        return _end_interrupted(spec, tracker, built, result, facts, stop.signum, resumed_from=resumed_from)
    except TrackingError as exc:  # the store went away just now: the same way out as during training
        return _go_offline(spec, tracker, built, result, str(exc), resumed_from=resumed_from)
    outcome = _outcome(spec, tracker, built, result, facts, resumed_from=resumed_from)
    outcome.model_id = model.model_id if model is not None else None
    return outcome


def _end_interrupted(spec: Spec, tracker: Tracker, built: Built, result: TrainResult, facts: dict[str, Any], signum: int, *,
                     resumed_from: str | None) -> RunOutcome:
    """A signal stopped the finishing work: the run ends KILLED/interrupted; resuming it finishes it (its weights
    are in last.pt: every run ends with an evaluation, and every evaluation writes it)."""
    stopped = dataclasses.replace(result, stop_reason=StopReason.INTERRUPTED, signal=signum,
                                  message=f"interrupted while the run was finishing; to finish it, run: harness resume {tracker.run_id}")
    try:
        tracker.set_tags({"stop_reason": StopReason.INTERRUPTED.value, "harness.message": stopped.message})
        tracker.end(StopReason.INTERRUPTED.status)
    except TrackingError as exc:
        return _go_offline(spec, tracker, built, stopped, str(exc), resumed_from=resumed_from)
    return _outcome(spec, tracker, built, stopped, facts, resumed_from=resumed_from)


def _go_offline(spec: Spec, tracker: Tracker, built: Built, result: TrainResult, error: str, *, resumed_from: str | None) -> RunOutcome:
    if built.logger is not None:
        built.logger.offline_error = error
    tracker.offline = True
    return _finish_offline(spec, tracker, built, result, resumed_from=resumed_from)


def _extras(spec: Spec, tracker: Tracker, built: Built, result: TrainResult) -> None:
    """Plots, a text sample, a classifier's report: conveniences. One that fails is named in a tag; the run still ends
    with its status. An interrupted run skips them (the user is waiting); they come when it is resumed and ends."""
    if result.stop_reason is StopReason.INTERRUPTED:
        return
    failed = result.stop_reason in (StopReason.DIVERGED, StopReason.FAILED)
    steps: list[tuple[str, Callable[[], None]]] = [("plots", lambda: _log_plots(tracker, spec))]
    if not failed and spec.task.kind != "classify":
        steps.append(("sample", lambda: _log_sample(spec, tracker, built)))
    if not failed and spec.task.kind == "classify":
        steps.append(("classification report", lambda: _classification_report(spec, tracker, built)))
    problems = []
    for name, step in steps:
        try:
            step()
        except TrackingError:
            raise
        except Exception as exc:
            problems.append(f"{name}: {type(exc).__name__}: {exc}")
    if problems:
        tracker.set_tags({"harness.finish_error": redact_text(" | ".join(problems))[:5000]})


def _log_sample(spec: Spec, tracker: Tracker, built: Built) -> None:
    sample = sample_text(spec, built)
    if sample:
        tracker.log_text(sample, "sample.txt")


@dataclasses.dataclass(frozen=True)
class _Logged:
    """The logged model a run made: its id, the summary metrics that measure its weights, the data they measure."""

    model_id: str
    keys: frozenset[str]
    dataset: DatasetRecord | None


def _log_summary(tracker: Tracker, result: TrainResult, watch: str, *, model: _Logged | None = None) -> None:
    """``summary/*`` metrics: steps, wall time, best and final values, logged at the last step. Those that measure the
    logged model's weights (``model``: its id and those keys) are linked to it, and to the validation data."""
    summary: dict[str, float] = {"summary/steps": float(result.steps), "summary/wall_time_s": result.wall_time_s}
    if result.best_metric is not None:
        summary[f"summary/best_{watch.replace('/', '_')}"] = result.best_metric
    for k, v in result.last_eval.items():
        summary[f"summary/final_{k.replace('/', '_')}"] = v
    if result.last_train_loss is not None:
        summary["summary/final_train_loss"] = result.last_train_loss
    linked = {k: v for k, v in summary.items() if model is not None and k in model.keys}
    tracker.log_metrics({k: v for k, v in summary.items() if k not in linked}, result.steps)
    tracker.flush()
    if model is not None and linked:
        tracker.log_model_metrics(linked, result.steps, model_id=model.model_id, dataset=model.dataset)


def _log_model(spec: Spec, tracker: Tracker, built: Built, result: TrainResult) -> _Logged | None:
    """A run that finished (completed or stopped early) records its best checkpoint as an MLflow logged model: the
    weights, spec and tokenizer, loadable by ``models:/<id>`` (``harness generate``, ``init.from``,
    ``mlflow.pyfunc.load_model``); None for any other run. Every trial of a sweep logs its own (a small copy of the weights; see
    bench/bench_ui_records.py for what it costs)."""
    import tempfile
    from pathlib import Path

    from harness.job.records import model_folder

    if result.stop_reason not in (StopReason.COMPLETED, StopReason.EARLY_STOPPED):
        return None
    folder = built.trainer.checkpoint_dir
    checkpoint = next((folder / n for n in ("best.pt", "last.pt") if (folder / n).is_file()), None)
    if checkpoint is None:
        return None
    watch = built.trainer.watch
    keys = {f"summary/best_{watch.replace('/', '_')}"}
    es = spec.train.early_stopping
    if checkpoint.name == "last.pt" or (es is not None and es.restore_best):  # the final evaluation is of these weights
        keys |= {f"summary/final_{k.replace('/', '_')}" for k in result.last_eval}
    val = next((d for d in built.datasets if d.context == "validation"), None)
    labels = built.task.labels if built.task is not None else []
    with tempfile.TemporaryDirectory(prefix="harness-model-") as tmp:
        record = model_folder(Path(tmp), spec, checkpoint, built.tokenizer, labels, run_id=tracker.run_id, metrics={}, dataset=val)
        model_id = tracker.log_model(record)
    return _Logged(model_id, frozenset(keys), val)


def _tag_outcome(tracker: Tracker, result: TrainResult, facts: dict[str, Any]) -> None:
    tags: dict[str, Any] = {"stop_reason": result.stop_reason.value, "harness.steps": result.steps}
    if "initial_loss" in facts:
        chance = ("ln(labels)", facts["ln_labels"]) if "ln_labels" in facts else ("ln(vocab)", facts["ln_vocab"])
        tags["harness.sanity"] = f"step-0 loss {facts['initial_loss']:.4f} vs {chance[0]} {chance[1]:.4f}"
    if result.message:
        tags["harness.message"] = redact_text(result.message)[:5000]  # redacted before the cut
    tracker.set_tags(tags)


def _log_plots(tracker: Tracker, spec: Spec) -> None:
    """Loss curve, gradient norm and lr schedule from the run's whole history (earlier sessions of a resumed run
    included)."""
    from harness import plots

    hist = {k: tracker.metric_history(k) for k in _PLOTTED}
    curves = {k: ([step for step, _ in v], [value for _, value in v]) for k, v in hist.items() if v}
    tracker.log_figure(plots.loss_curve(curves, title=f"{spec.name} ({tracker.run_id[:8]})"), "plots/loss_curve.png")
    if "grad_norm" in curves:
        tracker.log_figure(plots.grad_norm(curves["grad_norm"], clip=spec.train.clip_grad_norm, title=spec.name), "plots/grad_norm.png")
    if "lr" in curves:
        tracker.log_figure(plots.lr_schedule(curves["lr"], title=spec.name), "plots/lr_schedule.png")


def _classification_report(spec: Spec, tracker: Tracker, built: Built) -> None:
    """The final model on the whole validation split: per-label precision and recall, and the confusion matrix
    (confusion_matrix.csv and .png)."""
    import torch

    from harness import plots
    from harness.data.prepare import PAD_TARGET

    task = built.task
    if task is None or task.val_examples == 0:
        return
    model = built.trainer.model
    model.eval()
    n = len(task.labels)
    counts = [[0] * n for _ in range(n)]
    with torch.no_grad():
        for start in range(0, task.val_examples, 256):
            x = torch.from_numpy(task.val_x[start : start + 256]).to(built.device)
            y = torch.from_numpy(task.val_y[start : start + 256]).to(built.device)
            logits = model(x)  # (B, T, n_labels)
            graded = y != PAD_TARGET  # one position per example: its last real token
            for true, pred in zip(y[graded].tolist(), logits[graded].argmax(-1).tolist()):
                counts[true][pred] += 1
    metrics = {}
    for i, label in enumerate(task.labels):
        predicted, actual = sum(row[i] for row in counts), sum(counts[i])
        metrics[f"val/precision/{label}"] = counts[i][i] / predicted if predicted else 0.0
        metrics[f"val/recall/{label}"] = counts[i][i] / actual if actual else 0.0
    tracker.log_metrics(metrics, built.trainer.step)
    tracker.flush()
    csv = "true/predicted," + ",".join(task.labels) + "\n" + "".join(
        f"{label}," + ",".join(str(c) for c in row) + "\n" for label, row in zip(task.labels, counts))
    tracker.log_text(csv, "confusion_matrix.csv")
    tracker.log_figure(plots.confusion_matrix(counts, task.labels, title=f"{spec.name}: validation"), "confusion_matrix.png")


def _upload_checkpoints(spec: Spec, tracker: Tracker, built: Built) -> None:
    """A remote artifact store gets the final last.pt and best.pt (a local one already holds them)."""
    if tracker.local_artifacts is not None or not spec.tracking.log_checkpoints:
        return
    for name in ("last.pt", "best.pt"):
        p = built.trainer.checkpoint_dir / name
        if p.is_file():
            tracker.log_artifact(p, "checkpoints")


def _outcome(spec: Spec, tracker: Tracker, built: Built, result: TrainResult, facts: dict[str, Any], *,
             resumed_from: str | None, status: str | None = None, message: str | None = None) -> RunOutcome:
    final = dict(result.last_eval)
    if result.last_train_loss is not None:
        final["train/loss"] = result.last_train_loss
    logger = built.logger
    return RunOutcome(
        run_id=tracker.run_id,
        experiment=spec.experiment,
        experiment_id=tracker.experiment_id,
        tracking_uri=tracker.tracking_uri,
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


def _finish_offline(spec: Spec, tracker: Tracker, built: Built, result: TrainResult, *, resumed_from: str | None) -> RunOutcome:
    """The store is unreachable: keep what could not be written next to the checkpoint and say how to go on.

    The run stays RUNNING in the unreachable store; the next harness command there marks it crashed (dead pid)."""
    ckpt = built.trainer.checkpoint_dir
    pending = tracker.spill(ckpt)
    message = (f"{result.message}; stopped at step {result.steps} with a checkpoint in {ckpt} and {pending} unwritten metric "
               f"points saved beside it; when the store is back, run: harness resume {tracker.run_id}")
    return _outcome(spec, tracker, built, result, dict(built.facts), resumed_from=resumed_from, status="FAILED", message=message)
