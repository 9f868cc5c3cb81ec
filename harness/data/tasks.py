"""Finetuning examples as token arrays: an input row and a target row per example, -100 where nothing is graded.

* classify: the text's tokens; the target is -100 everywhere but at the text's last token, which holds the label's id.
  The model's (B, T, n_classes) output is then graded exactly where the head reads the last non-padding token's
  hidden state, by the same masked cross-entropy as language modelling.
* instruct: the prompt (the template filled in) and the response, shifted by one as in language modelling; every
  prompt target and every padding target is -100, so only the response's tokens and the end-of-text token that closes
  it (:func:`end_of_text_id`) are graded.

Padding goes on the right and is never attended to by a real token (attention is causal), so its id does not matter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from harness.data.corpora import CorpusError
from harness.data.datasets import ClassifyRow, InstructRow, load_classify, load_instruct
from harness.data.prepare import PAD_TARGET, split_point
from harness.data.tokenizers import CharTokenizer, Tokenizer
from harness.spec.schema import DataSpec, TaskSpec

__all__ = ["TaskData", "end_of_text_id", "fill_template", "prepare_task", "task_tokenizer"]


@dataclass(frozen=True)
class TaskData:
    """Encoded examples of a classify or instruct task, split into train and val (the dataset's tail)."""

    tokenizer: Tokenizer
    train_x: np.ndarray  # (N, T) token ids, right-padded
    train_y: np.ndarray  # (N, T) targets, -100 where not graded
    val_x: np.ndarray
    val_y: np.ndarray
    labels: list[str] = field(default_factory=list)  # classify: label id -> label
    facts: dict[str, Any] = field(default_factory=dict)  # rows, examples kept, truncated, dropped characters/tokens, graded share

    @property
    def train_examples(self) -> int:
        return len(self.train_x)

    @property
    def val_examples(self) -> int:
        return len(self.val_x)


def end_of_text_id(tokenizer: Tokenizer) -> int | None:
    """The token that closes a response: the document boundary (BOS) when the tokenizer has one, else a newline."""
    if tokenizer.bos_id is not None:
        return tokenizer.bos_id
    ids = tokenizer.encode(tokenizer.known("\n"))
    return int(ids[0]) if len(ids) == 1 else None


def fill_template(template: str, instruction: str, input_text: str = "") -> str:
    """The prompt for one instruction: ``{input_line}`` is the input and a newline, or nothing when there is none."""
    return template.replace("{instruction}", instruction).replace("{input_line}", f"{input_text}\n" if input_text else "")


def _rows(task: TaskSpec) -> list[ClassifyRow] | list[InstructRow]:
    assert task.dataset is not None  # the schema requires it for classify and instruct
    if task.kind == "classify":
        return load_classify(task.dataset, text_field=task.text_field, label_field=task.label_field)
    return load_instruct(task.dataset)


def task_tokenizer(task: TaskSpec) -> CharTokenizer:
    """A char tokenizer over everything the task's examples and template contain (for a model trained from scratch)."""
    rows = _rows(task)
    if task.kind == "classify":
        text = "".join(r.text for r in rows)  # type: ignore[union-attr]
    else:
        text = task.template + "".join(r.instruction + r.input + r.output + "\n" for r in rows)  # type: ignore[union-attr]
    return CharTokenizer.from_text(text, bos=True)


def prepare_task(task: TaskSpec, data: DataSpec, tokenizer: Tokenizer, *, labels: list[str] | None = None) -> TaskData:
    """Encode and split the task's dataset with ``tokenizer`` (the source run's, when finetuning).

    ``labels`` fixes the label ids (a resumed run keeps its own map); by default they are the sorted distinct labels."""
    rows = _rows(task)
    if len(rows) < 2:
        raise CorpusError(f"dataset {task.dataset} has {len(rows)} rows; a task needs at least 2", path="task.dataset")
    encoder = _Encoder(tokenizer)
    if task.kind == "classify":
        xs, ys, label_list = _classify(rows, data.seq_len, encoder, labels)  # type: ignore[arg-type]
    else:
        label_list = []
        xs, ys = _instruct(rows, data.seq_len, encoder, task.template)  # type: ignore[arg-type]
    if len(xs) < 2:
        raise CorpusError(f"dataset {task.dataset}: {len(xs)} of its {len(rows)} examples fit in data.seq_len {data.seq_len} with "
                          "something to grade; raise seq_len", path="data.seq_len")
    cut = split_point(len(xs), data.val_fraction)
    graded = int((ys != PAD_TARGET).sum())
    facts = {"rows": len(rows), "examples": len(xs), "truncated_examples": encoder.truncated, "dropped_characters": encoder.dropped,
             "supervised_fraction": round(graded / max(encoder.tokens, 1), 6)}
    return TaskData(tokenizer, xs[:cut], ys[:cut], xs[cut:], ys[cut:], label_list, facts)


class _Encoder:
    """Token ids for text, counting what had to be cut or left out."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.truncated = 0
        self.dropped = 0
        self.tokens = 0

    def encode(self, text: str) -> np.ndarray:
        # A source model's vocabulary is fixed: what it never saw cannot be fed to it. Leave it out, and count it.
        ids, dropped = self.tokenizer.encode_known(text)
        self.dropped += dropped
        return ids

    def fit(self, ids: np.ndarray, seq_len: int) -> np.ndarray:
        """At most ``seq_len`` ids (the start is kept); counts the tokens that reach the model."""
        if len(ids) > seq_len:
            self.truncated += 1
            ids = ids[:seq_len]
        self.tokens += len(ids)
        return ids


def _classify(rows: list[ClassifyRow], seq_len: int, encoder: _Encoder, labels: list[str] | None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    label_list = list(labels) if labels is not None else sorted({r.label for r in rows})
    if len(label_list) < 2:
        raise CorpusError(f"classify needs at least 2 labels; the dataset has {label_list}", path="task.label_field")
    index = {label: i for i, label in enumerate(label_list)}
    unknown = sorted({r.label for r in rows} - set(index))
    if unknown:
        raise CorpusError(f"labels {unknown[:5]} are not in the run's label map {label_list}", path="task.label_field")
    xs = np.zeros((len(rows), seq_len), dtype=np.int64)
    ys = np.full((len(rows), seq_len), PAD_TARGET, dtype=np.int64)
    keep = np.ones(len(rows), dtype=bool)
    bos = encoder.tokenizer.bos_id
    for i, row in enumerate(rows):
        ids = encoder.encode(row.text)
        if len(ids) and bos is not None:  # as in pretraining on documents: a text starts after a boundary token
            ids = np.concatenate([[bos], ids])
        ids = encoder.fit(ids, seq_len)
        if len(ids) == 0:
            keep[i] = False  # nothing the model can read is left of this text
            continue
        xs[i, : len(ids)] = ids
        ys[i, len(ids) - 1] = index[row.label]  # graded where the head reads: the last real token
    return xs[keep], ys[keep], label_list


def _instruct(rows: list[InstructRow], seq_len: int, encoder: _Encoder, template: str) -> tuple[np.ndarray, np.ndarray]:
    eos = end_of_text_id(encoder.tokenizer)
    xs = np.zeros((len(rows), seq_len), dtype=np.int64)
    ys = np.full((len(rows), seq_len), PAD_TARGET, dtype=np.int64)
    keep = np.ones(len(rows), dtype=bool)
    for i, row in enumerate(rows):
        prompt = encoder.encode(fill_template(template, row.instruction, row.input))
        response = encoder.encode(row.output)
        if eos is not None:
            response = np.concatenate([response, [eos]])
        ids = encoder.fit(np.concatenate([prompt, response]), seq_len + 1)  # inputs and shifted targets
        encoder.tokens -= 1  # the last id is only a target
        x, y = ids[:-1], ids[1:].copy()
        y[: max(len(prompt) - 1, 0)] = PAD_TARGET  # the prompt is read, not graded
        if (y == PAD_TARGET).all():
            keep[i] = False  # the prompt fills seq_len: nothing of the response is left to grade
            continue
        xs[i, : len(x)] = x
        ys[i, : len(y)] = y
    return xs[keep], ys[keep]
