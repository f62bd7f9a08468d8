"""The publish API's request body: headers checked, bytes read in time, strict JSON parsed.

Only `Content-Type: application/json` (a `charset` parameter, if any, utf-8),
no `Content-Encoding` but `identity` (the body is never decompressed), at most
`MAX_BODY_BYTES`, complete within `server.body_timeout` of the request head,
UTF-8 JSON (no BOM, no UTF-16/32), no duplicate key in any object, no
NaN/Infinity; then one `{"merchantId", "event", "data"}` object (optionally
with `seq`, an integer >= 0, and `key`, an idempotency key) or an array of 1
to `MAX_ITEMS` of them. Every refusal is a `Refusal` naming the fault.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from .ids import InvalidData, encode_data, valid_merchant_id
from .jobs import SEQ_MAX, job_in_data, valid_key, valid_seq
from .publisher import Publication

__all__ = [
    "MAX_BODY_BYTES", "MAX_ITEMS", "Item", "Refusal", "check_headers", "parse_items", "read_body",
]

MAX_BODY_BYTES = 1024 * 1024
MAX_ITEMS = 1000
_KEYS = frozenset(("merchantId", "event", "data"))
_OPTIONAL = frozenset(("seq", "key"))

Item = Publication


class Refusal(Exception):
    """A request the API refuses: HTTP status, error code, message."""

    def __init__(self, status: int, code: str, message: str, *, close: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        # close the connection right after answering: the body stalled. Otherwise
        # the unread rest is discarded (raw, at most web/server.py's LINGER_S) first,
        # so that a client still sending gets the answer, not a reset
        self.close = close


def check_headers(request: web.Request) -> None:
    """415 for an encoding or media type the API does not take; 413 for a declared size."""
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise Refusal(415, "unsupported_encoding",
                      "Content-Encoding is not accepted: send the body uncompressed")
    charset = (request.charset or "utf-8").lower()
    if request.content_type != "application/json" or charset not in ("utf-8", "utf8"):
        raise Refusal(415, "unsupported_media_type",
                      "Content-Type must be application/json (charset utf-8)")
    if (request.content_length or 0) > MAX_BODY_BYTES:
        raise Refusal(413, "too_large", f"body over {MAX_BODY_BYTES} bytes")


async def read_body(request: web.Request, timeout_s: float) -> bytes:
    """The raw body; 413 past MAX_BODY_BYTES, 408 when not complete within `timeout_s`."""
    body = bytearray()
    try:
        async with asyncio.timeout(timeout_s):
            while chunk := await request.content.read(64 * 1024):
                body += chunk
                if len(body) > MAX_BODY_BYTES:
                    raise Refusal(413, "too_large", f"body over {MAX_BODY_BYTES} bytes")
    except TimeoutError:
        raise Refusal(408, "timeout", f"request body not complete within {timeout_s:g} s",
                      close=True) from None
    return bytes(body)


def _bad(message: str) -> Refusal:
    return Refusal(400, "invalid_request", message)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _DuplicateKey("an object has a duplicate key")  # which one is not quoted
    return obj


def _item(value: Any, where: str, events: tuple[str, ...], job_key: str) -> Item:
    if not isinstance(value, dict):
        raise _bad(f"{where}: must be an object with merchantId, event and data")
    if not _KEYS <= value.keys() <= _KEYS | _OPTIONAL:
        missing = sorted(_KEYS - value.keys())
        extra = sorted(value.keys() - _KEYS - _OPTIONAL)
        detail = f"missing {', '.join(missing)}" if missing else f"unknown {', '.join(extra)}"
        raise _bad(f"{where}: must have merchantId, event and data, and may have seq and key "
                   f"({detail})")
    if not valid_merchant_id(value["merchantId"]):
        raise _bad(f"{where}.merchantId: must match ^[A-Za-z0-9_-]{{1,128}}$")
    if not isinstance(value["event"], str) or value["event"] not in events:
        raise _bad(f"{where}.event: must be one of {', '.join(events)}")
    seq, key = value.get("seq"), value.get("key")
    if seq is not None and not valid_seq(seq):
        raise _bad(f"{where}.seq: must be an integer from 0 to {SEQ_MAX}")
    if key is not None and not valid_key(key):
        raise _bad(f"{where}.key: must be 1-128 characters of A-Z a-z 0-9 _ . : -")
    try:
        payload = encode_data(value["data"])
    except InvalidData as exc:
        raise _bad(f"{where}.data: {exc}") from None
    job = job_in_data(value["data"], payload, job_key)  # decided here: never parsed again
    return Publication(value["merchantId"], value["event"], payload, job, seq, key)


# built once: json.loads with options builds a new decoder per call
_STRICT = json.JSONDecoder(parse_constant=_no_constants, object_pairs_hook=_unique_keys)


def parse_items(
    body: bytes, events: tuple[str, ...], job_key: str = "jobId"
) -> tuple[list[Item], bool]:
    """(items, is_batch) of a publish body; `Refusal` 400 naming the first fault."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad("body must be UTF-8 JSON") from None
    try:
        doc = _STRICT.decode(text)
    except _DuplicateKey as exc:
        raise _bad(f"body must be UTF-8 JSON ({exc})") from None
    except ValueError:
        raise _bad("body must be UTF-8 JSON") from None
    except RecursionError:
        raise _bad("body must be UTF-8 JSON (nested too deeply)") from None
    if isinstance(doc, dict):
        return [_item(doc, "body", events, job_key)], False
    if not isinstance(doc, list):
        raise _bad("body must be an object or an array of objects")
    if not 1 <= len(doc) <= MAX_ITEMS:
        raise _bad(f"array must hold 1 to {MAX_ITEMS} items, got {len(doc)}")
    return [_item(v, f"[{i}]", events, job_key) for i, v in enumerate(doc)], True
