"""The training loop. It knows nothing of MLflow or Optuna: it emits events to callbacks and returns a result.

Step convention: ``step`` counts optimizer updates. ``train/loss`` at step s is the loss of the s-th batch under the
weights after s updates, so step 0 is the untrained model; an evaluation after s updates is logged at step s.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
import torch.nn.functional as F

from harness import _faults
from harness._checkpoint import BEST, LAST, capture_rng, load_checkpoint, periodic_name, prune_periodic, restore_rng, save_checkpoint
from harness._data import Batches
from harness._spec import TrainSpec

__all__ = [
    "Callback",
    "CheckpointSaved",
    "EpochEnd",
    "EvalEnd",
    "Event",
    "StepEnd",
    "StopTraining",
    "TrainResult",
    "Trainer",
    "lr_lambda",
    "resolve_device",
]

STOP_REASONS = ("completed", "early_stopped", "diverged", "interrupted", "failed", "pruned")


# ----------------------------------------------------------------------------------------------------------- events


@dataclass(frozen=True)
class Event:
    step: int


@dataclass(frozen=True)
class StepEnd(Event):
    epoch: int
    loss: float
    lr: float
    grad_norm: float
    clipped: bool
    tokens_per_sec: float


@dataclass(frozen=True)
class EvalEnd(Event):
    epoch: int
    metrics: dict[str, float]  # "val/loss", "train/loss_eval"
    improved: bool
    best: float | None


@dataclass(frozen=True)
class EpochEnd(Event):
    epoch: int  # epochs completed
    train_loss: float  # mean train/loss over the epoch


@dataclass(frozen=True)
class CheckpointSaved(Event):
    path: Path
    kind: str  # "last", "best", "periodic"


class Callback(Protocol):
    def __call__(self, event: Event) -> None: ...


class StopTraining(Exception):
    """Raised by a callback to end the run early with ``reason`` (e.g. "pruned")."""

    def __init__(self, reason: str, message: str = ""):
        super().__init__(message or reason)
        self.reason = reason
        self.message = message


@dataclass
class TrainResult:
    stop_reason: str
    steps: int
    epochs: int
    best_metric: float | None
    best_step: int | None
    last_eval: dict[str, float]
    last_train_loss: float | None
    wall_time_s: float
    message: str = ""
    signal: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------------- pieces


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from harness._errors import HarnessError

        raise HarnessError("train.device is cuda but torch sees no CUDA device (torch.cuda.is_available() is False)")
    if name == "mps" and not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
        from harness._errors import HarnessError

        raise HarnessError("train.device is mps but this torch build or machine has no MPS device")
    return torch.device(name)


def lr_lambda(spec: TrainSpec, total_steps: int) -> Callable[[int], float]:
    """Multiplier of the peak lr at each step for the configured schedule."""
    sched = spec.schedule
    peak = spec.optimizer.lr
    floor = sched.min_lr / peak
    warm = sched.warmup_steps

    def f(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if sched.name == "constant":
            return 1.0
        span = max(1, total_steps - warm)
        progress = min(1.0, (step - warm) / span)
        if sched.name == "linear":
            return floor + (1.0 - floor) * (1.0 - progress)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


def make_optimizer(model: torch.nn.Module, spec: TrainSpec) -> torch.optim.Optimizer:
    opt = spec.optimizer
    # Decay matrices only: biases, norms and embeddings' 1-D params are not regularised (common GPT practice).
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": opt.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if opt.name == "adamw":
        return torch.optim.AdamW(groups, lr=opt.lr, betas=opt.betas, eps=opt.eps)
    if opt.name == "adam":
        return torch.optim.Adam(groups, lr=opt.lr, betas=opt.betas, eps=opt.eps)
    return torch.optim.SGD(groups, lr=opt.lr, momentum=opt.momentum)


def _loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # (B, T, V) vs (B, T): flatten to (B*T, V); -100 targets (padding) do not count
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1), ignore_index=-100)


class _Signals:
    """SIGINT/SIGTERM set a flag the loop checks between steps, so the run can checkpoint and end cleanly."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C means "now"
        self.received = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


# ----------------------------------------------------------------------------------------------------------- trainer


class Trainer:
    """Runs the loop for one spec. Construct, optionally ``load`` a checkpoint, then ``fit``."""

    def __init__(
        self,
        model: torch.nn.Module,
        spec: TrainSpec,
        batches: Batches,
        *,
        eval_sets: dict[str, list[tuple[torch.Tensor, torch.Tensor]]],
        checkpoint_dir: Path,
        device: torch.device,
        callbacks: list[Callback] | None = None,
        meta: dict[str, Any] | None = None,
    ):
        self.model = model.to(device)
        self.spec = spec
        self.batches = batches
        self.eval_sets = eval_sets
        self.checkpoint_dir = Path(checkpoint_dir)
        self.device = device
        self.callbacks = list(callbacks or [])
        self.meta = dict(meta or {})
        self.optimizer = make_optimizer(self.model, spec)
        self.steps_per_epoch = batches.steps_per_epoch
        self.total_steps = spec.max_steps if spec.max_steps is not None else spec.epochs * self.steps_per_epoch  # type: ignore[operator]
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(spec, self.total_steps))
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
        if spec.eval.every_steps is not None:
            self.eval_every_steps: int | None = spec.eval.every_steps
            self.eval_every_epochs: int | None = None
        elif spec.eval.every_epochs is not None or spec.epochs is not None:
            self.eval_every_steps, self.eval_every_epochs = None, spec.eval.every_epochs or 1
        else:
            self.eval_every_steps, self.eval_every_epochs = max(1, self.total_steps // 10), None
        self.watch = spec.early_stopping.metric if spec.early_stopping else ("val/loss" if eval_sets.get("val") else "train/loss_eval")
        self.autocast = spec.precision == "bf16"

    # -- state -----------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "format": 1,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "sampler": self.batches.state_dict(),
            "rng": capture_rng(),
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
                "elapsed": self.elapsed_before + (time.perf_counter() - self._t0 if hasattr(self, "_t0") else 0.0),
            },
            "meta": self.meta,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.batches.load_state_dict(state["sampler"])
        t = state["trainer"]
        self.step, self.epoch = int(t["step"]), int(t["epoch"])
        self.best, self.best_step, self.bad_evals = t["best"], t["best_step"], int(t["bad_evals"])
        self.epoch_loss_sum, self.epoch_loss_n = float(t["epoch_loss_sum"]), int(t["epoch_loss_n"])
        self.last_eval, self.last_train_loss = dict(t["last_eval"]), t["last_train_loss"]
        self.last_eval_at = t.get("last_eval_at")
        self.elapsed_before = float(t.get("elapsed", 0.0))
        restore_rng(state["rng"])

    def load(self, path: Path) -> None:
        self.load_state_dict(load_checkpoint(path))
        self.resumed_from = Path(path)

    # -- helpers -------------------------------------------------------------------------------------------------
    def _emit(self, event: Event) -> None:
        for cb in self.callbacks:
            cb(event)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if not self.autocast:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def _save(self, name: str, kind: str) -> None:
        path = self.checkpoint_dir / name
        save_checkpoint(self.state_dict(), path, keep_previous=(kind == "last"))
        self._emit(CheckpointSaved(step=self.step, path=path, kind=kind))

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean loss over the fixed evaluation batches of each split, in eval mode (no dropout)."""
        was_training = self.model.training
        self.model.eval()
        out: dict[str, float] = {}
        try:
            for split, batches in self.eval_sets.items():
                if not batches:
                    continue
                total, count = 0.0, 0
                for x, y in batches:
                    x, y = x.to(self.device), y.to(self.device)
                    with self._autocast():
                        logits = self.model(x)
                    n = int((y != -100).sum())
                    total += _loss(logits, y).item() * n
                    count += n
                    _faults.point("eval")
                out["val/loss" if split == "val" else "train/loss_eval"] = total / max(count, 1)
        finally:
            self.model.train(was_training)
        return out

    def _do_eval(self) -> str | None:
        """Evaluate, track the best, save best/last checkpoints; returns "early_stopped" when patience runs out."""
        metrics = self.evaluate()
        self.last_eval, self.last_eval_at = metrics, self.step
        value = metrics.get(self.watch)
        improved = False
        es = self.spec.early_stopping
        if value is not None and math.isfinite(value):
            delta = es.min_delta if es else 0.0
            if self.best is None or value < self.best - delta:
                self.best, self.best_step, self.bad_evals, improved = value, self.step, 0, True
            else:
                self.bad_evals += 1
        self._emit(EvalEnd(step=self.step, epoch=self.epoch, metrics=metrics, improved=improved, best=self.best))
        if improved:
            self._save(BEST, "best")
        self._save(LAST, "last")
        if es and self.bad_evals >= es.patience:
            return "early_stopped"
        return None

    def _eval_due_after_step(self) -> bool:
        return self.eval_every_steps is not None and self.step % self.eval_every_steps == 0

    def _periodic_due(self, epoch_end: bool) -> bool:
        ck = self.spec.checkpoint
        if ck.every_steps is not None and self.step % ck.every_steps == 0:
            return True
        return bool(epoch_end and ck.every_epochs is not None and self.epoch % ck.every_epochs == 0)

    # -- loop ------------------------------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        self._t0 = time.perf_counter()
        self.model.train()
        clip = self.spec.clip_grad_norm
        params = [p for p in self.model.parameters() if p.requires_grad]
        stop: str | None = None
        message = ""
        received: int | None = None
        tokens_per_batch = None
        with _Signals() as signals:
            try:
                if self.step == 0 and self.resumed_from is None:
                    stop = self._do_eval()  # step 0: the untrained model, to compare with ln(vocab)
                while stop is None and self.step < self.total_steps:
                    if signals.received is not None:
                        received = signals.received
                        stop = "interrupted"
                        break
                    t_step = time.perf_counter()
                    x, y = self.batches.next()
                    epoch_end = self.batches.at_epoch_start
                    x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
                    if tokens_per_batch is None:
                        tokens_per_batch = x.numel()
                    lr = self.optimizer.param_groups[0]["lr"]
                    with self._autocast():
                        logits = self.model(x)
                    loss = _loss(logits, y)
                    loss_value = loss.item()
                    if not math.isfinite(loss_value):
                        self._emit(StepEnd(step=self.step, epoch=self.epoch, loss=loss_value, lr=lr, grad_norm=float("nan"),
                                           clipped=False, tokens_per_sec=0.0))
                        stop, message = "diverged", f"loss became {loss_value} at step {self.step}"
                        break
                    loss.backward()
                    norm = torch.nn.utils.clip_grad_norm_(params, max_norm=clip if clip is not None else float("inf"))
                    norm_value = norm.item()
                    if not math.isfinite(norm_value):  # do not apply a non-finite update
                        self._emit(StepEnd(step=self.step, epoch=self.epoch, loss=loss_value, lr=lr, grad_norm=norm_value,
                                           clipped=False, tokens_per_sec=0.0))
                        stop, message = "diverged", f"gradient norm became {norm_value} at step {self.step}"
                        break
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                    self.scheduler.step()
                    # Finish all bookkeeping for this step before telling anyone: a callback may stop the run (or the
                    # process may die) during the events, and a checkpoint taken then must describe a whole step.
                    self.step += 1
                    self.last_train_loss = loss_value
                    self.epoch_loss_sum += loss_value
                    self.epoch_loss_n += 1
                    epoch_mean = None
                    if epoch_end and self.spec.epochs is not None:
                        self.epoch += 1
                        epoch_mean = self.epoch_loss_sum / max(self.epoch_loss_n, 1)
                        self.epoch_loss_sum, self.epoch_loss_n = 0.0, 0
                    dt = time.perf_counter() - t_step
                    self._emit(StepEnd(step=self.step - 1, epoch=self.epoch - int(epoch_mean is not None), loss=loss_value, lr=lr,
                                       grad_norm=norm_value, clipped=clip is not None and norm_value > clip,
                                       tokens_per_sec=tokens_per_batch / max(dt, 1e-9)))
                    _faults.point("step")
                    if epoch_mean is not None:
                        self._emit(EpochEnd(step=self.step, epoch=self.epoch, train_loss=epoch_mean))
                    due_eval = self._eval_due_after_step() or (
                        epoch_end and self.eval_every_epochs is not None and self.epoch % self.eval_every_epochs == 0
                    )
                    if due_eval:
                        stop = self._do_eval()
                    if self._periodic_due(epoch_end):
                        self._save(periodic_name(self.step), "periodic")
                        prune_periodic(self.checkpoint_dir, self.spec.checkpoint.keep)
                if stop is None:
                    stop = "completed"
                if stop == "completed" and self.last_eval_at != self.step:
                    self._do_eval()  # always end with an evaluation of the final weights
            except StopTraining as req:
                stop, message = req.reason, req.message
            if stop in ("interrupted", "pruned", "failed"):
                self._save(LAST, "last")
        es = self.spec.early_stopping
        if stop == "early_stopped" and es is not None and es.restore_best and (self.checkpoint_dir / BEST).is_file():
            self.model.load_state_dict(load_checkpoint(self.checkpoint_dir / BEST)["model"])
            # The run's final model is now the best one, so its final metrics describe those weights.
            self.last_eval = self.evaluate()
            message = f"restored the best weights from step {self.best_step}"
        wall = self.elapsed_before + time.perf_counter() - self._t0
        return TrainResult(
            stop_reason=stop,
            steps=self.step,
            epochs=self.epoch,
            best_metric=self.best,
            best_step=self.best_step,
            last_eval=dict(self.last_eval),
            last_train_loss=self.last_train_loss,
            wall_time_s=wall,
            message=message,
            signal=received,
        )
