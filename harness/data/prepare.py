"""From a data spec to token id arrays: load the corpus, tokenize, split train/val, count the examples (no torch).

One rule says how far apart training windows start (:func:`window_stride`); the batches use the same rule.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from harness.data.corpora import corpus_key, load_text
from harness.data.tokenizers import Tokenizer, make_tokenizer, tokenizer_from_dict
from harness.spec.schema import DataSpec

__all__ = ["PAD_TARGET", "Prepared", "count_windows", "prepare", "split_point", "spread", "window_stride"]


PAD_TARGET = -100  # the target of a padding position: cross-entropy's ignore_index, so it never counts


@dataclass(frozen=True)
class Prepared:
    """Tokenized, split data plus the counts that validation and tracking need."""

    tokenizer: Tokenizer
    n_chars: int
    train: np.ndarray  # 1-D ids (windows/random/pack) or 2-D padded rows (documents, pad)
    val: np.ndarray
    n_train_tokens: int
    n_val_tokens: int
    train_examples: int  # windows (or documents) available to the sampler per epoch
    val_examples: int
    truncated_documents: int = 0


def window_stride(data: DataSpec) -> int:
    """Distance between the starts of consecutive examples in a 1-D token stream."""
    if data.sampling == "documents":
        return data.seq_len  # a packed stream is cut into non-overlapping chunks
    return data.stride if data.sampling == "windows" else 1  # random draws may start anywhere


def count_windows(n_tokens: int, seq_len: int, stride: int) -> int:
    """Sliding windows of seq_len+1 tokens (input plus shifted target), ``stride`` apart, that fit in n_tokens."""
    if n_tokens < seq_len + 1:
        return 0
    return (n_tokens - seq_len - 1) // stride + 1


def spread(n: int, k: int) -> np.ndarray:
    """``min(k, n)`` indices spread evenly over ``0..n-1`` (both ends), each ``round(i * (n - 1) / (k - 1))``, in
    int64 arithmetic. A float index (torch.linspace runs in float32, a 24-bit mantissa) can round ``n - 1`` up to
    ``n`` once ``n`` passes 2**24 and index past the end; integers are exact for any corpus (``k * n`` < 2**63)."""
    if k <= 0 or n <= 0:
        return np.zeros(0, dtype=np.int64)
    k = min(k, n)
    if k == 1:
        return np.zeros(1, dtype=np.int64)
    q, r = np.divmod(np.arange(k, dtype=np.int64) * (n - 1), k - 1)
    # round half to even, as torch.round did on the float index, so the evaluation windows of a small corpus stay
    # the ones every earlier run evaluated on
    return q + ((2 * r > k - 1) | ((2 * r == k - 1) & (q % 2 == 1)))


def split_point(n: int, val_fraction: float) -> int:
    """The first index of the validation tail of ``n`` items: every split (corpus, documents, dataset rows) uses it."""
    return n - int(round(n * val_fraction))


def _pad_rows(docs: list[np.ndarray], seq_len: int) -> tuple[np.ndarray, int]:
    """Documents as rows of seq_len+1 ids, padded with -1 (the batches mask it). Returns rows and truncated count."""
    rows = np.full((len(docs), seq_len + 1), -1, dtype=np.int64)
    truncated = 0
    for i, d in enumerate(docs):
        if len(d) > seq_len + 1:
            truncated += 1
        d = d[: seq_len + 1]
        rows[i, : len(d)] = d
    return rows, truncated


def prepare(data: DataSpec, tokenizer: Tokenizer | None = None) -> Prepared:
    """Load, tokenize and split the corpus that ``data`` names. Cached per process (and per version of a user file).

    ``tokenizer`` (a source run's, when finetuning) encodes the corpus instead of one built from it; characters it
    does not know are left out."""
    saved = json.dumps(tokenizer.to_dict(), sort_keys=True) if tokenizer is not None else None
    return _prepare_cached(data.model_dump_json(), corpus_key(data.corpus or ""), saved)


@lru_cache(maxsize=8)
def _prepare_cached(data_json: str, key: tuple[Any, ...], tokenizer_json: str | None) -> Prepared:
    del key  # part of the cache key only: a changed user file is read again
    data = DataSpec.model_validate_json(data_json)
    if data.corpus is None:
        raise ValueError("prepare() reads a corpus; a classify or instruct task's examples come from harness.data.tasks")
    text = load_text(data.corpus, data.max_chars)
    if tokenizer_json is None:
        tok = make_tokenizer(data, text)
    else:
        tok = tokenizer_from_dict(json.loads(tokenizer_json))
        text = tok.known(text)
    if data.sampling == "documents":
        return _documents(data, text, tok)
    ids = tok.encode(text)
    cut = split_point(len(ids), data.val_fraction)
    train, val = ids[:cut], ids[cut:]
    stride = window_stride(data)
    return Prepared(tok, len(text), train, val, len(train), len(val),
                    count_windows(len(train), data.seq_len, stride), count_windows(len(val), data.seq_len, stride))


def _documents(data: DataSpec, text: str, tok: Tokenizer) -> Prepared:
    """One document per non-empty line, wrapped in BOS on both sides so the model learns where documents start and end."""
    if tok.bos_id is None:  # the schema only allows documents sampling with the char tokenizer, which then has one
        raise ValueError("documents sampling needs a tokenizer with a BOS id")
    lines = [ln for ln in text.split("\n") if ln.strip()]
    cut = split_point(len(lines), data.val_fraction)
    bos = np.array([tok.bos_id], dtype=np.int64)
    docs = [np.concatenate([bos, tok.encode(ln), bos]) for ln in lines]
    train_docs, val_docs = docs[:cut], docs[cut:]
    if data.packing == "pack":
        # BOS d1 BOS d2 BOS ...: adjacent documents share their separating BOS
        def stream(ds: list[np.ndarray]) -> np.ndarray:
            return np.concatenate([bos] + [d[1:] for d in ds]) if ds else np.zeros(0, dtype=np.int64)

        train, val = stream(train_docs), stream(val_docs)
        stride = window_stride(data)
        return Prepared(tok, len(text), train, val, len(train), len(val),
                        count_windows(len(train), data.seq_len, stride), count_windows(len(val), data.seq_len, stride))
    train_rows, trunc_tr = _pad_rows(train_docs, data.seq_len)
    val_rows, trunc_va = _pad_rows(val_docs, data.seq_len)
    n_tr, n_va = sum(len(d) for d in train_docs), sum(len(d) for d in val_docs)
    return Prepared(tok, len(text), train_rows, val_rows, n_tr, n_va, len(train_docs), len(val_docs), trunc_tr + trunc_va)
