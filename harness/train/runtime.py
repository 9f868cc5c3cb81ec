"""The process around the loop: which device, how many threads, the seeds, the allocator, and the signals that stop
a run."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import math
import os
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch

from harness.errors import HarnessError

__all__ = ["CpuSample", "StopSignals", "ThreadGovernor", "bf16_pays", "choose_threads", "keep_freed_memory", "resolve_device",
           "resolve_precision", "sample_cpu", "seed_everything", "torch_threads"]


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def resolve_device(name: str) -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; an explicit device that is not there is a clear error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise HarnessError("train.device is cuda but torch sees no CUDA device (torch.cuda.is_available() is False)")
    if name == "mps" and not _mps_available():
        raise HarnessError("train.device is mps but this torch build or machine has no MPS device")
    return torch.device(name)


def _cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str]:
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def bf16_pays(device: torch.device, *, cpu_flags: set[str] | None = None) -> bool:
    """Whether bf16 matmuls are native, hence faster than fp32, on ``device``: CUDA devices that support bf16, and
    x86 CPUs with AVX512-BF16 or AMX-BF16 (measured: bench/RESULTS.md, section 4). Elsewhere bf16 is emulated on the
    CPU, slower than fp32: False."""
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    flags = _cpu_flags() if cpu_flags is None else cpu_flags
    return bool({"avx512_bf16", "amx_bf16"} & flags)


def resolve_precision(name: str, device: torch.device, *, cpu_flags: set[str] | None = None) -> str:
    """``fp32`` or ``bf16`` as given; ``auto``: bf16 where it pays (:func:`bf16_pays`), else fp32."""
    if name != "auto":
        return name
    return "bf16" if bf16_pays(device, cpu_flags=cpu_flags) else "fp32"


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices), so weights and dropout follow from the spec's seed."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------------------------------------- memory

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (glibc malloc.h)
_allocator_tuned = False


def keep_freed_memory(mmap_mib: int = 64, trim_mib: int = 256) -> bool:
    """Ask glibc's malloc to keep freed memory in the process instead of handing it back to the kernel at once.

    A training step allocates and frees the same activation-sized buffers every step. By default glibc serves
    buffers above a (dynamic) threshold with fresh ``mmap`` pages and trims the heap after large frees, so every step
    pays page faults on memory it just released, a measurable share of a small model's step on the CPU. With buffers
    up to ``mmap_mib`` served from the heap, and up to ``trim_mib`` of free heap kept, the same memory is reused and
    those faults are gone. The price: the process keeps its peak heap until it exits.
    Returns whether the setting took (False off glibc, e.g. on macOS or musl; nothing changes there)."""
    global _allocator_tuned
    if _allocator_tuned:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = bool(mallopt(_M_MMAP_THRESHOLD, mmap_mib << 20)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_mib << 20))
    _allocator_tuned = ok
    return ok


# ----------------------------------------------------------------------------------------------------------- threads


@dataclass(frozen=True)
class CpuSample:
    """CPU time of the machine's CPUs (the ones this process may run on) and of this process, at one moment."""

    wall: float  # time.monotonic()
    busy: float  # CPU-seconds those CPUs spent busy since boot, all processes together
    own: float  # CPU-seconds this process has used, all threads together


def _allowed_cpus() -> set[int] | None:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def sample_cpu(stat_path: str = "/proc/stat") -> CpuSample | None:
    """Now, from Linux's /proc/stat; None where there is no /proc/stat (macOS, Windows)."""
    cpus = _allowed_cpus()
    try:
        with open(stat_path, "rb") as fh:
            lines = fh.read().decode("ascii", "replace").splitlines()
    except OSError:
        return None
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    busy = 0
    for line in lines:
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or name == "cpu":
            continue
        if cpus is not None and int(name[3:]) not in cpus:
            continue
        f = [int(v) for v in rest.split()]
        # user nice system idle iowait irq softirq steal: everything but idle and iowait is unavailable to us
        busy += f[0] + f[1] + f[2] + f[5] + f[6] + (f[7] if len(f) > 7 else 0)
    return CpuSample(wall=time.monotonic(), busy=busy / tick, own=time.process_time())


def others_busy(before: CpuSample, after: CpuSample) -> float:
    """How many CPUs' worth of time other processes used between two samples."""
    dt = after.wall - before.wall
    if dt <= 0:
        return 0.0
    return max(0.0, ((after.busy - before.busy) - (after.own - before.own)) / dt)


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to ``n`` inside the block, and put back after it (None: left alone)."""
    before = torch.get_num_threads()
    if n is not None and n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def choose_threads(current: int, *, cap: int, cpus: int, others: float, calm_samples: int, calm_needed: int = 3) -> int:
    """The intra-op thread count to use next, given the CPUs other processes kept busy over the last interval.

    OpenMP threads spin while they wait for each other. When two processes' threads share too few cores, each spins
    through the time slice its partner needs, and both crawl (bench/RESULTS.md, section 1). So never run more threads
    than the CPUs left free: fewer at once when others take more than half a CPU of ours (``free`` rounded), more
    again only when the extra CPU is nearly idle (three quarters free) for ``calm_needed`` samples in a row
    (``calm_samples`` counts them), so a short burst elsewhere does not make it flip. Always between 1 and ``cap``."""
    free = cpus - others
    down = max(1, min(cap, math.floor(free + 0.5)))
    if down < current:
        return down
    up = max(1, min(cap, math.floor(free + 0.25)))
    if up > current and calm_samples >= calm_needed:
        return up
    return current


class ThreadGovernor:
    """Keeps torch's intra-op threads at what the machine has free while a run trains (see :func:`choose_threads`).

    ``tick()`` is cheap (a clock read); every ``interval_s`` it reads /proc/stat and may call torch.set_num_threads.
    Inactive (``tick`` does nothing) where /proc/stat is missing, or with ``cap`` 1. Changing the thread count can
    change the last bits of some results (float sums split differently across threads), so a run that adapted to
    contention is reproducible to float tolerance, not bit for bit; pin ``train.threads`` to rule that out."""

    def __init__(self, cap: int, *, interval_s: float = 0.5, first_s: float = 0.2, sampler: Any = None,
                 set_threads: Any = None):
        self.cap = max(1, cap)
        self.interval_s = interval_s
        self.sampler = sampler or sample_cpu
        self.set_threads = set_threads or torch.set_num_threads
        self.cpus = len(_allowed_cpus() or range(os.cpu_count() or 1))
        self.threads = self.initial = torch.get_num_threads()
        self.calm = 0
        self.changes: list[tuple[float, int, float]] = []  # (monotonic time, new thread count, others' CPUs)
        self._last = self.sampler() if self.cap > 1 else None
        self._next = (self._last.wall if self._last else 0.0) + first_s  # the first decision comes sooner

    @property
    def active(self) -> bool:
        return self._last is not None

    def tick(self) -> int:
        """Between steps: re-decide the thread count when an interval has passed; returns the count in use."""
        if self._last is None or time.monotonic() < self._next:
            return self.threads
        now = self.sampler()
        if now is None:
            self._last = None
            return self.threads
        others = others_busy(self._last, now)
        self._last, self._next = now, now.wall + self.interval_s
        free_for_more = math.floor(self.cpus - others + 0.25) > self.threads
        self.calm = self.calm + 1 if free_for_more else 0
        new = choose_threads(self.threads, cap=self.cap, cpus=self.cpus, others=others, calm_samples=self.calm)
        if new != self.threads:
            self.set_threads(new)
            self.threads = new
            self.calm = 0
            self.changes.append((now.wall, new, round(others, 2)))
        return self.threads

    def restore(self) -> None:
        """Put the thread count back to what it was when the governor started (the next run in this process, e.g. a
        sweep's next trial, starts from the machine's count again, not from this run's last decision)."""
        if self.threads != self.initial:
            self.set_threads(self.initial)
            self.threads = self.initial


# ----------------------------------------------------------------------------------------------------------- signals


class StopSignals:
    """SIGINT/SIGTERM set a flag the loop checks between steps, so the run can checkpoint and end cleanly.

    A second Ctrl-C raises KeyboardInterrupt at once. Outside the main thread (where handlers cannot be installed)
    this does nothing."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C means "now"
        self.received = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
