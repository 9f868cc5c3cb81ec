"""Credentials out of what harness shows and stores: one function for a URL, one for text that may contain URLs.

A study storage (``postgresql://user:PASSWORD@host/db``) or a tracking URI (``https://user:PASSWORD@host``) may carry a
password. Every printed line, MLflow tag, param and artifact that names such a URL goes through :func:`redact_url`
(or, for a message that quotes one, :func:`redact_text`), so the password is shown as ``***`` and never kept.
The URL a process connects with is left as it was given.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["HIDDEN", "is_redacted", "redact_text", "redact_url"]

HIDDEN = "***"  # what a password is shown as (SQLAlchemy's own mask)
# libpq and SQL drivers also take a password as a query parameter; some servers take a token that way
_SECRET_KEYS = {"password", "passwd", "pwd", "sslpassword", "token", "access_token", "api_key", "secret"}
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>`]+")  # a URL in a message: up to a space or a quote


def redact_url(url: str) -> str:
    """``url`` with its password (in the user part or as a ``password`` query parameter) replaced by ``***``.

    A database URL is parsed and rendered by SQLAlchemy (``URL.render_as_string(hide_password=True)``), the way the
    engine reads it; an http(s) or other URL by :mod:`urllib.parse`. A path, or a URL without a password, comes back
    unchanged."""
    if not _may_hold_secret(url):
        return url
    sql = _sql_url(url)
    if sql is not None:
        secret = {k: HIDDEN for k in sql.query if k.lower() in _SECRET_KEYS}
        return (sql.update_query_dict(secret) if secret else sql).render_as_string(hide_password=True)
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # not a URL urllib can read (a port that is no number): hide the whole user part
        head, _, rest = url.partition("://")
        host = rest.split("/", 1)[0]
        return f"{head}://{HIDDEN}@{rest.split('@', 1)[1]}" if "@" in host else url
    netloc = parts.netloc
    if password is not None:
        userinfo, _, hostport = netloc.rpartition("@")
        netloc = f"{userinfo.split(':', 1)[0]}:{HIDDEN}@{hostport}"
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    query = urlencode([(k, HIDDEN if k.lower() in _SECRET_KEYS else v) for k, v in pairs], safe="*") if _secret_keys(pairs) else parts.query
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str) -> str:
    """``text`` (an error message, a command line, a YAML document) with every URL in it redacted (see
    :func:`redact_url`)."""
    if "://" not in text:
        return text
    return _URL.sub(lambda m: redact_url(m.group(0)), text)


def is_redacted(url: str) -> bool:
    """Whether ``url`` went through :func:`redact_url` with a password in it: it holds ``***`` where the password was,
    so it cannot be connected with as it is."""
    if not _may_hold_secret(url):
        return False
    sql = _sql_url(url)
    if sql is not None:
        secrets = [sql.password] + [v for k, v in sql.query.items() if k.lower() in _SECRET_KEYS]
    else:
        try:
            parts = urlsplit(url)
            secrets = [parts.password] + [v for k, v in parse_qsl(parts.query) if k.lower() in _SECRET_KEYS]
        except ValueError:
            return f"://{HIDDEN}@" in url
    return any(v == HIDDEN or (isinstance(v, tuple) and HIDDEN in v) for v in secrets)


def _may_hold_secret(url: str) -> bool:
    """Cheap: a URL with a user part or a query parameter named like a password (no SQLAlchemy import otherwise)."""
    if "://" not in url:
        return False
    return "@" in url or _secret_keys(parse_qsl(url.partition("?")[2], keep_blank_values=True))


def _secret_keys(pairs: list[tuple[str, str]]) -> bool:
    return any(k.lower() in _SECRET_KEYS for k, _ in pairs)


def _sql_url(url: str) -> Any:
    """``url`` parsed by SQLAlchemy when it is a database URL (any scheme but http(s), file and journal), else None."""
    if url.split("://", 1)[0].lower() in ("http", "https", "file", "journal"):
        return None
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url)
    except (ArgumentError, ValueError):
        return None
