"""The token cache: each corpus is tokenized once per (content, tokenizer, options) into a flat token file that
every later run, sweep worker and DDP rank on the machine memory-maps (no torch).

A token file is ``<key>.tokens`` in :func:`cache_dir`::

    [4096 bytes]  MAGIC, then the header as JSON, padded with spaces
    [tokens]      n_tokens ids, uint16 when the vocabulary fits, else uint32 (page-aligned: the memory map starts here)
    [doc_starts]  documents only: uint64 position of each document's leading separator, and of the last separator
    [tokenizer]   the tokenizer's saved JSON (a char vocabulary, a compact remap: what a cache hit cannot rebuild)

The header says the format, dtype, token and document counts, the full key with what went into it, and where each
section is and how long; a file whose size, magic or header disagrees is damaged and rebuilt. The train/val
boundary is computed from those counts and the spec's ``val_fraction`` (:func:`harness.data.prepare.split_point`),
so runs that differ only in ``val_fraction`` share one file and the split costs no copy.

A file is written under a temporary name and renamed into place, under a file lock per key: one process builds
while the others wait, then map what it wrote. The content digest of a user's file is remembered by its
(size, mtime, inode, ctime) in ``sources/``, so a later run does not read a large corpus just to find its key.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.data.corpora import CorpusError, Source, corpus_sources, read_pieces
from harness.data.tokenizers import CharTokenizer, TiktokenTokenizer, Tokenizer, tokenizer_from_dict

__all__ = ["CACHE_ENV", "FORMAT", "BuildProgress", "CacheEntry", "TokenFile", "cache_dir", "clear_cache", "list_cache",
           "set_reporter", "token_file"]

CACHE_ENV = "HARNESS_CACHE_DIR"
FORMAT = 1
MAGIC = b"HARNESS-TOKENS\n"
HEADER_BYTES = 4096
SUFFIX = ".tokens"
# Bump when harness's own tokenization changes the ids it writes for the same text and tokenizer.
TOKENIZE_VERSION = 1
CHUNK_BYTES = 1 << 20
BATCH_PIECES = 4  # pieces encoded at once per core: every core busy, a few MB held per core whatever the corpus


# ----------------------------------------------------------------------------------------------------------- reporting


@dataclass(frozen=True)
class BuildProgress:
    """How far a token file's build is: ``done`` of ``total`` bytes read in ``phase`` (``scan``: a char
    vocabulary; ``encode``; ``remap``: a compact vocabulary), ``elapsed_s`` since the build began."""

    corpus: str
    phase: str
    done: int
    total: int
    elapsed_s: float
    final: bool = False


Reporter = Callable[[BuildProgress | str], None]
_reporter: Reporter | None = None


def set_reporter(fn: Reporter | None) -> Reporter | None:
    """Who hears of a build's progress (a :class:`BuildProgress`) and of things said once (a ``str``: a damaged file
    rebuilt, a wait for another process). The CLI shows them; the library prints nothing. Returns the previous."""
    global _reporter
    old, _reporter = _reporter, fn
    return old


def _say(event: BuildProgress | str) -> None:
    if _reporter is not None:
        _reporter(event)


# ----------------------------------------------------------------------------------------------------------- where


def cache_dir() -> Path:
    """``$HARNESS_CACHE_DIR``, else ``$XDG_CACHE_HOME/harness/tokens``, else ``~/.cache/harness/tokens``: one
    folder per user, shared by every run of theirs on the machine."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "harness" / "tokens"


def _ensure_dir(d: Path) -> Path:
    """``d``, made if missing (mode 0700), once it is known that only this user controls it: a run trains on what
    the files there say, so a folder that another user could write to is refused (the rules of
    harness.tracking.folders.private_folder, which this layer cannot import)."""
    try:
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(d)
    except OSError as exc:
        raise CorpusError(f"cannot create the token cache folder {d}: {exc.strerror}; point {CACHE_ENV} at a writable folder") from None
    problem = None
    if stat.S_ISLNK(st.st_mode):
        problem = "it is a symbolic link"
    elif not stat.S_ISDIR(st.st_mode):
        problem = "it is not a folder"
    elif hasattr(os, "getuid") and st.st_uid != os.getuid():
        problem = f"it belongs to uid {st.st_uid}, not to this user (uid {os.getuid()})"
    elif os.name == "posix" and st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        problem = f"other users can write to it (mode {stat.S_IMODE(st.st_mode):o})"
    if problem:
        raise CorpusError(f"refusing to keep the token cache in {d}: {problem}, so its files cannot be trusted; "
                          f"point {CACHE_ENV} at a folder of your own")
    return d


# ----------------------------------------------------------------------------------------------------------- digests


def _hash_file(path: Path) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(8 << 20):
                h.update(block)  # hashlib releases the GIL on large blocks
    except OSError as exc:
        raise CorpusError(f"cannot read corpus file {path}: {exc.strerror}") from None
    return h.hexdigest()


def _source_digest(src: Source, folder: Path) -> str:
    """sha256 of a source's bytes (a .gz's compressed bytes), remembered by the file's identity and stat."""
    if src.text is not None:
        return hashlib.sha256(src.text.encode("utf-8")).hexdigest()
    assert src.path is not None
    try:
        st = os.stat(src.path)
    except OSError as exc:
        raise CorpusError(f"cannot read corpus file {src.path}: {exc.strerror}") from None
    resolved = str(Path(src.path).resolve())
    ident: dict[str, Any] = {"path": resolved, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino,
             "ctime_ns": st.st_ctime_ns}
    memo = folder / "sources" / (hashlib.sha256(resolved.encode()).hexdigest()[:32] + ".json")
    try:
        saved = json.loads(memo.read_text(encoding="utf-8"))
        if {k: saved.get(k) for k in ident} == ident and isinstance(saved.get("sha256"), str):
            return str(saved["sha256"])
    except (OSError, ValueError):
        pass
    digest = _hash_file(src.path)
    try:  # a memo only: a read-only cache folder costs a re-hash next time, nothing else
        memo.parent.mkdir(mode=0o700, exist_ok=True)
        tmp = memo.with_name(f"{memo.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({**ident, "sha256": digest}), encoding="utf-8")
        os.replace(tmp, memo)
    except OSError:
        pass
    return digest


def content_digest(sources: list[Source]) -> str:
    """One digest of the corpus's bytes, part by part, in reading order (names do not count: a renamed file holds
    the same tokens)."""
    h = hashlib.sha256(b"harness-corpus-1\n")
    for s in sources:
        h.update(_source_digest(s, _ensure_dir(cache_dir())).encode() + b"\n")
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------------------- the key


def _tokenizer_identity(kind: str, encoding: str | None, path: str | None, compact: bool, given: Tokenizer | None) -> dict[str, Any]:
    """What decides the ids, for the key: the tokenizer's kind and options, tiktoken's version and the ranks' digest,
    or the whole of a given (a source run's) tokenizer."""
    out: dict[str, Any] = {}
    if given is not None:
        out["given"] = hashlib.sha256(json.dumps(given.to_dict(), sort_keys=True).encode()).hexdigest()
        kind = given.kind
    else:
        out.update(kind=kind, encoding=encoding, compact=compact)
    if kind == "tiktoken":
        import tiktoken

        out["tiktoken"] = tiktoken.__version__
        if given is None and path is not None:
            ranks = TiktokenTokenizer(encoding or "", path=path).ranks or b""
            out["ranks"] = hashlib.sha256(ranks).hexdigest()
    return out


def make_key(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


# ----------------------------------------------------------------------------------------------------------- the file


@dataclass(frozen=True)
class TokenFile:
    """A mapped token file: ``tokens`` (1-D, read-only memory map), ``doc_starts`` for documents, its tokenizer."""

    path: Path
    key: str
    header: dict[str, Any]
    tokens: np.ndarray
    doc_starts: np.ndarray | None
    tokenizer: Tokenizer

    @property
    def n_chars(self) -> int:
        return int(self.header["n_chars"])


class _Damaged(Exception):
    pass


def _read_header(path: Path) -> dict[str, Any]:
    with open(path, "rb") as f:
        head = f.read(HEADER_BYTES)
    if len(head) < HEADER_BYTES or not head.startswith(MAGIC):
        raise _Damaged("its header is missing or cut short")
    try:
        header = json.loads(head[len(MAGIC):].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise _Damaged("its header is not readable") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise _Damaged(f"it is format {header.get('format') if isinstance(header, dict) else '?'}, this harness writes {FORMAT}")
    return header


def _open(path: Path, key: str | None) -> TokenFile:
    """Map ``path``; raises _Damaged when anything about it disagrees with its header."""
    header = _read_header(path)
    if key is not None and header.get("key") != key:
        raise _Damaged("its header holds another key")
    size = os.path.getsize(path)
    if size != header.get("size"):
        raise _Damaged(f"it is {size} bytes, its header says {header.get('size')} (truncated?)")
    sec = header["sections"]
    dtype = np.dtype(header["dtype"])
    n = int(header["n_tokens"])
    off, nbytes = sec["tokens"]
    if nbytes != n * dtype.itemsize or off + nbytes > size:
        raise _Damaged("its token section does not match its header")
    tokens = np.memmap(path, dtype=dtype, mode="r", offset=off, shape=(n,)) if n else np.zeros(0, dtype=dtype)
    starts = None
    if "doc_starts" in sec:
        d_off, d_bytes = sec["doc_starts"]
        with open(path, "rb") as f:
            f.seek(d_off)
            starts = np.frombuffer(f.read(d_bytes), dtype=np.uint64).astype(np.int64)
    t_off, t_bytes = sec["tokenizer"]
    with open(path, "rb") as f:
        f.seek(t_off)
        raw = f.read(t_bytes)
    try:
        tok = tokenizer_from_dict(json.loads(raw.decode("utf-8")))
    except (UnicodeDecodeError, ValueError, KeyError):
        raise _Damaged("its tokenizer section is not readable") from None
    return TokenFile(path, str(header["key"]), header, tokens, starts, tok)


# ----------------------------------------------------------------------------------------------------------- building


def _threads() -> int:
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not Linux
        return max(os.cpu_count() or 1, 1)


class _Meter:
    """Bytes read in one phase, told to the reporter at most a few times a second."""

    def __init__(self, corpus: str, phase: str, total: int, t0: float):
        self.corpus, self.phase, self.total, self.t0 = corpus, phase, total, t0
        self.done, self._last = 0, 0.0

    def __call__(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last >= 0.5:
            self._last = now
            _say(BuildProgress(self.corpus, self.phase, self.done, self.total, now - self.t0))

    def finish(self) -> None:
        _say(BuildProgress(self.corpus, self.phase, self.done, self.total, time.monotonic() - self.t0, final=True))


@dataclass
class _Options:
    corpus: str
    max_chars: int | None
    documents: str | None  # the delimiter between documents (documents sampling), each then between two separators
    kind: str
    encoding: str | None
    path: str | None
    compact: bool
    given: Tokenizer | None


def _texts(sources: list[Source], opts: _Options, meter: _Meter, digests: list[str] | None = None) -> Iterator[str | None]:
    """The corpus as normalised text pieces (CRLF and CR to LF), cut to ``max_chars``; a newline goes between two
    parts when the first does not end with one, so that no line runs from one file into the next (for documents, a
    None instead: a file's end ends a document). ``digests`` collects each part's sha256 as it is read, so a file
    that changes during the build is noticed."""
    left = opts.max_chars
    last = ""
    for n_src, src in enumerate(sources):
        if n_src and opts.documents is not None:
            yield None  # a file's end ends its last document
        elif n_src and not last.endswith("\n"):  # a file without a final newline: its last line stays its own
            if left is not None:
                left -= 1
            yield "\n"
            if left == 0:
                return
        last = ""
        h = hashlib.sha256()
        raw_hash = src.path is not None and not src.gz
        for offset, piece in read_pieces(src, CHUNK_BYTES, on_read=meter):
            if raw_hash:
                h.update(piece)
            try:
                text = piece.decode("utf-8")
            except UnicodeDecodeError as exc:
                where = "of its decompressed text " if src.gz else ""
                raise CorpusError(f"corpus file is not UTF-8 ({exc.reason} at byte {offset + exc.start} {where}): {src.name}") from None
            text = text.replace("\r\n", "\n").replace("\r", "\n")
            if left is not None:
                text = text[:left]
                left -= len(text)
            if text:
                last = text
                yield text
            if left == 0:
                return
        if digests is not None and raw_hash:
            digests.append(h.hexdigest())


class _Counts:
    """Characters that pass through, and whether any was not whitespace."""

    def __init__(self) -> None:
        self.chars, self.nonblank = 0, False

    def of(self, texts: Iterator[str | None]) -> Iterator[str | None]:
        for t in texts:
            if t is not None:
                self.chars += len(t)
                self.nonblank = self.nonblank or not t.isspace()
            yield t


def _split_documents(texts: Iterator[str | None], delimiter: str) -> Iterator[str]:
    """The non-blank documents of the text pieces, split on ``delimiter`` (a document may span many pieces; a None
    ends the current one). A piece is joined to the document it continues only when a delimiter ends it, so a long
    document costs linear time."""
    parts: list[str] = []
    keep = len(delimiter) - 1  # a delimiter may straddle two pieces
    for t in texts:
        if t is None:
            doc = "".join(parts)
            if doc.strip():
                yield doc
            parts = []
            continue
        tail = parts[-1][-keep:] if parts and keep else ""
        if delimiter not in tail + t:
            parts.append(t)
            continue
        docs = ("".join(parts) + t).split(delimiter)
        parts = [docs.pop()]
        yield from (d for d in docs if d.strip())
    doc = "".join(parts)
    if doc.strip():
        yield doc


def _batches(it: Iterator[str], n: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for t in it:
        batch.append(t)
        if len(batch) >= n:
            yield batch
            batch = []
    if batch:
        yield batch


def _char_lut(tok: CharTokenizer) -> np.ndarray:
    codes = tok._codes
    lut = np.full(int(codes.max()) + 1 if len(codes) else 1, -1, dtype=np.int32)
    lut[codes] = np.arange(len(codes))
    return lut


def _char_ids(text: str, lut: np.ndarray, drop_unknown: bool) -> np.ndarray:
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    if not len(codes) or int(codes.max()) < len(lut):
        ids = lut[codes]  # the usual case: one gather
    else:
        inside = codes < len(lut)
        ids = np.where(inside, lut[np.where(inside, codes, 0)], -1)
    if drop_unknown:
        return ids[ids >= 0]
    if (ids < 0).any():  # the corpus's own vocabulary always covers it; this is a programming error
        raise RuntimeError("character outside the corpus vocabulary")
    return ids


def _known_chars(text: str, lut: np.ndarray) -> str:
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    keep = codes < len(lut)
    keep[keep] = lut[codes[keep]] >= 0
    return text if keep.all() else codes[keep].tobytes().decode("utf-32-le")


class _Writer:
    """Appends ids of one dtype to an open file, counting them."""

    def __init__(self, f: Any, dtype: np.dtype):
        self.f, self.dtype, self.n = f, dtype, 0

    def write(self, ids: np.ndarray) -> None:
        if len(ids):
            self.f.write(np.ascontiguousarray(ids, dtype=self.dtype).tobytes())
            self.n += len(ids)


def _dtype_for(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def _build(sources: list[Source], opts: _Options, key: str, parts: dict[str, Any], tmp: Path, expect: list[str]) -> None:
    """Write the token file for ``key`` to ``tmp``."""
    t0 = time.monotonic()
    total = sum(os.path.getsize(s.path) if s.path is not None else len((s.text or "").encode()) for s in sources)
    threads = _threads()
    tok: Tokenizer
    n_chars = 0
    nonblank = False
    given = opts.given
    if given is None and opts.kind == "char":
        meter = _Meter(opts.corpus, "scan", total, t0)
        seen = np.zeros(0x110000, dtype=bool)
        for text in _texts(sources, opts, meter):
            if text is not None:
                seen[np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)] = True
        meter.finish()
        tok = CharTokenizer([chr(int(c)) for c in np.flatnonzero(seen)], bos=opts.documents is not None)
    elif given is None:
        tok = TiktokenTokenizer(opts.encoding or "", path=opts.path, eot=opts.documents is not None)
    else:
        tok = given
    char_lut = _char_lut(tok) if isinstance(tok, CharTokenizer) else None
    compact_build = given is None and opts.kind == "tiktoken" and opts.compact
    final_dtype = np.dtype(np.uint32) if compact_build else _dtype_for(tok.vocab_size)
    doc_starts: list[int] = []
    sep = tok.bos_id
    digests: list[str] = []
    meter = _Meter(opts.corpus, "encode", total, t0)

    def encode(texts: list[str], pool: ThreadPoolExecutor) -> list[np.ndarray]:
        if char_lut is not None:  # numpy's gathers release the GIL: the pool overlaps them with the next piece's decoding
            return list(pool.map(lambda t: _char_ids(t, char_lut, drop_unknown=given is not None), texts))
        assert isinstance(tok, TiktokenTokenizer)
        enc = tok._enc
        # encode_to_numpy with no special handling is encode_ordinary, straight into a uint32 buffer (no list of
        # ints); the BPE core releases the GIL, so the pool uses every core
        raw = list(pool.map(lambda t: enc.encode_to_numpy(t, disallowed_special=()), texts))
        if compact_build or tok.remap is None:
            return raw
        out = []
        for r in raw:  # a given compact tokenizer: what it cannot encode is left out, as Tokenizer.encode_known does
            dense = tok._dense[r.astype(np.int64)]
            out.append(dense[dense >= 0])
        return out

    with open(tmp, "wb") as f, ThreadPoolExecutor(threads) as pool:
        f.write(b"\0" * HEADER_BYTES)
        w = _Writer(f, final_dtype)
        seen_ids: np.ndarray | None = None
        if compact_build:
            assert isinstance(tok, TiktokenTokenizer)
            seen_ids = np.zeros(int(tok._enc.max_token_value) + 1, dtype=np.bool_)
        counted = _Counts()
        texts = counted.of(_texts(sources, opts, meter, digests))
        if given is not None and char_lut is not None:  # what a source run's vocabulary holds (Tokenizer.known)
            texts = (None if t is None else _known_chars(t, char_lut) for t in texts)
        if opts.documents is not None:
            if sep is None:
                raise CorpusError("documents sampling needs a tokenizer with a separator (BOS, or tiktoken's <|endoftext|>)")
            if seen_ids is not None:
                seen_ids[tok._enc.eot_token] = True  # type: ignore[attr-defined]
            for docs in _batches(_split_documents(texts, opts.documents), 256):
                for ids in encode(docs, pool):
                    if seen_ids is not None:
                        seen_ids[ids] = True
                    doc_starts.append(w.n)
                    w.write(np.concatenate([np.array([sep], dtype=np.int64), ids.astype(np.int64)]))
        else:
            for batch in _batches((t for t in texts if t is not None), BATCH_PIECES * threads):
                for ids in encode(batch, pool):
                    if seen_ids is not None:
                        seen_ids[ids] = True
                    w.write(ids)
        n_chars, nonblank = counted.chars, counted.nonblank
        if opts.documents is not None and doc_starts:
            doc_starts.append(w.n)
            w.write(np.array([sep]))
        meter.finish()
        if not nonblank:
            raise CorpusError(f"corpus '{opts.corpus}' is empty")
        if digests != expect[: len(digests)]:
            raise CorpusError(f"corpus '{opts.corpus}' changed while it was being tokenized; run again")
        n_tokens = w.n
        if seen_ids is not None:  # compact: remap the original ids, now that the corpus's set of ids is known
            assert isinstance(tok, TiktokenTokenizer)
            remap = np.flatnonzero(seen_ids)
            tok = TiktokenTokenizer(tok.encoding, path=tok.path, remap=[int(i) for i in remap], ranks=tok.ranks, eot=tok.eot)
            final_dtype = _dtype_for(tok.vocab_size)
            f.flush()
            raw_ids = np.memmap(tmp, dtype=np.uint32, mode="r", offset=HEADER_BYTES, shape=(n_tokens,)) if n_tokens else np.zeros(0, np.uint32)
            dense = np.zeros(len(seen_ids), dtype=final_dtype)
            dense[remap] = np.arange(len(remap))
            remapped = tmp.with_name(tmp.name + ".remap")
            try:
                with open(remapped, "wb") as g:
                    g.write(b"\0" * HEADER_BYTES)
                    step = 16 << 20
                    rm = _Meter(opts.corpus, "remap", n_tokens, t0)
                    for i in range(0, n_tokens, step):
                        g.write(dense[raw_ids[i : i + step]].tobytes())
                        rm(min(step, n_tokens - i))
                    rm.finish()
                    del raw_ids
                    _finish(g, opts.corpus, key, parts, final_dtype, n_tokens, n_chars, doc_starts, tok)
                os.replace(remapped, tmp)
            finally:
                remapped.unlink(missing_ok=True)
            return
        _finish(f, opts.corpus, key, parts, final_dtype, n_tokens, n_chars, doc_starts, tok)


def _finish(f: Any, corpus: str, key: str, parts: dict[str, Any], dtype: np.dtype, n_tokens: int, n_chars: int,
            doc_starts: list[int], tok: Tokenizer) -> None:
    """Append the trailing sections, then write the header over the reserved first page, and sync."""
    pos = HEADER_BYTES + n_tokens * dtype.itemsize
    sections: dict[str, list[int]] = {"tokens": [HEADER_BYTES, n_tokens * dtype.itemsize]}
    f.seek(pos)
    if doc_starts:
        b = np.asarray(doc_starts, dtype=np.uint64).tobytes()
        f.write(b)
        sections["doc_starts"] = [pos, len(b)]
        pos += len(b)
    tb = json.dumps(tok.to_dict(), ensure_ascii=False).encode("utf-8")
    f.write(tb)
    sections["tokenizer"] = [pos, len(tb)]
    pos += len(tb)
    header = {"format": FORMAT, "key": key, "corpus": corpus, "parts": parts, "dtype": dtype.name, "n_tokens": n_tokens, "n_chars": n_chars,
              "n_docs": max(len(doc_starts) - 1, 0) if doc_starts else None, "vocab_size": tok.vocab_size,
              "tokenizer": tok.kind, "sections": sections, "size": pos, "created": time.time()}
    head = MAGIC + json.dumps(header).encode("utf-8")
    if len(head) > HEADER_BYTES:  # the parts are a few short strings; this is a programming error
        raise RuntimeError("token file header is larger than its page")
    f.seek(0)
    f.write(head + b" " * (HEADER_BYTES - len(head)))
    f.flush()
    os.fsync(f.fileno())


_DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def token_file(corpus: str, *, max_chars: int | None, documents: str | None, kind: str = "char", encoding: str | None = None,
               path: str | None = None, compact: bool = False, given: Tokenizer | None = None) -> TokenFile:
    """The token file of ``corpus`` under these options: mapped from the cache, or built into it first."""
    from filelock import FileLock, Timeout

    sources = corpus_sources(corpus)
    folder = _ensure_dir(cache_dir())  # checked before anything there is read: a memo could lie about a digest
    digests = [_source_digest(s, folder) for s in sources]
    h = hashlib.sha256(b"harness-corpus-1\n")
    for d in digests:
        h.update(d.encode() + b"\n")
    parts = {"format": FORMAT, "tokenize": TOKENIZE_VERSION, "content": h.hexdigest(), "max_chars": max_chars,
             "documents": {"delimiter": documents} if documents is not None else None,
             "tokenizer": _tokenizer_identity(kind, encoding, path, compact, given)}
    key = make_key(parts)
    final = folder / f"{key[:32]}{SUFFIX}"
    damaged = None
    if final.exists():
        try:
            return _open(final, key)
        except _Damaged as exc:
            damaged = str(exc)
        except OSError:
            pass
    lock = FileLock(str(folder / f"{key[:32]}.lock"))
    try:
        lock.acquire(timeout=1)
    except Timeout:
        _say(f"waiting for another process to finish tokenizing {corpus} ({final})")
        lock.acquire()
    try:
        if final.exists():  # built by the process we waited for
            try:
                return _open(final, key)
            except _Damaged as exc:
                damaged = str(exc)
        if damaged is not None:
            _say(f"the token cache {final} was damaged ({damaged}); rebuilding it")
        for stale in folder.glob(f"{key[:32]}{SUFFIX}.*.tmp*"):  # left by a killed build: we hold the lock
            stale.unlink(missing_ok=True)
        tmp = folder / f"{key[:32]}{SUFFIX}.{os.getpid()}.tmp"
        expect = [d for s, d in zip(sources, digests) if s.path is not None and not s.gz]
        opts = _Options(corpus, max_chars, documents, kind, encoding, path, compact, given)
        try:
            _build(sources, opts, key, parts, tmp, expect)
            os.replace(tmp, final)
        except OSError as exc:
            if exc.errno in _DISK_FULL:
                raise CorpusError(f"cannot write the token cache {final}: {exc.strerror}; free some space there or point "
                                  f"{CACHE_ENV} at a larger disk (nothing was left behind)") from None
            raise
        finally:
            tmp.unlink(missing_ok=True)  # Ctrl-C, a full disk, a bad file: no half-written cache
        try:
            return _open(final, key)
        except _Damaged as exc:  # just written and synced: something else is wrong with this disk
            raise CorpusError(f"the token cache {final} cannot be read back ({exc})") from None
    finally:
        lock.release()


# ----------------------------------------------------------------------------------------------------------- managing


@dataclass(frozen=True)
class CacheEntry:
    path: Path
    size: int
    header: dict[str, Any] | None  # None: damaged, or a leftover temporary file

    @property
    def corpus(self) -> str:
        return str(self.header.get("corpus", "?")) if self.header else "?"


def list_cache() -> list[CacheEntry]:
    """Every token file in the cache (newest first), damaged ones and leftovers included (header None)."""
    folder = cache_dir()
    if not folder.is_dir():
        return []
    out = []
    for p in folder.iterdir():
        if not p.is_file() or not (p.name.endswith(SUFFIX) or ".tmp" in p.name):
            continue
        try:
            header: dict[str, Any] | None = _read_header(p) if p.name.endswith(SUFFIX) else None
        except (_Damaged, OSError):
            header = None
        out.append(CacheEntry(p, p.stat().st_size, header))
    return sorted(out, key=lambda e: -(e.header or {}).get("created", 0))


def clear_cache() -> tuple[int, int]:
    """Remove every token file, leftover and memo of the cache; (files removed, bytes freed). A file another
    process has mapped stays readable to it until it closes it (POSIX unlink)."""
    folder = cache_dir()
    n = freed = 0
    if not folder.is_dir():
        return 0, 0
    for p in list(folder.iterdir()) + (list((folder / "sources").iterdir()) if (folder / "sources").is_dir() else []):
        if p.is_file() and (p.name.endswith((SUFFIX, ".lock", ".json")) or ".tmp" in p.name):
            size = p.stat().st_size
            p.unlink(missing_ok=True)
            n, freed = n + 1, freed + size
    return n, freed
