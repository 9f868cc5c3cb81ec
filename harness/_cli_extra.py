"""Analysis and browsing commands (results, compare, plot, ui, dashboard, generate).

Each handler calls one library function (``harness.results`` / ``harness._generate``) and prints. Errors the user can
fix are ``HarnessError``/``UsageError``; ``harness._cli.main`` prints them as ``error: ...`` and exits 2.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from harness._errors import UsageError

_TABLE_METRICS = ("val/loss", "best/val/loss", "train/loss", "train/loss_eval")


def _err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "-" if math.isnan(v) else f"{v:.4g}"
    s = str(v)
    return "-" if s in ("<NA>", "NaT", "nan", "None") else s


def _print_frame(df: Any, *, index: bool = False) -> None:
    import pandas as pd

    show = df.copy()
    for c in show.columns:
        show[c] = [_cell(v) for v in show[c]]
    if index:
        show.index = [str(i) for i in show.index]
    with pd.option_context("display.max_columns", 200, "display.width", 250, "display.max_colwidth", 60):
        print(show.to_string(index=index))


# ----------------------------------------------------------------------------------------------------------- results


def _sort_key(df: Any, key: str) -> str:
    import difflib

    if key in df.columns:
        return key
    for alt in (f"best/{key}", f"summary/{key}", key.replace("_", "/")):
        if alt in df.columns:
            return alt
    close = difflib.get_close_matches(key, [str(c) for c in df.columns], n=4, cutoff=0.5)
    raise UsageError(f"cannot sort by '{key}': no such column" + (f"; did you mean {', '.join(close)}?" if close else ""))


def cmd_results(args: argparse.Namespace) -> int:
    from harness import _results as R
    from harness import results

    df = results.runs(args.selector if len(args.selector) > 1 else args.selector[0], include_parents=args.include_parents)
    if df.empty:
        print(f"no runs in {' '.join(args.selector)}" + ("" if args.include_parents else " (sweep parent runs are left out; --include-parents)"))
        return 0
    if args.sort:
        key = _sort_key(df, args.sort)
        df = df.sort_values(key, ascending=not args.desc, na_position="last", kind="stable").reset_index(drop=True)
    if args.top is not None:
        if args.top < 1:
            raise UsageError("--top must be at least 1")
        df = df.head(args.top)
    for path in (args.csv, args.parquet):
        if path:
            results.export(df, path)
    if args.all_columns:
        cols = list(df.columns)
    else:
        params = results.params_of(df)
        changed = R.changed_params([{k: df[k].iloc[i] if not _isna(df[k].iloc[i]) else None for k in params} for i in range(len(df))])
        cols = ["run_id", "run_name"]
        if df["trial"].notna().any():
            cols.append("trial")
        cols += ["stop_reason"] + changed + [m for m in _TABLE_METRICS if m in df.columns] + ["steps", "wall_time_s"]
        if args.sort and _sort_key(df, args.sort) not in cols:
            cols.append(_sort_key(df, args.sort))
    _print_frame(df[cols])
    print(f"\n{len(df)} run{'s' if len(df) != 1 else ''}" + (f", sorted by {_sort_key(df, args.sort)}" if args.sort else "")
          + ("" if args.all_columns else f"; {len(df.columns)} columns in all (--all-columns, --csv or --parquet for the rest)"))
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


# ----------------------------------------------------------------------------------------------------------- compare


def cmd_compare(args: argparse.Namespace) -> int:
    from harness import results

    cmp = results.compare(args.runs, out=None if args.no_plot else args.out, metrics=args.metric or ("train/loss", "val/loss"))
    if cmp.params.empty:
        print("params: all the same")
    else:
        print("params that differ:")
        _print_frame(cmp.params, index=True)
    print("\nmetrics (final value; best/ = minimum over the run):")
    _print_frame(cmp.metrics, index=True)
    if cmp.plot:
        print(f"\nwrote {cmp.plot}")
    return 0


# ----------------------------------------------------------------------------------------------------------- plot


def cmd_plot(args: argparse.Namespace) -> int:
    from harness import results

    path = results.plot(args.selector if len(args.selector) > 1 else args.selector[0], args.kind, out=args.out, metric=args.metric)
    print(f"wrote {path}")
    return 0


# ----------------------------------------------------------------------------------------------------------- servers


def cmd_ui(args: argparse.Namespace) -> int:
    from harness import results

    plan = results.ui_plan(host=args.host, port=args.port)
    for w in plan.warnings:
        _err("\n" + "!" * 100 + f"\n{w}\n" + "!" * 100 + "\n")
    if plan.argv is None:
        print(f"the tracking store is a server already: open {plan.url}")
        return 0
    if args.dry_run:
        print(f"MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false {plan.command}")
        return 0
    print(f"MLflow UI for {plan.store}")
    print(f"  starting at {plan.url}  (one worker; takes a few seconds; Ctrl-C to stop)", flush=True)

    def ready() -> None:
        print(f"  ready: open {plan.url}", flush=True)

    return results.serve(plan, on_ready=ready)


def cmd_dashboard(args: argparse.Namespace) -> int:
    from harness import results

    plan = results.dashboard_plan(args.target, storage=args.storage, host=args.host, port=args.port)
    for w in plan.warnings:
        _err("\n" + "!" * 100 + f"\n{w}\n" + "!" * 100 + "\n")
    if not plan.installed:
        print("optuna-dashboard is not installed. Install it, then run the dashboard on this study's storage:\n")
        print(f"  {plan.install}")
        print(f"  {plan.command}\n")
        print(f"(study '{plan.study}'; it will be at {plan.url})")
        return 2
    if args.dry_run:
        print(plan.command)
        return 0
    print(f"optuna-dashboard for study '{plan.study}' in {plan.storage}")
    print(f"  open {plan.url}  (Ctrl-C to stop)", flush=True)
    return results.serve_dashboard(plan)


# ----------------------------------------------------------------------------------------------------------- generate


def cmd_generate(args: argparse.Namespace) -> int:
    from harness._generate import generate

    out = generate(args.target, args.prompt, max_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k,
                   seed=args.seed, last=args.last)
    for n in out.notes:
        _err(f"note: {n}")
    _err(f"checkpoint {out.checkpoint}" + (f" (step {out.step})" if out.step is not None else ""))
    print(out.text)
    return 0


# ----------------------------------------------------------------------------------------------------------- parser


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    sel_help = "experiment name, run id, sweep parent run id, or study name (several: their union)"

    r = sub.add_parser("results", help="table of runs (typed params, final/best metrics); export to CSV or parquet")
    r.add_argument("selector", nargs="+", help=sel_help)
    r.add_argument("--csv", metavar="PATH", help="write every column to this CSV file")
    r.add_argument("--parquet", metavar="PATH", help="write every column to this parquet file (needs pyarrow)")
    r.add_argument("--sort", metavar="COLUMN", help="sort by a column, e.g. val/loss, best/val/loss, train.optimizer.lr")
    r.add_argument("--desc", action="store_true", help="sort descending (default ascending)")
    r.add_argument("--top", type=int, metavar="N", help="keep the first N rows (after sorting)")
    r.add_argument("--all-columns", action="store_true", help="print every column, not the summary")
    r.add_argument("--include-parents", action="store_true", help="include sweep parent runs")
    r.set_defaults(fn=cmd_results)

    c = sub.add_parser("compare", help="runs side by side: differing params, metrics, overlaid curves PNG")
    c.add_argument("runs", nargs="+", help="run ids (or any selector; at least two runs in all)")
    c.add_argument("--out", default="compare.png", help="where to write the curves PNG (default compare.png)")
    c.add_argument("--metric", action="append", metavar="KEY", help="curve panels (repeatable; default train/loss and val/loss)")
    c.add_argument("--no-plot", action="store_true", help="tables only")
    c.set_defaults(fn=cmd_compare)

    p = sub.add_parser("plot", help="draw a figure: loss, grad_norm, lr (one run), overlay or objective (a sweep)")
    p.add_argument("selector", nargs="+", help=sel_help)
    p.add_argument("--kind", default="loss", choices=["loss", "grad_norm", "lr", "overlay", "objective"])
    p.add_argument("--metric", help="overlay: the metric (default val/loss); objective: override the sweep's objective")
    p.add_argument("--out", help="PNG path (default <kind>.png)")
    p.set_defaults(fn=cmd_plot)

    u = sub.add_parser("ui", help="start the MLflow UI on this project's store (one worker, loopback by default)")
    u.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1; anything else is reachable from the network)")
    u.add_argument("--port", type=int, default=5000)
    u.add_argument("--dry-run", action="store_true", help="print the mlflow server command instead of running it")
    u.set_defaults(fn=cmd_ui)

    d = sub.add_parser("dashboard", help="start optuna-dashboard on a sweep's study storage")
    d.add_argument("target", help="sweep spec file, study name, or sweep parent run id")
    d.add_argument("--storage", help="Optuna storage URL (default: the one the sweep used)")
    d.add_argument("--host", default="127.0.0.1")
    d.add_argument("--port", type=int, default=8080)
    d.add_argument("--dry-run", action="store_true", help="print the optuna-dashboard command instead of running it")
    d.set_defaults(fn=cmd_dashboard)

    g = sub.add_parser("generate", help="sample text from a run's best (or --last) checkpoint")
    g.add_argument("target", help="run id (a sweep parent id: its best trial), checkpoint file, or artifact folder")
    g.add_argument("--prompt", default="", help="text to continue (default: start of a document)")
    g.add_argument("--max-tokens", type=int, default=200, dest="max_tokens")
    g.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    g.add_argument("--top-k", type=int, default=40, dest="top_k", help="sample among the k likeliest tokens; 0 = all")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--last", action="store_true", help="use checkpoints/last.pt instead of best.pt")
    g.set_defaults(fn=cmd_generate)
