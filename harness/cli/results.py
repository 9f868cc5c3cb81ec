"""``harness results``, ``harness compare`` and ``harness plot``: each calls one :mod:`harness.results` function."""

from __future__ import annotations

import argparse
from typing import Any

from harness.cli.output import print_frame, shown_text, shown_url
from harness.errors import UsageError

__all__ = ["add_commands"]

_TABLE_METRICS = ("val/loss", "best/val/loss", "val/accuracy", "best/val/accuracy", "train/loss", "train/loss_eval")
_FINAL_METRICS = ("val/loss", "train/loss", "train/loss_eval", "train/loss_epoch")


def add_commands(sub: Any) -> None:
    sel_help = "experiment name, run id, sweep parent run id, or study name (several: their union)"

    r = sub.add_parser("results", help="table of runs (typed params, final/best metrics); export to CSV or parquet")
    r.add_argument("selector", nargs="+", help=sel_help)
    r.add_argument("--csv", metavar="PATH", help="write every column to this CSV file")
    r.add_argument("--parquet", metavar="PATH", help="write every column to this parquet file (needs pyarrow)")
    r.add_argument("--sort", metavar="COLUMN", help="sort by a column: best/val/loss (the lowest over the run), val/loss (the final "
                                                 "value), train.optimizer.lr, ... (default: a sweep's objective, else oldest first)")
    r.add_argument("--desc", action="store_true", help="sort descending (default ascending)")
    r.add_argument("--top", type=int, metavar="N", help="keep the first N rows (after sorting)")
    r.add_argument("--all-columns", action="store_true", help="print every column, not the summary")
    r.add_argument("--include-parents", action="store_true", help="include sweep parent runs")
    r.add_argument("--init-from", dest="init_from", metavar="RUN", help="only the runs finetuned from this run")
    r.add_argument("--runs", action="store_true", help="repeated seeds: one row per seed run instead of one per configuration")
    r.add_argument("--storage", metavar="URL", help="the Optuna storage of the studies named (default: HARNESS_STUDY_STORAGE, else the "
                                                    "one the sweep recorded); their failed trials' reasons are listed under the table")
    r.set_defaults(fn=cmd_results)

    c = sub.add_parser("compare", help="runs side by side (differing params, metrics, overlaid curves PNG); or two groups of seed runs: "
                                      "the difference, its 95 %% interval and whether it is real")
    c.add_argument("runs", nargs="+", help="run ids (or any selector; at least two runs in all); or two repeated runs (studies, "
                                           "experiments) whose seed runs are compared as groups")
    c.add_argument("--out", default="compare.png", help="where to write the curves PNG (default compare.png)")
    c.add_argument("--metric", action="append", metavar="KEY", help="curve panels (repeatable; default train/loss and val/loss)")
    c.add_argument("--no-plot", action="store_true", help="tables only")
    c.add_argument("--system", action="store_true", help="also the system/* metrics (CPU, memory, ...)")
    c.set_defaults(fn=cmd_compare)

    p = sub.add_parser("plot", help="draw a figure: loss, grad_norm, lr (one run), overlay or objective (a sweep)")
    p.add_argument("selector", nargs="+", help=sel_help)
    p.add_argument("--kind", default="loss", choices=["loss", "grad_norm", "lr", "overlay", "objective"])
    p.add_argument("--metric", help="overlay: the metric (default val/loss); objective: override the sweep's objective")
    p.add_argument("--out", help="PNG path (default <kind>.png)")
    p.set_defaults(fn=cmd_plot)


def _sort_key(df: Any, key: str) -> str:
    import difflib

    if key in df.columns:
        return key
    for alt in (f"best/{key}", f"summary/{key}", key.replace("_", "/")):
        if alt in df.columns:
            return alt
    close = difflib.get_close_matches(key, [str(c) for c in df.columns], n=4, cutoff=0.5)
    raise UsageError(f"cannot sort by '{key}': no such column" + (f"; did you mean {', '.join(close)}?" if close else ""))


def _order(df: Any, args: argparse.Namespace) -> tuple[str, bool, str] | None:
    """(column, ascending, how to say it): --sort as asked; by default a sweep's trials by its objective."""
    from harness.results.frames import objective_order

    if args.sort:
        key = _sort_key(df, args.sort)
        return key, not args.desc, f"sorted by {key}{' (final value)' if key in _FINAL_METRICS else ''}, {'descending' if args.desc else 'ascending'}"
    found = objective_order(df)
    if found is None:
        return None
    key, ascending = found
    return key, ascending, f"sorted by {key}, the sweep's objective ({'lowest' if ascending else 'highest'} first)"


def cmd_results(args: argparse.Namespace) -> int:
    from harness import results
    from harness.results.values import changed_params

    from harness.tracking import tracking_uri

    uri = tracking_uri()
    df = results.runs(args.selector if len(args.selector) > 1 else args.selector[0], include_parents=args.include_parents,
                      init_from=args.init_from)
    if df.empty:
        print(f"no runs in {' '.join(args.selector)}" + ("" if args.include_parents else " (sweep parent runs are left out; --include-parents)"))
        return 0
    if not args.runs and not args.all_columns and not args.sort and df["config_id"].notna().any():
        return _print_configs(args, df, uri)
    order = _order(df, args)
    if order is not None:
        key, ascending, _ = order
        df = df.sort_values(key, ascending=ascending, na_position="last", kind="stable").reset_index(drop=True)
    df = _top_and_export(df, args)
    if args.all_columns:
        cols = list(df.columns)
    else:
        params = results.params_of(df)
        changed = changed_params([{k: df[k].iloc[i] if not _isna(df[k].iloc[i]) else None for k in params} for i in range(len(df))])
        cols = ["run_id", "run_name"]
        if df["trial"].notna().any():
            cols.append("trial")
        if df["init_from"].notna().any():
            cols.append("init_from")
        if order is not None and order[0] not in cols:
            cols.append(order[0])  # the sort key right after the names: it is what the order is about
        cols += ["stop_reason"] + changed + [m for m in _TABLE_METRICS if m in df.columns and m not in cols] + ["steps", "wall_time_s"]
    shown = df[cols].copy()
    hidden = 0
    if not args.all_columns:
        shown["run_id"] = shown["run_id"].map(lambda r: r[:8] if isinstance(r, str) else r)  # as every other table prints it
        shown, hidden = _fit(shown)
    print_frame(shown)
    print(f"\n{len(df)} run{'s' if len(df) != 1 else ''}, " + (order[2] if order is not None else "oldest first")
          + ("" if args.all_columns else f"; {len(shown.columns)} of {len(df.columns)} columns"
             + (f", {hidden} more did not fit" if hidden else "") + " (--all-columns, --csv or --parquet for the rest)"))
    print(f"store: {shown_url(uri)}")
    _print_failed_trials(args, df, uri)
    for path in (args.csv, args.parquet):
        if path:
            print(f"wrote {path}")
    return 0


def _fit(df: Any) -> tuple[Any, int]:
    """The table without its rightmost columns until it fits the terminal (run id and name always stay)."""
    import shutil

    from harness.cli.output import frame_text

    width = shutil.get_terminal_size((120, 24)).columns
    dropped = 0
    while len(df.columns) > 2 and max(map(len, frame_text(df).splitlines() or [""])) > width:
        df = df.iloc[:, :-1]
        dropped += 1
    return df, dropped


def _print_failed_trials(args: argparse.Namespace, df: Any, uri: str) -> None:
    """With a study storage (--storage or HARNESS_STUDY_STORAGE): the failed trials of each study named, with their
    reasons, from the study itself (a trial that failed before its MLflow run began has no row above)."""
    import os

    from harness import results

    storage = args.storage or os.environ.get("HARNESS_STUDY_STORAGE")
    if not storage or "study" not in df:
        return
    named = [s for s in args.selector if s in set(df["study"].dropna())]
    for name in named:
        trials = results.study(name, storage=storage, uri=uri)
        failed = trials[(trials["state"] == "FAIL") & ~trials["superseded"]] if "state" in trials else trials.iloc[0:0]  # retried: not failed
        print(f"study '{name}' in {shown_url(trials.attrs['storage'])}: {len(trials)} trials, {len(failed)} failed")
        reasons = failed["user_attrs_fail_reason"] if "user_attrs_fail_reason" in failed else [None] * len(failed)
        for number, reason in zip(failed["number"], reasons):
            text = str(reason).splitlines()[0] if isinstance(reason, str) and reason else "-"
            print(f"  trial {number} failed: {shown_text(text)[:300]}")


def _top_and_export(df: Any, args: argparse.Namespace) -> Any:
    """--top, then --csv/--parquet of what is left (a sorted table of runs or of configurations)."""
    from harness import results

    if args.top is not None:
        if args.top < 1:
            raise UsageError("--top must be at least 1")
        df = df.head(args.top)
    for path in (args.csv, args.parquet):
        if path:
            results.export(df, path)
    return df


def _print_configs(args: argparse.Namespace, df: Any, uri: str) -> int:
    """Repeated seeds: one table per study (configurations are compared within their own study only), one row per
    configuration, best mean first, with its mean ± 95 % half-width and its verdict, and the procedure behind them."""
    from harness import results
    from harness.cli.output import configs_view

    selector = args.selector if len(args.selector) > 1 else args.selector[0]
    cfg = results.configs(selector, uri=uri)
    objectives = cfg.attrs["objectives"]
    procedures = cfg.attrs["procedure"]
    parts = []
    for pid in dict.fromkeys(cfg["sweep_run_id"]):
        metric, direction, summary = objectives[pid]
        part = cfg[cfg["sweep_run_id"] == pid].sort_values("objective_mean", ascending=direction == "minimize", na_position="last",
                                                          kind="stable")
        parts.append((pid, part.reset_index(drop=True), f"{summary} {metric}"))
    seeds_of = {pid: sorted({int(s) for s in df[(df["parent_run_id"] == pid) & df["config_id"].notna()]["seed"].dropna()})
                for pid, _, _ in parts}
    if args.top is not None or args.csv or args.parquet:
        import pandas as pd

        _top_and_export(pd.concat([p for _, p, _ in parts], ignore_index=True), args)
    for k, (pid, part, objective) in enumerate(parts):
        if args.top is not None:
            part = part.head(args.top)
        if len(parts) > 1:
            print(("\n" if k else "") + f"study {part['study'].iloc[0]} (sweep run {pid[:8]}):")
        print_frame(configs_view(part, objective))
        seeds = seeds_of[pid]
        print(f"{len(part)} configuration{'s' if len(part) != 1 else ''}, best mean first; mean ± 95 % t half-width over the "
              f"finished seed runs (seeds {', '.join(map(str, seeds))})")
        print(procedures.get(pid) or "")
    if len(parts) > 1:
        print(f"\n{len(parts)} studies: each table compares its own configurations only (their base specs may differ)")
    others = int(df["config_id"].isna().sum())
    if others:
        print(f"{others} selected run{'s' if others != 1 else ''} without repeats left out (--runs lists every run)")
    print(f"store: {shown_url(uri)}")
    for path in (args.csv, args.parquet):
        if path:
            print(f"wrote {path}")
    return 0


def _isna(v: Any) -> bool:
    try:
        import pandas as pd

        r = pd.isna(v)
        return bool(r) if isinstance(r, bool) or getattr(r, "shape", None) == () else False
    except (TypeError, ValueError):
        return False


def cmd_compare(args: argparse.Namespace) -> int:
    from harness import results
    from harness.results.configs import group_selectors

    if group_selectors(args.runs):
        return _compare_groups(args)
    cmp = results.compare(args.runs, out=None if args.no_plot else args.out, metrics=args.metric or ("train/loss", "val/loss"),
                          system=args.system)
    if cmp.params.empty:
        print("params: all the same")
    else:
        print("params that differ:")
        print_frame(cmp.params, index=True)
    print("\nmetrics (final value; best/ = minimum over the run):")
    print_frame(cmp.metrics, index=True)
    if cmp.bits_per_char:
        print("\nbpc/...: the loss in bits per character of text (nats / ln 2 x the corpus's tokens per character), so that runs "
              "with different tokenizers compare; a per-token loss does not")
    if not args.system:
        print("(system/* metrics left out: --system shows them)")
    if cmp.plot:
        print(f"\nwrote {cmp.plot}")
    return 0


def _compare_groups(args: argparse.Namespace) -> int:
    from harness import results

    cmp = results.compare_groups(args.runs[0], args.runs[1])
    print(f"a = {cmp.a} ({len(cmp.seeds_a)} seed runs), b = {cmp.b} ({len(cmp.seeds_b)} seed runs)")
    shared = sorted(set(cmp.seeds_a) & set(cmp.seeds_b))
    if cmp.paired:
        print(f"paired on the seeds both ran ({', '.join(map(str, shared))})")
    elif shared:
        print(f"one shared seed ({shared[0]}): too few to pair, so Welch's t-test between the groups")
    else:
        print("no shared seeds: Welch's t-test between the groups")
    print_frame(cmp.table, index=True)
    print("\ndifference = a - b, with its 95 % t interval; a verdict says better or worse only when that interval excludes 0. "
          "This is one comparison that you chose, so the plain test is the right one (a sweep's table, which picks its best "
          "from the same data and compares many, corrects for both); a zero-spread difference on fewer than 3 seeds gets no verdict")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from harness import results

    path = results.plot(args.selector if len(args.selector) > 1 else args.selector[0], args.kind, out=args.out, metric=args.metric)
    print(f"wrote {path}")
    return 0
