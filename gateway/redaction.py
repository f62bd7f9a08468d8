"""Keep secrets out of every line the gateway writes: URLs, query strings, logs."""

from __future__ import annotations

import re
from urllib.parse import SplitResult, urlsplit, urlunsplit

__all__ = ["redact_text", "redact_url"]

_SECRET_QUERY = re.compile(
    r"((?:^|[?&;\s])(?:token|ticket|access_token|password|passwd|sslpassword)=)[^&\s\"']*", re.I
)
_BEARER = re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]+", re.I)
_URL_PASSWORD = re.compile(r"([a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s]*@", re.I)


def redact_url(url: str) -> str:
    """`redis://user:secret@host/0` -> `redis://user:***@host/0`."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.query:
        parts = parts._replace(query=_SECRET_QUERY.sub(r"\1***", parts.query))
    if parts.password is None:
        return _unsplit(parts)
    user = parts.username or ""
    host_port = parts.netloc.rpartition("@")[2]
    netloc = f"{user}:***@{host_port}"
    return _unsplit(parts._replace(netloc=netloc))


def _unsplit(parts: SplitResult) -> str:
    """urlunsplit, keeping the `//` of `unix:///path` that it would drop."""
    text = urlunsplit(parts)
    if parts.scheme == "unix" and not parts.netloc and not text.startswith("unix://"):
        text = "unix://" + text[len("unix:") :]
    return text


def redact_text(text: str) -> str:
    """Mask token/ticket query values, bearer tokens and URL passwords in free text."""
    text = _SECRET_QUERY.sub(r"\1***", text)
    text = _BEARER.sub(r"\1***", text)
    return _URL_PASSWORD.sub(r"\1***@", text)
