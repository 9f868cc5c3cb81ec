"""The verdicts and the paired rule under the null and at a true difference: simulated with the functions the sweep and
the results table call (harness.stats), against the rules they replaced and against a pooled-variance procedure.

    python bench/bench_verdicts.py               # 4,000 sweeps per cell, about a minute; writes nothing
    python bench/bench_verdicts.py --sweeps 20000

The model is a repeated sweep's: every configuration runs under the same seeds, each seed shifts every configuration
alike (sd 2: initial weights, batch order), and each run adds its own noise (sd 1). Under the null every
configuration is equal. "1 sd" and "2 sd" make configuration 0 worse by that many noise standard deviations.
Numbers only (numpy and scipy): no training runs, so it can run beside anything.

Columns:
* ``table``: sweeps in which the table calls some configuration better or worse (null), and configuration 0 called
  worse (power), for harness's Holm-over-all-pairs verdicts, and for the old table (each configuration tested alone
  against the best at 5 %).
* ``rule``: sweeps in which the paired rule stops some configuration (null), and configuration 0 stopped (power),
  with how many seeds it had run when stopped; against the old rule (a one-sided 5 % test against the best mean
  after every seed).
* ``pooled``: a Tukey-style comparison with the best from one pooled residual variance (two-way layout, seeds as
  blocks) under a heteroscedastic null: one configuration's runs vary 5 times as much as the others' (an unstable
  learning rate next to stable ones). This is why harness tests each pair on its own variance.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.stats.best import BETTER, WORSE, versus_best  # noqa: E402
from harness.stats.sequential import paired_rule  # noqa: E402

ALPHA = 0.05


def sweeps(s: int, k: int, n: int, *, shift: float = 0.0, noisy: float = 1.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng([seed, k, n, int(shift * 10), int(noisy * 10)])
    x = rng.normal(0.0, 2.0, (s, 1, n)) + rng.normal(0.0, 1.0, (s, k, n))
    x[:, -1, :] *= noisy  # the last configuration's runs vary `noisy` times as much
    x[:, 0, :] += shift
    return x


def table_calls(x: np.ndarray) -> np.ndarray:
    v = versus_best(x, lower_is_better=True).verdict
    return (v == WORSE) | (v == BETTER)


def old_table_calls(x: np.ndarray) -> np.ndarray:
    from scipy import stats

    s, k, n = x.shape
    best = x.mean(axis=2).argmin(axis=1)
    d = x - x[np.arange(s), best][:, None, :]
    sd = d.std(axis=2, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = d.mean(axis=2) / (sd / math.sqrt(n))
    return (2 * stats.t.sf(np.abs(t), n - 1) < ALPHA) & (np.arange(k) != best[:, None]) & (sd > 0)


def pooled_calls(x: np.ndarray) -> np.ndarray:
    """Each configuration against the best with a Tukey HSD critical value from one pooled residual variance."""
    from scipy import stats

    s, k, n = x.shape
    resid = x - x.mean(axis=2, keepdims=True) - x.mean(axis=1, keepdims=True) + x.mean(axis=(1, 2), keepdims=True)
    df = (k - 1) * (n - 1)
    mse = (resid**2).sum(axis=(1, 2)) / df
    crit = stats.studentized_range.ppf(1 - ALPHA, k, df) * np.sqrt(mse / n)
    means = x.mean(axis=2)
    best = means.argmin(axis=1)
    diff = means - means[np.arange(s), best][:, None]
    return (np.abs(diff) > crit[:, None]) & (np.arange(k) != best[:, None])


def run_rule(x: np.ndarray, *, old: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The rule as a grid sweep applies it: seed by seed, a look after every round. (stopped, seeds run)."""
    s, k, n = x.shape
    seen = np.full_like(x, np.nan)
    open_ = np.ones((s, k), dtype=bool)
    ran = np.zeros((s, k), dtype=int)
    for r in range(n):
        seen[:, :, r] = np.where(open_, x[:, :, r], np.nan)
        ran += open_
        if r + 1 < 2:
            continue
        if old:
            open_ &= ~_old_rule(seen[:, :, : r + 1], open_)
        else:
            open_ &= ~paired_rule(seen[:, :, : r + 1], open_, lower_is_better=True, seeds=n, configurations=k, p_threshold=ALPHA).stop
    return ~open_, ran


def _old_rule(seen: np.ndarray, open_: np.ndarray) -> np.ndarray:
    from scipy import stats

    s, k, n = seen.shape
    means = np.nanmean(seen, axis=2)
    best = np.where(open_, means, np.inf).argmin(axis=1)
    d = seen - seen[np.arange(s), best][:, None, :]
    m = np.isfinite(d).sum(axis=2)
    sd = np.nanstd(d, axis=2, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.nanmean(d, axis=2) / (sd / np.sqrt(m))
        p = stats.t.sf(t, np.maximum(m - 1, 1))
    return open_ & (np.arange(k) != best[:, None]) & (m >= 2) & (p < ALPHA)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sweeps", type=int, default=4000)
    args = ap.parse_args()
    s = args.sweeps
    se = math.sqrt(ALPHA * (1 - ALPHA) / s)
    print(f"{s} simulated sweeps per cell; a 5 % rate has Monte Carlo standard error {se:.2%}\n")
    print("| configs | seeds | table, null: harness / old | table, config 0 worse at 1 sd / 2 sd | rule, null: harness / old "
          "| rule, config 0 stopped at 1 sd / 2 sd (seeds run) | pooled variance, heteroscedastic null: Tukey / harness |")
    print("|---|---|---|---|---|---|---|")
    for k in (2, 3, 5, 10):
        for n in (3, 5, 10):
            x = sweeps(s, k, n)
            null_t, null_old = table_calls(x).any(axis=1).mean(), old_table_calls(x).any(axis=1).mean()
            power = [table_calls(sweeps(s, k, n, shift=d, seed=1))[:, 0].mean() for d in (1.0, 2.0)]
            stop_new, _ = run_rule(x)
            stop_old, _ = run_rule(x, old=True)
            rule_power = []
            for d in (1.0, 2.0):
                stopped, ran = run_rule(sweeps(s, k, n, shift=d, seed=1))
                hit = stopped[:, 0]
                rule_power.append(f"{hit.mean():.1%}" + (f" ({ran[hit, 0].mean():.1f})" if hit.any() else ""))
            het = sweeps(s, k, n, noisy=5.0, seed=3)
            print(f"| {k} | {n} | {null_t:.1%} / {null_old:.1%} | {power[0]:.1%} / {power[1]:.1%} | "
                  f"{stop_new.any(axis=1).mean():.1%} / {stop_old.any(axis=1).mean():.1%} | {' / '.join(rule_power)} | "
                  f"{pooled_calls(het).any(axis=1).mean():.1%} / {table_calls(het).any(axis=1).mean():.1%} |")
    print("\nHow early a clearly worse configuration stops (3 configurations, 5 seeds, configuration 0 worse by d noise sd):")
    for d in (5.0, 10.0, 20.0):
        stopped, ran = run_rule(sweeps(s, 3, 5, shift=d, seed=2))
        hit = stopped[:, 0]
        counts = {r: (ran[hit, 0] == r).mean() for r in range(2, 6)} if hit.any() else {}
        print(f"  {d:4.0f} sd: stopped in {hit.mean():.1%} of sweeps; after " + ", ".join(f"{r} seeds {c:.0%}" for r, c in counts.items()))


if __name__ == "__main__":
    main()
