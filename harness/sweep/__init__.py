"""Sweeps: one Optuna study over copies of a run spec; every trial is an attempt at a seed run (a configuration under
one seed), one nested MLflow run each.

``storage`` (where the study lives), ``study`` (create, join or extend it: base spec, parent run), ``attempts`` (seed
runs, their retries and the crash budget, through Optuna's retry callback), ``claim`` (the exactly-once hand-out under
the study lock), ``fence`` (one run, one trainer), ``sampling`` and ``pruning`` (what the spec names),
``schedule`` (what runs next), ``trial`` (one attempt through the job), ``worker`` (take attempts until none is left),
``report`` (the tables and the parent run's artifacts), ``driver`` (:func:`run_sweep`).
"""

from harness._lazy import lazy_exports

_EXPORTS = {"SweepResult": "report", "SweepStart": "driver", "superseded": "attempts", "run_sweep": "driver",
            "trials_table": "report", "verdict": "report"}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
