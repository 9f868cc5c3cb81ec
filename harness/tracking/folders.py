"""Folders harness keeps on this machine for runs on a remote store: checkpoints staged before upload, and source
models downloaded for ``init.from``. Both are read back later (resume loads a staged checkpoint, a finetuning run loads
a cached one), so they must be this user's own.

On a shared machine the temp folder belongs to everyone: another user could make harness's folder first and put a
checkpoint in it, or make it a link to a folder of theirs. So a default folder is per user (its name carries the uid)
and made with mode 0700, and before any folder is used it must be a real folder (not a link), owned by this user, that
no one else can write to. One that is not is refused with an error that says how to choose another; harness never
writes into it.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from harness.errors import UsageError

__all__ = ["private_folder", "user_temp_folder"]


def user_temp_folder(name: str) -> Path:
    """``<temp folder>/<name>-<uid>``: this user's default folder of that name (``tempfile.gettempdir()``: $TMPDIR, else
    /tmp)."""
    user = os.getuid() if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
    return Path(tempfile.gettempdir()) / f"{name}-{user}"


def private_folder(path: Path, *, what: str, instead: str) -> Path:
    """``path``, made if missing (mode 0700), after checking that only this user controls it; else a UsageError that
    names the problem and ``instead`` (how to choose another folder)."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(path)
    except OSError as exc:
        raise UsageError(f"cannot keep {what} in {path}: {exc.strerror or exc}; {instead}") from None
    problem = None
    if stat.S_ISLNK(st.st_mode):
        problem = "it is a symbolic link"
    elif not stat.S_ISDIR(st.st_mode):
        problem = "it is not a folder"
    elif hasattr(os, "getuid") and st.st_uid != os.getuid():
        problem = f"it belongs to uid {st.st_uid}, not to this user (uid {os.getuid()})"
    elif os.name == "posix" and st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        problem = f"other users can write to it (mode {stat.S_IMODE(st.st_mode):o})"
    if problem:
        raise UsageError(f"refusing to keep {what} in {path}: {problem}, so its files cannot be trusted; {instead}")
    return path
