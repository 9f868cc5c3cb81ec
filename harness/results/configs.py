"""Repeated seeds in the results: one row per configuration (its seed runs' mean, 95 % interval and a verdict against
the best), and two groups of seed runs compared. The statistics are :mod:`harness.stats` (Student t, scipy)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from harness.errors import UsageError
from harness.results.compare import fmt_selector
from harness.results.frames import Selector, runs_frame
from harness.results.store import get_run, open_store, select_runs
from harness.results.values import swept_params

__all__ = ["GroupComparison", "HEADLINE", "compare_groups", "configs", "configs_frame", "group_selectors", "seed_runs"]

#: The metrics a configuration is summarised by, besides its objective: column -> lower is better.
HEADLINE = {"best/val/loss": True, "val/loss": True, "train/loss_epoch": True, "train/loss": True, "best/val/accuracy": False,
            "val/accuracy": False}


def seed_runs(df: Any) -> Any:
    """The rows of a :func:`harness.results.runs` frame that are a repeated sweep's finished seed runs."""
    return df[df["config_id"].notna() & (df["status"] == "FINISHED")]


def configs(selector: Selector, *, uri: str | None = None) -> Any:
    """One row per configuration of the repeated sweeps (``--repeats``) among the selected runs.

    Columns: ``config_id``, ``study``, ``config`` (its swept values, readable), the swept params, ``n`` (finished
    seed runs), and for the objective and each headline metric (:data:`HEADLINE`) ``<metric>_mean``, ``_std``,
    ``_ci_low``, ``_ci_high`` (the 95 % Student t interval); then the paired comparison with the best configuration
    (the best objective mean among those that ran the most seeds) on the seeds both ran: ``vs_best``,
    ``vs_best_low``, ``vs_best_high``, ``p`` and ``verdict`` (best, better, worse, not distinguishable).
    ``attrs["objective"]`` is (metric, direction, summary)."""
    client, uri = open_store(uri)
    selected = select_runs(client, selector, uri=uri)
    df = runs_frame(client, selected)
    swept = swept_params(client, selected)
    return configs_frame(df, swept=swept, objective=_objective(client, df), what=fmt_selector(selector))


def _objective(client: Any, df: Any) -> tuple[str, str, str]:
    """The objective of the sweeps the seed runs come from (they must agree), else the best val loss."""
    found = set()
    for pid in seed_runs(df)["parent_run_id"].dropna().unique():
        parent = get_run(client, pid)
        if parent is not None:
            p = parent.data.params
            found.add((p.get("sweep.objective.metric", "val/loss"), p.get("sweep.objective.direction", "minimize"),
                       p.get("sweep.objective.summary", "best")))
    if len(found) > 1:
        raise UsageError(f"these seed runs come from sweeps with different objectives ({sorted(found)}); select one sweep at a time")
    return found.pop() if found else ("val/loss", "minimize", "best")


def configs_frame(df: Any, *, swept: Sequence[str] = (), objective: tuple[str, str, str] = ("val/loss", "minimize", "best"),
                  what: str = "the selection") -> Any:
    """:func:`configs` from a :func:`harness.results.runs` frame."""
    from harness.stats import summarize_groups

    rows = seed_runs(df).copy()
    if rows.empty:
        raise UsageError(f"{what} holds no repeated runs (a sweep or run started with --repeats N, or sweep.repeats)")
    metric, direction, summary = objective
    col = f"best/{metric}" if summary == "best" and f"best/{metric}" in rows else metric
    rows["objective"] = rows[col] if col in rows else math.nan
    rows["config_key"] = rows["study"].fillna("") + "/" + rows["config_id"]
    columns = {"objective": direction == "minimize", **{k: v for k, v in HEADLINE.items() if k in rows and rows[k].notna().any()}}
    keep = ["config_id", "study", "config"] + [p for p in swept if p in rows]
    out = summarize_groups(rows, group="config_key", pair="seed", columns=columns, objective="objective", keep=keep)
    best = out.attrs.get("best")
    out = out.drop(columns=["config_key"])
    out.attrs.update({"objective": objective, "objective_column": col, "best": best, "params": [p for p in swept if p in rows]})
    return out


@dataclass
class GroupComparison:
    """Two groups of seed runs: per metric, each group's mean and interval, and the difference ``a - b`` with its 95 %
    interval, p and verdict (paired on shared seeds when they share at least two, else Welch's test)."""

    a: str
    b: str
    table: Any  # index: metric; columns: a, b, n_a, n_b, difference, ci_low, ci_high, p, test, verdict
    seeds_a: list[int]
    seeds_b: list[int]
    paired: bool


def compare_groups(a: Selector, b: Selector, *, uri: str | None = None) -> GroupComparison:
    """Two repeated runs (``harness run spec.yaml --repeats N``), or two configurations of repeated sweeps, compared:
    is the difference real? Each selector must hold the finished seed runs of exactly one configuration."""
    import pandas as pd

    from harness.stats import compare, interval, verdict

    client, uri = open_store(uri)
    groups = []
    for sel in (a, b):
        df = runs_frame(client, select_runs(client, sel, uri=uri))
        rows = seed_runs(df)
        keys = sorted(set(rows["study"].fillna("") + "/" + rows["config_id"]))
        if len(keys) != 1:
            found = "no repeated runs" if not keys else f"{len(keys)} configurations ({', '.join(keys[:6])})"
            raise UsageError(f"{fmt_selector(sel)} holds {found}; name one group of seed runs (a study, or a sweep's parent run "
                             "when it has one configuration)")
        groups.append(rows)
    ga, gb = groups
    seeds_a = [int(s) for s in ga["seed"]]
    seeds_b = [int(s) for s in gb["seed"]]
    shared = sorted(set(seeds_a) & set(seeds_b))
    paired = len(shared) >= 2
    metrics = [k for k in HEADLINE if k in ga and k in gb and ga[k].notna().any() and gb[k].notna().any()]
    out = []
    for k in metrics:
        va, vb = dict(zip(seeds_a, ga[k])), dict(zip(seeds_b, gb[k]))
        if paired:
            d = compare([va[s] for s in shared], [vb[s] for s in shared], paired=True)
        else:
            d = compare(list(va.values()), list(vb.values()), paired=False)
        ia, ib = interval(list(va.values())), interval(list(vb.values()))
        out.append({"metric": k, "a": str(ia), "b": str(ib), "n_a": ia.n, "n_b": ib.n, "difference": d.mean, "ci_low": d.low,
                    "ci_high": d.high, "p": d.p, "test": f"paired t, {d.n} seeds" if d.paired else "Welch t",
                    "verdict": _word(verdict(d, lower_is_better=HEADLINE[k]))})
    table = pd.DataFrame(out).set_index("metric") if out else pd.DataFrame()
    return GroupComparison(a=fmt_selector(a), b=fmt_selector(b), table=table, seeds_a=seeds_a, seeds_b=seeds_b, paired=paired)


def _word(v: str) -> str:
    """The verdict for ``a`` against ``b``, as the table reads it."""
    return {"better": "a better", "worse": "a worse"}.get(v, v)


def group_selectors(selectors: Sequence[str], *, uri: str | None = None) -> bool:
    """Whether ``harness compare`` was given two groups of seed runs (rather than runs)."""
    if len(selectors) != 2:
        return False
    client, uri = open_store(uri)
    for sel in selectors:
        runs = select_runs(client, sel, uri=uri)
        keys = {(r.data.tags.get("harness.study"), r.data.tags.get("harness.config_id")) for r in runs
                if r.data.tags.get("harness.config_id") and r.info.status == "FINISHED"}
        if len(keys) != 1:
            return False
    return True

