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

from harness.data.corpora import MAX_CORPUS_BYTES, CorpusError, census_names, load_text

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
    """Lower-cased name -> its frequency (% of people) in one census list."""
    return {name: freq for name, freq in census_names(fname, path="task.dataset")}


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
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".tsv", ".jsonl"):
        raise CorpusError(f"dataset {path}: expected a .csv, .tsv or .jsonl file", path="task.dataset")
    if not path.is_file():
        raise CorpusError(f"dataset file not found: {path}", path="task.dataset")
    if path.stat().st_size > MAX_CORPUS_BYTES:
        raise CorpusError(f"dataset {path} is {path.stat().st_size} bytes; the limit is {MAX_CORPUS_BYTES}", path="task.dataset")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark (spreadsheets write one) is not part of the header
    except UnicodeDecodeError as exc:
        raise CorpusError(f"dataset {path} is not UTF-8 ({exc.reason} at byte {exc.start})", path="task.dataset") from None
    if suffix in (".csv", ".tsv"):
        try:
            return list(csv.DictReader(io.StringIO(text), delimiter="\t" if suffix == ".tsv" else ","))
        except csv.Error as exc:
            raise CorpusError(f"dataset {path} is not readable {suffix[1:].upper()}: {exc}", path="task.dataset") from None
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


def _column(records: list[dict[str, str]], name: str, path: Path, spec_field: str, *, required: bool = True) -> list[str]:
    """The ``name`` field of every record; a record without it (or, when ``required``, with it empty) is an error
    naming the row (the header is row 1 of a CSV)."""
    values = []
    for i, record in enumerate(records):
        value = record.get(name)
        if value is None or (required and not value.strip()):
            which = f"row {i + 2}" if path.suffix.lower() in (".csv", ".tsv") else f"record {i + 1}"
            fields = ", ".join(k for k in record if k is not None)
            raise CorpusError(f"dataset {path}, {which}: no value for '{name}' (fields: {fields})", path=spec_field)
        values.append(value)
    return values


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
    texts = _column(records, text_field, path, "task.text_field", required=False)
    labels = _column(records, label_field, path, "task.label_field")
    return _shuffled([ClassifyRow(t, label.strip()) for t, label in zip(texts, labels) if t.strip()])


def load_instruct(dataset: str) -> list[InstructRow]:
    """The instruction/response rows of a shipped dataset or a JSONL file with instruction, input (optional), output."""
    if dataset == "play_instruct":
        return list(_play_instruct())
    if dataset in SHIPPED:
        raise CorpusError(f"{dataset} is a {SHIPPED[dataset]} dataset, not an instruct one", path="task.dataset")
    path = Path(dataset)
    records = _read_records(path)
    instructions = _column(records, "instruction", path, "task.dataset")
    outputs = _column(records, "output", path, "task.dataset")
    return _shuffled([InstructRow(i, r.get("input", ""), o) for i, r, o in zip(instructions, records, outputs)])
