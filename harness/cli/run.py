"""``harness run``, ``harness resume`` and ``harness validate``."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any

from harness.cli.output import print_err, print_run_summary, print_sweep_summary

__all__ = ["add_commands"]


def add_commands(sub: Any) -> None:
    r = sub.add_parser("run", help="run one experiment or a whole sweep")
    r.add_argument("spec", help="YAML spec file")
    r.add_argument("--set", action="append", metavar="PATH=VALUE", help="override a field, e.g. --set train.optimizer.lr=1e-3 (repeatable)")
    r.add_argument("--fresh", action="store_true", help="sweep: start a new study instead of resuming the stored one")
    r.add_argument("--study", help="sweep: study name (default: the spec name)")
    r.add_argument("--workers", type=int, help="sweep: worker processes on this machine (overrides sweep.workers)")
    r.add_argument("--n-trials", type=int, dest="n_trials", help="sweep: trials to finish (overrides sweep.n_trials)")
    r.add_argument("--repeats", type=int, metavar="N", help="run every configuration under N seeds (seed, seed+1, ...): a sweep's "
                                                            "configurations, or this one run as a group (sets sweep.repeats)")
    r.add_argument("--storage", metavar="URL", help="sweep: Optuna storage shared by every machine, e.g. postgresql://user@db-host/harness "
                                                    "(overrides sweep.storage and HARNESS_STUDY_STORAGE)")
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


def cmd_run(args: argparse.Namespace) -> int:
    from harness import load_spec
    from harness.cli.tokens import show_builds
    from harness.errors import SpecError

    if not _follower():  # rank 0 speaks for a DDP run; the other ranks wait for its token file, silently
        show_builds(args.quiet)  # a missing token file is built while the spec's data is checked
    overrides = list(args.set or [])
    if args.repeats is not None:
        overrides.append(f"sweep.repeats={args.repeats}")  # validated as the spec's own field: < 1 is refused there
    try:
        spec = load_spec(args.spec, overrides)
    except SpecError as exc:
        print_err(f"error: {exc.render()}")
        return exc.exit_code
    if spec.is_sweep:
        if os.environ.get("WORLD_SIZE", "1") != "1":  # under torchrun
            print_err("error: a sweep runs its trials as separate processes; start one experiment per torchrun")
            return 2
        return _run_sweep(spec, args)
    from harness.cli.progress import Progress
    from harness.job import run

    progress = None if args.quiet or _follower() else Progress(label=spec.name)
    try:
        out = run(spec, progress=progress)
    finally:
        if progress:
            progress.close()
    if not _follower():  # rank 0 speaks for a DDP run
        print_run_summary(out)
    return _exit_code(out)


def _follower() -> bool:
    from harness.train.distributed import Distributed

    return Distributed.is_follower()


def _run_sweep(spec: Any, args: argparse.Namespace) -> int:
    from harness.cli.progress import TrialProgress
    from harness.sweep import run_sweep

    def started(s: Any) -> None:
        units = f"{s.total} trials" if s.seeds is None else f"{s.total} configuration{'s' if s.total != 1 else ''} x {len(s.seeds)} seeds {_seeds(s.seeds)}"
        print(f"sweep {s.study_name}: {units}, sampler {s.sampler}, {s.workers} worker{'s' if s.workers > 1 else ''}, storage {s.storage}")
        print(f"parent run {s.parent_run_id} in experiment '{s.experiment}'", flush=True)

    result = run_sweep(spec, fresh=args.fresh, study_name=args.study, workers=args.workers, n_trials=args.n_trials, storage=args.storage, spec_file=args.spec,
                       progress=None if args.quiet else TrialProgress, on_start=None if args.quiet else started)
    print_sweep_summary(result)
    return 128 + (result.signal or signal.SIGINT) if result.interrupted else 0


def _seeds(seeds: list[int]) -> str:
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"({seeds[0]}..{seeds[-1]})"
    return "(" + ", ".join(map(str, seeds[:8])) + (", ..." if len(seeds) > 8 else "") + ")"


def cmd_resume(args: argparse.Namespace) -> int:
    from harness.cli.progress import Progress
    from harness.job import resume

    quiet = args.quiet or _follower()
    progress = None if quiet else Progress(label=f"resume {args.run_id[:8]}")
    try:
        out = resume(args.run_id, progress=progress, notify=None if _follower() else lambda line: print(line, flush=True))
    finally:
        if progress:
            progress.close()
    if not _follower():
        print_run_summary(out)
    return _exit_code(out)


def cmd_validate(args: argparse.Namespace) -> int:
    from harness import load_spec
    from harness.cli.tokens import show_builds
    from harness.errors import SpecError

    show_builds(False)  # checking a corpus's sizes tokenizes it into the token cache

    bad = 0
    for path in args.specs:
        try:
            spec = load_spec(path, args.set)
        except SpecError as exc:
            bad += 1
            print(exc.render())
            continue
        sw = spec.sweep
        if sw is None:
            kind = "run"
        elif sw.sampler == "grid" or sw.n_trials:
            configs = min(sw.n_trials or sw.grid_size(), sw.grid_size()) if sw.sampler == "grid" else sw.n_trials or 0
            kind = (f"sweep of {configs} configurations × {sw.n_seeds} seeds = {configs * sw.n_seeds} runs" if sw.repeated
                    else f"sweep of {configs} trials")
        else:
            kind = f"sweep; the {sw.sampler} sampler needs n_trials: set sweep.n_trials or pass --n-trials to harness run"
        print(f"ok: {path} ({kind})")
    if bad:
        print(f"{bad} of {len(args.specs)} spec file{'s' if len(args.specs) != 1 else ''} invalid", file=sys.stderr)
        return 2
    return 0


def _exit_code(out: Any) -> int:
    from harness.train.events import StopReason

    if out.stop_reason is StopReason.INTERRUPTED:
        return 128 + (out.signal or signal.SIGINT)
    return 0 if out.status == "FINISHED" else 1
