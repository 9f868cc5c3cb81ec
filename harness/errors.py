"""Errors that reach the user as a clear message and exit code 2.

Library code raises these; only the CLI turns them into an exit code.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["HarnessError", "Issue", "SpecError", "UsageError"]


class HarnessError(Exception):
    """A problem the user can fix (bad input, missing package, unknown run). Exit code 2."""

    exit_code = 2


class UsageError(HarnessError):
    """A command was called with something that does not exist or does not fit."""


@dataclass(frozen=True)
class Issue:
    """One validation problem: where it is (file and dotted field path) and what was expected."""

    file: str | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}: " if self.file else ""
        field = self.path if self.path else "<top level>"
        return f"{where}{field}: {self.message}"


class SpecError(HarnessError):
    """One or more spec problems, all collected before raising."""

    def __init__(self, issues: list[Issue]):
        self.issues = list(issues)
        super().__init__(self.render())

    def render(self) -> str:
        """``N problems in <where>:`` and one line per issue; <where> is the file (or ``--set``) when they share one."""
        n = len(self.issues)
        files = {i.file for i in self.issues}
        shared = files.pop() if len(files) == 1 else None
        lines = [f"{i.path or '<top level>'}: {i.message}" if shared else str(i) for i in self.issues]
        return f"{n} problem{'s' if n != 1 else ''}{f' in {shared}' if shared else ''}:\n" + "\n".join(f"  - {line}" for line in lines)
