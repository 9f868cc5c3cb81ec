"""The paired rule: stop a configuration of a repeated sweep once it is clearly worse than another, with a chance of
stopping *any* configuration under the null of at most ``p_threshold`` over every look of the whole sweep.

The rule looks after every seed run: a configuration that is still open is compared, on the seeds both have run, with
every other configuration by a one-sided paired t-test ("this one is worse"). Looked at after every seed and against
every rival, a plain 5 % test stops some configuration in 47 % of null sweeps with 3 configurations and 77 % with 5.
So the threshold is spent, Bonferroni-style, over everything the rule can ever test:

* **looks**: a pair is tested at most once per number of shared seeds, and only at 2 .. seeds-1 of them (with every
  seed run there is nothing left to save), so ``seeds - 2`` looks per pair;
* **pairs**: every ordered pair of the sweep's configurations, ``K (K - 1)``.

Each test runs at ``p_threshold / (looks * K * (K - 1))``. The union bound needs no assumption about the order in which
seed runs finish, about how the looks depend on each other, or about stopping itself (a test of data that can no
longer change is the same test when it is repeated), so the guarantee holds with optional stopping, several workers
and resumes. It is conservative; what it still stops, and how early, is measured in bench/bench_verdicts.py. Zero
spread on fewer than :data:`harness.stats.pairs.ZERO_SPREAD_MIN` seeds never stops anything.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from harness.stats.pairs import pair_tests

__all__ = ["Stops", "looks", "paired_rule", "test_level"]


def looks(seeds: int) -> int:
    """How many times one pair can be tested: at 2 .. seeds-1 shared seeds (at least one, for the arithmetic)."""
    return max(seeds - 2, 1)


def test_level(p_threshold: float, *, seeds: int, configurations: int) -> float:
    """The one-sided level of each single test, so that all of them together stay within ``p_threshold``."""
    k = max(configurations, 2)
    return p_threshold / (looks(seeds) * k * (k - 1))


@dataclass(frozen=True)
class Stops:
    """Which open configurations the rule stops now (``(..., k)`` arrays), with the evidence for each."""

    stop: np.ndarray  # bool
    rival: np.ndarray  # the configuration it is clearly worse than (-1: none)
    p: np.ndarray  # the one-sided paired p against that rival (NaN: no test)
    n: np.ndarray  # the seeds that test shared
    level: float  # the level each test ran at


def paired_rule(values: np.ndarray, open_: np.ndarray, *, lower_is_better: bool, seeds: int, configurations: int,
                p_threshold: float) -> Stops:
    """Apply the rule to ``values`` (``(..., k, n)``: the finished seed runs' objectives, NaN where a seed has not run)
    for the configurations marked ``open_`` (``(..., k)``, bool). ``seeds`` is the length of the sweep's seed list and
    ``configurations`` how many configurations the sweep runs in all (K above)."""
    x = np.asarray(values, dtype=float)
    k = x.shape[-2]
    level = test_level(p_threshold, seeds=seeds, configurations=max(configurations, k))
    tests = pair_tests(x)
    greater = tests.p_greater()  # [i, j]: x_i - x_j > 0
    # "i is worse than j": larger when lower is better, smaller otherwise (then it is j's p of being larger)
    worse = greater if lower_is_better else np.swapaxes(greater, -1, -2)
    at_a_look = tests.testable & (tests.n >= 2) & (tests.n <= seeds - 1)
    worse = np.where(at_a_look & ~np.eye(k, dtype=bool), worse, np.nan)
    filled = np.where(np.isnan(worse), np.inf, worse)
    rival = np.argmin(filled, axis=-1)
    p = np.take_along_axis(worse, rival[..., None], axis=-1)[..., 0]
    n = np.take_along_axis(tests.n, rival[..., None], axis=-1)[..., 0]
    stop = np.asarray(open_, dtype=bool) & (np.nan_to_num(p, nan=np.inf) <= level)
    has = np.isfinite(p)
    return Stops(stop=stop, rival=np.where(has, rival, -1), p=p, n=np.where(has, n, 0), level=level)
