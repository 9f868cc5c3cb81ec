"""The process around the loop: which device, how many threads, the seeds, and the signals that stop a run."""

from __future__ import annotations

import random
import signal
import threading
from typing import Any

import numpy as np
import torch

from harness.errors import HarnessError

__all__ = ["StopSignals", "resolve_device", "seed_everything"]


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


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices), so weights and dropout follow from the spec's seed."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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
