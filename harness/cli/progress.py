"""Progress display: a rich bar on a terminal, plain periodic lines otherwise (logs, CI, pipes)."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

__all__ = ["Progress", "TrialProgress"]


class Progress:
    """A trainer callback. ``total`` steps; ``label`` prefixes each line (e.g. the trial number)."""

    def __init__(self, total: int | None = None, *, label: str = "", stream: TextIO | None = None, interactive: bool | None = None,
                 every_s: float = 10.0):
        self.stream = stream or sys.stdout
        self.interactive = self.stream.isatty() if interactive is None else interactive
        self.total = total
        self.label = label
        self.every_s = every_s
        self._bar: Any = None
        self._task: Any = None
        self._last_print = 0.0
        self._t0 = time.perf_counter()
        self._first_step: int | None = None
        self.run_id: str | None = None
        self._last: dict[str, Any] = {}
        self._printed_step: int | None = None

    def bind(self, run_id: str) -> None:
        self.run_id = run_id

    def set_total(self, total: int) -> None:
        self.total = total

    def _eta(self, step: int) -> str:
        if not self.total or self._first_step is None or step <= self._first_step:
            return "?"
        rate = (step - self._first_step) / max(time.perf_counter() - self._t0, 1e-9)
        left = (self.total - step) / max(rate, 1e-9)
        return time.strftime("%M:%S", time.gmtime(left)) if left < 3600 else f"{left / 3600:.1f}h"

    def _start_bar(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeRemainingColumn

        self._bar = RichProgress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeRemainingColumn(),
            console=Console(file=self.stream),
            transient=False,
        )
        self._bar.start()
        self._task = self._bar.add_task(self.label or "train", total=self.total, info="")

    def __call__(self, event: Any) -> None:
        from harness.train.events import EvalEnd, StepEnd

        if isinstance(event, StepEnd):
            if self._first_step is None:
                self._first_step = event.step
                self._t0 = time.perf_counter()
            self._last.update(step=event.step + 1, epoch=event.epoch, loss=event.loss, lr=event.lr, tps=event.tokens_per_sec)
        elif isinstance(event, EvalEnd):
            self._last.update({k: v for k, v in event.metrics.items()})
        else:
            return
        info = self._info()
        if self.interactive:
            if self._bar is None:
                self._start_bar()
            self._bar.update(self._task, completed=self._last.get("step", 0), info=info)
            return
        now = time.perf_counter()
        done = self.total is not None and self._last.get("step") == self.total
        step = self._last.get("step", 0)
        if step == self._printed_step and not isinstance(event, EvalEnd):
            return
        if isinstance(event, EvalEnd) or now - self._last_print >= self.every_s or done:
            self._last_print = now
            self._printed_step = step
            total = f"/{self.total}" if self.total else ""
            prefix = f"[{self.label}] " if self.label else ""
            print(f"{prefix}step {step}{total} {info} eta {self._eta(step)}", file=self.stream, flush=True)

    def _info(self) -> str:
        d = self._last
        parts = []
        if "epoch" in d:
            parts.append(f"epoch {d['epoch']}")
        if "loss" in d:
            parts.append(f"loss {d['loss']:.4f}")
        if "val/loss" in d:
            parts.append(f"val {d['val/loss']:.4f}")
        if "lr" in d:
            parts.append(f"lr {d['lr']:.2e}")
        if "tps" in d:
            parts.append(f"{d['tps']:,.0f} tok/s")
        return " | ".join(parts)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


class TrialProgress(Progress):
    """A sweep trial's progress: plain lines every 15 s, prefixed with the trial's label (picklable by name, so
    spawned worker processes can make their own)."""

    def __init__(self, label: str):
        super().__init__(label=label, interactive=False, every_s=15.0)
