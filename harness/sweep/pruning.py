"""The pruners a sweep spec names: Optuna's own for single runs, and the paired rule for repeated seeds, an Optuna
``BasePruner`` like any other."""

from __future__ import annotations

from typing import Any

from harness.spec import Spec
from harness.sweep.attempts import CONFIG

__all__ = ["STOP", "PairedPruner", "make_pruner"]

STOP = "harness.stop."  # study user attribute STOP + configuration id: why the paired rule stopped it


def _base_pruner() -> type:
    import optuna

    return optuna.pruners.BasePruner  # type: ignore[no-any-return]


class PairedPruner(_base_pruner()):  # type: ignore[misc]
    """Stop a configuration whose seeds are clearly worse than another configuration's (``harness.stats.sequential``:
    at most ``p_threshold`` over every look of the sweep).

    The rule decides under the study lock, after every seed run, for every configuration at once
    (:meth:`harness.sweep.schedule.Scheduler.settle`), and writes each stop into the study; ``prune`` tells a seed
    run that is still training whether its configuration has been stopped, so it stops at its next evaluation."""

    def __init__(self, *, p_threshold: float, seeds: int, configurations: int):
        self.p_threshold = p_threshold
        self.seeds = seeds
        self.configurations = configurations

    def prune(self, study: Any, trial: Any) -> bool:
        return self.why(study, trial) is not None

    def why(self, study: Any, trial: Any) -> str | None:
        """The evidence on which the rule stopped ``trial``'s configuration, or None."""
        cid = trial.user_attrs.get(CONFIG)
        return None if cid is None else study.user_attrs.get(STOP + str(cid))

    def stops(self, values: Any, open_: Any, *, lower_is_better: bool) -> Any:
        """The rule on ``values`` (configurations x seeds, NaN where not run) for the ``open_`` configurations."""
        from harness.stats.sequential import paired_rule

        return paired_rule(values, open_, lower_is_better=lower_is_better, seeds=self.seeds, configurations=self.configurations,
                           p_threshold=self.p_threshold)


def make_pruner(spec: Spec, *, configurations: int) -> Any:
    """The pruner of ``spec``'s sweep, which runs ``configurations`` configurations in all."""
    import optuna

    sw = spec.sweep
    assert sw is not None
    p = sw.pruner
    if p.name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)
    if p.name == "percentile":
        return optuna.pruners.PercentilePruner(percentile=p.percentile, n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)
    if p.name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=p.min_resource, reduction_factor=p.reduction_factor)
    if p.name == "hyperband":  # Optuna's own type hint says int, but it takes "auto" as SuccessiveHalvingPruner does
        return optuna.pruners.HyperbandPruner(min_resource=p.min_resource, reduction_factor=p.reduction_factor)  # type: ignore[arg-type]
    if p.name == "paired":
        return PairedPruner(p_threshold=p.p_threshold, seeds=sw.n_seeds, configurations=configurations)
    return optuna.pruners.NopPruner()
