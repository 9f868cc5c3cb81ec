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
from harness.tracking.records import OBJECTIVE_METRIC

__all__ = ["GroupComparison", "HEADLINE", "compare_groups", "configs", "configs_frame", "group_selectors", "seed_runs"]

#: The metrics a configuration is summarised by, besides its objective: column -> lower is better.
HEADLINE = {"best/val/loss": True, "val/loss": True, "train/loss_epoch": True, "train/loss": True, "best/val/accuracy": False,
            "val/accuracy": False}


def seed_runs(df: Any) -> Any:
    """The rows of a :func:`harness.results.runs` frame that are a repeated sweep's finished seed runs."""
    return df[df["config_id"].notna() & (df["status"] == "FINISHED")]


def configs(selector: Selector, *, uri: str | None = None, superseded: bool = False) -> Any:
    """One row per configuration of the repeated sweeps (``--repeats``) among the selected runs.

    Columns: ``study``, ``sweep_run_id`` (the sweep's parent run: one per study, shared by every invocation; a study
    started over with ``--fresh`` has a new one), ``config_id``, ``config`` (its swept values, readable), the swept
    params, ``n`` (finished seed runs), and for the objective and each headline metric (:data:`HEADLINE`)
    ``<metric>_mean``, ``_std``, ``_ci_low``, ``_ci_high`` (the 95 % Student t interval); then each configuration
    against the best of **its own study** (the best objective mean among those that ran the most seeds; Holm over all
    pairs, family-wise 5 %, see :func:`harness.stats.summarize_groups`): ``vs_best``, ``vs_best_low``,
    ``vs_best_high``, ``p``, ``p_adjusted`` and ``verdict``. Configurations of different studies are never compared
    (their base specs may differ: a smoke run's step cap, another corpus).

    The runs of a study that ``--fresh`` replaced are left out unless ``superseded`` (or nothing else is selected).
    ``attrs``: ``objective`` (metric, direction, summary; per study in ``objectives``), ``best`` (the best
    configuration of each sweep run), ``procedure`` (per sweep run)."""
    client, uri = open_store(uri)
    selected = select_runs(client, selector, uri=uri)
    df = runs_frame(client, selected)
    swept = swept_params(client, selected)
    parents = _parents(client, df)
    return configs_frame(df, swept=swept, objectives={pid: info[0] for pid, info in parents.items()},
                         superseded={pid for pid, info in parents.items() if info[1]} if not superseded else set(),
                         stopped={pid: info[2] for pid, info in parents.items()}, what=fmt_selector(selector))


def _parents(client: Any, df: Any) -> dict[str, tuple[tuple[str, str, str], bool, list[str]]]:
    """Each seed run's sweep parent: (its objective, whether --fresh superseded its study, the configurations its paired
    rule stopped)."""
    import json

    out = {}
    for pid in seed_runs(df)["parent_run_id"].dropna().unique():
        parent = get_run(client, pid)
        if parent is not None:
            p = parent.data.params
            objective = (p.get("sweep.objective.metric", "val/loss"), p.get("sweep.objective.direction", "minimize"),
                         p.get("sweep.objective.summary", "best"))
            stopped = list(json.loads(parent.data.tags.get("harness.stopped", "{}")))
            out[str(pid)] = (objective, parent.data.tags.get("harness.superseded") == "true", stopped)
    return out


DEFAULT_OBJECTIVE = ("val/loss", "minimize", "best")


def configs_frame(df: Any, *, swept: Sequence[str] = (), objectives: dict[str, tuple[str, str, str]] | None = None,
                  superseded: set[str] = frozenset(),  # type: ignore[assignment]
                  stopped: dict[str, list[str]] | None = None, what: str = "the selection") -> Any:
    """:func:`configs` from a :func:`harness.results.runs` frame (``objectives``: per sweep parent run id)."""
    import pandas as pd

    from harness.stats import summarize_groups

    rows = seed_runs(df).copy()
    if rows.empty:
        raise UsageError(f"{what} holds no repeated runs (a sweep or run started with --repeats N, or sweep.repeats)")
    rows["sweep_run_id"] = rows["parent_run_id"].fillna("")
    if superseded and not rows["sweep_run_id"].isin(superseded).all():
        rows = rows[~rows["sweep_run_id"].isin(superseded)]
    objectives = objectives or {}
    keep = ["study", "sweep_run_id", "config_id", "config"] + [p for p in swept if p in rows]
    tables, best, procedures, used = [], {}, {}, {}
    for pid in dict.fromkeys(rows["sweep_run_id"]):
        part = rows[rows["sweep_run_id"] == pid].copy()
        metric, direction, summary = objective = objectives.get(pid, DEFAULT_OBJECTIVE)
        # the score the sweep judged each run by (logged on the run), else the metric as the objective summarises it
        col = OBJECTIVE_METRIC if OBJECTIVE_METRIC in part and part[OBJECTIVE_METRIC].notna().all() else (
            f"best/{metric}" if summary == "best" and f"best/{metric}" in part else metric)
        part["objective"] = part[col] if col in part else math.nan
        columns = {"objective": direction == "minimize",
                   **{k: v for k, v in HEADLINE.items() if k in part and part[k].notna().any()}}
        out = summarize_groups(part, group="config_id", pair="seed", columns=columns, objective="objective", keep=keep[1:],
                               stopped=(stopped or {}).get(pid, []))
        out.insert(0, "study", part["study"].iloc[0])
        tables.append(out)
        best[pid], procedures[pid], used[pid] = out.attrs.get("best"), out.attrs.get("procedure"), (objective, col)
    table = pd.concat(tables, ignore_index=True) if len(tables) > 1 else tables[0]
    first = next(iter(used.values()))
    table.attrs.update({"objective": first[0], "objective_column": first[1], "objectives": {k: v[0] for k, v in used.items()},
                        "best": best[next(iter(best))] if len(best) == 1 else best, "procedure": procedures,
                        "params": [p for p in swept if p in rows]})
    return table


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

