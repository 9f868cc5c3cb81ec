"""The samplers a sweep spec names, seeded so that one worker is reproducible and several never collide.

Every worker (and every machine) builds its own sampler object. Built with one seed, two TPE or random samplers on
one study draw the same numbers, so trials 0 and 1 get the same learning rate. So a sampler is reseeded for every
trial from the sweep's seed and the trial's number: a trial number is given out once in a study, so two workers
never share a stream, and one worker's sweep is the same sweep every time it runs. CMA-ES already mixes the trial
number into its own seed, and QMC must share one seed among all its workers (it walks one sequence by the number
of trials so far), so those two are built once with the sweep's seed, as Optuna documents for distributed runs.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable

from harness.spec import Spec

__all__ = ["make_sampler", "trial_seed"]


def trial_seed(seed: int, number: int) -> int:
    """The seed of trial ``number``'s draws in a sweep seeded ``seed`` (32 bits, as numpy's RandomState wants)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{number}".encode()).digest()[:4], "big")


def make_sampler(spec: Spec) -> Any:
    """The Optuna sampler, seeded by ``sweep.seed`` (else the spec's seed). A grid's points are queued with fixed
    values, so its sampler never picks; random covers anything left."""
    import optuna

    sw = spec.sweep
    assert sw is not None
    seed = sw.seed if sw.seed is not None else spec.seed
    if sw.sampler == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed)
    if sw.sampler == "qmc":
        return optuna.samplers.QMCSampler(seed=seed)
    build = optuna.samplers.TPESampler if sw.sampler == "tpe" else optuna.samplers.RandomSampler
    return _per_trial(lambda s: build(seed=s), seed)


def _per_trial(build: Callable[[int], Any], seed: int) -> Any:
    import optuna

    class PerTrialSeed(optuna.samplers.BaseSampler):
        """``build(trial_seed(seed, trial number))`` for each trial: every method is that sampler's."""

        def __init__(self) -> None:
            self.inner = build(seed)

        def before_trial(self, study: Any, trial: Any) -> None:
            self.inner = build(trial_seed(seed, trial.number))
            self.inner.before_trial(study, trial)

        def infer_relative_search_space(self, study: Any, trial: Any) -> Any:
            return self.inner.infer_relative_search_space(study, trial)

        def sample_relative(self, study: Any, trial: Any, search_space: Any) -> Any:
            return self.inner.sample_relative(study, trial, search_space)

        def sample_independent(self, study: Any, trial: Any, param_name: str, param_distribution: Any) -> Any:
            return self.inner.sample_independent(study, trial, param_name, param_distribution)

        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            self.inner.after_trial(study, trial, state, values)

        def reseed_rng(self) -> None:
            self.inner.reseed_rng()

        def __str__(self) -> str:
            return f"{type(self.inner).__name__} (reseeded per trial)"

    return PerTrialSeed()
