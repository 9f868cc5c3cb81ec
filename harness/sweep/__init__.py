"""Sweeps: an Optuna study over copies of a run spec, one nested MLflow run per trial.

``storage`` (where the study lives, and its lock), ``study`` (create or join it: base spec, parent run, queued
trials), ``trial`` (one trial through the job), ``worker`` (take trials until none is left; reap dead workers),
``report`` (the trial table and the parent run's artifacts), ``driver`` (:func:`run_sweep`).
"""

from harness._lazy import lazy_exports

_EXPORTS = {"SweepResult": "report", "SweepStart": "driver", "retried_numbers": "storage", "run_sweep": "driver",
            "trials_table": "report", "verdict": "report"}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
