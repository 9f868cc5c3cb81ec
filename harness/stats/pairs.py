"""Every pair of configurations compared on the seeds both ran, at once: the paired t-test of all pairs, for one sweep
or a batch of simulated sweeps, as numpy arrays.

The verdict table (:mod:`harness.stats.best`), the paired rule (:mod:`harness.stats.sequential`) and the simulations
that check both under the null (tests/test_stats_null.py, bench/bench_verdicts.py) call this one implementation, so
the rates the simulations measure are the rates of the code that makes the verdicts.

``values`` has the shape ``(..., k, n)``: k configurations, n seeds (the same seed list for all, so column s of every
row is seed s), NaN where a configuration has no value for a seed (not run yet, stopped, or failed). A pair's test
uses the seeds where both are finite.

**Zero spread is not certainty.** When every shared seed gives the same difference (quantised accuracies make this
easy), the t statistic is infinite and a plain t-test returns p = 0 from two seeds. Here a pair with identical
differences on fewer than :data:`ZERO_SPREAD_MIN` seeds has no test at all; from that many on, the identical
differences are taken as they are (p = 0 unless the difference is itself zero).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ZERO_SPREAD_MIN", "PairTests", "holm", "pair_tests"]

ZERO_SPREAD_MIN = 3  # identical per-seed differences on fewer seeds than this: no verdict, no stop
# A spread this small relative to the values compared is rounding, not a spread: 0.7 - 0.6 and 0.8 - 0.7 differ in
# their last bits, and a t-test would read that as near-certainty.
_REL_TOL = 1e-9


@dataclass(frozen=True)
class PairTests:
    """The paired comparison of row i with row j for every (i, j): arrays of shape ``(..., k, k)`` (antisymmetric in
    ``mean``; symmetric in the rest)."""

    n: np.ndarray  # shared seeds (int)
    mean: np.ndarray  # mean over the shared seeds of x_i - x_j
    se: np.ndarray  # its standard error (sd / sqrt(n)); 0 for a zero spread
    testable: np.ndarray  # bool: at least 2 shared seeds, and not a zero spread on fewer than ZERO_SPREAD_MIN
    zero_spread: np.ndarray  # bool: the same difference on every shared seed (n >= 2)
    tol: np.ndarray  # how close to zero a difference must be to count as none (rounding, relative to the values)

    def _t(self) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.zero_spread, 0.0, self.mean / np.where(self.se > 0, self.se, 1.0))

    def p_two(self) -> np.ndarray:
        """Two-sided p of "x_i and x_j differ"; NaN where there is no test."""
        from scipy import stats

        df = np.maximum(self.n - 1, 1)
        p = 2.0 * stats.t.sf(np.abs(self._t()), df)
        p = np.where(self.zero_spread, np.where(np.abs(self.mean) > self.tol, 0.0, 1.0), p)
        return np.where(self.testable, np.minimum(p, 1.0), np.nan)

    def p_greater(self) -> np.ndarray:
        """One-sided p of "x_i is larger than x_j"; NaN where there is no test."""
        from scipy import stats

        df = np.maximum(self.n - 1, 1)
        p = stats.t.sf(self._t(), df)
        p = np.where(self.zero_spread, np.where(self.mean > self.tol, 0.0, 1.0), p)
        return np.where(self.testable, p, np.nan)

    def interval(self, level: float) -> tuple[np.ndarray, np.ndarray]:
        """The t interval of the mean difference at ``level`` (a point for a testable zero spread); NaN without a test."""
        from scipy import stats

        df = np.maximum(self.n - 1, 1)
        half = stats.t.ppf(0.5 + level / 2, df) * self.se
        half = np.where(self.zero_spread, 0.0, half)
        low = np.where(self.testable, self.mean - half, np.nan)
        high = np.where(self.testable, self.mean + half, np.nan)
        return low, high


def pair_tests(values: np.ndarray) -> PairTests:
    """The paired comparison of every row of ``values`` (``(..., k, n)``) with every other, on their shared seeds."""
    x = np.asarray(values, dtype=float)
    finite = np.isfinite(x)
    both = finite[..., :, None, :] & finite[..., None, :, :]  # (..., k, k, n)
    xi, xj = np.where(finite, x, 0.0)[..., :, None, :], np.where(finite, x, 0.0)[..., None, :, :]
    d = np.where(both, xi - xj, 0.0)
    n = both.sum(axis=-1)
    safe_n = np.maximum(n, 1)
    mean = d.sum(axis=-1) / safe_n
    dev = np.where(both, d - mean[..., None], 0.0)
    var = (dev**2).sum(axis=-1) / np.maximum(n - 1, 1)
    se = np.sqrt(var / safe_n)
    scale = np.where(both, np.maximum(np.abs(xi), np.abs(xj)), 0.0).max(axis=-1)
    tol = _REL_TOL * np.maximum(scale, np.finfo(float).tiny)
    zero = (n >= 2) & (np.sqrt(var) <= tol)
    testable = (n >= 2) & (~zero | (n >= ZERO_SPREAD_MIN))
    return PairTests(n=n, mean=mean, se=np.where(zero, 0.0, se), testable=testable, zero_spread=zero, tol=tol)


def holm(p: np.ndarray) -> np.ndarray:
    """Holm's step-down adjustment of the p-values along the last axis (NaN, a comparison that could not be made,
    counts as p = 1: it stays in the family and is never rejected). Rejecting where the adjusted p is below alpha
    keeps the chance of any false rejection in the family at most alpha, whatever the tests' dependence."""
    p = np.where(np.isnan(p), 1.0, np.asarray(p, dtype=float))
    m = p.shape[-1]
    if m == 0:
        return p
    order = np.argsort(p, axis=-1, kind="stable")
    ranked = np.take_along_axis(p, order, axis=-1) * (m - np.arange(m))
    adjusted = np.minimum(np.maximum.accumulate(ranked, axis=-1), 1.0)
    out = np.empty_like(adjusted)
    np.put_along_axis(out, order, adjusted, axis=-1)
    return out
