"""Finding runs in the tracking store: open it (never creating one), look up runs, and resolve selectors.

A *selector* is a run id, a sweep's parent run id (its trials), an experiment name (its runs), an experiment id, or a
study name (the runs tagged ``harness.study``); a list of selectors selects their union.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from typing import Any

from harness.errors import UsageError
from harness.tracking import client_for, tracking_uri
from harness.tracking.store import require_store
from harness.tracking.lookup import RUN_ID, resolve_run_id
from harness.tracking.redact import redact_url

__all__ = ["RUN_ID", "all_experiment_ids", "children", "experiment_names", "get_run", "open_store", "quote_ok", "role", "search_runs", "select_runs"]



def open_store(uri: str | None = None) -> tuple[Any, str]:
    """(MlflowClient, uri) for an existing store. A local store that does not exist yet is an error here: reading
    must not create an empty ``mlruns/mlflow.db`` in whatever folder the user happens to be in."""
    uri = tracking_uri(uri)
    require_store(uri)
    return client_for(uri), uri


def search_runs(client: Any, experiment_ids: list[str], filter_string: str = "") -> list[Any]:
    from mlflow.entities import ViewType

    out: list[Any] = []
    token = None
    while True:
        page = client.search_runs(experiment_ids, filter_string, run_view_type=ViewType.ACTIVE_ONLY, max_results=1000,
                                  order_by=["attributes.start_time ASC"], page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


def all_experiment_ids(client: Any) -> list[str]:
    return [e.experiment_id for e in client.search_experiments()]


def get_run(client: Any, run_id: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException:
        return None
    return None if run.info.lifecycle_stage == "deleted" else run


def role(run: Any) -> str | None:
    return run.data.tags.get("harness.role")


def children(client: Any, parent: Any) -> list[Any]:
    return search_runs(client, [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")


def quote_ok(s: str) -> bool:
    return "'" not in s and "\\" not in s


def select_runs(client: Any, selector: str | Sequence[str], *, uri: str = "", include_parents: bool = False) -> list[Any]:
    """The runs a selector names, oldest first.

    A selector is a run id (or a unique prefix of one), a sweep's parent run id (its trials),
    an experiment name (its runs), an experiment id, or a study name (the trials tagged ``harness.study``); a list of
    selectors is their union. Sweep parent runs carry no
    training metrics, so they are left out unless ``include_parents``.
    """
    if not isinstance(selector, str):
        seen: dict[str, Any] = {}
        for s in selector:
            for r in select_runs(client, s, uri=uri, include_parents=include_parents):
                seen.setdefault(r.info.run_id, r)
        if not seen:
            raise UsageError("no runs selected")
        return list(seen.values())
    sel = selector.strip()
    if not sel:
        raise UsageError("empty selector: give an experiment name, run id or study name")
    keep = (lambda r: True) if include_parents else (lambda r: role(r) != "sweep")
    if RUN_ID.match(sel):
        run = get_run(client, sel)
        if run is not None:
            if role(run) == "sweep":
                kids = children(client, run)
                return ([run] if include_parents else []) + kids
            return [run]
    exp = client.get_experiment_by_name(sel)
    if exp is None and sel.isdigit() and not RUN_ID.match(sel):
        from mlflow.exceptions import MlflowException

        try:
            exp = client.get_experiment(sel)
        except MlflowException:
            exp = None
    if exp is not None and exp.lifecycle_stage != "deleted":
        return [r for r in search_runs(client, [exp.experiment_id]) if keep(r)]
    if quote_ok(sel):
        tagged = search_runs(client, all_experiment_ids(client), f"tags.`harness.study` = '{sel}'")
        if tagged:
            return [r for r in tagged if keep(r)]
    full = resolve_run_id(client, sel, uri=uri)  # a short id, as the tables print it
    if full is not None and full != sel:
        return select_runs(client, full, uri=uri, include_parents=include_parents)
    raise UsageError(_unknown(client, sel, uri))


def _unknown(client: Any, sel: str, uri: str) -> str:
    if RUN_ID.match(sel):
        return f"no run with id '{sel}' in the tracking store {redact_url(uri)}"
    names = sorted(e.name for e in client.search_experiments())
    msg = f"no experiment, run id or study '{sel}' in the tracking store {redact_url(uri)}"
    close = difflib.get_close_matches(sel, names, n=3)
    if close:
        msg += f"; did you mean {', '.join(repr(c) for c in close)}?"
    elif names:
        shown = ", ".join(names[:12]) + (" ..." if len(names) > 12 else "")
        msg += f"; experiments there: {shown}"
    else:
        msg += " (it has no experiments yet)"
    return msg


def experiment_names(client: Any, runs: Iterable[Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for r in runs:
        eid = r.info.experiment_id
        if eid not in out:
            try:
                out[eid] = client.get_experiment(eid).name
            except Exception:
                out[eid] = eid
    return out
