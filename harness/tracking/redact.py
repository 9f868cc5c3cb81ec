"""Credentials out of everything harness shows, stores or passes on a command line: one module, two passes.

A study storage (``postgresql://user:PASSWORD@host/db``), a tracking URI (``https://user:PASSWORD@host``) or a git
origin (``https://TOKEN@github.com/org/repo.git``) may carry a secret. Every printed line, MLflow tag, param and
artifact, every stored failure reason and every child command line goes through :func:`redact_text` (a whole URL
through :func:`redact_url`), which

1. rewrites each URL as its own parser reads it (SQLAlchemy for a database URL, :mod:`urllib.parse` otherwise) with
   the secret parts shown as ``***``: the password, a user part that is a token (any scheme but a database's or
   ssh's, where the user part is a login name), and query parameters named like a secret (``password=``, ``token=``,
   ``api_key=``, ``sig=``, ...); and
2. replaces, wherever it appears (a quoted message, a URL cut short, a traceback), every secret harness was handed:
   those of the URLs on this process's command line and in ``MLFLOW_TRACKING_URI`` / ``HARNESS_STUDY_STORAGE`` /
   ``MLFLOW_BACKEND_STORE_URI``, ``MLFLOW_TRACKING_PASSWORD``, ``MLFLOW_TRACKING_TOKEN``, ``PGPASSWORD``, and any
   URL passed to :func:`remember` (a spec's ``sweep.storage``, the git origin). A secret shorter than
   :data:`MIN_SECRET` characters is only hidden inside a URL (replacing ``pw`` in every word would garble the text).

The URL a process connects with is left as it was given.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, unquote, urlencode, urlsplit, urlunsplit

__all__ = ["HIDDEN", "MIN_SECRET", "is_redacted", "redact_argv", "redact_text", "redact_url", "redact_value", "remember",
           "secrets_in"]

HIDDEN = "***"  # what a secret is shown as (SQLAlchemy's own mask)
MIN_SECRET = 4  # a known secret at least this long is replaced wherever it appears, not only inside a URL
# A query parameter whose lowercased name contains one of these holds a secret: libpq's password/sslpassword, a
# server's token/access_token/api_key, cloud storage's presigned sig/signature/credential/security token.
_SECRET_PARTS = ("pass", "pwd", "secret", "token", "key", "sig", "credential", "auth")
# Schemes whose user part is a login name, not a credential: database URLs (the role) and ssh (git@github.com).
_NAMED_USERS = {"postgresql", "postgres", "psql", "mysql", "mariadb", "sqlite", "oracle", "mssql", "cockroachdb", "ssh",
                "sftp", "git"}
# Schemes SQLAlchemy must not parse: its dialect-shaped regex misreads them.
_NOT_SQL = {"http", "https", "ws", "wss", "ftp", "ftps", "file", "journal", "s3", "gs", "wasbs", "abfss", "hdfs", "models",
            "runs", "mlflow-artifacts", "databricks"}
# A URL in a message: the scheme, a user part up to its @ (a password may hold quotes and brackets, not white space),
# then anything up to white space or a quote.
_URL = re.compile(r"""[A-Za-z][A-Za-z0-9+.\-]*://(?:[^\s@/]*@)?[^\s'"<>`]*""")
# Environment variables that hold a secret, or a URL that may hold one (MLflow's, libpq's, harness's own).
_SECRET_VARS = ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "PGPASSWORD")
_URL_VARS = ("MLFLOW_TRACKING_URI", "HARNESS_STUDY_STORAGE", "MLFLOW_BACKEND_STORE_URI", "MLFLOW_REGISTRY_URI",
             "MLFLOW_REGISTRY_STORE_URI")

_remembered: set[str] = set()
_lock = threading.Lock()


# ------------------------------------------------------------------------------------------------------------ URLs


def redact_url(url: str) -> str:
    """``url`` with its secrets (password, a token as the user part, secret query parameters) shown as ``***``.

    A database URL is parsed and rendered by SQLAlchemy (``URL.render_as_string(hide_password=True)``), the way the
    engine reads it; any other URL by :mod:`urllib.parse`. A path, or a URL without a secret, comes back unchanged."""
    if not _may_hold_secret(url):
        return url
    scheme = url.split("://", 1)[0]
    sql = _sql_url(url)
    head, _, rest = url.partition("://")
    if sql is not None and rest.split("?", 1)[0].count("@") > 1 and ":" in rest.split("@", 1)[0]:
        # a raw @ in the password: SQLAlchemy ends the password at the first @, a reader at the last; hide up to the last
        userinfo, _, after = rest.split("?", 1)[0].rpartition("@")
        return redact_url(f"{head}://{userinfo.split(':', 1)[0]}:{HIDDEN}@{after}" + (f"?{rest.split('?', 1)[1]}" if "?" in rest else ""))
    if sql is not None:
        secret = {k: HIDDEN for k in sql.query if _secret_key(k)}
        if secret:
            sql = sql.update_query_dict(secret)
        if sql.username and sql.password is None and not _user_is_a_name(scheme):
            sql = sql.set(username=HIDDEN)
        return str(sql.render_as_string(hide_password=True))
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # not a URL urllib can read (a port that is no number): hide the whole user part
        authority = rest.split("/", 1)[0]
        return f"{head}://{HIDDEN}@{rest.rsplit('@', 1)[1]}" if "@" in authority else url
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        if password is not None:
            netloc = f"{userinfo.split(':', 1)[0]}:{HIDDEN}@{hostport}"
        elif not _user_is_a_name(scheme):
            netloc = f"{HIDDEN}@{hostport}"
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    query = (urlencode([(k, HIDDEN if _secret_key(k) else v) for k, v in pairs], safe="*") if any(_secret_key(k) for k, _ in pairs)
             else parts.query)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def secrets_in(url: str) -> list[str]:
    """The secret parts of ``url`` as a parser reads them (decoded): its password, a user part that is a token, the
    values of secret query parameters. [] for a URL without one, or no URL."""
    if not _may_hold_secret(url):
        return []
    scheme = url.split("://", 1)[0]
    found: list[str] = []
    sql = _sql_url(url)
    if sql is not None:
        found += [sql.password] if sql.password is not None else []
        if sql.username and sql.password is None and not _user_is_a_name(scheme):
            found.append(sql.username)
        user_secret = bool(found)
        for k, v in sql.query.items():
            if _secret_key(k):
                found += list(v) if isinstance(v, tuple) else [v]
    else:
        try:
            parts = urlsplit(url)
            password, username = parts.password, parts.username
        except ValueError:
            authority = url.partition("://")[2].split("/", 1)[0]
            return [unquote(authority.rpartition("@")[0])] if "@" in authority else []
        if password is not None:
            found.append(unquote(password))
        elif username and not _user_is_a_name(scheme):
            found.append(unquote(username))
        user_secret = bool(found)
        found += [v for k, v in parse_qsl(parts.query, keep_blank_values=True) if _secret_key(k)]
    # the raw user part too: the parsers split a password holding a raw @ or / differently than a reader would
    authority = url.partition("://")[2]
    if user_secret and "@" in authority.split("?", 1)[0]:
        userinfo = authority.split("?", 1)[0].rpartition("@")[0]
        raw = userinfo.partition(":")[2] if ":" in userinfo else ("" if _user_is_a_name(scheme) else userinfo)
        found += [raw, unquote(raw)]
    return [s for s in dict.fromkeys(found) if s and s != HIDDEN]


def is_redacted(url: str) -> bool:
    """Whether ``url`` went through :func:`redact_url` with a secret in it: it holds ``***`` where the secret was,
    so it cannot be connected with as it is."""
    if not _may_hold_secret(url):
        return False
    scheme = url.split("://", 1)[0]
    sql = _sql_url(url)
    if sql is not None:
        secrets: list[Any] = [sql.password] + [v for k, v in sql.query.items() if _secret_key(k)]
        if not _user_is_a_name(scheme):
            secrets.append(sql.username)
    else:
        try:
            parts = urlsplit(url)
            secrets = [parts.password] + [v for k, v in parse_qsl(parts.query) if _secret_key(k)]
            if not _user_is_a_name(scheme):
                secrets.append(parts.username)
        except ValueError:
            return f"://{HIDDEN}@" in url
    return any(v == HIDDEN or (isinstance(v, tuple) and HIDDEN in v) for v in secrets)


# ----------------------------------------------------------------------------------------------------------- text


def redact_text(text: str) -> str:
    """``text`` (an error message, a command line, a YAML document) with every URL in it redacted (see
    :func:`redact_url`) and every secret harness knows of replaced by ``***``, wherever it appears."""
    if "://" in text:
        text = _URL.sub(lambda m: redact_url(m.group(0)), text)
    for secret in _known_secrets():
        if secret in text:
            text = text.replace(secret, HIDDEN)
    return text


def redact_value(value: Any) -> Any:
    """``value`` (a tag or param, a dict or list read from YAML or JSON) with every string in it redacted; other
    values as they are."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {redact_value(k): redact_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_value(v) for v in value)
    return value


def redact_argv(argv: Sequence[str]) -> list[str]:
    """A command line as it may be shown or stored: each argument that is a URL (or ``--option=URL``) redacted as a
    whole (a password may hold white space there), then as text."""
    out = []
    for arg in argv:
        head, eq, tail = arg.partition("=") if arg.startswith("-") else ("", "", arg)
        out.append(redact_text(head + eq + (redact_url(tail) if "://" in tail else tail)))
    return out


def remember(*urls: str | None) -> None:
    """Hide the secrets of ``urls`` wherever they appear from now on in this process (a URL harness was handed
    otherwise than on its command line or in the environment: a spec's ``sweep.storage``, the git origin)."""
    found = [s for u in urls if u for s in secrets_in(u)]
    if found:
        with _lock:
            _remembered.update(found)


# ------------------------------------------------------------------------------------------------------- helpers


def _known_secrets() -> list[str]:
    """Every secret this process was handed, with the spellings it has in a URL, longest first (a secret that holds
    another is replaced whole)."""
    found: set[str] = set()
    for var in _SECRET_VARS:
        value = os.environ.get(var)
        if value:
            found.add(value)
    for var in _URL_VARS:
        found.update(secrets_in(os.environ.get(var) or ""))
    found.update(_argv_secrets(tuple(sys.argv)))
    with _lock:
        found.update(_remembered)
    return sorted(_spellings(found), key=len, reverse=True)


_ARGV_CACHE: dict[tuple[str, ...], frozenset[str]] = {}


def _argv_secrets(argv: tuple[str, ...]) -> frozenset[str]:
    if argv not in _ARGV_CACHE:
        found: set[str] = set()
        for arg in argv:
            if "://" in arg:
                tail = arg.partition("=")[2] if arg.startswith("-") else arg
                found.update(secrets_in(tail))
                found.update(s for m in _URL.finditer(arg) for s in secrets_in(m.group(0)))
        _ARGV_CACHE.clear()  # one process, one command line: keep only the current one
        _ARGV_CACHE[argv] = frozenset(found)
    return _ARGV_CACHE[argv]


def _spellings(secrets: Iterable[str]) -> set[str]:
    """Each secret as typed and as it appears percent-encoded in a URL (``p@ss`` is ``p%40ss`` there)."""
    out: set[str] = set()
    for s in secrets:
        if len(s) >= MIN_SECRET:
            out.update({s, quote(s, safe=""), quote_plus(s, safe=""), quote(s, safe="@:/+!*'()")})
    return {s for s in out if len(s) >= MIN_SECRET and s != HIDDEN}


def _may_hold_secret(url: str) -> bool:
    """Cheap: a URL with a user part or a query parameter named like a secret (no SQLAlchemy import otherwise)."""
    if "://" not in url:
        return False
    return "@" in url or any(_secret_key(k) for k, _ in parse_qsl(url.partition("?")[2], keep_blank_values=True))


def _secret_key(key: str) -> bool:
    low = key.lower()
    return any(part in low for part in _SECRET_PARTS)


def _scheme_parts(scheme: str) -> list[str]:
    return scheme.lower().split("+")


def _user_is_a_name(scheme: str) -> bool:
    """Whether a user part without a password is a login name (a database role, ssh's git@) rather than a token
    (``https://TOKEN@github.com``): for http-like schemes and unknown ones it is taken as a token."""
    parts = _scheme_parts(scheme)
    if any(p in ("http", "https", "ws", "wss", "ftp", "ftps") for p in parts):
        return False
    return parts[0] in _NAMED_USERS


def _sql_url(url: str) -> Any:
    """``url`` parsed by SQLAlchemy when it is a database URL (not an http(s), file, journal or artifact URL), else
    None."""
    if any(p in _NOT_SQL for p in _scheme_parts(url.split("://", 1)[0])):
        return None
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url)
    except (ArgumentError, ValueError):
        return None
