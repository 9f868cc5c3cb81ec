"""Intervals and single comparisons over seeds, for the handful of seeds a training sweep can afford.

Everything is Student's t, computed by scipy:

* an interval for a mean: ``scipy.stats.ttest_1samp(...).confidence_interval``;
* two groups run under the same seeds: the paired t-test on the per-seed differences (:mod:`harness.stats.pairs`);
* two groups without shared seeds: Welch's t-test (``ttest_ind(equal_var=False)``).

These are the right tests for **one** comparison that the user chose (``harness compare a b``). A table that picks its
best configuration from the data and compares every other one with it needs the family-wise procedure of
:mod:`harness.stats.best`; a rule that looks after every seed needs :mod:`harness.stats.sequential`.

Why t and not a bootstrap: with 3 to 10 seeds a percentile bootstrap can never reach beyond the values it saw, and
its 95 % interval covers the true mean far less often than 95 % (84 % at n = 5 in a simulation of normal data); the t interval
is exact for normal errors and widens honestly as n shrinks.

A verdict never says more than its interval: *better* or *worse* only when the 95 % interval of the difference
excludes zero, else *not distinguishable*; fewer than two values give no interval at all, and identical values (or
identical paired differences) on fewer than three seeds give none either: zero spread is not certainty.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["ALPHA", "LEVEL", "Difference", "Interval", "band", "compare", "interval", "verdict"]

ALPHA = 0.05  # every test's level: a single comparison's, or a family's (see harness.stats.best)
LEVEL = 1 - ALPHA  # every interval the harness prints

BETTER, WORSE, SAME, NO_TEST = "better", "worse", "not distinguishable", "no interval (n < 2)"
ZERO_SPREAD = "no test (zero spread on n < 3)"


@dataclass(frozen=True)
class Interval:
    """The mean of ``n`` values, their sample standard deviation, and the t interval of the mean."""

    n: int
    mean: float
    std: float
    low: float
    high: float

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def __str__(self) -> str:
        if self.n == 0:
            return "-"
        if self.n < 2:
            return f"{self.mean:.4g} (n=1)"
        if math.isnan(self.half_width):
            return f"{self.mean:.4g} (n={self.n}, all equal)"
        return f"{self.mean:.4g} ± {self.half_width:.2g}"


@dataclass(frozen=True)
class Difference:
    """``a - b``: its mean, the t interval of that mean, the two-sided p-value and how it was paired."""

    n: int  # pairs (paired) or the smaller group's size (Welch)
    mean: float
    low: float
    high: float
    p: float
    paired: bool
    zero_spread: bool = False  # every pair differed by the same amount (or both groups were constant)


def _finite(values: Sequence[Any]) -> list[float]:
    """The values that are finite numbers (None, text, NaN and infinities dropped)."""
    return [f for f in _floats(values) if math.isfinite(f)]


def interval(values: Sequence[Any], level: float = LEVEL) -> Interval:
    """Mean, standard deviation and ``level`` t interval of the finite ``values`` (NaN where n is too small, or where
    fewer than three values are all equal: two equal seeds say nothing of the spread)."""
    from harness.stats.pairs import ZERO_SPREAD_MIN

    vals = _finite(values)
    n = len(vals)
    nan = math.nan
    if n == 0:
        return Interval(0, nan, nan, nan, nan)
    mean = math.fsum(vals) / n
    if n == 1:
        return Interval(1, mean, nan, nan, nan)
    import numpy as np
    from scipy import stats

    std = float(np.std(vals, ddof=1))
    if std <= 1e-9 * max(abs(v) for v in vals):  # every seed gave the same value (up to rounding)
        return Interval(n, mean, 0.0, mean, mean) if n >= ZERO_SPREAD_MIN else Interval(n, mean, 0.0, nan, nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy's precision note for nearly equal values
        ci = stats.ttest_1samp(vals, 0.0).confidence_interval(level)
    return Interval(n, mean, std, float(ci.low), float(ci.high))


def compare(a: Sequence[Any], b: Sequence[Any], *, paired: bool, level: float = LEVEL) -> Difference:
    """``a - b``, one comparison. ``paired``: ``a[i]`` and ``b[i]`` share a seed (the pairs where both are finite
    count; the test is :func:`harness.stats.pairs.pair_tests`'s); otherwise Welch's test between the two groups."""
    import numpy as np

    nan = math.nan
    if paired:
        from harness.stats.pairs import pair_tests

        fa, fb = _floats(a), _floats(b)
        width = min(len(fa), len(fb))
        tests = pair_tests(np.array([fa[:width], fb[:width]], dtype=float).reshape(2, width))
        n = int(tests.n[0, 1])
        if n == 0:
            return Difference(0, nan, nan, nan, nan, True)
        low, high = tests.interval(level)
        return Difference(n, float(tests.mean[0, 1]), float(low[0, 1]), float(high[0, 1]), float(tests.p_two()[0, 1]), True,
                          bool(tests.zero_spread[0, 1]))
    from scipy import stats

    xa, xb = _finite(a), _finite(b)
    n = min(len(xa), len(xb))
    if n == 0:
        return Difference(0, nan, nan, nan, nan, False)
    mean = math.fsum(xa) / len(xa) - math.fsum(xb) / len(xb)
    if n < 2 or (float(np.std(xa, ddof=1)) == 0.0 and float(np.std(xb, ddof=1)) == 0.0):
        return Difference(n, mean, nan, nan, nan, False, n >= 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.ttest_ind(xa, xb, equal_var=False)
        ci = res.confidence_interval(level)
    return Difference(n, mean, float(ci.low), float(ci.high), float(res.pvalue), False)


def _floats(values: Sequence[Any]) -> list[float]:
    """Every value as a float, NaN where it is not a number (positions kept: pairs stay aligned)."""
    out = []
    for v in values:
        try:
            out.append(float(v))
        except (TypeError, ValueError):
            out.append(math.nan)
    return out


def verdict(diff: Difference, *, lower_is_better: bool) -> str:
    """What ``diff`` (a - b) supports about ``a`` against ``b``, as one comparison: better, worse, or not
    distinguishable at 95 %; no verdict without an interval."""
    if diff.n < 2 or math.isnan(diff.low) or math.isnan(diff.high):
        return ZERO_SPREAD if diff.zero_spread else NO_TEST
    if diff.high < 0:
        return BETTER if lower_is_better else WORSE
    if diff.low > 0:
        return WORSE if lower_is_better else BETTER
    return SAME


def band(curves: Sequence[tuple[Sequence[float], Sequence[float]]], level: float = LEVEL) -> tuple[list[float], list[float], list[float], list[float]]:
    """(steps, mean, low, high) over several runs' curves of one metric: at every step that at least two runs logged,
    the mean and its t interval (the runs are a configuration's seeds)."""
    by_step: dict[float, list[float]] = {}
    for steps, values in curves:
        for s, v in zip(steps, values):
            by_step.setdefault(float(s), []).append(float(v))
    out: tuple[list[float], list[float], list[float], list[float]] = ([], [], [], [])
    for s in sorted(by_step):
        iv = interval(by_step[s], level)
        if iv.n < 2:
            continue
        for lst, v in zip(out, (s, iv.mean, iv.low, iv.high)):
            lst.append(v)
    return out
