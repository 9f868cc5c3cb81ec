"""Run ids as people type them: the 8 characters a table shows work as well as all 32, as with git."""

from __future__ import annotations

import re
from typing import Any

from harness.errors import UsageError
from harness.tracking.redact import redact_url

__all__ = ["RUN_ID", "RUN_ID_PREFIX", "resolve_run_id"]

RUN_ID = re.compile(r"^[0-9a-f]{32}$")
RUN_ID_PREFIX = re.compile(r"^[0-9a-f]{1,32}$")


def resolve_run_id(client: Any, text: str, *, uri: str = "") -> str | None:
    """The full id of the one run whose id starts with ``text`` (1 to 32 hex characters), or None when ``text`` is not
    such a prefix or no run matches. Several matches are an error that lists them."""
    text = text.strip().lower()
    if not RUN_ID_PREFIX.match(text):
        return None
    if RUN_ID.match(text):
        return text
    matches = [r for r in _all_runs(client) if r.info.run_id.startswith(text)]
    if len(matches) > 1:
        shown = "\n".join(f"  {r.info.run_id}  {r.info.run_name}  ({r.info.status})" for r in matches[:10])
        more = f"\n  ... and {len(matches) - 10} more" if len(matches) > 10 else ""
        raise UsageError(f"the run id prefix '{text}' is ambiguous in {redact_url(uri) if uri else 'the tracking store'}; it matches:\n{shown}{more}\n"
                         "give more characters")
    return matches[0].info.run_id if matches else None


def _all_runs(client: Any) -> list[Any]:
    from mlflow.entities import ViewType

    exp_ids = [e.experiment_id for e in client.search_experiments()]
    out: list[Any] = []
    token = None
    while exp_ids:
        page = client.search_runs(exp_ids, run_view_type=ViewType.ACTIVE_ONLY, max_results=5000, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            break
    return out
