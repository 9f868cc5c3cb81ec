"""The training loop. It knows nothing of MLflow or Optuna: it emits events to callbacks and returns a result.

Step convention: ``step`` counts optimizer updates. ``train/loss`` at step s is the loss of the s-th batch under the
weights after s updates, so step 0 is the untrained model; an evaluation after s updates is logged at step s.

A run reads top-down in :meth:`Trainer._fit` (what ``fit`` runs): evaluate the untrained model, then repeat (take a
batch, forward, backward, clip, update; bookkeeping; epoch end, evaluation, checkpoints) until the steps run out, a
stop is asked for, or patience runs out; then a final evaluation, and the best weights are restored if early
stopping asks. The processes it runs on (one, or the ranks of a DDP run) are a :class:`~harness.train.distributed.Ranks`
it calls at the few points where they differ.

A callback stops the run by raising StopTraining. The stop takes effect before the next step, once the step's work
(its epoch end, evaluation and checkpoints) is done: a store outage noticed in the middle of that work must not
leave a best.pt older than the best the run recorded, nor a step whose evaluation never happens.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from harness.data.batches import Batches
from harness.data.prepare import PAD_TARGET
from harness.spec.schema import TrainSpec
from harness.testing import faults
from harness.train.checkpoint import BEST, LAST, capture_rng, load_checkpoint, periodic_name, prune_periodic, restore_rng, save_checkpoint
from harness.train.distributed import OneProcess, Ranks
from harness.train.events import (
    BestRestored,
    Callback,
    CheckpointSaved,
    EpochEnd,
    EvalEnd,
    Event,
    StepEnd,
    StopReason,
    Stopping,
    StopTraining,
    TrainResult,
)
from harness.train.loss import cross_entropy
from harness.train.optim import make_optimizer, make_scheduler
from harness.train.runtime import StopSignals, ThreadGovernor, resolve_precision, torch_threads

__all__ = ["Trainer", "cross_entropy"]

EvalSets = dict[str, list[tuple[torch.Tensor, torch.Tensor]]]


@dataclass
class _Outcome:
    """How the loop stopped, while it runs."""

    reason: StopReason | None = None
    message: str = ""
    signal: int | None = None


class Trainer:
    """Runs the loop for one spec. Construct, optionally ``load`` a checkpoint, then ``fit``."""

    def __init__(
        self,
        model: torch.nn.Module,
        spec: TrainSpec,
        batches: Batches,
        *,
        eval_sets: EvalSets,
        checkpoint_dir: Path | Callable[[], Path],
        device: torch.device,
        callbacks: list[Callback] | None = None,
        meta: dict[str, Any] | None = None,
        governor: ThreadGovernor | None = None,
        classify: bool = False,
        step_cap: int | None = None,
        dist: Ranks | None = None,
    ):
        self.model = model.to(device)
        # the processes the run trains on: a torchrun group's rank (harness.train.distributed.Distributed), or alone
        self.ranks: Ranks = dist if dist is not None else OneProcess()
        # what forward and backward run through: the DDP wrapper (it all-reduces the gradients) or the model itself
        self.net = self.ranks.wrap(self.model, device)
        self.classify = classify  # evaluation also measures val/accuracy: argmax at the graded positions
        self.spec = spec
        self.batches = batches
        self.eval_sets = eval_sets
        # a function when the folder is known only later (a tracked run's folder, once the store has made the run)
        self._checkpoint_dir = checkpoint_dir
        self.device = device
        self.callbacks = list(callbacks or [])
        self.meta = dict(meta or {})
        self.optimizer = make_optimizer(self.model, spec)
        self.steps_per_epoch = batches.steps_per_epoch
        self.total_steps = spec.max_steps if spec.max_steps is not None else spec.epochs * self.steps_per_epoch  # type: ignore[operator]
        if step_cap is not None:  # a smoke run (HARNESS_MAX_STEPS): the same run, cut short, its schedule fitted to the cut
            self.total_steps = max(1, min(self.total_steps, step_cap))
        self.scheduler = make_scheduler(self.optimizer, spec, self.total_steps)
        # Progress, saved in every checkpoint (see state_dict).
        self.step = 0
        self.epoch = 0
        self.best: float | None = None
        self.best_step: int | None = None
        self.bad_evals = 0
        self.epoch_loss_sum = 0.0
        self.epoch_loss_n = 0
        self.last_eval: dict[str, float] = {}
        self.last_train_loss: float | None = None
        self.last_eval_at: int | None = None
        self.elapsed_before = 0.0  # wall time of earlier sessions of this run
        self.resumed_from: Path | None = None
        self.resumed = False  # state came from a checkpoint (on every DDP rank, whichever read the file)
        self._pending_stop: StopTraining | None = None  # a callback's stop, applied before the next step (see _emit)
        self._t0: float | None = None
        self._params: list[torch.nn.Parameter] = []
        self.eval_every_steps, self.eval_every_epochs = self._eval_cadence()
        self.watch = spec.early_stopping.metric if spec.early_stopping else ("val/loss" if eval_sets.get("val") else "train/loss_eval")
        self.higher_is_better = self.watch == "val/accuracy"  # losses: lower is better
        # bf16: forward and loss under autocast (weights, gradients and optimizer state stay fp32); auto: bf16 where
        # the hardware has native bf16 matmuls, else fp32
        self.precision = resolve_precision(getattr(spec, "precision", "fp32"), device)
        self.autocast = self.precision == "bf16"
        self.governor = governor  # adapts torch's threads to the CPUs other processes leave free (None: leave them)

    @property
    def checkpoint_dir(self) -> Path:
        if callable(self._checkpoint_dir):
            self._checkpoint_dir = self._checkpoint_dir()
        return Path(self._checkpoint_dir)

    def _eval_cadence(self) -> tuple[int | None, int | None]:
        """(every N steps, every N epochs): as the spec says; else once per epoch, or 10 times in a step-limited run."""
        ev = self.spec.eval
        if ev.every_steps is not None:
            return ev.every_steps, None
        if ev.every_epochs is not None or self.spec.epochs is not None:
            return None, ev.every_epochs or 1
        return max(1, self.total_steps // 10), None

    # -- state -------------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        elapsed = self.elapsed_before + (time.perf_counter() - self._t0 if self._t0 is not None else 0.0)
        return {
            "format": 1,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "sampler": self.batches.state_dict(),
            "rng": capture_rng(),
            "dropout_rng": self._mask_stream().state_dict() if self._mask_stream() is not None else None,
            "trainer": {
                "step": self.step,
                "epoch": self.epoch,
                "best": self.best,
                "best_step": self.best_step,
                "bad_evals": self.bad_evals,
                "epoch_loss_sum": self.epoch_loss_sum,
                "epoch_loss_n": self.epoch_loss_n,
                "last_eval": dict(self.last_eval),
                "last_train_loss": self.last_train_loss,
                "last_eval_at": self.last_eval_at,
                "elapsed": elapsed,
                "total_steps": self.total_steps,
            },
            "meta": self.meta,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        total = state["trainer"].get("total_steps")
        if total is not None and int(total) != self.total_steps:
            # The run keeps the length it started with (e.g. cut by HARNESS_MAX_STEPS then, or not now): the schedule
            # follows it, so the learning rate does not jump at the resume. (Made before the optimizer's state is
            # loaded: a new scheduler sets the optimizer's lr to its first step's.)
            self.total_steps = int(total)
            self.scheduler = make_scheduler(self.optimizer, self.spec, self.total_steps)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.resumed = True
        self.batches.load_state_dict(state["sampler"])
        t = state["trainer"]
        self.step, self.epoch = int(t["step"]), int(t["epoch"])
        self.best, self.best_step, self.bad_evals = t["best"], t["best_step"], int(t["bad_evals"])
        self.epoch_loss_sum, self.epoch_loss_n = float(t["epoch_loss_sum"]), int(t["epoch_loss_n"])
        self.last_eval, self.last_train_loss = dict(t["last_eval"]), t["last_train_loss"]
        self.last_eval_at = t.get("last_eval_at")
        self.elapsed_before = float(t.get("elapsed", 0.0))
        restore_rng(state["rng"])
        stream = self._mask_stream()
        if stream is not None and state.get("dropout_rng") is not None:  # absent in checkpoints made before the stream
            stream.load_state_dict(state["dropout_rng"])

    def load(self, path: Path | None) -> None:
        """Continue from a checkpoint. Under DDP rank 0 reads it (only rank 0 writes checkpoints) and the other ranks
        receive its state (their ``path`` may be None)."""
        self.load_state_dict(self._read(path))
        self.resumed_from = Path(path) if path is not None else None  # None on a DDP follower: rank 0 read it

    def _read(self, path: Path | None) -> dict[str, Any]:
        """A checkpoint's state: read by the main process, and sent to the others."""
        return self.ranks.broadcast(load_checkpoint(path) if self.ranks.is_main else None)  # type: ignore[arg-type]

    # -- the run -----------------------------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        # train.threads: exactly that many threads while the run trains, and the process's own count again after it
        # (a sweep's next trial, or the next run of a notebook, must not inherit this run's pin)
        with torch_threads(self.spec.threads):
            try:
                return self._fit()
            finally:
                if self.governor is not None:
                    self.governor.restore()  # the process's next run starts from the machine's thread count again

    def _fit(self) -> TrainResult:
        self._t0 = time.perf_counter()
        self.model.train()
        self._params = [p for p in self.model.parameters() if p.requires_grad]
        out = _Outcome()
        with StopSignals() as signals:
            if self.step == 0 and not self.resumed:
                out.reason = self._evaluate_and_track()  # step 0: the untrained model, to compare with ln(vocab)
            elif self._patience_ran_out():
                out.reason = StopReason.EARLY_STOPPED  # stopped (an outage, Ctrl-C) at the evaluation that ended it
            while out.reason is None and self.step < self.total_steps and not self._stop_asked(signals, out):
                self._tick()
                self._train_step(out)
            if out.reason is None and not self._stop_asked(signals, out):  # (a stop asked during the last step)
                out.reason = StopReason.COMPLETED
                if self.last_eval_at != self.step:
                    self._evaluate_and_track()  # always end with an evaluation of the final weights
                self._take_pending_stop(out)
            if out.reason in (StopReason.INTERRUPTED, StopReason.PRUNED, StopReason.FAILED):
                self._save(LAST, "last")  # so the run can be resumed (or inspected) where it stopped
        assert out.reason is not None  # every way out of the loop above sets it
        if out.reason is StopReason.EARLY_STOPPED:
            self._restore_best(out)
        if self._pending_stop is not None and out.reason is not self._pending_stop.reason:
            # the run stopped for its own reason (patience, divergence) where a callback asked it to stop: say both
            out.message = "; ".join(m for m in (out.message, self._pending_stop.message) if m)
        return TrainResult(
            stop_reason=out.reason,
            steps=self.step,
            epochs=self.epoch,
            best_metric=self.best,
            best_step=self.best_step,
            last_eval=dict(self.last_eval),
            last_train_loss=self.last_train_loss,
            wall_time_s=self.elapsed_before + time.perf_counter() - self._t0,
            message=out.message,
            signal=out.signal,
        )

    def _train_step(self, out: _Outcome) -> None:
        """One optimizer step and everything due after it; sets ``out.reason`` when the run must stop."""
        t_step = time.perf_counter()
        x, y = self.batches.next()
        epoch_end = self.batches.at_epoch_start  # the batch just drawn was the epoch's last
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        x, y = self.ranks.shard(x, y)  # under DDP every rank drew the same global batch and trains on its slice
        lr = self.optimizer.param_groups[0]["lr"]

        # forward and backward
        with self._autocast():
            logits = self.net(x)
        loss, loss_value = self.ranks.loss(logits, y)
        if not math.isfinite(loss_value):
            self._diverged(out, lr, loss_value, float("nan"), f"loss became {loss_value} at step {self.step}")
            return
        loss.backward()
        clip = self.spec.clip_grad_norm
        # the global gradient norm is logged either way; scaling the gradients is skipped when nothing clips
        grads = [p.grad for p in self._params if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads, foreach=True)
        if clip is not None:
            torch.nn.utils.clip_grads_with_norm_(self._params, clip, norm, foreach=True)
        norm_value = norm.item()
        if not math.isfinite(norm_value):  # never apply a non-finite update
            self._diverged(out, lr, loss_value, norm_value, f"gradient norm became {norm_value} at step {self.step}")
            return

        # update
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()

        # Bookkeeping for the whole step before telling anyone: the process may die during the events, and a
        # checkpoint taken then must describe a whole step.
        epoch_mean = self._count_step(loss_value, epoch_end)
        tokens_per_sec = x.numel() * self.ranks.world_size / max(time.perf_counter() - t_step, 1e-9)
        self._emit(StepEnd(step=self.step - 1, epoch=self.epoch - int(epoch_mean is not None), loss=loss_value, lr=lr,
                           grad_norm=norm_value, clipped=clip is not None and norm_value > clip, tokens_per_sec=tokens_per_sec))
        faults.point("step")

        # what is due after the step
        if epoch_mean is not None:
            self._emit(EpochEnd(step=self.step, epoch=self.epoch, train_loss=epoch_mean))
        if self._eval_due(epoch_end):
            out.reason = self._evaluate_and_track()
        if self._periodic_checkpoint_due(epoch_end):
            self._save(periodic_name(self.step), "periodic")
            prune_periodic(self.checkpoint_dir, self.spec.checkpoint.keep)

    def _count_step(self, loss_value: float, epoch_end: bool) -> float | None:
        """Advance step (and epoch) counters; returns the epoch's mean train loss when an epoch just ended."""
        self.step += 1
        self.last_train_loss = loss_value
        self.epoch_loss_sum += loss_value
        self.epoch_loss_n += 1
        if not (epoch_end and self.spec.epochs is not None):
            return None
        self.epoch += 1
        mean = self.epoch_loss_sum / max(self.epoch_loss_n, 1)
        self.epoch_loss_sum, self.epoch_loss_n = 0.0, 0
        return mean

    def _diverged(self, out: _Outcome, lr: float, loss_value: float, norm_value: float, message: str) -> None:
        self._emit(StepEnd(step=self.step, epoch=self.epoch, loss=loss_value, lr=lr, grad_norm=norm_value, clipped=False,
                           tokens_per_sec=0.0))
        out.reason, out.message = StopReason.DIVERGED, message

    def _restore_best(self, out: _Outcome) -> None:
        """Early stopping with restore_best: load the best weights; the final metrics then describe those weights."""
        es = self.spec.early_stopping
        if es is None or not es.restore_best or self.best_step is None:
            return
        have = (self.checkpoint_dir / BEST).is_file()  # not when resumed on a machine that fetched only last.pt
        if not self.ranks.broadcast(have):
            return
        self.model.load_state_dict(self._read(self.checkpoint_dir / BEST)["model"])
        # the run's final evaluation is of the weights it keeps (the one before described the weights it dropped)
        self.last_eval = self.evaluate()
        self._emit(BestRestored(step=self.step, best_step=self.best_step, metrics=dict(self.last_eval)))
        out.message = f"restored the best weights from step {self.best_step}"

    def _patience_ran_out(self) -> bool:
        es = self.spec.early_stopping
        return es is not None and self.bad_evals >= es.patience

    # -- evaluation --------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean loss over the fixed evaluation batches of each split, in eval mode (no dropout); for a classifier also
        val/accuracy, the share of graded positions whose most likely class is the label. Under DDP every rank
        evaluates the same batches with the same weights, so every rank takes the same early-stopping decision."""
        was_training = self.model.training
        self.model.eval()
        out: dict[str, float] = {}
        try:
            for split, batches in self.eval_sets.items():
                if not batches:
                    continue
                total, count, correct = 0.0, 0, 0
                for x, y in batches:
                    self._tick()
                    x, y = x.to(self.device), y.to(self.device)
                    with self._autocast():
                        logits = self.model(x)
                    graded = y != PAD_TARGET
                    n = int(graded.sum())
                    total += cross_entropy(logits, y).item() * n
                    count += n
                    if self.classify and split == "val":
                        correct += int((logits.argmax(dim=-1)[graded] == y[graded]).sum())
                    faults.point("eval")
                out["val/loss" if split == "val" else "train/loss_eval"] = total / max(count, 1)
                if self.classify and split == "val":
                    out["val/accuracy"] = correct / max(count, 1)
        finally:
            self.model.train(was_training)
        return out

    def _evaluate_and_track(self) -> StopReason | None:
        """Evaluate, track the best value, save best/last checkpoints; EARLY_STOPPED when patience runs out.

        The evaluation is told (and its metrics written) before the checkpoints: a checkpoint never runs ahead of
        the metrics, so a run killed in between repeats the evaluation when it resumes. A callback's stop waits until
        both checkpoints are written (see _emit)."""
        metrics = self.ranks.agree_on_eval(self.evaluate(), self.model, self.device)
        self.last_eval, self.last_eval_at = metrics, self.step
        value = metrics.get(self.watch)
        improved = False
        es = self.spec.early_stopping
        if value is not None and math.isfinite(value):
            if self._improves(value, es.min_delta if es else 0.0):
                self.best, self.best_step, self.bad_evals, improved = value, self.step, 0, True
            else:
                self.bad_evals += 1
        self._emit(EvalEnd(step=self.step, epoch=self.epoch, metrics=metrics, improved=improved, best=self.best))
        if improved:
            self._save(BEST, "best")
        self._save(LAST, "last")
        return StopReason.EARLY_STOPPED if self._patience_ran_out() else None

    def _improves(self, value: float, min_delta: float) -> bool:
        """Whether ``value`` beats the best so far by more than ``min_delta``, in the watched metric's direction."""
        if self.best is None:
            return True
        return value > self.best + min_delta if self.higher_is_better else value < self.best - min_delta

    def _stop_asked(self, signals: StopSignals, out: _Outcome) -> bool:
        """Whether to stop before the next step, setting ``out``: a callback asked (its stop is held until here), or
        Ctrl-C or SIGTERM was seen. Under DDP the ranks agree: all stop after the same step."""
        asked = self.ranks.any(signals.received is not None or self._pending_stop is not None, self.device)
        if not asked:
            return False
        if self._take_pending_stop(out):
            return True
        out.reason, out.signal = StopReason.INTERRUPTED, signals.received
        if signals.received is None:
            out.message = "another rank of this DDP run stopped"
        self._emit(Stopping(step=self.step, reason=StopReason.INTERRUPTED, doing="saving a checkpoint, then writing the buffered metrics"))
        return True

    def _take_pending_stop(self, out: _Outcome) -> bool:
        """Apply a callback's held stop to ``out``; whether there was one."""
        if self._pending_stop is None:
            return False
        out.reason, out.message = self._pending_stop.reason, self._pending_stop.message
        return True

    def _eval_due(self, epoch_end: bool) -> bool:
        if self.eval_every_steps is not None:
            return self.step % self.eval_every_steps == 0
        return epoch_end and self.eval_every_epochs is not None and self.epoch % self.eval_every_epochs == 0

    def _periodic_checkpoint_due(self, epoch_end: bool) -> bool:
        ck = self.spec.checkpoint
        if ck.every_steps is not None and self.step % ck.every_steps == 0:
            return True
        return bool(epoch_end and ck.every_epochs is not None and self.epoch % ck.every_epochs == 0)

    # -- helpers -----------------------------------------------------------------------------------------------------
    def _emit(self, event: Event) -> None:
        """Tell every callback. A callback's StopTraining is held, not raised: the step's remaining work (its epoch
        end, evaluation, best and last checkpoints) still happens, and the stop takes effect before the next step
        (:meth:`_stop_asked`), on every DDP rank (only rank 0 has callbacks). The first stop asked for wins."""
        for cb in self.callbacks:
            try:
                cb(event)
            except StopTraining as request:
                self._pending_stop = self._pending_stop or request

    def _tick(self) -> None:
        """Before each step and each evaluation batch: let the governor match the threads to the CPUs free."""
        if self.governor is not None:
            self.governor.tick()

    def _mask_stream(self) -> Any:
        """The model's dropout stream (harness.dropout.MaskStream), whose state every checkpoint carries; None for a
        model without one."""
        return getattr(self.model, "masks", None)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if not self.autocast:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def _save(self, name: str, kind: str) -> None:
        if not self.ranks.is_main:
            return  # every rank holds the same state; rank 0 writes it
        path = self.checkpoint_dir / name
        save_checkpoint(self.state_dict(), path, keep_previous=(kind == "last"))
        self._emit(CheckpointSaved(step=self.step, path=path, kind=kind))
