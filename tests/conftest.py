"""Shared fixtures and helpers for the harness test suite.

Fixtures (names are stable; other test modules rely on them):

* ``_isolate`` (autouse): every test runs with ``tmp_path`` as the working directory and MLflow pointed at a
  SQLite store inside it, so nothing is written into the repository; ``HARNESS_CACHE_DIR`` (the token cache) is one
  folder of the session's temporary directory. Every ``HARNESS_*`` variable of the calling
  environment is removed (a developer's ``HARNESS_STUDY_STORAGE`` or ``HARNESS_KILL_AT`` must not reach a test), except
  the knobs of tests/servers.py. It also pins torch to one intra-op thread before and after each test: on a small
  shared CPU, two threads make every tiny op ~100x slower, and a test that runs a spec with ``train.threads`` must not
  leak its setting into the next test.
* ``tiny_text``: the ~2.5k-character English text that ``tiny_corpus`` writes (a str).
* ``tiny_corpus``: path (``pathlib.Path``) of a small UTF-8 text file in ``tmp_path``.
* ``tiny_spec_dict``: ``make_spec(tiny_corpus)``, a plain dict of a valid, tiny run spec (char tokenizer, windows
  sampling) that trains in well under a second; tests may mutate it freely (it is built fresh for every test).
* ``write_spec``: the helper ``write_spec(tmp_path, spec_dict, name="spec.yaml") -> Path`` that dumps a dict as
  YAML.
* ``tiny_sweep`` (session): a 3-trial grid sweep trained once per test session in its own folder (see
  :func:`tiny_sweep`); ``in_sweep``: the same, with the test working inside that folder and tracking into its store.
* ``sigint_guard``: for tests that send a real SIGINT to this process for harness's handler to take: while the test
  runs, a SIGINT that reaches no harness handler is recorded instead of aborting the whole session, and fails the test.

Helpers, importable with ``from conftest import ...`` (pytest puts tests/ on sys.path):

* ``make_spec(corpus, *, name=..., seed=..., steps=..., ...)``: the one spec factory (a fresh dict every call).
* ``write_spec(folder, spec, name="spec.yaml")``: the one YAML writer.
* ``tree(folder)``: every path under ``folder`` (relative), to check that a command created nothing.
* ``child_env(**extra)``: the environment for a ``python -m harness`` child, with ``PYTHONWARNINGS=CHILD_WARNINGS``
  (the filters of pyproject's filterwarnings: warnings are errors in the children too).
* The one free-port helper is ``servers.free_port``.
"""

from __future__ import annotations

import copy
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import yaml

# The real PostgreSQL and MLflow servers (session fixtures pg_server, mlflow_server): one of each per test session.
pytest_plugins = ["servers"]

TINY_TEXT = """\
The lighthouse keeper woke before dawn, as he always did, and climbed the spiral stairs two at a time.
Outside, the sea was grey and restless; gulls wheeled above the rocks, crying into the wind.
He trimmed the wick, polished the great lens, and wrote the date in his logbook: the fourth of March.
Nothing unusual had happened in weeks, yet he wrote a full page anyway, because habit is a kind of anchor.

In the village below, the baker pulled loaves from the oven while her daughter counted coins.
"Seventeen, eighteen, nineteen," the girl said. "Is that enough for the new kettle?"
"Not quite," her mother answered, smiling. "But by Friday, perhaps, if the fishermen are hungry."
The shop smelled of rye, honey and warm butter; a cat slept on the sill in a square of pale light.

Far inland, a student sat at a crowded desk, surrounded by books about rivers and the shapes of valleys.
She had learned that water always finds the lowest path, and that patience can carve stone.
Her notes were tidy at first, then hurried, then full of arrows and questions marked in red ink.
Why do some rivers braid while others meander? What makes a delta grow, or a canyon deepen?

Meanwhile, a train rattled north through fields of barley and quiet towns with white churches.
A conductor punched tickets, whistling a tune nobody recognised; an old man read the evening paper.
Two children pressed their noses to the window, counting cows, horses, tractors and one lonely heron.
When the train crossed the long bridge, everyone looked up for a moment, as if a bell had rung.

By evening the wind had dropped. The keeper lit the lamp, and its beam swept across the dark water,
steady and patient, turning once every twelve seconds. Somewhere a ship adjusted its course.
The baker locked her door; the student closed her books; the train reached the last station.
And the light kept turning, all night, over the calm and sleeping sea, until the morning came again.
In the morning the keeper made tea, fed the hens, and mended a net that the storm had torn.
He thought about the baker's kettle, the student's rivers, and the heron seen from the train,
though of course he knew none of them; still, the world felt wide, busy and oddly connected.
Quick brown foxes jump over lazy dogs: 0123456789, (parentheses), [brackets] & symbols; yes!
"""


# The same filters as pyproject's filterwarnings, for `python -m harness` children. In PYTHONWARNINGS the message and
# module fields are literal (no regex) and the module must match exactly.
CHILD_WARNINGS = ("error,ignore:The ``noload`` loader strategy is deprecated:DeprecationWarning:"
                  "mlflow.store.tracking.sqlalchemy_store")

# Read by tests/servers.py only (how to find and run PostgreSQL), never by harness: kept.
_SERVER_KNOBS = {"HARNESS_PG_BIN", "HARNESS_PG_USER", "HARNESS_SERVERS_TMP", "HARNESS_REQUIRE_SERVERS"}


def _merge(into: dict[str, Any], over: dict[str, Any]) -> None:
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)


def make_spec(corpus: Path | str, *, name: str = "tiny", seed: int = 0, steps: int = 6, eval_every: int = 3,
              checkpoint_every: int | None = None, experiment: str | None = None, sweep: dict[str, Any] | None = None,
              **sections: Any) -> dict[str, Any]:
    """A valid tiny run spec as a fresh dict: a 1-layer, d_model-16 char GPT on ``corpus``, ``steps`` steps of batch 4
    on the CPU, evaluated every ``eval_every`` steps on 2 batches, no text sample at the end.

    ``sections`` (``data=``, ``model=``, ``train=``, ``tracking=``) are merged into the sections key by key (nested
    mappings too), so ``train={"optimizer": {"lr": 3e-3}}`` changes the learning rate and keeps the optimizer's name;
    ``sweep`` adds a sweep section."""
    spec: dict[str, Any] = {
        "name": name,
        "seed": seed,
        "data": {"corpus": str(corpus), "tokenizer": "char", "sampling": "windows", "seq_len": 16, "val_fraction": 0.2},
        "model": {"d_model": 16, "n_heads": 2, "n_layers": 1, "d_ff": 32},
        "train": {
            "max_steps": steps,
            "batch_size": 4,
            "optimizer": {"name": "adamw", "lr": 1.0e-3},
            "eval": {"every_steps": eval_every, "batches": 2},
            "device": "cpu",
        },
        "tracking": {"sample_tokens": 0},
    }
    if checkpoint_every is not None:
        spec["train"]["checkpoint"] = {"every_steps": checkpoint_every}
    if experiment is not None:
        spec["tracking"]["experiment"] = experiment
    unknown = set(sections) - {"data", "model", "train", "tracking"}
    if unknown:
        raise TypeError(f"make_spec: unknown sections {sorted(unknown)}")
    _merge(spec, sections)
    if sweep is not None:
        spec["sweep"] = copy.deepcopy(sweep)
    return spec


def trial_params(study: Any, trial: Any) -> dict[str, Any]:
    """The swept values of a sweep's trial: its configuration's, from the study's registry (a grid's values are not
    Optuna params, see harness.sweep.schedule)."""
    import json

    cid = trial.user_attrs.get("harness.config")
    return {} if cid is None else json.loads(study.user_attrs[f"harness.configuration.{cid}"])["params"]


def write_spec(tmp_path: Path, spec: Any, name: str = "spec.yaml") -> Path:
    """Dump ``spec`` (any YAML-able object, usually a dict) to ``tmp_path / name`` and return the path."""
    path = Path(tmp_path) / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def tree(folder: Path) -> set[str]:
    """Every file and folder under ``folder``, as paths relative to it."""
    return {str(p.relative_to(folder)) for p in Path(folder).rglob("*")}


def child_env(*, python_warnings: str | None = CHILD_WARNINGS, **extra: str) -> dict[str, str]:
    """The environment for a child process: this one without HARNESS_* knobs but the token cache's (``extra`` sets those it needs), one
    torch thread, unbuffered output, and (unless ``python_warnings`` is None: a third-party server) warnings as errors
    like in this process."""
    # HARNESS_CACHE_DIR stays: a child's token files go to the session's cache (see _isolate), never the user's
    env = {k: v for k, v in os.environ.items()
           if (not k.startswith("HARNESS_") or k == "HARNESS_CACHE_DIR") and k not in ("PYTEST_CURRENT_TEST", "PYTHONWARNINGS")}
    env.update({"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    if python_warnings is not None:
        env["PYTHONWARNINGS"] = python_warnings
    env.update(extra)
    return env


def _clear_harness_env(mp: pytest.MonkeyPatch) -> None:
    """Remove the caller's HARNESS_* settings, but the servers' knobs and the session's token cache."""
    for key in list(os.environ):
        if key.startswith("HARNESS_") and key not in _SERVER_KNOBS and key != "HARNESS_CACHE_DIR":
            mp.delenv(key)


@pytest.fixture(scope="session", autouse=True)
def _session_token_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The token cache of the whole session, for module and session fixtures too (they run before ``_isolate``):
    no test writes into the user's own cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HARNESS_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "token-cache"))
        yield


@pytest.fixture(autouse=True)
def _isolate(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run every test inside ``tmp_path`` with MLflow tracking into ``tmp_path/mlruns/mlflow.db``, without the
    caller's HARNESS_* settings, and with one token cache for the whole session (never the user's own)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mlruns").mkdir(exist_ok=True)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    _clear_harness_env(monkeypatch)
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "token-cache"))
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(1)


@pytest.fixture
def tiny_text() -> str:
    """The text that ``tiny_corpus`` writes (about 2.5k characters of varied English)."""
    return TINY_TEXT


@pytest.fixture
def tiny_corpus(tmp_path: Path) -> Path:
    """Path of a small UTF-8 corpus file (``tmp_path/tiny.txt``) holding ``TINY_TEXT``."""
    path = tmp_path / "tiny.txt"
    path.write_text(TINY_TEXT, encoding="utf-8")
    return path


@pytest.fixture
def tiny_spec_dict(tiny_corpus: Path) -> dict[str, Any]:
    """A valid tiny run spec as a fresh dict (safe to mutate): 1-layer char GPT, 6 steps, eval every 3 steps."""
    return make_spec(tiny_corpus)


@pytest.fixture(name="write_spec")
def write_spec_fixture():
    """The :func:`write_spec` helper as a fixture: ``write_spec(tmp_path, spec_dict, name="spec.yaml") -> Path``."""
    return write_spec


# ----------------------------------------------------------------------------------------------------------- tiny sweep


@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A 3-trial grid sweep (lr) of a 1-layer, d_model-16 char GPT for 20 steps, trained once per session.

    Its own folder (``dir``, with mlruns/ and studies/), whatever the test's working directory. Returns ``dir``,
    ``uri``, ``parent`` (sweep run id), ``trials`` (run ids by trial number), ``storage``, ``corpus``, ``spec`` (the
    sweep spec file) and the sweep's settings ``study``, ``experiment``, ``lrs``, ``steps`` (per trial) and ``every``
    (steps between evaluations)."""
    from harness.spec import spec_from_dict
    from harness.sweep import run_sweep

    study, experiment, lrs, steps, every = "tsweep", "tsweep_exp", [1.0e-2, 1.0e-3, 1.0e-6], 20, 5
    folder = tmp_path_factory.mktemp("tiny_sweep")
    corpus = folder / "tiny.txt"
    corpus.write_text(TINY_TEXT, encoding="utf-8")
    (folder / "mlruns").mkdir()
    uri = f"sqlite:///{folder}/mlruns/mlflow.db"
    raw = make_spec(corpus, name=study, steps=steps, eval_every=every, experiment=experiment, train={"clip_grad_norm": 1.0},
                    sweep={"sampler": "grid", "params": {"train.optimizer.lr": lrs}})
    spec_file = write_spec(folder, raw, name="tsweep.yaml")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)  # studies/ goes here
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        _clear_harness_env(mp)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            out = run_sweep(spec_from_dict(raw, file=spec_file.name))
        finally:
            torch.set_num_threads(threads)
    assert out.counts["complete"] == 3, out.table
    trials = {int(r["trial"]): r["run_id"] for _, r in out.table.iterrows()}
    return SimpleNamespace(dir=folder, uri=uri, parent=out.parent_run_id, trials=trials, storage=out.storage, corpus=corpus,
                           spec=spec_file, study=study, experiment=experiment, lrs=lrs, steps=steps, every=every)


@pytest.fixture
def in_sweep(tiny_sweep: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """``tiny_sweep``, with the test working inside its folder and tracking into its store (after ``_isolate``)."""
    monkeypatch.chdir(tiny_sweep.dir)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tiny_sweep.uri)
    return tiny_sweep


# ----------------------------------------------------------------------------------------------------------- signals


@pytest.fixture
def sigint_guard() -> Iterator[None]:
    """A test here sends this process a real SIGINT that a harness handler must take. Should none be installed (a
    regression), Python's default handler would raise KeyboardInterrupt and pytest would abort the whole session:
    this fallback records the signal instead, and the test fails."""
    caught: list[int] = []

    def fallback(signum: int, frame: Any) -> None:
        caught.append(signum)

    old = signal.signal(signal.SIGINT, fallback)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
    assert not caught, "a SIGINT reached the test process's fallback handler: harness did not take it"
