"""Verdicts against the best configuration whose family-wise error is at most 5 %, counting the choice of the best.

The best is the configuration with the best mean among those that ran the most seeds, and it is picked on the same
data it is then compared with: under the null (every configuration equal) the best is simply the luckiest, and a
plain 5 % test of each other configuration against it calls one of them *worse* in 12 % of sweeps with 3
configurations and 55 % with 10. So every verdict here comes from one family: **Holm's step-down over all k(k-1)/2
pairs** of the sweep's configurations, each pair a paired t-test on the seeds both ran. Whichever configuration turns
out best, its comparisons were among the corrected ones, so the chance of any wrong *better* or *worse* anywhere in
the table is at most 5 % (Holm holds under any dependence between the tests).

Why not Tukey's HSD or Hsu's MCB with a pooled variance, which are more powerful: they assume every configuration
varies as much from seed to seed as every other. A learning-rate sweep breaks that at once (an unstable rate varies
far more than a stable one): with one configuration 5 times as noisy as the rest, a pooled variance calls some
configuration better or worse in 16 % of null sweeps with 5 configurations and 23 % with 10, this family in 2 to 3 %
(simulated: bench/bench_verdicts.py). Each pair's own paired t-test needs no such assumption.
The price is power with few seeds and many configurations; tests/test_stats_null.py prints it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from harness.stats.intervals import ALPHA, LEVEL, interval
from harness.stats.pairs import ZERO_SPREAD_MIN, holm, pair_tests

__all__ = ["BEST", "BETTER", "NO_TEST", "SAME", "STOPPED", "WORSE", "ZERO_SPREAD", "VersusBest", "procedure", "summarize_groups",
           "versus_best"]

BEST, SAME, WORSE, BETTER, NO_TEST, ZERO_SPREAD, STOPPED = range(7)
WORDS = {BEST: "best", SAME: "not distinguishable", WORSE: "worse", BETTER: "better", NO_TEST: "no interval (n < 2)",
         ZERO_SPREAD: f"no test (zero spread on n < {ZERO_SPREAD_MIN})", STOPPED: "stopped"}


def procedure(k: int, alpha: float = ALPHA) -> str:
    """The line a table prints under its verdicts: which procedure made them."""
    pairs = k * (k - 1) // 2
    return (f"verdicts: Holm over all {pairs} pair{'s' if pairs != 1 else ''} of the {k} configurations (paired t on shared "
            f"seeds), family-wise {alpha:.0%}; intervals are per comparison, {LEVEL:.0%}")


@dataclass(frozen=True)
class VersusBest:
    """Each configuration against the best: arrays of shape ``(..., k)`` (``best``: ``(...)``, -1 when none)."""

    best: np.ndarray
    verdict: np.ndarray  # one of the codes above
    n: np.ndarray  # seeds shared with the best
    mean: np.ndarray  # mean of (this - best) over them
    low: np.ndarray  # its per-comparison LEVEL interval
    high: np.ndarray
    p: np.ndarray  # the pair's two-sided p
    p_adjusted: np.ndarray  # Holm-adjusted over all pairs
    pairs: int  # the family's size, k(k-1)/2


def versus_best(values: np.ndarray, *, lower_is_better: bool, alpha: float = ALPHA, stopped: np.ndarray | None = None) -> VersusBest:
    """Verdicts of every configuration (row of ``values``, ``(..., k, n)`` with NaN for missing seeds) against the best.

    ``stopped`` (bool, ``(..., k)``) marks configurations the paired rule stopped: they are not chosen as best and their
    verdict is "stopped" (the rule's own evidence is the verdict there, see :mod:`harness.stats.sequential`); their
    pairs stay in the family, never rejected."""
    x = np.asarray(values, dtype=float)
    k = x.shape[-2]
    batch = x.shape[:-2]
    stop = np.zeros(batch + (k,), dtype=bool) if stopped is None else np.broadcast_to(np.asarray(stopped, dtype=bool), batch + (k,))
    tests = pair_tests(x)
    p_two = tests.p_two()
    low2, high2 = tests.interval(LEVEL)

    # The best: the best mean among the unstopped configurations that ran the most seeds.
    counts = np.isfinite(x).sum(axis=-1)
    with np.errstate(invalid="ignore"):
        means = np.where(counts > 0, np.where(np.isfinite(x), x, 0.0).sum(axis=-1) / np.maximum(counts, 1), np.nan)
    most = np.where(stop, -1, counts).max(axis=-1, keepdims=True)
    eligible = ~stop & (counts == most) & (counts > 0)
    score = np.where(eligible, means if lower_is_better else -means, np.inf)
    best = np.where(eligible.any(axis=-1), np.argmin(score, axis=-1), -1)

    # One family: every pair once (upper triangle), Holm-adjusted; a stopped configuration's pairs count, never rejected.
    iu, ju = np.triu_indices(k, 1)
    fam = np.where(stop[..., iu] | stop[..., ju], np.nan, p_two[..., iu, ju])
    adj_pairs = holm(fam)
    adj = np.ones(batch + (k, k))
    adj[..., iu, ju] = adj_pairs
    adj[..., ju, iu] = adj_pairs

    b = np.maximum(best, 0)[..., None, None]  # (..., 1, 1): index the best's column
    col = lambda a: np.take_along_axis(a, np.broadcast_to(b, a.shape[:-1] + (1,)), axis=-1)[..., 0]  # noqa: E731
    n, mean, lo, hi = col(tests.n), col(tests.mean), col(low2), col(high2)
    p, pa, testable, zero = col(p_two), col(adj), col(tests.testable), col(tests.zero_spread)

    worse_side = mean > 0 if lower_is_better else mean < 0
    verdict = np.where(pa < alpha, np.where(worse_side, WORSE, BETTER), SAME)
    verdict = np.where(testable, verdict, np.where(zero & (n >= 2), ZERO_SPREAD, NO_TEST))
    verdict = np.where(stop, STOPPED, verdict)
    is_best = np.arange(k) == best[..., None]
    verdict = np.where(is_best, BEST, verdict)
    verdict = np.where((best < 0)[..., None] & ~stop, NO_TEST, verdict)
    nan = np.full_like(mean, np.nan)
    keep = ~is_best & (best >= 0)[..., None]
    return VersusBest(best=best, verdict=verdict, n=np.where(keep, n, 0), mean=np.where(keep, mean, nan), low=np.where(keep, lo, nan),
                      high=np.where(keep, hi, nan), p=np.where(keep, p, nan), p_adjusted=np.where(keep & ~stop, pa, nan),
                      pairs=k * (k - 1) // 2)


def summarize_groups(rows: Any, *, group: str, pair: str, columns: dict[str, bool], objective: str, keep: Sequence[str] = (),
                     stopped: Sequence[Any] = ()) -> Any:
    """One row per group (a configuration) of ``rows`` (a DataFrame with one row per seed run).

    ``columns`` maps each value column to lower-is-better; for each: ``<col>_mean``, ``_std``, ``_ci_low``,
    ``_ci_high`` (the t interval) and ``n``. ``keep`` columns are copied from the group's first row (the swept values).
    Then each group against the best on the ``objective`` (see :func:`versus_best`; ``pair`` names the seed column
    and ``stopped`` the groups the paired rule stopped): ``vs_best`` (this minus the best), ``vs_best_low``/``_high``
    (its 95 % interval), ``p`` (two-sided), ``p_adjusted`` (Holm, all pairs) and ``verdict``. ``attrs``: ``best`` and
    ``procedure``."""
    import pandas as pd

    lower = columns[objective]
    groups = list(dict.fromkeys(rows[group]))
    out: list[dict[str, Any]] = []
    seeds = sorted({s for s in rows[pair] if s is not None and s == s}, key=_seed_order)
    matrix = np.full((len(groups), len(seeds)), np.nan)
    where = {s: j for j, s in enumerate(seeds)}
    for i, g in enumerate(groups):
        sub = rows[rows[group] == g]
        row: dict[str, Any] = {group: g}
        for k in keep:
            row[k] = sub[k].iloc[0] if k in sub else None
        row["n"] = int(sub[objective].map(_finite).sum())
        for col in columns:
            if col not in sub:
                continue
            iv = interval(list(sub[col]))
            row.update({f"{col}_mean": iv.mean, f"{col}_std": iv.std, f"{col}_ci_low": iv.low, f"{col}_ci_high": iv.high})
        out.append(row)
        for s, v in zip(sub[pair], sub[objective]):
            if s in where and _finite(v):
                matrix[i, where[s]] = float(v)
    table = pd.DataFrame(out)
    if table.empty:
        return table
    stop = np.array([g in set(stopped) for g in groups], dtype=bool)
    vb = versus_best(matrix, lower_is_better=lower, stopped=stop)
    best = groups[int(vb.best)] if int(vb.best) >= 0 else None
    table["vs_best"] = vb.mean
    table["vs_best_low"] = vb.low
    table["vs_best_high"] = vb.high
    table["p"] = vb.p
    table["p_adjusted"] = vb.p_adjusted
    table["verdict"] = [WORDS[int(c)] for c in vb.verdict]
    table.attrs["best"] = best
    table.attrs["procedure"] = procedure(len(groups))
    return table


def _finite(v: Any) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def _seed_order(s: Any) -> tuple[int, Any]:
    try:
        return (0, int(s))
    except (TypeError, ValueError):
        return (1, str(s))
