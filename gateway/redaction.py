"""Keep secrets out of every line the gateway writes: URLs, query strings, logs."""

from __future__ import annotations

import re

__all__ = ["redact_text", "redact_url"]

_SECRET_QUERY = re.compile(
    r"((?:^|[?&;\s])(?:token|ticket|access_token|password|passwd|sslpassword)=)[^&\s\"']*", re.I
)
_BEARER = re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]+", re.I)
_URL_PASSWORD = re.compile(r"([a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s]*@", re.I)


def redact_url(url: str) -> str:
    """`redis://user:secret@host/0?password=x` -> `redis://user:***@host/0?password=***`.

    Works on the text, not a parser, so a malformed URL is masked as well.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    head, mark, query = rest.partition("?")
    if "@" in head:
        userinfo, _, host = head.rpartition("@")
        if ":" in userinfo:
            head = f"{userinfo.partition(':')[0]}:***@{host}"
    if query:
        query = _SECRET_QUERY.sub(r"\1***", query)
    return f"{scheme}://{head}{mark}{query}"


def redact_text(text: str) -> str:
    """Mask token/ticket query values, bearer tokens and URL passwords in free text."""
    text = _SECRET_QUERY.sub(r"\1***", text)
    text = _BEARER.sub(r"\1***", text)
    return _URL_PASSWORD.sub(r"\1***@", text)
