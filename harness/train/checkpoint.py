"""Checkpoint files: atomic writes, safe loads, and a fallback when the newest file is damaged."""

from __future__ import annotations

import os
import pickle
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.testing import faults
from harness.errors import HarnessError

__all__ = ["BEST", "LAST", "PREVIOUS", "CheckpointError", "capture_rng", "load_checkpoint", "periodic_name", "prune_periodic", "restore_rng",
           "resume_candidates", "save_checkpoint"]

LAST = "last.pt"
PREVIOUS = "prev.pt"
BEST = "best.pt"
_PERIODIC = re.compile(r"^step-(\d+)\.pt$")


class CheckpointError(HarnessError):
    """A checkpoint cannot be written or read."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(state: dict[str, Any], path: Path, *, keep_previous: bool = False) -> None:
    """Write ``state`` to ``path`` atomically: a temp file in the same folder, fsync, then rename over.

    A crash at any moment leaves either the old file or the new one, never a torn file. With ``keep_previous`` the old
    file is first moved to ``prev.pt`` so a damaged newest checkpoint still has a fallback.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(f"cannot create checkpoint folder {path.parent}: {exc.strerror or exc}") from None
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            torch.save(state, faults.writer(fh, "checkpoint_write"))
            faults.point("checkpoint_write")
            fh.flush()
            os.fsync(fh.fileno())
        if keep_previous and path.exists():
            os.replace(path, path.with_name(PREVIOUS))
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as exc:
        # Never leave a stray temp file next to the checkpoints, whatever went wrong.
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        # torch.save reports a failed write (disk full, I/O error) as a RuntimeError raised from the OSError.
        os_error = exc if isinstance(exc, OSError) else exc.__context__ if isinstance(exc, RuntimeError) else None
        if isinstance(os_error, OSError):
            raise CheckpointError(f"cannot write checkpoint {path}: {os_error.strerror or os_error}; the previous checkpoint is untouched") from None
        raise  # e.g. a state that cannot be pickled: a bug, not the user's disk


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load with ``weights_only=True``: tensors and plain containers only, so a pickle payload never runs."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for damaged files (UnpicklingError, RuntimeError, EOFError, ...)
        raise CheckpointError(f"{path}: {_load_problem(path, exc)}") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path}: not a harness checkpoint (no model state)")
    return state


def _load_problem(path: Path, exc: Exception) -> str:
    """What is wrong with a checkpoint that torch.load refused, in one short phrase."""
    text = str(exc)
    payload = re.search(r"GLOBAL ([\w.]+)", text)
    if isinstance(exc, pickle.UnpicklingError) and payload:
        return (f"refused to load: it would import and call {payload.group(1)}, and checkpoints may only hold tensors and plain "
                "data (loaded with weights_only=True); nothing in it was run")
    if path.stat().st_size == 0:
        return "not a readable checkpoint (truncated: the file is empty)"
    # torch's messages are long: keep the line that says what failed, and its first sentence
    noise = ("Weights only load failed", "Please file an issue", "Check the documentation")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith(noise)]
    detail = lines[0].split(". ")[0] if lines else type(exc).__name__
    return f"not a readable checkpoint (truncated or corrupt: {detail[:200]})"


def resume_candidates(folder: Path) -> list[Path]:
    """Checkpoints to try, newest first: last, previous last, then the periodic ones by step."""
    folder = Path(folder)
    out = [p for p in (folder / LAST, folder / PREVIOUS) if p.is_file()]
    periodic = sorted(
        (p for p in folder.glob("step-*.pt") if _PERIODIC.match(p.name)),
        key=lambda p: int(_PERIODIC.match(p.name).group(1)),  # type: ignore[union-attr]
        reverse=True,
    )
    return out + periodic


def periodic_name(step: int) -> str:
    return f"step-{step:08d}.pt"


def prune_periodic(folder: Path, keep: int | None) -> list[Path]:
    """Delete all but the newest ``keep`` periodic checkpoints; returns what was removed."""
    if keep is None:
        return []
    periodic = [p for p in resume_candidates(folder) if _PERIODIC.match(p.name)]
    removed = periodic[keep:]
    for p in removed:
        p.unlink(missing_ok=True)
    return removed


# ----------------------------------------------------------------------------------------------------------- RNG


def capture_rng() -> dict[str, Any]:
    """Every RNG the run can touch, as tensors and plain data (loadable with weights_only=True)."""
    np_state: Any = np.random.get_state()  # the legacy tuple (its stubs also allow a dict)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
