"""Progress display: a rich bar on a terminal, plain periodic lines otherwise (logs, CI, pipes).

Both fit 80 columns without losing the step counter, the losses or the ETA: the bar shrinks first, then the lr and
the epoch go, then tokens/s.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

__all__ = ["Progress", "TrialProgress"]


def _tokens(tps: float) -> str:
    return f"{tps / 1000:.1f}k tok/s" if tps >= 1000 else f"{tps:.0f} tok/s"


class Progress:
    """A trainer callback. ``total`` steps; ``label`` prefixes each line (e.g. the trial number)."""

    def __init__(self, total: int | None = None, *, label: str = "", stream: TextIO | None = None, interactive: bool | None = None,
                 every_s: float = 10.0, width: int | None = None):
        self.stream = stream or sys.stdout
        self.interactive = self.stream.isatty() if interactive is None else interactive
        self.total = total
        self.label = label
        self.every_s = every_s
        self.width = width  # None: the terminal's width
        self._bar: Any = None
        self._task: Any = None
        self._last_print = 0.0
        self._t0 = time.perf_counter()
        self._first_step: int | None = None
        self.run_id: str | None = None
        self._last: dict[str, Any] = {}
        self._printed_step: int | None = None
        self._pending = False  # the last step's line, held for its evaluation

    def bind(self, run_id: str) -> None:
        self.run_id = run_id

    def set_total(self, total: int) -> None:
        self.total = total

    # -- what to show ------------------------------------------------------------------------------------------------
    def _eta(self, step: int) -> str:
        if not self.total or self._first_step is None or step <= self._first_step:
            return "eta ?"
        rate = (step - self._first_step) / max(time.perf_counter() - self._t0, 1e-9)
        left = (self.total - step) / max(rate, 1e-9)
        return "eta " + (time.strftime("%M:%S", time.gmtime(left)) if left < 3600 else f"{left / 3600:.1f}h")

    def _fields(self, room: int) -> str:
        """The run's numbers in at most ``room`` characters, the most important kept longest."""
        d = self._last
        core = " ".join(p for p in (f"loss {d['loss']:.4f}" if "loss" in d else "", f"val {d['val/loss']:.4f}" if "val/loss" in d else "") if p)
        extras = [f"ep {d['epoch']}" if "epoch" in d else "", _tokens(d["tps"]) if "tps" in d else "", f"lr {d['lr']:.1e}" if "lr" in d else ""]
        text = core
        for extra in extras:
            if extra and len(text) + 1 + len(extra) <= room:
                text = f"{text} {extra}" if text else extra
        return text[:room]

    def _counter(self) -> str:
        step = self._last.get("step", 0)
        return f"{step}/{self.total}" if self.total else str(step)

    # -- events ------------------------------------------------------------------------------------------------------
    def __call__(self, event: Any) -> None:
        from harness.train.events import EvalEnd, Stopping, StepEnd

        if isinstance(event, Stopping):
            self._stopping(event)
            return
        if isinstance(event, StepEnd):
            if self._first_step is None:
                # the steps done when the clock starts: this one (a resumed run starts past 0), so the rate counts
                # only steps timed from here
                self._first_step = event.step + 1
                self._t0 = time.perf_counter()
            self._last.update(step=event.step + 1, epoch=event.epoch, loss=event.loss, lr=event.lr, tps=event.tokens_per_sec)
        elif isinstance(event, EvalEnd):
            self._last.update(event.metrics)
        else:
            return
        if self.interactive:
            self._redraw()
        else:
            self._print_line(force=isinstance(event, EvalEnd))

    def _stopping(self, event: Any) -> None:
        """Ctrl-C or SIGTERM: say at once that the run is stopping, and what it does before it ends."""
        self.close()
        print(f"{'[' + self.label + '] ' if self.label else ''}stopping at step {event.step}: {event.doing}", file=self.stream, flush=True)

    def _width(self) -> int:
        if self.width is not None:
            return self.width
        import shutil

        return shutil.get_terminal_size((80, 24)).columns

    def _redraw(self) -> None:
        if self._bar is None:
            self._start_bar()
        width = self._width()
        label = (self.label or "train")[:14]
        fixed = len(label) + len(self._counter()) + len(self._eta(self._last.get("step", 0))) + 3
        bar = max(0, min(30, width - fixed - 30 - 2))  # the bar takes what the numbers leave
        room = width - fixed - (bar + 1 if bar else 0) - 1
        self._bar.columns[1].bar_width = bar if bar else 1
        self._bar.update(self._task, completed=self._last.get("step", 0), description=label, info=self._fields(room),
                         counter=self._counter(), eta=self._eta(self._last.get("step", 0)))

    def _start_bar(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress as RichProgress, TextColumn

        console = Console(file=self.stream, width=self.width) if self.width is not None else Console(file=self.stream)
        self._bar = RichProgress(
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=10),
            TextColumn("{task.fields[counter]}"),
            TextColumn("{task.fields[info]}"),
            TextColumn("{task.fields[eta]}"),
            console=console,
            transient=False,
            expand=False,
        )
        self._bar.start()
        self._task = self._bar.add_task(self.label or "train", total=self.total, info="", counter="", eta="")

    def _print_line(self, *, force: bool) -> None:
        now = time.perf_counter()
        step = self._last.get("step", 0)
        done = self.total is not None and step == self.total
        if step == self._printed_step and not force:
            return
        if done and not force:
            # the last step's evaluation follows at once: print the line once, with its val loss (or at close)
            self._pending = True
            return
        if not (force or done or now - self._last_print >= self.every_s):
            return
        self._last_print, self._printed_step, self._pending = now, step, False
        prefix = f"[{self.label}] " if self.label else ""
        head, eta = f"{prefix}step {self._counter()}", self._eta(step)
        print(f"{head} {self._fields(self._width() - len(head) - len(eta) - 2)} {eta}", file=self.stream, flush=True)

    def close(self) -> None:
        if self._pending:
            self._print_line(force=True)
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


class TrialProgress(Progress):
    """A sweep trial's progress: plain lines every 15 s, prefixed with the trial's label (picklable by name, so
    spawned worker processes can make their own)."""

    def __init__(self, label: str):
        super().__init__(label=label, interactive=False, every_s=15.0)
