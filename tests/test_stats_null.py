"""The verdicts and the paired rule, checked by simulation under the null: numpy, the same functions the sweep and
the results table call (harness.stats.best.versus_best, harness.stats.sequential.paired_rule), a few seconds.

The model is the one a repeated sweep has: every configuration runs under the same seeds, each seed shifts every
configuration alike (initial weights, batch order), and each run adds its own noise. Under the null all
configurations are equal; "power" shifts configuration 0 by 1 or 2 noise standard deviations in the worse direction.
A rate "within Monte Carlo error of 5 %" is at most 5 % plus three standard errors of a 5 % rate over the simulated
sweeps (the draws are seeded: the test is exact, and it fails for the rules it replaced, see the last test).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from harness.stats.best import BETTER, WORSE, versus_best
from harness.stats.sequential import paired_rule

SWEEPS = 2000
ALPHA = 0.05
BOUND = ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / SWEEPS)  # 0.0646
CONFIGS = (2, 3, 5, 10)
SEEDS = (3, 5, 10)


def _sweeps(k: int, n: int, *, shift: float = 0.0, seed: int = 0) -> np.ndarray:
    """(SWEEPS, k, n) objectives, lower is better: a per-seed effect shared by all configurations plus noise (sd 1);
    configuration 0 worse by ``shift`` noise standard deviations."""
    rng = np.random.default_rng([seed, k, n])
    x = rng.normal(0.0, 2.0, (SWEEPS, 1, n)) + rng.normal(0.0, 1.0, (SWEEPS, k, n))
    x[:, 0, :] += shift
    return x


def _table_calls(x: np.ndarray) -> np.ndarray:
    """(SWEEPS, k) bool: a configuration called better or worse than the best."""
    v = versus_best(x, lower_is_better=True).verdict
    return (v == WORSE) | (v == BETTER)


def _run_rule(x: np.ndarray, *, p_threshold: float = ALPHA) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The paired rule applied as a grid sweep applies it: seed by seed across the open configurations, a look after
    every round. Returns (stopped, seeds each configuration ran), both (SWEEPS, k), and the values it saw."""
    sweeps, k, n = x.shape
    seen = np.full_like(x, np.nan)
    open_ = np.ones((sweeps, k), dtype=bool)
    ran = np.zeros((sweeps, k), dtype=int)
    for r in range(n):
        seen[:, :, r] = np.where(open_, x[:, :, r], np.nan)
        ran += open_
        if r + 1 >= 2:
            stops = paired_rule(seen[:, :, : r + 1], open_, lower_is_better=True, seeds=n, configurations=k, p_threshold=p_threshold)
            open_ &= ~stops.stop
    return ~open_, ran, seen


@pytest.mark.parametrize("n", SEEDS)
@pytest.mark.parametrize("k", CONFIGS)
def test_the_verdicts_family_wise_error_is_at_most_5_percent_counting_the_choice_of_the_best(k, n):
    x = _sweeps(k, n)
    rate = _table_calls(x).any(axis=1).mean()
    power = {d: _table_calls(_sweeps(k, n, shift=d, seed=1))[:, 0].mean() for d in (1.0, 2.0)}
    print(f"verdicts  k={k:2d} n={n:2d}: null sweeps with a wrong verdict {rate:6.1%}; config 0 called worse at "
          f"1 sd {power[1.0]:6.1%}, 2 sd {power[2.0]:6.1%}")
    assert rate <= BOUND, f"{rate:.3f} of null sweeps had a better/worse verdict (bound {BOUND:.3f})"


@pytest.mark.parametrize("n", SEEDS)
@pytest.mark.parametrize("k", CONFIGS)
def test_the_paired_rule_stops_any_configuration_in_at_most_5_percent_of_null_sweeps(k, n):
    stopped, _, _ = _run_rule(_sweeps(k, n))
    rate = stopped.any(axis=1).mean()
    out = []
    for d in (1.0, 2.0):
        s, ran, _ = _run_rule(_sweeps(k, n, shift=d, seed=1))
        hit = s[:, 0]
        out.append(f"{d:.0f} sd stopped {hit.mean():6.1%}" + (f" after {ran[hit, 0].mean():.1f} seeds" if hit.any() else ""))
    print(f"rule      k={k:2d} n={n:2d}: null sweeps with a stop {rate:6.1%}; config 0: " + "; ".join(out))
    assert rate <= BOUND, f"{rate:.3f} of null sweeps stopped a configuration (bound {BOUND:.3f})"


def test_a_clearly_worse_configuration_is_still_stopped_early():
    """The guarantee is paid for with power at small differences, not with the configurations a sweep should drop:
    10 noise sd worse (a learning rate that does not train is 40 or more), 3 configurations, 5 seeds: stopped in
    nearly every sweep, after 3 seeds on average instead of 5."""
    stopped, ran, _ = _run_rule(_sweeps(3, 5, shift=10.0, seed=2))
    assert stopped[:, 0].mean() > 0.99 and ran[stopped[:, 0], 0].mean() < 3.5
    assert not stopped[:, 1:].any(axis=1).mean() > BOUND


def test_stopped_configurations_leave_the_rest_of_the_table_within_5_percent():
    """With the rule on, the table's better/worse verdicts (a stopped configuration says "stopped", with the rule's
    evidence) keep their family-wise error."""
    for k, n in ((3, 5), (10, 5)):
        x = _sweeps(k, n)
        stopped, _, seen = _run_rule(x)
        v = versus_best(seen, lower_is_better=True, stopped=stopped).verdict
        assert ((v == WORSE) | (v == BETTER)).any(axis=1).mean() <= BOUND


def test_the_simulation_catches_the_rules_it_replaced():
    """The bound is not loose enough to pass anything: the old table (each configuration tested alone against the
    best at 5 %) and the old rule (a 5 % one-sided test against the best mean after every seed) both fail it."""
    from scipy import stats

    x = _sweeps(5, 5)
    means = x.mean(axis=2)
    best = means.argmin(axis=1)
    d = x - x[np.arange(SWEEPS), best][:, None, :]
    t = d.mean(axis=2) / (d.std(axis=2, ddof=1) / math.sqrt(5) + 1e-300)
    naive = (2 * stats.t.sf(np.abs(t), 4) < ALPHA) & (np.arange(5) != best[:, None])
    assert naive.any(axis=1).mean() > 0.2
    stopped, _, _ = _run_rule(x, p_threshold=ALPHA * 3 * 5 * 4)  # the same rule without spending: one 5 % test per look
    assert stopped.any(axis=1).mean() > 2 * BOUND
