"""Shared fixtures for the harness test suite.

Fixtures (names are stable; other test modules rely on them):

* ``_isolate`` (autouse): every test runs with ``tmp_path`` as the working directory and MLflow pointed at a
  SQLite store inside it, so nothing is written into the repository. It also pins torch to one intra-op thread
  before and after each test: on a small shared CPU, two threads make every tiny op ~100x slower, and a test that
  runs a spec with ``train.threads`` must not leak its setting into the next test.
* ``tiny_text``: the ~2.5k-character English text that ``tiny_corpus`` writes (a str).
* ``tiny_corpus``: path (``pathlib.Path``) of a small UTF-8 text file in ``tmp_path``.
* ``tiny_spec_dict``: a plain dict of a valid, tiny run spec (char tokenizer, windows sampling) that trains in well
  under a second; tests may mutate it freely (it is built fresh for every test).
* ``write_spec``: the helper ``write_spec(tmp_path, spec_dict, name="spec.yaml") -> Path`` that dumps a dict as
  YAML. Also importable as ``from conftest import write_spec`` for non-fixture use.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterator

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


def write_spec(tmp_path: Path, spec: Any, name: str = "spec.yaml") -> Path:
    """Dump ``spec`` (any YAML-able object, usually a dict) to ``tmp_path / name`` and return the path."""
    path = Path(tmp_path) / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def _isolate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run every test inside ``tmp_path`` with MLflow tracking into ``tmp_path/mlruns/mlflow.db``."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mlruns").mkdir(exist_ok=True)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    monkeypatch.delenv("HARNESS_KILL_AT", raising=False)
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
    return copy.deepcopy(
        {
            "name": "tiny",
            "seed": 0,
            "data": {
                "corpus": str(tiny_corpus),
                "tokenizer": "char",
                "sampling": "windows",
                "seq_len": 16,
                "val_fraction": 0.2,
            },
            "model": {"d_model": 16, "n_heads": 2, "n_layers": 1, "d_ff": 32},
            "train": {
                "max_steps": 6,
                "batch_size": 4,
                "optimizer": {"name": "adamw", "lr": 1.0e-3},
                "eval": {"every_steps": 3, "batches": 2},
                "device": "cpu",
            },
            "tracking": {"sample_tokens": 0},
        }
    )


@pytest.fixture(name="write_spec")
def write_spec_fixture():
    """The :func:`write_spec` helper as a fixture: ``write_spec(tmp_path, spec_dict, name="spec.yaml") -> Path``."""
    return write_spec
