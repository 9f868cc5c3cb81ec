"""From a data spec to token id arrays: load the corpus, tokenize, split train/val, count the examples (no torch).

One rule says how far apart training windows start (:func:`window_stride`); the batches use the same rule.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from harness.data.cache import TokenFile, token_file
from harness.data.corpora import corpus_key
from harness.data.tokenizers import Tokenizer, tokenizer_from_dict
from harness.spec.schema import DataSpec

__all__ = ["PAD_TARGET", "Prepared", "count_windows", "prepare", "split_point", "spread", "window_stride"]


PAD_TARGET = -100  # the target of a padding position: cross-entropy's ignore_index, so it never counts


@dataclass(frozen=True)
class Prepared:
    """Tokenized, split data plus the counts that validation and tracking need."""

    tokenizer: Tokenizer
    n_chars: int
    train: np.ndarray  # 1-D ids, a view of the token file (windows/random/pack), or DocumentRows (documents, pad)
    val: np.ndarray
    n_train_tokens: int
    n_val_tokens: int
    train_examples: int  # windows (or documents) available to the sampler per epoch
    val_examples: int
    truncated_documents: int = 0
    key: str = ""  # the token file's cache key (harness.data.cache): the same tokens, the same key
    path: str = ""  # the token file


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


class DocumentRows:
    """Documents ``tokens[starts[i] : starts[i + 1] + 1]`` (each between its two separators) as rows of seq_len+1
    ids padded with -1 (the batches mask it), made only for the rows asked for: a 2-D array to the batches
    (``shape``, ``ndim``, ``rows[idx]``, ``tolist()``) that holds nothing the size of the corpus but where each
    document starts (8 bytes a document)."""

    def __init__(self, tokens: np.ndarray, starts: np.ndarray, seq_len: int):
        self.tokens, self.starts, self.width = tokens, np.asarray(starts, dtype=np.int64), seq_len + 1
        n = max(len(self.starts) - 1, 0)
        self.shape = (n, self.width)
        self.ndim = 2
        self.dtype = np.dtype(np.int64)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def truncated(self) -> int:
        """Documents longer than a row (their tail is cut)."""
        return int((np.diff(self.starts) + 1 > self.width).sum()) if self.shape[0] else 0

    def __getitem__(self, idx: Any) -> np.ndarray:
        if isinstance(idx, tuple):  # rows[i, :k]
            return self[idx[0]][idx[1:]]
        i = np.arange(self.shape[0])[idx]
        a = self.starts[i]
        end = self.starts[np.asarray(i) + 1] + 1
        pos = a[..., None] + np.arange(self.width)
        inside = pos < end[..., None]
        if not len(self.tokens):
            return np.full(pos.shape, -1, dtype=np.int64)
        ids = np.asarray(self.tokens[np.minimum(pos, len(self.tokens) - 1)], dtype=np.int64)
        return np.where(inside, ids, -1)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[:]
        return out.astype(dtype) if dtype is not None else out

    def tolist(self) -> list[list[int]]:
        return self[:].tolist()


def prepare(data: DataSpec, tokenizer: Tokenizer | None = None) -> Prepared:
    """Load, tokenize and split the corpus that ``data`` names: its token file, mapped from the token cache (built
    there first when missing, see :mod:`harness.data.cache`). Also cached per process (and per version of a user
    file).

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
    given = tokenizer_from_dict(json.loads(tokenizer_json)) if tokenizer_json is not None else None
    spec_tok = data.tokenizer
    tf = token_file(data.corpus, max_chars=data.max_chars, documents=data.delimiter if data.sampling == "documents" else None,
                    kind=spec_tok.kind, encoding=spec_tok.encoding, path=spec_tok.path, compact=spec_tok.compact, given=given)
    tok = tf.tokenizer
    if data.sampling == "documents":
        return _documents(data, tf)
    ids = tf.tokens
    cut = split_point(len(ids), data.val_fraction)
    train, val = ids[:cut], ids[cut:]  # views of the memory map: the split copies nothing
    stride = window_stride(data)
    return Prepared(tok, tf.n_chars, train, val, len(train), len(val),
                    count_windows(len(train), data.seq_len, stride), count_windows(len(val), data.seq_len, stride),
                    key=tf.key, path=str(tf.path))


def _documents(data: DataSpec, tf: TokenFile) -> Prepared:
    """One document per piece of text between delimiters (a non-blank line by default), wrapped in a separator on
    both sides (BOS; tiktoken's <|endoftext|>) so the model learns where documents start and end. The token file holds
    them as one stream, S d1 S d2 S ..., and where each S is."""
    tok = tf.tokenizer
    if tok.bos_id is None:  # the token file's tokenizer always has one for documents
        raise ValueError("documents sampling needs a tokenizer with a separator id")
    starts = tf.doc_starts if tf.doc_starts is not None else np.zeros(0, dtype=np.int64)
    n_docs = max(len(starts) - 1, 0)
    cut = split_point(n_docs, data.val_fraction)
    ids = tf.tokens
    common: dict[str, Any] = {"key": tf.key, "path": str(tf.path)}
    if data.packing == "pack":
        # BOS d1 BOS d2 BOS ...: adjacent documents share their separating BOS; each split is a view
        def stream(a: int, b: int) -> np.ndarray:
            return ids[int(starts[a]) : int(starts[b]) + 1] if b > a else ids[:0]

        train, val = stream(0, cut), stream(cut, n_docs)
        stride = window_stride(data)
        return Prepared(tok, tf.n_chars, train, val, len(train), len(val),
                        count_windows(len(train), data.seq_len, stride), count_windows(len(val), data.seq_len, stride), **common)
    train_rows = DocumentRows(ids, starts[: cut + 1], data.seq_len)
    val_rows = DocumentRows(ids, starts[cut:], data.seq_len)
    trunc_tr, trunc_va = train_rows.truncated, val_rows.truncated
    n_tr = int(starts[cut] - starts[0]) + cut if cut else 0
    n_va = int(starts[n_docs] - starts[cut]) + (n_docs - cut) if n_docs > cut else 0
    return Prepared(tok, tf.n_chars, train_rows, val_rows, n_tr, n_va, cut, n_docs - cut,  # type: ignore[arg-type]
                    trunc_tr + trunc_va, **common)
