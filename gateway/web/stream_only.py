"""A stream's connection, once its headers are sent: none of aiohttp's request reading kept.

aiohttp keeps, per connection, what it needs to read the next request on it: its
HTTP parser (~0.8 KB), a deque for parsed requests (~0.8 KB, one block even when
empty) and, from the moment the connection opened, a keep-alive timer (~0.5 KB
with its context). A stream's connection carries no next request: an EventSource
reconnects on a new one. `stream_only` tells aiohttp so through its own calls
(`close()`: bytes the client sends now are dropped and the connection closes when
the stream ends; `keep_alive(False)`: the timer is cancelled), then drops the
parser and the deque, which aiohttp does not touch again on a connection closed
this way. Importing fails loudly if an upgrade renamed them, and
tests/test_library_adapters.py holds aiohttp's `data_received` to ignoring bytes
on a closed connection.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from aiohttp.base_protocol import BaseProtocol
from aiohttp.web_protocol import RequestHandler

__all__ = ["stream_only"]

if "_parser" not in BaseProtocol.__slots__ or "_messages" not in RequestHandler.__slots__:
    raise ImportError(
        "aiohttp's RequestHandler has no _parser or _messages: update gateway/web/stream_only.py"
    )

# every stream's connection shares it; maxlen=0 keeps nothing appended
_NO_MESSAGES: deque[Any] = deque(maxlen=0)


def stream_only(protocol: RequestHandler) -> None:
    """The connection of `protocol` serves its current response until it closes: no
    keep-alive timer, parser or request queue is kept for it."""
    protocol.keep_alive(False)
    protocol.close()
    protocol._parser = None
    protocol._messages = _NO_MESSAGES
