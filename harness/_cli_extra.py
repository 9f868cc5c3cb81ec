"""Analysis and browsing commands (results, compare, ui, dashboard, generate)."""

from __future__ import annotations

import argparse


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    return None
