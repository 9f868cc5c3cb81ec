"""The statistics behind every verdict (harness.stats) against published reference values, and the paired rule that
stops a repeated sweep's configuration early (harness.sweep.repeats.PairedPruner) on real Optuna studies."""

from __future__ import annotations

import math
import warnings

import optuna
import pandas as pd
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from harness.stats import band, compare, interval, one_sided_worse_p, summarize_groups, verdict
from harness.sweep.repeats import PairedPruner

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


def test_one_sided_p_is_half_the_two_sided_in_the_observed_direction():
    a, b = [3.0, 3.4, 3.1], [2.0, 2.2, 2.3]
    two = compare(a, b, paired=True).p
    assert one_sided_worse_p(a, b, lower_is_better=True) == pytest.approx(two / 2)
    assert one_sided_worse_p(a, b, lower_is_better=False) == pytest.approx(1 - two / 2)
    assert one_sided_worse_p([1.0], [0.0], lower_is_better=True) == 1.0, "one pair tests nothing"


def test_the_best_group_is_the_best_mean_not_the_best_single_seed():
    rows = pd.DataFrame({"config": ["a"] * 3 + ["b"] * 3, "seed": [0, 1, 2] * 2,
                         "objective": [1.0, 3.0, 3.0, 2.0, 2.1, 1.9]})  # a has the best seed (1.0), b the best mean (2.0)
    table = summarize_groups(rows, group="config", pair="seed", columns={"objective": True}, objective="objective")
    assert table.attrs["best"] == "b"
    by = table.set_index("config")
    assert by.loc["b", "verdict"] == "best" and by.loc["a", "verdict"] == "not distinguishable"
    assert by.loc["a", "objective_mean"] == pytest.approx(7 / 3) and by.loc["a", "n"] == 3
    # a group stopped early (fewer seeds) cannot be best on fewer seeds, however good its mean
    rows = pd.concat([rows, pd.DataFrame({"config": ["c"], "seed": [0], "objective": [0.5]})])
    assert summarize_groups(rows, group="config", pair="seed", columns={"objective": True}, objective="objective").attrs["best"] == "b"


def test_band_is_the_interval_at_every_shared_step():
    steps, mean, low, high = band([([0, 1, 2], [4.0, 3.0, 2.0]), ([0, 1], [4.2, 3.4])])
    assert steps == [0.0, 1.0] and mean == pytest.approx([4.1, 3.2])
    iv = interval([3.0, 3.4])
    assert (low[1], high[1]) == (pytest.approx(iv.low), pytest.approx(iv.high))


# ----------------------------------------------------------------------------------------------------------- the rule


def _config(study: optuna.Study, values: dict[int, float], state: TrialState = TrialState.COMPLETE) -> None:
    value = sum(values.values()) / len(values) if state == TrialState.COMPLETE else None
    study.add_trial(create_trial(state=state, value=value, params={"lr": 0.1}, distributions={"lr": FloatDistribution(0, 1)},
                                 intermediate_values=values))


def _running(study: optuna.Study, values: dict[int, float]) -> optuna.trial.FrozenTrial:
    _config(study, values, TrialState.RUNNING)
    return study.get_trials()[-1]


def test_paired_rule_stops_a_clearly_worse_configuration_after_two_seeds():
    study = optuna.create_study(direction="minimize")
    _config(study, {0: 2.70, 1: 2.74, 2: 2.73, 3: 2.72, 4: 2.75})
    pruner = PairedPruner(p_threshold=0.05)
    assert pruner.prune(study, _running(study, {0: 2.95, 1: 2.97})), "two consistent seeds, 0.24 worse: stop"
    assert not pruner.prune(study, _running(study, {0: 2.95})), "one seed tests nothing"
    assert not pruner.prune(study, _running(study, {0: 2.95, 1: 2.60})), "inconsistent seeds: keep going"
    assert not pruner.prune(study, _running(study, {0: 2.60, 1: 2.61})), "better than the best: never stopped"
    # Optuna's WilcoxonPruner cannot say this at any p below 0.0625 before 5 seeds: why harness uses the t-test
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        wilcoxon = optuna.pruners.WilcoxonPruner(p_threshold=0.05)
    assert not wilcoxon.prune(study, _running(study, {0: 2.95, 1: 2.97, 2: 2.96, 3: 2.99}))


def test_paired_rule_compares_on_shared_seeds_with_an_open_configuration_too():
    study = optuna.create_study(direction="maximize")
    _running(study, {0: 0.80, 1: 0.81})  # the leader has run two seeds so far
    pruner = PairedPruner()
    assert pruner.evidence(study, _running(study, {0: 0.70, 1: 0.705, 2: 0.9})) is not None
    best, p, n = pruner.evidence(study, study.get_trials()[-1])
    assert (best, n) == (0, 2) and p < 0.05
