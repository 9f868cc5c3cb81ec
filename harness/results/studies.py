"""A sweep's Optuna study, found from a study name, a sweep spec file or a sweep's parent run id; and its trials
as a pandas frame joined to their MLflow runs."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import HarnessError, UsageError
from harness.results.store import RUN_ID, get_run, open_store, role, search_runs, all_experiment_ids, quote_ok, select_runs
from harness.sweep.storage import storage_url
from harness.tracking import parse_store_url, tracking_uri
from harness.tracking.redact import is_redacted, redact_url

__all__ = ["StudyRef", "load_study", "resolve_study", "study"]


@dataclass
class StudyRef:
    name: str
    storage: str
    parent_run_id: str | None = None
    notes: list[str] = field(default_factory=list)


def _usable_storage(url: str) -> bool:
    """A local storage must exist already (looking up a study never creates one); a server is tried as is."""
    store = parse_store_url(url)
    return store.path.is_file() if store.kind in ("sqlite", "local") and store.path is not None else True


def _is_spec_path(target: str) -> bool:
    return target.endswith((".yaml", ".yml")) or Path(target).is_file()


def resolve_study(target: str, *, storage: str | None = None, uri: str | None = None) -> StudyRef:
    """Which study (name and storage URL) a sweep spec path, study name or sweep parent run id refers to.

    Storage, first that applies: ``storage``; the spec's ``sweep.storage``; the ``harness.storage`` tag of the sweep's
    parent MLflow run; ``HARNESS_STUDY_STORAGE``; ``sqlite:///studies/<name>.db``.
    """

    parent_id = None
    candidates: list[str] = []
    if _is_spec_path(target):
        from harness.errors import SpecError
        from harness.spec import load_spec

        if not Path(target).is_file():
            raise UsageError(f"spec file not found: {target}")
        try:
            spec = load_spec(target)
        except SpecError as exc:
            raise UsageError(f"{target}: {exc}") from None
        if spec.sweep is None:
            raise UsageError(f"{target} has no sweep section, so it has no Optuna study")
        from harness.sweep.study import default_study_name

        name = default_study_name(spec)
        if spec.sweep.storage:
            candidates.append(spec.sweep.storage)
    else:
        name = target
    # The sweep's parent MLflow run records the storage it used.
    uri = tracking_uri(uri)
    path = parse_store_url(uri).path
    if path is None or path.exists():
        try:
            client, _ = open_store(uri)
            if RUN_ID.match(name):
                run = get_run(client, name)
                if run is not None and role(run) == "sweep":
                    parent_id = run.info.run_id
                    name = run.data.tags.get("harness.study", name)
                    candidates.append(run.data.tags.get("harness.storage", ""))
            if parent_id is None and quote_ok(name):
                parents = search_runs(client, all_experiment_ids(client), f"tags.`harness.study` = '{name}' and tags.`harness.role` = 'sweep'")
                if parents:
                    parent_id = parents[-1].info.run_id
                    candidates.append(parents[-1].data.tags.get("harness.storage", ""))
        except HarnessError:
            pass
    candidates.append(storage_url(None, name))  # HARNESS_STUDY_STORAGE, else studies/<name>.db
    if storage:
        candidates = [storage]
    # The parent run's tag names the storage without its password (harness.tracking.redact): not a URL to connect with.
    hidden = [c for c in dict.fromkeys(candidates) if c and is_redacted(c)]
    tried = []
    for url in dict.fromkeys(c for c in candidates if c and c not in hidden):
        if _usable_storage(url):
            return StudyRef(name=name, storage=url, parent_run_id=parent_id)
        tried.append(redact_url(url))
    said = (f"; the sweep ran on {', '.join(hidden)}, whose password harness does not keep: pass --storage URL with the "
            "password, or set HARNESS_STUDY_STORAGE") if hidden else ""
    looked = f" (looked in {', '.join(tried)})" if tried else ""
    raise UsageError(f"no Optuna study '{name}' found{looked}{said}; run the sweep first, cd to the project folder, or pass "
                     "--storage URL")


@contextlib.contextmanager
def load_study(ref: StudyRef) -> Iterator[Any]:
    """The study, open for the ``with`` block; a database storage's connections are closed after it."""
    import optuna

    from harness.sweep.storage import make_storage

    storage = make_storage(ref.storage)
    try:
        try:
            yield optuna.load_study(study_name=ref.name, storage=storage)
        except KeyError:
            names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
            hint = f"; studies there: {', '.join(names)}" if names else " (it holds no studies)"
            raise UsageError(f"no study named '{ref.name}' in {redact_url(ref.storage)}{hint}") from None
    finally:
        engine = getattr(storage, "engine", None)
        if engine is not None:
            engine.dispose()


def study(target: str, *, storage: str | None = None, uri: str | None = None) -> Any:
    """The Optuna study of a sweep (by study name, sweep spec path, or sweep parent run id) as
    ``study.trials_dataframe()`` (``number, value, datetime_*, duration, params_*, user_attrs_*, state``) joined to
    MLflow: ``run_id``, ``run_name``, ``mlflow_status`` and ``stop_reason`` (the trial's, else its run's tag), and
    ``superseded`` (True for a crashed/interrupted attempt whose retry continued the same MLflow run). The
    ``params_*`` columns are each trial's configuration's values, from the study's registry."""
    import pandas as pd

    from harness.sweep.attempts import CONFIG, superseded
    from harness.sweep.schedule import configurations

    ref = resolve_study(target, storage=storage, uri=uri)
    with load_study(ref) as st:
        df = st.trials_dataframe()
        trials = st.get_trials(deepcopy=True)
        registry = {c.cid: c.params for c in configurations(st, trials)}
    if df.empty:
        df = pd.DataFrame({"number": pd.Series(dtype="int64")})
    # every trial's configuration values (a grid's are kept in the registry only, see harness.sweep.schedule)
    cids = {t.number: t.user_attrs.get(CONFIG) for t in trials}
    for path in dict.fromkeys(p for params in registry.values() for p in params):
        df[f"params_{path}"] = pd.Series([registry.get(str(cids.get(int(n))), {}).get(path) for n in df["number"]], dtype=object,
                                         index=df.index)
    retried = superseded(trials)
    by_number = {t.number: t for t in trials}
    run_ids = [by_number[n].user_attrs.get("mlflow_run_id") if n in by_number else None for n in df["number"]]
    mlflow_runs: dict[str, Any] = {}
    wanted = {r for r in run_ids if r}
    try:
        client = open_store(uri)[0] if wanted else None
    except HarnessError:
        client = None  # no MLflow store here: the study alone still answers
    if client is not None:
        try:  # one search for the study's runs, then single lookups for any that it missed
            for run in select_runs(client, ref.name):
                mlflow_runs[run.info.run_id] = run
        except HarnessError:
            pass
        for rid in wanted - set(mlflow_runs):
            run = get_run(client, rid)
            if run is not None:
                mlflow_runs[rid] = run
    df["run_id"] = pd.Series(run_ids, dtype=object, index=df.index)
    df["run_name"] = pd.Series([mlflow_runs[r].info.run_name if r in mlflow_runs else None for r in run_ids], dtype=object, index=df.index)
    df["mlflow_status"] = pd.Series([mlflow_runs[r].info.status if r in mlflow_runs else None for r in run_ids], dtype=object, index=df.index)
    stops = []
    for n, r in zip(df["number"], run_ids):
        t = by_number.get(n)
        s = t.user_attrs.get("stop_reason") if t is not None else None
        if s is None and r in mlflow_runs:
            s = mlflow_runs[r].data.tags.get("stop_reason")
        stops.append(s)
    df["stop_reason"] = pd.Series(stops, dtype=object, index=df.index)
    df["superseded"] = pd.Series([int(n) in retried for n in df["number"]], dtype=bool, index=df.index)
    df.attrs.update({"study": ref.name, "storage": ref.storage, "parent_run_id": ref.parent_run_id})
    return df
