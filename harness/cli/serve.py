"""``harness ui`` and ``harness dashboard``: plan the server, warn when it is exposed, run it until Ctrl-C."""

from __future__ import annotations

import argparse
from typing import Any

from harness.cli.output import print_err, shown_text, shown_url

__all__ = ["add_commands"]


def add_commands(sub: Any) -> None:
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


def cmd_ui(args: argparse.Namespace) -> int:
    from harness import serve

    plan = serve.ui_plan(host=args.host, port=args.port)
    for w in plan.warnings:
        print_err("\n" + "!" * 100 + f"\n{w}\n" + "!" * 100 + "\n")
    if plan.argv is None:
        print(f"the tracking store is a server already: open {shown_url(serve.training_view(plan.url))}")
        return 0
    if args.dry_run:
        import shlex

        print(shown_text(" ".join(f"{k}={shlex.quote(v)}" for k, v in plan.env.items()) + f" {plan.command}"))
        return 0
    print(f"MLflow UI for {shown_url(plan.store)}")
    print(f"  starting at {plan.url}  (one worker; takes a few seconds; Ctrl-C to stop)", flush=True)

    def ready() -> None:
        # The training view's address: MLflow's UI opens on its GenAI pages otherwise (see serve.training_view).
        print(f"  ready: open {serve.training_view(plan.url)}", flush=True)
        newest = serve.newest_experiments(plan.url)
        if newest:
            print(f"  runs, best {serve.BEST_FIRST} first (a sweep's trials one per row):")
            width = max(len(name) for _, name in newest)
            for experiment_id, name in newest:
                print(f"    {name:<{width}}  {serve.training_view(plan.url, experiment_id, sort_by=serve.BEST_FIRST)}")
        print("  in the UI, \"Model training\" (top left) keeps the training view for every experiment", flush=True)

    return serve.serve(plan, on_ready=ready)


def cmd_dashboard(args: argparse.Namespace) -> int:
    from harness import serve

    plan = serve.dashboard_plan(args.target, storage=args.storage, host=args.host, port=args.port)
    for w in plan.warnings:
        print_err("\n" + "!" * 100 + f"\n{w}\n" + "!" * 100 + "\n")
    if not plan.installed:
        print("optuna-dashboard is not installed. Install it, then run the dashboard on this study's storage:\n")
        print(f"  {plan.install}")
        print(f"  {shown_text(plan.command)}\n")  # a password in the storage URL is shown as ***
        print(f"(study '{plan.study}'; it will be at {plan.url})")
        return 2
    if args.dry_run:
        print(shown_text(plan.command))
        return 0
    print(f"optuna-dashboard for study '{plan.study}' in {shown_url(plan.storage)}")
    print(f"  open {plan.url}  (Ctrl-C to stop)", flush=True)
    return serve.serve_dashboard(plan)
