"""The statistics behind every verdict (harness.stats) against published reference values: intervals, one chosen
comparison, Holm's adjustment, the verdicts against the best, the paired rule's single decisions, and zero spread.
Their rates under the null are tests/test_stats_null.py's."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest

from harness.stats import band, compare, holm, interval, paired_rule, summarize_groups, verdict, versus_best
from harness.stats.best import SAME, STOPPED, WORSE, ZERO_SPREAD

# Student t quantiles t(0.975, df) from the published tables (e.g. NIST/SEMATECH e-Handbook, table 1.3.6.7.2).
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 9: 2.262}


def test_interval_is_the_student_t_interval_of_the_mean():
    iv = interval([1.0, 2.0, 3.0, 4.0, 5.0])
    sd = math.sqrt(2.5)
    half = T975[4] * sd / math.sqrt(5)
    assert (iv.n, iv.mean) == (5, 3.0)
    assert iv.std == pytest.approx(sd)
    assert iv.low == pytest.approx(3.0 - half, abs=1e-3) and iv.high == pytest.approx(3.0 + half, abs=1e-3)
    two = interval([2.0, 4.0])  # df = 1: the interval is wide, as it must be with two seeds
    assert two.high - two.mean == pytest.approx(T975[1] * math.sqrt(2) / math.sqrt(2), abs=1e-2)


def test_interval_edge_cases_say_no_more_than_the_data():
    assert interval([]).n == 0 and math.isnan(interval([]).mean)
    one = interval([3.5])
    assert one.n == 1 and one.mean == 3.5 and math.isnan(one.low) and str(one) == "3.5 (n=1)"
    same = interval([2.0, 2.0, 2.0])
    assert (same.low, same.high, same.std) == (2.0, 2.0, 0.0)
    assert interval([1.0, float("nan"), 3.0]).n == 2, "non-finite values are not seeds' results"


def test_paired_test_matches_the_published_table():
    # differences 1, 2, 3: mean 2, sd 1, t = 2 / (1 / sqrt 3) = 3.464 on 2 df
    d = compare([11.0, 12.0, 13.0], [10.0, 10.0, 10.0], paired=True)
    assert (d.n, d.mean, d.paired) == (3, 2.0, True)
    assert d.low == pytest.approx(2.0 - T975[2] / math.sqrt(3), abs=1e-3)
    assert d.high == pytest.approx(2.0 + T975[2] / math.sqrt(3), abs=1e-3)
    assert d.p == pytest.approx(0.0742, abs=1e-3)  # two-sided, t = 3.464 on 2 df
    assert verdict(d, lower_is_better=True) == "not distinguishable"


def test_welch_interval_uses_the_satterthwaite_degrees_of_freedom():
    from scipy import stats

    a, b = [1.0, 2.0, 3.0, 4.0, 5.0], [2.0, 4.0, 6.0, 8.0, 10.0]
    d = compare(a, b, paired=False)
    va, vb = 2.5 / 5, 10.0 / 5
    df = (va + vb) ** 2 / (va**2 / 4 + vb**2 / 4)
    half = stats.t.ppf(0.975, df) * math.sqrt(va + vb)
    assert not d.paired and d.mean == -3.0
    assert d.low == pytest.approx(-3.0 - half) and d.high == pytest.approx(-3.0 + half)


def test_verdicts_follow_the_interval():
    worse = compare([3.0, 3.1, 3.2, 3.05], [2.0, 2.1, 2.15, 2.0], paired=True)
    assert verdict(worse, lower_is_better=True) == "worse"
    assert verdict(worse, lower_is_better=False) == "better"
    assert verdict(compare([1.0], [2.0], paired=True), lower_is_better=True).startswith("no interval")
    constant = compare([3.0, 4.0, 5.0], [2.0, 3.0, 4.0], paired=True)  # the same +1 on every seed
    assert (constant.low, constant.high) == (1.0, 1.0) and verdict(constant, lower_is_better=True) == "worse"


def test_zero_spread_is_not_certainty():
    """Identical paired differences (quantised accuracies make them easy) gave p = 0 and a verdict from two seeds."""
    two = compare([0.75, 0.5], [0.5, 0.25], paired=True)
    assert two.zero_spread and math.isnan(two.p) and verdict(two, lower_is_better=False) == "no test (zero spread on n < 3)"
    three = compare([0.75, 0.5, 0.6], [0.5, 0.25, 0.35], paired=True)
    assert three.p == 0.0 and verdict(three, lower_is_better=False) == "better", "from three seeds on, identical differences count"
    rounding = compare([0.7, 0.8], [0.6, 0.7], paired=True)  # 0.1 twice, up to the last bits of the floats
    assert rounding.zero_spread and math.isnan(rounding.p)
    assert str(interval([2.0, 2.0])) == "2 (n=2, all equal)" and math.isnan(interval([2.0, 2.0]).low)
    vb = versus_best(np.array([[0.75, 0.5], [0.5, 0.25]]), lower_is_better=False)
    assert list(vb.verdict) == [0, ZERO_SPREAD]
    rule = paired_rule(np.array([[0.75, 0.5], [0.5, 0.25]]), np.array([True, True]), lower_is_better=False, seeds=5,
                       configurations=2, p_threshold=0.05)
    assert not rule.stop.any(), "no stop from two seeds with zero spread"


def test_holm_matches_the_hand_computation():
    # sorted 0.01, 0.03, 0.04 -> 3 x 0.01, max(2 x 0.03, .), max(1 x 0.04, .): 0.03, 0.06, 0.06
    assert holm(np.array([0.01, 0.04, 0.03])) == pytest.approx([0.03, 0.06, 0.06])
    assert holm(np.array([0.5, np.nan])) == pytest.approx([1.0, 1.0]), "a comparison that could not be made counts as p = 1"
    assert holm(np.array([[0.01, 0.02], [0.2, 0.001]])).tolist() == pytest.approx(np.array([[0.02, 0.02], [0.2, 0.002]]))


def test_verdicts_against_the_best_are_holm_over_all_pairs():
    """Three configurations: the per-comparison p of c1 against the best is below 5 %, but not Holm's: the table says
    not distinguishable. A configuration clearly worse than every other one is worse on any reading."""
    best = np.array([2.70, 2.74, 2.73, 2.72, 2.75])
    c1 = best + np.array([0.05, 0.02, 0.04, 0.00, 0.04])
    c2 = c1 + np.array([0.01, -0.01, 0.005, -0.005, 0.0])
    vb = versus_best(np.array([best, c1, c2]), lower_is_better=True)
    assert int(vb.best) == 0 and vb.pairs == 3
    assert vb.p[1] < 0.05 and vb.p_adjusted[1] >= 0.05 and vb.verdict[1] == SAME
    far = versus_best(np.array([best, c1, best + 0.24 + 0.01 * np.arange(5)]), lower_is_better=True)
    assert far.verdict[2] == WORSE and far.low[2] > 0
    # a stopped configuration is never the best, says "stopped", and its pairs stay in the family
    vs = versus_best(np.array([best - 0.5, best, c1]), lower_is_better=True, stopped=np.array([True, False, False]))
    assert int(vs.best) == 1 and vs.verdict[0] == STOPPED and vs.pairs == 3


def test_the_paired_rule_spends_its_threshold_over_looks_and_pairs():
    from harness.stats import test_level

    assert test_level(0.05, seeds=5, configurations=3) == pytest.approx(0.05 / (3 * 6))
    x = np.array([[2.70, 2.74, 2.73], [2.95, 2.97, 2.99], [2.71, 2.73, 2.74]])
    rule = paired_rule(x, np.array([True, True, True]), lower_is_better=True, seeds=5, configurations=3, p_threshold=0.05)
    assert list(rule.stop) == [False, True, False] and rule.rival[1] in (0, 2) and rule.n[1] == 3 and rule.p[1] < rule.level
    # every seed run: nothing left to save, no look; one shared seed: nothing to test
    assert not paired_rule(x, np.array([True] * 3), lower_is_better=True, seeds=3, configurations=3, p_threshold=0.05).stop.any()
    assert not paired_rule(x[:, :1], np.array([True] * 3), lower_is_better=True, seeds=5, configurations=3, p_threshold=0.05).stop.any()
    # higher is better: the same data reads the other way round
    up = paired_rule(-x, np.array([True] * 3), lower_is_better=False, seeds=5, configurations=3, p_threshold=0.05)
    assert list(up.stop) == [False, True, False]


def test_the_best_group_is_the_best_mean_not_the_best_single_seed():
    rows = pd.DataFrame({"config": ["a"] * 3 + ["b"] * 3, "seed": [0, 1, 2] * 2,
                         "objective": [1.0, 3.0, 3.0, 2.0, 2.1, 1.9]})  # a has the best seed (1.0), b the best mean (2.0)
    table = summarize_groups(rows, group="config", pair="seed", columns={"objective": True}, objective="objective")
    assert table.attrs["best"] == "b"
    by = table.set_index("config")
    assert by.loc["b", "verdict"] == "best" and by.loc["a", "verdict"] == "not distinguishable"
    assert table.attrs["procedure"].startswith("verdicts: Holm over all 1 pair of the 2 configurations")
    assert by.loc["a", "objective_mean"] == pytest.approx(7 / 3) and by.loc["a", "n"] == 3
    # a group stopped early (fewer seeds) cannot be best on fewer seeds, however good its mean
    rows = pd.concat([rows, pd.DataFrame({"config": ["c"], "seed": [0], "objective": [0.5]})])
    assert summarize_groups(rows, group="config", pair="seed", columns={"objective": True}, objective="objective").attrs["best"] == "b"


def test_band_is_the_interval_at_every_shared_step():
    steps, mean, low, high = band([([0, 1, 2], [4.0, 3.0, 2.0]), ([0, 1], [4.2, 3.4])])
    assert steps == [0.0, 1.0] and mean == pytest.approx([4.1, 3.2])
    iv = interval([3.0, 3.4])
    assert (low[1], high[1]) == (pytest.approx(iv.low), pytest.approx(iv.high))
