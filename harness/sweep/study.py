"""The study a sweep runs in: created once, joined by every later invocation and every worker, on any machine.

Under the study lock (:func:`harness.sweep.claim.study_lock`), opening a study makes sure that

* it remembers the resolved base spec it was made from (a digest and the spec, in its user attributes), and a spec
  that would change a finished run's result is refused with what changed; a spec that only **extends** it (new grid
  values of a swept path, more seeds) joins it, and only the new seed runs are run;
* it has one parent MLflow run, shared by every invocation, and an id of its own (``harness.study_id``) that every
  run of it carries, so that a study started over with ``--fresh`` never shares a table with the one it replaced.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import uuid
from dataclasses import dataclass
from typing import Any

from harness.errors import Issue, SpecError, UsageError
from harness.spec import ParamRange, Spec, flatten, is_named_corpus, spec_to_dict, spec_to_yaml
from harness.sweep.claim import study_lock
from harness.sweep.storage import is_journal, make_storage
from harness.tracking import MlflowTracker, check_store, client_for
from harness.tracking.redact import redact_text, redact_url

__all__ = ["LAYOUT", "NO_EFFECT_FIELDS", "STUDY_ID", "OpenStudy", "default_study_name", "from_optuna", "grid_points", "open_study",
           "point_key", "spec_digest", "suggest", "to_optuna", "total_trials"]

LAYOUT = "harness.layout"  # study user attribute: how its trials are kept ("seed-runs/1": one trial per seed run)
_LAYOUT = "seed-runs/1"
STUDY_ID = "harness.study_id"  # study user attribute and MLflow tag: this study, not another of the same name

#: Fields that cannot change what a trial computes: changing them does not make a different study.
NO_EFFECT_FIELDS = ("tracking.tags", "tracking.sample_tokens", "tracking.sample_prompt", "tracking.log_checkpoints",
                    "tracking.run_name", "sweep.workers", "sweep.n_trials", "sweep.timeout_s", "sweep.storage")
#: Fields that extend a study rather than change it: more seeds, and (below) a swept path's grid values.
GROWTH_FIELDS = ("seed", "sweep.repeats", "sweep.seeds")


@dataclass
class OpenStudy:
    study: Any  # optuna.Study
    storage: Any  # the Optuna storage object the study uses
    name: str
    url: str
    parent_run_id: str
    total: int  # configurations the sweep runs in all
    study_id: str = ""


def total_trials(spec: Spec, n_trials: int | None, *, file: str | None = None) -> int:
    """How many configurations the sweep runs: ``n_trials``, else ``sweep.n_trials``, else the grid's size."""
    sw = spec.sweep
    assert sw is not None
    total = n_trials or sw.n_trials or (sw.grid_size() if sw.sampler == "grid" else None)
    if total is None:
        raise SpecError([Issue(file, "sweep.n_trials", f"the {sw.sampler} sampler needs n_trials (only a grid has a natural size)")])
    return min(total, sw.grid_size()) if sw.sampler == "grid" else total


def grid_points(spec: Spec) -> list[dict[str, Any]]:
    """Every combination of the grid's values, in the order the spec lists them."""
    sw = spec.sweep
    assert sw is not None
    keys = list(sw.params)
    values = [v if isinstance(v, list) else list(v.choices or []) for v in sw.params.values()]
    return [dict(zip(keys, combo)) for combo in itertools.product(*values)]


def to_optuna(value: Any) -> Any:
    """A swept value as Optuna stores a categorical choice: None, bool, int, float and str as they are; a mapping or a
    list (``task.freeze: {last_n_blocks: 1}``) as its JSON text, which Optuna's storages keep without a warning."""
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value


def from_optuna(params: dict[str, Any]) -> dict[str, Any]:
    """A trial's params with the JSON-encoded choices (see :func:`to_optuna`) decoded again."""
    out = {}
    for k, v in params.items():
        if isinstance(v, str) and v[:1] in "{[":
            try:
                v = json.loads(v)
            except ValueError:
                pass
        out[k] = v
    return out


def suggest(trial: Any, path: str, space: list[Any] | ParamRange) -> Any:
    """Trial ``trial``'s value for the swept ``path`` (a queued trial gets its fixed value back)."""
    choices = space if isinstance(space, list) else space.choices
    if choices is not None:
        stored = [to_optuna(c) for c in choices]
        picked = trial.suggest_categorical(path, stored)
        return choices[stored.index(picked)] if picked in stored else from_optuna({path: picked})[path]
    assert isinstance(space, ParamRange)  # a list always has choices
    if space.int is not None:
        lo, hi = space.int
        return trial.suggest_int(path, lo, hi, step=int(space.step or 1), log=space.log)
    assert space.float is not None  # a range is exactly one of choices, int or float (ParamRange checks it)
    flo, fhi = space.float
    return trial.suggest_float(path, flo, fhi, step=space.step, log=space.log)


def point_key(params: dict[str, Any]) -> str:
    """A configuration's values as a comparable string."""
    return json.dumps(params, sort_keys=True, default=str)


def _comparable(spec: Spec) -> dict[str, Any]:
    """The spec's fields that can change a finished run's result. A corpus file counts by its content, not its path,
    so machines that keep the same file in different places run the same study. A step cap (HARNESS_MAX_STEPS) counts:
    a capped smoke run must never stand in for a full one. More seeds and more grid values do not count: they add
    seed runs without changing any that ran."""
    from harness.job.build import step_cap

    flat = flatten(spec_to_dict(spec))
    out = {k: v for k, v in flat.items() if not any(k == f or k.startswith(f + ".") for f in NO_EFFECT_FIELDS + GROWTH_FIELDS)}
    if spec.sweep is not None and spec.sweep.sampler == "grid":  # a sampler's choices are one fixed distribution in Optuna
        for k, v in list(out.items()):
            if k.startswith("sweep.params.") and isinstance(v, list):
                out[k] = "<grid values>"
    if spec.data.corpus and not is_named_corpus(spec.data.corpus):
        out["data.corpus"] = f"text with sha256 {_corpus_digest(spec.data.corpus)}"
    files = {"task.dataset": spec.task.dataset if spec.task.dataset and not spec.task.dataset_is_shipped else None,
             "data.tokenizer.path": spec.data.tokenizer.path}
    for key, path in files.items():
        if path is not None:
            out[key] = f"file with sha256 {_file_digest(path)}"
    cap = step_cap()
    if cap is not None:
        out["HARNESS_MAX_STEPS"] = cap
    return out


def _corpus_digest(corpus: str) -> str:
    """The corpus's content (a file, a folder, a glob, .gz) as the token cache digests it: remembered per file, so a
    large corpus is not read again at every sweep start."""
    from harness.data.cache import content_digest
    from harness.data.corpora import corpus_sources

    try:
        return content_digest(corpus_sources(corpus))[:16]
    except Exception as exc:  # the data checks say what is wrong with it; here it only must not match a good corpus
        return f"unreadable ({type(exc).__name__})"


def _file_digest(path: str) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    except OSError:
        return f"unreadable ({path})"
    return digest.hexdigest()[:16]


def spec_digest(spec: Spec) -> str:
    """A digest of everything in the spec that can change a trial's result."""
    return hashlib.sha256(json.dumps(_comparable(spec), sort_keys=True, default=str).encode()).hexdigest()[:16]


def default_study_name(spec: Spec) -> str:
    """The study a spec runs in unless ``--study`` says otherwise: its name, so that repeating a sweep (``--repeats``)
    or growing its grid extends the study it ran in. Under HARNESS_MAX_STEPS the name says the cap
    (``lr_sweep-max20steps``): a smoke run gets its own study."""
    from harness.job.build import step_cap

    cap = step_cap()
    return spec.name if cap is None else f"{spec.name}-max{cap}steps"


def open_study(spec: Spec, *, name: str, url: str, fresh: bool, uri: str, total: int) -> OpenStudy:
    """Create or join the study ``name`` in ``url`` (see the module doc); ``fresh`` deletes an existing one first."""
    import optuna

    from harness.sweep.pruning import make_pruner
    from harness.sweep.sampling import make_sampler

    sw = spec.sweep
    assert sw is not None
    if not is_journal(url):
        check_store(url)  # an unreachable database or a missing driver: exit 2 with a message, before anything
    with study_lock(url, name):
        storage = make_storage(url)
        if fresh:
            _retire(name, storage, uri)
        study = optuna.create_study(study_name=name, storage=storage, direction=sw.objective.direction, load_if_exists=True,
                                    sampler=make_sampler(spec), pruner=make_pruner(spec, configurations=total))
        if study.direction.name.lower() != sw.objective.direction:
            raise UsageError(f"study '{name}' in {redact_url(url)} was created to {study.direction.name.lower()} its objective; "
                             "start over with --fresh, or pick another study name with --study NAME")
        _check_same_spec(spec, study, name)
        parent = _parent_run(spec, study, uri, name, url)
    return OpenStudy(study=study, storage=storage, name=name, url=url, parent_run_id=parent, total=total,
                     study_id=study.user_attrs[STUDY_ID])


def _retire(name: str, storage: Any, uri: str) -> None:
    """--fresh: delete the study; its parent run is tagged superseded (and ends KILLED if still open), so its runs,
    which keep their old study id, are no longer the study's."""
    import optuna

    try:
        old = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return
    parent = old.user_attrs.get("mlflow_parent_run_id")
    optuna.delete_study(study_name=name, storage=storage)
    if parent:
        client = client_for(uri)
        try:
            client.set_tag(parent, "harness.superseded", "true")
            if client.get_run(parent).info.status == "RUNNING":
                client.set_tag(parent, "stop_reason", "superseded")
                client.set_terminated(parent, status="KILLED")
        except Exception:
            pass  # the old parent is gone or unreachable: nothing to close


def _check_same_spec(spec: Spec, study: Any, name: str) -> None:
    """A study belongs to one resolved base spec; running a different one against it would mix two experiments."""
    digest = spec_digest(spec)
    attrs = study.user_attrs
    stored = attrs.get("harness.spec_digest")
    if stored is None:
        if study.get_trials(deepcopy=False):
            raise UsageError(f"study '{name}' has trials but no harness spec: it was not made by harness; pick another name with --study")
        study.set_user_attr("harness.spec_digest", digest)
        study.set_user_attr("harness.spec", json.dumps(_comparable(spec), default=str))
        study.set_user_attr(LAYOUT, _LAYOUT)
        study.set_user_attr(STUDY_ID, uuid.uuid4().hex[:12])
        return
    if attrs.get(LAYOUT) != _LAYOUT:
        raise UsageError(f"study '{name}' was made by an earlier version of harness, which kept its trials differently; start it "
                         "over with --fresh (its MLflow runs stay), or keep it and use another study name with --study NEW_NAME")
    if stored == digest:
        return
    before = json.loads(attrs.get("harness.spec", "{}"))
    now = _comparable(spec)
    changed = [k for k in sorted(set(before) | set(now)) if before.get(k, "<absent>") != now.get(k, "<absent>")]
    lines = [f"  {k}: {before.get(k, '<absent>')!r} -> {now.get(k, '<absent>')!r}" for k in changed[:12]]
    if len(changed) > 12:
        lines.append(f"  ... and {len(changed) - 12} more")
    raise UsageError(
        f"study '{name}' was made from a different spec; its finished trials would not answer this one. What changed:\n"
        + "\n".join(lines)
        + f"\nStart the study over with --fresh, or keep both with --study NEW_NAME. (More seeds or more grid values extend a "
        f"study; changes to {', '.join(NO_EFFECT_FIELDS)} do not count: they cannot change a trial's result.)"
    )


def _parent_run(spec: Spec, study: Any, uri: str, name: str, url: str) -> str:
    """The sweep's parent MLflow run: created once per study, shared by every invocation (RUNNING while any runs)."""
    from mlflow.exceptions import MlflowException

    client = client_for(uri)
    existing = study.user_attrs.get("mlflow_parent_run_id")
    if existing:
        try:
            run = client.get_run(existing)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise  # a store that fails now must not get a second parent run
            run = None
        if run is not None and run.info.lifecycle_stage != "deleted":
            if run.info.status != "RUNNING":
                client.update_run(existing, status="RUNNING")
            return existing
    tags = {**spec.tracking.tags, "harness.role": "sweep", "harness.study": name, "harness.spec_name": spec.name,
            "harness.storage": redact_url(url), "harness.spec_digest": spec_digest(spec), STUDY_ID: study.user_attrs[STUDY_ID]}
    tracker = MlflowTracker.start(client, experiment=spec.experiment, run_name=f"{spec.name}-sweep", tags=tags)
    study.set_user_attr("mlflow_parent_run_id", tracker.run_id)  # at once: a later failure leaves no orphan parent
    tracker.log_params({f"sweep.{k}": redact_url(v) if k == "storage" and v else v for k, v in flatten(spec_to_dict(spec)["sweep"]).items()})
    tracker.log_text(redact_text(spec_to_yaml(spec)), "spec.yaml")
    return tracker.run_id
