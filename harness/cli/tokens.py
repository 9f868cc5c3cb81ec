"""``harness prepare`` (tokenize a spec's corpus into the token cache ahead of time) and ``harness cache list|clear``;
:func:`show_builds` shows a token file's build while any command waits for it."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from harness.cli.output import print_err

__all__ = ["add_commands", "show_builds"]


def add_commands(sub: Any) -> None:
    p = sub.add_parser("prepare", help="tokenize a spec's corpus into the token cache now (a run does it when it is missing)")
    p.add_argument("spec", help="YAML spec file")
    p.add_argument("--set", action="append", metavar="PATH=VALUE", help="override a field before preparing (repeatable)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p.set_defaults(fn=cmd_prepare)
    c = sub.add_parser("cache", help="the token cache: list its files, or clear it")
    csub = c.add_subparsers(dest="cache_command", required=True, metavar="ACTION")
    cl = csub.add_parser("list", help="every token file: size, tokens, tokenizer, corpus")
    cl.set_defaults(fn=cmd_cache_list)
    cc = csub.add_parser("clear", help="remove every token file (runs rebuild what they need)")
    cc.set_defaults(fn=cmd_cache_clear)


def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


class _BuildLines:
    """A build's progress on stderr: one rewritten line on a terminal, a plain line every 10 s (and at each phase's
    end) otherwise, so a log holds a few lines, not thousands."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self._last = 0.0
        self._open = False
        self._shown = False

    def __call__(self, event: Any) -> None:
        from harness.data.cache import BuildProgress

        if not isinstance(event, BuildProgress):
            self._end_line()
            print_err(str(event))
            return
        if event.elapsed_s < 1 and not self._shown:  # a small corpus: done before a line would help
            return
        self._shown = True
        rate = event.done / event.elapsed_s if event.elapsed_s > 0 else 0.0
        pct = f"{100 * event.done / event.total:3.0f}%" if event.total else ""
        eta = f", {max(event.total - event.done, 0) / rate:,.0f} s left" if rate > 0 and event.total and not event.final else ""
        unit = "tokens" if event.phase == "remap" else "MB"
        done = f"{event.done:,}" if unit == "tokens" else f"{event.done / 1e6:,.0f}"
        speed = f"{rate / 1e6:,.1f} M tokens/s" if unit == "tokens" else f"{rate / 1e6:,.1f} MB/s"
        line = f"tokenizing {event.corpus}: {event.phase} {pct} {done} {unit}, {speed}{eta}"
        if self.tty:
            sys.stderr.write("\r\x1b[K" + line + ("\n" if event.final else ""))
            sys.stderr.flush()
            self._open = not event.final
        elif event.final or time.monotonic() - self._last >= 10:
            self._last = time.monotonic()
            print_err(line)

    def _end_line(self) -> None:
        if self._open:
            sys.stderr.write("\n")
            self._open = False


def show_builds(quiet: bool) -> None:
    """Have the token cache's builds shown on stderr (or, quiet, only what it says once: a damaged file, a wait)."""
    from harness.data.cache import BuildProgress, set_reporter

    lines = _BuildLines()
    set_reporter((lambda e: None if isinstance(e, BuildProgress) else lines(e)) if quiet else lines)


def cmd_prepare(args: argparse.Namespace) -> int:
    from harness import load_spec
    from harness.data.prepare import prepare
    from harness.errors import SpecError

    show_builds(args.quiet)
    try:
        spec = load_spec(args.spec, args.set)  # its data checks build the token file (each swept variant's too)
    except SpecError as exc:
        print_err(f"error: {exc.render()}")
        return exc.exit_code
    if spec.task.kind != "lm" or spec.data.corpus is None:
        print_err(f"error: {args.spec}: task {spec.task.kind} reads its dataset as it is; `harness prepare` tokenizes a "
                  "language model's corpus (task: lm)")
        return 2
    from pathlib import Path

    prep = prepare(spec.data)
    size = Path(prep.path).stat().st_size
    print(f"{spec.data.corpus}: {prep.n_train_tokens + prep.n_val_tokens:,} tokens ({prep.n_train_tokens:,} train, "
          f"{prep.n_val_tokens:,} val), vocabulary {prep.tokenizer.vocab_size:,}")
    print(f"token file {prep.path} ({_mb(size)})")
    return 0


def cmd_cache_list(args: argparse.Namespace) -> int:
    from harness.data.cache import cache_dir, list_cache

    entries = list_cache()
    print(f"token cache {cache_dir()}: {len(entries)} file{'s' if len(entries) != 1 else ''}, "
          f"{_mb(sum(e.size for e in entries))}")
    for e in entries:
        h = e.header
        if h is None:
            print(f"  {e.path.name}  {_mb(e.size)}  (damaged or left by a killed build: rebuilt or removed when needed)")
            continue
        print(f"  {e.path.name}  {_mb(e.size)}  {int(h['n_tokens']):,} tokens {h['dtype']}  {h['tokenizer']} "
              f"(vocabulary {int(h['vocab_size']):,})  {h.get('corpus', '?')}")
    return 0


def cmd_cache_clear(args: argparse.Namespace) -> int:
    from harness.data.cache import cache_dir, clear_cache

    n, freed = clear_cache()
    print(f"removed {n} file{'s' if n != 1 else ''} ({_mb(freed)}) from {cache_dir()}")
    return 0
