"""The parts of aiohttp's payload writer a stream writes through, typed and checked.

A stream writes pre-framed bytes straight to the transport (`stream.py`), so it
reaches past `StreamResponse.write` into aiohttp's `StreamWriter`: `transport`,
`protocol.writing_paused` (the kernel buffer is full), `drain()`, and `chunked`
(whether the response is chunked, which picks the framing of every write).
These are public attributes of aiohttp's class, but not a documented contract:
`payload_writer` checks them (once per class) and fails loudly if an aiohttp
upgrade renamed one, instead of, say, writing unchunked frames onto a chunked
response. tests/test_library_adapters.py holds aiohttp's class to it.
"""

from __future__ import annotations

import asyncio
from typing import Protocol, cast

__all__ = ["PayloadWriter", "WriterProtocol", "payload_writer"]

_USED = ("transport", "protocol", "chunked", "drain")


class WriterProtocol(Protocol):
    """aiohttp's BaseProtocol: flow control of the connection."""

    @property
    def writing_paused(self) -> bool: ...


class PayloadWriter(Protocol):
    """aiohttp.http_writer.StreamWriter, as far as a stream uses it."""

    chunked: bool

    @property
    def transport(self) -> asyncio.Transport | None: ...

    @property
    def protocol(self) -> WriterProtocol: ...

    async def drain(self) -> None: ...


_checked: set[tuple[type, type]] = set()  # (writer, protocol) classes found complete


def payload_writer(writer: object) -> PayloadWriter:
    """`writer` (what `StreamResponse.prepare` returned), checked to have what a stream
    uses (once per class: every stream has the same); RuntimeError naming what is
    missing otherwise."""
    protocol = getattr(writer, "protocol", None)
    classes = (type(writer), type(protocol))
    if classes in _checked:
        return cast(PayloadWriter, writer)
    missing = [name for name in _USED if not _implements(writer, name)]
    if protocol is not None and not _implements(protocol, "writing_paused"):
        missing.append("protocol.writing_paused")
    if missing:
        raise RuntimeError(
            f"aiohttp's payload writer has no {', '.join(missing)}: "
            "update gateway/web/writer.py for this aiohttp version"
        )
    _checked.add(classes)
    return cast(PayloadWriter, writer)


def _implements(obj: object, name: str) -> bool:
    """`obj` has `name` of its own or from a concrete class: aiohttp's abstract
    bases do not count (AbstractStreamWriter.transport is a stub returning None)."""
    if name in getattr(obj, "__dict__", ()):
        return True
    for cls in type(obj).__mro__:
        if cls is object or cls.__module__ == "aiohttp.abc":
            continue
        if name in vars(cls):
            return not getattr(vars(cls)[name], "__isabstractmethod__", False)
    return False
