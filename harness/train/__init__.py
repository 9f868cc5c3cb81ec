"""Training: the loop (``loop``), what it emits and returns (``events``), its loss (``loss``), the optimizer and
schedule (``optim``), checkpoint files (``checkpoint``), the processes it runs on, alone or DDP (``distributed``), and
the process around it: device, seeds, signals (``runtime``).

Nothing here knows MLflow or Optuna. Names are imported on first use, so ``harness.train.events`` alone needs no torch.
"""

from harness._lazy import lazy_exports

_EXPORTS = {
    "BestRestored": "events", "Callback": "events", "CheckpointSaved": "events", "EpochEnd": "events", "EvalEnd": "events",
    "Event": "events", "StepEnd": "events", "StopReason": "events", "StopTraining": "events", "Stopping": "events",
    "TrainResult": "events",
    "Trainer": "loop", "cross_entropy": "loss", "lr_lambda": "optim", "make_optimizer": "optim",
    "resolve_device": "runtime", "seed_everything": "runtime",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
