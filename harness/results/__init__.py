"""Results as pandas DataFrames and figures on demand::

    from harness import results
    runs = results.runs("lr_sweep")                  # one row per run: typed params, final/best metrics, status, ...
    hist = results.history("lr_sweep", metrics=["train/loss", "val/loss"])   # long form: run_id, metric, step, value
    study = results.study("lr_sweep")                # Optuna's trials, joined to their MLflow runs
    cfg = results.configs("lr_sweep")                # repeated seeds: one row per configuration, mean ± 95 % CI, verdict

A *selector* is an experiment name, a sweep's parent run id (its trials), a run id, an experiment id, or a study name
(the runs tagged ``harness.study``); a list of selectors selects their union. The tracking store is ``uri=``, else
``MLFLOW_TRACKING_URI``, else ``sqlite:///mlruns/mlflow.db``. Reading never creates a store.

Modules: ``store`` (finding runs), ``values`` (typed params), ``metrics`` (bulk histories), ``frames`` (runs and
histories as frames, export), ``studies`` (Optuna studies), ``configs`` (repeated seeds: configurations and groups),
``compare`` and ``figures``.
"""

from harness.results.compare import Comparison, compare
from harness.results.configs import GroupComparison, compare_groups, configs
from harness.results.figures import PLOT_KINDS, plot
from harness.results.frames import export, history, params_of, runs
from harness.results.studies import study
from harness.results.values import parse_value

__all__ = ["PLOT_KINDS", "Comparison", "GroupComparison", "compare", "compare_groups", "configs", "export", "history", "params_of", "parse_value", "plot", "runs", "study"]
