"""Intervals and comparisons over seeds, for the handful of seeds a training sweep can afford.

Everything is Student's t, computed by scipy:

* an interval for a mean: ``scipy.stats.ttest_1samp(...).confidence_interval``;
* two configurations run under the same seeds: the paired t-test (``ttest_rel``) on the per-seed differences;
* two groups without shared seeds: Welch's t-test (``ttest_ind(equal_var=False)``).

Why t and not a bootstrap: with 3 to 10 seeds a percentile bootstrap can never reach beyond the values it saw, and
its 95 % interval covers the true mean far less often than 95 % (84 % at n = 5 in a simulation of normal data); the t interval
is exact for normal errors and widens honestly as n shrinks. Why not Optuna's WilcoxonPruner for stopping early: the
signed-rank test's smallest one-sided p with n pairs is 1/2^n (0.0625 with 4 seeds), so at 5 seeds it can stop
nothing at 95 %. The paired t-test can, once the differences are consistent.

A verdict never says more than its interval: *better* or *worse* only when the 95 % interval of the difference
excludes zero, else *not distinguishable*; fewer than two values give no interval at all.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["LEVEL", "Difference", "Interval", "band", "compare", "interval", "one_sided_worse_p", "summarize_groups", "verdict"]

LEVEL = 0.95  # every interval and verdict the harness prints

BETTER, WORSE, SAME, NO_TEST = "better", "worse", "not distinguishable", "no interval (n < 2)"


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


def _finite(values: Sequence[Any]) -> list[float]:
    """The values that are finite numbers (None, text, NaN and infinities dropped)."""
    return [f for f in _floats(values) if math.isfinite(f)]


def interval(values: Sequence[Any], level: float = LEVEL) -> Interval:
    """Mean, standard deviation and ``level`` t interval of the finite ``values`` (NaN where n is too small)."""
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
    if std == 0.0:  # every seed gave the same value: the interval is that value
        return Interval(n, mean, 0.0, mean, mean)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy's precision note for nearly equal values
        ci = stats.ttest_1samp(vals, 0.0).confidence_interval(level)
    return Interval(n, mean, std, float(ci.low), float(ci.high))


def compare(a: Sequence[Any], b: Sequence[Any], *, paired: bool, level: float = LEVEL) -> Difference:
    """``a - b``. ``paired``: ``a[i]`` and ``b[i]`` share a seed (the pairs where both are finite count); otherwise
    Welch's test between the two groups."""
    import numpy as np
    from scipy import stats

    nan = math.nan
    if paired:
        pairs = [(x, y) for x, y in zip(_floats(a), _floats(b)) if math.isfinite(x) and math.isfinite(y)]
        n = len(pairs)
        if n == 0:
            return Difference(0, nan, nan, nan, nan, True)
        diffs = [x - y for x, y in pairs]
        mean = math.fsum(diffs) / n
        if n < 2:
            return Difference(n, mean, nan, nan, nan, True)
        if float(np.std(diffs, ddof=1)) == 0.0:  # the same difference on every seed: no spread to test against
            return Difference(n, mean, mean, mean, 1.0 if mean == 0 else 0.0, True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            res = stats.ttest_rel([x for x, _ in pairs], [y for _, y in pairs])
            ci = res.confidence_interval(level)
        return Difference(n, mean, float(ci.low), float(ci.high), float(res.pvalue), True)
    xa, xb = _finite(a), _finite(b)
    n = min(len(xa), len(xb))
    if n == 0:
        return Difference(0, nan, nan, nan, nan, False)
    mean = math.fsum(xa) / len(xa) - math.fsum(xb) / len(xb)
    if n < 2 or (float(np.std(xa, ddof=1)) == 0.0 and float(np.std(xb, ddof=1)) == 0.0):
        return Difference(n, mean, nan, nan, nan, False)
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
    """What ``diff`` (a - b) supports about ``a`` against ``b``: better, worse, or not distinguishable at 95 %."""
    if diff.n < 2 or math.isnan(diff.low) or math.isnan(diff.high):
        return NO_TEST
    if diff.high < 0:
        return BETTER if lower_is_better else WORSE
    if diff.low > 0:
        return WORSE if lower_is_better else BETTER
    return SAME


def one_sided_worse_p(a: Sequence[float], b: Sequence[float], *, lower_is_better: bool) -> float:
    """The paired t-test's one-sided p-value for "``a`` is worse than ``b``" (pairs share a seed). 1.0 when there is
    nothing to test (fewer than two pairs), 0.0 when every pair differs by the same amount in the worse direction."""
    from scipy import stats

    pairs = [(x, y) for x, y in zip(a, b) if math.isfinite(x) and math.isfinite(y)]
    if len(pairs) < 2:
        return 1.0
    diffs = [x - y for x, y in pairs]
    worse = [d if lower_is_better else -d for d in diffs]
    if max(worse) == min(worse):
        return 0.0 if worse[0] > 0 else 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.ttest_rel([x for x, _ in pairs], [y for _, y in pairs], alternative="greater" if lower_is_better else "less")
    return float(res.pvalue)


def summarize_groups(rows: Any, *, group: str, pair: str, columns: dict[str, bool], objective: str,
                     keep: Sequence[str] = ()) -> Any:
    """One row per group (a configuration) of ``rows`` (a DataFrame with one row per seed run).

    ``columns`` maps each value column to lower-is-better; for each: ``<col>_mean``, ``_std``, ``_ci_low``,
    ``_ci_high`` (the t interval) and ``n``. ``keep`` columns are copied from the group's first row (the swept values).
    The best group is the best ``objective`` mean among the groups that ran the most seeds (a group stopped early
    cannot be best on fewer seeds); every other group is compared with it on the seeds both ran (``pair``), paired:
    ``vs_best`` (this minus the best), ``vs_best_low``/``_high`` (its 95 % interval), ``p`` (two-sided) and
    ``verdict``: best, better, worse, not distinguishable, or no interval (n < 2)."""
    import pandas as pd

    lower = columns[objective]
    groups = list(dict.fromkeys(rows[group]))
    out: list[dict[str, Any]] = []
    per: dict[Any, dict[Any, float]] = {}
    for g in groups:
        sub = rows[rows[group] == g]
        row: dict[str, Any] = {group: g}
        for k in keep:
            row[k] = sub[k].iloc[0] if k in sub else None
        row["n"] = int(sub[objective].map(lambda v: v is not None and v == v).sum())
        for col, _ in columns.items():
            if col not in sub:
                continue
            iv = interval(list(sub[col]))
            row.update({f"{col}_mean": iv.mean, f"{col}_std": iv.std, f"{col}_ci_low": iv.low, f"{col}_ci_high": iv.high})
        out.append(row)
        per[g] = {s: float(v) for s, v in zip(sub[pair], sub[objective]) if v is not None and v == v}
    table = pd.DataFrame(out)
    if table.empty:
        return table
    most = table["n"].max()
    full = table[(table["n"] == most) & table[f"{objective}_mean"].notna()]
    best = None
    if not full.empty and most > 0:
        best = full.sort_values(f"{objective}_mean", ascending=lower, kind="stable")[group].iloc[0]
    cmp_cols: dict[str, list[Any]] = {"vs_best": [], "vs_best_low": [], "vs_best_high": [], "p": [], "verdict": []}
    for g in table[group]:
        if best is None or g == best:
            d = Difference(0, math.nan, math.nan, math.nan, math.nan, True)
            word = "best" if g == best else NO_TEST
        else:
            shared = sorted(set(per[g]) & set(per[best]))
            d = compare([per[g][s] for s in shared], [per[best][s] for s in shared], paired=True)
            word = verdict(d, lower_is_better=lower)
        cmp_cols["vs_best"].append(d.mean)
        cmp_cols["vs_best_low"].append(d.low)
        cmp_cols["vs_best_high"].append(d.high)
        cmp_cols["p"].append(d.p)
        cmp_cols["verdict"].append(word)
    for k, v in cmp_cols.items():
        table[k] = v
    table.attrs["best"] = best
    return table


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
