"""Masking secrets in text: URLs (`redact_url`) and any log line (`redact_text`).

`redact_text` runs on every log line (logs.py); `redact_url` also masks the URLs
the CLI and the config dump print. Every pattern here runs on text a client
controls (aiohttp quotes malformed request lines in its errors), so each one runs
in linear time: no quantifier can re-scan text another attempt already scanned
(possessive quantifiers, and each URL-password candidate stops at the next '/',
which every later `://` contains). tests/test_redaction.py holds them to it on
adversarial input.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

__all__ = ["SECRET_PARAMETERS", "redact_text", "redact_url"]

SECRET_PARAMETERS = frozenset(
    {"token", "ticket", "access_token", "password", "passwd", "sslpassword", "ssl_password",
     "publish_key"}
)

# name=value at the start of the text or after ? & ; or whitespace; the name may be
# percent-encoded (`%74oken=`), so it is decoded before it is compared.
_PARAMETER = re.compile(r"(?:^|(?<=[?&;\s]))([A-Za-z0-9%._~+-]{1,64}+)=([^&\s\"']*+)")
_BEARER = re.compile(r"(Bearer\s++)[A-Za-z0-9._~+/=-]++", re.I)
# base64url of '{"' starts every JWT header: session tokens, tickets, anything JWT-shaped
_JWT = re.compile(r"eyJ[A-Za-z0-9_=-]*+(?:\.[A-Za-z0-9_=-]*+)*+")
_URL_PASSWORD = re.compile(r"(://[^\s/@:]*+:)[^\s/@]*+@")


def _mask_parameter(match: re.Match[str]) -> str:
    name = match[1]
    if unquote(name).lower() in SECRET_PARAMETERS and match[2]:
        return f"{name}=***"
    return match[0]


def redact_url(url: str) -> str:
    """`redis://user:secret@host/0?password=x` -> `redis://user:***@host/0?password=***`.

    Works on the text, not a parser, so a malformed URL is masked as well.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:  # no scheme ("user:secret@host:6379"): the user info is masked all the same
        scheme, rest = "", url
    userinfo = ""
    # the user info ends at the last "@" before the path, or else before the query: a
    # password may hold "?" or "/" unencoded (libpq reads "user:pa?ss@host" as "pa?ss"),
    # and a query value may hold "@" ("?password=p@ss", masked below)
    at = rest.rfind("@", 0, _end(rest, "/"))
    if at < 0:
        at = rest.rfind("@", 0, _end(rest, "?"))
    question = rest.find("?")
    if 0 <= question < at and "=" in rest[question:at]:  # "h?password=p@ss": a query value
        at = -1
    if at >= 0:
        userinfo, rest = rest[:at], rest[at + 1:]
        if ":" in userinfo:
            userinfo = f"{userinfo.partition(':')[0]}:***"
        userinfo += "@"
    head, mark, query = rest.partition("?")
    if query:
        query = _PARAMETER.sub(_mask_parameter, query)
    return f"{scheme}{sep}{userinfo}{head}{mark}{query}"


def _end(text: str, mark: str) -> int:
    """Where `mark` first appears in `text`; its length when it does not."""
    index = text.find(mark)
    return index if index >= 0 else len(text)


def redact_text(text: str) -> str:
    """Mask secret parameters, bearer tokens, JWT-shaped strings and URL passwords."""
    text = _PARAMETER.sub(_mask_parameter, text)
    text = _BEARER.sub(r"\1***", text)
    text = _JWT.sub("***", text)
    return _URL_PASSWORD.sub(r"\1***@", text)
