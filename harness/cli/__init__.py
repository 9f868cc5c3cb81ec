"""The ``harness`` command: parse, call one library function, print.

Exit codes: 0 ok, 1 a run failed or diverged, 2 bad input (spec, path, id, unreachable store), 130/143 interrupted by
SIGINT/SIGTERM. One module per command group: ``run`` (run, resume, validate), ``info`` (corpora, schema),
``results`` (results, compare, plot), ``serve`` (ui, dashboard), ``generate``, ``tokens`` (prepare, cache); ``output`` prints, ``progress`` shows
a running job. Building the parser imports neither torch nor MLflow, so ``harness --help`` is instant.
"""

from __future__ import annotations

import argparse
import os
import traceback
from collections.abc import Sequence
from typing import NoReturn

from harness import collector
from harness.cli import generate, info, results, run, serve, tokens
from harness.cli.output import print_err
from harness.errors import HarnessError

__all__ = ["build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    """argparse's parser, whose usage errors (``unrecognized arguments: --storage postgresql://u:PASSWORD@...``, an
    invalid choice) quote the command line: they are printed redacted, like every other message."""

    def error(self, message: str) -> NoReturn:
        from harness.cli.output import shown_text

        super().error(shown_text(message))  # the command line's secrets are known to redact (see main)


def build_parser() -> argparse.ArgumentParser:
    from harness import __version__

    p = _Parser(prog="harness", description="Train small GPTs from YAML specs, tracked in MLflow, swept with Optuna.")
    p.add_argument("--version", action="version", version=f"harness {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (run, tokens, info, results, serve, generate):
        module.add_commands(sub)
    return p


# Commands that set up a run: its imports (torch, MLflow, SQLAlchemy's models) pause the garbage collector until the
# run starts training (harness.collector). Every other command (ui and dashboard serve for hours) keeps it running.
_SETS_UP_A_RUN = frozenset({"run", "resume"})


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command and return its exit code. As the ``harness`` script (no ``argv``), the process ends right
    after: see :func:`_before_exit`."""
    if argv is not None:  # called in-process: the URLs given here are this command line's (as sys.argv's are)
        from harness.tracking.redact import remember

        remember(*(a.partition("=")[2] if a.startswith("-") else a for a in argv if "://" in a))
    args = build_parser().parse_args(argv)
    if argv is None and args.command in _SETS_UP_A_RUN:
        collector.pause()  # see harness.collector; the job resumes it just before the first training step
    try:
        code = _main(args)
    finally:
        collector.resume()  # a run that never reached training (a failed set-up, a sweep's parent)
    if argv is None:
        _before_exit()
    return code


def _before_exit() -> None:
    """Make the interpreter's shutdown quick. After a run (torch, MLflow, pandas, matplotlib loaded), its garbage
    collection passes over every object, a noticeable share of a short run's wall time (bench/RESULTS.md), freeing
    nothing that matters: the run's files and the store are written and closed before this. ``gc.freeze`` moves the
    objects alive now out of the collector's sight; exit handlers still run, and the process ends as usual."""
    import gc

    gc.freeze()


def _main(args: argparse.Namespace) -> int:
    try:
        return int(args.fn(args) or 0)
    except HarnessError as exc:
        print_err(f"error: {exc}")
        return exc.exit_code
    except KeyboardInterrupt:
        print_err("interrupted")
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # a bug: say what and where, full traceback on request
        if os.environ.get("HARNESS_DEBUG"):
            traceback.print_exc()
        else:
            print_err(f"internal error: {type(exc).__name__}: {exc}\n(set HARNESS_DEBUG=1 to see the traceback)")
        return 1
